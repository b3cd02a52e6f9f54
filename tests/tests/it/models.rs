//! Regression and survival over three nodes, noise off: every federated
//! answer equals the standard method run on the union of the sites'
//! consenting rows (`plexus_tests::reference`, itself checked against
//! published textbook values).

use plexus_core::models::survival::Curve;
use plexus_core::pool::{PooledResult, PooledValue};
use plexus_core::{Dictionary, StudyDefinition};
use plexus_sandbox::synth::Patient;
use plexus_tests::reference::{cox as rcox, glm as rglm, survival as rsurv};
use plexus_tests::{ask, consenting, rel, sandbox, today, Sandbox, SandboxOptions};

/// Consenting patients per site, in the sandbox's site order.
fn union(sb: &Sandbox, study: &StudyDefinition) -> Vec<(String, Vec<Patient>)> {
    let purpose = study.purpose().unwrap();
    sb.sites
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                consenting(s, &purpose, today())
                    .into_iter()
                    .cloned()
                    .collect(),
            )
        })
        .collect()
}

/// A design row built independently of the node's code: numeric values as
/// they are, indicators for every level but the first. `None` when a value
/// is missing.
fn row(p: &Patient, covariates: &[&str], intercept: bool) -> Option<Vec<f64>> {
    let mut r = Vec::new();
    if intercept {
        r.push(1.0);
    }
    for c in covariates {
        match *c {
            "age" => r.push(p.age as f64),
            "bmi" => r.push(p.bmi?),
            "sbp" => r.push(p.sbp?),
            "aaa_diameter" => r.push(p.aaa_diameter?),
            "cholesterol" => r.push(p.cholesterol?),
            "hypertension" => r.push(f64::from(u8::from(p.hypertension))),
            "sex" => r.push(f64::from(u8::from(p.sex == "M"))),
            "smoking" => {
                r.push(f64::from(u8::from(p.smoking == "former")));
                r.push(f64::from(u8::from(p.smoking == "current")));
            }
            "diabetes" => r.push(f64::from(u8::from(p.diabetes))),
            other => panic!("no covariate {other} in this test"),
        }
    }
    Some(r)
}

fn assert_close(got: f64, want: f64, tolerance: f64, what: &str) {
    assert!(
        rel(got, want) <= tolerance,
        "{what}: federated {got} vs reference {want} (relative {})",
        rel(got, want)
    );
}

fn glm_of(r: &PooledResult) -> &plexus_core::models::glm::GlmResult {
    match &r.value {
        PooledValue::Glm(g) => g,
        other => panic!("not a GLM: {other:?}"),
    }
}

async fn start() -> (Sandbox, StudyDefinition) {
    start_with(1500).await
}

async fn start_with(patients_per_site: usize) -> (Sandbox, StudyDefinition) {
    let sb = Sandbox::start(SandboxOptions::new(patients_per_site, 21))
        .await
        .unwrap();
    let study = sandbox::exact_study();
    sb.register_study(&study).await.unwrap();
    (sb, study)
}

fn check_glm(
    got: &PooledResult,
    patients: &[&Patient],
    outcome: impl Fn(&Patient) -> f64,
    covariates: &[&str],
    family: rglm::Family,
) {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for p in patients {
        if let Some(r) = row(p, covariates, true) {
            x.push(r);
            y.push(outcome(p));
        }
    }
    let want = rglm::fit_glm(&x, &y, family);
    let g = glm_of(got);
    assert!(g.converged);
    assert_eq!(g.n as usize, y.len());
    for (i, c) in g.coefficients.iter().enumerate() {
        assert_close(c.estimate, want.coefficients[i], 1e-8, &c.term);
        assert_close(
            c.std_error,
            want.std_errors[i],
            1e-8,
            &format!("se {}", c.term),
        );
    }
    assert_close(g.deviance, want.deviance, 1e-8, "deviance");
    assert_close(
        g.null_deviance.unwrap(),
        want.null_deviance,
        1e-8,
        "null deviance",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glm_families_equal_a_centralised_fit_pooled_and_by_site() {
    let (sb, study) = start().await;
    let sites = union(&sb, &study);
    let all: Vec<&Patient> = sites.iter().flat_map(|(_, p)| p.iter()).collect();
    let covariates = ["age", "sex", "smoking", "diabetes", "bmi"];

    let logistic = ask(
        &sb,
        sandbox::RESEARCHER,
        &study.id,
        r#"{"analysis": {"glm": {"family": "binomial", "outcome": "death",
            "covariates": ["age", "sex", "smoking", "diabetes", "bmi"], "tolerance": 1e-10}},
            "by_site": true}"#,
    )
    .await
    .unwrap();
    let death = |p: &Patient| f64::from(u8::from(p.death));
    check_glm(&logistic, &all, death, &covariates, rglm::Family::Binomial);
    let g = glm_of(&logistic);
    assert_eq!(g.statistic, "z");
    let age = &g.coefficients[1];
    assert_eq!(age.term, "age");
    let or = age.ratio.unwrap();
    assert!((or.estimate - age.estimate.exp()).abs() < 1e-12);
    assert!(or.ci_lower < or.estimate && or.estimate < or.ci_upper);
    // Each site's own fit equals the standard fit on that site's rows.
    assert_eq!(logistic.by_site.len(), 3);
    for site in &logistic.by_site {
        let rows = &sites.iter().find(|(n, _)| *n == site.node).unwrap().1;
        let rows: Vec<&Patient> = rows.iter().collect();
        let value = site.value.clone().unwrap_or_else(|| panic!("{site:?}"));
        let one = PooledResult {
            value,
            provenance: logistic.provenance.clone(),
            by_site: vec![],
            privacy: None,
        };
        check_glm(&one, &rows, death, &covariates, rglm::Family::Binomial);
    }

    let linear = ask(
        &sb,
        sandbox::RESEARCHER,
        &study.id,
        r#"{"cohort": {"compare": {"variable": "age", "op": ">=", "value": 60}},
            "analysis": {"glm": {"family": "gaussian", "outcome": "sbp",
            "covariates": ["age", "sex", "bmi"], "tolerance": 1e-10}}}"#,
    )
    .await
    .unwrap();
    let older: Vec<&Patient> = all.iter().copied().filter(|p| p.age >= 60).collect();
    let with_sbp: Vec<&Patient> = older.iter().copied().filter(|p| p.sbp.is_some()).collect();
    check_glm(
        &linear,
        &with_sbp,
        |p| p.sbp.unwrap(),
        &["age", "sex", "bmi"],
        rglm::Family::Gaussian,
    );
    assert_eq!(glm_of(&linear).statistic, "t");

    let poisson = ask(
        &sb,
        sandbox::RESEARCHER,
        &study.id,
        r#"{"analysis": {"glm": {"family": "poisson", "outcome": "age",
            "covariates": ["sex", "diabetes"], "tolerance": 1e-10}}}"#,
    )
    .await
    .unwrap();
    check_glm(
        &poisson,
        &all,
        |p| p.age as f64,
        &["sex", "diabetes"],
        rglm::Family::Poisson,
    );
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_stratified_cox_equals_a_centralised_stratified_fit() {
    // The reference sums every risk set afresh (quadratic time): fewer rows.
    let (sb, study) = start_with(500).await;
    let sites = union(&sb, &study);
    let covariates = ["age", "sex", "diabetes", "aaa_diameter"];
    for ties in ["efron", "breslow"] {
        let json = format!(
            r#"{{"analysis": {{"cox": {{"time": "followup_days", "event": "death",
                "covariates": ["age", "sex", "diabetes", "aaa_diameter"], "ties": "{ties}",
                "tolerance": 1e-12}}}}}}"#
        );
        let got = ask(&sb, sandbox::RESEARCHER, &study.id, &json)
            .await
            .unwrap();
        let PooledValue::Cox(c) = &got.value else {
            panic!("{got:?}")
        };
        let (mut x, mut t, mut e, mut s) = (vec![], vec![], vec![], vec![]);
        for (i, (_, patients)) in sites.iter().enumerate() {
            for p in patients {
                if let Some(r) = row(p, &covariates, false) {
                    x.push(r);
                    t.push(p.followup_days as f64);
                    e.push(p.death);
                    s.push(i as u32);
                }
            }
        }
        let tie_rule = if ties == "efron" {
            rcox::Ties::Efron
        } else {
            rcox::Ties::Breslow
        };
        let want = rcox::fit_cox(&x, &t, &e, &s, tie_rule);
        assert!(c.converged);
        assert_eq!(c.n as usize, t.len());
        for (i, coef) in c.coefficients.iter().enumerate() {
            assert_close(coef.estimate, want.coefficients[i], 1e-6, &coef.term);
            assert_close(coef.std_error, want.std_errors[i], 1e-6, &coef.term);
            let hr = coef.ratio.unwrap();
            assert!((hr.estimate - coef.estimate.exp()).abs() < 1e-12);
        }
        assert_close(c.loglik, want.loglik, 1e-9, "log partial likelihood");
        assert_close(
            c.likelihood_ratio.chi_square,
            2.0 * (want.loglik - want.loglik_null),
            1e-6,
            "likelihood ratio",
        );
    }
    sb.shutdown().await.unwrap();
}

fn at(curve: &Curve, t: f64) -> usize {
    curve
        .times
        .iter()
        .position(|x| *x == t)
        .unwrap_or_else(|| panic!("no grid time {t}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kaplan_meier_on_a_daily_grid_is_the_exact_product_limit_of_the_union() {
    let (sb, study) = start().await;
    let sites = union(&sb, &study);
    let all: Vec<&Patient> = sites.iter().flat_map(|(_, p)| p.iter()).collect();
    let end = 1825.0;
    let got = ask(
        &sb,
        sandbox::RESEARCHER,
        &study.id,
        r#"{"analysis": {"kaplan_meier": {"time": "followup_days", "event": "death",
            "group": "sex", "grid": {"from": 0, "to": 1825, "step": 1}}}}"#,
    )
    .await
    .unwrap();
    let PooledValue::KaplanMeier(km) = &got.value else {
        panic!("{got:?}")
    };
    assert_eq!(km.curves.len(), 2);
    // Follow-up beyond the grid counts as censored at its end.
    let censored = |p: &Patient| {
        let t = p.followup_days as f64;
        (t.min(end), p.death && t <= end)
    };
    let (mut times, mut events, mut groups) = (vec![], vec![], vec![]);
    for (g, level) in ["F", "M"].iter().enumerate() {
        let rows: Vec<(f64, bool)> = all
            .iter()
            .filter(|p| p.sex == *level)
            .map(|p| censored(p))
            .collect();
        let t: Vec<f64> = rows.iter().map(|r| r.0).collect();
        let e: Vec<bool> = rows.iter().map(|r| r.1).collect();
        let exact = rsurv::kaplan_meier(&t, &e);
        let curve = &km.curves[g];
        assert_eq!(curve.group, *level);
        assert!(curve.merged_after.is_none(), "{:?}", curve.merged_at);
        assert!(exact.len() > 20, "too few events to compare");
        for step in &exact {
            let j = at(curve, step.time);
            assert_eq!(curve.n_risk[j], step.n_risk, "at risk at {}", step.time);
            assert_eq!(curve.n_event[j], step.n_event, "events at {}", step.time);
            assert_close(curve.survival[j].unwrap(), step.survival, 1e-12, "survival");
            assert_close(curve.std_error[j].unwrap(), step.std_err, 1e-9, "greenwood");
        }
        assert_eq!(
            curve.median,
            rsurv::median_survival(&exact),
            "median of group {level}"
        );
        times.extend(t);
        events.extend(e);
        groups.extend(std::iter::repeat_n(g as u32, rows.len()));
    }
    // The researcher can draw it.
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("km.png");
    plexus::plot::plot_result(&got, &png).unwrap();
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
    let table = plexus::output::render(&got, plexus::output::Format::Table).unwrap();
    assert!(table.contains("log-rank test"), "{table}");
    let csv = plexus::output::render(&got, plexus::output::Format::Csv).unwrap();
    assert!(csv.starts_with("group,time,n_risk"), "{csv}");
    assert_eq!(csv.lines().count(), 1 + 2 * 1825);

    let lr = km.log_rank.as_ref().unwrap();
    let want = rsurv::log_rank(&times, &events, &groups, 2);
    assert_close(lr.chi_square, want.chi_square, 1e-9, "log-rank");
    assert_close(lr.p_value, want.p_value, 1e-7, "log-rank p");
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn correlation_quantiles_and_two_by_two_equal_the_union() {
    let (sb, study) = start().await;
    let sites = union(&sb, &study);
    let all: Vec<&Patient> = sites.iter().flat_map(|(_, p)| p.iter()).collect();

    let got = ask(
        &sb,
        sandbox::RESEARCHER,
        &study.id,
        r#"{"analysis": {"correlation": {"variables": ["age", "sbp", "bmi"], "missing": "pairwise"}}}"#,
    )
    .await
    .unwrap();
    let PooledValue::Correlation(c) = &got.value else {
        panic!("{got:?}")
    };
    let pairs: Vec<(f64, f64)> = all.iter().filter_map(|p| Some((p.sbp?, p.bmi?))).collect();
    let n = pairs.len() as f64;
    let (mx, my) = (
        pairs.iter().map(|p| p.0).sum::<f64>() / n,
        pairs.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let sxy: f64 = pairs.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = pairs.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let syy: f64 = pairs.iter().map(|p| (p.1 - my).powi(2)).sum();
    assert_eq!(c.n[1][2], Some(pairs.len() as u64));
    assert_close(
        c.covariance[1][2].unwrap(),
        sxy / (n - 1.0),
        1e-9,
        "covariance",
    );
    assert_close(
        c.correlation[1][2].unwrap(),
        sxy / (sxx * syy).sqrt(),
        1e-9,
        "correlation",
    );
    assert!(c.missing.contains("pairwise"));
    let e = plexus::plot::plot_result(&got, std::path::Path::new("unused.svg")).unwrap_err();
    assert!(
        e.to_string().contains("nothing to plot for a correlation"),
        "{e}"
    );

    let got = ask(
        &sb,
        sandbox::RESEARCHER,
        &study.id,
        r#"{"analysis": {"quantiles": {"variable": "age", "edges": [40, 50, 60, 65, 70, 75, 80, 90, 100],
            "probabilities": [0.25, 0.5, 0.75]}}}"#,
    )
    .await
    .unwrap();
    let PooledValue::Quantiles(q) = &got.value else {
        panic!("{got:?}")
    };
    assert_eq!(q.n as usize, all.len());
    assert_eq!(q.precision, 10.0);
    let mut ages: Vec<i64> = all.iter().map(|p| p.age).collect();
    ages.sort();
    for x in &q.quantiles {
        let exact = ages[((x.probability * ages.len() as f64) as usize).min(ages.len() - 1)] as f64;
        let (lo, hi) = (x.bin_lower.unwrap(), x.bin_upper.unwrap());
        assert!(lo <= exact && exact <= hi, "{x:?} vs exact {exact}");
        let estimate = x.estimate.unwrap();
        assert!(lo <= estimate && estimate <= hi);
    }

    let got = ask(
        &sb,
        sandbox::RESEARCHER,
        &study.id,
        r#"{"analysis": {"two_by_two": {"exposure": "diabetes", "outcome": "death"}}}"#,
    )
    .await
    .unwrap();
    let PooledValue::TwoByTwo(t) = &got.value else {
        panic!("{got:?}")
    };
    let count = |d: bool, o: bool| {
        all.iter()
            .filter(|p| p.diabetes == d && p.death == o)
            .count() as f64
    };
    let (a, b, cc, d) = (
        count(true, true),
        count(true, false),
        count(false, true),
        count(false, false),
    );
    assert_eq!(t.table, [[a as u64, b as u64], [cc as u64, d as u64]]);
    assert_close(t.odds_ratio.estimate, a * d / (b * cc), 1e-12, "odds ratio");
    assert_close(
        t.relative_risk.estimate,
        (a / (a + b)) / (cc / (cc + d)),
        1e-12,
        "relative risk",
    );
    sb.shutdown().await.unwrap();
}

/// Keeps `Dictionary` honest about what the tests above expand by hand.
#[test]
fn the_hand_written_design_follows_the_dictionary() {
    let d = Dictionary::cardiovascular();
    assert_eq!(d.get("sex").unwrap().levels(), ["F", "M"]);
    assert_eq!(
        d.get("smoking").unwrap().levels(),
        ["never", "former", "current"]
    );
    assert_eq!(d.get("diabetes").unwrap().levels(), ["false", "true"]);
}
