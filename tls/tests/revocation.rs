//! Revocation lists over real sockets on 127.0.0.1: a revoked client is
//! refused by the server and told why, a revoked server is refused by the
//! client, an expired list is an error before any connection, and a
//! server built with `ServerTls::watch` applies a new list to the next
//! connection without a restart.

use std::net::SocketAddr;
use std::time::Duration;

mod common;

use plexus_tls::{
    client_config, connect, incoming, server_config, CaDir, ConnectOptions, DevCa,
    RevocationReason, RevokeTarget, Role, ServerTls, TlsFiles,
};
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(10);

/// A CA folder as `plexus pki init` leaves it, with a coordinator and two nodes.
fn pki(dir: &std::path::Path) -> CaDir {
    let ca = CaDir::create(dir, DevCa::generate("revocation test ca").unwrap(), 7).unwrap();
    ca.issue(
        Role::Coordinator,
        "coordinator",
        &["localhost".to_owned()],
        &["127.0.0.1".parse().unwrap()],
    )
    .unwrap();
    for node in ["node-a", "node-b"] {
        ca.issue(Role::Node, node, &[], &[]).unwrap();
    }
    ca
}

fn files(ca: &CaDir, name: &str) -> TlsFiles {
    let files = TlsFiles::in_dir(ca.dir(), name);
    assert!(files.crl.is_some(), "pki init writes crl.pem");
    files
}

/// A tonic server answering `WhoAmI` over `incoming(listener, tls)`.
async fn serve(tls: impl Into<ServerTls>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(common::WhoAmI)
            .serve_with_incoming(incoming(listener, tls)),
    );
    addr
}

/// Opens a gRPC channel the way a node does and asks who we are; a
/// refusal is the connect error.
async fn whoami(files: &TlsFiles, addr: SocketAddr) -> Result<String, String> {
    let opts = ConnectOptions {
        server_name: Some("localhost".into()),
        ..ConnectOptions::default()
    };
    let config = client_config(files).map_err(|e| e.to_string())?;
    let mut channel = tokio::time::timeout(WAIT, connect(&format!("https://{addr}"), config, opts))
        .await
        .expect("connect hung")
        .map_err(|e| e.to_string())?;
    let response = common::call_whoami(&mut channel).await;
    Ok(response.headers()["x-identity"]
        .to_str()
        .unwrap()
        .to_owned())
}

#[tokio::test]
async fn a_revoked_client_is_refused_with_the_reason_and_others_get_through() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki(dir.path());
    ca.revoke(
        &RevokeTarget::Name("node-b".into()),
        RevocationReason::KeyCompromise,
        7,
    )
    .unwrap();
    let addr = serve(server_config(&files(&ca, "coordinator")).unwrap()).await;

    let refused = whoami(&files(&ca, "node-b"), addr).await.unwrap_err();
    assert!(
        refused.contains("the server refused us: our certificate has been revoked"),
        "{refused}"
    );
    assert_eq!(
        whoami(&files(&ca, "node-a"), addr).await.unwrap(),
        "node:node-a"
    );
}

#[tokio::test]
async fn a_client_refuses_a_server_whose_certificate_is_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki(dir.path());
    let addr = serve(server_config(&files(&ca, "coordinator")).unwrap()).await;
    ca.revoke(
        &RevokeTarget::Name("coordinator".into()),
        RevocationReason::KeyCompromise,
        7,
    )
    .unwrap();
    let refused = whoami(&files(&ca, "node-a"), addr).await.unwrap_err();
    assert!(
        refused.contains("the server certificate has been revoked"),
        "{refused}"
    );
}

#[tokio::test]
async fn an_expired_list_is_an_error_before_any_connection() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki(dir.path());
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let expired = ca
        .ca()
        .sign_crl_between(&[], 9, now - 3 * 86_400, now - 86_400)
        .unwrap();
    std::fs::write(ca.crl_path(), expired).unwrap();
    let coordinator = files(&ca, "coordinator");
    for e in [
        server_config(&coordinator).unwrap_err().to_string(),
        client_config(&files(&ca, "node-a"))
            .unwrap_err()
            .to_string(),
        ServerTls::watch(coordinator, Duration::from_secs(1))
            .unwrap_err()
            .to_string(),
    ] {
        assert!(
            e.starts_with(&format!(
                "tls.crl \"{}\" cannot be used: the list expired at ",
                ca.crl_path().display()
            )),
            "{e}"
        );
        assert!(e.contains("run `plexus pki crl"), "{e}");
    }
}

#[tokio::test]
async fn a_watched_server_applies_a_new_list_to_the_next_connection() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki(dir.path());
    let mut tls = ServerTls::watch(files(&ca, "coordinator"), Duration::from_millis(50)).unwrap();
    let addr = serve(tls.clone()).await;
    let node_b = files(&ca, "node-b");
    assert_eq!(whoami(&node_b, addr).await.unwrap(), "node:node-b");

    ca.revoke(
        &RevokeTarget::Name("node-b".into()),
        RevocationReason::Unspecified,
        7,
    )
    .unwrap();
    tokio::time::timeout(WAIT, tls.changed())
        .await
        .expect("the new list was not loaded");
    let refused = whoami(&node_b, addr).await.unwrap_err();
    assert!(
        refused.contains("our certificate has been revoked"),
        "{refused}"
    );
    assert_eq!(
        whoami(&files(&ca, "node-a"), addr).await.unwrap(),
        "node:node-a"
    );
}
