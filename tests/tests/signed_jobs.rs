//! Signed jobs at the node: a node that pins another coordinator key than
//! the one jobs are signed with refuses every job, answers with the reason
//! and logs the refusal; the other nodes answer. (Tampered, expired,
//! replayed and misaddressed envelopes are refused by
//! `plexus_node::envelope`, tested there one by one.)

use plexus_core::pool::NodeStatus;
use plexus_tests::{ask, sandbox, Sandbox, SandboxOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_and_logs_jobs_not_signed_by_the_key_it_pins() {
    let mut sb = Sandbox::prepare(SandboxOptions::new(300, 61))
        .await
        .unwrap();
    let other = sb.dir.join("other-pki");
    let (_, _, other_pub) = plexus_tls::SigningKey::generate_into(&other, "impostor").unwrap();
    sb.node_configs
        .get_mut("hospital-c")
        .unwrap()
        .coordinator
        .signing_key = other_pub;
    sb.start_all().await.unwrap();
    let study = sandbox::exact_study();
    sb.register_study(&study).await.unwrap();
    let r = ask(
        &sb,
        sandbox::RESEARCHER,
        &study.id,
        r#"{"analysis": {"count": {}}}"#,
    )
    .await
    .unwrap();
    let c = r.provenance.node("hospital-c").unwrap();
    assert_eq!(c.status, NodeStatus::Refused, "{c:?}");
    assert!(c.detail.as_deref().unwrap().contains("signature"), "{c:?}");
    assert_eq!(r.provenance.answered, 2);

    let log = sb.node_configs["hospital-c"]
        .node
        .state_dir
        .join("jobs.log.jsonl");
    let text = std::fs::read_to_string(log).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["outcome"], "refused:policy", "{text}");
    assert!(last["detail"].as_str().unwrap().contains("signature"));
    assert_eq!(last["job_id"].as_str().unwrap().len(), 32, "128-bit ids");
    sb.shutdown().await.unwrap();
}
