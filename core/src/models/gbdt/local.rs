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
    let total: u64 = counts.iter().sum();
    let mut ends = Vec::new();
    let (mut acc, mut seen) = (0u64, 0u64);
    for (b, &c) in counts.iter().enumerate() {
        acc += c;
        seen += c;
        if b + 1 == counts.len() || (acc >= k && total - seen >= k) {
            ends.push(b as u32);
            acc = 0;
        }
    }
    ends
}

/// Scores under the trees applied so far, with each patient's gradient
/// and hessian at them, and where the patients are in the tree being
/// grown: a round of the next level moves only the patients of the tree
/// nodes split since.
struct Scores {
    base: f64,
    trees: Vec<Tree>,
    f: Vec<f64>,
    g: Vec<f64>,
    h: Vec<f64>,
    loss: f64,
    validation: f64,
    /// The tree being grown as last routed, the slot of each patient in
    /// it, and the level its open nodes were on.
    growing: Option<(Tree, Vec<u32>, u32)>,
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
    /// node's own segment ends for its tree node, or the round is refused:
    /// a split anywhere else could put fewer than `k` patients on one
    /// side, or tell apart two sets that differ by fewer than `k`.
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
        for (i, t) in round.trees.iter().enumerate().skip(applied) {
            let slot = self.route(t, k, i, None)?;
            for (f, s) in scores.f.iter_mut().zip(&slot) {
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
            scores.growing = None;
        }
        let (g, h, loss, validation_loss) = (&scores.g, &scores.h, scores.loss, scores.validation);

        let slot = match scores.growing.take() {
            Some((old, slot, level)) if extends(&old, growing) => {
                self.route(growing, k, round.trees.len(), Some((slot, level)))?
            }
            _ => self.route(growing, k, round.trees.len(), None)?,
        };
        let open = growing.open();
        // The open nodes' positions, by slot.
        let mut index = vec![usize::MAX; growing.slots.len()];
        for (i, s) in open.iter().enumerate() {
            index[*s as usize] = i;
        }
        // Each patient's open node, by position (none: in a leaf).
        let at: Vec<usize> = slot
            .iter()
            .zip(&self.held_out)
            .map(|(s, out)| if *out { usize::MAX } else { index[*s as usize] })
            .collect();
        let mut totals = vec![Sums::default(); open.len()];
        for (r, &i) in at.iter().enumerate() {
            if i != usize::MAX {
                totals[i].add(&Sums {
                    n: 1,
                    g: g[r],
                    h: h[r],
                });
            }
        }
        let mut slots: Vec<SlotStats> = open
            .iter()
            .zip(&totals)
            .map(|(s, t)| SlotStats {
                slot: *s,
                total: *t,
                features: Vec::with_capacity(self.features.len()),
            })
            .collect();
        for (i, t) in totals.iter().enumerate() {
            if t.n < k {
                return Err(Error::disclosure(format!(
                    "tree rule: node {} of the tree being grown holds fewer than {k} patients at this hospital; refused",
                    open[i]
                )));
            }
        }
        for (feature, column) in self.features.iter().zip(&self.bins) {
            let width = feature.bins();
            let mut hist = vec![Sums::default(); open.len() * width];
            for (r, &i) in at.iter().enumerate() {
                if i != usize::MAX {
                    let cell = &mut hist[i * width + usize::from(column[r])];
                    cell.n += 1;
                    cell.g += g[r];
                    cell.h += h[r];
                }
            }
            for (i, out) in slots.iter_mut().enumerate() {
                let bins = &hist[i * width..(i + 1) * width];
                let counts: Vec<u64> = bins.iter().map(|b| b.n).collect();
                let mut seg = Segments::default();
                let mut acc = Sums::default();
                let ends = segment_ends(&counts, k);
                let mut next = ends.iter().peekable();
                for (b, sums) in bins.iter().enumerate() {
                    acc.add(sums);
                    if next.peek().is_some_and(|e| **e as usize == b) {
                        next.next();
                        seg.ends.push(b as u32);
                        seg.sums.push(acc);
                        acc = Sums::default();
                    }
                }
                out.features.push(seg);
            }
        }
        let level = open.first().map_or(0, |s| Tree::level_of(*s as usize));
        scores.growing = Some((growing.clone(), slot, level));
        Ok(GbdtStats {
            n,
            sum_y,
            loss,
            validation_n,
            validation_loss,
            slots,
        })
    }

    /// The slot each patient ends in under `tree`, checking level by level
    /// (with `k > 0`) that each split is at one of this node's segment
    /// ends for the patients in its tree node. `from` is where the
    /// patients already are and the level to go on from (the levels above
    /// were routed and checked then).
    fn route(
        &self,
        tree: &Tree,
        k: u64,
        number: usize,
        from: Option<(Vec<u32>, u32)>,
    ) -> Result<Vec<u32>> {
        let (mut slot, start) = from.unwrap_or_else(|| (vec![0u32; self.y.len()], 0));
        for level in start..tree.depth() {
            let first = (1usize << level) - 1;
            let last = (1usize << (level + 1)) - 1;
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
                let mut position = vec![usize::MAX; tree.slots.len()];
                let mut counts: Vec<Vec<u64>> = Vec::with_capacity(splits.len());
                for (i, (s, feature, _)) in splits.iter().enumerate() {
                    position[*s] = i;
                    counts.push(vec![0; self.features[*feature as usize].bins()]);
                }
                // The segments were of the training patients only.
                for (r, at) in slot.iter().enumerate() {
                    let i = position[*at as usize];
                    if i != usize::MAX && !self.held_out[r] {
                        let feature = splits[i].1 as usize;
                        counts[i][usize::from(self.bins[feature][r])] += 1;
                    }
                }
                for (&(s, _, threshold), counts) in splits.iter().zip(&counts) {
                    if !segment_ends(counts, k).contains(&threshold)
                        || counts.iter().sum::<u64>() < k
                    {
                        return Err(Error::disclosure(format!(
                            "tree rule: tree {} splits its node {s} where this hospital released no threshold, which could single out fewer than {k} patients; refused",
                            number + 1
                        )));
                    }
                }
            }
            for (r, at) in slot.iter_mut().enumerate() {
                if let Slot::Split { feature, threshold } = tree.slots[*at as usize] {
                    let b = self.bins[feature as usize][r];
                    *at = if u32::from(b) <= threshold {
                        2 * *at + 1
                    } else {
                        2 * *at + 2
                    };
                }
            }
        }
        Ok(slot)
    }
}
