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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_is_signed_by_its_node_and_can_be_checked_later() {
    use plexus_proto::v1 as pb;
    use prost::Message;

    let sb = Sandbox::start(SandboxOptions::new(300, 67)).await.unwrap();
    let study = sandbox::exact_study();
    sb.register_study(&study).await.unwrap();
    let client = sb.client(sandbox::RESEARCHER).await.unwrap();
    let query = plexus_core::Query::from_json(r#"{"analysis": {"count": {}}}"#).unwrap();
    let r = client
        .run_query(&study.id, &query, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(r.status, pb::QueryStatus::Succeeded as i32, "{r:?}");

    // A third party with the coordinator's database checks every answer.
    let store =
        plexus_coordinator::store::Store::open(&sb.coordinator_config.coordinator.database_url)
            .await
            .unwrap();
    let jobs = store.jobs_of(&r.query_id).await.unwrap();
    assert_eq!(jobs.len(), 3);
    for (job_id, node, status) in jobs {
        assert_eq!(status, "answered");
        let (statement, signature, certificate) =
            store.signature_of(&job_id).await.unwrap().unwrap();
        plexus_tls::verify_by_certificate(&certificate, &statement, &signature).unwrap();
        let cert = plexus_tls::CertificateDer::from(certificate.clone());
        assert_eq!(plexus_tls::identity_from_cert(&cert).unwrap().name, node);
        let s = pb::ResultStatement::decode(statement.as_slice()).unwrap();
        assert_eq!(
            (s.job_id.as_str(), s.node_id.as_str()),
            (job_id.as_str(), node.as_str())
        );
        assert_eq!(s.job_hash.len(), 32);
        assert_eq!(s.data_snapshot.len(), 64);
        assert!(matches!(
            s.outcome,
            Some(pb::result_statement::Outcome::Stats(_))
        ));
        // Any change to what was signed is caught.
        let mut edited = statement.clone();
        let last = edited.len() - 1;
        edited[last] ^= 1;
        assert!(plexus_tls::verify_by_certificate(&certificate, &edited, &signature).is_err());
    }
    sb.shutdown().await.unwrap();
}
