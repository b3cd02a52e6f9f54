//! The scale of a release's noise, shared by everything that sets, states
//! or adds it up: the release and its survival trees, a node's receipt and
//! ledger, the coordinator's report.

use serde::{Deserialize, Serialize};

/// The noise a release carries: standard deviations in the released
/// values' own units (0 where the release has no such part).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct NoiseScale {
    /// Of each count (cells, bins, n). For Kaplan-Meier, of each node of
    /// the trees of range counts the events and censorings went through
    /// ([`super::survival`]); the grid then fixes what that leaves in each
    /// released count ([`super::survival::TreeNoise`]).
    pub count_sd: f64,
    /// Of each sum, in the variable's unit.
    pub sum_sd: f64,
    /// Of each sum of squares, in the variable's unit squared.
    pub square_sd: f64,
    /// The value sums were centred on before noising: the noise in a mean
    /// m grows with |m − centre|·count_sd, not with m.
    #[serde(default)]
    pub centre: f64,
    /// The cost the release was noised at (the noise of sums whose scale
    /// differs entry by entry, as in a regression round, follows from it).
    #[serde(default)]
    pub rho: f64,
}

impl NoiseScale {
    pub fn is_zero(&self) -> bool {
        self.count_sd == 0.0 && self.sum_sd == 0.0 && self.square_sd == 0.0
    }
}
