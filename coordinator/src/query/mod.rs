//! Running one pooled query, from the submission the research service
//! accepted ([`crate::service::research`]) to the stored result. Each step
//! has its file; read them in this order:
//!
//! 1. this file: [`run`] waits for the query's turn, [`execute`]s it
//!    (one round of jobs, an iterative fit, or secure aggregation's
//!    rounds), pools the answers, writes the `query.result` audit entry and
//!    stores the result;
//! 2. [`plan`]: what every job of the query shares ([`plan::Plan`]) and
//!    what comes back ([`plan::Answer`], [`plan::Round`]);
//! 3. [`send`]: a round of jobs out to the nodes, each written ahead to
//!    the audit log, and their replies collected;
//! 4. [`check`]: each reply checked against the job and the dictionary
//!    before it is used, and its audit outcome;
//! 5. [`fit`]: iterative fits (GLM, Cox), one round per step;
//! 6. [`secure`]: secure aggregation's rounds (keys, masked answers,
//!    confirmations, unmasking);
//! 7. [`account`]: what the query cost the study's privacy budget.
//!
//! Dependencies go down this list only: `plan` needs none of the others,
//! and no file imports this one.

mod account;
mod check;
mod fit;
mod plan;
mod secure;
mod send;

use std::sync::Arc;

use futures::future::join_all;
use tracing::{error, info, info_span, warn, Instrument};

use plexus_core::audit::{Action, Outcome, Role};
use plexus_core::pool::{pool, pool_value, PooledResult, PrivacyReport, SiteResult};
use plexus_core::privacy::glm::DP_GLM_ROUNDS;
use plexus_core::privacy::report::{query_cost, Receipt};
use plexus_core::privacy::scale::NoiseScale;
use plexus_core::secagg;
use plexus_core::{Error, NodeStats, Query, StudyDefinition};
use plexus_proto::v1 as pb;

use crate::shutdown::SHUT_DOWN_MID_QUERY;
use crate::state::State;
use crate::store::AuditEntry;

use account::{account, record_failed_charge};
use fit::{fit, fit_site};
use plan::{Plan, Round};

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
        let started = std::time::Instant::now();
        let charges = std::sync::Mutex::new(Vec::new());
        // Its turn (first come, first served); its jobs are signed and
        // their deadlines start only then.
        state.metrics.queries_waiting.inc();
        let turn = tokio::select! {
            t = state.running.acquire() => t.ok(),
            () = state.abort_queries.cancelled() => None,
        };
        state.metrics.queries_waiting.dec();
        let mut outcome = match turn {
            Some(_turn) => execute(&state, &query_id, &study, &query, &charges).await,
            None => Err(Error::unavailable(SHUT_DOWN_MID_QUERY)),
        };
        if outcome.is_err() && !study.privacy.exact {
            // The hospitals charged what they released or refused on noised
            // values even though the query failed: the study's account says
            // so too.
            record_failed_charge(&state, &query_id, &study, &query, &charges).await;
        }
        if state.abort_queries.is_cancelled() {
            // Cut short by the end of the shutdown grace period: whatever
            // the nodes managed is not a complete answer.
            outcome = Err(Error::unavailable(SHUT_DOWN_MID_QUERY));
        }
        let (mut audited, detail) = match &outcome {
            Ok(_) => (Outcome::Ok, String::new()),
            Err(e) => (Outcome::Failed(e.code), e.message.clone()),
        };
        let mut entry = AuditEntry {
            study_id: study.id.clone(),
            purpose: study.purpose().map(|p| p.to_string()).unwrap_or_default(),
            query_id: query_id.clone(),
            query_hash: query.hash(),
            nodes: study.nodes.clone(),
            detail,
            ..AuditEntry::new(researcher, Role::Researcher, Action::QueryResult, audited)
        };
        // What left the network: size, suppression and privacy cost, never a value.
        if let Some(pooled) = outcome
            .as_ref()
            .ok()
            .and_then(|j| serde_json::from_str::<plexus_core::pool::PooledResult>(j).ok())
        {
            entry.result_size = pooled.n();
            entry.suppressed = pooled.suppressed_cells();
            if let Some(p) = pooled.privacy.as_ref().filter(|p| !p.exact) {
                entry.privacy_cost = Some(p.charged_rho);
                entry.privacy_remaining = Some(p.remaining_rho);
            }
        }
        // Write-ahead: the result is stored (and so can be fetched) only
        // once its `query.result` entry is durable. A result the log could
        // not record is withheld: the query fails, retryably.
        match state.audit_log.append(entry).await {
            Ok(seq) => {
                state.metrics.audit_entries.set(seq);
            }
            Err(e) => {
                let e = e.to_core();
                error!(error = %e.message, "query result withheld: its audit entry could not be written");
                outcome = Err(Error::new(
                    e.code,
                    format!(
                        "the result of query {query_id} was withheld: {} (submit it again once the coordinator's database takes writes)",
                        e.message
                    ),
                ));
                audited = Outcome::Failed(e.code);
            }
        }
        let stored = match &outcome {
            Ok(j) => state.store.finish_query(&query_id, Ok(j)).await,
            Err(e) => state.store.finish_query(&query_id, Err(e)).await,
        };
        if let Err(e) = stored {
            // Still pending in the database: the next start marks it
            // failed (its result entry is already in the log).
            warn!(error = %e, "could not store the query outcome");
        }
        info!(outcome = %audited, "query finished");
        let analysis = query.analysis.kind().as_str();
        state.metrics.query(analysis, &audited.to_string());
        state
            .metrics
            .query_seconds
            .get_or_create(&crate::metrics::AnalysisLabels {
                analysis: analysis.to_string(),
            })
            .observe(started.elapsed().as_secs_f64());
        if !study.privacy.exact {
            if let Ok((spent, _)) = state.store.spent(&study.id).await {
                state.metrics.budget(&study.id, spent);
            }
        }
        state.notify_finished(&query_id);
    }
    .instrument(span)
    .await
}

/// Runs the query's plan: one round of jobs, an iterative fit, or
/// secure aggregation's rounds; pools the answers and accounts for them.
async fn execute(
    state: &Arc<State>,
    query_id: &str,
    study: &StudyDefinition,
    query: &Query,
    charges: &std::sync::Mutex<Vec<(String, Receipt)>>,
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
    let model = match &query.analysis {
        plexus_core::Analysis::ModelPerformance {
            model, model_hash, ..
        } => {
            let stored = state
                .store
                .model(&study.id, model)
                .await
                .map_err(|e| e.to_core())?
                .filter(|m| m.hash == *model_hash)
                .ok_or_else(|| {
                    Error::policy(format!(
                        "model \"{model}\" with hash {model_hash} is no longer registered with study \"{}\" (it was registered again while the query waited); ask again",
                        study.id
                    ))
                })?;
            Some(Arc::new(stored.artefact))
        }
        _ => None,
    };
    let plan = Plan {
        model,
        state,
        query_id,
        study,
        query,
        purpose: (&study.purpose()?).into(),
        wire_query: pb::Query::from(query),
        query_hash: query.hash(),
        definition_hash: study.definition_hash(),
        // Sent only when the nodes need it to read the study's own variables.
        definition: if study.derived.is_empty() && study.concept_sets.is_empty() {
            Vec::new()
        } else {
            serde_json::to_vec(study).expect("study serialises")
        },
        dictionary: state.dictionary_for(study)?,
        charges,
        privacy: pb::JobPrivacy {
            exact: study.privacy.exact,
            // A fit's cost is split evenly over its fixed number of rounds.
            rho: if query.analysis.kind().is_iterative() {
                query_cost(study, query) / f64::from(DP_GLM_ROUNDS)
            } else {
                query_cost(study, query)
            },
            budget_rho: study.privacy.budget_rho,
        },
    };
    if study.secure_aggregation {
        // Checked at submission; a result per site would show each
        // hospital's own figures.
        secagg::supported(query)?;
    }
    let mut result = if query.analysis.kind().is_iterative() {
        let fit = fit(&plan, study.nodes.clone(), study.min_nodes).await?;
        let mut result = PooledResult {
            value: fit.value,
            provenance: fit.provenance,
            by_site: Vec::new(),
            privacy: None,
        };
        if !study.privacy.exact {
            let mut report = account(
                state,
                query_id,
                study,
                query,
                &[],
                &fit.receipts,
                &mut result,
            )
            .await?;
            report.notes.push(format!(
                "fitted under differential privacy in {DP_GLM_ROUNDS} rounds of rho {:.4} each at every node; the standard errors and intervals include the noise, and \"converged\" means the last step moved every coefficient by less than twice its standard error",
                plan.privacy.rho
            ));
            result.privacy = Some(report);
        }
        if query.by_site {
            let sites = fit.participants.iter().map(|node| {
                let plan = &plan;
                async move { SiteResult::new(node, fit_site(plan, node).await) }
            });
            result.by_site = join_all(sites).await;
        }
        result
    } else if study.secure_aggregation {
        let round = plan
            .secure_round(&mut None, &study.nodes, None, true)
            .await?;
        // Every roster node's moments are in the pooled summary.
        let noises: Vec<NoiseScale> = round.receipts.iter().map(|(_, r)| r.noise).collect();
        let receipts = round.receipts.clone();
        let mut result = secure::pool_secure(&plan, round)?;
        if !study.privacy.exact {
            let report = account(
                state,
                query_id,
                study,
                query,
                &noises,
                &receipts,
                &mut result,
            )
            .await?;
            result.privacy = Some(report);
        }
        result
    } else {
        let Round {
            answers,
            others,
            receipts,
            ..
        } = plan.round(&study.nodes, None).await;
        let mut result = pool(
            &query.analysis,
            &plan.dictionary,
            &answers,
            others,
            study.min_nodes,
            k,
        )?;
        if !study.privacy.exact {
            // The nodes whose released moments are in a pooled summary.
            let noises: Vec<NoiseScale> = answers
                .iter()
                .filter(|(_, s)| matches!(s, NodeStats::Summary(Some(_))))
                .filter_map(|(node, _)| receipts.iter().find(|(n, _)| n == node))
                .map(|(_, r)| r.noise)
                .collect();
            result.privacy = Some(
                account(
                    state,
                    query_id,
                    study,
                    query,
                    &noises,
                    &receipts,
                    &mut result,
                )
                .await?,
            );
        }
        if query.by_site {
            result.by_site = answers
                .iter()
                .map(|(node, stats)| {
                    let one = [(node.clone(), stats.clone())];
                    SiteResult::new(node, pool_value(&query.analysis, &plan.dictionary, &one, k))
                })
                .collect();
        }
        result
    };
    if study.privacy.exact {
        result.privacy = Some(PrivacyReport {
            exact: true,
            cost_rho: 0.0,
            charged_rho: 0.0,
            cached: false,
            budget_rho: 0.0,
            spent_rho: 0.0,
            remaining_rho: 0.0,
            epsilon_spent: 0.0,
            delta: 0.0,
            count_noise_sd: None,
            nodes: Vec::new(),
            notes: Vec::new(),
        });
    }
    Ok(serde_json::to_string(&result).expect("result serialises"))
}
