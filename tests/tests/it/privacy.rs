//! Differential privacy end to end: noised answers, the budget each node
//! enforces from its own ledger (across restarts and a crash between debit
//! and release), repeats and rephrasings answered once, and the complement
//! rule against differencing.

use plexus_core::pool::{NodeStatus, PooledResult, PooledValue};
use plexus_core::{ErrorCode, StudyDefinition};
use plexus_node::ledger::Ledger;
use plexus_proto::v1 as pb;
use plexus_tests::{ask, consenting, sandbox, today, Sandbox, SandboxOptions};

fn study(budget: f64) -> StudyDefinition {
    let mut s = sandbox::demo_study();
    s.privacy.budget_rho = budget;
    s.privacy.query_rho = 0.01;
    s
}

fn count_of(r: &PooledResult) -> u64 {
    match &r.value {
        PooledValue::Count { n } => n.count.expect("count released"),
        other => panic!("{other:?}"),
    }
}

fn count_query(min_age: u32) -> String {
    format!(
        r#"{{"cohort": {{"compare": {{"variable": "age", "op": ">=", "value": {min_age}}}}}, "analysis": {{"count": {{}}}}}}"#
    )
}

async fn budget(sb: &Sandbox, study: &str) -> pb::BudgetReport {
    sb.client(sandbox::RESEARCHER)
        .await
        .unwrap()
        .research()
        .get_budget(pb::GetBudgetRequest {
            study_id: study.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeats_and_rephrasings_return_the_same_answer_and_are_charged_once() {
    let sb = Sandbox::start(SandboxOptions::new(1500, 41)).await.unwrap();
    let s = study(1.0);
    sb.register_study(&s).await.unwrap();
    let first = r#"{"cohort": {"and": [
            {"compare": {"variable": "age", "op": ">=", "value": 65}},
            {"compare": {"variable": "sex", "op": "=", "value": "M"}}]},
        "analysis": {"summary": {"variable": "aaa_diameter"}}}"#;
    // The same cohort: conjuncts swapped, >= 65 written as not < 65.
    let rephrased = r#"{"cohort": {"and": [
            {"compare": {"variable": "sex", "op": "=", "value": "M"}},
            {"not": {"compare": {"variable": "age", "op": "<", "value": 65}}}]},
        "analysis": {"summary": {"variable": "aaa_diameter"}}}"#;
    let a = ask(&sb, sandbox::RESEARCHER, &s.id, first).await.unwrap();
    let privacy = a.privacy.clone().unwrap();
    assert!(!privacy.cached && (privacy.charged_rho - 0.01).abs() < 1e-12);
    let PooledValue::Summary {
        noise_sd: Some(noise),
        ci: Some(ci),
        mean,
        ..
    } = a.value
    else {
        panic!("{:?}", a.value)
    };
    assert!(noise > 0.0 && ci[0] < mean && mean < ci[1]);
    for json in [first, rephrased] {
        let b = ask(&sb, sandbox::RESEARCHER, &s.id, json).await.unwrap();
        assert_eq!(b.value, a.value, "{json}");
        let p = b.privacy.unwrap();
        assert!(p.cached && p.charged_rho == 0.0, "{p:?}");
        assert!((p.spent_rho - 0.01).abs() < 1e-12, "{p:?}");
    }
    let report = budget(&sb, &s.id).await;
    assert!((report.spent_rho - 0.01).abs() < 1e-12, "{report:?}");
    assert_eq!(report.queries_charged, 1);
    for node in &report.nodes {
        assert!((node.spent_rho - 0.01).abs() < 1e-12, "{node:?}");
    }
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_budget_is_refused_by_the_coordinator_and_by_each_node_even_after_a_restart() {
    let mut opts = SandboxOptions::new(600, 43);
    opts.job_timeout_secs = 10;
    let mut sb = Sandbox::prepare(opts).await.unwrap();
    // The hospitals accept at most 0.02 for any study, whatever it asks.
    for cfg in sb.node_configs.values_mut() {
        cfg.policy.max_study_rho = 0.02;
    }
    sb.start_all().await.unwrap();

    // At the coordinator: a study of 0.02 pays for two queries.
    let small = study(0.02);
    sb.register_study(&small).await.unwrap();
    // A definition of its own, which every hospital approves.
    sb.approve(&small).unwrap();
    for age in [50, 60] {
        ask(&sb, sandbox::RESEARCHER, &small.id, &count_query(age))
            .await
            .unwrap();
    }
    let e = ask(&sb, sandbox::RESEARCHER, &small.id, &count_query(70))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Policy);
    assert!(
        e.message
            .contains("has spent rho 0.0200 of its budget 0.0200"),
        "{e}"
    );
    // A repeat still costs nothing and is answered.
    ask(&sb, sandbox::RESEARCHER, &small.id, &count_query(50))
        .await
        .unwrap();

    // At the nodes: the same study registered again with a budget of 1
    // passes the coordinator, and every node refuses from its own ledger.
    let generous = study(1.0);
    sb.register_study(&generous).await.unwrap();
    // The hospitals approved this definition (the demo study's) in their
    // config already; approving it again changes nothing.
    sb.approve(&generous).unwrap();
    let e = ask(&sb, sandbox::RESEARCHER, &generous.id, &count_query(75))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Policy, "{e}");
    assert!(
        e.message.contains("budget for the study is exhausted"),
        "{e}"
    );

    // A node restarted mid-study keeps its ledger.
    sb.stop_node("hospital-a").await.unwrap();
    sb.wait_not_live("hospital-a", std::time::Duration::from_secs(30))
        .await
        .unwrap();
    sb.start_node("hospital-a").await.unwrap();
    sb.wait_all_live().await.unwrap();
    let e = ask(&sb, sandbox::RESEARCHER, &generous.id, &count_query(75))
        .await
        .unwrap_err();
    assert!(e.message.contains("exhausted"), "{e}");
    let ledger = Ledger::read(&sb.node_configs["hospital-a"].node.state_dir).unwrap();
    assert!((ledger.spent(&small.id) - 0.02).abs() < 1e-12);
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_debit_and_release_loses_the_release_never_the_debit() {
    let mut opts = SandboxOptions::new(600, 47);
    opts.job_timeout_secs = 3;
    let mut sb = Sandbox::prepare(opts).await.unwrap();
    sb.set_node_options(
        "hospital-c",
        plexus_node::RunOptions {
            crash_after_debit: true,
            ..Default::default()
        },
    );
    sb.start_all().await.unwrap();
    let s = study(1.0);
    sb.register_study(&s).await.unwrap();
    let q = count_query(55);
    let partial = ask(&sb, sandbox::RESEARCHER, &s.id, &q).await.unwrap();
    let c = partial.provenance.node("hospital-c").unwrap();
    assert_eq!(c.status, plexus_core::pool::NodeStatus::Missing, "{c:?}");

    // hospital-c paid for an answer it never sent, and kept it.
    let state = sb.node_configs["hospital-c"].node.state_dir.clone();
    let text = std::fs::read_to_string(state.join("privacy.ledger.jsonl")).unwrap();
    let debits: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(debits.len(), 1, "{text}");
    assert_eq!(debits[0]["study_id"], s.id.as_str());
    let kept = debits[0]["answer"]["stats"].clone();
    assert!(kept.is_object(), "{text}");

    // Back up without the fault: the same query gets the kept answer, free.
    sb.kill_node("hospital-c").await;
    sb.wait_not_live("hospital-c", std::time::Duration::from_secs(30))
        .await
        .unwrap();
    sb.set_node_options("hospital-c", plexus_node::RunOptions::default());
    sb.start_node("hospital-c").await.unwrap();
    sb.wait_all_live().await.unwrap();
    let full = ask(&sb, sandbox::RESEARCHER, &s.id, &q).await.unwrap();
    let p = full.privacy.clone().unwrap();
    let charge = p.nodes.iter().find(|n| n.node == "hospital-c").unwrap();
    assert!(charge.cached && charge.charged_rho == 0.0, "{charge:?}");
    assert!((charge.spent_rho - 0.01).abs() < 1e-12, "{charge:?}");
    let ledger = Ledger::read(&state).unwrap();
    assert!((ledger.spent(&s.id) - 0.01).abs() < 1e-12);
    // And what hospital-c sent is the answer it had paid for.
    let text = std::fs::read_to_string(state.join("privacy.ledger.jsonl")).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(count_of(&full) > count_of(&partial));
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cohort_minus_one_patient_is_noised_and_nothing_is_decided_on_exact_counts() {
    let sb = Sandbox::start(SandboxOptions::new(800, 53)).await.unwrap();
    let s = study(1.0);
    sb.register_study(&s).await.unwrap();
    // A patient singled out by attributes few share: the oldest consenting
    // patient at hospital-a, by age and sex.
    let purpose = s.purpose().unwrap();
    let site = consenting(&sb.sites[0], &purpose, today());
    let oldest = site.iter().max_by_key(|p| p.age).unwrap();
    let older: Vec<_> = site
        .iter()
        .filter(|p| p.age == oldest.age && p.sex == oldest.sex)
        .collect();
    assert!(!older.is_empty() && older.len() < 5, "{}", older.len());
    let single = format!(
        r#"{{"and": [{{"compare": {{"variable": "age", "op": "=", "value": {}}}}}, {{"compare": {{"variable": "sex", "op": "=", "value": "{}"}}}}]}}"#,
        oldest.age, oldest.sex
    );
    let cohort = r#"{"compare": {"variable": "age", "op": ">=", "value": 60}}"#;
    let minus = format!(r#"{{"and": [{cohort}, {{"not": {single}}}]}}"#);
    let with = ask(
        &sb,
        sandbox::RESEARCHER,
        &s.id,
        &format!(r#"{{"cohort": {cohort}, "analysis": {{"count": {{}}}}}}"#),
    )
    .await
    .unwrap();
    let without = ask(
        &sb,
        sandbox::RESEARCHER,
        &s.id,
        &format!(r#"{{"cohort": {minus}, "analysis": {{"count": {{}}}}}}"#),
    )
    .await
    .unwrap();
    // Both noised: their difference is noise of sd √2·σ, not the
    // patient(s) left out.
    for r in [&with, &without] {
        let sd = r.privacy.as_ref().unwrap().count_noise_sd.unwrap();
        assert!(sd > 5.0, "{sd}");
    }
    let diff = count_of(&with) as i64 - count_of(&without) as i64;
    eprintln!(
        "cohort minus {} patient(s): released difference {diff}",
        older.len()
    );
    // The whole study population minus those few patients: under
    // differential privacy no rule decides on the exact number left out
    // (the complement rule would be an oracle), so hospital-a answers it,
    // noised like any count, and the difference from the whole
    // population's count is noise.
    let r = ask(
        &sb,
        sandbox::RESEARCHER,
        &s.id,
        &format!(r#"{{"cohort": {{"not": {single}}}, "analysis": {{"count": {{}}}}}}"#),
    )
    .await
    .unwrap();
    let a = r.provenance.node("hospital-a").unwrap();
    assert!(
        matches!(a.status, NodeStatus::Answered | NodeStatus::Suppressed),
        "{a:?}"
    );
    assert!(r.privacy.as_ref().unwrap().count_noise_sd.unwrap() > 5.0);
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_logistic_fit_spends_its_rounds_once_and_repeats_for_free() {
    let sb = Sandbox::start(SandboxOptions::new(4000, 59)).await.unwrap();
    let s = study(1.0);
    sb.register_study(&s).await.unwrap();
    let glm = r#"{"analysis": {"glm": {"family": "binomial", "outcome": "death",
        "covariates": ["age", "diabetes"]}}, "rho": 0.6}"#;
    let first = ask(&sb, sandbox::RESEARCHER, &s.id, glm).await.unwrap();
    let PooledValue::Glm(g) = &first.value else {
        panic!("{:?}", first.value)
    };
    assert_eq!(g.iterations, 5, "six rounds: five steps and the errors");
    assert!(g.coefficients.iter().all(|c| c.std_error > 0.0));
    let p = first.privacy.clone().unwrap();
    // Six rounds of 0.1 at each node.
    assert!((p.charged_rho - 0.6).abs() < 1e-9, "{p:?}");
    assert!(p.notes.iter().any(|n| n.contains("6 rounds")), "{p:?}");
    assert_eq!(p.nodes.len(), 3);

    // Asked again: every round is a kept answer, so the same fit, free.
    let again = ask(&sb, sandbox::RESEARCHER, &s.id, glm).await.unwrap();
    assert_eq!(again.value, first.value);
    let p = again.privacy.unwrap();
    assert!(p.cached && p.charged_rho == 0.0, "{p:?}");
    assert!((budget(&sb, &s.id).await.spent_rho - 0.6).abs() < 1e-9);

    // A correlation is noised too, and consistent: |r| <= 1, variances >= 0.
    let cor = ask(
        &sb,
        sandbox::RESEARCHER,
        &s.id,
        r#"{"analysis": {"correlation": {"variables": ["age", "bmi", "sbp"], "missing": "pairwise"}}, "rho": 0.05}"#,
    )
    .await
    .unwrap();
    let PooledValue::Correlation(c) = &cor.value else {
        panic!("{:?}", cor.value)
    };
    for (i, row) in c.correlation.iter().enumerate() {
        for (j, r) in row.iter().enumerate() {
            let r = r.unwrap_or_else(|| panic!("{c:?}"));
            assert!(r.abs() <= 1.0, "{c:?}");
            if i == j {
                assert_eq!(r, 1.0);
                assert!(c.covariance[i][j].unwrap() >= 0.0);
            }
        }
    }
    assert!(cor.privacy.unwrap().count_noise_sd.unwrap() > 0.0);

    // What is not released under differential privacy is refused up front.
    for (json, why) in [
        (
            r#"{"analysis": {"glm": {"family": "poisson", "outcome": "followup_days", "covariates": ["age"]}}}"#,
            "poisson",
        ),
        (
            r#"{"analysis": {"glm": {"family": "binomial", "outcome": "death", "covariates": ["age"]}}, "by_site": true}"#,
            "by_site",
        ),
        (
            r#"{"analysis": {"cox": {"time": "followup_days", "event": "death", "covariates": ["age"]}}}"#,
            "cox",
        ),
    ] {
        let e = ask(&sb, sandbox::RESEARCHER, &s.id, json)
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Policy, "{json}");
        assert!(e.message.contains(why), "{e}");
    }
    sb.shutdown().await.unwrap();
}

/// The coordinator's view of what each node spent equals the node's own
/// ledger whatever became of the queries: answered, refused on noised
/// values, or failed for want of a quorum after a node had paid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinators_budget_view_equals_each_nodes_ledger_after_failed_queries() {
    let mut sb = Sandbox::prepare(SandboxOptions::new(800, 97))
        .await
        .unwrap();
    let s = study(1.0);
    // hospital-b and hospital-c run only counts for this study.
    for node in ["hospital-b", "hospital-c"] {
        let policy = sb.node_configs.get_mut(node).unwrap();
        policy.policy.studies.get_mut(&s.id).unwrap().analyses = Some(
            [plexus_core::query::AnalysisKind::Count]
                .into_iter()
                .collect(),
        );
    }
    sb.start_all().await.unwrap();
    sb.register_study(&s).await.unwrap();
    ask(&sb, sandbox::RESEARCHER, &s.id, &count_query(50))
        .await
        .unwrap();
    // A histogram: hospital-a answers and pays, the other two refuse on
    // their policy, and the query fails its quorum of two.
    let e = ask(
        &sb,
        sandbox::RESEARCHER,
        &s.id,
        r#"{"analysis": {"histogram": {"variable": "age", "edges": [40, 60, 80, 100]}}, "rho": 0.02}"#,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::Policy, "{e}");
    let report = budget(&sb, &s.id).await;
    let mut most = 0.0f64;
    for node in sb.node_names() {
        let dir = &sb.node_configs[&node].node.state_dir;
        let ledger = Ledger::read(dir).unwrap().spent(&s.id);
        let seen = report
            .nodes
            .iter()
            .find(|n| n.node_id == node)
            .unwrap_or_else(|| panic!("{node} missing from {report:?}"));
        assert!(
            (seen.spent_rho - ledger).abs() < 1e-12,
            "{node}: coordinator {} vs ledger {ledger}",
            seen.spent_rho
        );
        most = most.max(ledger);
    }
    // hospital-a paid for both queries; the study's account says so.
    assert!((most - 0.03).abs() < 1e-12, "{most}");
    assert!((report.spent_rho - 0.03).abs() < 1e-12, "{report:?}");
    sb.shutdown().await.unwrap();
}
