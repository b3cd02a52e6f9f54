"""tidy(), glance(), summary() and plot() from recorded result JSON."""

from __future__ import annotations

import math

import pandas as pd
import pytest

import plexus
from plexus.results import (
    CALIBRATION_COLUMNS,
    FAIRNESS_COLUMNS,
    KM_COLUMNS,
    PERFORMANCE_COLUMNS,
    ROC_COLUMNS,
    THRESHOLD_COLUMNS,
    TIDY_COLUMNS,
    result_from_json,
)

from helpers import fixture


def load(name: str) -> plexus.Result:
    env = fixture(name)
    return result_from_json(env["result"], env)


def test_classes_by_kind():
    assert isinstance(load("count"), plexus.CountResult)
    assert isinstance(load("summary"), plexus.SummaryResult)
    assert isinstance(load("table"), plexus.TableResult)
    assert isinstance(load("histogram"), plexus.HistogramResult)
    assert isinstance(load("glm_binomial"), plexus.GlmResult)
    assert isinstance(load("cox"), plexus.CoxResult)
    assert isinstance(load("km"), plexus.KmResult)
    generic = result_from_json({"value": {"kind": "two_by_two", "exposure": "diabetes", "chi_square": 4.2},
                                "provenance": {"nodes": [], "answered": 0, "min_nodes": 2, "min_cell_size": 5}})
    assert type(generic) is plexus.Result
    assert generic.tidy().loc[0, "chi_square"] == 4.2


def test_raw_is_the_result_json():
    env = fixture("glm_binomial")
    r = result_from_json(env["result"], env)
    assert r.raw == env["result"]
    assert r.provenance.query_hash == "ab" * 32 and r.provenance.answered == 3
    assert r.provenance.round_ms == [12, 10, 9, 9, 8]


def test_glm_tidy_columns_and_values():
    t = load("glm_binomial").tidy()
    assert list(t.columns) == TIDY_COLUMNS
    age = t.set_index("term").loc["age"]
    assert age.estimate == 0.05 and age.std_error == 0.01 and age.statistic == 5.0
    assert age.conf_low == 0.0304003601545995 and age.conf_high == 0.0695996398454005


def test_glm_exponentiate_uses_server_ratio_then_exp():
    t = load("glm_binomial").tidy(exponentiate=True).set_index("term")
    assert t.loc["age", "estimate"] == 1.0512710963760241  # the server's ratio object
    assert t.loc["age", "conf_low"] == 1.0308672
    assert t.loc["age", "std_error"] == 0.01  # stays on the log scale, as broom
    # diabetes has no ratio object in the fixture: exp() of estimate and bounds
    assert t.loc["diabetes", "estimate"] == pytest.approx(math.exp(0.4), rel=1e-15)
    assert t.loc["diabetes", "conf_high"] == pytest.approx(math.exp(0.79199279690801), rel=1e-15)


def test_glm_other_conf_level_recomputes_z_interval():
    t = load("glm_binomial").tidy(conf_level=0.9).set_index("term")
    z = 1.6448536269514722
    assert t.loc["age", "conf_low"] == pytest.approx(0.05 - z * 0.01, rel=1e-12)
    e = load("glm_binomial").tidy(conf_level=0.9, exponentiate=True).set_index("term")
    assert e.loc["age", "conf_high"] == pytest.approx(math.exp(0.05 + z * 0.01), rel=1e-12)


def test_glm_glance_and_summary():
    r = load("glm_binomial")
    g = r.glance()
    assert len(g) == 1
    row = g.iloc[0]
    assert row.nobs == 3863 and row.deviance == 3000.5 and row.null_deviance == 3200.25
    assert row.df_residual == 3859.0 and row.iterations == 5 and bool(row.converged)
    assert row.nodes_answered == 3 and bool(row.exact) and row.privacy_cost_rho == 0.0
    text = r.summary()
    assert "Dep. variable: death" in text and "smoking=former" in text and "P>|z|" in text
    assert repr(r) == text
    assert r.params["age"] == 0.05 and r.bse["age"] == 0.01


def test_cox_tidy_hazard_ratio_and_glance():
    r = load("cox")
    t = r.tidy(exponentiate=True)
    assert t.loc[0, "estimate"] == 1.0408107741923882
    g = r.glance().iloc[0]
    assert g.events == 900 and g.lr_chi_square == 60.0 and g.ties == "efron"
    assert "hazard_ratio" in r.summary()


def test_km_tidy_like_broom():
    r = load("km")
    t = r.tidy()
    assert list(t.columns) == KM_COLUMNS
    assert len(t) == 6
    current = t[t.strata == "current"]
    assert list(current.time) == [30.0, 60.0, 90.0]
    assert math.isnan(current.estimate.iloc[2])  # not stated after the last patient at risk
    assert r.survival_at([30, 60], group="never").tolist() == [0.95, 0.8444444444444444]
    assert r.medians() == {"never": None, "current": 60.0}
    g = r.glance().iloc[0]
    assert g.curves == 2 and g.log_rank_p_value == 4.4e-7 and g.n == 150
    with pytest.raises(ValueError):
        r.survival_at([30])


def test_count_and_suppressed_count():
    c = load("count")
    assert c.n == 3863 and int(c) == 3863 and not c.suppressed
    assert "n=3863" in repr(c)
    s = load("count_suppressed")
    assert s.n is None and s.suppressed and s.at_least == 7
    assert s.tidy().loc[0, "suppressed_at"] == "hospital-a,hospital-b"
    g = s.glance().iloc[0]
    assert g.privacy_cost_rho == 0.01 and g.privacy_remaining_rho == 0.95 and not g.exact
    with pytest.raises(ValueError):
        int(s)


def test_histogram_and_table():
    h = load("histogram")
    t = h.tidy()
    assert list(t.bin_lower) == [40.0, 50.0, 60.0, 70.0, 80.0, 90.0]
    assert t["count"].tolist()[:5] == [23, 319, 1222, 1606, 619] and pd.isna(t["count"].iloc[5])
    assert h.below is None
    tab = load("table")
    wide = tab.to_frame()
    assert wide.loc["former", "true"] == 300 and pd.isna(wide.loc["current", "true"])
    long = tab.tidy()
    assert list(long.columns[:3]) == ["smoking", "death", "count"] and len(long) == 6


def test_summary_tidy():
    t = load("summary").tidy().iloc[0]
    assert t.variable == "bmi" and t.conf_low == 27.3 and t.sd == 4.0


def test_plots_draw():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    ax = load("km").plot()
    assert len(ax.get_lines()) == 2
    xs = ax.get_lines()[1].get_xdata()
    assert list(xs) == [0.0, 30.0, 60.0]  # the curve starts at 1 at the grid's start and ends where stated
    ax = load("histogram").plot()
    assert len(ax.patches) == 6
    with pytest.raises(NotImplementedError):
        load("count").plot()


def test_by_site_values():
    env = fixture("count")
    raw = dict(env["result"], by_site=[{"node": "hospital-a", "value": {"kind": "count", "n": {"count": 1200}}},
                                       {"node": "hospital-c", "error": "disclosure: fewer than 5"}])
    r = result_from_json(raw)
    assert r.by_site["hospital-a"].n == 1200
    assert r.by_site_errors == {"hospital-c": "disclosure: fewer than 5"}


def test_gbdt_importance_and_scoring():
    # A model of one tree: bmi < 25 goes left (-0.5); then age < 60 (0.25) or not (0.75).
    model = {
        "loss": "logistic",
        "base_score": -1.0,
        "learning_rate": 0.1,
        "features": [
            {"name": "age", "variable": "age", "thresholds": [50.0, 60.0]},
            {"name": "bmi", "variable": "bmi", "thresholds": [25.0]},
        ],
        "trees": [{"slots": [
            {"split": {"feature": 1, "threshold": 0}},
            {"leaf": {"value": -0.5}},
            {"split": {"feature": 0, "threshold": 1}},
            "empty", "empty",
            {"leaf": {"value": 0.25}},
            {"leaf": {"value": 0.75}},
        ]}],
    }
    r = result_from_json({
        "value": {"kind": "gbdt", "model": model, "n": 900, "rounds": 3,
                  "training_loss": [0.6, 0.5], "validation_n": 100, "validation_loss": [0.61, 0.55],
                  "importance": [{"feature": "bmi", "splits": 1, "gain": 3.0},
                                 {"feature": "age", "splits": 1, "gain": 1.0}]},
        "provenance": {"nodes": [], "answered": 3, "min_nodes": 2, "min_cell_size": 5}})
    assert isinstance(r, plexus.GbdtResult)
    t = r.tidy()
    assert list(t.columns) == ["feature", "splits", "gain", "share"]
    assert t.loc[0, "feature"] == "bmi" and t.loc[0, "share"] == 0.75
    assert r.feature_names == ["age", "bmi"]
    assert r.score([[40, 20], [55, 30], [70, 30], [60, 25]]) == [-1.5, -0.75, -0.25, -0.25]
    p = r.predict([[55, 30]])[0]
    assert abs(p - 1 / (1 + math.exp(0.75))) < 1e-15
    g = r.glance()
    assert g.loc[0, "trees"] == 1 and g.loc[0, "validation_loss"] == 0.55
    with pytest.raises(ValueError, match="2 features"):
        r.score([[1.0]])


def load_performance() -> plexus.Result:
    # A real pooled result (value, provenance, by_site, privacy) of three sites, by sex, at thresholds 0.1, 0.2, 0.3.
    return result_from_json(fixture("model_performance"))


def test_performance_tidy_one_row_per_group():
    r = load_performance()
    assert isinstance(r, plexus.PerformanceResult) and r.kind == "model_performance"
    t = r.tidy()
    assert list(t.columns) == PERFORMANCE_COLUMNS
    assert list(t.group) == ["all", "sex=F", "sex=M"]
    assert t.n.tolist() == [3948, 1377, 2571] and t.events.tolist() == [1457, 426, 1031]
    everyone = t.set_index("group").loc["all"]
    assert everyone.auc == 0.6996356409498353
    assert everyone.auc_low == 0.6830636654424604 and everyone.auc_high == 0.7162076164572102
    assert everyone.auc_error_bound == 0.0674247469338486
    assert everyone.prevalence == 0.36904761904761907 and everyone.brier == 0.20551975404436978
    assert everyone.calibration_in_the_large == -0.0004462846259410218
    assert everyone.calibration_in_the_large_low == -0.06797225013656719
    assert everyone.calibration_slope == 1.2377552652817445
    assert everyone.calibration_slope_high == 1.3556351964044167
    assert everyone.calibration_intercept == 0.11608321856930125
    assert everyone.observed_expected == 0.9997420017252668 and bool(everyone.converged)
    assert t.set_index("group").loc["sex=F", "auc"] == 0.6924425981052809


def test_performance_thresholds_calibration_and_roc():
    r = load_performance()
    th = r.thresholds()
    assert list(th.columns) == THRESHOLD_COLUMNS
    assert len(th) == 3 * 3  # groups x thresholds
    assert th.requested.tolist() == [0.1, 0.2, 0.3] * 3
    row = th[(th.group == "all") & (th.requested == 0.2)].iloc[0]
    assert row.threshold == 0.25  # the released cut nearest 0.2
    assert (row.tp, row.fp, row.tn, row["fn"]) == (1296, 1682, 809, 161)
    assert row.sensitivity == 0.8894989704873026 and row.npv == 0.8340206185567011
    assert row.net_benefit == 0.18625464370145223 and row.treat_all == 0.15873015873015878
    assert math.isnan(th[(th.group == "all") & (th.requested == 0.1)].npv.iloc[0])  # no one called negative
    cal = r.calibration()
    assert list(cal.columns) == CALIBRATION_COLUMNS
    assert len(cal) == 3 * 5
    first = cal.iloc[0]
    assert (first.group, first.bin_lower, first.bin_upper, first.n) == ("all", 0.0, 0.3, 1392)
    assert first.observed == 0.19468390804597702 and first.predicted == 0.22030343866810717
    assert cal[cal.group == "sex=M"].n.sum() == 2571
    roc = r.roc()
    assert list(roc.columns) == ROC_COLUMNS
    assert len(roc) == 3 * 9
    assert roc.iloc[1].tolist() == ["all", 0.6, 0.026896828582898435, 0.14138641043239533]


def test_performance_fairness_gaps():
    r = load_performance()
    f = r.fairness()
    assert list(f.columns) == FAIRNESS_COLUMNS
    assert len(f) == 3 + 2 * 3  # auc, calibration in the large, O/E; then tpr and fpr at each threshold
    auc = f[f.metric == "auc"].iloc[0]
    assert auc.variable == "sex" and auc.gap == 0.0006444312572092548
    assert (auc.lowest, auc.highest) == ("F", "M") and math.isnan(auc.threshold)
    t = r.tidy().set_index("group")
    assert auc.gap == pytest.approx(t.loc["sex=M", "auc"] - t.loc["sex=F", "auc"], rel=1e-12)
    fpr = f[(f.metric == "false_positive_rate") & (f.threshold == 0.3)].iloc[0]
    assert fpr.gap == 0.16503748617313285


def test_performance_glance_repr_and_by_site():
    r = load_performance()
    g = r.glance().iloc[0]
    assert g.model == "lightgbm" and g.outcome == "death" and g.rounds == 1
    assert g.model_hash == "ebeca6c61555da3f4963d0374b032a0a161f0a064dbec601b1e3355da463231b"
    assert g.n == 3948 and g.events == 1457 and g.auc == 0.6996356409498353 and bool(g.converged)
    assert g.nodes_answered == 3 and bool(g.exact)
    assert repr(r).startswith(
        "<PerformanceResult lightgbm for death: n=3948, events=1457, AUC 0.700 [0.683, 0.716], 3 groups; 3/3 nodes")
    sites = r.by_site
    assert sorted(sites) == ["hospital-a", "hospital-b", "hospital-c"]
    a = sites["hospital-a"]
    assert isinstance(a, plexus.PerformanceResult)
    assert a.tidy().auc.iloc[0] == 0.6715329385305083
    assert sum(s.glance().n.iloc[0] for s in sites.values()) == 3948


def test_performance_plot_draws_three_panels():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    fig = load_performance().plot()
    roc, cal, dca = fig.axes
    assert [ax.get_title() for ax in fig.axes] == ["ROC", "Calibration", "Decision curve"]
    assert len(roc.get_lines()) == 1 + 3  # the diagonal, then a curve per group
    assert roc.get_lines()[1].get_label() == "all (AUC 0.700)"
    assert len(cal.get_lines()) == 1 + 3
    assert [ln.get_label() for ln in dca.get_lines()] == ["treat all", "treat none", "all", "sex=F", "sex=M"]
    assert list(dca.get_lines()[2].get_xdata()) == [0.0, 0.25, 0.3]
    with pytest.raises(ValueError, match="three panels"):
        load_performance().plot(ax=[roc])
