//! Gradient-boosted trees on the wire: the analysis, the trees each round
//! carries, and a node's histograms.

use std::collections::BTreeMap;

use plexus_core::models::gbdt::{
    GbdtRound, GbdtStats, Loss, Segments, Slot, SlotStats, Sums, Tree, MAX_DEPTH, MAX_FEATURE_BINS,
    MAX_TOTAL_BINS, MAX_TREES,
};

use super::*;

/// Most slots of one tree on the wire (a tree of the deepest depth).
const MAX_SLOTS: usize = (1 << (MAX_DEPTH + 1)) - 1;
/// Most open nodes in one round.
const MAX_OPEN: usize = 1 << MAX_DEPTH;

pub(super) fn analysis_to_pb(a: &Analysis) -> Option<pb::GbdtAnalysis> {
    let Analysis::Gbdt {
        loss,
        outcome,
        covariates,
        trees,
        depth,
        learning_rate,
        lambda,
        min_child_weight,
        bins,
        edges,
        validation,
        early_stopping,
    } = a
    else {
        return None;
    };
    Some(pb::GbdtAnalysis {
        loss: match loss {
            Loss::Logistic => pb::GbdtLoss::Logistic,
            Loss::Squared => pb::GbdtLoss::Squared,
        } as i32,
        outcome: outcome.clone(),
        covariates: covariates.clone(),
        trees: *trees,
        depth: *depth,
        learning_rate: *learning_rate,
        lambda: *lambda,
        min_child_weight: *min_child_weight,
        bins: *bins,
        edges: edges
            .iter()
            .map(|(variable, cuts)| pb::GbdtEdges {
                variable: variable.clone(),
                cuts: cuts.clone(),
            })
            .collect(),
        validation: *validation,
        early_stopping: *early_stopping,
    })
}

pub(super) fn analysis_from_pb(g: pb::GbdtAnalysis) -> Result<Analysis> {
    let mut edges = BTreeMap::new();
    for e in bounded(g.edges, MAX_COVARIATES, "covariates with edges")? {
        let cuts = bounded(e.cuts, MAX_FEATURE_BINS, "cut points")?;
        if edges.insert(e.variable.clone(), cuts).is_some() {
            return Err(Error::invalid(format!(
                "the gbdt gives edges for \"{}\" twice",
                plexus_core::text::escape(&e.variable)
            )));
        }
    }
    Ok(Analysis::Gbdt {
        loss: match pb::GbdtLoss::try_from(g.loss) {
            Ok(pb::GbdtLoss::Logistic | pb::GbdtLoss::Unspecified) => Loss::Logistic,
            Ok(pb::GbdtLoss::Squared) => Loss::Squared,
            Err(_) => return Err(Error::invalid("the gbdt names no known loss")),
        },
        outcome: g.outcome,
        covariates: bounded(g.covariates, MAX_COVARIATES, "covariates")?,
        trees: g.trees,
        depth: g.depth,
        learning_rate: g.learning_rate,
        lambda: g.lambda,
        min_child_weight: g.min_child_weight,
        bins: g.bins,
        edges,
        validation: g.validation,
        early_stopping: g.early_stopping,
    })
}

fn tree_to_pb(t: &Tree) -> pb::GbdtTree {
    let mut out = pb::GbdtTree::default();
    for slot in &t.slots {
        let (kind, feature, threshold, value) = match *slot {
            Slot::Empty => (0, 0, 0, 0.0),
            Slot::Open => (1, 0, 0, 0.0),
            Slot::Split { feature, threshold } => (2, feature, threshold, 0.0),
            Slot::Leaf { value } => (3, 0, 0, value),
        };
        out.kind.push(kind);
        out.feature.push(feature);
        out.threshold.push(threshold);
        out.value.push(value);
    }
    out
}

fn tree_from_pb(t: pb::GbdtTree) -> Result<Tree> {
    let n = t.kind.len();
    if n > MAX_SLOTS || [t.feature.len(), t.threshold.len(), t.value.len()] != [n, n, n] {
        return Err(Error::invalid(
            "a tree's slot lists differ in length or exceed the deepest tree",
        ));
    }
    let slots = (0..n)
        .map(|i| {
            Ok(match t.kind[i] {
                0 => Slot::Empty,
                1 => Slot::Open,
                2 => Slot::Split {
                    feature: t.feature[i],
                    threshold: t.threshold[i],
                },
                3 => Slot::Leaf { value: t.value[i] },
                other => {
                    return Err(Error::invalid(format!(
                        "tree slot kind {other} is not one Plexus knows"
                    )))
                }
            })
        })
        .collect::<Result<Vec<Slot>>>()?;
    Ok(Tree { slots })
}

pub(super) fn round_to_pb(r: &GbdtRound) -> pb::GbdtRound {
    pb::GbdtRound {
        base_score: r.base_score,
        trees: r.trees.iter().map(tree_to_pb).collect(),
        growing: r.growing.as_ref().map(tree_to_pb),
    }
}

pub(super) fn round_from_pb(r: pb::GbdtRound) -> Result<GbdtRound> {
    if r.base_score.is_some_and(|b| !b.is_finite()) {
        return Err(Error::invalid("the round's base score is not finite"));
    }
    Ok(GbdtRound {
        base_score: r.base_score,
        trees: bounded(r.trees, MAX_TREES as usize, "trees")?
            .into_iter()
            .map(tree_from_pb)
            .collect::<Result<_>>()?,
        growing: r.growing.map(tree_from_pb).transpose()?,
    })
}

pub(super) fn stats_to_pb(s: &GbdtStats) -> pb::GbdtStats {
    pb::GbdtStats {
        n: s.n,
        sum_y: s.sum_y,
        loss: s.loss,
        validation_n: s.validation_n,
        validation_loss: s.validation_loss,
        slots: s
            .slots
            .iter()
            .map(|slot| pb::GbdtSlot {
                slot: slot.slot,
                n: slot.total.n,
                g: slot.total.g,
                h: slot.total.h,
                features: slot
                    .features
                    .iter()
                    .map(|seg| pb::GbdtSegments {
                        ends: seg.ends.clone(),
                        n: seg.sums.iter().map(|s| s.n).collect(),
                        g: seg.sums.iter().map(|s| s.g).collect(),
                        h: seg.sums.iter().map(|s| s.h).collect(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

pub(super) fn stats_from_pb(s: pb::GbdtStats) -> Result<GbdtStats> {
    let slots = bounded(s.slots, MAX_OPEN, "tree nodes")?
        .into_iter()
        .map(|slot| {
            let features = bounded(slot.features, MAX_TOTAL_BINS, "features")?
                .into_iter()
                .map(|seg| {
                    let n = seg.ends.len();
                    if n > MAX_FEATURE_BINS || [seg.n.len(), seg.g.len(), seg.h.len()] != [n, n, n]
                    {
                        return Err(Error::invalid(
                            "a histogram's lists differ in length or exceed the most bins",
                        ));
                    }
                    Ok(Segments {
                        ends: seg.ends,
                        sums: (0..n)
                            .map(|i| Sums {
                                n: seg.n[i],
                                g: seg.g[i],
                                h: seg.h[i],
                            })
                            .collect(),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(SlotStats {
                slot: slot.slot,
                total: Sums {
                    n: slot.n,
                    g: slot.g,
                    h: slot.h,
                },
                features,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(GbdtStats {
        n: s.n,
        sum_y: s.sum_y,
        loss: s.loss,
        validation_n: s.validation_n,
        validation_loss: s.validation_loss,
        slots,
    })
}
