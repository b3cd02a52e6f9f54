//! What a node adds to a secure aggregate, and how it is laid out as a
//! vector over Z/2^128.
//!
//! Counts are integers and stay exact. Sums of real values are carried in
//! fixed point with [`FRACTION_BITS`] = 32 fractional bits: a node's sum is
//! rounded to the nearest multiple of 2^-32 (an error of at most 1.2e-10
//! per node, so n·1.2e-10 in a pooled sum of n nodes, far below f64's own
//! rounding of any sum above about 10^6), and its magnitude must stay under
//! [`MAX_REAL`] = 2^80 (1.2·10^24), which leaves room for the sum of any
//! realistic number of nodes inside the 127 bits of a signed value.
//! Wrapping arithmetic modulo 2^128 is what makes masks cancel; the sum is
//! read back as a two's-complement i128, exact as long as the true pooled
//! value fits, which the bounds above guarantee.
//!
//! The layout is fixed by the analysis alone (public), so the coordinator
//! knows the length and meaning of every element before it sees a vector.

use serde::{Deserialize, Serialize};

use crate::dictionary::Dictionary;
use crate::disclosure::{cell, summary_dominated, suppress_table, Rules};
use crate::error::{Error, Result};
use crate::models::correlation::{self, PairSums};
use crate::models::cox::CoxStats;
use crate::models::glm::GlmStats;
use crate::models::linalg::packed_len;
use crate::models::survival::{self, GroupCounts, Tally};
use crate::query::{Analysis, Query};
use crate::stats::{Moments, NodeStats, RawStats};

/// Fractional bits of a real value in fixed point.
pub const FRACTION_BITS: u32 = 32;
/// Largest magnitude of a real value a node may add (2^80).
pub const MAX_REAL: f64 = 1_208_925_819_614_629_174_706_176.0;
/// Most elements in one vector (a Kaplan-Meier grid of 10,000 intervals
/// in a dozen groups fits).
pub const MAX_ELEMENTS: usize = 1 << 18;

const SCALE: f64 = (1u64 << FRACTION_BITS) as f64;

/// A real value in fixed point, or an error naming `what` when it cannot
/// be carried exactly enough.
pub fn encode_real(x: f64, what: &str) -> Result<u128> {
    if !x.is_finite() {
        return Err(Error::invalid(format!(
            "{what} is not a finite number and cannot enter a secure aggregate"
        )));
    }
    if x.abs() >= MAX_REAL {
        return Err(Error::invalid(format!(
            "{what} ({x:e}) is too large for secure aggregation's fixed-point encoding (its magnitude must stay under 2^80)"
        )));
    }
    Ok(((x * SCALE).round() as i128) as u128)
}

/// A (summed) real value back from fixed point.
pub fn decode_real(v: u128) -> f64 {
    (v as i128) as f64 / SCALE
}

fn decode_count(v: u128, what: &str) -> Result<u64> {
    u64::try_from(v as i128).map_err(|_| {
        Error::invalid(format!(
            "the masked vectors did not sum to valid statistics ({what} came out negative or too large): a node masked for another roster or step; submit the query again"
        ))
    })
}

/// Adds `v` into `acc`, element by element, modulo 2^128.
pub fn add_into(acc: &mut [u128], v: &[u128]) {
    for (a, b) in acc.iter_mut().zip(v) {
        *a = a.wrapping_add(*b);
    }
}

/// Refuses, with a `policy` error naming it, what a study under secure
/// aggregation does not answer: a result per site (it would show each
/// hospital's own figures, which secure aggregation exists to hide).
pub fn supported(query: &Query) -> Result<()> {
    if query.by_site {
        return Err(Error::policy(format!(
            "by_site is not offered under secure aggregation: it would show each hospital's own {} result, which the study's secure aggregation keeps from everyone; ask without by_site",
            query.analysis.kind()
        )));
    }
    Ok(())
}

/// The shape of an analysis's vector.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    Count,
    Summary,
    /// Bins, then below, then above.
    Histogram(usize),
    Table(u32, u32),
    /// Groups, intervals.
    Survival(usize, usize),
    /// Pairs of a correlation.
    Pairs(usize),
    /// Parameters of a GLM round.
    Glm(usize),
    /// Parameters of a Cox round.
    Cox(usize),
}

impl Shape {
    fn of(analysis: &Analysis, dict: &Dictionary) -> Result<Self> {
        Ok(match analysis {
            Analysis::Count {} => Shape::Count,
            Analysis::Summary { .. } => Shape::Summary,
            Analysis::Histogram { edges, .. } | Analysis::Quantiles { edges, .. } => {
                Shape::Histogram(edges.len().saturating_sub(1))
            }
            Analysis::Table { row, column }
            | Analysis::TwoByTwo {
                exposure: row,
                outcome: column,
            } => Shape::Table(
                dict.get(row)?.levels().len() as u32,
                dict.get(column)?.levels().len() as u32,
            ),
            Analysis::KaplanMeier { grid, .. } => Shape::Survival(
                analysis.survival_groups(dict)?.len(),
                grid.points()?.len() - 1,
            ),
            Analysis::Correlation { variables, .. } => Shape::Pairs(packed_len(variables.len())),
            Analysis::Glm { .. } => Shape::Glm(analysis.terms(dict)?.len()),
            Analysis::Cox { .. } => Shape::Cox(analysis.terms(dict)?.len()),
        })
    }

    fn len(self) -> usize {
        match self {
            Shape::Count => 1,
            Shape::Summary => 3,
            Shape::Histogram(bins) => bins + 2,
            Shape::Table(r, c) => r as usize * c as usize,
            Shape::Survival(groups, intervals) => groups * (3 + 2 * intervals),
            Shape::Pairs(pairs) => pairs * 6,
            Shape::Glm(p) => 4 + packed_len(p) + p,
            Shape::Cox(p) => 3 + p + packed_len(p),
        }
    }
}

/// How many elements the vector of `analysis` holds.
pub fn vector_len(analysis: &Analysis, dict: &Dictionary) -> Result<usize> {
    let len = Shape::of(analysis, dict)?.len();
    if len > MAX_ELEMENTS {
        return Err(Error::invalid(format!(
            "this {} needs {len} values per node, more than secure aggregation carries ({MAX_ELEMENTS}); ask for fewer bins, groups or intervals",
            analysis.kind()
        )));
    }
    Ok(len)
}

/// What one node adds to a secure aggregate: its statistics with no
/// per-node suppression (noised first in a study under differential
/// privacy). Never leaves the node unmasked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Contribution {
    Count(u64),
    Summary(Moments),
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
    Survival(Vec<Tally>),
    Pairs(Vec<PairSums>),
    Glm(GlmStats),
    Cox(CoxStats),
}

impl Contribution {
    /// What a node adds in an exact study: everything it computed, except
    /// a summary whose sum one or two patients dominate, which it refuses
    /// (withholding it silently would leave the pooled sum without the
    /// node's patients while the result says it answered).
    pub fn exact(raw: RawStats, rules: Rules) -> Result<Self> {
        Ok(match raw {
            RawStats::Count(n) => Contribution::Count(n),
            RawStats::Summary(s) => {
                if summary_dominated(&s, rules.dominance_share) {
                    return Err(dominated());
                }
                Contribution::Summary(s.moments)
            }
            RawStats::Histogram { bins, below, above } => {
                Contribution::Histogram { bins, below, above }
            }
            RawStats::Table {
                rows,
                columns,
                cells,
            } => Contribution::Table {
                rows,
                columns,
                cells,
            },
            RawStats::Survival(t) => Contribution::Survival(t),
            RawStats::Pairs(p) => Contribution::Pairs(p),
            RawStats::Glm(g) => Contribution::Glm(g),
            RawStats::Cox(c) => Contribution::Cox(c),
        })
    }

    /// The vector this contribution adds, in the layout of its analysis.
    pub fn encode(&self) -> Result<Vec<u128>> {
        let mut out = Vec::new();
        let int = |out: &mut Vec<u128>, n: u64| out.push(u128::from(n));
        let real = |out: &mut Vec<u128>, x: f64, what: &str| -> Result<()> {
            out.push(encode_real(x, what)?);
            Ok(())
        };
        match self {
            Contribution::Count(n) => int(&mut out, *n),
            Contribution::Summary(m) => {
                int(&mut out, m.n);
                real(&mut out, m.sum, "the sum")?;
                real(&mut out, m.sum_squares, "the sum of squares")?;
            }
            Contribution::Histogram { bins, below, above } => {
                bins.iter().for_each(|b| int(&mut out, *b));
                int(&mut out, *below);
                int(&mut out, *above);
            }
            Contribution::Table { cells, .. } => cells.iter().for_each(|c| int(&mut out, *c)),
            Contribution::Survival(groups) => {
                for t in groups {
                    int(&mut out, t.counts.at_risk);
                    int(&mut out, t.beyond);
                    int(&mut out, t.beyond_events);
                    t.counts.events.iter().for_each(|d| int(&mut out, *d));
                    t.counts.censored.iter().for_each(|c| int(&mut out, *c));
                }
            }
            Contribution::Pairs(pairs) => {
                for p in pairs {
                    int(&mut out, p.n);
                    for x in [p.sum_x, p.sum_y, p.sum_xx, p.sum_yy, p.sum_xy] {
                        real(&mut out, x, "a correlation sum")?;
                    }
                }
            }
            Contribution::Glm(g) => {
                int(&mut out, g.n);
                for x in g.xtwx.iter().chain(&g.xtwz) {
                    real(&mut out, *x, "a model sum")?;
                }
                for x in [g.deviance, g.sum_y, g.null_deviance] {
                    real(&mut out, x, "a model sum")?;
                }
            }
            Contribution::Cox(c) => {
                int(&mut out, c.n);
                int(&mut out, c.events);
                real(&mut out, c.loglik, "a log likelihood")?;
                for x in c.gradient.iter().chain(&c.information) {
                    real(&mut out, *x, "a model sum")?;
                }
            }
        }
        if out.len() > MAX_ELEMENTS {
            return Err(Error::invalid(format!(
                "{} values are more than secure aggregation carries ({MAX_ELEMENTS})",
                out.len()
            )));
        }
        Ok(out)
    }

    /// Reads a (summed) vector back in the layout of `analysis`.
    pub fn decode(analysis: &Analysis, dict: &Dictionary, v: &[u128]) -> Result<Self> {
        let shape = Shape::of(analysis, dict)?;
        if v.len() != shape.len() {
            return Err(Error::invalid(format!(
                "a secure aggregate of this {} has {} values, not {}",
                analysis.kind(),
                shape.len(),
                v.len()
            )));
        }
        let mut r = Reader { v, at: 0 };
        Ok(match shape {
            Shape::Count => Contribution::Count(r.count("the count")?),
            Shape::Summary => Contribution::Summary(Moments {
                n: r.count("the count")?,
                sum: r.real(),
                sum_squares: r.real(),
            }),
            Shape::Histogram(bins) => Contribution::Histogram {
                bins: r.counts(bins, "a bin")?,
                below: r.count("a bin")?,
                above: r.count("a bin")?,
            },
            Shape::Table(rows, columns) => Contribution::Table {
                rows,
                columns,
                cells: r.counts(rows as usize * columns as usize, "a cell")?,
            },
            Shape::Survival(groups, intervals) => Contribution::Survival(
                (0..groups)
                    .map(|_| {
                        let at_risk = r.count("a number at risk")?;
                        let beyond = r.count("a number at risk")?;
                        let beyond_events = r.count("a number of events")?;
                        Ok(Tally {
                            counts: GroupCounts {
                                at_risk,
                                events: r.counts(intervals, "a number of events")?,
                                censored: r.counts(intervals, "a number censored")?,
                                open_end: false,
                            },
                            beyond,
                            beyond_events,
                        })
                    })
                    .collect::<Result<_>>()?,
            ),
            Shape::Pairs(pairs) => Contribution::Pairs(
                (0..pairs)
                    .map(|_| {
                        Ok(PairSums {
                            n: r.count("a pair's count")?,
                            sum_x: r.real(),
                            sum_y: r.real(),
                            sum_xx: r.real(),
                            sum_yy: r.real(),
                            sum_xy: r.real(),
                        })
                    })
                    .collect::<Result<_>>()?,
            ),
            Shape::Glm(p) => Contribution::Glm(GlmStats {
                n: r.count("the number of complete cases")?,
                xtwx: r.reals(packed_len(p)),
                xtwz: r.reals(p),
                deviance: r.real(),
                sum_y: r.real(),
                null_deviance: r.real(),
            }),
            Shape::Cox(p) => Contribution::Cox(CoxStats {
                n: r.count("the number of complete cases")?,
                events: r.count("the number of events")?,
                loglik: r.real(),
                gradient: r.reals(p),
                information: r.reals(packed_len(p)),
            }),
        })
    }

    /// The pooled disclosure control of a secure aggregate: the minimum
    /// cell size `k`, secondary suppression of tables, the at-risk rule of
    /// survival curves and the pairwise rule of correlations, applied to
    /// the pooled sums as a node applies them to its own. Noise may leave a
    /// pooled sum of squares under (Σx)²/n: it is raised to that floor.
    pub fn disclose(self, k: u32) -> Result<NodeStats> {
        let too_few = || {
            Error::disclosure(format!(
                "the pooled model rests on fewer than {k} patients (the minimum cell size)"
            ))
        };
        Ok(match self {
            Contribution::Count(n) => NodeStats::Count(cell(n, k)),
            Contribution::Summary(m) => {
                NodeStats::Summary((m.n >= u64::from(k).max(1)).then(|| {
                    let n = m.n as f64;
                    Moments {
                        n: m.n,
                        sum: m.sum,
                        sum_squares: m.sum_squares.max(m.sum * m.sum / n),
                    }
                }))
            }
            Contribution::Histogram { bins, below, above } => NodeStats::Histogram {
                bins: bins.into_iter().map(|n| cell(n, k)).collect(),
                below: cell(below, k),
                above: cell(above, k),
            },
            Contribution::Table {
                rows,
                columns,
                cells,
            } => NodeStats::Table {
                rows,
                columns,
                cells: suppress_table(cells, rows, columns, k),
            },
            Contribution::Survival(groups) => NodeStats::Survival(survival::disclose(groups, k)),
            Contribution::Pairs(pairs) => NodeStats::Pairs(correlation::disclose(pairs, k)),
            Contribution::Glm(g) => {
                if g.n < u64::from(k) {
                    return Err(too_few());
                }
                NodeStats::Glm(g)
            }
            Contribution::Cox(c) => {
                if c.n < u64::from(k) {
                    return Err(too_few());
                }
                NodeStats::Cox(c)
            }
        })
    }
}

pub(crate) fn dominated() -> Error {
    Error::disclosure(
        "one or two patients dominate this node's sum, so the node withholds its part; under secure aggregation it does so by refusing, and the pooled result is computed without it",
    )
}

/// Reads elements of a summed vector in order.
struct Reader<'a> {
    v: &'a [u128],
    at: usize,
}

impl Reader<'_> {
    fn next(&mut self) -> u128 {
        let x = self.v[self.at];
        self.at += 1;
        x
    }
    fn count(&mut self, what: &str) -> Result<u64> {
        decode_count(self.next(), what)
    }
    fn counts(&mut self, n: usize, what: &str) -> Result<Vec<u64>> {
        (0..n).map(|_| self.count(what)).collect()
    }
    fn real(&mut self) -> f64 {
        decode_real(self.next())
    }
    fn reals(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.real()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{Cell, SummarySums};
    use proptest::prelude::*;

    fn query(json: &str) -> Query {
        Query::from_json(json).unwrap()
    }

    proptest! {
        #[test]
        fn fixed_point_round_trips_and_adds(xs in proptest::collection::vec(-1e15f64..1e15, 1..40)) {
            let mut acc = vec![0u128];
            for x in &xs {
                let e = encode_real(*x, "x").unwrap();
                prop_assert!((decode_real(e) - x).abs() <= 0.5 / SCALE + x.abs() * f64::EPSILON);
                add_into(&mut acc, &[e]);
            }
            let want: f64 = xs.iter().sum();
            let tolerance = xs.len() as f64 / SCALE + xs.iter().map(|x| x.abs()).sum::<f64>() * 4.0 * f64::EPSILON;
            prop_assert!((decode_real(acc[0]) - want).abs() <= tolerance);
        }
    }

    #[test]
    fn reals_out_of_range_are_refused_with_a_reason() {
        let e = encode_real(f64::NAN, "the sum").unwrap_err();
        assert!(e.message.contains("the sum is not a finite number"), "{e}");
        let e = encode_real(MAX_REAL, "the sum").unwrap_err();
        assert!(e.message.contains("2^80"), "{e}");
        assert_eq!(decode_real(encode_real(-2.5, "x").unwrap()), -2.5);
    }

    #[test]
    fn contributions_round_trip_in_the_layout_of_their_analysis() {
        let d = Dictionary::cardiovascular();
        let cases = [
            (r#"{"analysis": {"count": {}}}"#, Contribution::Count(42)),
            (
                r#"{"analysis": {"summary": {"variable": "age"}}}"#,
                Contribution::Summary(Moments {
                    n: 12,
                    sum: 780.5,
                    sum_squares: 51_000.25,
                }),
            ),
            (
                r#"{"analysis": {"histogram": {"variable": "age", "edges": [20, 40, 60]}}}"#,
                Contribution::Histogram {
                    bins: vec![3, 9],
                    below: 0,
                    above: 17,
                },
            ),
            (
                r#"{"analysis": {"two_by_two": {"exposure": "diabetes", "outcome": "death"}}}"#,
                Contribution::Table {
                    rows: 2,
                    columns: 2,
                    cells: vec![10, 2, 30, 4],
                },
            ),
            (
                r#"{"analysis": {"kaplan_meier": {"time": "followup_days", "event": "death", "grid": [0, 10, 20]}}}"#,
                Contribution::Survival(vec![Tally {
                    counts: GroupCounts {
                        at_risk: 9,
                        events: vec![1, 2],
                        censored: vec![3, 3],
                        open_end: false,
                    },
                    beyond: 2,
                    beyond_events: 1,
                }]),
            ),
            (
                r#"{"analysis": {"correlation": {"variables": ["age", "bmi"]}}}"#,
                Contribution::Pairs(vec![
                    PairSums {
                        n: 6,
                        sum_x: 1.0,
                        sum_y: 2.0,
                        sum_xx: 3.0,
                        sum_yy: 4.0,
                        sum_xy: -2.5,
                    };
                    3
                ]),
            ),
            (
                r#"{"analysis": {"glm": {"family": "gaussian", "outcome": "sbp", "covariates": ["age"]}}}"#,
                Contribution::Glm(GlmStats {
                    n: 10,
                    xtwx: vec![10.0, 600.0, 40000.0],
                    xtwz: vec![1400.0, 90000.0],
                    deviance: 50.0,
                    sum_y: 1400.0,
                    null_deviance: 0.0,
                }),
            ),
            (
                r#"{"analysis": {"cox": {"time": "followup_days", "event": "death", "covariates": ["age"]}}}"#,
                Contribution::Cox(CoxStats {
                    n: 10,
                    events: 4,
                    loglik: -3.5,
                    gradient: vec![0.125],
                    information: vec![2.0],
                }),
            ),
        ];
        for (json, c) in cases {
            let q = query(json);
            let v = c.encode().unwrap();
            assert_eq!(v.len(), vector_len(&q.analysis, &d).unwrap(), "{json}");
            assert_eq!(
                Contribution::decode(&q.analysis, &d, &v).unwrap(),
                c,
                "{json}"
            );
            // One value short is refused.
            assert!(Contribution::decode(&q.analysis, &d, &v[1..]).is_err());
        }
    }

    #[test]
    fn a_count_that_sums_negative_is_refused() {
        let d = Dictionary::cardiovascular();
        let q = query(r#"{"analysis": {"count": {}}}"#);
        let e = Contribution::decode(&q.analysis, &d, &[u128::MAX]).unwrap_err();
        assert!(e.message.contains("negative"), "{e}");
    }

    #[test]
    fn the_pooled_sums_get_the_minimum_cell_size_and_secondary_suppression() {
        assert_eq!(
            Contribution::Count(4).disclose(5).unwrap(),
            NodeStats::Count(Cell::Suppressed)
        );
        assert_eq!(
            Contribution::Count(5).disclose(5).unwrap(),
            NodeStats::Count(Cell::Count(5))
        );
        let t = Contribution::Table {
            rows: 1,
            columns: 3,
            cells: vec![10, 2, 7],
        };
        assert_eq!(
            t.disclose(5).unwrap(),
            NodeStats::Table {
                rows: 1,
                columns: 3,
                cells: vec![Cell::Count(10), Cell::Suppressed, Cell::Suppressed]
            }
        );
        // Noise left Σx² under (Σx)²/n: raised to the floor.
        let m = Contribution::Summary(Moments {
            n: 10,
            sum: 100.0,
            sum_squares: 900.0,
        });
        let NodeStats::Summary(Some(m)) = m.disclose(5).unwrap() else {
            panic!()
        };
        assert_eq!(m.sum_squares, 1000.0);
        let few = Contribution::Glm(GlmStats {
            n: 3,
            ..Default::default()
        });
        assert_eq!(
            few.disclose(5).unwrap_err().code,
            crate::ErrorCode::Disclosure
        );
    }

    #[test]
    fn a_dominated_sum_is_refused_not_withheld() {
        let d = Dictionary::cardiovascular();
        let diameter = d.get("aaa_diameter").unwrap();
        let mut values = vec![10.0; 8];
        values.extend([400.0, 400.0]);
        let s = SummarySums::of(diameter, "aaa_diameter", &values);
        let e = Contribution::exact(RawStats::Summary(s), Rules::new(5)).unwrap_err();
        assert_eq!(e.code, crate::ErrorCode::Disclosure);
        assert!(e.message.contains("dominate"), "{e}");
    }

    #[test]
    fn results_per_site_are_refused() {
        let q = query(r#"{"analysis": {"count": {}}, "by_site": true}"#);
        let e = supported(&q).unwrap_err();
        assert_eq!(e.code, crate::ErrorCode::Policy);
        assert!(e.message.contains("by_site"), "{e}");
        supported(&query(r#"{"analysis": {"count": {}}}"#)).unwrap();
    }
}
