//! Signed jobs at the node: a node that pins another coordinator key than
//! the one jobs are signed with refuses every job, answers with the reason
//! and logs the refusal; the other nodes answer. (Tampered, expired,
//! replayed and misaddressed envelopes are refused by
//! `plexus_node::envelope`, tested there one by one.)

use plexus_core::pool::NodeStatus;
use plexus_proto::v1 as pb;
use plexus_tests::jobs::{exact_job, sign};
use plexus_tests::{ask, sandbox, Sandbox, SandboxOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_and_logs_jobs_not_signed_by_the_key_it_pins() {
    let mut sb = Sandbox::prepare(SandboxOptions::new(300, 61))
        .await
        .unwrap();
    let other = sb.dir.join("other-pki");
    let (_, _, other_pub) = plexus_tls::SigningKey::generate_into(&other, "impostor").unwrap();
    sb.node_configs
        .get_mut("hospital-c")
        .unwrap()
        .coordinator
        .signing_key = other_pub;
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
    let c = r.provenance.node("hospital-c").unwrap();
    assert_eq!(c.status, NodeStatus::Refused, "{c:?}");
    assert!(c.detail.as_deref().unwrap().contains("signature"), "{c:?}");
    assert_eq!(r.provenance.answered, 2);

    let log = sb.node_configs["hospital-c"]
        .node
        .state_dir
        .join("jobs.log.jsonl");
    let text = std::fs::read_to_string(log).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["outcome"], "refused:policy", "{text}");
    assert!(last["detail"].as_str().unwrap().contains("signature"));
    assert_eq!(last["job_id"].as_str().unwrap().len(), 32, "128-bit ids");
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_is_signed_by_its_node_and_can_be_checked_later() {
    use prost::Message;

    let sb = Sandbox::start(SandboxOptions::new(300, 67)).await.unwrap();
    let study = sandbox::exact_study();
    sb.register_study(&study).await.unwrap();
    let client = sb.client(sandbox::RESEARCHER).await.unwrap();
    let query = plexus_core::Query::from_json(r#"{"analysis": {"count": {}}}"#).unwrap();
    let r = client
        .run_query(&study.id, &query, std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(r.status, pb::QueryStatus::Succeeded as i32, "{r:?}");

    // A third party with the coordinator's database checks every answer.
    let store =
        plexus_coordinator::store::Store::open(&sb.coordinator_config.coordinator.database_url)
            .await
            .unwrap();
    let jobs = store.jobs_of(&r.query_id).await.unwrap();
    assert_eq!(jobs.len(), 3);
    for (job_id, node, status) in jobs {
        assert_eq!(status, "answered");
        let (statement, signature, certificate) =
            store.signature_of(&job_id).await.unwrap().unwrap();
        plexus_tls::verify_by_certificate(&certificate, &statement, &signature).unwrap();
        let cert = plexus_tls::CertificateDer::from(certificate.clone());
        assert_eq!(plexus_tls::identity_from_cert(&cert).unwrap().name, node);
        let s = pb::ResultStatement::decode(statement.as_slice()).unwrap();
        assert_eq!(
            (s.job_id.as_str(), s.node_id.as_str()),
            (job_id.as_str(), node.as_str())
        );
        assert_eq!(s.job_hash.len(), 32);
        assert_eq!(s.data_snapshot.len(), 64);
        assert!(matches!(
            s.outcome,
            Some(pb::result_statement::Outcome::Stats(_))
        ));
        // Any change to what was signed is caught.
        let mut edited = statement.clone();
        let last = edited.len() - 1;
        edited[last] ^= 1;
        assert!(plexus_tls::verify_by_certificate(&certificate, &edited, &signature).is_err());
    }
    sb.shutdown().await.unwrap();
}

/// Each envelope refusal through a real node runner: refused with its
/// reason and logged in the node's job log, a replay also after the node
/// is opened again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_expired_replayed_and_misaddressed_jobs_are_refused_and_logged() {
    let sb = Sandbox::prepare(SandboxOptions::new(200, 79))
        .await
        .unwrap();
    let config = sb.node_configs["hospital-a"].clone();
    let key = plexus_tls::SigningKey::load(&sb.coordinator_config.coordinator.signing_key).unwrap();
    let study = sandbox::exact_study();
    let query = plexus_core::Query::from_json(r#"{"analysis": {"count": {}}}"#).unwrap();
    // Signed and due a minute after it was issued.
    let signed = |id: &str, audience: &str, issued: i64| {
        sign(&key, &exact_job(&study, &query, id, audience, issued))
    };
    let outcome = |msg: Option<pb::node_message::Msg>| match msg {
        Some(pb::node_message::Msg::Result(r)) => r.outcome.unwrap(),
        other => panic!("expected a result, got {other:?}"),
    };
    let refusal = |o: pb::job_result::Outcome| match o {
        pb::job_result::Outcome::Error(e) => e.message,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let now = chrono::Utc::now().timestamp_millis();
    let id = |n: u8| format!("{n:02x}").repeat(16);
    let runner = plexus_node::open_runner(config.clone(), plexus_node::RunOptions::default())
        .await
        .unwrap();

    // One byte changed after signing.
    let mut tampered = signed(&id(1), "hospital-a", now);
    let last = tampered.job.len() - 1;
    tampered.job[last] ^= 1;
    let m = refusal(outcome(runner.take(tampered).await));
    assert!(m.contains("signature"), "{m}");
    // Expired.
    let m = refusal(outcome(
        runner
            .take(signed(&id(2), "hospital-a", now - 120_000))
            .await,
    ));
    assert!(m.contains("expired"), "{m}");
    // For another node.
    let m = refusal(outcome(
        runner.take(signed(&id(3), "hospital-b", now)).await,
    ));
    assert!(m.contains("addressed to \"hospital-b\""), "{m}");
    // Answered once, then replayed.
    let valid = signed(&id(4), "hospital-a", now);
    let first = outcome(runner.take(valid.clone()).await);
    assert!(
        matches!(first, pb::job_result::Outcome::Stats(_)),
        "{first:?}"
    );
    let m = refusal(outcome(runner.take(valid.clone()).await));
    assert!(m.contains("replay") || m.contains("already"), "{m}");
    drop(runner);
    // ... and replayed again after the node is opened anew.
    let runner = plexus_node::open_runner(config.clone(), plexus_node::RunOptions::default())
        .await
        .unwrap();
    let m = refusal(outcome(runner.take(valid).await));
    assert!(m.contains("replay") || m.contains("already"), "{m}");

    let log =
        plexus_node::log::JobLog::read_outcomes(&config.node.state_dir.join("jobs.log.jsonl"))
            .unwrap();
    let outcomes: Vec<(&str, &str)> = log
        .iter()
        .map(|e| (e.job_id.as_str(), e.outcome.as_str()))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            // The id a tampered job claims, kept to say which job was refused.
            (id(1).as_str(), "refused:policy"),
            (id(2).as_str(), "refused:policy"),
            (id(3).as_str(), "refused:policy"),
            (id(4).as_str(), "released"),
            (id(4).as_str(), "refused:policy"),
            (id(4).as_str(), "refused:policy"),
        ],
        "{log:?}"
    );
}

/// hospital-a's job runner in a prepared sandbox (no daemons), with exact
/// count jobs for it signed in the coordinator's place: the node's side of
/// a job, taken directly.
struct OneNode {
    /// Keeps the sandbox's folder.
    _sb: Sandbox,
    config: plexus_node::config::NodeConfig,
    runner: plexus_node::job::JobRunner,
    key: plexus_tls::SigningKey,
    study: plexus_core::StudyDefinition,
    query: plexus_core::Query,
    issued_unix_ms: i64,
}

impl OneNode {
    async fn start(seed: u64) -> Self {
        let sb = Sandbox::prepare(SandboxOptions::new(200, seed))
            .await
            .unwrap();
        let config = sb.node_configs["hospital-a"].clone();
        let key =
            plexus_tls::SigningKey::load(&sb.coordinator_config.coordinator.signing_key).unwrap();
        let runner = plexus_node::open_runner(config.clone(), plexus_node::RunOptions::default())
            .await
            .unwrap();
        OneNode {
            _sb: sb,
            config,
            runner,
            key,
            study: sandbox::exact_study(),
            query: plexus_core::Query::from_json(r#"{"analysis": {"count": {}}}"#).unwrap(),
            issued_unix_ms: chrono::Utc::now().timestamp_millis(),
        }
    }

    fn job(&self, id: &str) -> pb::SignedJob {
        sign(
            &self.key,
            &exact_job(
                &self.study,
                &self.query,
                id,
                "hospital-a",
                self.issued_unix_ms,
            ),
        )
    }

    /// What the node answers `job`.
    async fn take(&self, job: pb::SignedJob) -> pb::job_result::Outcome {
        match self.runner.take(job).await {
            Some(pb::node_message::Msg::Result(r)) => r.outcome.unwrap(),
            other => panic!("expected a result, got {other:?}"),
        }
    }

    /// `outcome` is the refusal of a node that cannot write `file` (full),
    /// and the node is not ready, for its storage, naming the file.
    fn assert_refused_for_storage(&self, outcome: pb::job_result::Outcome, file: &str) {
        let refused = match outcome {
            pb::job_result::Outcome::Error(e) => plexus_core::Error::from(e),
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert_eq!(
            refused.code,
            plexus_core::ErrorCode::Unavailable,
            "{refused}"
        );
        assert!(
            refused.message.contains(file) && refused.message.contains("No space left"),
            "{refused}"
        );
        let why = self.runner.readiness.status().unwrap_err();
        assert!(why.contains("storage") && why.contains(file), "{why}");
        assert!(self.runner.storage_problem().is_some());
    }

    /// The node's records can be written, as far as it and its readiness know.
    fn assert_storage_ready(&self) {
        assert!(self.runner.storage_problem().is_none());
        assert!(!self
            .runner
            .readiness
            .status()
            .err()
            .unwrap_or_default()
            .contains("storage"));
    }
}

/// A node that cannot write its job log (a full disk, injected) refuses the
/// job `unavailable`, naming the file, turns not ready, and takes the next
/// job once the log can be written, logging the refusal then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_write_its_job_log_refuses_unavailable_and_recovers() {
    let node = OneNode::start(83).await;
    let (first, second) = ("05".repeat(16), "06".repeat(16));

    node.runner.log.fail_next_writes(1);
    let refused = node.take(node.job(&first)).await;
    node.assert_refused_for_storage(refused, "jobs.log.jsonl");

    // The disk takes writes again: the next job is answered, the node is
    // ready as far as its records go, and the refusal is in the log.
    let answered = node.take(node.job(&second)).await;
    assert!(
        matches!(answered, pb::job_result::Outcome::Stats(_)),
        "{answered:?}"
    );
    node.assert_storage_ready();
    let log =
        plexus_node::log::JobLog::read_all(&node.config.node.state_dir.join("jobs.log.jsonl"))
            .unwrap();
    let outcomes: Vec<(&str, &str)> = log
        .iter()
        .map(|e| (e.job_id.as_str(), e.outcome.as_str()))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            (first.as_str(), "failed:unavailable"),
            (second.as_str(), "accepted"),
            (second.as_str(), "released"),
        ],
        "{log:?}"
    );
}

/// A node that cannot record a job's id in its list of seen jobs (a full
/// disk, injected) refuses the job `unavailable` naming the file, and is
/// not ready, as for its ledger and job log, until the storage probe finds
/// the file writable again; the fragment the failed write left is cut off,
/// and the refused job can be sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_record_a_seen_job_is_not_ready_until_it_can() {
    let node = OneNode::start(84).await;
    let job = node.job(&"07".repeat(16));
    let seen_file = node.config.node.state_dir.join("seen_jobs.jsonl");
    let before = std::fs::metadata(&seen_file).unwrap().len();

    node.runner.seen.fail_next_writes(1);
    let refused = node.take(job.clone()).await;
    node.assert_refused_for_storage(refused, "seen_jobs.jsonl");
    assert!(node
        .runner
        .storage_problem()
        .is_some_and(|p| p.contains("seen jobs")));

    // The disk takes writes again: the probe clears the trouble and the
    // node is ready as far as its records go; nothing of the failed write
    // is left in the file, and the job, never computed, is taken.
    node.runner.check_storage().unwrap();
    node.assert_storage_ready();
    assert_eq!(std::fs::metadata(&seen_file).unwrap().len(), before);
    let answered = node.take(job).await;
    assert!(
        matches!(answered, pb::job_result::Outcome::Stats(_)),
        "{answered:?}"
    );
}

/// A node does not start on an edited ledger, nor on a ledger missing a
/// debit its job log records: the error names the files and the line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_to_start_on_an_edited_or_cut_ledger() {
    use plexus_node::ledger::{Ledger, LEDGER_FILE};
    use plexus_node::log::{JobLog, LogEntry};

    let sb = Sandbox::prepare(SandboxOptions::new(200, 89))
        .await
        .unwrap();
    let config = sb.node_configs["hospital-a"].clone();
    let state = config.node.state_dir.clone();
    let ledger = Ledger::open(&state).unwrap();
    let log = JobLog::open(&state).unwrap();
    for (job, rho) in [("j1", 0.03), ("j2", 0.04), ("j3", 0.01)] {
        ledger.debit("s1", 1.0, rho, job, "q", None).unwrap();
        log.append(&LogEntry {
            job_id: job.into(),
            study_id: "s1".into(),
            outcome: "released".into(),
            privacy_cost: Some(rho),
            ..Default::default()
        })
        .unwrap();
    }
    drop((ledger, log));
    let path = state.join(LEDGER_FILE);
    let text = std::fs::read_to_string(&path).unwrap();
    let open = || plexus_node::open_runner(config.clone(), plexus_node::RunOptions::default());

    // A debit's rho set to 0.
    std::fs::write(&path, text.replacen("\"rho\":0.04", "\"rho\":0.0", 1)).unwrap();
    let e = open()
        .await
        .err()
        .expect("an edited ledger is refused")
        .to_string();
    assert!(
        e.contains("line 2 of the privacy ledger") && e.contains(&path.display().to_string()),
        "{e}"
    );

    // The last debit cut off: the job log still records the charge.
    let kept: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, kept).unwrap();
    let e = open()
        .await
        .err()
        .expect("a cut ledger is refused")
        .to_string();
    assert!(
        e.contains("job j3") && e.contains(LEDGER_FILE) && e.contains("jobs.log.jsonl"),
        "{e}"
    );

    // Put back whole, the node opens.
    std::fs::write(&path, &text).unwrap();
    open().await.unwrap();
}
