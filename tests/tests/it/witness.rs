//! The log the hospitals witness: every job shows its node the
//! coordinator's signed checkpoint, the node keeps it and signs it into its
//! answer; a node shown a fork refuses jobs (readiness and a metric say
//! why) until its operator resets; a coordinator whose stored log was
//! edited or deleted while stopped refuses to start, naming the entry,
//! until `audit-repair` records the break; and `audit verify` catches a
//! rewritten log through the checkpoints the hospitals witnessed, with no
//! checkpoint saved by anyone; a damaged database file is refused at start
//! with its path.

use std::path::Path;

use plexus::audit;
use plexus_coordinator::audit_log::AuditLog;
use plexus_coordinator::audit_seal::Seal;
use plexus_core::merkle::{leaf_of, Checkpoint, MerkleLog};
use plexus_node::witness::{Rule, Witnessed};
use plexus_proto::v1 as pb;
use plexus_tests::jobs::{exact_job, sign};
use plexus_tests::{ask, sandbox, Sandbox, SandboxOptions};
use sqlx::sqlite::SqlitePoolOptions;

const COUNT: &str = r#"{"analysis": {"count": {}}}"#;

async fn db(sb: &Sandbox) -> sqlx::SqlitePool {
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect(&sb.coordinator_config.coordinator.database_url)
        .await
        .unwrap()
}

/// Runs the coordinator of `sb`'s config until it fails at start-up (or
/// is found running, which fails the test).
async fn start_refused(sb: &Sandbox) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let token = tokio_util::sync::CancellationToken::new();
    let run = plexus_coordinator::run(sb.coordinator_config.clone(), listener, token.clone());
    match tokio::time::timeout(std::time::Duration::from_secs(20), run).await {
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(())) => panic!("the coordinator started and stopped"),
        Err(_) => {
            token.cancel();
            panic!("the coordinator started")
        }
    }
}

async fn repair(sb: &Sandbox, reason: &str) -> plexus_coordinator::audit_log::Repair {
    let c = &sb.coordinator_config.coordinator;
    let store = plexus_coordinator::store::Store::open(&c.database_url)
        .await
        .unwrap();
    let signer = std::sync::Arc::new(sb.coordinator_config.signing_key().unwrap());
    let r = AuditLog::repair(
        store.clone(),
        signer,
        &c.id,
        Seal::for_config(&sb.coordinator_config),
        "operator",
        reason,
    )
    .await
    .unwrap();
    store.close().await;
    r
}

fn state_dir(sb: &Sandbox, node: &str) -> std::path::PathBuf {
    sb.node_configs[node].node.state_dir.clone()
}

fn reset_all(sb: &Sandbox) {
    for node in sb.node_names() {
        plexus_node::witness::reset(&state_dir(sb, node.as_str()), "it", "test: after a repair")
            .unwrap();
    }
}

/// A sandbox whose coordinator publishes a checkpoint every second, and
/// two queries a publication apart: the nodes witness a checkpoint that
/// covers the first entries.
async fn witnessed_sandbox(seed: u64) -> (Sandbox, plexus_core::StudyDefinition) {
    let mut sb = Sandbox::prepare(SandboxOptions::new(200, seed))
        .await
        .unwrap();
    sb.coordinator_config.coordinator.audit_checkpoint_secs = 1;
    sb.start_all().await.unwrap();
    let study = sandbox::exact_study();
    sb.register_study(&study).await.unwrap();
    for _ in 0..2 {
        ask(&sb, sandbox::RESEARCHER, &study.id, COUNT)
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    }
    ask(&sb, sandbox::RESEARCHER, &study.id, COUNT)
        .await
        .unwrap();
    for node in sb.node_names() {
        let w = Witnessed::load(&state_dir(&sb, &node)).unwrap();
        assert!(w.checkpoint.unwrap().head.size > 4, "{node}");
    }
    (sb, study)
}

fn split(proof: &str) -> Vec<String> {
    proof
        .as_bytes()
        .chunks(64)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_shown_a_forked_checkpoint_refuses_jobs_and_readiness_says_why() {
    let (mut sb, study) = witnessed_sandbox(101).await;
    let config = sb.node_configs["hospital-a"].clone();
    let state = config.node.state_dir.clone();
    let seen = Witnessed::load(&state)
        .unwrap()
        .checkpoint
        .expect("a node witnesses the checkpoint of its first job");
    assert!(seen.head.size > 0);

    // Shown a fork: a checkpoint signed with the coordinator's key over
    // another log of more entries, with a proof from what it witnessed.
    sb.stop_node("hospital-a").await.unwrap();
    let runner = plexus_node::open_runner(config.clone(), plexus_node::RunOptions::default())
        .await
        .unwrap();
    let key = plexus_tls::SigningKey::load(&sb.coordinator_config.coordinator.signing_key).unwrap();
    let other = MerkleLog::from_leaves(
        (0..seen.head.size + 5).map(|i| leaf_of(format!("another history {i}").as_bytes())),
    );
    let now = chrono::Utc::now().timestamp_millis();
    let forged = Checkpoint::sign_with(|m| key.sign(m), &seen.origin, other.head(), now);
    let query = plexus_core::Query::from_json(COUNT).unwrap();
    let job = pb::Job {
        witness_checkpoint: Some(forged.into()),
        witness_from_size: seen.head.size,
        witness_proof: split(&other.prove_consistency(seen.head.size).unwrap()),
        ..exact_job(&study, &query, &"ab".repeat(16), "hospital-a", now)
    };
    let message = match runner.take(sign(&key, &job)).await {
        Some(pb::node_message::Msg::Result(r)) => match r.outcome.unwrap() {
            pb::job_result::Outcome::Error(e) => e.message,
            other => panic!("expected a refusal, got {other:?}"),
        },
        other => panic!("expected a result, got {other:?}"),
    };
    assert!(message.starts_with("witness.fork:"), "{message}");
    assert!(message.contains("witness reset"), "{message}");
    let ready = runner.readiness.status().unwrap_err();
    assert!(ready.contains("witness.fork"), "{ready}");
    let counted = runner
        .metrics
        .witness_refusals
        .get_or_create(&plexus_node::metrics::RuleLabels {
            rule: "witness.fork".into(),
        })
        .get();
    assert_eq!(counted, 1);
    drop(runner);
    let kept = Witnessed::load(&state).unwrap();
    assert_eq!(kept.broken.as_ref().unwrap().rule, Rule::Fork);
    assert_eq!(kept.checkpoint.unwrap(), seen, "the fork is not taken");

    // Restarted, it refuses the coordinator's own jobs too, naming the rule.
    sb.start_node("hospital-a").await.unwrap();
    sb.wait_all_live().await.unwrap();
    let _ = ask(&sb, sandbox::RESEARCHER, &study.id, COUNT).await;
    let auditor = sb.client(sandbox::AUDITOR).await.unwrap();
    let mut refused = Vec::new();
    audit::stream_log(&auditor, |e| {
        if e.node_id == "hospital-a" && e.action == "job" && e.detail.contains("witness.fork") {
            refused.push(e.outcome);
        }
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        matches!(refused[0], plexus_core::audit::Outcome::Refused(_)),
        "{refused:?}"
    );

    // The operator's reset: jobs are taken again, and the reset is kept.
    plexus_node::witness::reset(&state, "it", "forged job from a test, ticket 1").unwrap();
    ask(&sb, sandbox::RESEARCHER, &study.id, COUNT)
        .await
        .unwrap();
    let kept = Witnessed::load(&state).unwrap();
    assert!(kept.broken.is_none());
    assert_eq!(kept.resets.len(), 1);
    assert!(kept.checkpoint.unwrap().head.size >= seen.head.size);
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_edited_while_stopped_is_refused_at_start_until_a_repair_records_the_break() {
    let (mut sb, study) = witnessed_sandbox(103).await;
    sb.stop_coordinator().await.unwrap();

    // An entry edited while the coordinator was stopped.
    let pool = db(&sb).await;
    sqlx::query("UPDATE audit_events SET outcome = 'refused:policy' WHERE seq = 4")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let e = start_refused(&sb).await;
    assert!(
        e.contains("does not extend its last signed checkpoint") && e.contains("entry 4 ("),
        "{e}"
    );
    assert!(e.contains("edited") && e.contains("audit-repair"), "{e}");

    // The repair records the break in the log; start-up accepts it then.
    let r = repair(&sb, "test: an entry edited on purpose").await;
    assert!(r.break_.contains("entry 4"), "{}", r.break_);
    assert!(r.old.is_some());
    sb.start_coordinator().await.unwrap();
    sb.wait_all_live().await.unwrap();
    let auditor = sb.client(sandbox::AUDITOR).await.unwrap();
    let mut repairs = Vec::new();
    audit::stream_log(&auditor, |e| {
        if e.action == "audit.repair" {
            repairs.push(e);
        }
        Ok(())
    })
    .await
    .unwrap();
    assert_eq!(repairs.len(), 1);
    assert_eq!(repairs[0].seq, r.seq);
    assert!(
        repairs[0].detail.contains("entry 4") && repairs[0].detail.contains("edited on purpose"),
        "{}",
        repairs[0].detail
    );

    // The nodes witnessed the log before the repair: they refuse its new
    // checkpoints until their operators reset.
    let refused = ask(&sb, sandbox::RESEARCHER, &study.id, COUNT).await;
    for node in sb.node_names() {
        let w = Witnessed::load(&state_dir(&sb, &node)).unwrap();
        assert_eq!(
            w.broken.map(|b| b.rule),
            Some(Rule::Fork),
            "{node}: {refused:?}"
        );
    }
    reset_all(&sb);
    ask(&sb, sandbox::RESEARCHER, &study.id, COUNT)
        .await
        .unwrap();
    // The auditor's verify reports the recorded repair.
    let key = audit::load_key(&sb.pki.join("coordinator-signing.pub")).unwrap();
    let report = audit::verify(&auditor, &key, None, true).await.unwrap();
    assert_eq!(report.repairs.len(), 1);
    assert!(
        report
            .witnessed
            .iter()
            .any(|w| w.superseded_by_repair == Some(r.seq)),
        "{report:?}"
    );

    // A deleted database is noticed: the seal beside it remembers.
    sb.stop_coordinator().await.unwrap();
    let url = &sb.coordinator_config.coordinator.database_url;
    let file = url.strip_prefix("sqlite://").unwrap();
    let file = file.split('?').next().unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{file}{suffix}"));
    }
    assert!(!Path::new(file).exists());
    let e = start_refused(&sb).await;
    assert!(
        e.contains("holds no audit entries") && e.contains("deleted or replaced"),
        "{e}"
    );
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_catches_a_rewritten_log_through_the_checkpoints_the_hospitals_witnessed() {
    let (mut sb, _study) = witnessed_sandbox(107).await;
    let auditor = sb.client(sandbox::AUDITOR).await.unwrap();
    let key = audit::load_key(&sb.pki.join("coordinator-signing.pub")).unwrap();
    let honest = audit::verify(&auditor, &key, None, true).await.unwrap();
    let nodes: std::collections::BTreeSet<&str> =
        honest.witnessed.iter().map(|w| w.node.as_str()).collect();
    assert_eq!(nodes.len(), 3, "{honest:?}");
    assert!(honest.witnessed.iter().all(|w| w.problems.is_empty()));

    // Rewritten while stopped, the coordinator's own checkpoints and the
    // seal beside its database deleted too: nobody saved a checkpoint.
    sb.stop_coordinator().await.unwrap();
    let pool = db(&sb).await;
    sqlx::query("UPDATE audit_events SET who = 'nobody' WHERE seq = 2")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_checkpoints")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let seal = Seal::for_config(&sb.coordinator_config).unwrap();
    std::fs::remove_file(seal.checkpoint_path()).unwrap();
    sb.start_coordinator().await.unwrap();
    sb.wait_all_live().await.unwrap();

    // The log matches the fresh checkpoint it signed over itself, but not
    // what the hospitals witnessed.
    let auditor = sb.client(sandbox::AUDITOR).await.unwrap();
    let e = format!(
        "{:#}",
        audit::verify(&auditor, &key, None, true)
            .await
            .expect_err("a rewritten log must fail")
    );
    assert!(
        e.contains("does not extend checkpoints the hospitals witnessed")
            && e.contains("hospital-a"),
        "{e}"
    );
    // Each node's own file says the same.
    let file = state_dir(&sb, "hospital-b").join(plexus_node::witness::WITNESS_FILE);
    let e = format!(
        "{:#}",
        audit::verify_with(&auditor, &key, None, false, &[file.as_path()])
            .await
            .unwrap_err()
    );
    assert!(e.contains("witness"), "{e}");
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_database_is_refused_at_start_with_its_path() {
    let (mut sb, _study) = witnessed_sandbox(109).await;
    sb.stop_coordinator().await.unwrap();
    let url = sb.coordinator_config.coordinator.database_url.clone();
    let file = url.strip_prefix("sqlite://").unwrap();
    let file = file.split('?').next().unwrap().to_string();
    // Fold the write-ahead log in, then damage one page in the middle.
    let pool = db(&sb).await;
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let mut bytes = std::fs::read(&file).unwrap();
    let pages = bytes.len() / 4096;
    assert!(pages > 3, "{pages}");
    // Page headers (the b-tree page type) of the later half: the pages
    // the latest rows went to.
    for page in pages / 2..pages {
        bytes[page * 4096] = 0xA5;
    }
    std::fs::write(&file, bytes).unwrap();
    let e = start_refused(&sb).await;
    assert!(e.contains(&file) && e.contains("quick_check"), "{e}");
    sb.shutdown().await.unwrap();
}
