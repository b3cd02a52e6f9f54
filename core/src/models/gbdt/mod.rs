//! Gradient-boosted decision trees trained across sites, level by level,
//! from histograms of gradients on public bins.
//!
//! Every feature is cut at public thresholds (the dictionary's bounds, or
//! edges the query gives), so a patient's bin means the same thing at
//! every node. Each round the coordinator sends the trees so far and the
//! tree being grown; each node scores its patients, takes the loss's
//! gradient and hessian for each, and returns their sums per (open tree
//! node, feature, bin). The coordinator pools the sums, picks each open
//! node's split with the usual second-order gain (as XGBoost and LightGBM
//! do) and sends the next level. A tree of depth `d` takes at most `d`
//! rounds; the leaves of the last level come from their parent's sums.
//!
//! What a node releases is held to the minimum cell size: a node never
//! releases the sums of fewer than `k` patients, so it merges adjacent
//! bins into segments of at least `k` ([`segment_ends`]), and only the
//! ends of every site's segments are candidate thresholds. A split then
//! leaves at least `k` patients on each side at every site, and so does
//! every leaf. Nodes check that every split of every tree a job carries
//! is at one of their own segment ends, whoever sent it.
//!
//! Without disclosure control (`k = 0`) the federated ensemble is the
//! centralised histogram GBDT on the union of the sites' rows: the tests
//! prove it for any split of the rows over one to six sites.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dictionary::{Dictionary, VarType};
use crate::error::{Error, Result};

mod grow;
mod local;
#[cfg(test)]
mod tests;

pub use super::trees::{Feature, GbdtRound, Slot, Tree};
pub use grow::{best_split, GbdtResult, GbdtTrainer, Importance, SplitChoice};
pub use local::{joint_ends, segment_ends, GbdtData};

/// Trees in an ensemble when the query names no number.
pub const DEFAULT_TREES: u32 = 100;
pub const MAX_TREES: u32 = 1000;
pub const DEFAULT_DEPTH: u32 = 4;
/// Deepest tree: 32 open nodes in the last level's round.
pub const MAX_DEPTH: u32 = 6;
pub const DEFAULT_LEARNING_RATE: f64 = 0.1;
pub const DEFAULT_LAMBDA: f64 = 1.0;
pub const DEFAULT_MIN_CHILD_WEIGHT: f64 = 1.0;
/// Bins of a numeric feature cut evenly between its dictionary bounds.
pub const DEFAULT_BINS: u32 = 32;
/// Most bins of one feature.
pub const MAX_FEATURE_BINS: usize = 256;
/// Most (feature, bin) pairs of one model: bounds a node's answer to one
/// round (32 open nodes of 4,000 segments of about 20 bytes each, under
/// the 4 MiB a gRPC message may hold).
pub const MAX_TOTAL_BINS: usize = 4_000;

/// The loss the trees descend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// Binary outcome (0/1, or a boolean): log loss on the logit scale.
    #[default]
    Logistic,
    /// Continuous outcome: half the squared error.
    Squared,
}

impl Loss {
    pub fn as_str(self) -> &'static str {
        match self {
            Loss::Logistic => "logistic",
            Loss::Squared => "squared",
        }
    }

    /// Gradient and hessian of one patient's loss at score `f`.
    pub fn gradient(self, f: f64, y: f64) -> (f64, f64) {
        match self {
            Loss::Logistic => {
                let p = sigmoid(f);
                (p - y, p * (1.0 - p))
            }
            Loss::Squared => (f - y, 1.0),
        }
    }

    /// One patient's loss at score `f`: log loss, or the squared error.
    pub fn loss(self, f: f64, y: f64) -> f64 {
        match self {
            // log(1 + e^f) - y f, without overflow.
            Loss::Logistic => f.max(0.0) + (-f.abs()).exp().ln_1p() - y * f,
            Loss::Squared => (f - y) * (f - y),
        }
    }

    /// The prediction on the outcome's scale from a score.
    pub fn response(self, f: f64) -> f64 {
        match self {
            Loss::Logistic => sigmoid(f),
            Loss::Squared => f,
        }
    }
}

fn sigmoid(f: f64) -> f64 {
    1.0 / (1.0 + (-f).exp())
}

/// The settings of one training run, with the defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GbdtOptions {
    pub loss: Loss,
    pub trees: u32,
    pub depth: u32,
    pub learning_rate: f64,
    /// L2 penalty on leaf values (XGBoost's `lambda`).
    pub lambda: f64,
    /// Least pooled hessian on each side of a split (XGBoost's
    /// `min_child_weight`); the minimum cell size holds at every site
    /// besides.
    pub min_child_weight: f64,
    /// Share of each site's patients held out to measure the loss on (0:
    /// none).
    pub validation: f64,
    /// Stop when the held-out loss has not improved for this many trees,
    /// keeping the trees up to its best.
    pub early_stopping: Option<u32>,
}

impl Default for GbdtOptions {
    fn default() -> Self {
        GbdtOptions {
            loss: Loss::Logistic,
            trees: DEFAULT_TREES,
            depth: DEFAULT_DEPTH,
            learning_rate: DEFAULT_LEARNING_RATE,
            lambda: DEFAULT_LAMBDA,
            min_child_weight: DEFAULT_MIN_CHILD_WEIGHT,
            validation: 0.0,
            early_stopping: None,
        }
    }
}

/// The share of each site's patients a model with `validation` holds out.
/// One share for every query: shares a query could choose would hold out
/// nested sets whose differences could be small.
pub const VALIDATION_SHARE: f64 = 0.2;

/// Whether patient `row` of a node is held out for validation: a hash of
/// the row and `salt` below `share`. The node's salt is its own secret,
/// fixed per study, so nobody else knows or can redraw who is held out;
/// the same in every round, so the held-out patients never train.
pub fn held_out(salt: u64, row: usize, share: f64) -> bool {
    if share <= 0.0 {
        return false;
    }
    // splitmix64
    let mut z = salt ^ (row as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ((z >> 11) as f64 / (1u64 << 53) as f64) < share
}

/// The features of `covariates`: numeric variables cut at `edges` when
/// the query gives them, else into `bins` even bins between the
/// dictionary's bounds (one bin per value for an integer with fewer
/// values); booleans as one indicator; categorical variables as one
/// indicator per level.
pub fn features(
    dict: &Dictionary,
    covariates: &[String],
    bins: u32,
    edges: &BTreeMap<String, Vec<f64>>,
) -> Result<Vec<Feature>> {
    if !(2..=MAX_FEATURE_BINS as u32).contains(&bins) {
        return Err(Error::invalid(format!(
            "gbdt \"bins\" must be between 2 and {MAX_FEATURE_BINS}, not {bins}"
        )));
    }
    for name in edges.keys() {
        if !covariates.contains(name) {
            return Err(Error::invalid(format!(
                "gbdt \"edges\" names \"{name}\", which is not one of the covariates"
            )));
        }
    }
    let mut out = Vec::new();
    for name in covariates {
        let v = dict.get(name)?;
        match v.kind {
            VarType::Integer | VarType::Float => {
                let thresholds = match edges.get(name) {
                    Some(e) => check_edges(name, e)?,
                    None => even_thresholds(name, v, bins)?,
                };
                out.push(Feature {
                    name: name.clone(),
                    variable: name.clone(),
                    level: None,
                    thresholds,
                });
            }
            VarType::Boolean | VarType::Categorical => {
                if edges.contains_key(name) {
                    return Err(Error::invalid(format!(
                        "gbdt \"edges\" gives edges for \"{name}\", which has levels; edges are for numeric covariates"
                    )));
                }
                let levels = v.levels();
                let first = usize::from(v.kind == VarType::Boolean);
                for (i, level) in levels.iter().enumerate().skip(first) {
                    out.push(Feature {
                        name: format!("{name}={level}"),
                        variable: name.clone(),
                        level: Some(i as u32),
                        thresholds: vec![0.5],
                    });
                }
            }
            VarType::Date => {
                return Err(Error::invalid(format!(
                    "\"{name}\" is a date and cannot be a covariate; use a numeric variable derived from it"
                )))
            }
        }
    }
    let total: usize = out.iter().map(Feature::bins).sum();
    if total > MAX_TOTAL_BINS {
        return Err(Error::invalid(format!(
            "the model's features have {total} bins in all, more than {MAX_TOTAL_BINS}; use fewer covariates or fewer bins"
        )));
    }
    Ok(out)
}

fn check_edges(name: &str, edges: &[f64]) -> Result<Vec<f64>> {
    if edges.is_empty() || edges.len() >= MAX_FEATURE_BINS {
        return Err(Error::invalid(format!(
            "gbdt \"edges\" of \"{name}\" must hold 1 to {} cut points",
            MAX_FEATURE_BINS - 1
        )));
    }
    if !edges.iter().all(|e| e.is_finite()) || edges.windows(2).any(|w| w[0] >= w[1]) {
        return Err(Error::invalid(format!(
            "gbdt \"edges\" of \"{name}\" must be finite and strictly increasing"
        )));
    }
    Ok(edges.to_vec())
}

fn even_thresholds(name: &str, v: &crate::dictionary::Variable, bins: u32) -> Result<Vec<f64>> {
    let (lo, hi) = v.numeric_bounds().ok_or_else(|| {
        Error::invalid(format!(
            "\"{name}\" has no public bounds in the dictionary to cut its bins from; give its cut points in the gbdt's \"edges\""
        ))
    })?;
    if v.kind == VarType::Integer && hi - lo < f64::from(bins) {
        // One bin per integer value.
        let (lo, hi) = (lo.ceil(), hi.floor());
        let n = (hi - lo) as usize;
        return Ok((0..n).map(|i| lo + i as f64 + 0.5).collect());
    }
    let width = (hi - lo) / f64::from(bins);
    Ok((1..bins).map(|i| lo + width * f64::from(i)).collect())
}

/// A trained ensemble: what Plexus exports as JSON and scores with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GbdtModel {
    pub loss: Loss,
    /// The score every patient starts from: the pooled outcome's log-odds
    /// (logistic) or mean (squared).
    pub base_score: f64,
    pub learning_rate: f64,
    pub features: Vec<Feature>,
    pub trees: Vec<Tree>,
}

impl GbdtModel {
    /// The score of one patient from the values of the model's features.
    pub fn score(&self, values: &[f64]) -> f64 {
        let bins: Vec<u16> = self
            .features
            .iter()
            .zip(values)
            .map(|(f, v)| f.bin(*v))
            .collect();
        self.base_score
            + self
                .trees
                .iter()
                .map(|t| match t.slots[t.route(|f| bins[f])] {
                    Slot::Leaf { value } => value,
                    _ => 0.0,
                })
                .sum::<f64>()
    }

    /// The prediction on the outcome's scale: a probability (logistic) or
    /// the outcome's value (squared).
    pub fn predict(&self, values: &[f64]) -> f64 {
        self.loss.response(self.score(values))
    }

    /// The feature values of every row of `columns` that has all the
    /// model's variables (a complete case), in the rows' order.
    pub fn feature_rows(&self, columns: &crate::models::design::Columns) -> Result<Vec<Vec<f64>>> {
        let mut cols = Vec::with_capacity(self.features.len());
        for f in &self.features {
            cols.push(columns.get(&f.variable).ok_or_else(|| {
                Error::invalid(format!(
                    "no column \"{}\" to score the model on",
                    f.variable
                ))
            })?);
        }
        let n = cols.first().map_or(0, |c| c.len());
        Ok((0..n)
            .filter(|&r| cols.iter().all(|c| !c.is_missing(r)))
            .map(|r| {
                self.features
                    .iter()
                    .zip(&cols)
                    .map(|(f, c)| f.value(c.number(r)))
                    .collect()
            })
            .collect())
    }
}

/// Sums of one segment of adjacent bins: patients, gradients, hessians.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Sums {
    pub n: u64,
    pub g: f64,
    pub h: f64,
}

impl Sums {
    pub fn add(&mut self, other: &Sums) {
        self.n += other.n;
        self.g += other.g;
        self.h += other.h;
    }

    fn finite(&self) -> bool {
        self.g.is_finite() && self.h.is_finite() && self.h >= 0.0
    }
}

/// One feature's histogram in one open node: segments of adjacent bins,
/// each ending at the bin in `ends` (the last ends at the last bin).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Segments {
    pub ends: Vec<u32>,
    pub sums: Vec<Sums>,
}

impl Segments {
    /// The segments of two sites pooled: the ends both have, each holding
    /// the sums of both sites' segments up to it.
    pub fn pooled(&self, other: &Segments) -> Segments {
        let mut out = Segments::default();
        let (mut i, mut j) = (0, 0);
        let (mut a, mut b) = (Sums::default(), Sums::default());
        while i < self.ends.len() && j < other.ends.len() {
            let (ea, eb) = (self.ends[i], other.ends[j]);
            if ea <= eb {
                a.add(&self.sums[i]);
                i += 1;
            }
            if eb <= ea {
                b.add(&other.sums[j]);
                j += 1;
            }
            if ea == eb {
                let mut s = a;
                s.add(&b);
                out.ends.push(ea);
                out.sums.push(s);
                (a, b) = (Sums::default(), Sums::default());
            }
        }
        out
    }
}

/// One open node's sums at one node: its totals and each feature's
/// segments.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SlotStats {
    pub slot: u32,
    pub total: Sums,
    pub features: Vec<Segments>,
}

/// What a node returns for one round of a GBDT.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct GbdtStats {
    /// Patients the model is trained on at the node.
    pub n: u64,
    /// Their outcomes' sum.
    pub sum_y: f64,
    /// Their loss at the round's scores (0 in the first round).
    pub loss: f64,
    /// Patients held out for validation at the node, and their loss at
    /// the round's scores.
    #[serde(default)]
    pub validation_n: u64,
    #[serde(default)]
    pub validation_loss: f64,
    /// The open nodes' histograms (none in the first round).
    pub slots: Vec<SlotStats>,
}

impl GbdtStats {
    /// Checks an answer received from a node against the round it answers
    /// and the features: one entry per open node, one segment list per
    /// feature ending at the last bin, strictly increasing ends, finite
    /// sums and non-negative hessians, and no segment, node or total under
    /// `k` patients. Says what is wrong.
    pub fn check(&self, features: &[Feature], open: &[u32], k: u64) -> Result<()> {
        let shape = |what: String| Err(Error::invalid(format!("node answered with {what}")));
        if !(self.sum_y.is_finite()
            && self.loss.is_finite()
            && self.loss >= 0.0
            && self.validation_loss.is_finite()
            && self.validation_loss >= 0.0)
        {
            return shape("outcome or loss sums that are not finite".into());
        }
        if self.validation_n > 0 && self.validation_n < k {
            return Err(Error::disclosure(
                "node released a validation loss over fewer patients than the minimum cell size",
            ));
        }
        if self.n < k {
            return Err(Error::disclosure(
                "node released a model resting on fewer patients than the minimum cell size",
            ));
        }
        let ids: Vec<u32> = self.slots.iter().map(|s| s.slot).collect();
        if ids != open {
            return shape(format!(
                "histograms for tree nodes {ids:?} where {open:?} were open"
            ));
        }
        for s in &self.slots {
            if s.features.len() != features.len() {
                return shape(format!(
                    "{} histograms for {} features",
                    s.features.len(),
                    features.len()
                ));
            }
            if !s.total.finite() || s.total.n < k {
                return Err(Error::disclosure(
                    "node released a tree node's sums over fewer patients than the minimum cell size",
                ));
            }
            for (f, seg) in features.iter().zip(&s.features) {
                let last = f.thresholds.len() as u32;
                if seg.ends.len() != seg.sums.len()
                    || seg.ends.last() != Some(&last)
                    || seg.ends.windows(2).any(|w| w[0] >= w[1])
                {
                    return shape(format!("a malformed histogram of \"{}\"", f.name));
                }
                if seg.sums.iter().any(|x| !x.finite()) {
                    return shape(format!("sums of \"{}\" that are not finite", f.name));
                }
                if seg.sums.iter().any(|x| x.n < k) {
                    return Err(Error::disclosure(
                        "node released a histogram segment over fewer patients than the minimum cell size",
                    ));
                }
                if seg.sums.iter().map(|x| x.n).sum::<u64>() != s.total.n {
                    return shape(format!(
                        "a histogram of \"{}\" that does not add up to its node",
                        f.name
                    ));
                }
            }
        }
        Ok(())
    }
}

impl crate::models::fit::RoundStats for GbdtStats {
    fn zero(_p: usize) -> Self {
        GbdtStats::default()
    }

    /// Sums the totals and pools the histograms; the first merge into
    /// [`zero`](Self::zero) takes the other's histograms as they are.
    fn merge(&mut self, other: &Self) {
        let first = self.n == 0 && self.slots.is_empty();
        self.n += other.n;
        self.sum_y += other.sum_y;
        self.loss += other.loss;
        self.validation_n += other.validation_n;
        self.validation_loss += other.validation_loss;
        if first {
            self.slots = other.slots.clone();
            return;
        }
        for (mine, theirs) in self.slots.iter_mut().zip(&other.slots) {
            mine.total.add(&theirs.total);
            for (a, b) in mine.features.iter_mut().zip(&theirs.features) {
                *a = a.pooled(b);
            }
        }
    }
}
