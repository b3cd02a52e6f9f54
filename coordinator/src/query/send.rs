//! A round of jobs out to the nodes and their replies collected. Each job
//! is written ahead to the audit log (with its row in the jobs table)
//! before it leaves; each reply is checked ([`super::check`]) and recorded
//! the same way before it is used.

use std::time::Duration;

use futures::future::join_all;
use tracing::warn;

use plexus_core::audit::{Action, Outcome, Role};
use plexus_core::models::fit::Iteration;
use plexus_core::pool::{NodeOutcome, NodeStatus};
use plexus_core::{ErrorCode, Query};
use plexus_proto::v1 as pb;

use crate::registry::JobReply;
use crate::state::State;
use crate::store::{now_ms, AuditEntry, JobRow};

use super::check::{self, Checked};
use super::plan::{add_receipts, job_id, Answer, Plan, Round};

impl Plan<'_> {
    /// Sends one job to each of `nodes` (one step of a secure aggregation
    /// session when `secure` is set) and returns every node's answer.
    pub(crate) async fn send(
        &self,
        nodes: &[String],
        iteration: Option<&Iteration>,
        secure: Option<pb::SecureAggregation>,
    ) -> Vec<(String, Answer)> {
        self.send_each(nodes, iteration, |_| secure.clone()).await
    }

    /// [`Plan::send`] with a secure aggregation step of its own for each node.
    pub(crate) async fn send_each(
        &self,
        nodes: &[String],
        iteration: Option<&Iteration>,
        secure: impl Fn(&str) -> Option<pb::SecureAggregation>,
    ) -> Vec<(String, Answer)> {
        let cfg = &self.state.config.coordinator;
        // Set again as each job leaves (see `ask`).
        let deadline = now_ms() + (cfg.job_timeout_secs * 1000) as i64;
        let futures = nodes.iter().map(|node| {
            let job = pb::Job {
                job_id: job_id(),
                audience: node.clone(),
                issued_unix_ms: now_ms(),
                study_id: self.study.id.clone(),
                purpose: Some(self.purpose.clone()),
                query: Some(self.wire_query.clone()),
                min_cell_size: cfg.min_cell_size,
                deadline_unix_ms: deadline,
                query_hash: self.query_hash.clone(),
                iteration: iteration.map(pb::Iteration::from),
                privacy: Some(self.privacy),
                study_definition_hash: self.definition_hash.clone(),
                study_definition: self.definition.clone(),
                secure_aggregation: secure(node),
                // The witnessed log's fields, filled in `ask`.
                ..Default::default()
            };
            let timeout = Duration::from_secs(cfg.job_timeout_secs);
            async move {
                let answer = ask(
                    self.state,
                    self.query_id,
                    node,
                    job,
                    self.query,
                    &self.dictionary,
                    timeout,
                )
                .await;
                if let Some(r) = answer.receipt() {
                    let mut charges = self.charges.lock().expect("charges lock");
                    add_receipts(&mut charges, &[(node.clone(), r)]);
                }
                (node.clone(), answer)
            }
        });
        join_all(futures).await
    }

    /// Sends one round of jobs to `nodes` and sorts the replies into
    /// released statistics and everything else.
    pub(super) async fn round(&self, nodes: &[String], iteration: Option<&Iteration>) -> Round {
        let mut round = Round::empty(self.state.config.coordinator.min_cell_size);
        for (node, a) in self.send(nodes, iteration, None).await {
            match a {
                Answer::Stats(s, receipt) => {
                    if let Some(r) = receipt {
                        round.receipts.push((node.clone(), r));
                    }
                    round.contributors.push(node.clone());
                    round.answers.push((node, s));
                }
                Answer::Other(o, receipt) => {
                    if let Some(r) = receipt {
                        round.receipts.push((node.clone(), r));
                    }
                    round.others.push(o);
                }
                _ => unreachable!("ask refuses secure answers to a plain job"),
            }
        }
        round
    }
}

/// Sends one job and turns whatever comes back into an answer or a node
/// outcome.
async fn ask(
    state: &State,
    query_id: &str,
    node: &str,
    job: pb::Job,
    query: &Query,
    dict: &plexus_core::Dictionary,
    timeout: Duration,
) -> Answer {
    let job = crate::witness::attach(state, node, job).await;
    let job_id = job.job_id.clone();
    let audit = |outcome: Outcome, detail: String| AuditEntry {
        study_id: job.study_id.clone(),
        query_id: query_id.to_string(),
        job_id: job_id.clone(),
        node_id: node.to_string(),
        query_hash: job.query_hash.clone(),
        purpose: job
            .purpose
            .clone()
            .and_then(|p| plexus_core::Purpose::try_from(p).ok())
            .map(|p| p.to_string())
            .unwrap_or_default(),
        detail,
        ..AuditEntry::new(
            state.config.coordinator.id.clone(),
            Role::Coordinator,
            Action::Job,
            outcome,
        )
    };
    let missing = |detail: &str| {
        Answer::Other(
            NodeOutcome {
                node: node.to_string(),
                status: NodeStatus::Missing,
                detail: Some(detail.to_string()),
                code: None,
            },
            None,
        )
    };
    if state.abort_queries.is_cancelled() {
        // The shutdown grace period is over: no new job goes out.
        return missing("the coordinator is shutting down");
    }
    if !state.registry.is_live(node) {
        state.metrics.job(node, "skipped", None);
        state
            .audit(audit(Outcome::Skipped, "node not connected".into()))
            .await;
        return missing("not connected");
    }
    let started = std::time::Instant::now();
    // Write-ahead: the job's row and its `sent` entry are durable (in one
    // transaction) before the job leaves, so every job a node may release
    // is in the log even if the coordinator dies the next instant. Not
    // recorded, not sent.
    let row = JobRow::sent(&job_id, query_id, node);
    match state
        .audit_log
        .append_with_job(audit(Outcome::Sent, String::new()), row)
        .await
    {
        Ok(seq) => {
            state.metrics.audit_entries.set(seq);
        }
        Err(e) => {
            let e = e.to_core();
            warn!(node = %node, error = %e.message, "job not sent: its audit entry could not be written");
            // Best effort: the write that just failed will likely fail too.
            let failed =
                JobRow::finished((&job_id, query_id, node), "failed", None, Some(&e), None);
            let _ = state.store.write_jobs(&[failed]).await;
            state.metrics.job(node, "failed", None);
            return Answer::Other(
                NodeOutcome {
                    node: node.to_string(),
                    status: NodeStatus::Failed,
                    detail: Some(format!("not sent: {}", e.message)),
                    code: Some(ErrorCode::Unavailable),
                },
                None,
            );
        }
    }
    // Valid from the moment it leaves, not from when the round was planned:
    // a burst whose jobs wait for their records must not spend the nodes'
    // time on that wait (nodes refused them as expired).
    let mut leaving = job.clone();
    leaving.issued_unix_ms = now_ms();
    leaving.deadline_unix_ms = leaving.issued_unix_ms + timeout.as_millis() as i64;
    let rx = match state.registry.send_job(node, leaving, &state.signer).await {
        Ok(rx) => rx,
        Err(e) => {
            let _ = state.store.finish_job(&job_id, "missing", None, None).await;
            state.metrics.job(node, "missing", None);
            // Its `sent` entry is written: this says the job never went
            // down the node's stream (reconcile expects no trace of it at
            // the node).
            state.audit(audit(Outcome::Unsent, e.clone())).await;
            return missing(&e);
        }
    };
    let reply: JobReply = tokio::select! {
        r = tokio::time::timeout(timeout, rx) => match r {
            Err(_) => {
                state.registry.abandon(&job_id);
                Err("no answer before the deadline".to_string())
            }
            Ok(Err(_)) => Err("node disconnected during the job".to_string()),
            Ok(Ok(reply)) => reply,
        },
        () = state.abort_queries.cancelled() => {
            state.registry.abandon(&job_id);
            Err("the coordinator shut down before the node answered".to_string())
        }
    };
    let Checked {
        answer,
        status,
        stored: stats_json,
        error: err,
        signed,
        review,
    } = check::reply(state, node, &job, (query, dict), reply);
    state.metrics.job(
        node,
        &status.to_string(),
        Some(started.elapsed().as_secs_f64()),
    );
    let detail = err.as_ref().map(|e| e.message.clone()).unwrap_or_default();
    let (audited_status, detail) = check::reviewed(status, detail, node, review.as_ref());
    let mut entry = audit(audited_status, detail);
    // The node's own debit, never its figures (with secure aggregation
    // the coordinator has none to log).
    if let Some(r) = answer.receipt() {
        entry.privacy_cost = Some(r.charged_rho);
        entry.privacy_remaining = Some((r.budget_rho - r.spent_rho).max(0.0));
    }
    // The job's outcome and its finished row (with the node's signed
    // statement, kept for later checks) are durable together, in one
    // transaction, before the answer is used: never a finished job without
    // its entry. An answer the log could not record is not used (what the
    // node charged still counts).
    let receipt = answer.receipt();
    let row = JobRow::finished(
        (&job_id, query_id, node),
        &status.to_string(),
        stats_json,
        err.as_ref(),
        signed.clone(),
    );
    let answer = match state.audit_log.append_with_job(entry, row).await {
        Ok(seq) => {
            state.metrics.audit_entries.set(seq);
            answer
        }
        Err(e) => {
            let e = e.to_core();
            warn!(node = %node, error = %e.message, "node answer not used: its audit entry could not be written");
            // Best effort, kept with the node's signed statement: the row
            // says the answer was not used (the write that just failed
            // will likely fail too).
            let failed =
                JobRow::finished((&job_id, query_id, node), "failed", None, Some(&e), signed);
            if let Err(e) = state.store.write_jobs(&[failed]).await {
                warn!(error = %e, "could not record the job's outcome and the node's signed statement");
            }
            let outcome = NodeOutcome {
                node: node.to_string(),
                status: NodeStatus::Failed,
                detail: Some(format!("answer not used: {}", e.message)),
                code: Some(e.code),
            };
            Answer::Other(outcome, receipt)
        }
    };
    if let Some(r) = answer.receipt() {
        // The per-node view follows each node's own ledger as its
        // receipts arrive, whatever becomes of the query.
        if let Err(e) = state
            .store
            .record_node_budget(&job.study_id, node, r.spent_rho, r.budget_rho)
            .await
        {
            warn!(error = %e, "could not record the node's budget");
        }
    }
    answer
}
