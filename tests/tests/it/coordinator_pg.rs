//! The coordinator on PostgreSQL: the same behaviour as on SQLite (a
//! pooled query end to end, the audit log verifying), and the lease that
//! lets two coordinators share one database, one active at a time, with
//! writes under a stale epoch refused by the database.
//!
//! Needs `PLEXUS_TEST_DATABASE_URL` (see `plexus_tests::pg`).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use plexus::audit;
use plexus_client::Client;
use plexus_coordinator::audit_log::AuditLog;
use plexus_coordinator::lease::{Attempt, Lease};
use plexus_coordinator::store::{AuditEntry, Store};
use plexus_coordinator::CoordinatorError;
use plexus_core::audit::{Action, Outcome, Role};
use plexus_core::pool::PooledValue;
use plexus_proto::v1 as pb;
use plexus_tests::pg::TestDatabase;
use plexus_tests::{ask, consenting, sandbox, today, Sandbox, SandboxOptions};
use plexus_tls::TlsFiles;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_query_and_the_audit_log_on_postgres() {
    let Some(db) = TestDatabase::create("coord_pooled").await else {
        return;
    };
    let mut opts = SandboxOptions::new(300, 61);
    opts.database_url = Some(db.url().to_string());
    let mut sb = Sandbox::start(opts).await.unwrap();
    let study = sandbox::exact_study();
    sb.register_study(&study).await.unwrap();
    let purpose = study.purpose().unwrap();
    let expected: usize = sb
        .sites
        .iter()
        .map(|s| consenting(s, &purpose, today()).len())
        .sum();
    let r = ask(
        &sb,
        sandbox::RESEARCHER,
        &study.id,
        r#"{"analysis": {"count": {}}}"#,
    )
    .await
    .unwrap();
    let PooledValue::Count { n } = &r.value else {
        panic!("{r:?}")
    };
    assert_eq!(n.count, Some(expected as u64));
    ask(
        &sb,
        sandbox::RESEARCHER,
        &study.id,
        r#"{"analysis": {"summary": {"variable": "age"}}}"#,
    )
    .await
    .unwrap();

    let auditor = sb.client(sandbox::AUDITOR).await.unwrap();
    let key = audit::load_key(&sb.pki.join("coordinator-signing.pub")).unwrap();
    let first = audit::verify(&auditor, &key, None, true).await.unwrap();
    assert!(first.entries >= 8, "{first:?}");
    for seq in 1..=first.entries {
        let p = audit::prove(&auditor, &key, seq).await.unwrap();
        assert_eq!(p.entry.seq as u64, seq);
    }

    // A restart rebuilds the tree from PostgreSQL; the log still extends
    // the checkpoint signed before.
    sb.stop_coordinator().await.unwrap();
    sb.start_coordinator().await.unwrap();
    sb.wait_all_live().await.unwrap();
    let auditor = sb.client(sandbox::AUDITOR).await.unwrap();
    let after = audit::verify(&auditor, &key, Some(&first.checkpoint), true)
        .await
        .unwrap();
    assert!(after.entries > first.entries, "{after:?}");

    // The queries and their jobs live in PostgreSQL.
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    let queries: Vec<(String, String)> = sqlx::query_as("SELECT id, status FROM queries")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(queries.len(), 2, "{queries:?}");
    assert!(queries.iter().all(|(_, s)| s == "succeeded"), "{queries:?}");
    let jobs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE status = 'answered'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(jobs, 6);
    pool.close().await;

    sb.shutdown().await.unwrap();
    db.drop_now().await;
}

/// Polls `lease` until it takes over (the other holder's lease expired).
async fn take_over(lease: &Lease) -> Attempt {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match lease.try_acquire().await.unwrap() {
            a @ Attempt::Acquired { .. } => return a,
            Attempt::HeldBy { .. } if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => panic!("never took over: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_lease_holder_expiry_hands_over_and_stale_writes_are_refused() {
    let Some(db) = TestDatabase::create("coord_lease").await else {
        return;
    };
    let store = Store::open(db.url()).await.unwrap();
    let pool = store.postgres().expect("postgres").clone();
    let ttl = Duration::from_millis(600);
    let a = Lease::new(pool.clone(), "coordinator-a", ttl);
    let b = Lease::new(pool.clone(), "coordinator-b", ttl);

    // Two contenders: one active.
    assert_eq!(
        a.try_acquire().await.unwrap(),
        Attempt::Acquired {
            epoch: 1,
            previous: None
        }
    );
    match b.try_acquire().await.unwrap() {
        Attempt::HeldBy { holder, epoch, .. } => {
            assert_eq!((holder.as_str(), epoch), ("coordinator-a", 1))
        }
        other => panic!("{other:?}"),
    }
    // ... and again while the holder renews.
    assert!(a.renew(1).await.unwrap());
    assert!(matches!(
        b.try_acquire().await.unwrap(),
        Attempt::HeldBy { epoch: 1, .. }
    ));

    // The active one writes under its epoch.
    let store_a = Store::open_fenced(db.url(), Some(1)).await.unwrap();
    let study = sandbox::exact_study();
    store_a.upsert_study(&study, "admin").await.unwrap();
    // A connection without the epoch may read but not write.
    assert!(store.study(&study.id).await.unwrap().is_some());
    let e = store.upsert_study(&study, "admin").await.unwrap_err();
    assert!(
        e.to_string().contains("another coordinator took over"),
        "{e}"
    );

    // A holds on, B waits: the lease expires only when A stops renewing.
    // Expiry hands over, with a new epoch.
    assert_eq!(
        take_over(&b).await,
        Attempt::Acquired {
            epoch: 2,
            previous: Some(("coordinator-a".into(), 1))
        }
    );
    assert!(!a.renew(1).await.unwrap(), "the old holder cannot renew");
    match a.try_acquire().await.unwrap() {
        Attempt::HeldBy { holder, epoch, .. } => {
            assert_eq!((holder.as_str(), epoch), ("coordinator-b", 2))
        }
        other => panic!("{other:?}"),
    }

    // A write under the stale epoch is refused by the database, whichever
    // table; the new holder's go through.
    let e = store_a.upsert_study(&study, "admin").await.unwrap_err();
    assert!(
        e.to_string().contains("epoch (1) is not the lease's (2)"),
        "{e}"
    );
    let entry = plexus_coordinator::store::AuditEntry {
        seq: 1,
        at: 1,
        ..AuditEntry::new(
            "coordinator-a",
            Role::Coordinator,
            Action::CoordinatorStop,
            Outcome::Ok,
        )
    };
    assert!(store_a.append_audit(&entry).await.is_err());
    let store_b = Store::open_fenced(db.url(), Some(2)).await.unwrap();
    store_b.upsert_study(&study, "admin").await.unwrap();
    store_b.append_audit(&entry).await.unwrap();
    assert_eq!(
        store.audit_entry(1).await.unwrap().unwrap().action,
        "coordinator.stop"
    );

    // A clean release hands over at once.
    b.release(2).await.unwrap();
    assert!(matches!(
        a.try_acquire().await.unwrap(),
        Attempt::Acquired { epoch: 3, .. }
    ));

    for s in [store, store_a, store_b] {
        s.close().await;
    }
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_audit_appends_on_postgres_number_without_gaps() {
    let Some(db) = TestDatabase::create("coord_audit").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (signer, key_path, _) =
        plexus_tls::SigningKey::generate_into(dir.path(), "coordinator-signing").unwrap();
    let store = Store::open(db.url()).await.unwrap();
    let log = Arc::new(
        AuditLog::open(store.clone(), Arc::new(signer), "coordinator")
            .await
            .unwrap(),
    );
    let writers: Vec<_> = (0..64)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move {
                log.append(AuditEntry {
                    ..AuditEntry::new(
                        format!("writer-{i}"),
                        Role::Researcher,
                        Action::QuerySubmit,
                        Outcome::Ok,
                    )
                })
                .await
                .unwrap()
            })
        })
        .collect();
    let mut seqs = Vec::new();
    for w in writers {
        seqs.push(w.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=64).collect::<Vec<i64>>());
    let signed = log.checkpoint().await.unwrap();
    assert_eq!(signed.head.size, 64);

    // Another process with the same key (a standby taking over) rebuilds
    // the very tree the checkpoint signed, and extends it.
    let signer = plexus_tls::SigningKey::load(&key_path).unwrap();
    let rebuilt = AuditLog::open(store.clone(), Arc::new(signer), "coordinator")
        .await
        .unwrap();
    assert_eq!(rebuilt.latest().await.unwrap().head, signed.head);
    let (now, _) = rebuilt.prove_consistency(64).await.unwrap();
    assert_eq!(now.head, signed.head);
    let seq = rebuilt
        .append(AuditEntry {
            ..AuditEntry::new(
                "coordinator-b",
                Role::Coordinator,
                Action::QuerySubmit,
                Outcome::Ok,
            )
        })
        .await
        .unwrap();
    assert_eq!(seq, 65);
    store.close().await;
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_coordinator_that_loses_its_lease_stops_serving() {
    let Some(db) = TestDatabase::create("coord_lost").await else {
        return;
    };
    let mut opts = SandboxOptions::new(50, 3);
    opts.database_url = Some(db.url().to_string());
    let sb = Sandbox::prepare(opts).await.unwrap();
    let mut config = sb.coordinator_config.clone();
    config.coordinator.lease_ttl_ms = 600;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(plexus_coordinator::run(
        config,
        listener,
        CancellationToken::new(),
    ));
    let files = TlsFiles::in_dir(&sb.pki, sandbox::RESEARCHER);
    let client = Client::connect_with(&url, &files, Some("localhost".into()))
        .await
        .unwrap();
    client
        .research()
        .list_studies(pb::ListStudiesRequest::default())
        .await
        .unwrap();

    // Another coordinator takes the lease (as after a pause longer than
    // the lease): this one notices at its next renewal and stops.
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    sqlx::query("UPDATE coordinator_lease SET holder = 'usurper', epoch = epoch + 1")
        .execute(&pool)
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the coordinator stops")
        .unwrap();
    match ended {
        Err(CoordinatorError::LeaseLost(reason)) => assert!(
            reason.contains("another coordinator took the lease over from epoch 1"),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(client
        .research()
        .list_studies(pb::ListStudiesRequest::default())
        .await
        .is_err());
    assert!(Client::connect_with(&url, &files, Some("localhost".into()))
        .await
        .is_err());
    pool.close().await;
    db.drop_now().await;
}

/// Runs the coordinator of `config` until it fails at start-up (one that
/// starts fails the test).
async fn start_refused(config: &plexus_coordinator::CoordinatorConfig) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let token = CancellationToken::new();
    let run = plexus_coordinator::run(config.clone(), listener, token.clone());
    match tokio::time::timeout(Duration::from_secs(20), run).await {
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(())) => panic!("the coordinator started and stopped"),
        Err(_) => {
            token.cancel();
            panic!("the coordinator started")
        }
    }
}

/// `plexus-coordinator audit-repair` with the sandbox coordinator's config.
async fn repair(config: &plexus_coordinator::CoordinatorConfig, reason: &str) -> String {
    plexus_coordinator::audit_repair::repair(config, "operator", reason)
        .await
        .unwrap()
        .break_
}

/// A PostgreSQL database emptied while the coordinator was stopped, or
/// restored from an older backup, is refused at the next start through the
/// seal on the coordinator's own disk (the database's own checkpoints went
/// with it), until `audit-repair` records the break.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_or_older_postgres_database_is_refused_at_start_until_a_repair() {
    let Some(db) = TestDatabase::create("coord_seal").await else {
        return;
    };
    let mut opts = SandboxOptions::new(60, 67);
    opts.database_url = Some(db.url().to_string());
    let mut sb = Sandbox::start(opts).await.unwrap();
    let config = sb.coordinator_config.clone();
    assert_eq!(
        config.coordinator.audit_seal_dir.as_deref(),
        Some(sb.dir.as_path())
    );
    let study = sandbox::exact_study();
    sb.register_study(&study).await.unwrap();
    let key = audit::load_key(&sb.pki.join("coordinator-signing.pub")).unwrap();
    let auditor = sb.client(sandbox::AUDITOR).await.unwrap();
    let signed = audit::verify(&auditor, &key, None, true).await.unwrap();
    assert!(signed.entries >= 2, "{signed:?}");
    // A clean stop signs a last checkpoint, sealed in the sandbox folder
    // under the instance's name.
    sb.stop_coordinator().await.unwrap();
    let sealed = sb.dir.join("coordinator.audit-checkpoint.json");
    let kept: plexus_core::merkle::Checkpoint =
        serde_json::from_str(&std::fs::read_to_string(&sealed).unwrap()).unwrap();
    assert!(kept.head.size >= signed.entries, "{kept:?}");
    let leaves = std::fs::metadata(sb.dir.join("coordinator.audit-leaves")).unwrap();
    assert_eq!(leaves.len(), kept.head.size * 32);

    // The audit tables emptied, checkpoints and all.
    let pool = sqlx::PgPool::connect(db.url()).await.unwrap();
    sqlx::query("TRUNCATE audit_events, audit_checkpoints")
        .execute(&pool)
        .await
        .unwrap();
    let e = start_refused(&config).await;
    assert!(
        e.contains("does not extend its last signed checkpoint")
            && e.contains("holds no audit entries")
            && e.contains(&format!("signed {}", kept.head.size)),
        "{e}"
    );
    assert!(e.contains(&sealed.display().to_string()), "{e}");
    let name = plexus_coordinator::store::database_name(db.url());
    assert!(name.starts_with("postgres://") && e.contains(&name), "{e}");
    assert!(
        e.contains("restore the database from backup") && e.contains("audit-repair"),
        "{e}"
    );

    // The repair records the break; the coordinator starts and serves.
    let why = repair(&config, "test: audit tables emptied on purpose").await;
    assert!(why.contains("holds no audit entries"), "{why}");
    sb.start_coordinator().await.unwrap();
    sb.wait_all_live().await.unwrap();
    let auditor = sb.client(sandbox::AUDITOR).await.unwrap();
    let after = audit::verify(&auditor, &key, None, true).await.unwrap();
    assert_eq!(after.repairs.len(), 1, "{after:?}");
    sb.stop_coordinator().await.unwrap();

    // Restored from an older backup: the newest entries and the
    // checkpoints that covered them are gone from the database.
    let kept: plexus_core::merkle::Checkpoint =
        serde_json::from_str(&std::fs::read_to_string(&sealed).unwrap()).unwrap();
    // Written as a restore writes, without the fencing triggers.
    let older = 2i64;
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_events WHERE seq > $1")
        .bind(older)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_checkpoints WHERE size > $1")
        .bind(older)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    pool.close().await;
    let e = start_refused(&config).await;
    assert!(
        e.contains(&format!(
            "entries {} to {} are missing",
            older + 1,
            kept.head.size
        )),
        "{e}"
    );
    repair(&config, "test: restored from an older backup").await;
    sb.start_coordinator().await.unwrap();
    sb.wait_all_live().await.unwrap();
    sb.shutdown().await.unwrap();
    db.drop_now().await;
}
