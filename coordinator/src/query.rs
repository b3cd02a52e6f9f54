//! Running one pooled query: fan jobs out to the study's live nodes with a
//! deadline, collect and check their answers, pool them, store and audit.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tracing::{error, info, info_span, warn, Instrument};

use plexus_core::models::cox::CoxFitter;
use plexus_core::models::fit::{Iteration, IterativeFit, Step};
use plexus_core::models::glm::GlmFitter;
use plexus_core::pool::{
    pool, pool_value, quorum, NodeCharge, NodeOutcome, NodeStatus, PooledResult, PooledValue,
    PrivacyReport, Provenance, SiteResult,
};
use plexus_core::privacy::glm::{glm_noise, GlmBounds, DP_GLM_ROUNDS};
use plexus_core::privacy::report::{
    annotate_summary_noises, count_noise_sd, query_cost, survival_noise, Receipt,
};
use plexus_core::privacy::scale::NoiseScale;
use plexus_core::secagg::steps::{Confirmation, MaskedAnswer, Unmasked};
use plexus_core::secagg::{self, SignedBundle, Summed};
use plexus_core::{Analysis, Error, ErrorCode, NodeStats, Query, StudyDefinition};
use plexus_proto::v1 as pb;

use plexus_core::audit::{Action, Outcome, Role};

use crate::state::State;
use crate::store::{now_ms, AuditEntry, JobRow};

pub(crate) enum Answer {
    Stats(NodeStats, Option<Receipt>),
    /// A node's signed key bundle for a secure aggregation session.
    Keys(SignedBundle),
    /// A node's masked answer for a roster, checked against the job.
    Masked(MaskedAnswer, Option<Receipt>),
    /// A survivor's signature over the survivor list.
    Confirmed(Confirmation),
    /// What a survivor revealed to unmask the sum.
    Unmasked(Unmasked),
    /// Anything else: missing, failed, or refused (with the receipt of what
    /// the node charged when its refusal was decided on a noised release).
    Other(NodeOutcome, Option<Receipt>),
}

/// What one round of jobs brought back.
pub(crate) struct Round {
    /// Released statistics by node, or under secure aggregation the one
    /// pooled round of a fit under [`secagg::POOLED`].
    pub answers: Vec<(String, NodeStats)>,
    /// Under secure aggregation: the unmasked sum of the survivors.
    pub secure: Option<Summed>,
    /// The nodes whose data the answers rest on.
    pub contributors: Vec<String>,
    pub others: Vec<NodeOutcome>,
    pub receipts: Vec<(String, Receipt)>,
    /// What the researcher should know about how the round came about.
    pub notes: Vec<String>,
    /// The minimum cell size the answers were checked against.
    pub min_cell_size: u32,
}

impl Round {
    /// A round with nothing in it yet, checked against `min_cell_size`.
    pub fn empty(min_cell_size: u32) -> Self {
        Round {
            answers: Vec::new(),
            secure: None,
            contributors: Vec::new(),
            others: Vec::new(),
            receipts: Vec::new(),
            notes: Vec::new(),
            min_cell_size,
        }
    }
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
            None => Err(Error::unavailable(crate::server::SHUT_DOWN_MID_QUERY)),
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
            outcome = Err(Error::unavailable(crate::server::SHUT_DOWN_MID_QUERY));
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

/// What every job of one query shares.
pub(crate) struct Plan<'a> {
    pub state: &'a Arc<State>,
    pub query_id: &'a str,
    pub study: &'a StudyDefinition,
    pub query: &'a Query,
    pub purpose: pb::Purpose,
    pub wire_query: pb::Query,
    pub query_hash: String,
    pub privacy: pb::JobPrivacy,
    /// The definition the query runs under, which each node checks
    /// against the versions its hospital approved.
    pub definition_hash: String,
    /// Every node's receipts so far, summed over the query's jobs.
    pub charges: &'a std::sync::Mutex<Vec<(String, Receipt)>>,
}

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
                secure_aggregation: secure(node),
                // The witnessed log's fields, filled in `ask`.
                ..Default::default()
            };
            let timeout = Duration::from_secs(cfg.job_timeout_secs);
            async move {
                let answer = ask(self.state, self.query_id, node, job, self.query, timeout).await;
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
    async fn round(&self, nodes: &[String], iteration: Option<&Iteration>) -> Round {
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
    let plan = Plan {
        state,
        query_id,
        study,
        query,
        purpose: (&study.purpose()?).into(),
        wire_query: pb::Query::from(query),
        query_hash: query.hash(),
        definition_hash: study.definition_hash(),
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
        let mut result = crate::secure::pool_secure(&plan, round)?;
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
            &state.dictionary,
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
                    SiteResult::new(
                        node,
                        pool_value(&query.analysis, &state.dictionary, &one, k),
                    )
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

/// Records what a query under differential privacy cost, and states it
/// with the noise its values carry.
async fn account(
    state: &State,
    query_id: &str,
    study: &StudyDefinition,
    query: &Query,
    summary_noises: &[NoiseScale],
    receipts: &[(String, Receipt)],
    result: &mut PooledResult,
) -> Result<PrivacyReport, Error> {
    let store_err = |e: crate::error::CoordinatorError| {
        Error::internal(format!(
            "the coordinator could not record the query's privacy cost: {e}"
        ))
    };
    let charged = receipts
        .iter()
        .map(|(_, r)| r.charged_rho)
        .fold(0.0, f64::max);
    let canonical = query.canonical_hash(&state.dictionary)?;
    state
        .store
        .record_charge(query_id, &study.id, &canonical, charged)
        .await
        .map_err(store_err)?;
    let (spent, _) = state.store.spent(&study.id).await.map_err(store_err)?;
    // What any node has spent can exceed the coordinator's sum when a node
    // charged a job whose query later failed; the larger figure stands.
    let spent = receipts
        .iter()
        .map(|(_, r)| r.spent_rho)
        .fold(spent, f64::max);
    let budget = study.privacy.budget_rho;
    let mut notes = Vec::new();
    if let Some(note) = annotate_summary_noises(&mut result.value, summary_noises) {
        notes.push(note);
    }
    let noises: Vec<_> = receipts.iter().map(|(_, r)| r.noise).collect();
    // A Kaplan-Meier count's noise follows from the tree its node used.
    let mut count_sd = count_noise_sd(&noises);
    if let Some((sd, note)) = survival_noise(&query.analysis, &noises)? {
        count_sd = Some(sd);
        notes.push(note);
    }
    Ok(PrivacyReport {
        exact: false,
        cost_rho: query_cost(study, query),
        charged_rho: charged,
        cached: !receipts.is_empty() && receipts.iter().all(|(_, r)| r.cached),
        budget_rho: budget,
        spent_rho: spent,
        remaining_rho: (budget - spent).max(0.0),
        epsilon_spent: study.privacy.epsilon(spent),
        delta: study.privacy.delta,
        count_noise_sd: count_sd,
        nodes: receipts
            .iter()
            .map(|(node, r)| NodeCharge {
                node: node.clone(),
                charged_rho: r.charged_rho,
                spent_rho: r.spent_rho,
                budget_rho: r.budget_rho,
                cached: r.cached,
            })
            .collect(),
        notes,
    })
}

/// The coordinator's half of an iterative fit: pooled statistics in,
/// next coefficients out.
enum Fitter {
    /// With the bounds its noise follows from, under differential privacy.
    Glm(GlmFitter, Option<GlmBounds>),
    Cox(CoxFitter),
}

impl Fitter {
    fn new(query: &Query, dict: &plexus_core::Dictionary, private: bool) -> Result<Self, Error> {
        let names: Vec<String> = query
            .analysis
            .terms(dict)?
            .iter()
            .map(|t| t.name())
            .collect();
        let options = query
            .analysis
            .fit_options()
            .ok_or_else(|| Error::internal("not an iterative analysis"))?;
        Ok(match &query.analysis {
            Analysis::Glm {
                family,
                outcome,
                intercept,
                ..
            } => {
                let fitter = GlmFitter::new(*family, outcome.clone(), names, *intercept, options);
                if private {
                    let bounds =
                        GlmBounds::new(*family, &query.analysis.terms(dict)?, outcome, dict)?;
                    let centres = bounds.centre.clone();
                    Fitter::Glm(fitter.private(DP_GLM_ROUNDS, centres), Some(bounds))
                } else {
                    Fitter::Glm(fitter, None)
                }
            }
            Analysis::Cox {
                time, event, ties, ..
            } => Fitter::Cox(CoxFitter::new(
                time.clone(),
                event.clone(),
                names,
                *ties,
                options,
            )),
            _ => return Err(Error::internal("not an iterative analysis")),
        })
    }

    fn start(&mut self) -> Iteration {
        match self {
            Fitter::Glm(f, _) => f.start(),
            Fitter::Cox(f) => f.start(),
        }
    }

    /// Tells a private fit how much noise the round's sums carry, from the
    /// cost each node noised them at.
    fn note_noise(&mut self, receipts: &[(String, Receipt)]) -> Result<(), Error> {
        let Fitter::Glm(f, Some(bounds)) = self else {
            return Ok(());
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for (_, r) in receipts {
            let n = glm_noise(bounds, r.noise.rho)?;
            if a.is_empty() {
                a = vec![0.0; n.xtwx.len()];
                b = vec![0.0; n.xtwz.len()];
            }
            a.iter_mut().zip(&n.xtwx).for_each(|(v, sd)| *v += sd * sd);
            b.iter_mut().zip(&n.xtwz).for_each(|(v, sd)| *v += sd * sd);
        }
        f.set_noise(a, b);
        Ok(())
    }

    /// Sums the round's statistics and takes one step.
    fn step(&mut self, answers: &[(String, NodeStats)]) -> Result<Step<PooledValue>, Error> {
        let mismatch =
            || Error::internal("node statistics do not match the model (checked on receipt)");
        Ok(match self {
            Fitter::Glm(f, _) => {
                let parts = answers.iter().map(|(_, s)| match s {
                    NodeStats::Glm(g) => Ok(g),
                    _ => Err(mismatch()),
                });
                match f.step_parts(parts.collect::<Result<Vec<_>, _>>()?)? {
                    Step::Next(i) => Step::Next(i),
                    Step::Done(r) => Step::Done(PooledValue::Glm(r)),
                }
            }
            Fitter::Cox(f) => {
                let parts = answers.iter().map(|(_, s)| match s {
                    NodeStats::Cox(c) => Ok(c),
                    _ => Err(mismatch()),
                });
                match f.step_parts(parts.collect::<Result<Vec<_>, _>>()?)? {
                    Step::Next(i) => Step::Next(i),
                    Step::Done(r) => Step::Done(PooledValue::Cox(r)),
                }
            }
        })
    }
}

struct Fit {
    value: PooledValue,
    provenance: Provenance,
    /// Nodes whose data the final fit rests on.
    participants: Vec<String>,
    /// What each node charged over every round (privacy), summed.
    receipts: Vec<(String, Receipt)>,
}

/// Adds one round's receipts to a query's running totals per node (the
/// rounds of a fit, the attempts of a secure aggregation).
pub(crate) fn add_receipts(totals: &mut Vec<(String, Receipt)>, round: &[(String, Receipt)]) {
    for (node, r) in round {
        match totals.iter_mut().find(|(n, _)| n == node) {
            Some((_, t)) => {
                t.charged_rho += r.charged_rho;
                t.spent_rho = r.spent_rho;
                t.budget_rho = r.budget_rho;
                t.cached &= r.cached;
                t.noise = r.noise;
            }
            None => totals.push((node.clone(), *r)),
        }
    }
}

/// Runs an iterative fit over `nodes` to convergence. The nodes that
/// answer the first round are the fit's participants. One lost later stops
/// the fit with an error naming it and the round, unless the study allows
/// starting again without it.
async fn fit(plan: &Plan<'_>, nodes: Vec<String>, min_nodes: u32) -> Result<Fit, Error> {
    let state = plan.state;
    let k = state.config.coordinator.min_cell_size;
    let private = !plan.study.privacy.exact;
    let mut fitter = Fitter::new(plan.query, &state.dictionary, private)?;
    let mut receipts: Vec<(String, Receipt)> = Vec::new();
    let mut iteration = fitter.start();
    let mut participants: Vec<String> = Vec::new();
    let mut outside: Vec<NodeOutcome> = Vec::new();
    let mut notes = Vec::new();
    let mut round = 0u32;
    let mut round_ms = Vec::new();
    // Under secure aggregation: the session whose roster the rounds use,
    // until a node is lost (then a restart needs fresh keys).
    let mut session = None;
    loop {
        round += 1;
        // Step halving and restarts add rounds beyond max_iterations; this
        // bounds them all.
        if round > 4 * plexus_core::query::MAX_ITERATIONS {
            return Err(Error::invalid(format!(
                "the fit did not finish in {} rounds; loosen the tolerance or simplify the model",
                round - 1
            )));
        }
        let asked = if round == 1 {
            nodes.clone()
        } else {
            participants.clone()
        };
        let started = std::time::Instant::now();
        let Round {
            answers,
            contributors,
            others,
            receipts: charged,
            notes: round_notes,
            ..
        } = if plan.study.secure_aggregation {
            // In the first round a node lost after the key round is a
            // dropout, as in a one-shot query: the fit rests on the
            // survivors. In later rounds nothing is unmasked without a
            // participant, and the fit's own rule for lost nodes applies.
            plan.secure_round(&mut session, &asked, Some(&iteration), round == 1)
                .await?
        } else {
            plan.round(&asked, Some(&iteration)).await
        };
        add_receipts(&mut receipts, &charged);
        notes.extend(round_notes);
        round_ms.push(started.elapsed().as_millis() as u64);
        if round == 1 {
            let statuses: Vec<(String, NodeStatus)> = contributors
                .iter()
                .map(|n| (n.clone(), NodeStatus::Answered))
                .collect();
            quorum(&statuses, others.clone(), min_nodes, k)?;
            participants = contributors;
            outside = others;
        } else if !others.is_empty() {
            // A participant that answered but refused or failed this round
            // (diverged, weights on too few patients) ends the fit: going on
            // without it would silently change the population.
            if let Some(o) = others.iter().find(|o| o.status != NodeStatus::Missing) {
                return Err(Error::new(
                    o.code.unwrap_or(ErrorCode::Internal),
                    format!(
                        "{} could not compute round {round} of the fit, so it was stopped: {}",
                        o.node,
                        o.detail.as_deref().unwrap_or("no detail")
                    ),
                ));
            }
            let lost: Vec<String> = others
                .iter()
                .map(|o| match &o.detail {
                    Some(d) => format!("{} ({d})", o.node),
                    None => o.node.clone(),
                })
                .collect();
            let remaining: Vec<String> = participants
                .iter()
                .filter(|p| contributors.contains(p))
                .cloned()
                .collect();
            let restartable = plan.study.continue_without_lost_nodes
                && (remaining.len() as u32) >= min_nodes
                && !plan.study.secure_aggregation;
            if !restartable {
                let why = if plan.study.secure_aggregation && plan.study.continue_without_lost_nodes
                {
                    "under secure aggregation each hospital answers a round of a fit for one set of hospitals only, so the fit cannot start again without it".to_string()
                } else if plan.study.continue_without_lost_nodes {
                    format!(
                        "only {} nodes remain and the study needs {min_nodes}",
                        remaining.len()
                    )
                } else {
                    "the study does not allow continuing without a node (continue_without_lost_nodes)"
                        .to_string()
                };
                return Err(Error::unavailable(format!(
                    "the fit lost {} in round {round}, so it was stopped: {why}; submit the query again once the node is back",
                    lost.join(", ")
                )));
            }
            notes.push(format!(
                "{} stopped answering in round {round}; the fit started again without it, as the study allows, and rests on {} only",
                lost.join(", "),
                remaining.join(", ")
            ));
            for mut o in others {
                o.status = NodeStatus::Missing;
                o.detail = Some(format!("lost in round {round} of the fit"));
                outside.push(o);
            }
            participants = remaining;
            fitter = Fitter::new(plan.query, &state.dictionary, private)?;
            iteration = fitter.start();
            continue;
        }
        fitter.note_noise(&charged)?;
        match fitter.step(&answers)? {
            Step::Next(next) => iteration = next,
            Step::Done(value) => {
                let statuses: Vec<(String, NodeStatus)> = participants
                    .iter()
                    .map(|n| (n.clone(), NodeStatus::Answered))
                    .collect();
                let mut provenance = quorum(&statuses, outside, min_nodes, k)?;
                provenance.notes = notes;
                provenance.round_ms = round_ms;
                info!(rounds = round, "fit finished");
                return Ok(Fit {
                    value,
                    provenance,
                    participants,
                    receipts,
                });
            }
        }
    }
}

/// One site's own fit, for a `by_site` query.
async fn fit_site(plan: &Plan<'_>, node: &str) -> Result<PooledValue, Error> {
    fit(plan, vec![node.to_string()], 1).await.map(|f| f.value)
}

/// A 128-bit job id, hex: a UUIDv7 (milliseconds since 1970, then 74
/// random bits). Ids that grow with time are appended at the end of the
/// jobs table's and the audit log's indexes instead of landing on a random
/// page of each: a commit then writes a few pages, not one per job.
fn job_id() -> String {
    hex::encode(uuid::Uuid::now_v7().as_bytes())
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
    let reply = tokio::select! {
        r = tokio::time::timeout(timeout, rx) => r,
        () = state.abort_queries.cancelled() => {
            state.registry.abandon(&job_id);
            Ok(Ok(Err("the coordinator shut down before the node answered".to_string())))
        }
    };
    // The node's signed statement, kept with the job for later checks.
    let mut signed: Option<(Vec<u8>, Vec<u8>, Vec<u8>)> = None;
    // The hospital data steward's decision, when the node held the result.
    let mut review: Option<pb::Review> = None;
    let reply = reply.map(|r| {
        r.map(|r| {
            r.map(|s| {
                signed = Some((s.statement, s.signature, s.certificate));
                review = s.review;
                (s.outcome, s.privacy)
            })
        })
    });
    // An answer the coordinator does not take: the node failed the job.
    let invalid = |e: Error| {
        warn!(node = %node, error = %e, "node answer refused");
        let outcome = NodeOutcome {
            node: node.to_string(),
            status: NodeStatus::Failed,
            detail: Some(format!("answer refused by the coordinator: {}", e.message)),
            code: Some(e.code),
        };
        (
            Answer::Other(outcome, None),
            Outcome::Invalid,
            None,
            Some(e),
        )
    };
    let (answer, status, stats_json, err): (Answer, Outcome, Option<String>, Option<Error>) =
        match reply {
            Err(_) => {
                state.registry.abandon(&job_id);
                (
                    missing("no answer before the deadline"),
                    Outcome::Missing,
                    None,
                    None,
                )
            }
            Ok(Err(_)) => (
                missing("node disconnected during the job"),
                Outcome::Missing,
                None,
                None,
            ),
            Ok(Ok(Err(detail))) => (missing(&detail), Outcome::Missing, None, None),
            Ok(Ok(Ok((pb::job_result::Outcome::Error(e), receipt)))) => {
                let e: Error = e.into();
                // A refusal decided on a noised release carries what it
                // charged; a receipt that does not parse is dropped (the
                // node's ledger stays the authority).
                let receipt = receipt.and_then(|r| Receipt::try_from(r).ok());
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
                (
                    Answer::Other(outcome, receipt),
                    Outcome::Refused(None),
                    None,
                    Some(e),
                )
            }
            Ok(Ok(Ok((
                outcome @ (pb::job_result::Outcome::Keys(_)
                | pb::job_result::Outcome::Masked(_)
                | pb::job_result::Outcome::Confirmed(_)
                | pb::job_result::Outcome::Unmasked(_)),
                receipt,
            )))) => match secure_answer(&job, outcome, receipt, query, &state.dictionary) {
                Ok((answer, stored)) => (answer, Outcome::Answered, Some(stored), None),
                Err(e) => invalid(e),
            },
            Ok(Ok(Ok((pb::job_result::Outcome::Stats(_), _))))
                if job.secure_aggregation.is_some() =>
            {
                // A node's own figures where only a masked vector was
                // asked for: neither used nor kept.
                signed = None;
                invalid(Error::invalid(
                    "the node answered a secure aggregation job with plain statistics; they were discarded unread (is the node's plexus-node older than its study?)",
                ))
            }
            Ok(Ok(Ok((pb::job_result::Outcome::Stats(s), receipt)))) => {
                let receipt = receipt.map(Receipt::try_from).transpose();
                let checked = receipt
                    .and_then(|r| NodeStats::try_from(s).map(|s| (s, r)))
                    .and_then(|(s, r)| {
                        s.check(
                            &query.analysis,
                            &state.dictionary,
                            state.config.coordinator.min_cell_size,
                        )
                        .map(|_| (s, r))
                    });
                match checked {
                    Ok((s, receipt)) => {
                        let json = serde_json::to_string(&s).ok();
                        (Answer::Stats(s, receipt), Outcome::Answered, json, None)
                    }
                    Err(e) => invalid(e),
                }
            }
        };
    state.metrics.job(
        node,
        &status.to_string(),
        Some(started.elapsed().as_secs_f64()),
    );
    let detail = err.as_ref().map(|e| e.message.clone()).unwrap_or_default();
    let (audited_status, detail) = reviewed(status, detail, node, review.as_ref());
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

impl Answer {
    /// What the node says it charged for this job, if anything.
    pub(crate) fn receipt(&self) -> Option<Receipt> {
        match self {
            Answer::Stats(_, r) | Answer::Masked(_, r) | Answer::Other(_, r) => *r,
            Answer::Keys(..) | Answer::Confirmed(..) | Answer::Unmasked(..) => None,
        }
    }
}

/// Records what the study's nodes charged for a query that failed: the
/// most any node charged over the query's jobs, as for an answered one.
async fn record_failed_charge(
    state: &State,
    query_id: &str,
    study: &StudyDefinition,
    query: &Query,
    charges: &std::sync::Mutex<Vec<(String, Receipt)>>,
) {
    let charged = charges
        .lock()
        .expect("charges lock")
        .iter()
        .map(|(_, r)| r.charged_rho)
        .fold(0.0, f64::max);
    if charged <= 0.0 {
        return;
    }
    let recorded = match query.canonical_hash(&state.dictionary) {
        Ok(canonical) => state
            .store
            .record_charge(query_id, &study.id, &canonical, charged)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.message),
    };
    if let Err(e) = recorded {
        warn!(error = %e, "could not record what a failed query charged");
    }
}

/// The audit outcome of a job whose result the node held for its data
/// steward: says who decided what, on top of what the coordinator made of
/// the answer.
fn reviewed(
    status: Outcome,
    detail: String,
    node: &str,
    review: Option<&pb::Review>,
) -> (Outcome, String) {
    let Some(r) = review else {
        return (status, detail);
    };
    match (r.decision.as_str(), status) {
        ("approved", Outcome::Answered) => (
            Outcome::ReviewedApproved,
            format!("released after review by the data steward of {node}"),
        ),
        ("rejected", _) => (Outcome::ReviewedRejected, detail),
        ("expired", _) => (Outcome::ReviewExpired, detail),
        _ => (status, detail),
    }
}

/// Checks a node's answer to one step of a secure aggregation session
/// against the job sent: a key bundle for the session, signed with the
/// key of a certificate for that node, with a key for every other node
/// asked; a masked answer for the roster, step and analysis, with a share
/// for every other member; a signature over the survivor list asked; or
/// shares and seeds for the survivors and dropped asked. Returns the answer
/// and what the jobs table keeps of it (never a figure of the node's own:
/// the node's signed statement kept beside it holds the whole message).
fn secure_answer(
    job: &pb::Job,
    outcome: pb::job_result::Outcome,
    receipt: Option<pb::PrivacyReceipt>,
    query: &Query,
    dict: &plexus_core::Dictionary,
) -> Result<(Answer, String), Error> {
    use pb::job_result::Outcome;
    use pb::secure_aggregation::Step;
    let wrong = || {
        Error::invalid("the node answered another step of secure aggregation than the one asked")
    };
    let sa = job.secure_aggregation.as_ref().ok_or_else(|| {
        Error::invalid("the node answered a plain job with a secure aggregation step")
    })?;
    let sid = &sa.session_id;
    let stored = |v: serde_json::Value| serde_json::json!({ "secure_aggregation": v }).to_string();
    match (outcome, &sa.step) {
        (Outcome::Keys(k), Some(Step::KeyRequest(request))) => {
            let signed = SignedBundle::try_from(
                k.bundle
                    .ok_or_else(|| Error::invalid("the node's key answer carries no bundle"))?,
            )?;
            let b = &signed.bundle;
            if k.session_id != *sid || b.session_id != *sid || b.node != job.audience {
                return Err(wrong());
            }
            let expected: std::collections::BTreeSet<&str> = request
                .nodes
                .iter()
                .map(String::as_str)
                .filter(|n| *n != job.audience)
                .collect();
            if !b.keys.keys().map(String::as_str).eq(expected) {
                return Err(Error::invalid(
                    "the node's public keys are not one for each other node of the session",
                ));
            }
            plexus_tls::verify_by_certificate(
                &signed.certificate,
                &secagg::keys::bundle_message(&signed.bytes),
                &signed.signature,
            )
            .map_err(|e| Error::invalid(format!("the node's key bundle: {e}")))?;
            let public: std::collections::BTreeMap<&String, String> =
                b.keys.iter().map(|(p, k)| (p, hex::encode(k))).collect();
            let json = stored(serde_json::json!({
                "session_id": sid,
                "public_keys": public,
            }));
            Ok((Answer::Keys(signed), json))
        }
        (Outcome::Masked(m), Some(Step::Mask(request))) => {
            let roster = plexus_core::secagg::Roster::try_from(
                request
                    .roster
                    .clone()
                    .ok_or_else(|| Error::internal("a mask job without a roster"))?,
            )?;
            let m = MaskedAnswer::try_from(m)?;
            if m.session_id != *sid || m.step != request.step || m.roster_digest != roster.digest()
            {
                return Err(Error::invalid(
                    "the node masked for another session, step or roster than the one sent",
                ));
            }
            let len = secagg::vector_len(&query.analysis, dict)?;
            if m.vector.len() != len {
                return Err(Error::invalid(format!(
                    "the node's masked vector has {} values where this {} has {len}",
                    m.vector.len(),
                    query.analysis.kind()
                )));
            }
            let others: Vec<String> = roster
                .node_ids()
                .into_iter()
                .filter(|n| *n != job.audience)
                .collect();
            if !m.shares.keys().eq(others.iter()) {
                return Err(Error::invalid(
                    "the node's masked answer does not carry one share for each other roster member",
                ));
            }
            let receipt = receipt.map(Receipt::try_from).transpose()?;
            let json = stored(serde_json::json!({
                "session_id": m.session_id,
                "step": m.step,
                "roster_digest": hex::encode(m.roster_digest),
                "masked": hex::encode(plexus_proto::convert::vector_to_bytes(&m.vector)),
            }));
            Ok((Answer::Masked(m, receipt), json))
        }
        (Outcome::Confirmed(c), Some(Step::Confirm(request))) => {
            let c = Confirmation::try_from(c)?;
            let mut asked = request.survivors.clone();
            asked.sort();
            if c.session_id != *sid || c.step != request.step || c.survivors != asked {
                return Err(wrong());
            }
            let json = stored(serde_json::json!({
                "session_id": sid,
                "step": c.step,
                "signed_survivors": c.survivors,
            }));
            Ok((Answer::Confirmed(c), json))
        }
        (Outcome::Unmasked(u), Some(Step::Unmask(request))) => {
            let u = Unmasked::try_from(u)?;
            if u.session_id != *sid
                || u.step != request.step
                || !u
                    .revealed
                    .shares
                    .keys()
                    .all(|o| request.survivors.contains(o))
                || !u.revealed.seeds.keys().all(|p| request.dropped.contains(p))
            {
                return Err(Error::invalid(
                    "the node revealed for other nodes or another step than the ones asked",
                ));
            }
            let json = stored(serde_json::json!({
                "session_id": sid,
                "step": u.step,
                "revealed_shares": u.revealed.shares.len(),
                "revealed_seeds": u.revealed.seeds.len(),
            }));
            Ok((Answer::Unmasked(u), json))
        }
        _ => Err(wrong()),
    }
}
