#!/usr/bin/env python3
"""Replaces the hand-written result fixtures with real ones from a live demo network.

    python clients/python/tests/record_fixtures.py demo/connect.json

Each fixture is the QueryResult envelope of one query on the exact study
(the suppressed count and the failed query on the private one). The unit
tests assert on the hand-written numbers, so rerun them after recording and
adjust what changed.
"""

from __future__ import annotations

import json
import os
import sys

import plexus

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")

QUERIES = {
    "count": {"analysis": {"count": {}}},
    "summary": {"analysis": {"summary": {"variable": "bmi"}}},
    "histogram": {"analysis": {"histogram": {"variable": "age", "edges": [40, 50, 60, 70, 80, 90, 100]}}},
    "table": {"analysis": {"table": {"row": "smoking", "column": "death"}}},
    "glm_binomial": {"analysis": {"glm": {"formula": "death ~ age + smoking + diabetes", "family": "binomial"}}},
    "cox": {"analysis": {"cox": {"formula": "Surv(followup_days, death) ~ age"}}},
    "km": {"analysis": {"kaplan_meier": {"formula": "Surv(followup_days, death) ~ smoking",
                                         "grid": {"from": 0, "to": 1826, "step": 365}}}},
}


def main() -> None:
    net = plexus.Network.from_connect_file(sys.argv[1])
    studies = net.connect_info.get("studies", {})
    exact = net.study(studies.get("exact", "aaa-validation"))
    out = sys.argv[2] if len(sys.argv) > 2 else HERE
    for name, query in QUERIES.items():
        handle = exact.submit(query)
        handle.result(timeout=300)
        with open(os.path.join(out, f"{name}.json"), "w", encoding="utf-8") as f:
            json.dump(handle.last, f, indent=1)
        print("recorded", name)


if __name__ == "__main__":
    main()
