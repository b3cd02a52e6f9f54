"""Against a live demo network: the federated answers equal the pooled reference fits.

Run with PLEXUS_BIN=/path/to/plexus (built with the demo feature) or
PLEXUS_CONNECT=/path/to/connect.json; see conftest.py.
"""

from __future__ import annotations

import json
import math
import warnings
import os
import subprocess
from typing import List, Tuple

import numpy as np
import pandas as pd
import pytest

import plexus
from conftest import HTTP2

pytestmark = pytest.mark.live

REL = 1e-8


def design(ref: pd.DataFrame, dictionary: pd.DataFrame, outcome: List[str], covariates: List[str],
           intercept: bool = True) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """Complete cases and the design matrix named as the server names its terms."""
    d = dictionary.set_index("name")
    data = ref.dropna(subset=outcome + covariates).copy()
    cols = {}
    if intercept:
        cols["(intercept)"] = np.ones(len(data))
    for c in covariates:
        kind = d.loc[c, "type"]
        if kind == "boolean":
            cols[f"{c}=true"] = data[c].astype(bool).astype(float).to_numpy()
        elif kind == "categorical":
            for level in list(d.loc[c, "levels"])[1:]:
                cols[f"{c}={level}"] = (data[c].astype(str) == level).astype(float).to_numpy()
        else:
            cols[c] = data[c].astype(float).to_numpy()
    return data, pd.DataFrame(cols, index=data.index)


FORMS = ["text", "tree"]


def glm(study, form: str, family: str, outcome: str, covariates: List[str]):
    """The GLM as an R formula (text form) or as outcome and covariates (tree form)."""
    if form == "text":
        return study.glm(f"{outcome} ~ {' + '.join(covariates)}", family=family)
    return study.analysis({"glm": {"family": family, "outcome": outcome, "covariates": covariates}})


def assert_close(got: pd.Series, want: pd.Series, rel: float, what: str) -> None:
    assert list(got.index) == list(want.index), f"{what}: terms {list(got.index)} != {list(want.index)}"
    for term in want.index:
        g, w = float(got[term]), float(want[term])
        assert math.isclose(g, w, rel_tol=rel, abs_tol=rel * 1e-3), f"{what} {term}: plexus {g!r} reference {w!r}"


@pytest.mark.parametrize("form", FORMS)
def test_gaussian_glm_equals_statsmodels(exact_study, reference, researcher, form):
    sm = pytest.importorskip("statsmodels.api")
    fit = glm(exact_study, form, "gaussian", "sbp", ["age", "sex", "bmi"])
    data, X = design(reference, researcher.dictionary(), ["sbp"], ["age", "sex", "bmi"])
    ref = sm.GLM(data["sbp"].astype(float), X, family=sm.families.Gaussian()).fit(tol=1e-12)
    assert fit.value["n"] == len(data)
    assert_close(fit.params, ref.params, REL, "gaussian estimate")
    assert_close(fit.bse, ref.bse, REL, "gaussian std error")
    assert math.isclose(fit.value["deviance"], ref.deviance, rel_tol=REL)
    t = fit.tidy()
    assert list(t.columns) == ["term", "estimate", "std_error", "statistic", "p_value", "conf_low", "conf_high"]


@pytest.mark.parametrize("form", FORMS)
def test_binomial_glm_equals_statsmodels(exact_study, reference, researcher, form):
    sm = pytest.importorskip("statsmodels.api")
    fit = glm(exact_study, form, "binomial", "death", ["age", "smoking", "diabetes"])
    data, X = design(reference, researcher.dictionary(), ["death"], ["age", "smoking", "diabetes"])
    # The same IRLS steps as the coordinator took (R's convergence rule,
    # which statsmodels does not have): statsmodels' estimates and its
    # covariance (from the weights of the last step, as R's) then equal
    # Plexus's to the last digits.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = sm.GLM(data["death"].astype(float), X, family=sm.families.Binomial()).fit(
            maxiter=int(fit.value["iterations"]), tol=0.0)
    assert fit.value["n"] == len(data)
    assert_close(fit.params, ref.params, REL, "binomial estimate")
    assert_close(fit.bse, ref.bse, REL, "binomial std error")
    assert math.isclose(fit.value["deviance"], ref.deviance, rel_tol=REL)
    assert math.isclose(fit.value["null_deviance"], ref.null_deviance, rel_tol=REL)
    odds = fit.tidy(exponentiate=True).set_index("term")["estimate"]
    assert_close(odds, np.exp(ref.params), 1e-8, "odds ratio")
    g = fit.glance().iloc[0]
    assert g.nobs == len(data) and bool(g.converged) and g.nodes_answered >= 2


@pytest.mark.parametrize("form", FORMS)
def test_kaplan_meier_equals_lifelines(exact_study, reference, form):
    lifelines = pytest.importorskip("lifelines")
    # A daily grid gives the product-limit estimate itself (followup_days is whole days).
    if form == "text":
        km = exact_study.km("Surv(followup_days, death) ~ smoking", grid=(0, 1826, 1))
    else:
        km = exact_study.analysis({"kaplan_meier": {"time": "followup_days", "event": "death", "group": "smoking",
                                                    "grid": {"from": 0, "to": 1826, "step": 1}}})
    tidy = km.tidy()
    data = reference.dropna(subset=["followup_days", "death", "smoking"])
    data = data[data["followup_days"] > 0]
    checked = 0
    for level, rows in data.groupby("smoking"):
        kmf = lifelines.KaplanMeierFitter().fit(rows["followup_days"], rows["death"].astype(bool))
        curve = tidy[tidy["strata"] == level].dropna(subset=["estimate"])
        curve = curve[curve["time"] % 30 == 0]  # the 30-day grid points
        want = kmf.survival_function_at_times(curve["time"].to_numpy()).to_numpy()
        assert len(curve) > 10, f"too few stated survival values for {level}"
        np.testing.assert_allclose(curve["estimate"].to_numpy(), want, rtol=1e-10, err_msg=str(level))
        checked += len(curve)
    assert checked > 30
    if form == "text":
        # a 30-day grid: one query, curves and a log-rank test
        coarse = exact_study.km("Surv(followup_days, death) ~ smoking", grid=(0, 1826, 30))
        assert coarse.value["grid_intervals"] == 60 and coarse.value.get("log_rank")


@pytest.mark.parametrize("form", FORMS)
def test_cox_equals_lifelines_stratified_by_site(exact_study, reference, researcher, form):
    lifelines = pytest.importorskip("lifelines")
    if form == "text":
        fit = exact_study.cox("Surv(followup_days, death) ~ age + diabetes + smoking")
    else:
        fit = exact_study.analysis({"cox": {"time": "followup_days", "event": "death",
                                            "covariates": ["age", "diabetes", "smoking"]}})
    assert fit.value["ties"] == "efron" and fit.value["strata"] == "site"
    data, X = design(reference, researcher.dictionary(), ["followup_days", "death", "site"],
                     ["age", "diabetes", "smoking"], intercept=False)
    frame = X.assign(T=data["followup_days"].astype(float), E=data["death"].astype(bool), site=data["site"])
    cph = lifelines.CoxPHFitter().fit(frame, duration_col="T", event_col="E", strata=["site"],
                                      fit_options={"precision": 1e-12, "max_steps": 100})
    assert_close(fit.params, cph.params_, 1e-8, "cox estimate")
    assert_close(fit.bse, cph.standard_errors_, 1e-8, "cox std error")
    hr = fit.tidy(exponentiate=True).set_index("term")["estimate"]
    assert_close(hr, np.exp(cph.params_), 1e-8, "hazard ratio")


def test_count_summary_table_histogram(exact_study, reference):
    n = exact_study.count("age >= 65")
    assert n.n == int((reference["age"] >= 65).sum())
    s = exact_study.summary("bmi", where="age >= 65")
    want = reference.loc[reference["age"] >= 65, "bmi"].dropna()
    assert s.value["n"] == len(want) and math.isclose(s.value["mean"], want.mean(), rel_tol=1e-12)
    by = exact_study.summary("bmi", by="sex")
    t = by.tidy()
    for _, row in t.iterrows():
        part = reference.loc[reference["sex"] == row["sex"], "bmi"].dropna()
        assert row["n"] == len(part)
    tab = exact_study.table("smoking", "death").to_frame()
    assert int(tab.sum().sum()) <= len(reference)
    h = exact_study.histogram("age", [40, 50, 60, 70, 80, 90, 100])
    counts = h.tidy()["count"].dropna()
    assert len(counts) >= 3


def test_count_summary_table_histogram_as_trees(exact_study, reference):
    assert exact_study.count().n == len(reference)
    old = {"compare": {"variable": "age", "op": ">=", "value": 65}}
    assert exact_study.count(old).n == int((reference["age"] >= 65).sum())
    s = exact_study.summary("bmi", where=old)
    want = reference.loc[reference["age"] >= 65, "bmi"].dropna()
    assert s.value["n"] == len(want)
    assert math.isclose(s.value["mean"], want.mean(), rel_tol=1e-12)
    assert math.isclose(s.value["sd"], want.std(), rel_tol=1e-9)
    by = exact_study.summary("bmi", by="smoking").tidy().set_index("smoking")
    for level, rows in reference.groupby("smoking"):
        assert by.loc[level, "n"] == rows["bmi"].notna().sum()
        assert math.isclose(by.loc[level, "mean"], rows["bmi"].mean(), rel_tol=1e-12)
    tab = exact_study.table("smoking", "death").to_frame()
    for level in tab.index:
        for outcome in tab.columns:
            want_n = int(((reference["smoking"] == level) & (reference["death"] == (outcome == "true"))).sum())
            got = tab.loc[level, outcome]
            assert pd.isna(got) or int(got) == want_n, (level, outcome)
    h = exact_study.histogram("age", [40, 50, 60, 70, 80, 90, 100]).tidy()
    for _, b in h.dropna(subset=["count"]).iterrows():
        last = b.bin_upper == 100
        inside = (reference["age"] >= b.bin_lower) & ((reference["age"] <= b.bin_upper) if last else
                                                      (reference["age"] < b.bin_upper))
        assert int(b["count"]) == int(inside.sum())


def test_text_and_tree_forms_give_the_same_query(exact_study):
    text = exact_study.submit({"where": "age >= 65", "analysis": {"glm": {"formula": "death ~ age + diabetes",
                                                                          "family": "binomial"}}}).result()
    tree = exact_study.submit({"cohort": {"compare": {"variable": "age", "op": ">=", "value": 65}},
                               "analysis": {"glm": {"family": "binomial", "outcome": "death",
                                                    "covariates": ["age", "diabetes"]}}}).result()
    assert text.provenance.query_hash == tree.provenance.query_hash
    assert text.value == tree.value


def test_same_numbers_as_the_cli(demo, exact_study, tmp_path):
    if not demo.binary:
        pytest.skip("PLEXUS_BIN is not set: no CLI to compare with")
    query = {"cohort": {"compare": {"variable": "age", "op": ">=", "value": 60}},
             "analysis": {"glm": {"family": "binomial", "outcome": "death", "covariates": ["age", "smoking"]}}}
    path = tmp_path / "query.json"
    path.write_text(json.dumps(query))
    ident = demo.connect["identities"]["researcher"]
    cmd = [demo.binary, "--coordinator", demo.url, "--ca", demo.connect["ca"], "--cert", ident["cert"],
           "--key", ident["key"], "query", "--study", exact_study.id, "--file", str(path), "--output", "json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    cli = json.loads(out.stdout)
    py = exact_study.query(query)
    assert py.raw["value"] == cli["value"]  # every number to the last digit


def test_same_numbers_as_the_cli_glm_verb(demo, exact_study):
    if not demo.binary:
        pytest.skip("PLEXUS_BIN is not set: no CLI to compare with")
    formula, where = "death ~ age + smoking + diabetes", 'sex == "M" & age >= 60'
    cmd = [demo.binary, "--coordinator", demo.url, "--pki", demo.pki, "--as",
           demo.connect["identities"]["researcher"]["name"], "glm", "--study",
           exact_study.id, formula, "--family", "binomial", "--where", where, "--output", "json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    cli = json.loads(out.stdout)
    py = exact_study.glm(formula, family="binomial", where=where)
    assert py.raw["value"] == cli["value"]


def test_unknown_variable_is_invalid_query(exact_study):
    with pytest.raises(plexus.InvalidQuery) as e:
        exact_study.analysis({"glm": {"family": "binomial", "outcome": "death", "covariates": ["agee"]}})
    assert "agee" in str(e.value) and e.value.code == "invalid" and e.value.status == 400


def test_misspelt_formula_is_invalid_query_naming_it(exact_study):
    with pytest.raises(plexus.InvalidQuery) as e:
        exact_study.glm("death ~ agee", family="binomial")
    assert "agee" in str(e.value) and e.value.code == "invalid"


def test_policy_not_found_and_disclosure_errors(demo, researcher, exact_study):
    with pytest.raises(plexus.NotFound):
        researcher.study("no-such-study")
    outsider = demo.network("outsider")
    with pytest.raises(plexus.NotFound):
        outsider.study(exact_study.id)  # a study one is not a member of is not shown
    with pytest.raises(plexus.PolicyRefused, match="not a member") as e:
        outsider.study(exact_study.id, fetch=False).count()
    assert e.value.status == 403
    tiny = {"and": [{"compare": {"variable": "age", "op": ">=", "value": 99}},
                    {"compare": {"variable": "bmi", "op": ">", "value": 45}}]}
    # In the exact study the rule decides on exact counts: a tiny cohort is
    # never released.
    try:
        r = exact_study.count(tiny)
    except plexus.DisclosureRefused as err:
        assert err.code == "disclosure"
    else:
        assert r.suppressed, f"a count of patients aged 99+ with a BMI over 45 was released: {r.raw}"
    # Under differential privacy the rule decides on the noised counts, so a
    # tiny cohort may come back as a noised number (noise sd about 39 here);
    # whatever comes back must be suppressed or carry its noise and charge.
    private = researcher.study(demo.connect.get("studies", {}).get("private", "aaa-outcomes"))
    try:
        r = private.count(tiny, rho=0.001)
    except plexus.DisclosureRefused as err:
        assert err.code == "disclosure"
    else:
        privacy = r.raw["privacy"]
        assert r.suppressed or (privacy["count_noise_sd"] > 10 and privacy["charged_rho"] == 0.001), r.raw


def test_budget_and_privacy_provenance(demo, researcher):
    private = researcher.study(demo.connect.get("studies", {}).get("private", "aaa-outcomes"))
    before = private.budget()
    r = private.count({"compare": {"variable": "age", "op": ">=", "value": 60}}, rho=0.001)
    after = private.budget()
    g = r.glance().iloc[0]
    assert not before.exact and not g.exact and g.privacy_requested_rho == 0.001
    # charged 0.001, or 0 when the nodes answered the same query from their cache
    assert g.privacy_cost_rho in (0.0, 0.001) and bool(g.cached) == (g.privacy_cost_rho == 0.0)
    assert after.spent_rho == pytest.approx(before.spent_rho + g.privacy_cost_rho, abs=1e-12)
    assert g.privacy_remaining_rho == pytest.approx(after.remaining_rho, abs=1e-12)


def test_wrong_ca_and_foreign_or_expired_certificate(demo, tmp_path):
    pytest.importorskip("cryptography")
    from pki import issue, make_ca

    ident = demo.connect["identities"]["researcher"]
    wrong_ca, _ = make_ca(str(tmp_path), "wrong-ca")
    net = plexus.Network(demo.url, wrong_ca, ident["cert"], ident["key"], role="researcher", http2=HTTP2)
    with pytest.raises(plexus.PlexusConnectionError, match="does not chain to the CA"):
        net.studies()
    ca_key = os.path.join(demo.pki, "ca.key")
    cert, key = issue(str(tmp_path), "alice-expired", demo.connect["ca"], ca_key, expired=True)
    with pytest.raises(plexus.PlexusConnectionError, match="alice-expired.pem expired on"):
        plexus.Network(demo.url, demo.connect["ca"], cert, key, role="researcher", http2=HTTP2)
    other_ca, other_key = make_ca(str(tmp_path), "other")
    cert, key = issue(str(tmp_path), "mallory", other_ca, other_key)
    with pytest.raises(plexus.PlexusConnectionError, match="refuse[ds] the researcher certificate"):
        plexus.Network(demo.url, demo.connect["ca"], cert, key, role="researcher", http2=HTTP2).studies()


def test_audit_inclusion_and_consistency_verify(demo, exact_study):
    auditor = demo.network("auditor")
    exact_study.count()
    events = auditor.audit_log(study_id=exact_study.id, limit=50)
    assert len(events) > 0 and {"seq", "who", "action", "outcome", "at"} <= set(events.columns)
    seq = int(events["seq"].max())
    proof = auditor.inclusion_proof(seq)
    check = auditor.verify_inclusion(proof, public_key=proof["checkpoint"]["public_key"])
    assert check.seq == seq and check.signature_checked
    for earlier in range(1, seq, max(1, seq // 20)):  # events of every kind, with and without costs
        auditor.verify_inclusion(earlier)
    old = proof["checkpoint"]
    assert int(old["size"]) >= seq
    exact_study.count({"compare": {"variable": "age", "op": ">=", "value": 70}})
    new = auditor.verify_consistency(old)
    assert int(new["size"]) >= int(old["size"])
    qid = exact_study.submit({"analysis": {"count": {}}}).query_id
    exact_study.handle(qid).result()
    ev = auditor.evidence(qid)
    assert ev["query_id"] == qid and ev["nodes"]
