//! The unmasked sum of a roster's vectors, read back and pooled by the
//! plain pool's rules: a cell is released only when no node suppressed its
//! part and the total reaches k; a survival curve is cut to the coarsest
//! partition any node kept; a correlation entry any node withheld is
//! withheld. Where the plain pool names nodes, this says how many.

use super::encode::{decode_real, Shape};
use crate::cell::PooledCell;
use crate::dictionary::Dictionary;
use crate::error::{Error, Result};
use crate::models::correlation::{self, PairSums};
use crate::models::cox::CoxStats;
use crate::models::derived;
use crate::models::glm::GlmStats;
use crate::models::linalg::packed_len;
use crate::models::survival::{self, GroupCounts, PooledGroup};
use crate::pool::{pooled_cell, summary_value, PooledValue};
use crate::query::Analysis;
use crate::stats::{Moments, NodeStats};

/// One survival group summed over the roster.
#[derive(Debug, Clone, PartialEq)]
pub struct SummedGroup {
    pub suppressed: u64,
    pub merged: u64,
    /// Released counts on the whole grid (a node that merged its tail
    /// holds the merged sums in its last kept interval, zeros after).
    pub counts: GroupCounts,
    /// How many nodes kept each number of intervals (index 0: one).
    pub kept: Vec<u64>,
}

/// The sum of a roster's vectors, read in the layout of its analysis.
#[derive(Debug, Clone, PartialEq)]
pub enum Summed {
    /// Counts, histogram cells (bins, below, above) or table cells: the
    /// sum of the parts released and how many nodes suppressed each.
    Cells {
        totals: Vec<u64>,
        suppressed: Vec<u64>,
    },
    Summary {
        moments: Moments,
        withheld: u64,
    },
    Survival(Vec<SummedGroup>),
    /// Each pair's sums and how many nodes withheld it.
    Pairs(Vec<(PairSums, u64)>),
    Glm(GlmStats),
    Cox(CoxStats),
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
        u64::try_from(self.next() as i128).map_err(|_| {
            Error::invalid(format!(
                "the unmasked sum is not valid statistics ({what} came out negative or too large): a node masked for another roster or step, or a share was corrupted"
            ))
        })
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

impl Summed {
    /// Reads a sum in the layout of `analysis`; `nodes` is how many vectors
    /// it adds, which bounds every indicator.
    pub fn decode(
        analysis: &Analysis,
        dict: &Dictionary,
        v: &[u128],
        nodes: usize,
    ) -> Result<Self> {
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
        let n = nodes as u64;
        let flags = |r: &mut Reader, len: usize| -> Result<Vec<u64>> {
            let f = r.counts(len, "a suppression indicator")?;
            if f.iter().any(|x| *x > n) {
                return Err(Error::invalid(
                    "the unmasked sum counts more suppressing nodes than the roster has: a node masked for another roster, or a share was corrupted",
                ));
            }
            Ok(f)
        };
        Ok(match shape {
            Shape::Count | Shape::Histogram(_) | Shape::Table(..) => {
                let cells = shape.len() / 2;
                Summed::Cells {
                    totals: r.counts(cells, "a count")?,
                    suppressed: flags(&mut r, cells)?,
                }
            }
            Shape::Summary => Summed::Summary {
                moments: Moments {
                    n: r.count("the count")?,
                    sum: r.real(),
                    sum_squares: r.real(),
                },
                withheld: flags(&mut r, 1)?[0],
            },
            Shape::Survival(groups, intervals) => Summed::Survival(
                (0..groups)
                    .map(|_| {
                        let head = flags(&mut r, 2)?;
                        let at_risk = r.count("a number at risk")?;
                        let events = r.counts(intervals, "a number of events")?;
                        let censored = r.counts(intervals, "a number censored")?;
                        Ok(SummedGroup {
                            suppressed: head[0],
                            merged: head[1],
                            counts: GroupCounts {
                                at_risk,
                                events,
                                censored,
                                open_end: false,
                            },
                            kept: flags(&mut r, intervals)?,
                        })
                    })
                    .collect::<Result<_>>()?,
            ),
            Shape::Pairs(pairs) => Summed::Pairs(
                (0..pairs)
                    .map(|_| {
                        let s = PairSums {
                            n: r.count("a pair's count")?,
                            sum_x: r.real(),
                            sum_y: r.real(),
                            sum_xx: r.real(),
                            sum_yy: r.real(),
                            sum_xy: r.real(),
                        };
                        Ok((s, flags(&mut r, 1)?[0]))
                    })
                    .collect::<Result<_>>()?,
            ),
            Shape::Glm(p) => Summed::Glm(GlmStats {
                n: r.count("the number of complete cases")?,
                xtwx: r.reals(packed_len(p)),
                xtwz: r.reals(p),
                deviance: r.real(),
                sum_y: r.real(),
                null_deviance: r.real(),
            }),
            Shape::Cox(p) => Summed::Cox(CoxStats {
                n: r.count("the number of complete cases")?,
                events: r.count("the number of events")?,
                loglik: r.real(),
                gradient: r.reals(p),
                information: r.reals(packed_len(p)),
            }),
        })
    }

    /// The pooled statistics of one round of a fit, refused when they rest
    /// on fewer than `k` patients; `None` for other analyses.
    pub fn model(&self, k: u32) -> Result<Option<NodeStats>> {
        let n = match self {
            Summed::Glm(g) => g.n,
            Summed::Cox(c) => c.n,
            _ => return Ok(None),
        };
        if n < u64::from(k) {
            return Err(Error::disclosure(format!(
                "the pooled model rests on fewer than {k} patients (the minimum cell size)"
            )));
        }
        Ok(Some(match self.clone() {
            Summed::Glm(g) => NodeStats::Glm(g),
            Summed::Cox(c) => NodeStats::Cox(c),
            _ => unreachable!("matched above"),
        }))
    }

    /// How many nodes withheld their whole answer, when that can be read
    /// from the sum (a summary or a count).
    pub fn withheld_whole(&self) -> u64 {
        match self {
            Summed::Summary { withheld, .. } => *withheld,
            Summed::Cells { suppressed, .. } if suppressed.len() == 1 => suppressed[0],
            _ => 0,
        }
    }

    /// The pooled value of a one-shot analysis, by the plain pool's rules
    /// with the network's minimum cell size `k`.
    pub fn pooled(self, analysis: &Analysis, dict: &Dictionary, k: u32) -> Result<PooledValue> {
        let mismatch = || Error::internal("a secure sum of another analysis");
        let count = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        let cells = |totals: &[u64], suppressed: &[u64]| -> Vec<PooledCell> {
            totals
                .iter()
                .zip(suppressed)
                .map(|(t, s)| pooled_cell(*t, count(*s), k))
                .collect()
        };
        Ok(match (analysis, self) {
            (Analysis::Count {}, Summed::Cells { totals, suppressed }) => PooledValue::Count {
                n: cells(&totals, &suppressed).remove(0),
            },
            (Analysis::Summary { variable }, Summed::Summary { moments, .. }) => {
                summary_value(variable, moments, k)?
            }
            (
                Analysis::Histogram { variable, edges }
                | Analysis::Quantiles {
                    variable, edges, ..
                },
                Summed::Cells { totals, suppressed },
            ) => {
                let mut bins = cells(&totals, &suppressed);
                let above = bins.pop().ok_or_else(mismatch)?;
                let below = bins.pop().ok_or_else(mismatch)?;
                match analysis {
                    Analysis::Quantiles { probabilities, .. } => PooledValue::Quantiles(
                        derived::quantiles(variable, edges, &bins, &below, &above, probabilities),
                    ),
                    _ => PooledValue::Histogram {
                        variable: variable.clone(),
                        edges: edges.clone(),
                        bins,
                        below,
                        above,
                    },
                }
            }
            (
                Analysis::Table { row, column }
                | Analysis::TwoByTwo {
                    exposure: row,
                    outcome: column,
                },
                Summed::Cells { totals, suppressed },
            ) => {
                let row_levels = dict.get(row)?.levels();
                let column_levels = dict.get(column)?.levels();
                let flat = cells(&totals, &suppressed);
                let cells: Vec<Vec<PooledCell>> = flat
                    .chunks(column_levels.len().max(1))
                    .map(<[PooledCell]>::to_vec)
                    .collect();
                match analysis {
                    Analysis::TwoByTwo { exposure, outcome } => {
                        PooledValue::TwoByTwo(derived::two_by_two(
                            (exposure, outcome),
                            (&row_levels[1], &column_levels[1]),
                            &cells,
                        )?)
                    }
                    _ => PooledValue::Table {
                        row: row.clone(),
                        column: column.clone(),
                        row_levels,
                        column_levels,
                        cells,
                    },
                }
            }
            (
                Analysis::KaplanMeier {
                    time,
                    event,
                    group,
                    grid,
                },
                Summed::Survival(groups),
            ) => {
                let points = grid.points()?;
                let labels = analysis.survival_groups(dict)?;
                let intervals = points.len() - 1;
                let pooled = groups
                    .into_iter()
                    .map(|g| {
                        // The coarsest partition any node kept.
                        let kept = g
                            .kept
                            .iter()
                            .position(|n| *n > 0)
                            .map_or(intervals, |i| i + 1);
                        PooledGroup {
                            total: survival::coarsen(g.counts, kept),
                            suppressed_at: Vec::new(),
                            merged_at: Vec::new(),
                            suppressed_by: count(g.suppressed),
                            merged_by: count(g.merged),
                        }
                    })
                    .collect();
                PooledValue::KaplanMeier(survival::finish(
                    &points,
                    &labels,
                    pooled,
                    (time, event, group.as_deref()),
                )?)
            }
            (Analysis::Correlation { variables, missing }, Summed::Pairs(pairs)) => {
                let (total, withheld): (Vec<PairSums>, Vec<u64>) = pairs.into_iter().unzip();
                let described = withheld
                    .into_iter()
                    .map(|w| match w {
                        0 => None,
                        1 => Some("1 node".to_string()),
                        w => Some(format!("{w} nodes")),
                    })
                    .collect();
                PooledValue::Correlation(correlation::finish(
                    variables, *missing, &total, described,
                ))
            }
            (Analysis::Glm { .. } | Analysis::Cox { .. }, _) => {
                return Err(Error::internal(
                    "regression models are pooled round by round by the fitting loop",
                ))
            }
            _ => return Err(mismatch()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::Cell;
    use crate::models::survival::GroupStats;
    use crate::pool::pool_value;
    use crate::secagg::encode::encode;
    use crate::secagg::mask::add_into;
    use crate::Query;

    /// Pools `answers` in the clear and through their encoded sum; the
    /// two must agree but for names.
    fn both(json: &str, answers: &[NodeStats]) -> (serde_json::Value, serde_json::Value) {
        let d = Dictionary::cardiovascular();
        let q = Query::from_json(json).unwrap();
        let named: Vec<(String, NodeStats)> = answers
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("n{i}"), s.clone()))
            .collect();
        let plain = pool_value(&q.analysis, &d, &named, 5).unwrap();
        let len = crate::secagg::vector_len(&q.analysis, &d).unwrap();
        let mut sum = vec![0u128; len];
        for s in answers {
            add_into(&mut sum, &encode(s, &q.analysis, &d).unwrap());
        }
        let secure = Summed::decode(&q.analysis, &d, &sum, answers.len())
            .unwrap()
            .pooled(&q.analysis, &d, 5)
            .unwrap();
        (
            serde_json::to_value(plain).unwrap(),
            serde_json::to_value(secure).unwrap(),
        )
    }

    #[test]
    fn suppressed_cells_are_counted_never_named_and_pool_as_in_the_clear() {
        let (p, s) = both(
            r#"{"analysis": {"count": {}}}"#,
            &[
                NodeStats::Count(Cell::Count(10)),
                NodeStats::Count(Cell::Suppressed),
                NodeStats::Count(Cell::Count(7)),
            ],
        );
        assert_eq!(p["n"]["at_least"], 17);
        assert_eq!(s["n"]["at_least"], 17);
        assert_eq!(p["n"]["suppressed_at"], serde_json::json!(["n1"]));
        assert_eq!(s["n"]["suppressed_by"], 1);
        assert!(s["n"].get("suppressed_at").is_none());
        assert!(s["n"].get("count").is_none());

        let table = |a: u64, b: Cell| NodeStats::Table {
            rows: 2,
            columns: 2,
            cells: vec![Cell::Count(a), b, Cell::Count(9), Cell::Count(30)],
        };
        let (p, s) = both(
            r#"{"analysis": {"table": {"row": "sex", "column": "diabetes"}}}"#,
            &[
                table(10, Cell::Count(6)),
                table(12, Cell::Count(8)),
                table(5, Cell::Count(5)),
            ],
        );
        assert_eq!(p, s);
    }

    #[test]
    fn survival_curves_keep_the_coarsest_partition_and_count_who_merged() {
        let released = |events: Vec<u64>, censored: Vec<u64>| {
            let at_risk = events.iter().chain(&censored).sum();
            GroupStats::Released(GroupCounts {
                at_risk,
                events,
                censored,
                open_end: false,
            })
        };
        let answers = [
            NodeStats::Survival(vec![released(vec![3, 4, 5], vec![6, 7, 8])]),
            NodeStats::Survival(vec![released(vec![2, 9], vec![5, 20])]),
            NodeStats::Survival(vec![GroupStats::Suppressed]),
        ];
        let (p, s) = both(
            r#"{"analysis": {"kaplan_meier": {"time": "followup_days", "event": "death", "grid": [0, 10, 20, 30]}}}"#,
            &answers,
        );
        let (pc, sc) = (&p["curves"][0], &s["curves"][0]);
        assert_eq!(pc["n_event"], sc["n_event"]);
        assert_eq!(pc["n_event"], serde_json::json!([5, 18]));
        assert_eq!(pc["merged_after"], sc["merged_after"]);
        assert_eq!(sc["merged_by"], 1);
        assert_eq!(sc["suppressed_by"], 1);
        assert_eq!(pc["survival"], sc["survival"]);
    }

    #[test]
    fn a_sum_that_is_no_statistics_is_refused() {
        let d = Dictionary::cardiovascular();
        let q = Query::from_json(r#"{"analysis": {"count": {}}}"#).unwrap();
        let e = Summed::decode(&q.analysis, &d, &[u128::MAX, 0], 3).unwrap_err();
        assert!(e.message.contains("negative"), "{e}");
        let e = Summed::decode(&q.analysis, &d, &[4, 4], 3).unwrap_err();
        assert!(e.message.contains("more suppressing nodes"), "{e}");
        assert!(Summed::decode(&q.analysis, &d, &[4], 3).is_err());
    }
}
