//! Faults: the coordinator restarts between queries; a node dies mid-query.

use std::time::Duration;

use plexus_core::pool::NodeStatus;
use plexus_core::ErrorCode;
use plexus_proto::v1 as pb;
use plexus_tests::{ask, sandbox, Sandbox, SandboxOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_coordinator_keeps_studies_jobs_and_results() {
    let mut sb = Sandbox::start(SandboxOptions::new(300, 12)).await.unwrap();
    let study = sandbox::exact_study();
    sb.register_study(&study).await.unwrap();
    let alice = sb.client(sandbox::RESEARCHER).await.unwrap();
    let q =
        plexus_core::Query::from_json(r#"{"analysis": {"summary": {"variable": "age"}}}"#).unwrap();
    let first = alice
        .run_query(&study.id, &q, Duration::from_secs(30))
        .await
        .unwrap();
    let first_result = plexus_client::outcome(&first).unwrap();
    let audit_before = sb
        .client(sandbox::AUDITOR)
        .await
        .unwrap()
        .audit()
        .list_events(pb::ListEventsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .events
        .len();

    sb.stop_coordinator().await.unwrap();
    sb.start_coordinator().await.unwrap();
    sb.wait_all_live().await.unwrap();

    let alice = sb.client(sandbox::RESEARCHER).await.unwrap();
    let again = alice
        .research()
        .get_result(pb::GetResultRequest {
            query_id: first.query_id.clone(),
            wait_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plexus_client::outcome(&again).unwrap(), first_result);
    let studies = alice
        .research()
        .list_studies(pb::ListStudiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .studies;
    assert_eq!(studies.len(), 1);
    let events = sb
        .client(sandbox::AUDITOR)
        .await
        .unwrap()
        .audit()
        .list_events(pb::ListEventsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .events;
    assert!(
        events.len() > audit_before,
        "audit entries survive and grow"
    );
    assert!(events
        .iter()
        .any(|e| e.query_id == first.query_id && e.action == "job"));
    // And a new query works after the restart.
    let second = ask(
        &sb,
        sandbox::RESEARCHER,
        &study.id,
        r#"{"analysis": {"summary": {"variable": "age"}}}"#,
    )
    .await
    .unwrap();
    assert_eq!(second.value, first_result.value);
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_query_is_reported_missing_or_fails_the_quorum() {
    let mut sb = Sandbox::prepare(SandboxOptions::new(300, 13))
        .await
        .unwrap();
    sb.set_node_options(
        "hospital-c",
        plexus_node::RunOptions {
            job_delay: Duration::from_secs(3),
            ..Default::default()
        },
    );
    sb.set_node_options(
        "hospital-b",
        plexus_node::RunOptions {
            job_delay: Duration::from_secs(3),
            ..Default::default()
        },
    );
    sb.start_all().await.unwrap();
    let study = sandbox::exact_study(); // min_nodes = 2
    sb.register_study(&study).await.unwrap();
    let alice = sb.client(sandbox::RESEARCHER).await.unwrap();
    let q = plexus_core::Query::from_json(r#"{"analysis": {"count": {}}}"#).unwrap();

    // hospital-c dies while computing: a and b still make the quorum.
    let submitted = {
        let a = alice.clone();
        let (s, q) = (study.id.clone(), q.clone());
        tokio::spawn(async move { a.run_query(&s, &q, Duration::from_secs(30)).await })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    sb.kill_node("hospital-c").await;
    let r = plexus_client::outcome(&submitted.await.unwrap().unwrap()).unwrap();
    let c = r.provenance.node("hospital-c").unwrap();
    assert_eq!(c.status, NodeStatus::Missing, "{r:?}");
    assert_eq!(r.provenance.answered, 2);

    // Now hospital-b dies mid-query too: only a answers, under the minimum of 2.
    sb.wait_not_live("hospital-c", Duration::from_secs(10))
        .await
        .unwrap();
    let submitted = {
        let a = alice.clone();
        let (s, q) = (study.id.clone(), q.clone());
        tokio::spawn(async move { a.run_query(&s, &q, Duration::from_secs(30)).await })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    sb.kill_node("hospital-b").await;
    let e = plexus_client::outcome(&submitted.await.unwrap().unwrap()).unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable, "{e}");
    assert!(
        e.message.contains("hospital-b") && e.message.contains("at least 2"),
        "{e}"
    );
    sb.shutdown().await.unwrap();
}
