//! Iterative fits (GLM, Cox): the coordinator proposes coefficients, the
//! nodes answer with their sums for them, and the coordinator steps until
//! the fit converges, a fixed number of rounds under differential privacy.

use std::sync::Arc;

use tracing::info;

use plexus_core::models::artefact::ModelArtefact;
use plexus_core::models::cox::CoxFitter;
use plexus_core::models::fit::{Iteration, IterativeFit, Step};
use plexus_core::models::gbdt::GbdtTrainer;
use plexus_core::models::glm::GlmFitter;
use plexus_core::models::performance::{self, PerformanceFitter, PerformanceOptions};
use plexus_core::pool::{quorum, PooledValue, Provenance};
use plexus_core::pool::{NodeOutcome, NodeStatus};
use plexus_core::privacy::glm::{glm_noise, GlmBounds, DP_GLM_ROUNDS};
use plexus_core::privacy::report::Receipt;
use plexus_core::{Analysis, Error, ErrorCode, NodeStats, Query};

use super::plan::{add_receipts, Plan, Round};

/// The coordinator's half of an iterative fit: pooled statistics in,
/// next coefficients out.
enum Fitter {
    /// With the bounds its noise follows from, under differential privacy.
    Glm(Box<GlmFitter>, Option<GlmBounds>),
    Cox(CoxFitter),
    Gbdt(Box<GbdtTrainer>),
    Performance(Box<PerformanceFitter>),
}

impl Fitter {
    fn new(
        query: &Query,
        dict: &plexus_core::Dictionary,
        private: bool,
        model: Option<&Arc<ModelArtefact>>,
    ) -> Result<Self, Error> {
        if let Analysis::ModelPerformance {
            model: name,
            model_hash,
            outcome,
            subgroups,
            thresholds,
            calibration_bins,
            ..
        } = &query.analysis
        {
            if private {
                return Err(plexus_core::privacy::release::performance_refused());
            }
            let model =
                model.ok_or_else(|| Error::internal("a model_performance without its model"))?;
            return Ok(Fitter::Performance(Box::new(PerformanceFitter::new(
                Some(model.clone()),
                name.clone(),
                model_hash.clone(),
                outcome.clone(),
                performance::groups(dict, subgroups)?,
                PerformanceOptions::new(thresholds, *calibration_bins)?,
            ))));
        }
        if let Some(options) = query.analysis.gbdt_options() {
            if private {
                return Err(plexus_core::privacy::release::gbdt_refused());
            }
            let features = query.analysis.gbdt_features(dict)?;
            return Ok(Fitter::Gbdt(Box::new(GbdtTrainer::new(options, features))));
        }
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
                    Fitter::Glm(
                        Box::new(fitter.private(DP_GLM_ROUNDS, centres)),
                        Some(bounds),
                    )
                } else {
                    Fitter::Glm(Box::new(fitter), None)
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
            Fitter::Gbdt(f) => f.start(),
            Fitter::Performance(f) => f.start(),
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
            Fitter::Gbdt(f) => {
                let open = f.open();
                let mut parts = Vec::with_capacity(answers.len());
                for (node, s) in answers {
                    let NodeStats::Gbdt(g) = s else {
                        return Err(mismatch());
                    };
                    let ids: Vec<u32> = g.slots.iter().map(|s| s.slot).collect();
                    if ids != open {
                        return Err(Error::invalid(format!(
                            "{node} answered with histograms for tree nodes {ids:?} where {open:?} were open"
                        )));
                    }
                    parts.push(g);
                }
                match f.step_parts(parts)? {
                    Step::Next(i) => Step::Next(i),
                    Step::Done(r) => Step::Done(PooledValue::Gbdt(Box::new(r))),
                }
            }
            Fitter::Performance(f) => {
                let mut parts = Vec::with_capacity(answers.len());
                for (_, s) in answers {
                    let NodeStats::Performance(p) = s else {
                        return Err(mismatch());
                    };
                    parts.push(p);
                }
                match f.step_parts(parts)? {
                    Step::Next(i) => Step::Next(i),
                    Step::Done(r) => Step::Done(PooledValue::Performance(Box::new(r))),
                }
            }
        })
    }
}

pub(super) struct Fit {
    pub value: PooledValue,
    pub provenance: Provenance,
    /// Nodes whose data the final fit rests on.
    pub participants: Vec<String>,
    /// What each node charged over every round (privacy), summed.
    pub receipts: Vec<(String, Receipt)>,
}

/// Runs an iterative fit over `nodes` to convergence. The nodes that
/// answer the first round are the fit's participants. One lost later stops
/// the fit with an error naming it and the round, unless the study allows
/// starting again without it.
pub(super) async fn fit(plan: &Plan<'_>, nodes: Vec<String>, min_nodes: u32) -> Result<Fit, Error> {
    let state = plan.state;
    let k = state.config.coordinator.min_cell_size;
    let private = !plan.study.privacy.exact;
    let mut fitter = Fitter::new(plan.query, &plan.dictionary, private, plan.model.as_ref())?;
    let mut receipts: Vec<(String, Receipt)> = Vec::new();
    let mut iteration = fitter.start();
    let mut participants: Vec<String> = Vec::new();
    let mut outside: Vec<NodeOutcome> = Vec::new();
    let mut notes = Vec::new();
    let mut round = 0u32;
    let mut restarts = 0u32;
    let mut round_ms = Vec::new();
    // Under secure aggregation: the session whose roster the rounds use,
    // until a node is lost (then a restart needs fresh keys).
    let mut session = None;
    loop {
        round += 1;
        // Step halving and restarts add rounds beyond max_iterations; this
        // bounds them all. A GBDT takes one round per level of each tree.
        // A fit started again without a lost node gets its rounds again.
        let limit = match plan.query.analysis.gbdt_options() {
            Some(o) => (1 + o.trees * o.depth) * (restarts + 1),
            None if matches!(plan.query.analysis, Analysis::ModelPerformance { .. }) => {
                restarts + 1
            }
            None => 4 * plexus_core::query::MAX_ITERATIONS * (restarts + 1),
        };
        if round > limit {
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
            restarts += 1;
            fitter = Fitter::new(plan.query, &plan.dictionary, private, plan.model.as_ref())?;
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
pub(super) async fn fit_site(plan: &Plan<'_>, node: &str) -> Result<PooledValue, Error> {
    fit(plan, vec![node.to_string()], 1).await.map(|f| f.value)
}
