//! Who may connect and who may ask: certificates from another CA, the
//! wrong SAN role, researchers outside a study, studies a hospital has not
//! approved; a second connection with a node's identity (the newest wins,
//! the node comes back); what researchers see of the nodes; control
//! characters refused on entry and escaped in the audit log's outputs.

use std::time::Duration;

use plexus::commands::audit_text;
use plexus::output::Format;
use plexus_core::{ErrorCode, StudyDefinition};
use plexus_node::log::JobLog;
use plexus_proto::v1 as pb;
use plexus_proto::v1::node_link_client::NodeLinkClient;
use plexus_tests::{ask, sandbox, Sandbox, SandboxOptions};
use plexus_tls::{DevCa, Role};
use tokio_stream::wrappers::ReceiverStream;
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
        let log = JobLog::read_outcomes(&cfg.node.state_dir.join("jobs.log.jsonl")).unwrap();
        let refused: Vec<_> = log.iter().filter(|e| e.study_id == "unapproved").collect();
        assert_eq!(refused.len(), 1, "{name}: {log:?}");
        assert_eq!(refused[0].outcome, "refused:policy");
    }
    sb.shutdown().await.unwrap();
}

/// Attaches to the coordinator's node link with `node`'s certificate, as a
/// second daemon (or a thief of its key) would, and reads the welcome.
async fn attach_as(
    sb: &Sandbox,
    node: &str,
) -> (
    tokio::sync::mpsc::Sender<pb::NodeMessage>,
    tonic::Streaming<pb::CoordinatorMessage>,
) {
    let client = plexus_client::Client::connect_with(
        &sb.coordinator_url(),
        &plexus_tls::TlsFiles::in_dir(&sb.pki, node),
        Some("localhost".into()),
    )
    .await
    .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tx.send(pb::NodeMessage {
        msg: Some(pb::node_message::Msg::Hello(pb::Hello {
            node_id: node.into(),
            version: "0.0.0-impostor".into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let mut inbound = NodeLinkClient::new(client.channel())
        .attach(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = inbound.message().await.unwrap().unwrap();
    assert!(
        matches!(first.msg, Some(pb::coordinator_message::Msg::Welcome(_))),
        "{first:?}"
    );
    (tx, inbound)
}

async fn node_info(sb: &Sandbox, who: &str, node: &str) -> Option<pb::NodeInfo> {
    sb.client(who)
        .await
        .unwrap()
        .admin()
        .list_nodes(pb::ListNodesRequest {})
        .await
        .unwrap()
        .into_inner()
        .nodes
        .into_iter()
        .find(|n| n.node_id == node)
}

/// Polls until `node` is live on a connection made after `after` (unix ms).
async fn wait_reconnected(sb: &Sandbox, node: &str, after: i64) -> pb::NodeInfo {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(n) = node_info(sb, sandbox::ADMIN, node).await {
            if n.live && n.connected_unix_ms > after && n.version != "0.0.0-impostor" {
                return n;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{node} did not reconnect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn audit_entries(sb: &Sandbox) -> Vec<plexus_core::audit::AuditEntry> {
    let auditor = sb.client(sandbox::AUDITOR).await.unwrap();
    let mut entries = Vec::new();
    plexus::audit::stream_log(&auditor, |e| {
        entries.push(e);
        Ok(())
    })
    .await
    .unwrap();
    entries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_attach_with_a_nodes_identity_does_not_orphan_the_node() {
    let sb = Sandbox::start(SandboxOptions::new(200, 23)).await.unwrap();
    let study = sandbox::exact_study();
    sb.register_study(&study).await.unwrap();
    let before = node_info(&sb, sandbox::ADMIN, "hospital-a").await.unwrap();
    assert!(before.live);

    // An impostor with hospital-a's certificate attaches, which replaces
    // the real node's stream, and goes away at once (its end removes the
    // entry it owns). The real node was told and is back within its
    // backoff (at most 1 s in the sandbox).
    let t0 = plexus_coordinator::store::now_ms();
    let (tx, inbound) = attach_as(&sb, "hospital-a").await;
    drop((tx, inbound));
    let back = wait_reconnected(&sb, "hospital-a", t0).await;
    assert_ne!(back.peer_address, before.peer_address, "a new connection");

    // An impostor that stays: the real node reconnects and wins, and the
    // impostor's stream ends with a status saying why. Its end then
    // evicts nobody.
    let t1 = plexus_coordinator::store::now_ms();
    let (tx, mut inbound) = attach_as(&sb, "hospital-a").await;
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match inbound.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => break None,
                Err(status) => break Some(status),
            }
        }
    })
    .await
    .expect("the real node came back and replaced the impostor")
    .expect("the replaced stream ends with a status");
    assert_eq!(end.code(), tonic::Code::Aborted, "{end:?}");
    assert!(
        end.message()
            .starts_with("another connection with this node's identity replaced this stream"),
        "{end:?}"
    );
    let real = wait_reconnected(&sb, "hospital-a", t1).await;
    drop((tx, inbound));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = node_info(&sb, sandbox::ADMIN, "hospital-a").await.unwrap();
    assert!(after.live, "the impostor's end left the real node alone");
    assert_eq!(after.connected_unix_ms, real.connected_unix_ms);
    assert_eq!(after.peer_address, real.peer_address);

    // Jobs keep working on every node.
    let r = ask(
        &sb,
        sandbox::RESEARCHER,
        &study.id,
        r#"{"analysis": {"count": {}}}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.provenance.answered, 3);

    // Each replacement is its own audit entry, naming both peers.
    let replaced: Vec<_> = audit_entries(&sb)
        .await
        .into_iter()
        .filter(|e| e.action == "node.replaced")
        .collect();
    assert!(replaced.len() >= 3, "{replaced:#?}");
    assert!(replaced
        .iter()
        .all(|e| e.node_id == "hospital-a" && e.who == "hospital-a" && e.role == "node"));
    assert!(
        replaced[0]
            .detail
            .contains(&format!("replaced the one from {}", before.peer_address)),
        "{replaced:#?}"
    );
    assert!(
        replaced.iter().any(|e| e
            .detail
            .starts_with(&format!("connection from {}", real.peer_address))),
        "the real node's return replaced the impostor: {replaced:#?}"
    );
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn researchers_see_their_studies_nodes_names_and_liveness_only() {
    let sb = Sandbox::start(SandboxOptions::new(200, 24)).await.unwrap();
    let list = |who: &'static str| {
        let sb = &sb;
        async move {
            sb.client(who)
                .await
                .unwrap()
                .admin()
                .list_nodes(pb::ListNodesRequest {})
                .await
                .unwrap()
                .into_inner()
        }
    };
    let alice = list(sandbox::RESEARCHER).await;
    assert!(alice.liveness_only);
    assert!(
        alice.nodes.is_empty(),
        "alice is in no study yet: {alice:?}"
    );

    let mut study = sandbox::exact_study();
    study.id = "liveness-view".into();
    study.nodes = vec![
        "hospital-a".into(),
        "hospital-b".into(),
        "hospital-z".into(),
    ];
    sb.register_study(&study).await.unwrap();
    let bare = |id: &str, live: bool| pb::NodeInfo {
        node_id: id.into(),
        live,
        ..Default::default()
    };
    let alice = list(sandbox::RESEARCHER).await;
    assert!(alice.liveness_only);
    assert_eq!(
        alice.nodes,
        [
            bare("hospital-a", true),
            bare("hospital-b", true),
            // In her study, never connected.
            bare("hospital-z", false),
        ],
        "names and liveness of her study's nodes, nothing else"
    );
    let bob = list(sandbox::OUTSIDER).await;
    assert!(bob.liveness_only && bob.nodes.is_empty(), "{bob:?}");

    for who in [sandbox::ADMIN, sandbox::AUDITOR] {
        let r = list(who).await;
        assert!(!r.liveness_only, "{who}");
        assert_eq!(r.nodes.len(), 3, "{who}: {r:?}");
        for n in &r.nodes {
            assert!(n.live, "{who}: {n:?}");
            assert!(!n.peer_address.is_empty(), "{who}: {n:?}");
            assert!(!n.version.is_empty(), "{who}: {n:?}");
            assert!(!n.data_snapshot.is_empty(), "{who}: {n:?}");
            assert!(n.last_heartbeat_unix_ms > 0, "{who}: {n:?}");
        }
    }
    sb.shutdown().await.unwrap();
}

fn raw(text: &str) -> bool {
    text.chars()
        .any(|c| plexus_core::text::is_unsafe(c) && c != '\n')
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_are_refused_on_entry_and_escaped_in_the_audit_log() {
    let sb = Sandbox::start(SandboxOptions::new(200, 25)).await.unwrap();
    let admin = sb.client(sandbox::ADMIN).await.unwrap();

    // Study text: refused naming the field and the code point.
    type Edit = fn(&mut StudyDefinition);
    let edits: [(Edit, &str); 3] = [
        (
            |s| s.title = "AAA \u{1b}[2J\u{1b}[H".into(),
            "study.title holds the control character U+001B",
        ),
        (
            |s| s.purpose.disease = "MONDO:0005160\u{202E}".into(),
            "study.purpose.disease holds the control character U+202E",
        ),
        (
            |s| s.title = "AAA\n2026-01-01 admin study.register ok".into(),
            "study.title holds the control character U+000A",
        ),
    ];
    for (edit, expected) in edits {
        let mut s = sandbox::exact_study();
        s.id = "hostile".into();
        edit(&mut s);
        let e = admin
            .admin()
            .register_study(pb::RegisterStudyRequest {
                study: Some(plexus_proto::convert::study_to_pb(&s, 0)),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().starts_with(expected), "{e:?}");
        assert!(!raw(e.message()), "{e:?}");
    }

    // Query text, and a study id, from a researcher: refused the same way.
    let study = sandbox::exact_study();
    sb.register_study(&study).await.unwrap();
    for (study_id, json, expected) in [
        (
            study.id.as_str(),
            r#"{"analysis": {"summary": {"variable": "age\u001b]0;owned\u0007"}}}"#,
            "analysis.summary.variable holds the control character U+001B",
        ),
        (
            study.id.as_str(),
            r#"{"cohort": {"in": {"variable": "smoking", "values": ["never\n2026-01-01 forged"]}},
                "analysis": {"count": {}}}"#,
            "cohort.in.values[0] holds the control character U+000A",
        ),
        (
            study.id.as_str(),
            r#"{"cohort": {"compare": {"variable": "sex", "op": "=", "value": "F\u202e"}},
                "analysis": {"count": {}}}"#,
            "cohort.compare.value holds the control character U+202E",
        ),
        (
            "aaa\u{1b}[2J",
            r#"{"analysis": {"count": {}}}"#,
            "study_id holds the control character U+001B",
        ),
    ] {
        let e = ask(&sb, sandbox::RESEARCHER, study_id, json)
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Invalid, "{e}");
        assert!(e.message.starts_with(expected), "{e}");
        assert!(!raw(&e.message), "{e:?}");
    }

    // Every refusal is in the log, and nothing in the log is raw.
    let entries = audit_entries(&sb).await;
    let refused = entries
        .iter()
        .filter(|e| e.outcome == "refused:invalid")
        .count();
    assert_eq!(refused, 7, "{entries:#?}");
    for e in &entries {
        let fields = serde_json::to_value(e).unwrap();
        let raw_field = fields.as_object().unwrap().values().any(|f| match f {
            serde_json::Value::String(s) => raw(s),
            serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_str()).any(raw),
            _ => false,
        });
        assert!(!raw_field, "{e:?}");
    }
    assert!(entries.iter().any(|e| e.study_id == "aaa\\u{1b}[2J"));

    // An entry from before these checks: written straight into the store.
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect(&sb.coordinator_config.coordinator.database_url)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_events SET who = ?, study_id = ?, detail = ? WHERE seq = 1")
        .bind("=cmd|' /C calc'!A0")
        .bind("aaa\u{1b}[2J\u{1b}[31m")
        .bind("ok\n2026-01-01 admin study.register ok \u{202E}gpj.exe")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let auditor = sb.client(sandbox::AUDITOR).await.unwrap();
    let events: Vec<plexus_core::audit::AuditEntry> = auditor
        .audit()
        .list_events(pb::ListEventsRequest {
            limit: 100_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events
        .into_iter()
        .map(|e| e.try_into().unwrap())
        .collect();
    let old = events.iter().find(|e| e.seq == 1).unwrap();
    assert_eq!(
        old.study_id, "aaa\u{1b}[2J\u{1b}[31m",
        "the store kept it raw"
    );

    let table = audit_text(&events, Format::Table).unwrap();
    assert!(!raw(&table), "{table}");
    assert!(table.contains("aaa\\u{1b}[2J\\u{1b}[31m"), "{table}");
    assert!(
        !table.lines().any(|l| l.starts_with("2026-01-01")),
        "{table}"
    );

    let csv = audit_text(&events, Format::Csv).unwrap();
    assert!(!raw(&csv), "{csv}");
    assert_eq!(csv.lines().count(), events.len() + 1, "no forged row");
    let first = csv.lines().nth(1).unwrap();
    assert!(first.contains("'=cmd|' /C calc'!A0"), "{first}");
    assert!(first.contains("ok\\u{a}2026-01-01"), "{first}");
    assert!(first.contains("\\u{202e}gpj.exe"), "{first}");

    let json = audit_text(&events, Format::Json).unwrap();
    assert!(!raw(&json), "{json}");
    let back: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(back[0]["who"], "=cmd|' /C calc'!A0", "JSON is lossless");
    sb.shutdown().await.unwrap();
}

/// An unauthenticated flood: `sockets` TCP connections to `address` that
/// never send a byte, each reopened as soon as the server drops it, until
/// `stop`; on a runtime of its own, as an attacker outside the process
/// would be. Returns how many sockets it opened.
fn flood(
    address: std::net::SocketAddr,
    sockets: usize,
    stop: CancellationToken,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let opened = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..sockets {
                let (stop, opened) = (stop.clone(), opened.clone());
                tasks.spawn(async move {
                    use tokio::io::AsyncReadExt;
                    while !stop.is_cancelled() {
                        let Ok(mut s) = tokio::net::TcpStream::connect(address).await else {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        };
                        opened.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let mut buf = [0u8; 64];
                        tokio::select! {
                            _ = s.read(&mut buf) => {}
                            _ = stop.cancelled() => {}
                        }
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
            opened.load(std::sync::atomic::Ordering::Relaxed)
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_sockets_does_not_keep_nodes_or_researchers_out() {
    let mut sb = Sandbox::start(SandboxOptions::new(100, 17)).await.unwrap();
    sb.register_study(&sandbox::exact_study()).await.unwrap();
    let address: std::net::SocketAddr = sb
        .coordinator_url()
        .trim_start_matches("https://")
        .parse()
        .unwrap();

    // 2,000 sockets, more than the listener ever holds pending at once,
    // all from the address the node and the researcher use too.
    let stop = CancellationToken::new();
    let attacker = flood(address, 2_000, stop.clone());
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Without the listener's limits, the flood held every pending slot
    // for the whole handshake timeout: new connections waited 10 to 20 s.
    // With them, a researcher who connects under the flood gets answers...
    let bound = Duration::from_secs(5);
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(
        bound,
        ask(
            &sb,
            sandbox::RESEARCHER,
            &sandbox::exact_study().id,
            r#"{"analysis": {"count": {}}}"#,
        ),
    )
    .await
    .expect("a researcher's query is answered under the flood")
    .unwrap();
    let query = started.elapsed();
    assert_eq!(r.provenance.answered, 3, "{:?}", r.provenance);
    // ...and a node that restarts under it connects again.
    sb.stop_node("hospital-a").await.unwrap();
    sb.wait_not_live("hospital-a", Duration::from_secs(30))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    sb.start_node("hospital-a").await.unwrap();
    sb.wait_live(&["hospital-a".to_string()], bound)
        .await
        .expect("the node reconnects under the flood");
    let reconnect = started.elapsed();

    stop.cancel();
    let opened = attacker.join().unwrap();
    eprintln!(
        "under a flood of 2,000 silent sockets ({opened} opened in all): node reconnected in {:.1} s, a researcher's query took {:.1} s",
        reconnect.as_secs_f64(),
        query.as_secs_f64()
    );
    assert!(opened > 2_000, "the flood reopened the sockets it lost");
    sb.shutdown().await.unwrap();
}
