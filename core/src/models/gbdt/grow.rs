//! The coordinator's side of a GBDT: pooled histograms in, splits and
//! leaves out, one level per round.

use serde::{Deserialize, Serialize};

use super::{
    Feature, GbdtModel, GbdtOptions, GbdtRound, GbdtStats, Loss, Slot, SlotStats, Sums, Tree,
};
use crate::error::{Error, Result};
use crate::models::fit::{Iteration, IterativeFit, Step};

/// Gains within this share of the best count as ties, broken by the
/// lowest feature and then the lowest threshold: sums pooled in another
/// order than a centralised fit's differ in the last bits, and this keeps
/// both on the same split.
const TIE: f64 = 1e-9;

/// A split worth making: the feature, the threshold index and the gain,
/// with each side's sums.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SplitChoice {
    pub feature: u32,
    pub threshold: u32,
    pub gain: f64,
    pub left: Sums,
    pub right: Sums,
}

/// The best split of one tree node from its pooled histograms: the
/// largest second-order gain `GL²/(HL+λ) + GR²/(HR+λ) − G²/(H+λ)` among the
/// segment ends, with at least one patient and `min_child_weight` of
/// hessian on each side; `None` when no split gains.
pub fn best_split(stats: &SlotStats, options: &GbdtOptions) -> Option<SplitChoice> {
    let lambda = options.lambda;
    let score = |s: &Sums| s.g * s.g / (s.h + lambda);
    let parent = score(&stats.total);
    let mut candidates: Vec<SplitChoice> = Vec::new();
    for (f, seg) in stats.features.iter().enumerate() {
        let mut left = Sums::default();
        // The last end closes the histogram: no split there.
        for (end, sums) in seg
            .ends
            .iter()
            .zip(&seg.sums)
            .take(seg.ends.len().saturating_sub(1))
        {
            left.add(sums);
            let right = Sums {
                n: stats.total.n - left.n,
                g: stats.total.g - left.g,
                h: stats.total.h - left.h,
            };
            if left.n == 0
                || right.n == 0
                || left.h < options.min_child_weight
                || right.h < options.min_child_weight
            {
                continue;
            }
            let gain = score(&left) + score(&right) - parent;
            // A side with no hessian and no penalty has no Newton step.
            if !gain.is_finite() {
                continue;
            }
            candidates.push(SplitChoice {
                feature: f as u32,
                threshold: *end,
                gain,
                left,
                right,
            });
        }
    }
    let best = candidates
        .iter()
        .map(|c| c.gain)
        .fold(f64::NEG_INFINITY, f64::max);
    // Gains at the level of rounding are none.
    if best <= TIE * (parent.abs() + stats.total.h.max(1.0)) {
        return None;
    }
    let margin = TIE * best.abs();
    candidates.into_iter().find(|c| c.gain >= best - margin)
}

/// A leaf's value: the Newton step `−G/(H+λ)`, shrunk by the learning rate
/// (0 where `H+λ` is 0).
pub fn leaf_value(sums: &Sums, options: &GbdtOptions) -> f64 {
    let h = sums.h + options.lambda;
    // No curvature and no penalty: no step (only with lambda = 0).
    if h > 0.0 {
        -options.learning_rate * sums.g / h
    } else {
        0.0
    }
}

/// How much one feature's splits gained over the ensemble.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Importance {
    pub feature: String,
    pub splits: u32,
    pub gain: f64,
}

/// A trained ensemble and how the training went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GbdtResult {
    pub model: GbdtModel,
    /// Patients the model was trained on.
    pub n: u64,
    /// Rounds of jobs the training took.
    pub rounds: u32,
    /// Mean training loss (log loss, or squared error) before each tree.
    pub training_loss: Vec<f64>,
    /// Patients held out for validation, and their mean loss before each
    /// tree (with `validation`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub validation_n: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub validation_loss: Vec<f64>,
    /// Features by total gain, largest first.
    pub importance: Vec<Importance>,
    /// Why training stopped before the trees asked for, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The coordinator's half of a GBDT.
pub struct GbdtTrainer {
    options: GbdtOptions,
    features: Vec<Feature>,
    base: Option<f64>,
    trees: Vec<Tree>,
    growing: Tree,
    n: u64,
    round: u32,
    training_loss: Vec<f64>,
    validation_n: u64,
    validation_loss: Vec<f64>,
    /// The lowest held-out loss so far and the trees it was measured
    /// after.
    best: Option<(f64, usize)>,
    /// Each tree's splits (feature, gain), the one being grown last.
    gains: Vec<Vec<(u32, f64)>>,
}

impl GbdtTrainer {
    pub fn new(options: GbdtOptions, features: Vec<Feature>) -> Self {
        GbdtTrainer {
            growing: Tree::open_root(options.depth),
            options,
            features,
            base: None,
            trees: Vec::new(),
            n: 0,
            round: 0,
            training_loss: Vec::new(),
            validation_n: 0,
            validation_loss: Vec::new(),
            best: None,
            gains: vec![Vec::new()],
        }
    }

    pub fn features(&self) -> &[Feature] {
        &self.features
    }

    /// The open nodes the current round's answers must cover (none in the
    /// first round).
    pub fn open(&self) -> Vec<u32> {
        if self.base.is_none() {
            Vec::new()
        } else {
            self.growing.open()
        }
    }

    fn iteration(&mut self) -> Iteration {
        self.round += 1;
        Iteration {
            round: self.round,
            gbdt: Some(GbdtRound {
                base_score: self.base,
                trees: if self.base.is_some() {
                    self.trees.clone()
                } else {
                    Vec::new()
                },
                growing: self.base.map(|_| self.growing.clone()),
            }),
            ..Iteration::default()
        }
    }

    fn done(&mut self, stopped: Option<String>) -> GbdtResult {
        // The kept trees' splits only (early stopping drops the last ones).
        let mut per_feature = vec![(0u32, 0.0f64); self.features.len()];
        for (f, gain) in self.gains.iter().take(self.trees.len()).flatten() {
            per_feature[*f as usize].0 += 1;
            per_feature[*f as usize].1 += gain;
        }
        let mut importance: Vec<Importance> = self
            .features
            .iter()
            .zip(&per_feature)
            .filter(|(_, (splits, _))| *splits > 0)
            .map(|(f, (splits, gain))| Importance {
                feature: f.name.clone(),
                splits: *splits,
                gain: *gain,
            })
            .collect();
        importance.sort_by(|a, b| b.gain.total_cmp(&a.gain));
        GbdtResult {
            model: GbdtModel {
                loss: self.options.loss,
                base_score: self.base.unwrap_or(0.0),
                learning_rate: self.options.learning_rate,
                features: self.features.clone(),
                trees: std::mem::take(&mut self.trees),
            },
            n: self.n,
            rounds: self.round,
            training_loss: std::mem::take(&mut self.training_loss),
            validation_n: self.validation_n,
            validation_loss: std::mem::take(&mut self.validation_loss),
            importance,
            stopped,
        }
    }

    /// The base score from the pooled outcome.
    fn start_from(&mut self, pooled: &GbdtStats) -> Result<()> {
        if pooled.n == 0 {
            return Err(Error::invalid("no patient to train on"));
        }
        self.n = pooled.n;
        let mean = pooled.sum_y / pooled.n as f64;
        self.base = Some(match self.options.loss {
            Loss::Squared => mean,
            Loss::Logistic => {
                if !(mean > 0.0 && mean < 1.0) {
                    return Err(Error::invalid(
                        "the outcome takes one value only in the pooled cohort, so there is nothing to learn; widen the cohort",
                    ));
                }
                (mean / (1.0 - mean)).ln()
            }
        });
        Ok(())
    }
}

impl IterativeFit for GbdtTrainer {
    type Stats = GbdtStats;
    type Output = GbdtResult;

    fn parameters(&self) -> usize {
        0
    }

    fn start(&mut self) -> Iteration {
        self.iteration()
    }

    fn step(&mut self, pooled: &GbdtStats) -> Result<Step<GbdtResult>> {
        if self.base.is_none() {
            self.start_from(pooled)?;
            return Ok(Step::Next(self.iteration()));
        }
        let open = self.growing.open();
        let ids: Vec<u32> = pooled.slots.iter().map(|s| s.slot).collect();
        if ids != open {
            return Err(Error::internal(
                "pooled histograms do not match the open tree nodes",
            ));
        }
        if open == [0] {
            self.training_loss
                .push(pooled.loss / pooled.n.max(1) as f64);
            if pooled.validation_n > 0 {
                self.validation_n = pooled.validation_n;
                let loss = pooled.validation_loss / pooled.validation_n as f64;
                self.validation_loss.push(loss);
                let trees = self.trees.len();
                if self.best.is_none_or(|(b, _)| loss < b) {
                    self.best = Some((loss, trees));
                }
                if let (Some(patience), Some((_, at))) = (self.options.early_stopping, self.best) {
                    if trees - at >= patience as usize {
                        self.trees.truncate(at);
                        let why = format!(
                            "stopped early: the held-out loss did not improve in the {} trees after tree {at}; the model keeps the first {at}",
                            trees - at
                        );
                        return Ok(Step::Done(self.done(Some(why))));
                    }
                }
            }
        }
        let depth = self.options.depth;
        for stats in &pooled.slots {
            let s = stats.slot as usize;
            let level = Tree::level_of(s);
            match best_split(stats, &self.options) {
                Some(c) => {
                    self.growing.slots[s] = Slot::Split {
                        feature: c.feature,
                        threshold: c.threshold,
                    };
                    if let Some(tree) = self.gains.last_mut() {
                        tree.push((c.feature, c.gain));
                    }
                    if level + 1 == depth {
                        self.growing.slots[2 * s + 1] = Slot::Leaf {
                            value: leaf_value(&c.left, &self.options),
                        };
                        self.growing.slots[2 * s + 2] = Slot::Leaf {
                            value: leaf_value(&c.right, &self.options),
                        };
                    } else {
                        self.growing.slots[2 * s + 1] = Slot::Open;
                        self.growing.slots[2 * s + 2] = Slot::Open;
                    }
                }
                None => {
                    self.growing.slots[s] = Slot::Leaf {
                        value: leaf_value(&stats.total, &self.options),
                    };
                }
            }
        }
        if self.growing.slots.contains(&Slot::Open) {
            return Ok(Step::Next(self.iteration()));
        }
        let tree = std::mem::replace(&mut self.growing, Tree::open_root(depth));
        self.gains.push(Vec::new());
        let stump = matches!(tree.slots[0], Slot::Leaf { .. });
        self.trees.push(tree);
        if stump {
            let why = format!(
                "stopped after {} trees: no split of tree {} gained",
                self.trees.len(),
                self.trees.len()
            );
            return Ok(Step::Done(self.done(Some(why))));
        }
        if self.trees.len() as u32 >= self.options.trees {
            return Ok(Step::Done(self.done(None)));
        }
        Ok(Step::Next(self.iteration()))
    }
}
