//! Sufficient statistics: what a node computes (`RawStats`) and what it may
//! release after disclosure control (`NodeStats`). Every analysis is built
//! from quantities that add across sites, so pooling is summing.
//!
//! `NodeStats` holds counts and sums only: there is no variant that could
//! carry a row, an identifier or a free-text value.

use serde::{Deserialize, Serialize};

use crate::cell::Cell;
use crate::dictionary::{Dictionary, Variable};
use crate::dp::fixed::{FixedPoint, DP_DIGITS};
use crate::error::{Error, Result};
use crate::models::correlation::PairSums;
use crate::models::cox::CoxStats;
use crate::models::gbdt::GbdtStats;
use crate::models::glm::GlmStats;
use crate::models::linalg::packed_len;
use crate::models::performance::PerformanceStats;
use crate::models::survival::{self, GroupStats, Tally};
use crate::query::Analysis;

/// Count, sum and sum of squares of one numeric variable.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Moments {
    pub n: u64,
    pub sum: f64,
    pub sum_squares: f64,
}

impl Moments {
    pub fn add(&mut self, x: f64) {
        self.n += 1;
        self.sum += x;
        self.sum_squares += x * x;
    }

    pub fn merge(&mut self, other: &Moments) {
        self.n += other.n;
        self.sum += other.sum;
        self.sum_squares += other.sum_squares;
    }

    pub fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }

    /// Sample variance (n - 1 denominator).
    pub fn variance(&self) -> Option<f64> {
        if self.n < 2 {
            return None;
        }
        let n = self.n as f64;
        Some(((self.sum_squares - self.sum * self.sum / n) / (n - 1.0)).max(0.0))
    }
}

/// Clamped fixed-point sums of one variable, centred on the middle of its
/// bounds (see [`FixedPoint::centre`]): what a noised summary is made
/// from, with a sensitivity fixed by public bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FixedSums {
    pub n: u64,
    pub sum: i128,
    pub squares: i128,
}

/// Everything a node knows about one variable's values for a summary.
#[derive(Debug, Clone, PartialEq)]
pub struct SummarySums {
    /// Exact moments, released as such only in exact studies.
    pub moments: Moments,
    /// `None` when the variable has no public bounds (it cannot be noised).
    pub fixed: Option<(FixedPoint, FixedSums)>,
    /// The two largest magnitudes and the sum of all, for the dominance rule.
    pub largest: [f64; 2],
    pub total_abs: f64,
    /// Whether the variable cannot be negative (the dominance rule applies
    /// to magnitudes such as costs, sizes and durations).
    pub non_negative: bool,
}

impl SummarySums {
    /// The sums of the finite (non-missing) `values` of `var`.
    pub fn of(var: &Variable, name: &str, values: &[f64]) -> Self {
        let mut acc = SummaryAcc::new(var, name);
        for &x in values {
            acc.push(x);
        }
        acc.finish()
    }
}

/// A summary's sums taken in one pass, value by value, so a node can feed
/// it from its columns without first copying the cohort's values out.
/// Values are added in the order pushed, so the sums equal
/// [`SummarySums::of`] over the same values in the same order, bit for bit.
#[derive(Debug, Clone)]
pub struct SummaryAcc {
    fp: Option<FixedPoint>,
    centre: i64,
    moments: Moments,
    fixed: FixedSums,
    top: [f64; 2],
    total_abs: f64,
    non_negative: bool,
}

impl SummaryAcc {
    pub fn new(var: &Variable, name: &str) -> Self {
        let fp = FixedPoint::new(name, var, DP_DIGITS).ok();
        SummaryAcc {
            centre: fp.as_ref().map_or(0, |fp| fp.centre()),
            fp,
            moments: Moments::default(),
            fixed: FixedSums::default(),
            top: [0.0; 2],
            total_abs: 0.0,
            non_negative: var.numeric_bounds().is_some_and(|(lo, _)| lo >= 0.0),
        }
    }

    /// Adds `x`; missing (NaN) and infinite values are left out.
    #[inline]
    pub fn push(&mut self, x: f64) {
        if !x.is_finite() {
            return;
        }
        self.moments.add(x);
        if let Some(fp) = &self.fp {
            let e = i128::from(fp.encode(x) - self.centre);
            self.fixed.n += 1;
            self.fixed.sum += e;
            self.fixed.squares += e * e;
        }
        take_largest(&mut self.top, &mut self.total_abs, x);
    }

    pub fn finish(self) -> SummarySums {
        SummarySums {
            moments: self.moments,
            fixed: self.fp.map(|fp| (fp, self.fixed)),
            largest: self.top,
            total_abs: self.total_abs,
            non_negative: self.non_negative,
        }
    }
}

/// The two largest magnitudes among `values` and the sum of all
/// magnitudes: what the dominance rule
/// ([`crate::disclosure::suppression::dominated`]) weighs.
pub fn two_largest(values: impl IntoIterator<Item = f64>) -> ([f64; 2], f64) {
    let mut top = [0.0f64; 2];
    let mut total = 0.0;
    for v in values {
        take_largest(&mut top, &mut total, v);
    }
    (top, total)
}

#[inline]
fn take_largest(top: &mut [f64; 2], total: &mut f64, v: f64) {
    let a = v.abs();
    *total += a;
    if a > top[0] {
        *top = [a, top[0]];
    } else if a > top[1] {
        top[1] = a;
    }
}

/// What a node computed, before disclosure control. Never leaves the node.
#[derive(Debug, Clone, PartialEq)]
pub enum RawStats {
    Count(u64),
    Summary(SummarySums),
    Histogram {
        bins: Vec<u64>,
        below: u64,
        above: u64,
    },
    Table {
        rows: u32,
        columns: u32,
        cells: Vec<u64>,
    },
    /// One IRLS round of a GLM; checked at the node before release.
    Glm(GlmStats),
    /// One Newton round of a Cox model; checked at the node before release.
    Cox(CoxStats),
    Survival(Vec<Tally>),
    Pairs(Vec<PairSums>),
    /// One round of a GBDT, its segments already held to the minimum cell
    /// size at the node.
    Gbdt(GbdtStats),
    /// One round of a model's validation, its segments and groups already
    /// held to the minimum cell size at the node.
    Performance(PerformanceStats),
}

impl RawStats {
    /// Whether two computations of the same statistics agree: counts,
    /// fixed-point sums and largest magnitudes exactly, floating-point sums
    /// to `relative` (a database adds in another order than the file
    /// node), everything else exactly.
    pub fn agrees_with(&self, other: &RawStats, relative: f64) -> bool {
        let close = |a: f64, b: f64| a == b || (a - b).abs() <= relative * a.abs().max(b.abs());
        match (self, other) {
            (RawStats::Summary(a), RawStats::Summary(b)) => {
                a.moments.n == b.moments.n
                    && close(a.moments.sum, b.moments.sum)
                    && close(a.moments.sum_squares, b.moments.sum_squares)
                    && a.fixed == b.fixed
                    && a.largest == b.largest
                    && close(a.total_abs, b.total_abs)
                    && a.non_negative == b.non_negative
            }
            (RawStats::Pairs(a), RawStats::Pairs(b)) => {
                a.len() == b.len()
                    && a.iter().zip(b).all(|(x, y)| {
                        x.n == y.n
                            && close(x.sum_x, y.sum_x)
                            && close(x.sum_y, y.sum_y)
                            && close(x.sum_xx, y.sum_xx)
                            && close(x.sum_yy, y.sum_yy)
                            && close(x.sum_xy, y.sum_xy)
                    })
            }
            _ => self == other,
        }
    }
}

/// What a node releases: aggregates that passed its disclosure control.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStats {
    Count(Cell),
    /// `None` when fewer than k patients have a value.
    Summary(Option<Moments>),
    Histogram {
        bins: Vec<Cell>,
        below: Cell,
        above: Cell,
    },
    Table {
        rows: u32,
        columns: u32,
        cells: Vec<Cell>,
    },
    Glm(GlmStats),
    Cox(CoxStats),
    Survival(Vec<GroupStats>),
    /// Per-pair sums, packed upper triangle; `None` where fewer than k.
    Pairs(Vec<Option<PairSums>>),
    Gbdt(GbdtStats),
    Performance(PerformanceStats),
}

impl NodeStats {
    /// Checks that a received aggregate fits the query it answers and the
    /// minimum cell size: the right shape, finite sums, no released count
    /// under `k`. A node is a party we do not fully trust.
    pub fn check(&self, analysis: &Analysis, dict: &Dictionary, k: u32) -> Result<()> {
        let k = u64::from(k);
        let cell_ok = |c: &Cell| match c {
            Cell::Count(n) => *n >= k,
            Cell::Suppressed => true,
        };
        let shape = |what: &str| Error::invalid(format!("node answered with {what}"));
        match (analysis, self) {
            (Analysis::Count {}, NodeStats::Count(c)) => {
                if !cell_ok(c) {
                    return Err(Error::disclosure(
                        "node released a count under the minimum cell size",
                    ));
                }
            }
            (Analysis::Summary { .. }, NodeStats::Summary(m)) => {
                if let Some(m) = m {
                    if m.n < k {
                        return Err(Error::disclosure(
                            "node released moments resting on fewer patients than the minimum cell size",
                        ));
                    }
                    if !(m.sum.is_finite() && m.sum_squares.is_finite() && m.sum_squares >= 0.0) {
                        return Err(shape(
                            "sums that are not finite or a negative sum of squares",
                        ));
                    }
                    let n = m.n as f64;
                    if m.sum * m.sum > m.sum_squares * n * (1.0 + 1e-9) + 1e-9 {
                        return Err(shape("a sum of squares smaller than its sum allows"));
                    }
                }
            }
            (
                Analysis::Histogram { edges, .. } | Analysis::Quantiles { edges, .. },
                NodeStats::Histogram { bins, below, above },
            ) => {
                if bins.len() + 1 != edges.len() {
                    return Err(shape(&format!(
                        "{} bins for {} edges",
                        bins.len(),
                        edges.len()
                    )));
                }
                if !bins.iter().chain([below, above]).all(cell_ok) {
                    return Err(Error::disclosure(
                        "node released a bin under the minimum cell size",
                    ));
                }
            }
            (
                Analysis::Table { row, column }
                | Analysis::TwoByTwo {
                    exposure: row,
                    outcome: column,
                },
                NodeStats::Table {
                    rows,
                    columns,
                    cells,
                },
            ) => {
                let r = dict.get(row)?.levels().len() as u32;
                let c = dict.get(column)?.levels().len() as u32;
                if (*rows, *columns) != (r, c) || cells.len() != (r * c) as usize {
                    return Err(shape(&format!(
                        "a {rows}x{columns} table of {} cells where {r}x{c} was asked",
                        cells.len()
                    )));
                }
                if !cells.iter().all(cell_ok) {
                    return Err(Error::disclosure(
                        "node released a table cell under the minimum cell size",
                    ));
                }
            }
            (Analysis::Glm { .. }, NodeStats::Glm(g)) => {
                g.check(analysis.terms(dict)?.len())?;
                if g.n < k {
                    return Err(Error::disclosure(
                        "node released a model fit resting on fewer patients than the minimum cell size",
                    ));
                }
            }
            (Analysis::Gbdt { .. }, NodeStats::Gbdt(g)) => {
                // The open nodes are checked against the round by the
                // trainer; everything else here.
                let open: Vec<u32> = g.slots.iter().map(|s| s.slot).collect();
                g.check(&analysis.gbdt_features(dict)?, &open, k)?;
            }
            (Analysis::ModelPerformance { subgroups, .. }, NodeStats::Performance(p)) => {
                let groups = crate::models::performance::groups(dict, subgroups)?.len();
                p.check(groups, k)?;
            }
            (Analysis::Cox { .. }, NodeStats::Cox(c)) => {
                c.check(analysis.terms(dict)?.len())?;
                if c.n < k {
                    return Err(Error::disclosure(
                        "node released a model fit resting on fewer patients than the minimum cell size",
                    ));
                }
            }
            (Analysis::KaplanMeier { grid, .. }, NodeStats::Survival(groups)) => {
                let intervals = grid.points()?.len() - 1;
                let expected = analysis.survival_groups(dict)?.len();
                survival::check(groups, expected, intervals, k as u32)?;
            }
            (Analysis::Correlation { variables, .. }, NodeStats::Pairs(pairs)) => {
                if pairs.len() != packed_len(variables.len()) {
                    return Err(shape(&format!(
                        "{} pairs for {} variables",
                        pairs.len(),
                        variables.len()
                    )));
                }
                for p in pairs.iter().flatten() {
                    if p.n < k {
                        return Err(Error::disclosure(
                            "node released sums resting on fewer patients than the minimum cell size",
                        ));
                    }
                    if !p.plausible() {
                        return Err(shape("sums that no set of values can have"));
                    }
                }
            }
            (a, _) => {
                return Err(shape(&format!(
                    "statistics of another kind than the {} asked for",
                    a.kind()
                )))
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_merge_equals_whole() {
        let xs = [1.0, 2.5, 3.0, 10.0, -4.0, 7.25];
        let mut whole = Moments::default();
        xs.iter().for_each(|x| whole.add(*x));
        let mut a = Moments::default();
        let mut b = Moments::default();
        xs[..2].iter().for_each(|x| a.add(*x));
        xs[2..].iter().for_each(|x| b.add(*x));
        a.merge(&b);
        assert_eq!(a.n, whole.n);
        assert!((a.mean().unwrap() - whole.mean().unwrap()).abs() < 1e-12);
        assert!((a.variance().unwrap() - whole.variance().unwrap()).abs() < 1e-12);
    }

    /// The one-pass sums equal the sums taken the plain way (moments and
    /// fixed-point sums in one loop, the largest values in another) over
    /// the finite values, bit for bit, with missing and infinite values
    /// among them.
    #[test]
    fn one_pass_summary_equals_separate_passes() {
        let d = Dictionary::cardiovascular();
        let var = d.get("sbp").unwrap();
        let mut xs: Vec<f64> = (0..5000)
            .map(|i| 60.0 + ((i * 7919) % 1500) as f64 / 7.3)
            .collect();
        xs[10] = f64::NAN;
        xs[20] = f64::INFINITY;
        xs[30] = f64::NEG_INFINITY;
        xs[40] = 1e6; // beyond the bounds: clamped in the fixed sums only
        let got = SummarySums::of(var, "sbp", &xs);

        let fp = FixedPoint::new("sbp", var, DP_DIGITS).unwrap();
        let finite: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
        let mut moments = Moments::default();
        let mut fixed = FixedSums::default();
        for &x in &finite {
            moments.add(x);
            let e = i128::from(fp.encode(x) - fp.centre());
            fixed.n += 1;
            fixed.sum += e;
            fixed.squares += e * e;
        }
        let mut sorted: Vec<f64> = finite.iter().map(|x| x.abs()).collect();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let total: f64 = finite.iter().fold(0.0, |t, x| t + x.abs());
        assert_eq!(got.moments, moments);
        assert_eq!(got.fixed, Some((fp, fixed)));
        assert_eq!(got.largest, [sorted[0], sorted[1]]);
        assert_eq!(got.total_abs.to_bits(), total.to_bits());
        assert_eq!(got.moments.n, 4997);
    }

    #[test]
    fn hostile_aggregates_are_refused() {
        let d = Dictionary::cardiovascular();
        let summary = Analysis::Summary {
            variable: "age".into(),
        };
        let bad = NodeStats::Summary(Some(Moments {
            n: 10,
            sum: 100.0,
            sum_squares: 1.0,
        }));
        assert!(bad.check(&summary, &d, 5).is_err());
        let small = NodeStats::Count(Cell::Count(3));
        assert_eq!(
            small.check(&Analysis::Count {}, &d, 5).unwrap_err().code,
            crate::ErrorCode::Disclosure
        );
        let table = Analysis::Table {
            row: "sex".into(),
            column: "smoking".into(),
        };
        let wrong = NodeStats::Table {
            rows: 2,
            columns: 2,
            cells: vec![Cell::Suppressed; 4],
        };
        assert!(wrong.check(&table, &d, 5).is_err());
    }

    #[test]
    fn hostile_model_aggregates_are_refused() {
        use crate::models::survival::{GroupCounts, GroupStats};
        let d = Dictionary::cardiovascular();
        let glm = crate::Query::from_json(
            r#"{"analysis": {"glm": {"family": "gaussian", "outcome": "sbp", "covariates": ["age"]}}}"#,
        )
        .unwrap()
        .analysis;
        let good = GlmStats {
            n: 10,
            xtwx: vec![10.0, 600.0, 40000.0],
            xtwz: vec![1400.0, 90000.0],
            deviance: 50.0,
            sum_y: 1400.0,
            null_deviance: 0.0,
        };
        NodeStats::Glm(good.clone()).check(&glm, &d, 5).unwrap();
        let short = GlmStats {
            xtwz: vec![1.0],
            ..good.clone()
        };
        assert!(NodeStats::Glm(short).check(&glm, &d, 5).is_err());
        let nan = GlmStats {
            deviance: f64::NAN,
            ..good.clone()
        };
        assert!(NodeStats::Glm(nan).check(&glm, &d, 5).is_err());
        let few = GlmStats { n: 3, ..good };
        assert_eq!(
            NodeStats::Glm(few).check(&glm, &d, 5).unwrap_err().code,
            crate::ErrorCode::Disclosure
        );

        let km = crate::Query::from_json(
            r#"{"analysis": {"kaplan_meier": {"time": "followup_days", "event": "death",
                "grid": [0, 10, 20, 30]}}}"#,
        )
        .unwrap()
        .analysis;
        let counts = |at_risk, events: Vec<u64>, censored: Vec<u64>| {
            NodeStats::Survival(vec![GroupStats::Released(GroupCounts {
                open_end: false,
                at_risk,
                events,
                censored,
            })])
        };
        counts(20, vec![2, 3, 1], vec![4, 5, 5])
            .check(&km, &d, 5)
            .unwrap();
        // Events and censorings must add up to the number at risk.
        assert!(counts(21, vec![2, 3, 1], vec![4, 5, 5])
            .check(&km, &d, 5)
            .is_err());
        // The last interval starts with 3 at risk: under k.
        assert_eq!(
            counts(12, vec![2, 3, 1], vec![2, 2, 2])
                .check(&km, &d, 5)
                .unwrap_err()
                .code,
            crate::ErrorCode::Disclosure
        );
        // More intervals than the grid has.
        assert!(counts(20, vec![1; 4], vec![4; 4])
            .check(&km, &d, 5)
            .is_err());

        let cor = crate::Query::from_json(
            r#"{"analysis": {"correlation": {"variables": ["age", "bmi"]}}}"#,
        )
        .unwrap()
        .analysis;
        let pair = PairSums {
            n: 10,
            sum_x: 700.0,
            sum_y: 270.0,
            sum_xx: 49_500.0,
            sum_yy: 7_400.0,
            sum_xy: 18_950.0,
        };
        NodeStats::Pairs(vec![Some(pair); 3])
            .check(&cor, &d, 5)
            .unwrap();
        let impossible = PairSums {
            sum_xx: 1.0,
            ..pair
        };
        assert!(NodeStats::Pairs(vec![Some(impossible); 3])
            .check(&cor, &d, 5)
            .is_err());
        assert!(NodeStats::Pairs(vec![Some(pair); 2])
            .check(&cor, &d, 5)
            .is_err());
    }
}
