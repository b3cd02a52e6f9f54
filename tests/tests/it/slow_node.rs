//! Fault: a node slower than the coordinator's job deadline. The query ends
//! with the other nodes' correct answer and the slow node reported missing
//! (or a clear error when too few answer in time); the slow node's late
//! answer is not counted; once fast again it answers the next query.

use std::time::Duration;

use plexus_core::pool::{NodeStatus, PooledValue};
use plexus_core::{Dictionary, ErrorCode, Query, RawStats};
use plexus_proto::v1 as pb;
use plexus_tests::{ask, consenting, reference, sandbox, today, Sandbox, SandboxOptions};

const COUNT: &str = r#"{"cohort": {"compare": {"variable": "age", "op": ">=", "value": 70}}, "analysis": {"count": {}}}"#;

/// The coordinator gives each job this long...
const JOB_TIMEOUT_SECS: u64 = 2;
/// ...and the slow nodes take this long over their first job.
const SLOW: Duration = Duration::from_secs(4);

async fn start(slow: &[&str], seed: u64) -> Sandbox {
    let mut opts = SandboxOptions::new(300, seed);
    opts.job_timeout_secs = JOB_TIMEOUT_SECS;
    let mut sb = Sandbox::prepare(opts).await.unwrap();
    for node in slow {
        sb.set_node_options(
            node,
            plexus_node::RunOptions {
                job_delay: SLOW,
                slow_jobs: Some(1),
                ..Default::default()
            },
        );
    }
    sb.start_all().await.unwrap();
    sb
}

/// The count over the named sites' consenting patients.
fn expected_count(sb: &Sandbox, sites: &[&str]) -> u64 {
    let study = sandbox::exact_study();
    let purpose = study.purpose().unwrap();
    let query = Query::from_json(COUNT).unwrap();
    let dict = Dictionary::cardiovascular();
    sb.sites
        .iter()
        .filter(|s| sites.contains(&s.name.as_str()))
        .map(
            |s| match reference(&consenting(s, &purpose, today()), &query, &dict) {
                RawStats::Count(n) => n,
                other => panic!("{other:?}"),
            },
        )
        .sum()
}

fn count_of(v: &PooledValue) -> Option<u64> {
    match v {
        PooledValue::Count { n } => n.count,
        other => panic!("not a count: {other:?}"),
    }
}

/// The coordinator's audit entries for `query_id`'s job at `node`: its job
/// id and the outcomes recorded, in order.
async fn job_audit(sb: &Sandbox, query_id: &str, node: &str) -> (String, Vec<String>) {
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
    let mine: Vec<&pb::AuditEvent> = events
        .iter()
        .filter(|e| e.query_id == query_id && e.node_id == node && e.action == "job")
        .collect();
    let job_id = mine.first().map(|e| e.job_id.clone()).unwrap_or_default();
    assert!(
        mine.iter().all(|e| e.job_id == job_id),
        "one job per node: {mine:?}"
    );
    (job_id, mine.iter().map(|e| e.outcome.clone()).collect())
}

/// Waits until `node`'s own job log records `job_id`: the node finished
/// the job after the deadline and sent its answer. Returns the entry.
async fn wait_answered_late(sb: &Sandbox, node: &str, job_id: &str) -> plexus_node::log::LogEntry {
    let path = sb.node_configs[node]
        .node
        .state_dir
        .join(plexus_node::log::JOB_LOG_FILE);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let entries = plexus_node::log::JobLog::read_outcomes(&path).unwrap_or_default();
        if let Some(e) = entries.into_iter().find(|e| e.job_id == job_id) {
            return e;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{node} never answered job {job_id}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_past_the_deadline_is_reported_missing_and_its_late_answer_is_ignored() {
    let sb = start(&["hospital-c"], 21).await;
    let study = sandbox::exact_study(); // min_nodes = 2
    sb.register_study(&study).await.unwrap();
    let alice = sb.client(sandbox::RESEARCHER).await.unwrap();
    let query = Query::from_json(COUNT).unwrap();

    // hospital-c takes longer than the deadline: a and b make the answer.
    let first = alice
        .run_query(&study.id, &query, Duration::from_secs(30))
        .await
        .unwrap();
    let r = plexus_client::outcome(&first).unwrap();
    let c = r.provenance.node("hospital-c").unwrap();
    assert_eq!(c.status, NodeStatus::Missing, "{r:?}");
    assert!(
        c.detail.as_deref().unwrap_or_default().contains("deadline"),
        "{c:?}"
    );
    assert_eq!(r.provenance.answered, 2);
    let ab = expected_count(&sb, &["hospital-a", "hospital-b"]);
    assert_eq!(count_of(&r.value), Some(ab));

    // hospital-c answers after all: it sees the deadline passed and
    // releases nothing, and the coordinator takes nothing from its answer.
    let (job_id, outcomes) = job_audit(&sb, &first.query_id, "hospital-c").await;
    assert_eq!(outcomes, ["sent", "missing"]);
    let late = wait_answered_late(&sb, "hospital-c", &job_id).await;
    assert_eq!(late.outcome, "failed:unavailable", "{late:?}");
    assert!(late.detail.contains("deadline"), "{late:?}");

    // Fast again, hospital-c answers the next query with the others. Its
    // answers share one stream, so the late one reached the coordinator
    // before this one.
    let second = ask(&sb, sandbox::RESEARCHER, &study.id, COUNT)
        .await
        .unwrap();
    assert_eq!(second.provenance.answered, 3, "{:?}", second.provenance);
    assert_eq!(
        count_of(&second.value),
        Some(expected_count(
            &sb,
            &["hospital-a", "hospital-b", "hospital-c"]
        ))
    );

    // The late answer changed nothing: the first result and its job's
    // audit trail are as they were at the deadline.
    let again = alice
        .research()
        .get_result(pb::GetResultRequest {
            query_id: first.query_id.clone(),
            wait_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plexus_client::outcome(&again).unwrap(), r);
    let (_, outcomes) = job_audit(&sb, &first.query_id, "hospital-c").await;
    assert_eq!(outcomes, ["sent", "missing"], "late answer was recorded");
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_nodes_past_the_deadline_fail_the_quorum_with_a_clear_error() {
    let sb = start(&["hospital-b", "hospital-c"], 22).await;
    let study = sandbox::exact_study(); // min_nodes = 2
    sb.register_study(&study).await.unwrap();

    let e = ask(&sb, sandbox::RESEARCHER, &study.id, COUNT)
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable, "{e}");
    assert!(
        e.message.contains("at least 2")
            && e.message.contains("hospital-b")
            && e.message.contains("hospital-c"),
        "{e}"
    );

    // Both fast again: the next query is answered by all three.
    let next = ask(&sb, sandbox::RESEARCHER, &study.id, COUNT)
        .await
        .unwrap();
    assert_eq!(next.provenance.answered, 3, "{:?}", next.provenance);
    assert_eq!(
        count_of(&next.value),
        Some(expected_count(
            &sb,
            &["hospital-a", "hospital-b", "hospital-c"]
        ))
    );
    sb.shutdown().await.unwrap();
}
