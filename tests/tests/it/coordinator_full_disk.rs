//! The coordinator's database on a full volume (a small tmpfs mounted over
//! its state folder; skipped with a message when not root or when mounting
//! is not permitted). While the volume is full, a query is refused with
//! `unavailable` naming the database file, and none is accepted without its
//! `query.submit` entry; once space returns the coordinator takes queries
//! again without a restart; SIGKILLed while the volume was full, it starts
//! again once space returns, with every accepted query's entries.

use std::path::{Path, PathBuf};
use std::time::Duration;

use plexus_client::Client;
use plexus_core::Query;
use plexus_proto::v1 as pb;
use plexus_tests::processes::{Install, InstallOptions, Tmpfs};

const POOLED: &str = r#"{"analysis": {"count": {}}}"#;

/// Fills the volume holding `dir` until a write fails with ENOSPC.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 64 * 1024];
    loop {
        match f.write_all(&block) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    // Byte by byte to the last one.
    while f.write_all(&[0]).is_ok() {}
    let _ = f.sync_all();
    path
}

async fn submit(alice: &Client, study: &str) -> Result<String, tonic::Status> {
    let query: pb::Query = (&Query::from_json(POOLED).unwrap()).into();
    alice
        .research()
        .submit_query(pb::SubmitQueryRequest {
            study_id: study.to_string(),
            query: Some(query),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().query_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_volume_refuses_queries_naming_the_database_and_recovers_when_space_returns() {
    const WHAT: &str = "the coordinator's database";
    if !Tmpfs::permitted(WHAT) {
        return;
    }
    let install = Install::new(InstallOptions::fast()).await.unwrap();
    let state = install.path("/var/lib/plexus-coordinator");
    let Some(_tmpfs) = Tmpfs::mount(&state, "16m", WHAT) else {
        return;
    };
    let db = state.join("coordinator.db");
    let (mut coordinator, _nodes) = install.start_all().await.unwrap();
    install.register_study().await.unwrap();
    let alice = install.client("alice").await.unwrap();
    let mut accepted = vec![submit(&alice, &install.study.id).await.unwrap()];

    // Full: queries are refused (once what SQLite had allocated is used
    // up), unavailable, naming the database file.
    let filler = fill(&state);
    let mut refused = None;
    for _ in 0..500 {
        match submit(&alice, &install.study.id).await {
            Ok(id) => accepted.push(id),
            Err(s) => {
                refused = Some(s);
                break;
            }
        }
    }
    let refused = refused.expect("a full volume never refused a query");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains(&db.display().to_string()),
        "the refusal does not name the database file: {}",
        refused.message()
    );
    assert!(refused.message().contains("full"), "{}", refused.message());

    // Space returns: queries are taken again, without a restart.
    std::fs::remove_file(&filler).unwrap();
    let mut recovered = false;
    for _ in 0..50 {
        if let Ok(id) = submit(&alice, &install.study.id).await {
            accepted.push(id);
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(recovered, "no query was taken after space returned");

    // Killed while full, restarted once space returns.
    let filler = fill(&state);
    for _ in 0..20 {
        if let Ok(id) = submit(&alice, &install.study.id).await {
            accepted.push(id);
        }
    }
    coordinator.kill().await.unwrap();
    std::fs::remove_file(&filler).unwrap();
    coordinator = install.restart_coordinator().await.unwrap();
    let entries = install.audit_log().await.unwrap();
    for id in &accepted {
        let of = |action: &str| {
            entries
                .iter()
                .filter(|e| e.action == action && &e.query_id == id)
                .count()
        };
        assert_eq!(of("query.submit"), 1, "query {id}");
        assert_eq!(of("query.result"), 1, "query {id}");
    }
    install
        .cli("auditor", &["audit", "verify", "--fresh"])
        .await
        .unwrap();
    eprintln!(
        "{} queries accepted around two full volumes; refused with: {}",
        accepted.len(),
        refused.message()
    );
    drop(coordinator);
}
