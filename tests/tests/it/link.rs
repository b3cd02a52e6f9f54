//! The node's outbound link: through the hospital's HTTP CONNECT proxy, and
//! back again after the coordinator goes away and returns; a job in hand
//! when the link breaks is logged dropped, and the logs still reconcile.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_in_hand_when_the_link_breaks_is_logged_dropped_and_the_logs_reconcile() {
    let mut opts = SandboxOptions::new(200, 19);
    opts.job_timeout_secs = 3;
    let mut sb = Sandbox::prepare(opts).await.unwrap();
    sb.set_node_options(
        "hospital-c",
        plexus_node::RunOptions {
            job_delay: Duration::from_secs(60),
            ..Default::default()
        },
    );
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
    assert_eq!(r.provenance.answered, 2, "{:?}", r.provenance);
    let state = sb.node_configs["hospital-c"].node.state_dir.clone();
    let log = state.join(plexus_node::log::JOB_LOG_FILE);
    let entries = plexus_node::log::JobLog::read_all(&log).unwrap();
    let [accepted] = entries.as_slice() else {
        panic!("hospital-c holds one job: {entries:?}");
    };
    assert_eq!(accepted.outcome, plexus_node::log::ACCEPTED);

    // The coordinator goes away with the job still in hospital-c's hands.
    sb.stop_coordinator().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let dropped = loop {
        let entries = plexus_node::log::JobLog::read_all(&log).unwrap();
        if entries.len() > 1 {
            break entries[1].clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "{entries:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(dropped.job_id, accepted.job_id);
    assert_eq!(dropped.outcome, plexus_node::log::DROPPED_LINK);

    // The coordinator recorded the job missing: the logs agree.
    sb.start_coordinator().await.unwrap();
    sb.wait_all_live().await.unwrap();
    let auditor = sb.client(sandbox::AUDITOR).await.unwrap();
    let r = plexus::audit::reconcile(
        &auditor,
        &plexus::audit::NodeLog::read(&state).unwrap(),
        "hospital-c",
    )
    .await
    .unwrap();
    assert!(r.is_clean(), "{r:?}");
    assert_eq!((r.matched, r.unanswered), (0, 1), "{r:?}");
    sb.shutdown().await.unwrap();
}
