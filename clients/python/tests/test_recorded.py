"""Results and audit proofs recorded from a live demo network (tests/fixtures/recorded, see record_fixtures.py)."""

from __future__ import annotations

import glob
import json
import math
import os

import pytest

import plexus
from plexus import audit
from plexus.results import KM_COLUMNS, TIDY_COLUMNS, result_from_json

RECORDED = os.path.join(os.path.dirname(__file__), "fixtures", "recorded")
RESULTS = sorted(p for p in glob.glob(os.path.join(RECORDED, "*.json")) if not p.endswith("inclusion_proofs.json"))


def load(name: str) -> plexus.Result:
    with open(os.path.join(RECORDED, f"{name}.json"), encoding="utf-8") as f:
        env = json.load(f)
    return result_from_json(env["result"], env)


@pytest.mark.parametrize("path", RESULTS, ids=[os.path.basename(p)[:-5] for p in RESULTS])
def test_every_recorded_result_tidies_and_glances(path):
    with open(path, encoding="utf-8") as f:
        env = json.load(f)
    assert env["status"] == "succeeded" and env["error"] is None
    r = result_from_json(env["result"], env)
    assert r.raw == env["result"] and r.query_id == env["query_id"]
    assert len(r.tidy()) >= 1
    g = r.glance()
    assert len(g) == 1 and g.loc[0, "nodes_answered"] == r.provenance.answered >= 2
    assert repr(r)


def test_recorded_glm_and_cox_shapes():
    glm = load("glm_binomial")
    t = glm.tidy(exponentiate=True)
    assert list(t.columns) == TIDY_COLUMNS
    assert list(t.term) == ["(intercept)", "age", "smoking=former", "smoking=current", "diabetes=true"]
    raw = {c["term"]: c for c in glm.value["coefficients"]}
    assert t.set_index("term").loc["age", "estimate"] == raw["age"]["ratio"]["estimate"]
    assert math.isclose(t.set_index("term").loc["age", "estimate"], math.exp(raw["age"]["estimate"]), rel_tol=1e-12)
    assert glm.glance().loc[0, "exact"]
    cox = load("cox")
    assert list(cox.tidy().term) == ["age", "diabetes=true"] and cox.glance().loc[0, "ties"] == "efron"


def test_recorded_gaussian_by_site():
    r = load("glm_gaussian")
    assert r.value["statistic"] == "t"
    sites = r.by_site
    assert len(sites) + len(r.by_site_errors) == len(r.provenance.nodes)
    for site in sites.values():
        assert isinstance(site, plexus.GlmResult) and list(site.tidy().term) == list(r.tidy().term)


def test_recorded_km():
    km = load("km")
    t = km.tidy()
    assert list(t.columns) == KM_COLUMNS
    assert set(t.strata) == {"never", "former", "current"}
    assert list(t[t.strata == "never"].time) == [365.0, 730.0, 1095.0, 1460.0, 1825.0]
    assert ((t.estimate.dropna() <= 1) & (t.estimate.dropna() >= 0)).all()
    assert km.glance().loc[0, "log_rank_df"] == 2


def test_recorded_suppressed_count_in_the_private_study():
    r = load("count_suppressed")
    assert r.suppressed and r.n is None
    g = r.glance().loc[0]
    assert not g.exact and g.privacy_cost_rho > 0 and 0 < g.privacy_remaining_rho < 1


def test_recorded_inclusion_proofs_verify_offline():
    with open(os.path.join(RECORDED, "inclusion_proofs.json"), encoding="utf-8") as f:
        proofs = json.load(f)
    assert any(p["event"].get("privacy_cost") is not None for p in proofs)
    for proof in proofs:
        check = audit.verify_inclusion(proof, public_key=proof["checkpoint"]["public_key"])
        assert check.root == proof["checkpoint"]["root"]
    tampered = dict(proofs[0], event=dict(proofs[0]["event"], detail=proofs[0]["event"]["detail"] + " "))
    with pytest.raises(plexus.VerificationFailed):
        audit.verify_inclusion(tampered)
