//! The coordinator SIGKILLed in the middle of a burst of queries, as a
//! process (see `plexus_tests::processes`), at two points of the burst,
//! restarted each time. Afterwards its audit log must hold everything:
//! every query a researcher got an id for has its `query.submit` entry,
//! every query it stored has exactly one `query.result` entry (those the
//! restart decided: `interrupted`), every job sent has exactly one outcome,
//! every job a node logged has its `sent` entry (`audit reconcile` finds
//! no difference), and the log still verifies.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plexus::audit::{self, NodeLog};
use plexus_client::Client;
use plexus_core::Query;
use plexus_proto::v1 as pb;
use plexus_tests::processes::{Install, InstallOptions};

const POOLED: &str = r#"{"analysis": {"count": {}}}"#;

/// Researchers that each keep submitting queries (without waiting for
/// their results) until `stop`; returns the ids the coordinator gave back.
async fn burst(install: &Install, researchers: usize, stop: Arc<AtomicBool>) -> Vec<String> {
    let query: pb::Query = (&Query::from_json(POOLED).unwrap()).into();
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let tasks: Vec<_> = (0..researchers)
        .map(|_| {
            let (url, tls) = (install.url.clone(), install.tls("alice"));
            let (query, stop, accepted) = (query.clone(), stop.clone(), accepted.clone());
            let study = install.study.id.clone();
            tokio::spawn(async move {
                let Ok(alice) = Client::connect_with(&url, &tls, Some("localhost".into())).await
                else {
                    return;
                };
                while !stop.load(Ordering::Relaxed) {
                    let r = alice
                        .research()
                        .submit_query(pb::SubmitQueryRequest {
                            study_id: study.clone(),
                            query: Some(query.clone()),
                            ..Default::default()
                        })
                        .await;
                    match r {
                        Ok(r) => accepted.lock().unwrap().push(r.into_inner().query_id),
                        // The coordinator is gone.
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let ids = accepted.lock().unwrap().clone();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_mid_burst_keeps_every_query_and_released_job_in_its_log() {
    let install = Install::new(InstallOptions::fast()).await.unwrap();
    let (mut coordinator, _nodes) = install.start_all().await.unwrap();
    install.register_study().await.unwrap();

    let mut accepted = Vec::new();
    for kill_after in [Duration::from_millis(400), Duration::from_millis(1500)] {
        let stop = Arc::new(AtomicBool::new(false));
        let submitting = burst(&install, 16, stop.clone());
        let killing = async {
            tokio::time::sleep(kill_after).await;
            stop.store(true, Ordering::Relaxed);
            coordinator.kill().await.unwrap();
        };
        let (ids, ()) = tokio::join!(submitting, killing);
        eprintln!(
            "killed {kill_after:?} into the burst: {} queries accepted",
            ids.len()
        );
        assert!(!ids.is_empty(), "no query was accepted before the kill");
        accepted.extend(ids);
        coordinator = install.restart_coordinator().await.unwrap();
    }

    // The coordinator's own record, from its database.
    let db = install.path("/var/lib/plexus-coordinator/coordinator.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}?mode=ro", db.display()))
        .await
        .unwrap();
    let stored: Vec<(String, String)> = sqlx::query_as("SELECT id, status FROM queries")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(
        stored.iter().all(|(_, status)| status != "pending"),
        "a query is still pending after the restart: {stored:?}"
    );

    let entries = install.audit_log().await.unwrap();
    let auditor = install.client("auditor").await.unwrap();
    let of = |action: &str, query: &str| {
        entries
            .iter()
            .filter(|e| e.action == action && e.query_id == query)
            .count()
    };

    // Every query the researcher was given an id for was recorded first.
    for id in &accepted {
        assert_eq!(of("query.submit", id), 1, "query {id} has no submit entry");
    }
    // Every query stored has exactly one result entry ...
    for (id, _) in &stored {
        assert_eq!(of("query.result", id), 1, "query {id}: result entries");
    }
    // ... and every submit entry is a stored query.
    let stored_ids: BTreeSet<&String> = stored.iter().map(|(id, _)| id).collect();
    for e in entries
        .iter()
        .filter(|e| e.action == "query.submit" && e.outcome == "accepted")
    {
        assert!(stored_ids.contains(&e.query_id), "{e:?}");
    }
    let interrupted = entries
        .iter()
        .filter(|e| e.action == "query.result" && e.outcome == "interrupted")
        .count();

    // Every job sent has exactly one outcome.
    let mut outcomes: BTreeMap<&str, Vec<plexus_core::audit::Outcome>> = BTreeMap::new();
    for e in entries.iter().filter(|e| e.action == "job") {
        outcomes
            .entry(e.job_id.as_str())
            .or_default()
            .push(e.outcome);
    }
    for (job, o) in &outcomes {
        let sent = o.iter().filter(|o| **o == "sent").count();
        let ends = o.iter().filter(|o| **o != "sent").count();
        assert!(sent <= 1 && ends == 1, "job {job}: {o:?}");
    }

    // Every job a node logged has its `sent` entry: reconcile finds no
    // difference with any node's job log.
    let mut undelivered = 0;
    for node in &install.nodes {
        let dir = install.path(&format!("/var/lib/plexus-node/{node}"));
        let r = audit::reconcile(&auditor, &NodeLog::read(&dir).unwrap(), node)
            .await
            .unwrap();
        assert!(
            r.only_node.is_empty(),
            "released without a `sent` entry: {r:?}"
        );
        assert!(r.is_clean(), "{r:?}");
        undelivered += r.unanswered;
    }
    eprintln!(
        "{} queries accepted, {} stored, {interrupted} interrupted by the kills, {} jobs, {undelivered} sent but never answered (the coordinator and the node agree)",
        accepted.len(),
        stored.len(),
        outcomes.len()
    );

    // And the log is whole.
    install
        .cli("auditor", &["audit", "verify", "--fresh"])
        .await
        .unwrap();
}
