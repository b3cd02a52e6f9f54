//! Who may connect and who may ask: certificates from another CA, the
//! wrong SAN role, researchers outside a study, studies a hospital has not
//! approved.

use std::time::Duration;

use plexus_core::ErrorCode;
use plexus_node::log::JobLog;
use plexus_tests::{ask, sandbox, Sandbox, SandboxOptions};
use plexus_tls::{DevCa, Role};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_with_foreign_or_wrong_certificates_are_refused() {
    let sb = Sandbox::start(SandboxOptions::new(200, 3)).await.unwrap();

    // A node certificate from another CA.
    let rogue_ca = DevCa::generate("rogue").unwrap();
    let dir = sb.dir.join("rogue");
    std::fs::create_dir_all(&dir).unwrap();
    rogue_ca
        .issue(Role::Node, "hospital-x", &[], &[])
        .unwrap()
        .save(&dir, "hospital-x")
        .unwrap();
    let mut cfg = sb.node_configs["hospital-a"].clone();
    cfg.node.id = "hospital-x".into();
    cfg.node.state_dir = dir.join("state");
    cfg.tls.cert = dir.join("hospital-x.pem");
    cfg.tls.key = dir.join("hospital-x.key");
    let token = CancellationToken::new();
    let task = tokio::spawn(plexus_node::run(cfg, token.clone()));

    // A certificate from the network CA, but with role researcher, used as a node.
    let mut cfg = sb.node_configs["hospital-a"].clone();
    cfg.node.id = sandbox::RESEARCHER.into();
    cfg.node.state_dir = sb.dir.join("alice-state");
    cfg.tls.cert = sb.pki.join("alice.pem");
    cfg.tls.key = sb.pki.join("alice.key");
    let token2 = CancellationToken::new();
    let task2 = tokio::spawn(plexus_node::run(cfg, token2.clone()));

    tokio::time::sleep(Duration::from_secs(3)).await;
    let admin = sb.client(sandbox::ADMIN).await.unwrap();
    let nodes = admin
        .admin()
        .list_nodes(plexus_proto::v1::ListNodesRequest {})
        .await
        .unwrap()
        .into_inner()
        .nodes;
    let ids: Vec<&str> = nodes.iter().map(|n| n.node_id.as_str()).collect();
    assert!(!ids.contains(&"hospital-x"), "{ids:?}");
    assert!(!ids.contains(&sandbox::RESEARCHER), "{ids:?}");
    assert_eq!(nodes.iter().filter(|n| n.live).count(), 3);
    token.cancel();
    token2.cancel();
    task.await.unwrap().unwrap();
    task2.await.unwrap().unwrap();

    // A researcher may not call the admin service.
    let alice = sb.client(sandbox::RESEARCHER).await.unwrap();
    let e = alice
        .admin()
        .register_study(plexus_proto::v1::RegisterStudyRequest {
            study: Some(plexus_proto::convert::study_to_pb(
                &sandbox::exact_study(),
                0,
            )),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn researcher_outside_the_study_and_unapproved_studies_are_refused() {
    let sb = Sandbox::start(SandboxOptions::new(300, 4)).await.unwrap();
    let study = sandbox::exact_study();
    sb.register_study(&study).await.unwrap();

    let e = ask(
        &sb,
        sandbox::OUTSIDER,
        &study.id,
        r#"{"analysis": {"count": {}}}"#,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::Policy);
    assert!(e.message.contains("not a member of study"), "{e}");

    // A study registered at the coordinator that no hospital has approved.
    let mut other = sandbox::exact_study();
    other.id = "unapproved".into();
    sb.register_study(&other).await.unwrap();
    let e = ask(
        &sb,
        sandbox::RESEARCHER,
        &other.id,
        r#"{"analysis": {"count": {}}}"#,
    )
    .await
    .unwrap_err();
    assert_eq!(
        e.code,
        ErrorCode::Policy,
        "every node refused under its policy: {e}"
    );
    assert!(e.message.contains("policy"), "node refusals are named: {e}");
    for (name, cfg) in &sb.node_configs {
        let log = JobLog::read_all(&cfg.node.state_dir.join("jobs.log.jsonl")).unwrap();
        let refused: Vec<_> = log.iter().filter(|e| e.study_id == "unapproved").collect();
        assert_eq!(refused.len(), 1, "{name}: {log:?}");
        assert_eq!(refused[0].outcome, "refused:policy");
    }
    sb.shutdown().await.unwrap();
}
