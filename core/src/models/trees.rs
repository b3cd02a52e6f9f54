//! The trees of a gradient-boosted ensemble and what each round of its
//! training sends: shared by the iterative-fit machinery ([`super::fit`],
//! whose rounds carry them) and the GBDT itself ([`super::gbdt`], which
//! re-exports them).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A column the trees split on: a numeric covariate, or the indicator of
/// one level of a boolean or categorical covariate (1 for the level, 0
/// otherwise). A patient goes left at a split when the feature's value is
/// below the split's threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feature {
    /// `age`, or `smoking=current` for a level's indicator.
    pub name: String,
    pub variable: String,
    /// The level this feature indicates (its index in the dictionary's
    /// levels; false, true for booleans).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<u32>,
    /// The public cut points, strictly increasing: bin `b` holds values in
    /// `[thresholds[b-1], thresholds[b])`.
    pub thresholds: Vec<f64>,
}

impl Feature {
    pub fn bins(&self) -> usize {
        self.thresholds.len() + 1
    }

    /// The bin of a value: the number of thresholds at or below it, so a
    /// value goes left of threshold `t` exactly when its bin is `<= t`.
    pub fn bin(&self, value: f64) -> u16 {
        self.thresholds.partition_point(|t| *t <= value) as u16
    }

    /// The feature's value for a variable's value (a number, or a level
    /// index).
    pub fn value(&self, raw: f64) -> f64 {
        match self.level {
            Some(l) => f64::from(u8::from(raw == f64::from(l))),
            None => raw,
        }
    }
}

/// One slot of a tree in heap order: the root is slot 0, the children of
/// slot `s` are `2s + 1` (left) and `2s + 2` (right).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Slot {
    /// Below a leaf: no node.
    Empty,
    /// A node of the level being grown, waiting for its histograms.
    Open,
    /// Patients whose feature value is below `thresholds[threshold]` go
    /// left.
    Split { feature: u32, threshold: u32 },
    /// Adds `value` to the score (the learning rate is applied).
    Leaf { value: f64 },
}

/// A tree of at most `depth` levels of splits, as `2^(depth+1) - 1` slots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tree {
    pub slots: Vec<Slot>,
}

impl Tree {
    /// A tree with only its root, open.
    pub fn open_root(depth: u32) -> Self {
        let mut slots = vec![Slot::Empty; (1usize << (depth + 1)) - 1];
        slots[0] = Slot::Open;
        Tree { slots }
    }

    /// Levels of splits the tree has room for.
    pub fn depth(&self) -> u32 {
        (self.slots.len() + 1).trailing_zeros().saturating_sub(1)
    }

    /// The level of slot `s` (the root's is 0).
    pub fn level_of(s: usize) -> u32 {
        (s + 1).ilog2()
    }

    /// The slot a patient ends in, given the bin of each feature: a leaf,
    /// or an open node.
    pub fn route(&self, bin: impl Fn(usize) -> u16) -> usize {
        let mut s = 0;
        while let Slot::Split { feature, threshold } = self.slots[s] {
            s = if u32::from(bin(feature as usize)) <= threshold {
                2 * s + 1
            } else {
                2 * s + 2
            };
        }
        s
    }

    /// The open slots, in order.
    pub fn open(&self) -> Vec<u32> {
        (0..self.slots.len() as u32)
            .filter(|&s| self.slots[s as usize] == Slot::Open)
            .collect()
    }

    /// Checks the shape of a tree received from elsewhere: `depth` levels,
    /// every split on a known feature and threshold with both children,
    /// nothing under a leaf, finite leaf values; no open node in a
    /// `complete` tree, and in a growing one open nodes on one level only,
    /// the deepest. Says what is wrong.
    pub fn check(&self, features: &[Feature], depth: u32, complete: bool) -> Result<()> {
        let bad = |why: String| Err(Error::invalid(format!("tree: {why}")));
        if self.slots.len() != (1usize << (depth + 1)) - 1 {
            return bad(format!(
                "{} slots where a tree of depth {depth} has {}",
                self.slots.len(),
                (1usize << (depth + 1)) - 1
            ));
        }
        let mut open_level = None;
        for (s, slot) in self.slots.iter().enumerate() {
            let children = 2 * s + 2 < self.slots.len();
            let parent_splits = s == 0 || matches!(self.slots[(s - 1) / 2], Slot::Split { .. });
            match slot {
                Slot::Empty => {
                    if parent_splits {
                        return bad(format!("slot {s} is empty under a split"));
                    }
                    continue;
                }
                _ if !parent_splits => {
                    return bad(format!("slot {s} holds a node under no split"));
                }
                Slot::Split { feature, threshold } => {
                    let Some(f) = features.get(*feature as usize) else {
                        return bad(format!("slot {s} splits on unknown feature {feature}"));
                    };
                    if *threshold as usize >= f.thresholds.len() {
                        return bad(format!(
                            "slot {s} splits \"{}\" at threshold {threshold} of {}",
                            f.name,
                            f.thresholds.len()
                        ));
                    }
                    if !children {
                        return bad(format!("slot {s} splits below the tree's depth"));
                    }
                }
                Slot::Leaf { value } => {
                    if !value.is_finite() {
                        return bad(format!("leaf {s} has a value that is not finite"));
                    }
                }
                Slot::Open => {
                    if complete {
                        return bad(format!("slot {s} is open in a finished tree"));
                    }
                    // Both children of a split are grown together: a node's
                    // histograms are cut with its sibling's.
                    let sibling = if s % 2 == 1 {
                        s + 1
                    } else {
                        s.saturating_sub(1)
                    };
                    if s > 0 && self.slots[sibling] != Slot::Open {
                        return bad(format!("slot {s} is open and its sibling is not"));
                    }
                    let level = Self::level_of(s);
                    if open_level.is_some_and(|l| l != level) {
                        return bad("open nodes on more than one level".into());
                    }
                    open_level = Some(level);
                }
            }
        }
        if !complete {
            let Some(level) = open_level else {
                return bad("the tree being grown has no open node".into());
            };
            let deeper = self
                .slots
                .iter()
                .enumerate()
                .any(|(s, slot)| Self::level_of(s) > level && !matches!(slot, Slot::Empty));
            if deeper {
                return bad("a node below the level being grown".into());
            }
        }
        Ok(())
    }
}

/// What the coordinator sends with each round of a GBDT: nothing yet in
/// the first round (the nodes return the outcome's sums for the base
/// score), then the base score, the finished trees and the tree being
/// grown.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct GbdtRound {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_score: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trees: Vec<Tree>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub growing: Option<Tree>,
}
