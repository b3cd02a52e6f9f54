//! Mutual TLS over real sockets on 127.0.0.1: identities, rejections,
//! timeouts, CONNECT proxies and a tonic round trip.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use plexus_tls::{
    client_config, connect, dial, incoming, incoming_with_timeout, server_config, ConnectOptions,
    DevCa, Identity, Incoming, Role, TlsConn,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(10);

async fn server(files: &plexus_tls::TlsFiles) -> (Incoming, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (incoming(listener, server_config(files).unwrap()), addr)
}

async fn next_conn(incoming: &mut Incoming) -> TlsConn {
    tokio::time::timeout(WAIT, incoming.next())
        .await
        .expect("server accepted nothing")
        .expect("stream ended")
        .unwrap()
}

/// Asserts the server yields no connection within a short wait.
async fn assert_nothing_accepted(incoming: &mut Incoming) {
    let got = tokio::time::timeout(Duration::from_millis(500), incoming.next()).await;
    assert!(
        got.is_err(),
        "server accepted a connection it should have dropped"
    );
}

#[tokio::test]
async fn handshake_exposes_the_client_identity() {
    let dir = tempfile::tempdir().unwrap();
    let pki = common::pki(dir.path());
    let (mut incoming, addr) = server(&pki.coordinator).await;
    let client = client_config(&pki.node).unwrap();

    let endpoint = format!("https://{addr}");
    let client = tokio::spawn(async move {
        let mut tls = dial(&endpoint, client, &ConnectOptions::default())
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        tls.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.unwrap();
        buf
    });

    let mut conn = next_conn(&mut incoming).await;
    assert_eq!(
        conn.peer().identity,
        Identity {
            role: Role::Node,
            name: "hospital-a".to_owned()
        }
    );
    assert!(conn.peer().remote_addr.ip().is_loopback());
    let mut buf = [0u8; 4];
    conn.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    conn.write_all(b"pong").await.unwrap();
    conn.flush().await.unwrap();
    assert_eq!(&client.await.unwrap(), b"pong");
}

#[tokio::test]
async fn client_cert_from_another_ca_is_dropped_and_serving_continues() {
    let dir = tempfile::tempdir().unwrap();
    let pki = common::pki(dir.path());
    let (mut incoming, addr) = server(&pki.coordinator).await;

    // Trusts the right CA but presents a certificate from a rogue one.
    let rogue = DevCa::generate("rogue").unwrap();
    rogue
        .issue(Role::Node, "hospital-a", &[], &[])
        .unwrap()
        .save(dir.path(), "rogue")
        .unwrap();
    let rogue_files = common::files(dir.path(), &pki.node.ca, "rogue");
    let endpoint = format!("https://{addr}");
    let opts = ConnectOptions::default();
    match dial(&endpoint, client_config(&rogue_files).unwrap(), &opts).await {
        // TLS 1.3: the client finishes first and learns of the rejection on read.
        Ok(mut tls) => {
            let mut buf = [0u8; 1];
            let read = tokio::time::timeout(WAIT, tls.read(&mut buf))
                .await
                .unwrap();
            assert!(matches!(read, Ok(0) | Err(_)), "rogue client read {read:?}");
        }
        Err(e) => assert!(e.to_string().contains("tls handshake"), "{e}"),
    }
    assert_nothing_accepted(&mut incoming).await;

    // A legitimate client still gets through afterwards.
    let good = client_config(&pki.node).unwrap();
    let _tls = dial(&endpoint, good, &opts).await.unwrap();
    assert_eq!(
        next_conn(&mut incoming).await.peer().identity.name,
        "hospital-a"
    );
}

#[tokio::test]
async fn certificate_without_plexus_identity_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let pki = common::pki(dir.path());
    let (mut incoming, addr) = server(&pki.coordinator).await;

    // Signed by the right CA, but with only a DNS SAN.
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.path().join("ca.key")).unwrap())
            .unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(pki.ca.ca_cert_pem(), ca_key).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["anonymous.example".to_owned()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.path().join("anon.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("anon.key"), key.serialize_pem()).unwrap();
    let anon = common::files(dir.path(), &pki.node.ca, "anon");

    let tls = dial(
        &format!("https://{addr}"),
        client_config(&anon).unwrap(),
        &ConnectOptions::default(),
    )
    .await
    .expect("the handshake itself is valid");
    assert_nothing_accepted(&mut incoming).await;
    let mut tls = tls;
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(WAIT, tls.read(&mut buf))
        .await
        .unwrap();
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "dropped client read {read:?}"
    );
}

#[tokio::test]
async fn silent_client_neither_blocks_others_nor_lingers() {
    let dir = tempfile::tempdir().unwrap();
    let pki = common::pki(dir.path());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut incoming = incoming_with_timeout(
        listener,
        server_config(&pki.coordinator).unwrap(),
        Duration::from_millis(300),
    );

    let mut silent = TcpStream::connect(addr).await.unwrap();
    let _tls = dial(
        &format!("https://{addr}"),
        client_config(&pki.node).unwrap(),
        &ConnectOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        next_conn(&mut incoming).await.peer().identity.role,
        Role::Node
    );

    // The server hangs up on the silent client once the handshake times out.
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(WAIT, silent.read(&mut buf))
        .await
        .unwrap();
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "silent client read {read:?}"
    );
}

#[tokio::test]
async fn server_from_another_ca_or_name_is_refused_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let pki = common::pki(dir.path());
    let (_incoming, addr) = server(&pki.coordinator).await;
    let endpoint = format!("https://{addr}");

    // Right certificate, but trusting a different CA.
    let other = tempfile::tempdir().unwrap();
    let (other_ca, _) = DevCa::generate("other")
        .unwrap()
        .save(other.path())
        .unwrap();
    let mut wrong_trust = pki.node.clone();
    wrong_trust.ca = other_ca;
    let err = dial(
        &endpoint,
        client_config(&wrong_trust).unwrap(),
        &ConnectOptions::default(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with(&format!("tls handshake with {addr} failed")),
        "{err}"
    );
    assert!(err.contains("not signed by the ca in tls.ca"), "{err}");

    let opts = ConnectOptions {
        server_name: Some("coordinator.example".to_owned()),
        ..ConnectOptions::default()
    };
    let err = dial(&endpoint, client_config(&pki.node).unwrap(), &opts)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("does not cover \"coordinator.example\""),
        "{err}"
    );

    // "localhost" is in the coordinator certificate.
    let opts = ConnectOptions {
        server_name: Some("localhost".to_owned()),
        ..ConnectOptions::default()
    };
    dial(&endpoint, client_config(&pki.node).unwrap(), &opts)
        .await
        .unwrap();
}

#[tokio::test]
async fn unreachable_address_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let pki = common::pki(dir.path());
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let err = dial(
        &format!("https://{addr}"),
        client_config(&pki.node).unwrap(),
        &ConnectOptions::default(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with(&format!("could not connect to {addr}: ")),
        "{err}"
    );
    assert!(err.contains("nothing is listening there"), "{err}");
}

/// A minimal HTTP CONNECT proxy: records each target, then either tunnels or answers `refuse_with`.
async fn proxy(refuse_with: Option<&'static str>) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let (mut client, _) = listener.accept().await.unwrap();
            let log = log.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut b = [0u8; 1];
                    if client.read(&mut b).await.unwrap() == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let head = String::from_utf8(head).unwrap();
                let target = head
                    .strip_prefix("CONNECT ")
                    .and_then(|r| r.split_whitespace().next())
                    .unwrap()
                    .to_owned();
                assert!(head.contains(&format!("\r\nHost: {target}\r\n")), "{head}");
                log.lock().unwrap().push(target.clone());
                if let Some(reply) = refuse_with {
                    client.write_all(reply.as_bytes()).await.unwrap();
                    return;
                }
                let mut upstream = TcpStream::connect(&target).await.unwrap();
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn dial_tunnels_through_a_connect_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let pki = common::pki(dir.path());
    let (mut incoming, addr) = server(&pki.coordinator).await;
    let (proxy_addr, seen) = proxy(None).await;

    let opts = ConnectOptions {
        proxy: Some(format!("http://{proxy_addr}")),
        ..ConnectOptions::default()
    };
    let mut tls = dial(
        &format!("https://{addr}"),
        client_config(&pki.node).unwrap(),
        &opts,
    )
    .await
    .unwrap();
    tls.write_all(b"hi").await.unwrap();
    tls.flush().await.unwrap();
    let mut conn = next_conn(&mut incoming).await;
    let mut buf = [0u8; 2];
    conn.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hi");
    assert_eq!(*seen.lock().unwrap(), [addr.to_string()]);
    // The server sees the proxy's side of the tunnel, still with the node's identity.
    assert_eq!(conn.peer().identity.name, "hospital-a");
}

#[tokio::test]
async fn proxy_refusal_reports_the_status_line() {
    let dir = tempfile::tempdir().unwrap();
    let pki = common::pki(dir.path());
    let (proxy_addr, _) = proxy(Some("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")).await;
    let opts = ConnectOptions {
        proxy: Some(format!("http://{proxy_addr}")),
        ..ConnectOptions::default()
    };
    let err = dial(
        "https://127.0.0.1:9",
        client_config(&pki.node).unwrap(),
        &opts,
    )
    .await
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        format!(
            "proxy {proxy_addr} refused to tunnel to 127.0.0.1:9: \"HTTP/1.1 403 Forbidden\" \
             (check the proxy allow-list and credentials)"
        )
    );
}

#[tokio::test]
async fn tonic_round_trip_through_proxy_sees_peer_info() {
    let dir = tempfile::tempdir().unwrap();
    let pki = common::pki(dir.path());
    let (incoming, addr) = server(&pki.coordinator).await;
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(common::WhoAmI)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = shutdown_rx.await;
            }),
    );
    let (proxy_addr, seen) = proxy(None).await;

    let node_opts = ConnectOptions {
        server_name: Some("localhost".to_owned()),
        proxy: Some(format!("http://{proxy_addr}")),
        ..ConnectOptions::default()
    };
    let mut channel = connect(
        &format!("https://{addr}"),
        client_config(&pki.node).unwrap(),
        node_opts,
    )
    .await
    .unwrap();
    let response = common::call_whoami(&mut channel).await;
    assert_eq!(response.headers()["grpc-status"], "0");
    assert_eq!(response.headers()["x-identity"], "node:hospital-a");
    assert_eq!(seen.lock().unwrap().len(), 1);

    // A researcher reaches the service but is turned away by role.
    pki.ca
        .issue(Role::Researcher, "alice", &[], &[])
        .unwrap()
        .save(dir.path(), "alice")
        .unwrap();
    let alice = common::files(dir.path(), &pki.node.ca, "alice");
    let mut channel = connect(
        &format!("https://{addr}"),
        client_config(&alice).unwrap(),
        ConnectOptions::default(),
    )
    .await
    .unwrap();
    let status =
        tonic::Status::from_header_map(common::call_whoami(&mut channel).await.headers()).unwrap();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        status.message(),
        "certificate role \"researcher\" may not call this service (needs node)"
    );

    shutdown_tx.send(()).unwrap();
    tokio::time::timeout(WAIT, server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn connect_error_names_the_address() {
    let dir = tempfile::tempdir().unwrap();
    let pki = common::pki(dir.path());
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let err = connect(
        &format!("https://{addr}"),
        client_config(&pki.node).unwrap(),
        ConnectOptions::default(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with(&format!(
            "could not open a grpc channel to https://{addr}: could not connect to {addr}: "
        )),
        "{err}"
    );
    assert!(err.contains("nothing is listening there"), "{err}");
}

#[tokio::test]
async fn a_network_member_cannot_stand_in_for_the_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let pki = common::pki(dir.path());
    // A node certificate that also carries the coordinator's names.
    pki.ca
        .issue(
            plexus_tls::Role::Node,
            "impostor",
            &["localhost".to_owned()],
            &[common::LOCALHOST],
        )
        .unwrap()
        .save(dir.path(), "impostor")
        .unwrap();
    let impostor = common::files(dir.path(), &pki.coordinator.ca, "impostor");
    let (_incoming, addr) = server(&impostor).await;
    let err = plexus_tls::connect(
        &format!("https://{addr}"),
        client_config(&pki.node).unwrap(),
        ConnectOptions::default(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("node:impostor, not of a coordinator"), "{err}");

    // The real coordinator certificate passes (a serving one: the client
    // waits for the server's first HTTP/2 frame to know it was accepted).
    let (incoming, addr) = server(&pki.coordinator).await;
    let _server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(common::WhoAmI)
            .serve_with_incoming(incoming),
    );
    plexus_tls::connect(
        &format!("https://{addr}"),
        client_config(&pki.node).unwrap(),
        ConnectOptions::default(),
    )
    .await
    .unwrap();
}
