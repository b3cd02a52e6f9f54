//! A node's side of a GBDT: its patients' bins and outcomes, kept between
//! rounds with their scores under the trees applied so far, and the
//! histograms of one round under the minimum cell size.

use std::sync::Mutex;

use super::{
    held_out, Feature, GbdtOptions, GbdtRound, GbdtStats, Loss, Segments, Slot, SlotStats, Sums,
    Tree,
};
use crate::error::{Error, Result};
use crate::models::design::{ColumnData, Columns};

/// The ends of the segments a node releases of one histogram (patients
/// per bin in `counts`): adjacent bins are merged, left to right, until a
/// segment holds at least `k` patients and at least `k` remain after it;
/// the last segment takes the rest. Every segment then holds at least `k`
/// patients (when the whole does), and so does each side of a split at
/// any end. With `k = 0` every bin is its own segment.
pub fn segment_ends(counts: &[u64], k: u64) -> Vec<u32> {
    joint_ends(&[counts], &[], k, None)
}

/// The ends of segments that hold for several histograms of the same bins
/// at once: every segment (and what remains after each end) holds at
/// least `k` patients of each `strict` histogram, and none or at least `k`
/// of each `loose` one; an end must also be one of `allowed` when given.
/// Greedy, left to right; the last bin always ends the last segment.
///
/// A node cuts a tree node's histograms this way with its sibling's
/// (both children of one split share their ends) and within its parent's
/// ends, so that no difference of what it released over the tree's levels
/// isolates fewer than `k` patients; the held-out patients are a loose
/// histogram, so each side of every split holds none or at least `k`.
pub fn joint_ends(
    strict: &[&[u64]],
    loose: &[&[u64]],
    k: u64,
    allowed: Option<&[u32]>,
) -> Vec<u32> {
    let bins = strict
        .iter()
        .chain(loose)
        .map(|c| c.len())
        .max()
        .unwrap_or(0);
    let totals = |hs: &[&[u64]]| -> Vec<u64> { hs.iter().map(|c| c.iter().sum()).collect() };
    let (strict_total, loose_total) = (totals(strict), totals(loose));
    let mut strict_acc = vec![0u64; strict.len()];
    let mut strict_seen = vec![0u64; strict.len()];
    let mut loose_acc = vec![0u64; loose.len()];
    let mut loose_seen = vec![0u64; loose.len()];
    let loose_ok = |n: u64| n == 0 || n >= k;
    let mut ends = Vec::new();
    for b in 0..bins {
        for (i, c) in strict.iter().enumerate() {
            strict_acc[i] += c[b];
            strict_seen[i] += c[b];
        }
        for (i, c) in loose.iter().enumerate() {
            loose_acc[i] += c[b];
            loose_seen[i] += c[b];
        }
        if b + 1 == bins {
            ends.push(b as u32);
            break;
        }
        let permitted = allowed.is_none_or(|a| a.binary_search(&(b as u32)).is_ok());
        let ok = permitted
            && (0..strict.len())
                .all(|i| strict_acc[i] >= k && strict_total[i] - strict_seen[i] >= k)
            && (0..loose.len())
                .all(|i| loose_ok(loose_acc[i]) && loose_ok(loose_total[i] - loose_seen[i]));
        if ok {
            ends.push(b as u32);
            strict_acc.iter_mut().for_each(|a| *a = 0);
            loose_acc.iter_mut().for_each(|a| *a = 0);
        }
    }
    ends
}

/// Patients per bin of one tree node and feature: training and held out.
#[derive(Clone, Default)]
struct Counts {
    training: Vec<u64>,
    held: Vec<u64>,
}

/// One tree node's histogram of one feature: the training patients' sums
/// and the held-out patients' count, per bin.
type Histogram = (Vec<Sums>, Vec<u64>);

/// What a node released (or would) for the tree being grown, kept between
/// its rounds: each patient's slot, the level routed to, and each routed
/// tree node's segment ends per feature (empty where not computed).
struct Walk {
    tree: Tree,
    slot: Vec<u32>,
    level: u32,
    ends: Vec<Vec<Vec<u32>>>,
    /// The open nodes' histograms per feature, per bin: the training
    /// patients' sums and the held-out patients' count. A child's is then
    /// its parent's less its sibling's.
    hists: Vec<Option<Vec<Histogram>>>,
}

/// Scores under the trees applied so far, with each patient's gradient
/// and hessian at them, and the walk of the tree being grown.
struct Scores {
    base: f64,
    trees: Vec<Tree>,
    f: Vec<f64>,
    g: Vec<f64>,
    h: Vec<f64>,
    loss: f64,
    validation: f64,
    growing: Option<Walk>,
}

/// Whether `new` is `old` with decisions taken at `old`'s open nodes (and
/// their children opened), so patients routed through `old` need only
/// the new level.
fn extends(old: &Tree, new: &Tree) -> bool {
    old.slots.len() == new.slots.len()
        && old.slots.iter().enumerate().all(|(s, o)| match o {
            Slot::Open => !matches!(new.slots[s], Slot::Empty | Slot::Open),
            Slot::Empty => {
                new.slots[s] == Slot::Empty || (s > 0 && old.slots[(s - 1) / 2] == Slot::Open)
            }
            decided => new.slots[s] == *decided,
        })
}

/// One node's training data: every complete case's bin of every feature
/// (feature-major) and outcome, and which are held out for validation.
pub struct GbdtData {
    loss: Loss,
    depth: u32,
    features: Vec<Feature>,
    bins: Vec<Vec<u16>>,
    y: Vec<f64>,
    held_out: Vec<bool>,
    scores: Mutex<Option<Scores>>,
}

impl GbdtData {
    /// Bins `rows` of `columns` (complete cases of the covariates and
    /// `outcome`) and holds out `options.validation` of them by
    /// [`held_out`] with `salt`. A logistic outcome must be 0 or 1; with a
    /// validation share, both the held-out patients and the rest must be
    /// at least `k` (the *validation rule*).
    pub fn new(
        options: &GbdtOptions,
        features: Vec<Feature>,
        columns: &Columns,
        rows: &[usize],
        outcome: &str,
        salt: u64,
        k: u64,
    ) -> Result<Self> {
        let (loss, depth) = (options.loss, options.depth);
        let column = |name: &str| {
            columns
                .get(name)
                .ok_or_else(|| Error::internal(format!("\"{name}\" was not extracted")))
        };
        let mut bins = Vec::with_capacity(features.len());
        for f in &features {
            let c = column(&f.variable)?;
            bins.push(
                rows.iter()
                    .map(|&r| f.bin(f.value(c.number(r))))
                    .collect::<Vec<u16>>(),
            );
        }
        let c = column(outcome)?;
        let y: Vec<f64> = rows.iter().map(|&r| c.number(r)).collect();
        if loss == Loss::Logistic {
            if matches!(c, ColumnData::Numeric(_)) && y.iter().any(|v| *v != 0.0 && *v != 1.0) {
                return Err(Error::data(format!(
                    "\"{outcome}\" holds a value at this node other than 0 and 1, which a logistic loss cannot take (the hospital should check the data)"
                )));
            }
        } else if y.iter().any(|v| !v.is_finite()) {
            return Err(Error::internal("a complete case without an outcome"));
        }
        let held: Vec<bool> = (0..y.len())
            .map(|r| held_out(salt, r, options.validation))
            .collect();
        if options.validation > 0.0 {
            let out = held.iter().filter(|h| **h).count() as u64;
            if out < k || (y.len() as u64 - out) < k {
                return Err(Error::disclosure(format!(
                    "validation rule: the patients held out for validation, or the others, would be fewer than {k} at this node (widen the cohort or change \"validation\")"
                )));
            }
        }
        Ok(GbdtData {
            loss,
            depth,
            features,
            bins,
            y,
            held_out: held,
            scores: Mutex::new(None),
        })
    }

    pub fn len(&self) -> usize {
        self.y.len()
    }

    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// One round: the outcome's sums in the first, else the histograms of
    /// the growing tree's open nodes at the scores of the finished trees.
    /// With `k > 0`, every split of every tree must be at one of this
    /// node's own segment ends for its tree node (as [`joint_ends`] cuts
    /// them down the tree), or the round is refused: a split anywhere else
    /// could put fewer than `k` patients on one side, or tell apart two
    /// sets that differ by fewer than `k`.
    pub fn round(&self, round: &GbdtRound, k: u64) -> Result<GbdtStats> {
        let training = || self.y.iter().zip(&self.held_out).filter(|(_, h)| !**h);
        let n = training().count() as u64;
        let sum_y: f64 = training().map(|(y, _)| y).sum();
        let validation_n = self.y.len() as u64 - n;
        let Some(base) = round.base_score else {
            return Ok(GbdtStats {
                n,
                sum_y,
                validation_n,
                ..GbdtStats::default()
            });
        };
        if !base.is_finite() {
            return Err(Error::invalid("the round's base score is not finite"));
        }
        for t in &round.trees {
            t.check(&self.features, self.depth, true)?;
        }
        let growing = round
            .growing
            .as_ref()
            .ok_or_else(|| Error::invalid("a GBDT round carries no tree to grow"))?;
        growing.check(&self.features, self.depth, false)?;

        // One round at a time per model: the lock is held throughout.
        let mut guard = self.scores.lock().expect("gbdt scores lock");
        let reuse = guard.as_ref().is_some_and(|s| {
            s.base == base
                && s.trees.len() <= round.trees.len()
                && s.trees[..] == round.trees[..s.trees.len()]
        });
        if !reuse {
            *guard = Some(Scores {
                base,
                trees: Vec::new(),
                f: vec![base; self.y.len()],
                g: Vec::new(),
                h: Vec::new(),
                loss: 0.0,
                validation: 0.0,
                growing: None,
            });
        }
        let scores = guard.as_mut().expect("scores were just set");
        let applied = scores.trees.len();
        // Checked whole before any is applied, so a refused job leaves the
        // scores as they were.
        let mut walks = Vec::new();
        let mut from = scores.growing.take();
        for (i, t) in round.trees.iter().enumerate().skip(applied) {
            let earlier = from.take().filter(|w| extends(&w.tree, t));
            walks.push(self.walk(t, k, i, earlier)?);
        }
        for (t, w) in round.trees.iter().skip(applied).zip(walks) {
            for (f, s) in scores.f.iter_mut().zip(&w.slot) {
                if let Slot::Leaf { value } = t.slots[*s as usize] {
                    *f += value;
                }
            }
            scores.trees.push(t.clone());
        }
        if scores.trees.len() > applied || scores.g.len() != self.y.len() {
            let rows = self.y.len();
            let (mut g, mut h) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
            let (mut loss, mut validation) = (0.0, 0.0);
            for ((fi, yi), out) in scores.f.iter().zip(&self.y).zip(&self.held_out) {
                let (gi, hi) = self.loss.gradient(*fi, *yi);
                g.push(gi);
                h.push(hi);
                if *out {
                    validation += self.loss.loss(*fi, *yi);
                } else {
                    loss += self.loss.loss(*fi, *yi);
                }
            }
            (scores.g, scores.h, scores.loss, scores.validation) = (g, h, loss, validation);
            from = None;
        }
        let earlier = from.filter(|w| extends(&w.tree, growing));
        let mut walk = self.walk(growing, k, round.trees.len(), earlier)?;
        let (g, h, loss, validation_loss) = (&scores.g, &scores.h, scores.loss, scores.validation);

        let open = growing.open();
        // The open nodes' positions, by slot.
        let mut index = vec![usize::MAX; growing.slots.len()];
        for (i, s) in open.iter().enumerate() {
            index[*s as usize] = i;
        }
        // Each patient's open node, by position (none: in a leaf).
        let at: Vec<usize> = walk.slot.iter().map(|s| index[*s as usize]).collect();
        let mut totals = vec![Sums::default(); open.len()];
        let mut held_totals = vec![0u64; open.len()];
        for (r, &i) in at.iter().enumerate() {
            if i == usize::MAX {
                continue;
            }
            if self.held_out[r] {
                held_totals[i] += 1;
            } else {
                totals[i].add(&Sums {
                    n: 1,
                    g: g[r],
                    h: h[r],
                });
            }
        }
        for (i, t) in totals.iter().enumerate() {
            if t.n < k || (held_totals[i] > 0 && held_totals[i] < k) {
                return Err(Error::disclosure(format!(
                    "tree rule: node {} of the tree being grown holds fewer than {k} patients at this hospital; refused",
                    open[i]
                )));
            }
        }
        // The larger of two children is its parent's histogram less its
        // sibling's, when the parent's is kept: below the root, each level
        // passes over at most half the patients (as LightGBM does). Exact
        // in the counts; the sums differ from adding up in the last bits.
        let mut derived: Vec<Option<(usize, usize)>> = vec![None; open.len()];
        for (i, &s) in open.iter().enumerate() {
            let s = s as usize;
            if s == 0 {
                continue;
            }
            let (parent, sibling) = ((s - 1) / 2, if s % 2 == 1 { s + 1 } else { s - 1 });
            let j = index[sibling];
            if j == usize::MAX || walk.hists[parent].is_none() {
                continue;
            }
            let (mine, theirs) = (totals[i].n + held_totals[i], totals[j].n + held_totals[j]);
            if mine > theirs || (mine == theirs && s.is_multiple_of(2)) {
                derived[i] = Some((parent, j));
            }
        }
        // One pass over the patients, all features at once: each patient's
        // gradient, hessian and bins are read once.
        let widths: Vec<usize> = self.features.iter().map(Feature::bins).collect();
        let mut hists: Vec<Vec<Sums>> = widths
            .iter()
            .map(|w| vec![Sums::default(); open.len() * w])
            .collect();
        let mut helds: Vec<Vec<u64>> = widths.iter().map(|w| vec![0u64; open.len() * w]).collect();
        for (r, &i) in at.iter().enumerate() {
            if i == usize::MAX || derived[i].is_some() {
                continue;
            }
            if self.held_out[r] {
                for ((held, column), w) in helds.iter_mut().zip(&self.bins).zip(&widths) {
                    held[i * w + usize::from(column[r])] += 1;
                }
            } else {
                let (gr, hr) = (g[r], h[r]);
                for ((hist, column), w) in hists.iter_mut().zip(&self.bins).zip(&widths) {
                    let cell = &mut hist[i * w + usize::from(column[r])];
                    cell.n += 1;
                    cell.g += gr;
                    cell.h += hr;
                }
            }
        }
        let mut counts: Vec<Vec<Counts>> =
            vec![Vec::with_capacity(self.features.len()); open.len()];
        for (f, width) in widths.iter().copied().enumerate() {
            let (hist, held) = (&mut hists[f], &mut helds[f]);
            for (i, d) in derived.iter().enumerate() {
                let Some((parent, j)) = *d else {
                    continue;
                };
                let (up, up_held) = &walk.hists[parent].as_ref().expect("kept")[f];
                for b in 0..width {
                    let sibling = hist[j * width + b];
                    let n = up[b].n - sibling.n;
                    hist[i * width + b] = if n == 0 {
                        Sums::default()
                    } else {
                        Sums {
                            n,
                            g: up[b].g - sibling.g,
                            h: (up[b].h - sibling.h).max(0.0),
                        }
                    };
                    held[i * width + b] = up_held[b] - held[j * width + b];
                }
            }
            for (i, c) in counts.iter_mut().enumerate() {
                c.push(Counts {
                    training: hist[i * width..(i + 1) * width]
                        .iter()
                        .map(|s| s.n)
                        .collect(),
                    held: held[i * width..(i + 1) * width].to_vec(),
                });
            }
        }
        let level = open.first().map_or(0, |s| Tree::level_of(*s as usize));
        let position = |s: usize| index[s];
        let mut slots = Vec::with_capacity(open.len());
        for (i, &s) in open.iter().enumerate() {
            let ends = self.ends_of(growing, s as usize, &position, &counts, &walk.ends, k);
            let mut features = Vec::with_capacity(self.features.len());
            for (f, feature) in self.features.iter().enumerate() {
                let width = feature.bins();
                let bins = &hists[f][i * width..(i + 1) * width];
                let mut seg = Segments::default();
                let mut acc = Sums::default();
                let mut next = ends[f].iter().peekable();
                for (b, sums) in bins.iter().enumerate() {
                    acc.add(sums);
                    if next.peek().is_some_and(|e| **e as usize == b) {
                        next.next();
                        seg.ends.push(b as u32);
                        seg.sums.push(acc);
                        acc = Sums::default();
                    }
                }
                features.push(seg);
            }
            walk.ends[s as usize] = ends;
            walk.hists[s as usize] = Some(
                self.features
                    .iter()
                    .enumerate()
                    .map(|(f, feature)| {
                        let width = feature.bins();
                        let range = i * width..(i + 1) * width;
                        (hists[f][range.clone()].to_vec(), helds[f][range].to_vec())
                    })
                    .collect(),
            );
            slots.push(SlotStats {
                slot: s,
                total: totals[i],
                features,
            });
        }
        walk.level = level;
        scores.growing = Some(walk);
        Ok(GbdtStats {
            n,
            sum_y,
            loss,
            validation_n,
            validation_loss,
            slots,
        })
    }

    /// The segment ends of tree node `s` for every feature, from the
    /// patients per bin of the nodes on its level (`counts`, by
    /// `position(slot)`): at the root its own, below it shared with its
    /// sibling and within its parent's ends, except for the feature the
    /// parent splits on, which each child cuts alone within the parent's
    /// ends (a child's part of it is then whole segments of the parent's).
    fn ends_of(
        &self,
        tree: &Tree,
        s: usize,
        position: &dyn Fn(usize) -> usize,
        counts: &[Vec<Counts>],
        known: &[Vec<Vec<u32>>],
        k: u64,
    ) -> Vec<Vec<u32>> {
        let me = &counts[position(s)];
        (0..self.features.len())
            .map(|f| {
                let mine = &me[f];
                if s == 0 {
                    return joint_ends(&[&mine.training], &[&mine.held], k, None);
                }
                let parent = (s - 1) / 2;
                let allowed = known[parent].get(f).map(Vec::as_slice);
                // Without the rule nothing was kept of the parent's ends.
                let allowed = if k == 0 { None } else { allowed };
                let sibling = if s % 2 == 1 { s + 1 } else { s - 1 };
                let split_on = match tree.slots[parent] {
                    Slot::Split { feature, .. } => Some(feature as usize),
                    _ => None,
                };
                let other = position(sibling);
                if split_on == Some(f) || other == usize::MAX {
                    joint_ends(&[&mine.training], &[&mine.held], k, allowed)
                } else {
                    let theirs = &counts[other][f];
                    joint_ends(
                        &[&mine.training, &theirs.training],
                        &[&mine.held, &theirs.held],
                        k,
                        allowed,
                    )
                }
            })
            .collect()
    }

    /// Patients per bin of each of `nodes` (by position), for every
    /// feature: one pass over the patients per feature.
    fn counts(&self, slot: &[u32], nodes: &[usize], slots: usize) -> Vec<Vec<Counts>> {
        let mut position = vec![usize::MAX; slots];
        for (i, s) in nodes.iter().enumerate() {
            position[*s] = i;
        }
        let mut out: Vec<Vec<Counts>> = vec![Vec::with_capacity(self.features.len()); nodes.len()];
        for (feature, column) in self.features.iter().zip(&self.bins) {
            let width = feature.bins();
            let mut c: Vec<Counts> = (0..nodes.len())
                .map(|_| Counts {
                    training: vec![0; width],
                    held: vec![0; width],
                })
                .collect();
            for (r, at) in slot.iter().enumerate() {
                let i = position[*at as usize];
                if i != usize::MAX {
                    let b = usize::from(column[r]);
                    if self.held_out[r] {
                        c[i].held[b] += 1;
                    } else {
                        c[i].training[b] += 1;
                    }
                }
            }
            for (i, counts) in c.into_iter().enumerate() {
                out[i].push(counts);
            }
        }
        out
    }

    /// Routes every patient through `tree`'s splits level by level. With
    /// `k > 0` it cuts, at each level with a split, every tree node's
    /// segment ends as this node released them (or would have) and refuses
    /// a split that is not at one of them. `from` is an earlier walk of a
    /// tree this one extends: its levels are not walked again.
    fn walk(&self, tree: &Tree, k: u64, number: usize, from: Option<Walk>) -> Result<Walk> {
        let mut w = from.unwrap_or_else(|| Walk {
            tree: tree.clone(),
            slot: vec![0; self.y.len()],
            level: 0,
            ends: vec![Vec::new(); tree.slots.len()],
            hists: vec![None; tree.slots.len()],
        });
        w.tree = tree.clone();
        let mut level = w.level;
        while level < tree.depth() {
            let (first, last) = ((1usize << level) - 1, (1usize << (level + 1)) - 1);
            let splits: Vec<(usize, u32, u32)> = (first..last)
                .filter_map(|s| match tree.slots[s] {
                    Slot::Split { feature, threshold } => Some((s, feature, threshold)),
                    _ => None,
                })
                .collect();
            if splits.is_empty() {
                break;
            }
            if k > 0 {
                let nodes: Vec<usize> = (first..last)
                    .filter(|s| tree.slots[*s] != Slot::Empty)
                    .collect();
                if nodes.iter().any(|s| w.ends[*s].is_empty()) {
                    let counts = self.counts(&w.slot, &nodes, tree.slots.len());
                    let mut position = vec![usize::MAX; tree.slots.len()];
                    for (i, s) in nodes.iter().enumerate() {
                        position[*s] = i;
                    }
                    let position = |s: usize| position[s];
                    let ends: Vec<Vec<Vec<u32>>> = nodes
                        .iter()
                        .map(|s| self.ends_of(tree, *s, &position, &counts, &w.ends, k))
                        .collect();
                    for (s, e) in nodes.iter().zip(ends) {
                        w.ends[*s] = e;
                    }
                }
                for &(s, feature, threshold) in &splits {
                    if !w.ends[s][feature as usize].contains(&threshold) {
                        return Err(Error::disclosure(format!(
                            "tree rule: tree {} splits its node {s} where this hospital released no threshold, which could single out fewer than {k} patients; refused",
                            number + 1
                        )));
                    }
                }
            }
            for (r, at) in w.slot.iter_mut().enumerate() {
                if let Slot::Split { feature, threshold } = tree.slots[*at as usize] {
                    let b = self.bins[feature as usize][r];
                    *at = if u32::from(b) <= threshold {
                        2 * *at + 1
                    } else {
                        2 * *at + 2
                    };
                }
            }
            level += 1;
        }
        w.level = level;
        Ok(w)
    }
}
