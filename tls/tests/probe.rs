//! A TCP readiness probe (kubelet's `tcpSocket`, a load balancer's health
//! check) connects and hangs up, with a FIN or a reset, without a word of
//! TLS: the listener drops it without a warning in the operator's log,
//! while a client that speaks something other than TLS is still logged.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use plexus_tls::{client_config, dial, incoming, server_config, ConnectOptions};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// Everything this test binary logs.
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
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

fn logged(logs: &Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(&logs.lock().unwrap()).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_probe_leaves_no_warning_but_a_stranger_does() {
    let logs = logs();
    let dir = tempfile::tempdir().unwrap();
    let pki = common::pki(dir.path());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut incoming = incoming(listener, server_config(&pki.coordinator).unwrap());
    tokio::spawn(async move { while incoming.next().await.is_some() {} });

    // Probes: a plain close, and a close with a reset (linger 0).
    for reset in [false, true, false, true] {
        let probe = TcpStream::connect(addr).await.unwrap();
        if reset {
            probe.set_zero_linger().unwrap();
        }
        drop(probe);
    }
    // A real client afterwards: the probes were handled by then.
    let _tls = dial(
        &format!("https://{addr}"),
        client_config(&pki.node).unwrap(),
        &ConnectOptions::default(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let quiet = logged(&logs);
    assert!(!quiet.contains("dropping connection"), "{quiet}");

    // Someone speaking HTTP to the gRPC port is worth a line.
    let mut stranger = TcpStream::connect(addr).await.unwrap();
    stranger
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !logged(&logs).contains("tls handshake failed; dropping connection") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no warning for a client speaking HTTP: {}",
            logged(&logs)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
