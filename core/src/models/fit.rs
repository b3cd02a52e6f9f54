//! What the GLM and Cox fitters share: the coordinator's side of a fit run
//! in rounds. Each round it sends an [`Iteration`], sums the nodes' round
//! statistics and takes one step.

use serde::{Deserialize, Serialize};

use crate::error::Result;

/// What the coordinator sends with each round of an iterative fit.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Iteration {
    /// 1 for the first round.
    pub round: u32,
    /// Empty in a GLM's first round (nodes start from R's starting values).
    pub coefficients: Vec<f64>,
    /// Mean of the null model, once known, so nodes can return the null
    /// deviance alongside.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub null_mean: Option<f64>,
    /// A GBDT's round: the trees so far and the one being grown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gbdt: Option<crate::models::trees::GbdtRound>,
    /// The model a `model_performance` scores, as registered; the query
    /// names its hash, which the node checks it against and its hospital
    /// must have approved. Not part of the round's text (the hash is).
    #[serde(skip)]
    pub model: Option<std::sync::Arc<crate::models::artefact::ModelArtefact>>,
}

/// What the coordinator does after a round: run another, or stop with the
/// fit's result.
pub enum Step<R> {
    /// Run another round with these.
    Next(Iteration),
    Done(R),
}

/// Round statistics that add across nodes.
pub trait RoundStats: Sized {
    /// Statistics of no patients for a model with `p` parameters.
    fn zero(p: usize) -> Self;
    fn merge(&mut self, other: &Self);
}

/// The coordinator's half of an iterative fit.
pub trait IterativeFit {
    type Stats: RoundStats;
    type Output;

    fn parameters(&self) -> usize;
    /// The first round's instructions.
    fn start(&mut self) -> Iteration;
    /// Takes the pooled statistics of the current round and decides.
    fn step(&mut self, pooled: &Self::Stats) -> Result<Step<Self::Output>>;

    /// Sums the parts of one round and steps.
    fn step_parts<'a>(
        &mut self,
        parts: impl IntoIterator<Item = &'a Self::Stats>,
    ) -> Result<Step<Self::Output>>
    where
        Self::Stats: 'a,
    {
        let mut total = Self::Stats::zero(self.parameters());
        parts.into_iter().for_each(|s| total.merge(s));
        self.step(&total)
    }
}

/// Runs a whole fit in-process, as the centralised baselines and the tests
/// do: `round` computes the pooled statistics for one round's instructions.
pub fn fit_locally<F: IterativeFit>(
    mut fitter: F,
    mut round: impl FnMut(&Iteration) -> Result<F::Stats>,
) -> Result<F::Output> {
    let mut it = fitter.start();
    loop {
        let stats = round(&it)?;
        match fitter.step(&stats)? {
            Step::Next(next) => it = next,
            Step::Done(r) => return Ok(r),
        }
    }
}
