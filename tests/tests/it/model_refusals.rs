//! Disclosure control of the regression and survival analyses at the node,
//! and what happens when a node is lost between the rounds of a fit.

use std::path::Path;
use std::time::{Duration, Instant};

use plexus_core::pool::{NodeStatus, PooledValue};
use plexus_core::ErrorCode;
use plexus_tests::{ask, sandbox, Sandbox, SandboxOptions};

const LOGISTIC: &str = r#"{"analysis": {"glm": {"family": "binomial", "outcome": "death",
    "covariates": ["age", "sex", "smoking", "diabetes"]}}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_model_rule_refuses_with_its_reason() {
    let mut sb = Sandbox::prepare(SandboxOptions::new(500, 31))
        .await
        .unwrap();
    // hospital-a allows far fewer parameters per case than the others.
    sb.node_configs
        .get_mut("hospital-a")
        .unwrap()
        .policy
        .max_parameter_share = 0.001;
    sb.start_all().await.unwrap();
    let study = sandbox::exact_study();
    sb.register_study(&study).await.unwrap();
    let alice = sandbox::RESEARCHER;

    // Too many parameters for its cases: hospital-a refuses, b and c fit.
    let r = ask(&sb, alice, &study.id, LOGISTIC).await.unwrap();
    let a = r.provenance.node("hospital-a").unwrap();
    assert_eq!(a.status, NodeStatus::Refused, "{r:?}");
    let detail = a.detail.as_deref().unwrap();
    assert!(
        detail.contains("parameter-share rule") && detail.contains("model's 6 parameters"),
        "{detail}"
    );
    // The rule and the public figures, never the node's count of cases.
    assert!(
        !detail
            .chars()
            .any(|c| c.is_ascii_digit() && c != '6' && c != '0' && c != '1'),
        "{detail}"
    );
    assert_eq!(r.provenance.answered, 2);

    // A level with fewer than k patients.
    let e = ask(
        &sb,
        alice,
        &study.id,
        r#"{"cohort": {"in": {"variable": "smoking", "values": ["never", "former"]}},
            "analysis": {"glm": {"family": "gaussian", "outcome": "sbp", "covariates": ["age", "smoking"]}}}"#,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::Disclosure, "{e}");
    assert!(
        e.message.contains("level \"current\" of \"smoking\""),
        "{e}"
    );

    // An outcome level with fewer than k patients.
    let e = ask(
        &sb,
        alice,
        &study.id,
        r#"{"cohort": {"compare": {"variable": "death", "op": "=", "value": true}},
            "analysis": {"glm": {"family": "binomial", "outcome": "death", "covariates": ["age"]}}}"#,
    )
    .await
    .unwrap_err();
    assert!(e.message.contains("level \"false\" of \"death\""), "{e}");

    // A singular X'WX: age is constant in this cohort.
    let e = ask(
        &sb,
        alice,
        &study.id,
        r#"{"cohort": {"compare": {"variable": "age", "op": "=", "value": 70}},
            "analysis": {"glm": {"family": "gaussian", "outcome": "sbp", "covariates": ["age"]}}}"#,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::Disclosure, "{e}");
    assert!(
        e.message.contains("singular") && e.message.contains("\"age\""),
        "{e}"
    );

    // Kaplan-Meier: the thin tail of a long grid is merged, and the result
    // says after which time and at which nodes.
    let r = ask(
        &sb,
        alice,
        &study.id,
        r#"{"analysis": {"kaplan_meier": {"time": "followup_days", "event": "death",
            "grid": {"from": 0, "to": 4800, "step": 1}}}}"#,
    )
    .await
    .unwrap();
    let PooledValue::KaplanMeier(km) = &r.value else {
        panic!("{r:?}")
    };
    let curve = &km.curves[0];
    let after = curve.merged_after.expect("the tail is merged");
    assert!(after < 4800.0 && !curve.merged_at.is_empty(), "{curve:?}");
    // Every interval of the pooled curve started with at least k at risk
    // at some node.
    assert!(curve.n_risk.iter().all(|n| *n >= 5), "{:?}", curve.n_risk);
    assert_eq!(*curve.times.last().unwrap(), 4800.0);
    sb.shutdown().await.unwrap();
}

/// The outcomes in a node's job log (not its write-ahead `accepted` entries).
fn log_lines(path: &Path) -> usize {
    plexus_node::log::JobLog::read_outcomes(path)
        .map(|entries| entries.len())
        .unwrap_or(0)
}

/// Submits a logistic fit and kills hospital-c once it has answered its
/// first round, so the loss happens between rounds.
async fn fit_losing_c(
    sb: &mut Sandbox,
    study: &str,
) -> Result<plexus_core::pool::PooledResult, plexus_core::Error> {
    let log = sb.node_configs["hospital-c"]
        .node
        .state_dir
        .join("jobs.log.jsonl");
    let before = log_lines(&log);
    let alice = sb.client(sandbox::RESEARCHER).await.unwrap();
    let query = plexus_core::Query::from_json(LOGISTIC).unwrap();
    let study = study.to_string();
    let running = tokio::spawn(async move {
        alice
            .run_query(&study, &query, Duration::from_secs(60))
            .await
    });
    let t = Instant::now();
    while log_lines(&log) == before {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "hospital-c never answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The node logs before it sends: give the answer time to leave, well
    // inside the next round's job delay.
    tokio::time::sleep(Duration::from_millis(120)).await;
    sb.kill_node("hospital-c").await;
    plexus_client::outcome(&running.await.unwrap().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_lost_between_rounds_stops_the_fit_unless_the_study_allows() {
    let mut sb = Sandbox::prepare(SandboxOptions::new(400, 32))
        .await
        .unwrap();
    for node in ["hospital-a", "hospital-b", "hospital-c"] {
        sb.set_node_options(
            node,
            plexus_node::RunOptions {
                job_delay: Duration::from_millis(250),
                ..Default::default()
            },
        );
    }
    sb.start_all().await.unwrap();
    let mut study = sandbox::exact_study();
    sb.register_study(&study).await.unwrap();

    let e = fit_losing_c(&mut sb, &study.id).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable, "{e}");
    assert!(
        e.message.contains("lost hospital-c") && e.message.contains("in round 2"),
        "{e}"
    );

    // The study now allows going on without a lost node (2 of 3 remain).
    study.continue_without_lost_nodes = true;
    sb.register_study(&study).await.unwrap();
    // A changed definition: the hospitals approve it before it runs.
    sb.approve(&study).unwrap();
    sb.start_node("hospital-c").await.unwrap();
    sb.wait_all_live().await.unwrap();
    let r = fit_losing_c(&mut sb, &study.id).await.unwrap();
    let c = r.provenance.node("hospital-c").unwrap();
    assert_eq!(c.status, NodeStatus::Missing);
    assert!(
        c.detail.as_deref().unwrap().contains("lost in round 2"),
        "{c:?}"
    );
    assert!(
        r.provenance
            .notes
            .iter()
            .any(|n| n.contains("hospital-c") && n.contains("started again without it")),
        "{:?}",
        r.provenance.notes
    );
    let PooledValue::Glm(g) = &r.value else {
        panic!("{r:?}")
    };
    assert!(g.converged);
    assert_eq!(r.provenance.answered, 2);
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cohort_leaving_out_fewer_than_k_patients_is_refused() {
    let sb = Sandbox::start(SandboxOptions::new(600, 33)).await.unwrap();
    let study = sandbox::exact_study();
    sb.register_study(&study).await.unwrap();
    let purpose = study.purpose().unwrap();
    // Find an age limit that leaves out 1 to 4 of a site's patients: the
    // whole population minus a handful of the oldest.
    let sites: Vec<(String, Vec<i64>)> = sb
        .sites
        .iter()
        .map(|s| {
            let ages = plexus_tests::consenting(s, &purpose, plexus_tests::today())
                .iter()
                .map(|p| p.age)
                .collect();
            (s.name.clone(), ages)
        })
        .collect();
    let (limit, site) = (70..=96)
        .rev()
        .find_map(|limit| {
            sites.iter().find_map(|(name, ages)| {
                let left_out = ages.iter().filter(|a| **a >= limit).count();
                (1..5).contains(&left_out).then(|| (limit, name.clone()))
            })
        })
        .expect("some age limit leaves out 1 to 4 patients at some site");
    let json = format!(
        r#"{{"cohort": {{"compare": {{"variable": "age", "op": "<", "value": {limit}}}}},
            "analysis": {{"summary": {{"variable": "sbp"}}}}}}"#
    );
    let outcome = ask(&sb, sandbox::RESEARCHER, &study.id, &json).await;
    let detail = match &outcome {
        Ok(r) => r
            .provenance
            .node(&site)
            .and_then(|n| {
                assert_eq!(n.status, NodeStatus::Refused, "{r:?}");
                n.detail.clone()
            })
            .unwrap(),
        Err(e) => e.message.clone(),
    };
    assert!(detail.contains("leaves out fewer than 5"), "{detail}");
    // The whole population is answered as before.
    ask(
        &sb,
        sandbox::RESEARCHER,
        &study.id,
        r#"{"analysis": {"summary": {"variable": "sbp"}}}"#,
    )
    .await
    .unwrap();
    sb.shutdown().await.unwrap();
}
