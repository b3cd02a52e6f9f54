//! The federated ensemble against a centralised histogram GBDT written
//! here from the definition, on the union of the sites' rows.

use proptest::prelude::*;

use super::*;
use crate::models::design::{ColumnData, Columns};
use crate::models::fit::{fit_locally, RoundStats};

/// Gains within this share of the best are ties (the same rule as the
/// trainer's, which a centralised fit needs too to be comparable).
const TIE: f64 = 1e-9;

/// The salt of the held-out patients in these tests.
const SALT: u64 = 7;

#[derive(Debug, Clone)]
struct Row {
    x0: f64,
    x1: f64,
    level: u32,
    y: f64,
    site: usize,
}

fn features() -> Vec<Feature> {
    vec![
        Feature {
            name: "x0".into(),
            variable: "x0".into(),
            level: None,
            thresholds: vec![0.2, 0.4, 0.5, 0.6, 0.8],
        },
        Feature {
            name: "x1".into(),
            variable: "x1".into(),
            level: None,
            thresholds: (1..16).map(|i| f64::from(i) / 16.0).collect(),
        },
        Feature {
            name: "c=b".into(),
            variable: "c".into(),
            level: Some(1),
            thresholds: vec![0.5],
        },
        Feature {
            name: "c=c".into(),
            variable: "c".into(),
            level: Some(2),
            thresholds: vec![0.5],
        },
    ]
}

fn values(r: &Row) -> [f64; 4] {
    let fs = features();
    [
        r.x0,
        r.x1,
        fs[2].value(f64::from(r.level)),
        fs[3].value(f64::from(r.level)),
    ]
}

fn site_data(rows: &[Row], site: usize, options: &GbdtOptions) -> GbdtData {
    let mine: Vec<&Row> = rows.iter().filter(|r| r.site == site).collect();
    let mut cols = Columns::new();
    cols.insert(
        "x0".into(),
        ColumnData::Numeric(mine.iter().map(|r| r.x0).collect()),
    );
    cols.insert(
        "x1".into(),
        ColumnData::Numeric(mine.iter().map(|r| r.x1).collect()),
    );
    cols.insert(
        "c".into(),
        ColumnData::Levels(mine.iter().map(|r| r.level).collect()),
    );
    cols.insert(
        "y".into(),
        ColumnData::Numeric(mine.iter().map(|r| r.y).collect()),
    );
    let all: Vec<usize> = (0..mine.len()).collect();
    GbdtData::new(options, features(), &cols, &all, "y", SALT, 0).unwrap()
}

fn federated(rows: &[Row], sites: usize, options: GbdtOptions, k: u64) -> Result<GbdtResult> {
    let data: Vec<GbdtData> = (0..sites).map(|s| site_data(rows, s, &options)).collect();
    let trainer = GbdtTrainer::new(options, features());
    fit_locally(trainer, |it| {
        let round = it.gbdt.as_ref().expect("a gbdt round");
        let mut total = GbdtStats::zero(0);
        for d in &data {
            total.merge(&d.round(round, k)?);
        }
        Ok(total)
    })
}

/// A centralised histogram GBDT on all rows, from the definition: per-bin
/// sums over the node's rows, the thresholds a split may use (all of them
/// without disclosure control; with `k`, those that end a segment of at
/// least `k` patients, with at least `k` after it, at every site), the
/// second-order gain, leaves `−lr·G/(H+λ)`.
fn reference(rows: &[Row], sites: usize, o: &GbdtOptions, k: u64) -> (f64, Vec<Tree>) {
    let fs = features();
    let n = rows.len() as f64;
    let mean = rows.iter().map(|r| r.y).sum::<f64>() / n;
    let base = match o.loss {
        Loss::Logistic => (mean / (1.0 - mean)).ln(),
        Loss::Squared => mean,
    };
    let x: Vec<[f64; 4]> = rows.iter().map(values).collect();
    let bin = |r: usize, f: usize| fs[f].thresholds.iter().filter(|t| **t <= x[r][f]).count();
    let mut score = vec![base; rows.len()];
    let mut trees = Vec::new();
    for _ in 0..o.trees {
        let (g, h): (Vec<f64>, Vec<f64>) = rows
            .iter()
            .zip(&score)
            .map(|(r, f)| match o.loss {
                Loss::Logistic => {
                    let p = 1.0 / (1.0 + (-f).exp());
                    (p - r.y, p * (1.0 - p))
                }
                Loss::Squared => (f - r.y, 1.0),
            })
            .unzip();
        let size = (1usize << (o.depth + 1)) - 1;
        let mut slots = vec![Slot::Empty; size];
        let mut at = vec![0usize; rows.len()];
        slots[0] = Slot::Open;
        // Each site's segment ends per tree node and feature, cut as the
        // nodes cut them: at the root alone, below it with the sibling
        // and within the parent's ends (alone for the parent's feature).
        let mut site_ends = vec![vec![vec![Vec::<u32>::new(); fs.len()]; size]; sites];
        for level in 0..o.depth {
            let open: Vec<usize> = ((1usize << level) - 1..(1usize << (level + 1)) - 1)
                .filter(|s| slots[*s] == Slot::Open)
                .collect();
            if k > 0 {
                for (site, ends) in site_ends.iter_mut().enumerate() {
                    let count = |s: usize, f: usize| {
                        let mut c = vec![0u64; fs[f].thresholds.len() + 1];
                        for r in 0..rows.len() {
                            if at[r] == s && rows[r].site == site {
                                c[bin(r, f)] += 1;
                            }
                        }
                        c
                    };
                    for &s in &open {
                        #[allow(clippy::needless_range_loop)] // ends[p][f] is read too
                        for f in 0..fs.len() {
                            let mine = count(s, f);
                            ends[s][f] = if s == 0 {
                                joint_ends(&[&mine], &[], k, None)
                            } else {
                                let p = (s - 1) / 2;
                                let sibling = if s % 2 == 1 { s + 1 } else { s - 1 };
                                let allowed = ends[p][f].clone();
                                match slots[p] {
                                    Slot::Split { feature, .. } if feature as usize == f => {
                                        joint_ends(&[&mine], &[], k, Some(&allowed))
                                    }
                                    _ => joint_ends(
                                        &[&mine, &count(sibling, f)],
                                        &[],
                                        k,
                                        Some(&allowed),
                                    ),
                                }
                            };
                        }
                    }
                }
            }
            for s in open {
                let members: Vec<usize> = (0..rows.len()).filter(|r| at[*r] == s).collect();
                let (mut gt, mut ht) = (0.0, 0.0);
                for &r in &members {
                    gt += g[r];
                    ht += h[r];
                }
                let score_of = |g: f64, h: f64| g * g / (h + o.lambda);
                let parent = score_of(gt, ht);
                let mut best: Vec<(usize, usize, f64, f64, f64, f64, f64)> = Vec::new();
                for f in 0..fs.len() {
                    let m = fs[f].thresholds.len();
                    let allowed = |t: usize| -> bool {
                        k == 0 || (0..sites).all(|site| site_ends[site][s][f].contains(&(t as u32)))
                    };
                    for t in 0..m {
                        if !allowed(t) {
                            continue;
                        }
                        let (mut nl, mut gl, mut hl) = (0usize, 0.0, 0.0);
                        for &r in &members {
                            if bin(r, f) <= t {
                                nl += 1;
                                gl += g[r];
                                hl += h[r];
                            }
                        }
                        let (gr, hr) = (gt - gl, ht - hl);
                        if nl == 0
                            || nl == members.len()
                            || hl < o.min_child_weight
                            || hr < o.min_child_weight
                        {
                            continue;
                        }
                        let gain = score_of(gl, hl) + score_of(gr, hr) - parent;
                        best.push((f, t, gain, gl, hl, gr, hr));
                    }
                }
                let top = best.iter().map(|b| b.2).fold(f64::NEG_INFINITY, f64::max);
                let leaf = |g: f64, h: f64| -o.learning_rate * g / (h + o.lambda);
                if top > TIE * (parent.abs() + ht.max(1.0)) {
                    let &(f, t, _, gl, hl, gr, hr) =
                        best.iter().find(|b| b.2 >= top - TIE * top.abs()).unwrap();
                    slots[s] = Slot::Split {
                        feature: f as u32,
                        threshold: t as u32,
                    };
                    if level + 1 == o.depth {
                        slots[2 * s + 1] = Slot::Leaf {
                            value: leaf(gl, hl),
                        };
                        slots[2 * s + 2] = Slot::Leaf {
                            value: leaf(gr, hr),
                        };
                    } else {
                        slots[2 * s + 1] = Slot::Open;
                        slots[2 * s + 2] = Slot::Open;
                    }
                    for &r in &members {
                        at[r] = if bin(r, f) <= t { 2 * s + 1 } else { 2 * s + 2 };
                    }
                } else {
                    slots[s] = Slot::Leaf {
                        value: leaf(gt, ht),
                    };
                }
            }
        }
        for (r, f) in score.iter_mut().enumerate() {
            if let Slot::Leaf { value } = slots[at[r]] {
                *f += value;
            }
        }
        let stump = matches!(slots[0], Slot::Leaf { .. });
        trees.push(Tree { slots });
        if stump {
            break;
        }
    }
    (base, trees)
}

fn same_trees(got: &[Tree], want: &[Tree]) -> std::result::Result<(), String> {
    if got.len() != want.len() {
        return Err(format!(
            "{} trees, the reference has {}",
            got.len(),
            want.len()
        ));
    }
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        for (s, (x, y)) in a.slots.iter().zip(&b.slots).enumerate() {
            let same = match (x, y) {
                (Slot::Leaf { value: u }, Slot::Leaf { value: v }) => (u - v).abs() <= 1e-9,
                _ => x == y,
            };
            if !same {
                return Err(format!("tree {i} slot {s}: {x:?}, the reference has {y:?}"));
            }
        }
    }
    Ok(())
}

fn rows_strategy(
    logistic: bool,
    sites: std::ops::RangeInclusive<usize>,
    rows: std::ops::Range<usize>,
) -> impl Strategy<Value = (usize, Vec<Row>)> {
    sites.prop_flat_map(move |s| {
        let row = (0u32..100, 0u32..100, 0u32..3, 0u32..1000, 0..s).prop_map(
            move |(a, b, level, y, site)| {
                let x0 = f64::from(a) / 100.0;
                let x1 = f64::from(b) / 100.0;
                let signal = x0 + if level == 2 { 0.5 } else { 0.0 } - x1 * x1;
                let y = if logistic {
                    f64::from(u8::from(
                        f64::from(y) / 1000.0 < 1.0 / (1.0 + (-signal * 3.0).exp()),
                    ))
                } else {
                    signal * 10.0 + f64::from(y) / 250.0
                };
                Row {
                    x0,
                    x1,
                    level,
                    y,
                    site,
                }
            },
        );
        (Just(s), proptest::collection::vec(row, rows.clone()))
    })
}

fn small(loss: Loss) -> GbdtOptions {
    GbdtOptions {
        loss,
        trees: 6,
        depth: 3,
        learning_rate: 0.3,
        lambda: 1.0,
        min_child_weight: 0.5,
        validation: 0.0,
        early_stopping: None,
    }
}

fn both_outcomes(rows: &[Row]) -> bool {
    rows.iter().any(|r| r.y == 1.0) && rows.iter().any(|r| r.y == 0.0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Without disclosure control, any split of the rows over one to six
    /// sites trains the centralised ensemble: the same splits, leaves to
    /// 1e-9.
    #[test]
    fn federated_logistic_equals_centralised((sites, rows) in rows_strategy(true, 1..=6, 30..160)) {
        prop_assume!(both_outcomes(&rows));
        let o = small(Loss::Logistic);
        let got = federated(&rows, sites, o, 0).unwrap();
        let (base, want) = reference(&rows, sites, &o, 0);
        prop_assert!((got.model.base_score - base).abs() < 1e-12);
        same_trees(&got.model.trees, &want).map_err(TestCaseError::fail)?;
        prop_assert_eq!(got.n, rows.len() as u64);
    }

    #[test]
    fn federated_squared_equals_centralised((sites, rows) in rows_strategy(false, 1..=6, 30..160)) {
        let o = small(Loss::Squared);
        let got = federated(&rows, sites, o, 0).unwrap();
        let (base, want) = reference(&rows, sites, &o, 0);
        prop_assert!((got.model.base_score - base).abs() < 1e-9);
        same_trees(&got.model.trees, &want).map_err(TestCaseError::fail)?;
    }

    /// With a minimum cell size, the ensemble is the centralised one whose
    /// splits are restricted to the thresholds every site can release, and
    /// every leaf holds at least k patients at every site.
    #[test]
    fn federated_under_k_equals_restricted_centralised((sites, rows) in rows_strategy(true, 1..=4, 120..240)) {
        let k = 5;
        let per_site = (0..sites).map(|s| rows.iter().filter(|r| r.site == s).count());
        prop_assume!(per_site.clone().all(|n| n >= k as usize));
        prop_assume!(both_outcomes(&rows));
        let o = small(Loss::Logistic);
        let got = federated(&rows, sites, o, k).unwrap();
        let (_, want) = reference(&rows, sites, &o, k);
        same_trees(&got.model.trees, &want).map_err(TestCaseError::fail)?;
        for t in &got.model.trees {
            for site in 0..sites {
                let mut per_leaf = vec![0u64; t.slots.len()];
                for r in rows.iter().filter(|r| r.site == site) {
                    let v = values(r);
                    let fs = features();
                    per_leaf[t.route(|f| fs[f].bin(v[f]))] += 1;
                }
                for (s, slot) in t.slots.iter().enumerate() {
                    if matches!(slot, Slot::Leaf { .. }) {
                        prop_assert!(per_leaf[s] >= k, "leaf {} holds {} at site {}", s, per_leaf[s], site);
                    }
                }
            }
        }
    }
}

fn some_rows(n: usize, sites: usize) -> Vec<Row> {
    (0..n)
        .map(|i| {
            let x0 = ((i * 37) % 100) as f64 / 100.0;
            let x1 = ((i * 53) % 100) as f64 / 100.0;
            Row {
                x0,
                x1,
                level: (i % 3) as u32,
                y: f64::from(u8::from(x0 + 0.3 * x1 > 0.6 || i % 7 == 0)),
                site: i % sites,
            }
        })
        .collect()
}

#[test]
fn the_model_scores_as_training_did() {
    let rows = some_rows(300, 3);
    let o = small(Loss::Logistic);
    let got = federated(&rows, 3, o, 5).unwrap();
    assert_eq!(got.model.trees.len(), 6);
    assert_eq!(got.training_loss.len(), 6);
    assert!(got.training_loss.windows(2).all(|w| w[1] < w[0]));
    assert!(!got.importance.is_empty());
    // The last tree's training loss came from the node's scores; the
    // model's own scores must reproduce it.
    let five = GbdtModel {
        trees: got.model.trees[..5].to_vec(),
        ..got.model.clone()
    };
    let loss: f64 = rows
        .iter()
        .map(|r| Loss::Logistic.loss(five.score(&values(r)), r.y))
        .sum::<f64>()
        / rows.len() as f64;
    assert!((loss - got.training_loss[5]).abs() < 1e-12, "{loss}");
    let json = serde_json::to_string(&got.model).unwrap();
    let back: GbdtModel = serde_json::from_str(&json).unwrap();
    assert_eq!(back, got.model);
    for r in &rows {
        let p = back.predict(&values(r));
        assert!((0.0..=1.0).contains(&p));
    }
}

#[test]
fn segments_hold_k_on_both_sides() {
    assert_eq!(segment_ends(&[3, 0, 0, 5], 0), [0, 1, 2, 3]);
    assert_eq!(segment_ends(&[3, 0, 0, 5], 1), [0, 3]);
    assert_eq!(segment_ends(&[3, 0, 0, 5], 3), [0, 3]);
    assert_eq!(segment_ends(&[3, 0, 0, 5], 4), [3]);
    assert_eq!(segment_ends(&[5, 5, 1], 5), [0, 2]);
    assert_eq!(segment_ends(&[1, 1, 1, 1, 1, 1], 2), [1, 3, 5]);
    assert_eq!(segment_ends(&[], 2), Vec::<u32>::new());
}

#[test]
fn pooled_segments_keep_the_ends_both_sites_have() {
    let s = |ends: &[u32], n: &[u64]| Segments {
        ends: ends.to_vec(),
        sums: n
            .iter()
            .map(|n| Sums {
                n: *n,
                g: *n as f64,
                h: 1.0,
            })
            .collect(),
    };
    let a = s(&[1, 3, 5], &[5, 6, 7]);
    let b = s(&[0, 3, 4, 5], &[5, 5, 5, 5]);
    let p = a.pooled(&b);
    assert_eq!(p.ends, [3, 5]);
    assert_eq!(p.sums.iter().map(|x| x.n).collect::<Vec<_>>(), [21, 17]);
    assert_eq!(p.sums.iter().map(|x| x.h).collect::<Vec<_>>(), [4.0, 3.0]);
}

/// A hostile coordinator that splits where a hospital released no
/// threshold, to tell apart two sets of patients that differ by fewer
/// than k, is refused, naming the rule and no count.
#[test]
fn a_split_between_released_thresholds_is_refused() {
    let rows = some_rows(60, 1);
    let o = small(Loss::Logistic);
    let site = site_data(&rows, 0, &o);
    let ok = site
        .round(
            &GbdtRound {
                base_score: Some(0.0),
                trees: vec![],
                growing: Some(Tree::open_root(o.depth)),
            },
            5,
        )
        .unwrap();
    let ends = &ok.slots[0].features[1].ends;
    let inside = (0..16u32).find(|t| !ends.contains(t)).expect("merged bins");
    let mut growing = Tree::open_root(o.depth);
    growing.slots[0] = Slot::Split {
        feature: 1,
        threshold: inside,
    };
    growing.slots[1] = Slot::Open;
    growing.slots[2] = Slot::Open;
    let round = GbdtRound {
        base_score: Some(0.0),
        trees: vec![],
        growing: Some(growing.clone()),
    };
    let e = site.round(&round, 5).unwrap_err();
    assert_eq!(e.code, crate::ErrorCode::Disclosure);
    assert!(e.message.starts_with("tree rule:"), "{e}");
    assert!(!e.message.contains(" 60"), "{e}");
    // The same split in a finished tree is refused as well.
    growing.slots[1] = Slot::Leaf { value: 9.0 };
    growing.slots[2] = Slot::Leaf { value: -9.0 };
    let round = GbdtRound {
        base_score: Some(0.0),
        trees: vec![growing],
        growing: Some(Tree::open_root(o.depth)),
    };
    assert!(site
        .round(&round, 5)
        .unwrap_err()
        .message
        .starts_with("tree rule:"));
    // Without the rule (k = 0) the node would answer.
    assert!(site.round(&round, 0).is_ok());
}

#[test]
fn malformed_trees_are_refused() {
    let fs = features();
    let mut t = Tree::open_root(2);
    assert!(t.check(&fs, 2, false).is_ok());
    assert!(t
        .check(&fs, 3, false)
        .unwrap_err()
        .message
        .contains("slots"));
    assert!(t.check(&fs, 2, true).unwrap_err().message.contains("open"));
    t.slots[0] = Slot::Split {
        feature: 9,
        threshold: 0,
    };
    assert!(t
        .check(&fs, 2, false)
        .unwrap_err()
        .message
        .contains("unknown feature"));
    t.slots[0] = Slot::Split {
        feature: 2,
        threshold: 1,
    };
    assert!(t
        .check(&fs, 2, false)
        .unwrap_err()
        .message
        .contains("threshold"));
    t.slots[0] = Slot::Split {
        feature: 2,
        threshold: 0,
    };
    assert!(t
        .check(&fs, 2, false)
        .unwrap_err()
        .message
        .contains("empty under a split"));
    t.slots[1] = Slot::Leaf { value: f64::NAN };
    t.slots[2] = Slot::Open;
    assert!(t
        .check(&fs, 2, false)
        .unwrap_err()
        .message
        .contains("not finite"));
    t.slots[1] = Slot::Leaf { value: 0.1 };
    assert!(t
        .check(&fs, 2, false)
        .unwrap_err()
        .message
        .contains("sibling is not"));
    t.slots[1] = Slot::Open;
    assert!(t.check(&fs, 2, false).is_ok());
    t.slots[3] = Slot::Leaf { value: 0.1 };
    assert!(t
        .check(&fs, 2, false)
        .unwrap_err()
        .message
        .contains("under no split"));
}

#[test]
fn features_come_from_the_dictionary() {
    let d = crate::Dictionary::cardiovascular();
    let mut edges = std::collections::BTreeMap::new();
    edges.insert("bmi".to_string(), vec![18.5, 25.0, 30.0]);
    let fs = features_of(&d, &["age", "bmi", "smoking", "diabetes"], &edges);
    let names: Vec<&str> = fs.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "age",
            "bmi",
            "smoking=never",
            "smoking=former",
            "smoking=current",
            "diabetes=true"
        ]
    );
    assert_eq!(fs[1].thresholds, [18.5, 25.0, 30.0]);
    assert_eq!(fs[1].bin(25.0), 2);
    assert_eq!(fs[1].bin(24.9), 1);
    assert_eq!(fs[5].value(1.0), 1.0);
    assert_eq!(fs[3].value(2.0), 0.0);
    edges.insert("sex".to_string(), vec![1.0]);
    let e = super::features(&d, &["age".into()], 32, &edges).unwrap_err();
    assert!(e.message.contains("not one of the covariates"), "{e}");
}

fn features_of(
    d: &crate::Dictionary,
    names: &[&str],
    edges: &std::collections::BTreeMap<String, Vec<f64>>,
) -> Vec<Feature> {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    super::features(d, &names, 32, edges).unwrap()
}

/// Held-out patients never train, their loss is the model's on them
/// tree by tree, and training stops once it has not improved for the
/// patience asked, keeping the trees up to its best.
#[test]
fn early_stopping_keeps_the_trees_up_to_the_best_held_out_loss() {
    let rows = some_rows(900, 3);
    let o = GbdtOptions {
        trees: 60,
        learning_rate: 1.0,
        validation: 0.3,
        early_stopping: Some(3),
        ..small(Loss::Logistic)
    };
    let got = federated(&rows, 3, o, 5).unwrap();
    let why = got.stopped.clone().expect("stopped early");
    assert!(why.starts_with("stopped early"), "{why}");
    let kept = got.model.trees.len();
    let measured = got.validation_loss.len();
    assert_eq!(measured, kept + 4, "{why}");
    // Which patients each site held out, as the nodes decide it.
    let mut held = Vec::new();
    let mut training = Vec::new();
    for site in 0..3 {
        for (i, r) in rows.iter().filter(|r| r.site == site).enumerate() {
            if held_out(SALT, i, 0.3) {
                held.push(r);
            } else {
                training.push(r);
            }
        }
    }
    assert_eq!(got.validation_n as usize, held.len());
    assert_eq!(got.n as usize, training.len());
    let mean = training.iter().map(|r| r.y).sum::<f64>() / training.len() as f64;
    assert!((got.model.base_score - (mean / (1.0 - mean)).ln()).abs() < 1e-12);
    // Every measured loss is the truncated model's on the held-out rows;
    // the kept model's is the lowest.
    let mut all = got.model.clone();
    let full = federated(
        &rows,
        3,
        GbdtOptions {
            trees: measured as u32,
            early_stopping: None,
            ..o
        },
        5,
    )
    .unwrap();
    assert_eq!(&full.model.trees[..kept], &got.model.trees[..]);
    for (t, want) in got.validation_loss.iter().enumerate() {
        all.trees = full.model.trees[..t].to_vec();
        let loss = held
            .iter()
            .map(|r| Loss::Logistic.loss(all.score(&values(r)), r.y))
            .sum::<f64>()
            / held.len() as f64;
        assert!((loss - want).abs() < 1e-12, "tree {t}: {loss} vs {want}");
    }
    // Importance counts the kept trees' splits only.
    let splits = got
        .model
        .trees
        .iter()
        .flat_map(|t| &t.slots)
        .filter(|s| matches!(s, Slot::Split { .. }))
        .count() as u32;
    assert_eq!(got.importance.iter().map(|i| i.splits).sum::<u32>(), splits);
    let best = got
        .validation_loss
        .iter()
        .cloned()
        .fold(f64::INFINITY, f64::min);
    assert_eq!(got.validation_loss[kept], best);
    // Too few patients to hold out at a site: refused, naming the rule.
    let few = some_rows(12, 1);
    let opts = GbdtOptions {
        validation: 0.3,
        ..small(Loss::Logistic)
    };
    let mine: Vec<&Row> = few.iter().collect();
    let mut cols = Columns::new();
    cols.insert(
        "x0".into(),
        ColumnData::Numeric(mine.iter().map(|r| r.x0).collect()),
    );
    cols.insert(
        "x1".into(),
        ColumnData::Numeric(mine.iter().map(|r| r.x1).collect()),
    );
    cols.insert(
        "c".into(),
        ColumnData::Levels(mine.iter().map(|r| r.level).collect()),
    );
    cols.insert(
        "y".into(),
        ColumnData::Numeric(mine.iter().map(|r| r.y).collect()),
    );
    let all_rows: Vec<usize> = (0..few.len()).collect();
    let e = GbdtData::new(&opts, features(), &cols, &all_rows, "y", SALT, 5)
        .err()
        .expect("refused");
    assert!(e.message.starts_with("validation rule:"), "{e}");
}

/// What a node releases over the levels of one tree cannot be subtracted
/// into a piece of fewer than k patients: both children of a split share
/// their segment ends (but for the feature split on) and cut them within
/// the parent's, so a child's segment is a union of whole parent
/// segments or is matched by its sibling's.
#[test]
fn a_tree_nodes_ends_nest_in_its_parents_and_match_its_siblings() {
    let rows = some_rows(400, 1);
    let o = GbdtOptions {
        trees: 2,
        ..small(Loss::Logistic)
    };
    let site = site_data(&rows, 0, &o);
    let mut released: Vec<(GbdtRound, GbdtStats)> = Vec::new();
    let got = fit_locally(GbdtTrainer::new(o, features()), |it| {
        let round = it.gbdt.clone().unwrap();
        let stats = site.round(&round, 5)?;
        released.push((round, stats.clone()));
        Ok(stats)
    })
    .unwrap();
    assert_eq!(got.model.trees.len(), 2);
    let mut checked = 0;
    for pair in released.windows(2) {
        let ((_, parent), (round, children)) = (&pair[0], &pair[1]);
        let tree = round.growing.as_ref().unwrap();
        for child in &children.slots {
            let s = child.slot as usize;
            if s == 0 {
                continue;
            }
            let p = (s - 1) / 2;
            let Some(ps) = parent.slots.iter().find(|x| x.slot as usize == p) else {
                continue;
            };
            let sibling = if s % 2 == 1 { s + 1 } else { s - 1 };
            let sib = children
                .slots
                .iter()
                .find(|x| x.slot as usize == sibling)
                .unwrap();
            let Slot::Split { feature, .. } = tree.slots[p] else {
                panic!("a child under no split")
            };
            for f in 0..features().len() {
                let (mine, theirs, up) = (&child.features[f], &sib.features[f], &ps.features[f]);
                assert!(
                    mine.ends.iter().all(|e| up.ends.contains(e)),
                    "slot {s} feature {f}"
                );
                if f != feature as usize {
                    assert_eq!(mine.ends, theirs.ends, "slot {s} feature {f}");
                }
                assert!(mine.sums.iter().all(|x| x.n >= 5));
                checked += 1;
            }
        }
    }
    assert!(checked > 0);
}

#[test]
fn joint_ends_hold_for_every_histogram() {
    // Two children of a split whose parent held [8, 5, 11]: cut alone they
    // end at {0, 2} and {1, 2}, and with the parent's bins that isolates
    // the left child's 2 patients of bin 1. Cut together they share {1, 2}:
    // bins 0 and 1 then form a 2x2 table (children by the parent's bins)
    // whose margins (7, 6 and 8, 5) do not fix any cell.
    let (left, right) = ([5u64, 2, 5], [3u64, 3, 6]);
    assert_eq!(segment_ends(&left, 5), [0, 2]);
    assert_eq!(segment_ends(&right, 5), [1, 2]);
    assert_eq!(
        joint_ends(&[&left, &right], &[], 5, Some(&[0, 1, 2])),
        [1, 2]
    );
    // Held-out patients: none or at least k on each side.
    assert_eq!(joint_ends(&[&[6, 6, 6]], &[&[0, 1, 0]], 5, None), [2]);
    assert_eq!(joint_ends(&[&[6, 6, 6]], &[&[5, 0, 0]], 5, None), [0, 1, 2]);
    // Within the parent's ends only.
    assert_eq!(joint_ends(&[&[6, 6, 6]], &[], 5, Some(&[1, 2])), [1, 2]);
}
