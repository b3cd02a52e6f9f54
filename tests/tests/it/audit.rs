//! The audit log as an auditor checks it: the coordinator's Merkle log
//! verifies against its signed checkpoints and survives a restart; an entry
//! edited, removed or truncated in the database fails `verify`; two
//! checkpoints of one size with different roots are a split view; every
//! entry has an inclusion proof; reconcile finds a job deleted from either
//! side; nodes' job logs verify against their own checkpoints; the export is
//! FHIR R4 AuditEvent.

use plexus::audit::{self, NodeLog};
use plexus_core::merkle::{Checkpoint, TreeHead};
use plexus_tests::{ask, sandbox, Sandbox, SandboxOptions};
use sqlx::sqlite::SqlitePoolOptions;

async fn db(sb: &Sandbox) -> sqlx::SqlitePool {
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect(&sb.coordinator_config.coordinator.database_url)
        .await
        .unwrap()
}

fn err(r: anyhow::Result<audit::VerifyReport>) -> String {
    format!("{:#}", r.expect_err("verify must fail"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auditors_verify_prove_reconcile_and_export_the_log() {
    let mut sb = Sandbox::start(SandboxOptions::new(300, 71)).await.unwrap();
    let study = sandbox::exact_study();
    sb.register_study(&study).await.unwrap();
    for q in [
        r#"{"analysis": {"count": {}}}"#,
        r#"{"analysis": {"summary": {"variable": "age"}}}"#,
    ] {
        ask(&sb, sandbox::RESEARCHER, &study.id, q).await.unwrap();
    }
    let auditor = sb.client(sandbox::AUDITOR).await.unwrap();
    let key = audit::load_key(&sb.pki.join("coordinator-signing.pub")).unwrap();

    // The whole log against a fresh checkpoint.
    let first = audit::verify(&auditor, &key, None, true).await.unwrap();
    assert!(first.entries >= 12, "{first:?}");
    // Reading the log is recorded too, after the checkpoint was signed.
    assert_eq!(first.checkpoint.head.size + first.uncovered, first.entries);
    assert!(first.uncovered <= 1, "{first:?}");
    let saved = first.checkpoint.clone();

    // Another key does not verify the coordinator's checkpoints.
    let (_, _, other) = plexus_tls::SigningKey::generate_into(&sb.dir, "impostor").unwrap();
    let other = audit::load_key(&other).unwrap();
    assert!(audit::verify(&auditor, &other, None, false).await.is_err());

    // Every entry has an inclusion proof that verifies.
    for seq in 1..=first.entries {
        let p = audit::prove(&auditor, &key, seq).await.unwrap();
        assert_eq!(p.entry.seq as u64, seq);
    }
    assert!(audit::prove(&auditor, &key, first.entries + 1000)
        .await
        .is_err());

    // What the coordinator records: purposes, nodes, sizes, costs.
    let mut entries = Vec::new();
    audit::stream_log(&auditor, |e| {
        entries.push(e);
        Ok(())
    })
    .await
    .unwrap();
    let result = entries.iter().find(|e| e.action == "query.result").unwrap();
    assert_eq!(result.who, sandbox::RESEARCHER);
    assert_eq!(result.nodes.len(), 3);
    assert!(!result.purpose.is_empty());
    assert!(result.result_size.unwrap() > 500, "{result:?}");
    assert!(entries
        .iter()
        .any(|e| e.action == "job" && e.outcome == "sent"));

    // Tampering with the stored log.
    let pool = db(&sb).await;
    let outcome_of = |seq: i64| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>("SELECT outcome FROM audit_events WHERE seq = ?")
                .bind(seq)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let set_outcome = |seq: i64, outcome: String| {
        let pool = pool.clone();
        async move {
            sqlx::query("UPDATE audit_events SET outcome = ? WHERE seq = ?")
                .bind(outcome)
                .bind(seq)
                .execute(&pool)
                .await
                .unwrap();
        }
    };
    // An edited entry.
    let original = outcome_of(4).await;
    set_outcome(4, "refused:policy".into()).await;
    let e = err(audit::verify(&auditor, &key, None, false).await);
    assert!(e.contains("edited"), "{e}");
    set_outcome(4, original).await;
    audit::verify(&auditor, &key, Some(&saved), false)
        .await
        .unwrap();

    // A removed entry (put back afterwards).
    sqlx::query("CREATE TABLE kept AS SELECT * FROM audit_events WHERE seq = 5")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_events WHERE seq = 5")
        .execute(&pool)
        .await
        .unwrap();
    let e = err(audit::verify(&auditor, &key, None, false).await);
    assert!(e.contains("entry 5 is missing"), "{e}");
    sqlx::query("INSERT INTO audit_events SELECT * FROM kept")
        .execute(&pool)
        .await
        .unwrap();
    audit::verify(&auditor, &key, Some(&saved), false)
        .await
        .unwrap();

    // A split view: a second checkpoint of the same size with another root,
    // signed with the coordinator's key.
    let signer = plexus_tls::SigningKey::load(&sb.pki.join("coordinator-signing.key")).unwrap();
    let forged = Checkpoint::sign_with(
        |m| signer.sign(m),
        &saved.origin,
        TreeHead {
            size: saved.head.size,
            root: "00".repeat(32),
        },
        saved.at_unix_ms,
    );
    let e = err(audit::verify(&auditor, &key, Some(&forged), false).await);
    assert!(e.contains("split view"), "{e}");

    // Reconcile: the nodes' logs match the coordinator's record ...
    for node in sb.node_names() {
        let dir = &sb.node_configs[&node].node.state_dir;
        let r = audit::reconcile(&auditor, &NodeLog::read(dir).unwrap(), &node)
            .await
            .unwrap();
        assert!(r.is_clean(), "{r:?}");
        assert_eq!(r.matched, 2, "{r:?}");
    }
    // ... until a job is deleted from a node's log ...
    let b_log = sb.node_configs["hospital-b"]
        .node
        .state_dir
        .join("jobs.log.jsonl");
    let text = std::fs::read_to_string(&b_log).unwrap();
    let first_line = text.lines().next().unwrap().to_string();
    let deleted: serde_json::Value = serde_json::from_str(&first_line).unwrap();
    // Every entry of that job (its write-ahead `accepted` and its outcome).
    let rest: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["job_id"] != deleted["job_id"]
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let edited_dir = sb.dir.join("b-log-copy");
    std::fs::create_dir_all(&edited_dir).unwrap();
    std::fs::write(edited_dir.join("jobs.log.jsonl"), rest).unwrap();
    let r = audit::reconcile(&auditor, &NodeLog::read(&edited_dir).unwrap(), "hospital-b")
        .await
        .unwrap();
    assert_eq!(
        r.only_coordinator,
        vec![deleted["job_id"].as_str().unwrap()]
    );
    assert!(r.only_node.is_empty());
    // ... or from the coordinator's (its database edited to say the job
    // was never sent; an outcome no version writes is refused on reading).
    let c_job: String = sqlx::query_scalar(
        "SELECT job_id FROM audit_events WHERE node_id = 'hospital-c' AND outcome = 'sent' ORDER BY seq LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE audit_events SET outcome = 'skipped' WHERE job_id = ? AND outcome = 'sent'",
    )
    .bind(&c_job)
    .execute(&pool)
    .await
    .unwrap();
    let c_dir = &sb.node_configs["hospital-c"].node.state_dir;
    let r = audit::reconcile(&auditor, &NodeLog::read(c_dir).unwrap(), "hospital-c")
        .await
        .unwrap();
    assert_eq!(r.only_node, vec![c_job.clone()]);
    sqlx::query(
        "UPDATE audit_events SET outcome = 'sent' WHERE job_id = ? AND outcome = 'skipped'",
    )
    .bind(&c_job)
    .execute(&pool)
    .await
    .unwrap();

    // What each node signed for a query, checked by a third party with
    // only the network CA.
    let ca = plexus_tls::load_certs(&sb.pki.join("ca.pem")).unwrap();
    let evidence = audit::evidence(&auditor, &ca, &result.query_id)
        .await
        .unwrap();
    assert_eq!(evidence.len(), 3);
    for n in &evidence {
        assert!(n.problems.is_empty(), "{n:?}");
        assert_eq!(n.signed_outcome.as_deref(), Some("stats"));
    }
    let job = &evidence[0].job_id;
    sqlx::query("UPDATE jobs SET statement = CAST(replace(CAST(statement AS TEXT), 'hospital', 'hospitaL') AS BLOB) WHERE id = ?")
        .bind(job)
        .execute(&pool)
        .await
        .unwrap();
    let evidence = audit::evidence(&auditor, &ca, &result.query_id)
        .await
        .unwrap();
    let tampered = evidence.iter().find(|n| &n.job_id == job).unwrap();
    assert!(
        tampered.problems.iter().any(|p| p.contains("signature")),
        "{tampered:?}"
    );
    // The answers carry the checkpoints the hospitals witnessed, and
    // verify fails on an altered one (skipping it would let a rewriter of
    // the log hide the evidence by spoiling it; cli/src/audit_witness.rs):
    // put the answer back before the log is verified again.
    sqlx::query("UPDATE jobs SET statement = CAST(replace(CAST(statement AS TEXT), 'hospitaL', 'hospital') AS BLOB) WHERE id = ?")
        .bind(job)
        .execute(&pool)
        .await
        .unwrap();

    // FHIR R4 AuditEvent export.
    let mut out = Vec::new();
    let n = audit::export_fhir(&auditor, &audit::Filter::default(), &mut out)
        .await
        .unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len() as u64, n);
    assert!(n >= first.entries);
    assert!(lines.iter().all(|r| r["resourceType"] == "AuditEvent"));
    let fhir_result = lines
        .iter()
        .find(|r| r["subtype"][0]["code"] == "query.result")
        .unwrap();
    assert_eq!(fhir_result["outcome"], "0");
    assert_eq!(
        fhir_result["agent"][0]["who"]["identifier"]["value"],
        "alice"
    );
    assert!(fhir_result["purposeOfEvent"][0]["coding"][0]["code"].is_string());

    // The log survives a restart and still extends the saved checkpoint.
    sb.stop_coordinator().await.unwrap();
    sb.start_coordinator().await.unwrap();
    sb.wait_all_live().await.unwrap();
    ask(
        &sb,
        sandbox::RESEARCHER,
        &study.id,
        r#"{"analysis": {"count": {}}}"#,
    )
    .await
    .unwrap();
    let auditor = sb.client(sandbox::AUDITOR).await.unwrap();
    let after = audit::verify(&auditor, &key, Some(&saved), true)
        .await
        .unwrap();
    assert!(after.entries > first.entries + 4, "{after:?}");

    // Truncation: the last entries removed.
    sqlx::query("DELETE FROM audit_events WHERE seq > ?")
        .bind(after.entries as i64 - 3)
        .execute(&pool)
        .await
        .unwrap();
    let e = err(audit::verify(&auditor, &key, None, false).await);
    assert!(e.contains("truncated") || e.contains("removed"), "{e}");
    let e = err(audit::verify(&auditor, &key, Some(&after.checkpoint), false).await);
    assert!(e.contains("truncated") || e.contains("removed"), "{e}");
    pool.close().await;

    // Nodes' own logs verify against the checkpoints they signed at stop.
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_job_logs_verify_against_their_own_checkpoints() {
    let mut sb = Sandbox::start(SandboxOptions::new(300, 73)).await.unwrap();
    let study = sandbox::exact_study();
    sb.register_study(&study).await.unwrap();
    for _ in 0..2 {
        ask(
            &sb,
            sandbox::RESEARCHER,
            &study.id,
            r#"{"analysis": {"count": {}}}"#,
        )
        .await
        .unwrap();
    }
    let dirs: Vec<_> = sb
        .node_names()
        .iter()
        .map(|n| sb.node_configs[n].node.state_dir.clone())
        .collect();
    for node in sb.node_names() {
        sb.stop_node(&node).await.unwrap();
    }
    for dir in dirs {
        let log = NodeLog::read(&dir).unwrap();
        let key = audit::load_key(&log.key_beside()).unwrap();
        let report = audit::verify_node(&log, &key).unwrap();
        // Each job: its write-ahead `accepted` entry, then its outcome.
        assert_eq!(report.entries, 4);
        assert_eq!(report.latest.as_ref().unwrap().size, 4);

        // An edited line fails.
        let mut edited = NodeLog::read(&dir).unwrap();
        assert!(edited.lines[1].contains("released"), "{:?}", edited.lines);
        edited.lines[1] = edited.lines[1].replace("released", "refused:policy");
        let e = audit::verify_node(&edited, &key).unwrap_err();
        assert!(format!("{e:#}").contains("edited"), "{e:#}");
        // A truncated log fails.
        let mut truncated = NodeLog::read(&dir).unwrap();
        truncated.lines.pop();
        assert!(audit::verify_node(&truncated, &key).is_err());
    }
    sb.shutdown().await.unwrap();
}
