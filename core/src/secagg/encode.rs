//! What a node masks: its clear release (the `NodeStats` it would send in
//! a plain study, after disclosure control and noise), laid out as a
//! vector over Z/2^128.
//!
//! A suppressed or withheld value is encoded as 0 with a suppression
//! indicator of 1 beside it; indicators are summed like everything else,
//! so the coordinator learns how many nodes suppressed a cell, never
//! which, and releases a pooled cell only when none did, as the plain pool
//! does.
//!
//! Counts are integers and stay exact. Sums of real values are carried in
//! fixed point with [`FRACTION_BITS`] = 32 fractional bits (rounding error
//! at most 1.2e-10 per node), and each node's magnitude must stay under
//! [`MAX_REAL`] = 2^80, which leaves room for any realistic number of nodes
//! inside the 127 bits of a signed value. The sum is read back as a
//! two's-complement i128.
//!
//! The layout is fixed by the analysis alone (public), so the coordinator
//! knows the length and meaning of every element before it sees a vector:
//!
//! | analysis | elements |
//! |---|---|
//! | count | count, suppressed |
//! | summary | n, Σx, Σx², withheld |
//! | histogram, quantiles (m = bins + 2) | m counts (bins, below, above), m indicators |
//! | table, two-by-two | r·c counts, r·c indicators |
//! | Kaplan-Meier, per group | suppressed, merged, at risk, I events, I censored, I one-hot of the intervals kept |
//! | correlation, per pair | n, Σx, Σy, Σx², Σy², Σxy, withheld |
//! | GLM round | n, X'WX, X'Wz, deviance, Σy, null deviance |
//! | Cox round | n, events, log likelihood, gradient, information |

use crate::cell::Cell;
use crate::dictionary::Dictionary;
use crate::error::{Error, Result};
use crate::models::linalg::packed_len;
use crate::models::survival::GroupStats;
use crate::query::{Analysis, Query};
use crate::stats::NodeStats;

/// Fractional bits of a real value in fixed point.
pub const FRACTION_BITS: u32 = 32;
/// Largest magnitude of a real value a node may add (2^80).
pub const MAX_REAL: f64 = 1_208_925_819_614_629_174_706_176.0;
/// Most elements in one vector (a Kaplan-Meier grid of 5,000 intervals in
/// a dozen groups fits).
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
            "{what} is too large for secure aggregation's fixed-point encoding (its magnitude must stay under 2^80)"
        )));
    }
    Ok(((x * SCALE).round() as i128) as u128)
}

/// A (summed) real value back from fixed point.
pub fn decode_real(v: u128) -> f64 {
    (v as i128) as f64 / SCALE
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
pub(crate) enum Shape {
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

/// Why a GBDT is not run under secure aggregation.
pub fn gbdt_refused() -> Error {
    Error::policy(
        "gbdt is not yet offered under secure aggregation: the coordinator needs each hospital's own segment ends to pick splits every site can release; run it in a study without secure_aggregation",
    )
}

pub fn performance_refused() -> Error {
    Error::policy(
        "model_performance is not yet offered under secure aggregation: the coordinator needs each hospital's own score segments to pool them at ends every site released; run it in a study without secure_aggregation",
    )
}

impl Shape {
    pub(crate) fn of(analysis: &Analysis, dict: &Dictionary) -> Result<Self> {
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
            Analysis::Gbdt { .. } => return Err(gbdt_refused()),
            Analysis::ModelPerformance { .. } => return Err(performance_refused()),
        })
    }

    pub(crate) fn len(self) -> usize {
        match self {
            Shape::Count => 2,
            Shape::Summary => 4,
            Shape::Histogram(bins) => 2 * (bins + 2),
            Shape::Table(r, c) => 2 * r as usize * c as usize,
            Shape::Survival(groups, intervals) => groups * (3 + 3 * intervals),
            Shape::Pairs(pairs) => pairs * 7,
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

fn flag(b: bool) -> u128 {
    u128::from(b)
}

/// Counts then indicators of a list of cells.
fn cells(out: &mut Vec<u128>, cells: &[Cell]) {
    out.extend(cells.iter().map(|c| u128::from(c.count().unwrap_or(0))));
    out.extend(cells.iter().map(|c| flag(*c == Cell::Suppressed)));
}

/// The vector of a node's clear release `stats` for `analysis`, which it
/// must fit (the node checked it as the coordinator checks a clear answer).
pub fn encode(stats: &NodeStats, analysis: &Analysis, dict: &Dictionary) -> Result<Vec<u128>> {
    let shape = Shape::of(analysis, dict)?;
    let mut out = Vec::with_capacity(shape.len());
    let real = |out: &mut Vec<u128>, x: f64, what: &str| -> Result<()> {
        out.push(encode_real(x, what)?);
        Ok(())
    };
    match (shape, stats) {
        (Shape::Count, NodeStats::Count(c)) => cells(&mut out, &[*c]),
        (Shape::Summary, NodeStats::Summary(m)) => {
            let withheld = m.is_none();
            let m = m.unwrap_or_default();
            out.push(u128::from(m.n));
            real(&mut out, m.sum, "the sum")?;
            real(&mut out, m.sum_squares, "the sum of squares")?;
            out.push(flag(withheld));
        }
        (Shape::Histogram(_), NodeStats::Histogram { bins, below, above }) => {
            let all: Vec<Cell> = bins.iter().chain([below, above]).copied().collect();
            cells(&mut out, &all);
        }
        (Shape::Table(..), NodeStats::Table { cells: c, .. }) => cells(&mut out, c),
        (Shape::Survival(_, intervals), NodeStats::Survival(groups)) => {
            for g in groups {
                match g {
                    GroupStats::Suppressed => {
                        out.push(1);
                        out.extend(std::iter::repeat_n(0, 2 + 3 * intervals));
                    }
                    GroupStats::Released(c) => {
                        let kept = c.events.len();
                        if kept == 0 || kept > intervals || c.censored.len() != kept {
                            return Err(Error::internal(
                                "a survival group does not fit the grid (checked)",
                            ));
                        }
                        out.push(0);
                        out.push(flag(kept < intervals || c.open_end));
                        out.push(u128::from(c.at_risk));
                        for counts in [&c.events, &c.censored] {
                            out.extend(counts.iter().map(|n| u128::from(*n)));
                            out.extend(std::iter::repeat_n(0, intervals - kept));
                        }
                        out.extend((1..=intervals).map(|l| flag(l == kept)));
                    }
                }
            }
        }
        (Shape::Pairs(_), NodeStats::Pairs(pairs)) => {
            for p in pairs {
                let s = p.unwrap_or_default();
                out.push(u128::from(s.n));
                for x in [s.sum_x, s.sum_y, s.sum_xx, s.sum_yy, s.sum_xy] {
                    real(&mut out, x, "a correlation sum")?;
                }
                out.push(flag(p.is_none()));
            }
        }
        (Shape::Glm(_), NodeStats::Glm(g)) => {
            out.push(u128::from(g.n));
            for x in g.xtwx.iter().chain(&g.xtwz) {
                real(&mut out, *x, "a model sum")?;
            }
            for x in [g.deviance, g.sum_y, g.null_deviance] {
                real(&mut out, x, "a model sum")?;
            }
        }
        (Shape::Cox(_), NodeStats::Cox(c)) => {
            out.push(u128::from(c.n));
            out.push(u128::from(c.events));
            real(&mut out, c.loglik, "a log likelihood")?;
            for x in c.gradient.iter().chain(&c.information) {
                real(&mut out, *x, "a model sum")?;
            }
        }
        _ => {
            return Err(Error::internal(format!(
                "statistics of another kind than the {} asked for",
                analysis.kind()
            )))
        }
    }
    if out.len() != shape.len() {
        return Err(Error::internal(format!(
            "the {} release has {} values where its vector has {}",
            analysis.kind(),
            out.len(),
            shape.len()
        )));
    }
    Ok(out)
}
