"""Request building and polling against a mocked coordinator."""

from __future__ import annotations

import json

import httpx
import pytest

import plexus
from plexus.study import build_request

from helpers import FakeCoordinator, fixture, mock_network


def study_with(*names: str, pending_polls: int = 0):
    fake = FakeCoordinator([fixture(n) for n in names], pending_polls=pending_polls)
    net = mock_network(fake)
    return fake, net.study("aaa-validation")


def test_count_posts_where_text_and_polls_until_done():
    fake, study = study_with("count", pending_polls=2)
    r = study.count('age >= 65 & sex == "M"')
    assert fake.bodies == [{"where": 'age >= 65 & sex == "M"', "analysis": {"count": {}}}]
    polls = [q for q in fake.requests if q.url.path == "/v1/queries/q-count"]
    assert len(polls) == 3
    assert all(0 < int(q.url.params["wait_ms"]) <= 60000 for q in polls)
    assert isinstance(r, plexus.CountResult) and r.n == 3863
    assert r.query_id == "q-count"


def test_glm_body_uses_formula_and_family():
    fake, study = study_with("glm_binomial")
    study.glm("death ~ age + smoking + diabetes", family="binomial", by_site=True, rho=0.02)
    assert fake.bodies[0] == {
        "analysis": {"glm": {"formula": "death ~ age + smoking + diabetes", "family": "binomial"}},
        "by_site": True,
        "rho": 0.02,
    }


def test_cox_km_table_histogram_summary_bodies():
    fake, study = study_with("cox", "km", "table", "histogram", "summary", "cox")
    study.cox("Surv(followup_days, death) ~ age", where="age >= 50", ties="breslow")
    study.km("Surv(followup_days, death) ~ smoking", grid=(0, 90, 30))
    study.table("smoking", "death")
    study.histogram("age", [40, 50, 60])
    study.summary("bmi", where={"not_null": {"variable": "bmi"}})
    study.cox("Surv(followup_days, death) ~ age")
    assert fake.bodies == [
        {"where": "age >= 50", "analysis": {"cox": {"formula": "Surv(followup_days, death) ~ age", "ties": "breslow"}}},
        {"analysis": {"kaplan_meier": {"formula": "Surv(followup_days, death) ~ smoking",
                                       "grid": {"from": 0, "to": 90, "step": 30}}}},
        {"analysis": {"table": {"row": "smoking", "column": "death"}}},
        {"analysis": {"histogram": {"variable": "age", "edges": [40, 50, 60]}}},
        {"cohort": {"not_null": {"variable": "bmi"}}, "analysis": {"summary": {"variable": "bmi"}}},
        {"analysis": {"cox": {"formula": "Surv(followup_days, death) ~ age"}}},
    ]


def test_km_explicit_grid():
    assert build_request({"kaplan_meier": {"grid": [0, 1, 2]}}) == {"analysis": {"kaplan_meier": {"grid": [0, 1, 2]}}}


def test_summary_by_runs_one_query_per_level():
    fake, study = study_with("summary", "summary", "summary")
    r = study.summary("bmi", where="age >= 65", by="smoking")
    assert [b["where"] for b in fake.bodies] == [
        '(age >= 65) & smoking == "never"', '(age >= 65) & smoking == "former"', '(age >= 65) & smoking == "current"']
    t = r.tidy()
    assert list(t["smoking"]) == ["never", "former", "current"]
    assert list(t["mean"]) == [27.5] * 3


def test_summary_by_boolean_uses_true_false():
    fake, study = study_with("summary", "summary")
    r = study.summary("bmi", by="diabetes")
    assert [b["cohort"] for b in fake.bodies] == [
        {"compare": {"variable": "diabetes", "op": "=", "value": False}},
        {"compare": {"variable": "diabetes", "op": "=", "value": True}}]
    assert list(r) == ["FALSE", "TRUE"]


def test_summary_by_with_a_tree_where_stays_a_tree():
    fake, study = study_with("summary", "summary", "summary")
    study.summary("bmi", where={"not_null": {"variable": "bmi"}}, by="smoking")
    assert fake.bodies[1]["cohort"] == {"and": [{"not_null": {"variable": "bmi"}},
                                                {"compare": {"variable": "smoking", "op": "=", "value": "former"}}]}
    assert "where" not in fake.bodies[1]


def test_summary_by_text_where_escapes_quotes():
    from plexus.study import and_where
    assert and_where("age > 1", "smoking", 'a "b"') == '(age > 1) & smoking == "a \\"b\\""'


def test_summary_by_numeric_is_refused_before_any_query():
    fake, study = study_with("summary")
    with pytest.raises(plexus.InvalidQuery, match="categorical or boolean"):
        study.summary("bmi", by="age")
    assert fake.bodies == []


def test_submit_and_resume_after_timeout():
    fake, study = study_with("count", pending_polls=10**6)
    handle = study.submit({"analysis": {"count": {}}})
    assert handle.query_id == "q-count"
    with pytest.raises(plexus.QueryTimeout) as e:
        handle.result(timeout=0)
    assert e.value.query_id == "q-count" and isinstance(e.value, TimeoutError)
    fake.pending_polls = 0
    fake._polls = 0
    assert study.handle("q-count").result(timeout=5).n == 3863


def test_failed_query_raises_its_code():
    fake, study = study_with("failed_policy")
    with pytest.raises(plexus.PolicyRefused, match="budget of study aaa-outcomes is exhausted") as e:
        study.count()
    assert e.value.code == "policy" and e.value.query_id == "q-fail"


def test_dictionary_and_studies_frames():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/studies":
            return httpx.Response(200, json={"studies": [
                {"id": "aaa-validation", "title": "V", "privacy": {"exact": True, "budget_rho": 0, "query_rho": 0},
                 "min_nodes": 2, "nodes": ["a", "b"], "analyses": ["count"], "researchers": ["alice"],
                 "purpose": {"code": "research"}}]})
        return FakeCoordinator([])(request)
    net = mock_network(handler)
    s = net.studies()
    assert list(s["id"]) == ["aaa-validation"] and bool(s["exact"][0])
    d = net.dictionary()
    assert list(d.columns) == ["name", "type", "levels", "description", "unit", "min", "max"]
    assert d.set_index("name").loc["smoking", "levels"] == ["never", "former", "current"]
    assert d.set_index("name").loc["age", "levels"] is None


def test_budget():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/studies/aaa-outcomes/budget":
            return httpx.Response(200, json={"study_id": "aaa-outcomes", "exact": False, "budget_rho": 1.0,
                                             "spent_rho": 0.25, "remaining_rho": 0.75, "delta": 1e-6,
                                             "epsilon_spent": 3.1, "epsilon_budget": 7.4, "queries_charged": 5,
                                             "nodes": [{"node_id": "a", "spent_rho": 0.25, "budget_rho": 1.0,
                                                        "updated_unix_ms": 1}]})
        if request.url.path == "/v1/studies/aaa-outcomes":
            return httpx.Response(200, json={"id": "aaa-outcomes", "privacy": {"exact": False}})
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "no"}})
    b = mock_network(handler).study("aaa-outcomes").budget()
    assert b.remaining_rho == 0.75 and b.queries_charged == 5 and b.nodes[0]["node_id"] == "a"


def test_audit_log_params_and_frame():
    seen = {}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.update(dict(request.url.params))
        return httpx.Response(200, json={"events": [
            {"seq": 1, "at_unix_ms": 1796000000000, "who": "alice", "role": "researcher", "action": "query.submit",
             "study_id": "aaa-validation", "outcome": "accepted"}]})
    frame = mock_network(handler).audit_log(study_id="aaa-validation", since="2026-12-01T00:00:00", limit=10)
    assert seen == {"study_id": "aaa-validation", "since_unix_ms": "1796083200000", "limit": "10"}
    assert frame.loc[0, "who"] == "alice" and str(frame.loc[0, "at"].tz) == "UTC"


def test_request_json_is_plain_json():
    fake, study = study_with("count")
    study.count()
    post = [q for q in fake.requests if q.method == "POST"][0]
    assert post.headers["content-type"] == "application/json"
    assert json.loads(post.content) == {"analysis": {"count": {}}}
    assert post.url.path == "/v1/studies/aaa-validation/queries"


def test_import_and_a_count_need_no_pandas():
    import subprocess
    import sys

    code = ("import sys, httpx, plexus\n"
            "from helpers import FakeCoordinator, fixture, mock_network\n"
            "study = mock_network(FakeCoordinator([fixture('count')])).study('aaa-validation')\n"
            "assert study.count().n == 3863\n"
            "print('pandas' in sys.modules)\n")
    import os
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=os.path.dirname(__file__))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
