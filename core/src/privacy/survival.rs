//! The tree mechanism: how a node releases Kaplan-Meier counts under
//! differential privacy.
//!
//! A number at risk is a sum over every later interval. Noising each
//! interval's events and censorings on its own and summing them makes the
//! noise of a number at risk grow like the square root of the number of
//! intervals m, and setting each negative noisy count to 0 adds about 0.4σ
//! per interval: on a daily five-year grid a cohort of three patients came
//! out with tens of thousands at risk. A tree of range counts (Hay,
//! Rastogi, Miklau and Suciu 2010; for counts over time, Dwork, Naor,
//! Pitassi and Rothblum 2010 and Chan, Shi and Song 2011) keeps the error of
//! every range, and so of every number at risk and every cumulative count,
//! down to a power of log m, and nothing is clamped interval by interval.
//!
//! For each group:
//! 1. The events per interval and the censorings per interval are the
//!    leaves of two binary trees over the grid's m intervals; every node
//!    holds the count of its range of intervals. Each tree has at most
//!    L = ⌈log₂ m⌉ + 1 nodes on a leaf-to-root path.
//! 2. Every node of every tree is noised with the exact discrete Gaussian
//!    at σ = √L / √(2ρ). Sensitivity: a patient is one event or one
//!    censoring in one interval of one group, so adding or removing them
//!    changes by 1 the (at most) L nodes on one leaf-to-root path of one
//!    tree and nothing else; everything released has L2 sensitivity √L,
//!    and σ = √L/√(2ρ) costs ρ = L/(2σ²) (see [`crate::dp::accountant`]).
//! 3. Consistency: the least-squares node counts under "a parent is the sum
//!    of its children", in two passes (weighted averaging bottom-up, mean
//!    consistency top-down). With inverse-variance weights the passes are
//!    exact on the uneven trees of grids whose size is not a power of two;
//!    on a complete tree they are Hay et al.'s weights.
//! 4. Counts a survival curve can use: the cumulative counts of the
//!    consistent leaves are made non-decreasing (isotonic regression by
//!    pooling adjacent violators) and at least 0, then rounded; the counts
//!    per interval are their differences, so they are non-negative integers,
//!    and the numbers at risk (total minus cumulative events and censorings)
//!    never increase. Neither step can make the largest error of a
//!    cumulative count larger.
//!
//! Steps 3 and 4, like the at-risk rule that then runs on what they
//! produce, use only noised values: they are post-processing and cost
//! nothing more.

use super::scale::NoiseScale;
use crate::dp::accountant::sigma_for_rho;
use crate::dp::noise::discrete_gaussian;
use crate::error::{Error, Result};
use crate::models::survival::{self, GroupStats, Tally};

/// How many noise standard deviations a released number at risk must reach
/// to show patients at risk. Under it the node merges the rest of the grid
/// into one interval, as it does under the minimum cell size: a smaller
/// number could be noise over nobody (a one-sided 2σ is exceeded by pure
/// noise about 2% of the time).
pub const AT_RISK_NOISE_MULTIPLE: f64 = 2.0;

#[derive(Debug, Clone, Copy)]
struct Node {
    /// The node counts intervals `lo..hi`.
    lo: usize,
    hi: usize,
    children: Option<(usize, usize)>,
}

/// A binary tree of ranges over a grid's intervals, each split in the
/// middle (the left half takes the odd one). Nodes are stored parent before
/// children, so a reverse walk goes bottom-up.
#[derive(Debug, Clone)]
pub struct Tree {
    nodes: Vec<Node>,
    /// The leaf of each interval.
    leaf: Vec<usize>,
    /// Variance of each node's estimate from the measurements of its own
    /// subtree, in units of σ²: the weights of both passes.
    own_var: Vec<f64>,
    levels: usize,
}

impl Tree {
    /// The tree over `intervals` intervals (at least 1).
    pub fn new(intervals: usize) -> Tree {
        let intervals = intervals.max(1);
        let mut tree = Tree {
            nodes: Vec::with_capacity(2 * intervals - 1),
            leaf: vec![0; intervals],
            own_var: Vec::new(),
            levels: 0,
        };
        tree.build(0, intervals, 1);
        let mut var = vec![1.0; tree.nodes.len()];
        for i in (0..tree.nodes.len()).rev() {
            if let Some((a, b)) = tree.nodes[i].children {
                // One measurement of variance 1 and the children's sum.
                let s = var[a] + var[b];
                var[i] = s / (1.0 + s);
            }
        }
        tree.own_var = var;
        tree
    }

    fn build(&mut self, lo: usize, hi: usize, depth: usize) -> usize {
        let id = self.nodes.len();
        self.nodes.push(Node {
            lo,
            hi,
            children: None,
        });
        self.levels = self.levels.max(depth);
        if hi - lo == 1 {
            self.leaf[lo] = id;
        } else {
            let mid = lo + (hi - lo).div_ceil(2);
            let a = self.build(lo, mid, depth + 1);
            let b = self.build(mid, hi, depth + 1);
            self.nodes[id].children = Some((a, b));
        }
        id
    }

    /// Nodes in the tree.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Intervals (leaves).
    pub fn intervals(&self) -> usize {
        self.leaf.len()
    }

    /// Nodes on the longest leaf-to-root path: what one patient can change.
    pub fn levels(&self) -> usize {
        self.levels
    }

    /// The L2 sensitivity of the tree's node counts: one patient changes
    /// at most [`Tree::levels`] of them, each by 1.
    pub fn sensitivity(&self) -> f64 {
        (self.levels as f64).sqrt()
    }

    /// The count of every node, from one count per interval.
    pub fn sums(&self, counts: &[u64]) -> Vec<u64> {
        let mut out = vec![0u64; self.nodes.len()];
        for i in (0..self.nodes.len()).rev() {
            out[i] = match self.nodes[i].children {
                None => counts.get(self.nodes[i].lo).copied().unwrap_or(0),
                Some((a, b)) => out[a].saturating_add(out[b]),
            };
        }
        out
    }

    /// The least-squares node counts from one noisy measurement `y` of every
    /// node (equal variances), under "a parent is the sum of its children".
    /// Bottom-up, each node's estimate from its own subtree weighs its own
    /// measurement against its children's sum by their inverse variances;
    /// top-down, what a parent's final estimate differs from its children's
    /// sum is shared among them in proportion to their variances.
    pub fn consistent(&self, y: &[f64]) -> Vec<f64> {
        let n = self.nodes.len();
        let var = &self.own_var;
        let mut z = vec![0.0; n];
        for i in (0..n).rev() {
            z[i] = match self.nodes[i].children {
                None => y[i],
                Some((a, b)) => var[i] * y[i] + (1.0 - var[i]) * (z[a] + z[b]),
            };
        }
        let mut x = z.clone();
        for i in 0..n {
            if let Some((a, b)) = self.nodes[i].children {
                let gap = x[i] - z[a] - z[b];
                let s = var[a] + var[b];
                x[a] = z[a] + var[a] / s * gap;
                x[b] = z[b] + var[b] / s * gap;
            }
        }
        x
    }

    /// The leaves of node values `x`, in the order of the intervals.
    pub fn leaves(&self, x: &[f64]) -> Vec<f64> {
        self.leaf.iter().map(|&i| x[i]).collect()
    }

    /// The variance, in units of σ², of the consistent estimate of the
    /// count of intervals `lo..hi`.
    ///
    /// The estimate is x̂ = G·Mᵀy with M the nodes' incidence of the
    /// leaves and G = (MᵀM)⁻¹, so a sum cᵀx̂ has variance cᵀGc. The nodes
    /// that tile `lo..hi` (at most 2L) have an indicator u with Mᵀu = c,
    /// so running the estimator on u gives Gc, and cᵀGc is the sum of its
    /// values over those nodes; only they and their ancestors are nonzero.
    pub fn range_variance(&self, lo: usize, hi: usize) -> f64 {
        let (lo, hi) = (lo.min(self.intervals()), hi.min(self.intervals()));
        if lo >= hi {
            return 0.0;
        }
        // Nodes visited parent first: (node, in the tiling, z); then x.
        let mut visited: Vec<(usize, bool, f64)> = Vec::new();
        self.tile(0, lo, hi, &mut visited);
        let z_of = |node: usize, visited: &[(usize, bool, f64)]| {
            visited.iter().find(|v| v.0 == node).map_or(0.0, |v| v.2)
        };
        let mut x: Vec<f64> = vec![0.0; visited.len()];
        x[0] = visited[0].2;
        let mut total = 0.0;
        for (idx, &(node, tiled, _)) in visited.iter().enumerate() {
            if tiled {
                total += x[idx];
                continue;
            }
            let Some((a, b)) = self.nodes[node].children else {
                continue;
            };
            let (za, zb) = (z_of(a, &visited), z_of(b, &visited));
            let gap = x[idx] - za - zb;
            let s = self.own_var[a] + self.own_var[b];
            for (child, zc) in [(a, za), (b, zb)] {
                if let Some(pos) = visited.iter().position(|v| v.0 == child) {
                    x[pos] = zc + self.own_var[child] / s * gap;
                }
            }
        }
        total
    }

    /// Visits the nodes tiling `lo..hi` and their ancestors, parent first,
    /// with the bottom-up estimate each gets from the tiling's indicator.
    fn tile(&self, i: usize, lo: usize, hi: usize, visited: &mut Vec<(usize, bool, f64)>) -> f64 {
        let node = self.nodes[i];
        if hi <= node.lo || node.hi <= lo {
            return 0.0;
        }
        let at = visited.len();
        if lo <= node.lo && node.hi <= hi {
            // Its subtree holds one measurement of 1, its own.
            let z = self.own_var[i];
            visited.push((i, true, z));
            return z;
        }
        visited.push((i, false, 0.0));
        let (a, b) = node
            .children
            .expect("a node partly inside a range is not a leaf");
        let s = self.tile(a, lo, hi, visited) + self.tile(b, lo, hi, visited);
        let z = (1.0 - self.own_var[i]) * s;
        visited[at].2 = z;
        z
    }
}

/// The noise of the tree mechanism on one grid: what each node is noised
/// with, and what that leaves in the counts a curve is drawn from (before
/// the monotone step and rounding, which can only shrink the largest
/// error).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TreeNoise {
    pub intervals: usize,
    /// Nodes on the longest leaf-to-root path: the sensitivity is √levels.
    pub levels: usize,
    /// σ of the discrete Gaussian on every node of every tree.
    pub node_sd: f64,
    /// The largest standard deviation of a released number at risk (a sum
    /// over the later intervals of two trees).
    pub at_risk_sd: f64,
    /// The largest standard deviation of one interval's released events
    /// (or censorings).
    pub interval_sd: f64,
}

impl TreeNoise {
    /// The noise on a grid of `intervals` when every node gets `node_sd`.
    pub fn of(intervals: usize, node_sd: f64) -> TreeNoise {
        let tree = Tree::new(intervals);
        TreeNoise::of_tree(&tree, node_sd)
    }

    /// The noise a release of cost `rho` carries on a grid of `intervals`.
    pub fn for_cost(intervals: usize, rho: f64) -> Result<TreeNoise> {
        let tree = Tree::new(intervals);
        let sigma = sigma_for_rho(tree.sensitivity(), rho)?;
        Ok(TreeNoise::of_tree(&tree, sigma))
    }

    fn of_tree(tree: &Tree, node_sd: f64) -> TreeNoise {
        let m = tree.intervals();
        // At risk at the start of interval j: the events and censorings of
        // j..m, one suffix in each of two independent trees.
        let at_risk = (0..m)
            .map(|j| 2.0 * tree.range_variance(j, m))
            .fold(0.0, f64::max);
        let interval = (0..m)
            .map(|j| tree.range_variance(j, j + 1))
            .fold(0.0, f64::max);
        TreeNoise {
            intervals: m,
            levels: tree.levels(),
            node_sd,
            at_risk_sd: node_sd * at_risk.sqrt(),
            interval_sd: node_sd * interval.sqrt(),
        }
    }

    /// The at-risk rule's floor under this noise: a released number at risk
    /// under it is merged like one under k.
    pub fn at_risk_floor(&self, k: u32) -> u64 {
        let noise = (AT_RISK_NOISE_MULTIPLE * self.at_risk_sd).ceil();
        u64::from(k).max(noise as u64)
    }
}

/// One vector of counts per interval through the tree: noisy node counts,
/// consistency, then non-decreasing, non-negative, whole cumulative counts,
/// returned as counts per interval. `noise` draws one integer noise value.
pub fn release_counts(
    tree: &Tree,
    counts: &[u64],
    mut noise: impl FnMut() -> Result<i64>,
) -> Result<Vec<u64>> {
    if counts.len() != tree.intervals() {
        return Err(Error::internal(
            "survival counts do not match the grid's tree",
        ));
    }
    let y = tree
        .sums(counts)
        .into_iter()
        .map(|s| Ok(s as f64 + noise()? as f64))
        .collect::<Result<Vec<f64>>>()?;
    let leaves = tree.leaves(&tree.consistent(&y));
    Ok(counts_from_cumulative(&leaves))
}

/// Non-negative whole counts per interval from consistent `leaves`: their
/// cumulative sums are held between 0 and the total (itself at least 0),
/// fitted non-decreasing by isotonic regression and rounded. The total
/// stays the consistent estimate of the root: every value lies in
/// [0, total] and the last one is the total, so the fit ends there and the
/// number at risk at the start carries no bias from this step beyond the
/// floor at 0 (an unconstrained fit would end at the largest mean of a tail
/// of the noisy sums, above the total: some 50 phantom patients per site on
/// a daily five-year grid). Clamping and the fit can only bring the
/// cumulative counts closer to any non-decreasing truth in the largest
/// error.
pub fn counts_from_cumulative(leaves: &[f64]) -> Vec<u64> {
    let mut cumulative = Vec::with_capacity(leaves.len());
    let mut sum = 0.0;
    for v in leaves {
        sum += v;
        cumulative.push(sum);
    }
    let total = sum.max(0.0);
    for c in &mut cumulative {
        *c = c.clamp(0.0, total);
    }
    let mut previous = 0u64;
    isotonic(&cumulative)
        .into_iter()
        .map(|c| {
            // Rounding keeps the order.
            let whole = c.max(0.0).round() as u64;
            let here = whole.saturating_sub(previous);
            previous = previous.max(whole);
            here
        })
        .collect()
}

/// Least-squares non-decreasing fit (pool adjacent violators).
pub fn isotonic(y: &[f64]) -> Vec<f64> {
    // Blocks of (sum, length), each mean at least the one before.
    let mut blocks: Vec<(f64, usize)> = Vec::with_capacity(y.len());
    for &v in y {
        blocks.push((v, 1));
        while blocks.len() > 1 {
            let (s2, n2) = blocks[blocks.len() - 1];
            let (s1, n1) = blocks[blocks.len() - 2];
            if s1 / n1 as f64 <= s2 / n2 as f64 {
                break;
            }
            blocks.pop();
            let last = blocks.len() - 1;
            blocks[last] = (s1 + s2, n1 + n2);
        }
    }
    blocks
        .into_iter()
        .flat_map(|(s, n)| std::iter::repeat_n(s / n as f64, n))
        .collect()
}

/// Every group's events and censorings through the tree at cost `rho`, as
/// tallies whose numbers at risk are the totals of what was released. What
/// the node knows about patients followed beyond the grid is not used: they
/// are censorings of the last interval like any other.
pub fn noise_groups(groups: Vec<Tally>, rho: f64) -> Result<(Vec<Tally>, NoiseScale, TreeNoise)> {
    let intervals = groups.first().map_or(1, |t| t.counts.events.len());
    let tree = Tree::new(intervals);
    let sigma = sigma_for_rho(tree.sensitivity(), rho)?;
    let noise = TreeNoise::of_tree(&tree, sigma);
    let draw = || discrete_gaussian(sigma);
    let mut noised = Vec::with_capacity(groups.len());
    for t in groups {
        let mut out = Tally::zero(intervals);
        out.counts.events = release_counts(&tree, &t.counts.events, draw)?;
        out.counts.censored = release_counts(&tree, &t.counts.censored, draw)?;
        out.counts.at_risk = out.counts.events.iter().chain(&out.counts.censored).sum();
        noised.push(out);
    }
    let scale = NoiseScale {
        count_sd: sigma,
        rho,
        ..NoiseScale::default()
    };
    Ok((noised, scale, noise))
}

/// What a node releases for a Kaplan-Meier query under differential
/// privacy: the groups through the tree, then the at-risk rule on the
/// released numbers at risk with the floor of [`TreeNoise::at_risk_floor`].
/// The receipt's `count_sd` is the σ of every tree node; what that leaves
/// in each released count follows from the grid ([`TreeNoise::of`]).
pub fn release_groups(
    groups: Vec<Tally>,
    k: u32,
    rho: f64,
) -> Result<(Vec<GroupStats>, NoiseScale)> {
    let (noised, scale, noise) = noise_groups(groups, rho)?;
    let floor = noise.at_risk_floor(k);
    Ok((survival::disclose_above(noised, k, floor), scale))
}

#[cfg(test)]
mod tests;
