//! Bad input gets a clear error and changes nothing already stored.

use plexus_core::{ErrorCode, Query};
use plexus_proto::v1 as pb;
use plexus_tests::{ask, sandbox, Sandbox, SandboxOptions};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_queries_are_refused_with_clear_errors_and_change_nothing() {
    let sb = Sandbox::start(SandboxOptions::new(300, 8)).await.unwrap();
    let study = sandbox::exact_study();
    sb.register_study(&study).await.unwrap();
    let before = ask(
        &sb,
        sandbox::RESEARCHER,
        &study.id,
        r#"{"analysis": {"count": {}}}"#,
    )
    .await
    .unwrap();

    let cases: &[(&str, ErrorCode, &str)] = &[
        (
            r#"{"analysis": {"summary": {"variable": "systolic"}}}"#,
            ErrorCode::Invalid,
            "not in the data dictionary",
        ),
        (
            r#"{"cohort": {"compare": {"variable": "age", "op": ">", "value": "old"}}, "analysis": {"count": {}}}"#,
            ErrorCode::Invalid,
            "cannot be compared",
        ),
        (
            r#"{"analysis": {"summary": {"variable": "smoking"}}}"#,
            ErrorCode::Invalid,
            "needs a numeric variable",
        ),
        (
            r#"{"cohort": {"and": []}, "analysis": {"count": {}}}"#,
            ErrorCode::Invalid,
            "empty \"and\"",
        ),
        (
            r#"{"analysis": {"histogram": {"variable": "age", "edges": [60, 50, 70]}}}"#,
            ErrorCode::Invalid,
            "strictly increasing",
        ),
        (
            r#"{"analysis": {"count": {}"#,
            ErrorCode::Invalid,
            "not valid JSON",
        ),
        // A privacy cost outside what any study may spend: named with the
        // range, never an internal error from the samplers.
        (
            r#"{"analysis": {"count": {}}, "rho": 1e308}"#,
            ErrorCode::Invalid,
            "must be a number from 1e-6 to 100, got 1e308",
        ),
        (
            r#"{"analysis": {"count": {}}, "rho": 1e-300}"#,
            ErrorCode::Invalid,
            "must be a number from 1e-6 to 100, got 1e-300",
        ),
        (
            r#"{"analysis": {"count": {}}, "rho": -0.5}"#,
            ErrorCode::Invalid,
            "privacy cost in zCDP rho",
        ),
    ];
    for (json, code, text) in cases {
        let e = ask(&sb, sandbox::RESEARCHER, &study.id, json)
            .await
            .unwrap_err();
        assert_eq!(e.code, *code, "{json}: {e}");
        assert!(e.message.contains(text), "{json}: {e}");
    }

    // A wire request with no query at all, and a study that does not exist.
    let alice = sb.client(sandbox::RESEARCHER).await.unwrap();
    let e = alice
        .research()
        .submit_query(pb::SubmitQueryRequest {
            study_id: study.id.clone(),
            query: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    let q = Query::from_json(r#"{"analysis": {"count": {}}}"#).unwrap();
    let e = alice
        .research()
        .submit_query(pb::SubmitQueryRequest {
            study_id: "no-such-study".into(),
            query: Some((&q).into()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    // A study definition with an unknown variable is refused and stores nothing.
    let mut bad = sandbox::exact_study();
    bad.id = "broken".into();
    bad.variables.push("ldl_cholesterol".into());
    let e = sb.register_study(&bad).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("\"ldl_cholesterol\" is not in the data dictionary"),
        "{e}"
    );
    let studies = alice
        .research()
        .list_studies(pb::ListStudiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .studies;
    assert_eq!(
        studies.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        [study.id.as_str()]
    );

    // Nothing changed: the same query gives the same answer.
    let after = ask(
        &sb,
        sandbox::RESEARCHER,
        &study.id,
        r#"{"analysis": {"count": {}}}"#,
    )
    .await
    .unwrap();
    assert_eq!(before.value, after.value);

    // Under differential privacy a query may not ask more than its
    // study's whole budget.
    let mut private = sandbox::demo_study();
    private.id = "private".into();
    sb.register_study(&private).await.unwrap();
    let e = ask(
        &sb,
        sandbox::RESEARCHER,
        &private.id,
        r#"{"analysis": {"count": {}}, "rho": 2}"#,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::Invalid, "{e}");
    assert!(
        e.message
            .contains("more than study \"private\"'s whole budget 1"),
        "{e}"
    );
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_config_pointing_at_a_missing_file_refuses_to_start() {
    let sb = Sandbox::prepare(SandboxOptions::new(100, 9)).await.unwrap();
    let mut cfg = sb.node_configs["hospital-a"].clone();
    cfg.data.path = sb.dir.join("sites/hospital-a/no-such-file.parquet");
    let e = plexus_node::run(cfg, CancellationToken::new())
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("no-such-file.parquet"), "{msg}");

    let mut cfg = sb.node_configs["hospital-a"].clone();
    cfg.data.columns.insert("sbp".into(), "systolic".into());
    let e = plexus_node::run(cfg, CancellationToken::new())
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("\"sbp\"") && msg.contains("\"systolic\""),
        "{msg}"
    );

    let text = "[node]\nid = \"x\"\n[coordinator]\naddress = \"https://127.0.0.1:1\"\ncolour = 1\n";
    let path = sb.dir.join("broken.toml");
    std::fs::write(&path, text).unwrap();
    let e = plexus_node::NodeConfig::load(&path)
        .unwrap_err()
        .to_string();
    assert!(e.contains("broken.toml"), "{e}");
}

/// A request the coordinator cannot even decode (nested past the wire
/// format's recursion limit, or over the size limit) is the caller's
/// mistake: `invalid`, never `internal`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_too_deep_requests_are_invalid_not_internal() {
    let sb = Sandbox::start(SandboxOptions::new(50, 9)).await.unwrap();
    let study = sandbox::exact_study();
    sb.register_study(&study).await.unwrap();
    let alice = sb.client(sandbox::RESEARCHER).await.unwrap();
    let count = Query::from_json(r#"{"analysis": {"count": {}}}"#).unwrap();
    let leaf = pb::Cohort {
        node: Some(pb::cohort::Node::Null(pb::NullTest {
            variable: "age".into(),
            is_null: false,
        })),
    };
    let mut deep = leaf.clone();
    for _ in 0..150 {
        deep = pb::Cohort {
            node: Some(pb::cohort::Node::Not(Box::new(deep))),
        };
    }
    let wide = pb::Cohort {
        node: Some(pb::cohort::Node::And(pb::CohortList {
            items: vec![leaf; 700_000],
        })),
    };
    for (cohort, says) in [
        (deep, "nest at most"),
        (wide, "larger than the coordinator accepts"),
    ] {
        let mut q: pb::Query = (&count).into();
        q.cohort = Some(cohort);
        let status = alice
            .research()
            .submit_query(pb::SubmitQueryRequest {
                study_id: study.id.clone(),
                query: Some(q),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        let e = plexus_proto::convert::from_status(&status);
        assert_eq!(e.code, ErrorCode::Invalid, "{e}");
        assert!(e.message.contains(says), "{e}");
        assert!(e.message.len() < 600, "{}", e.message.len());
    }
    sb.shutdown().await.unwrap();
}

/// A researcher waiting for a query while the coordinator dies is told the
/// query id and `unavailable`, never `internal`; once the coordinator is
/// back the same wait (or `plexus result ID`) fetches the query's final
/// state: failed as retryable, since the crash interrupted it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_interrupted_by_a_coordinator_crash_is_fetched_by_its_id() {
    let mut sb = Sandbox::prepare(SandboxOptions::new(100, 10))
        .await
        .unwrap();
    for node in sb.node_names() {
        sb.set_node_options(
            &node,
            plexus_node::RunOptions {
                job_delay: std::time::Duration::from_secs(3),
                ..Default::default()
            },
        );
    }
    sb.start_all().await.unwrap();
    let study = sandbox::exact_study();
    sb.register_study(&study).await.unwrap();
    let alice = sb.client(sandbox::RESEARCHER).await.unwrap();
    let count = Query::from_json(r#"{"analysis": {"count": {}}}"#).unwrap();
    let waiter = sb.client(sandbox::RESEARCHER).await.unwrap();
    let bob = sb.client(sandbox::OUTSIDER).await.unwrap();
    let id = alice.submit(&study.id, &count).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    sb.kill_coordinator().await;

    // While it is down: unavailable, naming the query and the command.
    let e = alice
        .wait_result(&id, std::time::Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable, "{e}");
    assert!(e.message.contains(&id), "{e}");
    assert!(e.message.contains("plexus result"), "{e}");

    // A wait that spans the restart gets the final state.
    let waiting = {
        let id = id.clone();
        tokio::spawn(async move {
            waiter
                .wait_result(&id, std::time::Duration::from_secs(60))
                .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    sb.start_coordinator().await.unwrap();
    let r = waiting.await.unwrap().unwrap();
    assert_eq!(r.status, pb::QueryStatus::Failed as i32, "{r:?}");
    let e = plexus_client::outcome(&r).unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable, "{e}");
    assert!(e.message.contains("submit it again"), "{e}");
    // Another researcher cannot fetch it.
    let e = bob
        .wait_result(&id, std::time::Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound, "{e}");
    sb.shutdown().await.unwrap();
}
