//! The hospital's own policy at its node, end to end: a study is pinned by
//! the hash of its registered definition (a changed study is refused until
//! the hospital re-approves it, without a restart), the node can narrow a
//! study's analyses and variables, and the release gate holds results for
//! the data steward, who approves (the held aggregate leaves unchanged),
//! rejects (the researcher sees that node's refusal with the reason) or
//! lets the deadline pass (expired); the queue survives a node restart.

use std::time::Duration;

use prost::Message;

use plexus_core::pool::{NodeStatus, PooledResult, PooledValue};
use plexus_core::{AnalysisKind, ErrorCode, NodeStats, Query};
use plexus_node::log::{JobLog, LogEntry};
use plexus_node::review::{cli, Entry, ReviewQueue, Status, Verdict};
use plexus_proto::v1 as pb;
use plexus_tests::{ask, consenting, sandbox, today, Sandbox, SandboxOptions};

const COUNT: &str = r#"{"analysis": {"count": {}}}"#;
const SUMMARY: &str = r#"{"cohort": {"compare": {"variable": "sex", "op": "=", "value": "F"}},
    "analysis": {"summary": {"variable": "age"}}}"#;

fn log_of(sb: &Sandbox, node: &str) -> Vec<LogEntry> {
    JobLog::read_outcomes(&sb.node_configs[node].node.state_dir.join("jobs.log.jsonl")).unwrap()
}

fn last_log(sb: &Sandbox, node: &str) -> LogEntry {
    log_of(sb, node).pop().expect("the node logged the job")
}

/// The node's log entries for one job, as (outcome, detail).
fn job_log(sb: &Sandbox, node: &str, job_id: &str) -> Vec<(String, String)> {
    log_of(sb, node)
        .into_iter()
        .filter(|e| e.job_id == job_id)
        .map(|e| (e.outcome, e.detail))
        .collect()
}

/// The coordinator's audit outcomes for one job, oldest first.
async fn audited(sb: &Sandbox, job_id: &str) -> Vec<(String, String)> {
    let events = sb
        .client(sandbox::AUDITOR)
        .await
        .unwrap()
        .audit()
        .list_events(pb::ListEventsRequest {
            limit: 100_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    events
        .into_iter()
        .filter(|e| e.job_id == job_id && e.action == "job")
        .map(|e| (e.outcome, e.detail))
        .collect()
}

fn count(r: &PooledResult) -> u64 {
    match &r.value {
        PooledValue::Count { n } => n.count.expect("count released"),
        other => panic!("{other:?}"),
    }
}

/// Waits until `queue` holds a pending result, and returns it.
async fn wait_held(queue: &ReviewQueue) -> Entry {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let pending: Vec<Entry> = queue
            .entries()
            .unwrap()
            .into_iter()
            .filter(|e| e.status() == Status::Pending)
            .collect();
        if let [one] = pending.as_slice() {
            return one.clone();
        }
        assert!(pending.len() < 2, "{pending:?}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "no result was held in {}",
            queue.dir().display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Submits a query without waiting for its result.
async fn submit(
    sb: &Sandbox,
    study: &str,
    json: &str,
) -> tokio::task::JoinHandle<Result<pb::QueryResult, plexus_core::Error>> {
    let client = sb.client(sandbox::RESEARCHER).await.unwrap();
    let (study, query) = (study.to_string(), Query::from_json(json).unwrap());
    tokio::spawn(async move {
        client
            .run_query(&study, &query, Duration::from_secs(90))
            .await
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_study_definition_is_refused_until_the_hospital_re_approves_it() {
    let sb = Sandbox::start(SandboxOptions::new(300, 71)).await.unwrap();
    let approved = sandbox::exact_study();
    sb.register_study(&approved).await.unwrap();
    let r = ask(&sb, sandbox::RESEARCHER, &approved.id, COUNT)
        .await
        .unwrap();
    assert_eq!(r.provenance.answered, 3);

    // The network admin changes the study (one more researcher).
    let mut changed = approved.clone();
    changed.researchers.push(sandbox::OUTSIDER.into());
    let hash = changed.definition_hash();
    assert_ne!(hash, approved.definition_hash());
    sb.register_study(&changed).await.unwrap();
    // `plexus study show` reads the hash the hospitals approve from here.
    let listed = sb
        .client(sandbox::ADMIN)
        .await
        .unwrap()
        .research()
        .list_studies(pb::ListStudiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let shown = listed.studies.iter().find(|s| s.id == changed.id).unwrap();
    assert_eq!(shown.definition_hash, hash);

    // Every node refuses it, saying what it got, what it approved and how
    // to approve the new version.
    let e = ask(&sb, sandbox::RESEARCHER, &changed.id, COUNT)
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Policy, "{e}");
    for node in sb.node_names() {
        let last = last_log(&sb, &node);
        assert_eq!(last.outcome, "refused:policy", "{node}: {last:?}");
        for part in [
            format!("definition hash {hash}"),
            format!("approved: {}", approved.definition_hash()),
            format!(
                "plexus-node approve --config node.toml --study {} --hash {hash}",
                changed.id
            ),
        ] {
            assert!(
                last.detail.contains(&part),
                "{node}: {part}: {}",
                last.detail
            );
        }
    }

    // Two hospitals re-approve: they answer, the third still refuses. No
    // node was restarted.
    sb.approve_at("hospital-a", &changed).unwrap();
    sb.approve_at("hospital-b", &changed).unwrap();
    let r = ask(&sb, sandbox::RESEARCHER, &changed.id, COUNT)
        .await
        .unwrap();
    assert_eq!(r.provenance.answered, 2);
    let c = r.provenance.node("hospital-c").unwrap();
    assert_eq!(c.status, NodeStatus::Refused, "{c:?}");
    assert_eq!(c.code, Some(ErrorCode::Policy));
    assert!(c.detail.as_deref().unwrap().contains(&hash), "{c:?}");

    sb.approve_at("hospital-c", &changed).unwrap();
    let again = ask(&sb, sandbox::RESEARCHER, &changed.id, COUNT)
        .await
        .unwrap();
    assert_eq!(again.provenance.answered, 3);
    let purpose = changed.purpose().unwrap();
    let expected: usize = sb
        .sites
        .iter()
        .map(|s| consenting(s, &purpose, today()).len())
        .sum();
    assert_eq!(count(&again), expected as u64);
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_narrowing_a_study_refuses_other_analyses_and_variables() {
    let mut sb = Sandbox::prepare(SandboxOptions::new(300, 73))
        .await
        .unwrap();
    let study = sandbox::exact_study();
    let narrowed = sb
        .node_configs
        .get_mut("hospital-c")
        .unwrap()
        .policy
        .studies
        .get_mut(&study.id)
        .unwrap();
    narrowed.analyses = Some([AnalysisKind::Count, AnalysisKind::Summary].into());
    narrowed.variables = Some(["age", "sex"].map(String::from).into());
    sb.start_all().await.unwrap();
    sb.register_study(&study).await.unwrap();

    // Inside the narrowing: every node answers.
    let r = ask(&sb, sandbox::RESEARCHER, &study.id, SUMMARY)
        .await
        .unwrap();
    assert_eq!(r.provenance.answered, 3);

    let refused = |r: &PooledResult, parts: &[&str]| {
        assert_eq!(r.provenance.answered, 2, "{r:?}");
        let c = r.provenance.node("hospital-c").unwrap();
        assert_eq!(c.status, NodeStatus::Refused, "{c:?}");
        assert_eq!(c.code, Some(ErrorCode::Policy));
        for part in parts {
            assert!(c.detail.as_deref().unwrap().contains(part), "{part}: {c:?}");
        }
    };
    // An analysis the study allows and this hospital does not.
    let histogram =
        r#"{"analysis": {"histogram": {"variable": "age", "edges": [40, 60, 80, 100]}}}"#;
    let r = ask(&sb, sandbox::RESEARCHER, &study.id, histogram)
        .await
        .unwrap();
    refused(&r, &["histogram", "policy.studies.aaa-outcomes.analyses"]);
    // A variable, in the cohort of an allowed analysis.
    let by_bmi = r#"{"cohort": {"compare": {"variable": "bmi", "op": ">=", "value": 30}},
        "analysis": {"count": {}}}"#;
    let r = ask(&sb, sandbox::RESEARCHER, &study.id, by_bmi)
        .await
        .unwrap();
    refused(&r, &["\"bmi\"", "policy.studies.aaa-outcomes.variables"]);
    assert_eq!(last_log(&sb, "hospital-c").outcome, "refused:policy");
    sb.shutdown().await.unwrap();
}

/// The held aggregate as the coordinator received it: from the statement
/// the node signed, which the coordinator stores with the job.
async fn received(sb: &Sandbox, query_id: &str, node: &str) -> (String, pb::ResultStatement) {
    let store =
        plexus_coordinator::store::Store::open(&sb.coordinator_config.coordinator.database_url)
            .await
            .unwrap();
    let (job_id, _, status) = store
        .jobs_of(query_id)
        .await
        .unwrap()
        .into_iter()
        .find(|(_, n, _)| n == node)
        .unwrap();
    let (statement, _, _) = store.signature_of(&job_id).await.unwrap().unwrap();
    store.close().await;
    (
        status,
        pb::ResultStatement::decode(statement.as_slice()).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_result_leaves_only_when_approved_exactly_as_shown_also_across_a_restart() {
    let mut opts = SandboxOptions::new(300, 79);
    opts.job_timeout_secs = 120;
    let mut sb = Sandbox::prepare(opts).await.unwrap();
    let study = sandbox::exact_study();
    sb.node_configs
        .get_mut("hospital-a")
        .unwrap()
        .policy
        .review
        .insert(study.id.clone());
    sb.start_all().await.unwrap();
    sb.register_study(&study).await.unwrap();
    let queue = sb.review_queue("hospital-a").unwrap();

    // Held: the other nodes answered, the query waits for hospital-a.
    let query = submit(&sb, &study.id, COUNT).await;
    let held = wait_held(&queue).await;
    let job_id = held.held.job_id.clone();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !query.is_finished(),
        "the query finished before the steward decided"
    );
    assert_eq!(
        job_log(&sb, "hospital-a", &job_id)
            .iter()
            .map(|(o, _)| o.as_str())
            .collect::<Vec<_>>(),
        ["held"]
    );

    // What `review show` prints is what leaves.
    let shown = cli::show_json(&held).unwrap();
    assert!(matches!(
        serde_json::from_value::<NodeStats>(shown["stats"].clone()).unwrap(),
        NodeStats::Count(_)
    ));
    assert!(cli::show_text(&held).unwrap().contains(&job_id));
    cli::decide(&queue, &job_id, Verdict::Approved, "", "steward", now_ms()).unwrap();
    let r = query.await.unwrap().unwrap();
    let pooled = plexus_client::outcome(&r).unwrap();
    assert_eq!(pooled.provenance.answered, 3);
    let purpose = study.purpose().unwrap();
    let expected: usize = sb
        .sites
        .iter()
        .map(|s| consenting(s, &purpose, today()).len())
        .sum();
    assert_eq!(count(&pooled), expected as u64);
    let (status, statement) = received(&sb, &r.query_id, "hospital-a").await;
    assert_eq!(status, "answered");
    let Some(pb::result_statement::Outcome::Stats(stats)) = &statement.outcome else {
        panic!("{statement:?}")
    };
    assert_eq!(
        hex(&stats.encode_to_vec()),
        held.held.stats,
        "the held bytes left"
    );
    let stats = NodeStats::try_from(stats.clone()).unwrap();
    assert_eq!(serde_json::to_value(&stats).unwrap(), shown["stats"]);
    let review = statement.review.unwrap();
    assert_eq!(review.decision, "approved");
    // Logged on both sides.
    let logged = job_log(&sb, "hospital-a", &job_id);
    assert_eq!(logged[1].0, "reviewed-approved", "{logged:?}");
    assert!(logged[1].1.contains("approved by steward"), "{logged:?}");
    let outcomes: Vec<String> = audited(&sb, &job_id)
        .await
        .into_iter()
        .map(|(o, _)| o)
        .collect();
    assert_eq!(outcomes, ["sent", "held", "reviewed-approved"]);
    let entry = queue.entry(&job_id).unwrap();
    assert_eq!(entry.status(), Status::Answered(Verdict::Approved));
    assert!(entry.closed.unwrap().starts_with("sent at"));

    // Held again, then the node stops. The queue stays, the steward
    // approves while the node is down, and the restarted node sends it.
    let query = submit(&sb, &study.id, SUMMARY).await;
    let held = wait_held(&queue).await;
    sb.stop_node("hospital-a").await.unwrap();
    sb.wait_not_live("hospital-a", Duration::from_secs(30))
        .await
        .unwrap();
    let listed = cli::list(
        &ReviewQueue::open(&sb.node_configs["hospital-a"].node.state_dir).unwrap(),
        false,
        now_ms(),
    )
    .unwrap();
    assert!(listed.contains(&held.held.job_id), "{listed}");
    cli::decide(
        &queue,
        &held.held.job_id,
        Verdict::Approved,
        "",
        "steward",
        now_ms(),
    )
    .unwrap();
    assert!(!query.is_finished());
    sb.start_node("hospital-a").await.unwrap();
    let r = query.await.unwrap().unwrap();
    let pooled = plexus_client::outcome(&r).unwrap();
    assert_eq!(pooled.provenance.answered, 3, "{pooled:?}");
    let (status, statement) = received(&sb, &r.query_id, "hospital-a").await;
    assert_eq!(status, "answered");
    let Some(pb::result_statement::Outcome::Stats(stats)) = &statement.outcome else {
        panic!("{statement:?}")
    };
    assert_eq!(hex(&stats.encode_to_vec()), held.held.stats);
    let outcomes: Vec<String> = audited(&sb, &held.held.job_id)
        .await
        .into_iter()
        .map(|(o, _)| o)
        .collect();
    assert_eq!(outcomes, ["sent", "held", "reviewed-approved"]);
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_result_is_that_nodes_refusal_with_the_reason_and_an_undecided_one_expires() {
    let mut opts = SandboxOptions::new(300, 83);
    opts.job_timeout_secs = 8;
    let mut sb = Sandbox::prepare(opts).await.unwrap();
    sb.node_configs
        .get_mut("hospital-b")
        .unwrap()
        .policy
        .review
        .insert("*".into());
    sb.start_all().await.unwrap();
    let study = sandbox::exact_study();
    sb.register_study(&study).await.unwrap();
    let queue = sb.review_queue("hospital-b").unwrap();

    let query = submit(&sb, &study.id, COUNT).await;
    let held = wait_held(&queue).await;
    let job_id = held.held.job_id.clone();
    let reason = "our ethics board allows counts of this cohort only from 2027";
    cli::decide(
        &queue,
        &job_id,
        Verdict::Rejected,
        reason,
        "steward",
        now_ms(),
    )
    .unwrap();
    let r = plexus_client::outcome(&query.await.unwrap().unwrap()).unwrap();
    assert_eq!(r.provenance.answered, 2);
    let b = r.provenance.node("hospital-b").unwrap();
    assert_eq!(b.status, NodeStatus::Refused, "{b:?}");
    assert_eq!(b.code, Some(ErrorCode::Policy));
    let detail = b.detail.as_deref().unwrap();
    assert!(
        detail.contains("data steward of hospital-b rejected") && detail.contains(reason),
        "{detail}"
    );
    let logged = job_log(&sb, "hospital-b", &job_id);
    assert_eq!(logged.last().unwrap().0, "reviewed-rejected", "{logged:?}");
    assert!(logged.last().unwrap().1.contains(reason));
    let audit = audited(&sb, &job_id).await;
    let (outcome, detail) = audit.last().unwrap();
    assert_eq!(outcome, "reviewed-rejected", "{audit:?}");
    assert!(detail.contains(reason), "{audit:?}");

    // Nobody decides: the node answers as expired before the deadline, and
    // a late approval is refused.
    let query = submit(&sb, &study.id, COUNT).await;
    let held = wait_held(&queue).await;
    let job_id = held.held.job_id.clone();
    let r = plexus_client::outcome(&query.await.unwrap().unwrap()).unwrap();
    let b = r.provenance.node("hospital-b").unwrap();
    assert_eq!(b.code, Some(ErrorCode::Unavailable), "{b:?}");
    assert!(
        b.detail
            .as_deref()
            .unwrap()
            .contains("did not decide before the job's deadline"),
        "{b:?}"
    );
    let entry = queue.entry(&job_id).unwrap();
    assert_eq!(entry.status(), Status::Answered(Verdict::Expired));
    assert_eq!(entry.decision.as_ref().unwrap().by, "plexus-node");
    let e = cli::decide(&queue, &job_id, Verdict::Approved, "", "steward", now_ms()).unwrap_err();
    assert!(e.to_string().contains("already expired"), "{e}");
    assert_eq!(
        job_log(&sb, "hospital-b", &job_id).last().unwrap().0,
        "review-expired"
    );
    let audit = audited(&sb, &job_id).await;
    assert_eq!(audit.last().unwrap().0, "review-expired", "{audit:?}");
    sb.shutdown().await.unwrap();
}

/// The first hour of a new study, with the real binaries and the commands
/// the walkthrough gives: the network admin registers a study no hospital has
/// heard of; the researcher is told once, for all three nodes, that it is
/// in no hospital's policy; each hospital adds its table and restarts, and
/// the researcher is told once that no hospital has approved it yet (not
/// that it changed); each hospital approves the hash `plexus study show`
/// prints with `plexus-node approve`, and the query is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_study_registered_from_scratch_is_answered_once_each_hospital_approves_it() {
    use plexus_tests::processes::{Install, InstallOptions};

    // Under differential privacy, as the walkthrough's study.
    let opts = InstallOptions {
        exact: false,
        ..InstallOptions::fast()
    };
    let install = Install::new(opts).await.unwrap();
    let (coordinator, mut nodes) = install.start_all().await.unwrap();
    let study = "first-hour";
    let text = std::fs::read_to_string(&install.study_file)
        .unwrap()
        .replacen("id = \"aaa-outcomes\"", &format!("id = \"{study}\""), 1);
    let file = install.path("/etc/plexus/first-hour.toml");
    std::fs::write(&file, text).unwrap();
    let file = file.display().to_string();
    install
        .cli("admin", &["study", "register", "--file", &file])
        .await
        .unwrap();
    let query = install.root.join("count.json");
    std::fs::write(&query, COUNT).unwrap();
    let query = query.display().to_string();
    let args = [
        "query", "--study", study, "--file", &query, "--output", "json",
    ];
    let ask = || install.cli("alice", &args);
    let all = "hospital-a, hospital-b, hospital-c (refused: policy: ";

    // In no hospital's policy: said once, naming the three nodes.
    let e = ask().await.unwrap_err().to_string();
    assert!(e.contains(all), "{e}");
    let said = format!("study \"{study}\" is not in this hospital's policy");
    assert_eq!(e.matches(&said).count(), 1, "{e}");
    assert!(e.contains(&format!("[policy.studies.{study}]")), "{e}");

    // Each hospital takes part (a table, no approval yet) and restarts.
    for id in &install.nodes {
        let config = install.path(&format!("/etc/plexus/node-{id}.toml"));
        let mut text = std::fs::read_to_string(&config).unwrap();
        text.push_str(&format!("\n[policy.studies.{study}]\n"));
        std::fs::write(&config, text).unwrap();
        let old = nodes.remove(id).unwrap();
        old.terminate(Duration::from_secs(20)).await.unwrap();
        nodes.insert(id.clone(), install.start_node(id, None).unwrap());
    }
    install.wait_all_live(&coordinator).await.unwrap();

    // Not approved yet: said once, without talk of a change.
    let e = ask().await.unwrap_err().to_string();
    assert!(e.contains(all), "{e}");
    let said = format!("study \"{study}\" has not been approved by this hospital yet");
    assert_eq!(e.matches(&said).count(), 1, "{e}");
    for wrong in ["changed", "re-approve", "approved:"] {
        assert!(!e.contains(wrong), "{wrong}: {e}");
    }

    // What the hospitals approve: the hash `plexus study show` prints,
    // the one the refusal names too.
    let shown = install
        .cli("admin", &["study", "show", study])
        .await
        .unwrap();
    let hash = shown
        .lines()
        .find_map(|l| l.strip_prefix("definition"))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no hash in:\n{shown}"))
        .to_string();
    let approve = format!("plexus-node approve --config node.toml --study {study} --hash {hash}");
    assert!(e.contains(&approve), "{e}");
    for id in &install.nodes {
        let config = install.path(&format!("/etc/plexus/node-{id}.toml"));
        let config = config.display().to_string();
        let args = [
            "approve", "--config", &config, "--study", study, "--hash", &hash,
        ];
        plexus_tests::processes::run(&install.bins.node, &args)
            .await
            .unwrap();
    }

    // Answered by every hospital, without another restart.
    let out = ask().await.unwrap();
    let r: PooledResult = serde_json::from_str(&out).unwrap();
    assert_eq!(r.provenance.answered, 3, "{r:?}");
    for (_, node) in nodes {
        node.terminate(Duration::from_secs(20)).await.unwrap();
    }
    coordinator
        .terminate(Duration::from_secs(20))
        .await
        .unwrap();
}
