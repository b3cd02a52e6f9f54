//! Certificates in a running network: a revoked node is cut off and
//! refused at its next connection while the others keep answering; an
//! expired or unreadable revocation list stops a daemon at start-up; a
//! rotated coordinator certificate is served to new connections without a
//! restart; a rotated node certificate is used (and signs the node's
//! results) from its next connection.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use plexus_core::pool::NodeStatus;
use plexus_proto::v1 as pb;
use plexus_tests::{ask, sandbox, Sandbox, SandboxOptions};
use plexus_tls::{RevocationReason, RevokeTarget, Role, TlsFiles};
use tokio_util::sync::CancellationToken;

const COUNT: &str = r#"{"analysis": {"count": {}}}"#;

/// Everything logged by this test binary (all its tests run in one process).
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
            .with_writer(move || Capture(sink.clone()))
            .init();
        buf
    })
    .clone()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Waits until some log line contains every one of `parts`.
async fn wait_for_log(parts: &[&str]) -> String {
    let logs = logs();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        if let Some(line) = text.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
            return line.to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no log line with {parts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Audit events with `action`, as an auditor sees them.
async fn audit_events(sb: &Sandbox, action: &str) -> Vec<pb::AuditEvent> {
    let auditor = sb.client(sandbox::AUDITOR).await.unwrap();
    auditor
        .audit()
        .list_events(pb::ListEventsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .events
        .into_iter()
        .filter(|e| e.action == action)
        .collect()
}

/// The serial of the certificate the coordinator presents to a new connection.
async fn served_serial(sb: &Sandbox) -> String {
    let opts = plexus_tls::ConnectOptions {
        server_name: Some("localhost".into()),
        ..Default::default()
    };
    let config = plexus_tls::client_config(&TlsFiles::in_dir(&sb.pki, sandbox::ADMIN)).unwrap();
    let tls = plexus_tls::dial(&sb.coordinator_url(), config, &opts)
        .await
        .unwrap();
    let cert = &tls.get_ref().1.peer_certificates().unwrap()[0];
    serial_of(cert.as_ref())
}

fn serial_of(der: &[u8]) -> String {
    plexus_tls::serial_from_cert(&plexus_tls::CertificateDer::from(der)).unwrap()
}

/// Runs a count in the exact study; returns each node's status.
async fn count_statuses(sb: &Sandbox) -> Vec<(String, NodeStatus)> {
    let study = sandbox::exact_study();
    let r = ask(sb, sandbox::RESEARCHER, &study.id, COUNT)
        .await
        .unwrap();
    r.provenance
        .nodes
        .iter()
        .map(|n| (n.node.clone(), n.status))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_node_is_cut_off_and_refused_at_its_next_connection_while_the_others_answer() {
    logs();
    let sb = Sandbox::start(SandboxOptions::new(300, 71)).await.unwrap();
    sb.register_study(&sandbox::exact_study()).await.unwrap();
    assert!(count_statuses(&sb)
        .await
        .iter()
        .all(|(_, s)| *s == NodeStatus::Answered));
    let coordinator_serial = served_serial(&sb).await;

    let (revoked, crl) = sb
        .ca
        .revoke(
            &RevokeTarget::Name("hospital-b".into()),
            RevocationReason::KeyCompromise,
            7,
        )
        .unwrap();
    assert_eq!(revoked.len(), 1);
    assert_eq!(crl.revoked, 1);

    // The coordinator loads the list, closes hospital-b's open stream...
    sb.wait_not_live("hospital-b", Duration::from_secs(15))
        .await
        .unwrap();
    // ... telling the node why ...
    wait_for_log(&[
        "cannot reach the coordinator",
        "stream failed: this node's certificate has been revoked",
    ])
    .await;
    // ... and refuses its reconnection at the handshake; the node logs why,
    // and so does the coordinator, naming the certificate.
    wait_for_log(&[
        "cannot reach the coordinator",
        "the server refused us: our certificate has been revoked",
    ])
    .await;
    wait_for_log(&[
        "client certificate refused",
        "peer=node:hospital-b",
        &format!("serial={}", revoked[0].serial),
        "Revoked",
    ])
    .await;
    let node_b = TlsFiles::in_dir(&sb.pki, "hospital-b");
    let e = plexus_client::Client::connect_with(
        &sb.coordinator_url(),
        &node_b,
        Some("localhost".into()),
    )
    .await
    .err()
    .expect("a revoked certificate connected");
    assert!(
        format!("{e:#}").contains("our certificate has been revoked"),
        "{e:#}"
    );

    // Still out a while later (it keeps retrying), and the others answer.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let statuses = count_statuses(&sb).await;
    for (node, status) in &statuses {
        let expected = if node == "hospital-b" {
            NodeStatus::Missing
        } else {
            NodeStatus::Answered
        };
        assert_eq!(*status, expected, "{statuses:?}");
    }

    let cut = audit_events(&sb, "node.revoked").await;
    assert_eq!(cut.len(), 1, "{cut:?}");
    assert_eq!(
        (cut[0].node_id.as_str(), cut[0].outcome.as_str()),
        ("hospital-b", "refused")
    );
    let reloads = audit_events(&sb, "tls.reload").await;
    assert!(
        reloads
            .iter()
            .any(|e| e.detail.contains("revocation list number 2 (1 revoked)")),
        "{reloads:?}"
    );
    // The coordinator's own certificate is untouched.
    assert_eq!(served_serial(&sb).await, coordinator_serial);
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_or_unreadable_revocation_list_stops_the_daemons_at_start_up() {
    let sb = Sandbox::prepare(SandboxOptions::new(50, 73)).await.unwrap();
    let crl = sb.ca.crl_path();
    let now = chrono::Utc::now().timestamp();
    let expired = sb
        .ca
        .ca()
        .sign_crl_between(&[], 2, now - 8 * 86_400, now - 86_400)
        .unwrap();
    std::fs::write(&crl, expired).unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = plexus_coordinator::run(
        sb.coordinator_config.clone(),
        listener,
        CancellationToken::new(),
    )
    .await
    .unwrap_err()
    .to_string();
    let expected = format!(
        "tls.crl \"{}\" cannot be used: the list expired at ",
        crl.display()
    );
    assert!(e.contains(&expected), "{e}");
    assert!(e.contains("run `plexus pki crl"), "{e}");

    let node = sb.node_configs["hospital-a"].clone();
    let e = tokio::time::timeout(
        Duration::from_secs(30),
        plexus_node::run(node.clone(), CancellationToken::new()),
    )
    .await
    .expect("the node started with an expired list")
    .unwrap_err()
    .to_string();
    assert!(e.contains(&expected), "{e}");

    std::fs::write(
        &crl,
        "-----BEGIN X509 CRL-----\nMIIB\n-----END X509 CRL-----\n",
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = plexus_coordinator::run(
        sb.coordinator_config.clone(),
        listener,
        CancellationToken::new(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains(&format!("tls.crl \"{}\" cannot be used: ", crl.display())),
        "{e}"
    );

    std::fs::remove_file(&crl).unwrap();
    let e = plexus_node::config::NodeConfig::validate(&node)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!(
            "tls.crl file \"{}\" does not exist",
            crl.display()
        )),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_coordinator_certificate_is_served_to_new_connections_without_a_restart() {
    let sb = Sandbox::start(SandboxOptions::new(300, 79)).await.unwrap();
    sb.register_study(&sandbox::exact_study()).await.unwrap();
    let first = served_serial(&sb).await;

    let localhost = ["localhost".to_string()];
    let loopback = [IpAddr::V4(Ipv4Addr::LOCALHOST)];
    let (rotated, _, key) = sb
        .ca
        .issue(Role::Coordinator, "coordinator", &localhost, &loopback)
        .unwrap();
    assert_ne!(rotated.serial, first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while served_serial(&sb).await != rotated.serial {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rotated certificate was not served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Connections opened before the rotation were not dropped, and new
    // ones (each query's client) work.
    sb.wait_all_live().await.unwrap();
    assert!(count_statuses(&sb)
        .await
        .iter()
        .all(|(_, s)| *s == NodeStatus::Answered));
    let reloads = audit_events(&sb, "tls.reload").await;
    assert!(
        reloads.iter().any(|e| e
            .detail
            .contains(&format!("certificate serial {}", rotated.serial))),
        "{reloads:?}"
    );

    // A broken key is not taken: the rotated certificate keeps being served.
    std::fs::write(&key, "not a key").unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(served_serial(&sb).await, rotated.serial);
    assert_eq!(audit_events(&sb, "tls.reload").await.len(), reloads.len());
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_node_certificate_is_used_and_signs_from_the_next_connection() {
    let sb = Sandbox::start(SandboxOptions::new(300, 83)).await.unwrap();
    let study = sandbox::exact_study();
    sb.register_study(&study).await.unwrap();
    let old = sb
        .ca
        .index()
        .unwrap()
        .certificates
        .into_iter()
        .find(|e| e.identity == "node:hospital-a")
        .unwrap();

    // The admin issues the new certificate into the node's files, then
    // retires the old one: the coordinator cuts the old connection and the
    // node reconnects with the files as they are now.
    let (rotated, _, _) = sb.ca.issue(Role::Node, "hospital-a", &[], &[]).unwrap();
    sb.ca
        .revoke(
            &RevokeTarget::Serial(old.serial.clone()),
            RevocationReason::Superseded,
            7,
        )
        .unwrap();
    let cut = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if !audit_events(&sb, "node.revoked").await.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(cut.is_ok(), "the old connection was not cut");
    sb.wait_all_live().await.unwrap();

    let client = sb.client(sandbox::RESEARCHER).await.unwrap();
    let query = plexus_core::Query::from_json(COUNT).unwrap();
    let r = client
        .run_query(&study.id, &query, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(r.status, pb::QueryStatus::Succeeded as i32, "{r:?}");
    let store =
        plexus_coordinator::store::Store::open(&sb.coordinator_config.coordinator.database_url)
            .await
            .unwrap();
    let jobs = store.jobs_of(&r.query_id).await.unwrap();
    let (job_id, _, status) = jobs.iter().find(|(_, n, _)| n == "hospital-a").unwrap();
    assert_eq!(status, "answered");
    let (statement, signature, certificate) = store.signature_of(job_id).await.unwrap().unwrap();
    assert_eq!(serial_of(&certificate), rotated.serial);
    plexus_tls::verify_by_certificate(&certificate, &statement, &signature).unwrap();
    sb.shutdown().await.unwrap();
}
