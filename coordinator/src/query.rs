//! Running one pooled query: fan jobs out to the study's live nodes with a
//! deadline, collect and check their answers, pool them, store and audit.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tracing::{info, info_span, warn, Instrument};

use plexus_core::pool::{pool, NodeOutcome, NodeStatus};
use plexus_core::{Error, ErrorCode, NodeStats, Query, StudyDefinition};
use plexus_proto::v1 as pb;

use crate::state::State;
use crate::store::{now_ms, AuditEntry};

enum Answer {
    Stats(NodeStats),
    Other(NodeOutcome),
}

/// Runs a validated query to completion and records its outcome. Never
/// panics on node misbehaviour: every answer is checked.
pub async fn run(
    state: Arc<State>,
    query_id: String,
    study: StudyDefinition,
    query: Query,
    researcher: String,
) {
    let span = info_span!("query", query_id = %query_id, study = %study.id);
    async move {
        let outcome = execute(&state, &query_id, &study, &query).await;
        let (result_json, err) = match &outcome {
            Ok(json) => (Some(json.as_str()), None),
            Err(e) => (None, Some(e)),
        };
        let stored = match result_json {
            Some(j) => state.store.finish_query(&query_id, Ok(j)).await,
            None => {
                state
                    .store
                    .finish_query(&query_id, Err(err.expect("error")))
                    .await
            }
        };
        if let Err(e) = stored {
            warn!(error = %e, "could not store the query outcome");
        }
        let (outcome_str, detail) = match &outcome {
            Ok(_) => ("ok".to_string(), String::new()),
            Err(e) => (format!("failed:{}", e.code), e.message.clone()),
        };
        info!(outcome = %outcome_str, "query finished");
        state
            .audit(AuditEntry {
                who: researcher,
                role: "researcher".into(),
                action: "query.result".into(),
                study_id: study.id.clone(),
                query_id: query_id.clone(),
                query_hash: query.hash(),
                outcome: outcome_str,
                detail,
                ..Default::default()
            })
            .await;
        state.notify_finished();
    }
    .instrument(span)
    .await
}

async fn execute(
    state: &Arc<State>,
    query_id: &str,
    study: &StudyDefinition,
    query: &Query,
) -> Result<String, Error> {
    let cfg = &state.config.coordinator;
    let k = cfg.min_cell_size;
    let live: Vec<&String> = study
        .nodes
        .iter()
        .filter(|n| state.registry.is_live(n))
        .collect();
    if (live.len() as u32) < study.min_nodes {
        let down: Vec<&str> = study
            .nodes
            .iter()
            .filter(|n| !state.registry.is_live(n))
            .map(String::as_str)
            .collect();
        return Err(Error::unavailable(format!(
            "only {} of the study's nodes are connected and it needs at least {}; not connected: {} (ask those hospitals to check their plexus-node)",
            live.len(),
            study.min_nodes,
            down.join(", ")
        )));
    }
    let purpose = study.purpose()?;
    let deadline = now_ms() + (cfg.job_timeout_secs * 1000) as i64;
    let wire_query = pb::Query::from(query);
    let query_hash = query.hash();

    let futures = study.nodes.iter().map(|node| {
        let state = state.clone();
        let job = pb::Job {
            job_id: uuid::Uuid::new_v4().to_string(),
            study_id: study.id.clone(),
            purpose: Some((&purpose).into()),
            query: Some(wire_query.clone()),
            min_cell_size: k,
            deadline_unix_ms: deadline,
            query_hash: query_hash.clone(),
        };
        let timeout = Duration::from_secs(cfg.job_timeout_secs);
        async move {
            (
                node.clone(),
                ask(&state, query_id, node, job, query, timeout).await,
            )
        }
    });
    let replies = join_all(futures).await;

    let mut answers = Vec::new();
    let mut others = Vec::new();
    for (node, a) in replies {
        match a {
            Answer::Stats(s) => answers.push((node, s)),
            Answer::Other(o) => others.push(o),
        }
    }
    let result = pool(
        &query.analysis,
        &state.dictionary,
        &answers,
        others,
        study.min_nodes,
        k,
    )?;
    Ok(serde_json::to_string(&result).expect("result serialises"))
}

/// Sends one job and turns whatever comes back into an answer or a node
/// outcome.
async fn ask(
    state: &State,
    query_id: &str,
    node: &str,
    job: pb::Job,
    query: &Query,
    timeout: Duration,
) -> Answer {
    let job_id = job.job_id.clone();
    let audit = |outcome: &str, detail: String| AuditEntry {
        who: state.config.coordinator.id.clone(),
        role: "coordinator".into(),
        action: "job".into(),
        study_id: job.study_id.clone(),
        query_id: query_id.to_string(),
        job_id: job_id.clone(),
        node_id: node.to_string(),
        query_hash: job.query_hash.clone(),
        outcome: outcome.to_string(),
        detail,
        ..Default::default()
    };
    let missing = |detail: &str| {
        Answer::Other(NodeOutcome {
            node: node.to_string(),
            status: NodeStatus::Missing,
            detail: Some(detail.to_string()),
            code: None,
        })
    };
    if !state.registry.is_live(node) {
        state
            .audit(audit("skipped", "node not connected".into()))
            .await;
        return missing("not connected");
    }
    if let Err(e) = state.store.insert_job(&job_id, query_id, node).await {
        warn!(error = %e, "could not record job");
        return missing("coordinator could not record the job");
    }
    let entry_sent = audit("sent", String::new());
    let rx = match state.registry.send_job(node, job.clone()).await {
        Ok(rx) => rx,
        Err(e) => {
            let _ = state.store.finish_job(&job_id, "missing", None, None).await;
            state.audit(audit("missing", e.clone())).await;
            return missing(&e);
        }
    };
    state.audit(entry_sent).await;
    let reply = tokio::time::timeout(timeout, rx).await;
    let (answer, status, stats_json, err): (Answer, &str, Option<String>, Option<Error>) =
        match reply {
            Err(_) => {
                state.registry.abandon(&job_id);
                (
                    missing("no answer before the deadline"),
                    "missing",
                    None,
                    None,
                )
            }
            Ok(Err(_)) => (
                missing("node disconnected during the job"),
                "missing",
                None,
                None,
            ),
            Ok(Ok(Err(detail))) => (missing(&detail), "missing", None, None),
            Ok(Ok(Ok(pb::job_result::Outcome::Error(e)))) => {
                let e: Error = e.into();
                let status = match e.code {
                    ErrorCode::Policy | ErrorCode::Disclosure => NodeStatus::Refused,
                    _ => NodeStatus::Failed,
                };
                let outcome = NodeOutcome {
                    node: node.to_string(),
                    status,
                    detail: Some(format!("{}: {}", e.code, e.message)),
                    code: Some(e.code),
                };
                (Answer::Other(outcome), "refused", None, Some(e))
            }
            Ok(Ok(Ok(pb::job_result::Outcome::Stats(s)))) => {
                let checked = NodeStats::try_from(s).and_then(|s| {
                    s.check(
                        &query.analysis,
                        &state.dictionary,
                        state.config.coordinator.min_cell_size,
                    )
                    .map(|_| s)
                });
                match checked {
                    Ok(s) => {
                        let json = serde_json::to_string(&s).ok();
                        (Answer::Stats(s), "answered", json, None)
                    }
                    Err(e) => {
                        warn!(node = %node, error = %e, "node answer refused");
                        let outcome = NodeOutcome {
                            node: node.to_string(),
                            status: NodeStatus::Failed,
                            detail: Some(format!(
                                "answer refused by the coordinator: {}",
                                e.message
                            )),
                            code: Some(e.code),
                        };
                        (Answer::Other(outcome), "invalid", None, Some(e))
                    }
                }
            }
        };
    if let Err(e) = state
        .store
        .finish_job(&job_id, status, stats_json, err.as_ref())
        .await
    {
        warn!(error = %e, "could not record job outcome");
    }
    let detail = err.map(|e| e.message).unwrap_or_default();
    state.audit(audit(status, detail)).await;
    answer
}
