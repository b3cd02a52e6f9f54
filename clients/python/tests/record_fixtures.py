#!/usr/bin/env python3
"""Replaces the hand-written result fixtures with real ones from a live demo network.

    python clients/python/tests/record_fixtures.py demo/connect.json [--http2]

Writes tests/fixtures/recorded/: the QueryResult envelope of one query of
each kind on the exact study, a suppressed count on the private one, and
inclusion proofs of audit events as the coordinator signed them. The unit
tests read them next to the hand-written fixtures (whose numbers they
assert on): every recorded result must parse and tidy, and every recorded
proof must verify.
"""

from __future__ import annotations

import json
import os
import sys

import plexus

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "recorded")

QUERIES = {
    "count": {"analysis": {"count": {}}},
    "summary": {"analysis": {"summary": {"variable": "bmi"}}},
    "histogram": {"analysis": {"histogram": {"variable": "age", "edges": [40, 50, 60, 70, 80, 90, 100]}}},
    "table": {"analysis": {"table": {"row": "smoking", "column": "death"}}},
    "glm_binomial": {"analysis": {"glm": {"family": "binomial", "outcome": "death",
                                          "covariates": ["age", "smoking", "diabetes"]}}},
    "glm_gaussian": {"analysis": {"glm": {"family": "gaussian", "outcome": "sbp", "covariates": ["age", "sex", "bmi"]}},
                     "by_site": True},
    "cox": {"analysis": {"cox": {"time": "followup_days", "event": "death", "covariates": ["age", "diabetes"]}}},
    "km": {"analysis": {"kaplan_meier": {"time": "followup_days", "event": "death", "group": "smoking",
                                         "grid": {"from": 0, "to": 1826, "step": 365}}}},
    "two_by_two": {"analysis": {"two_by_two": {"exposure": "diabetes", "outcome": "death"}}},
}
PRIVATE = {
    "count_suppressed": {"cohort": {"and": [{"compare": {"variable": "age", "op": ">=", "value": 99}},
                                            {"compare": {"variable": "bmi", "op": ">", "value": 45}}]},
                         "analysis": {"count": {}}, "rho": 0.001},
}


def main() -> None:
    http2 = "--http2" in sys.argv
    net = plexus.Network.from_connect_file(sys.argv[1], http2=http2)
    studies = net.connect_info.get("studies", {})
    os.makedirs(HERE, exist_ok=True)
    for study_id, queries in ((studies.get("exact", "aaa-validation"), QUERIES),
                              (studies.get("private", "aaa-outcomes"), PRIVATE)):
        study = net.study(study_id)
        for name, query in queries.items():
            handle = study.submit(query)
            handle.result(timeout=300)
            with open(os.path.join(HERE, f"{name}.json"), "w", encoding="utf-8") as f:
                json.dump(handle.last, f, indent=1)
            print("recorded", name)
    auditor = plexus.Network.from_connect_file(sys.argv[1], role="auditor", http2=http2)
    events = auditor.audit_events(limit=100000)
    picked = [e for e in events if e.get("privacy_cost") is not None][:2] + events[:2] + events[-3:]
    proofs = [auditor.inclusion_proof(int(e["seq"])) for e in picked]
    with open(os.path.join(HERE, "inclusion_proofs.json"), "w", encoding="utf-8") as f:
        json.dump(proofs, f, indent=1)
    print("recorded", len(proofs), "inclusion proofs")


if __name__ == "__main__":
    main()
