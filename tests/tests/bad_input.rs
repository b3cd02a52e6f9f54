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
