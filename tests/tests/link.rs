//! The node's outbound link: through the hospital's HTTP CONNECT proxy, and
//! back again after the coordinator goes away and returns.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use plexus_tests::{ask, sandbox, Sandbox, SandboxOptions};

/// A minimal HTTP CONNECT proxy on 127.0.0.1 that counts the tunnels it opened.
async fn start_proxy() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tunnels = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = tunnels.clone();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let count = count.clone();
            tokio::spawn(async move {
                let mut client = BufReader::new(client);
                let mut line = String::new();
                client.read_line(&mut line).await.ok()?;
                let target = line.split_whitespace().nth(1)?.to_string();
                loop {
                    let mut h = String::new();
                    client.read_line(&mut h).await.ok()?;
                    if h == "\r\n" || h.is_empty() {
                        break;
                    }
                }
                let mut upstream = TcpStream::connect(&target).await.ok()?;
                let mut client = client.into_inner();
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .ok()?;
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::io::copy_bidirectional(&mut client, &mut upstream)
                    .await
                    .ok()?;
                Some(())
            });
        }
    });
    (format!("http://{addr}"), tunnels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_goes_out_through_the_hospital_proxy() {
    let mut sb = Sandbox::prepare(SandboxOptions::new(200, 17))
        .await
        .unwrap();
    let (proxy, tunnels) = start_proxy().await;
    sb.node_configs
        .get_mut("hospital-b")
        .unwrap()
        .coordinator
        .proxy = Some(proxy);
    sb.start_all().await.unwrap();
    assert_eq!(tunnels.load(std::sync::atomic::Ordering::SeqCst), 1);
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
    assert_eq!(r.provenance.answered, 3);
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reconnect_when_the_coordinator_comes_back() {
    let mut sb = Sandbox::start(SandboxOptions::new(200, 18)).await.unwrap();
    sb.stop_coordinator().await.unwrap();
    // Nodes retry with backoff while nothing listens.
    tokio::time::sleep(Duration::from_secs(2)).await;
    sb.start_coordinator().await.unwrap();
    sb.wait_all_live().await.unwrap();
    sb.shutdown().await.unwrap();
}
