//! Results derived from pooled counts: quantiles estimated from a pooled
//! histogram on public bins, and two-by-two measures (odds ratio, relative
//! risk, chi-square) from a pooled contingency table.

use serde::{Deserialize, Serialize};

use super::inference::{chi_square_p, Reference};
use crate::cell::PooledCell;
use crate::error::{Error, Result};

/// One estimated quantile: linear interpolation inside the bin where the
/// cumulative count crosses it. The true value lies in `[bin_lower,
/// bin_upper]`; the estimate is never an observed value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quantile {
    pub probability: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bin_lower: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bin_upper: Option<f64>,
    /// Why there is no estimate, or what limits it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantilesResult {
    pub variable: String,
    /// Patients counted in released cells.
    pub n: u64,
    pub quantiles: Vec<Quantile>,
    /// The widest bin: the precision of every estimate.
    pub precision: f64,
    pub method: String,
    /// Cells that were suppressed somewhere (their counts are left out).
    pub suppressed_cells: u32,
}

pub fn quantiles(
    variable: &str,
    edges: &[f64],
    bins: &[PooledCell],
    below: &PooledCell,
    above: &PooledCell,
    probabilities: &[f64],
) -> QuantilesResult {
    let count = |c: &PooledCell| c.count.or(c.at_least).unwrap_or(0);
    let suppressed = bins
        .iter()
        .chain([below, above])
        .filter(|c| c.is_suppressed())
        .count() as u32;
    let (nb, na) = (count(below), count(above));
    let inside: Vec<u64> = bins.iter().map(count).collect();
    let n = nb + na + inside.iter().sum::<u64>();
    let precision = edges.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    let quantiles = probabilities
        .iter()
        .map(|&p| {
            let mut q = Quantile {
                probability: p,
                estimate: None,
                bin_lower: None,
                bin_upper: None,
                note: None,
            };
            if n == 0 {
                q.note = Some("no released counts".into());
                return q;
            }
            let target = p * n as f64;
            let mut cum = nb as f64;
            if target < cum || (p == 0.0 && nb > 0) {
                q.bin_upper = Some(edges[0]);
                q.note = Some("below the first bin edge".into());
                return q;
            }
            for (i, &c) in inside.iter().enumerate() {
                let next = cum + c as f64;
                if c > 0 && target <= next {
                    let (lo, hi) = (edges[i], edges[i + 1]);
                    q.estimate = Some(lo + (target - cum) / c as f64 * (hi - lo));
                    q.bin_lower = Some(lo);
                    q.bin_upper = Some(hi);
                    if suppressed > 0 {
                        q.note = Some("approximate: suppressed cells are left out".into());
                    }
                    return q;
                }
                cum = next;
            }
            q.bin_lower = Some(edges[edges.len() - 1]);
            q.note = Some("above the last bin edge".into());
            q
        })
        .collect();
    QuantilesResult {
        variable: variable.into(),
        n,
        quantiles,
        precision,
        method: "linear interpolation within the pooled histogram's bins".into(),
        suppressed_cells: suppressed,
    }
}

/// Odds ratio, relative risk and chi-square of a 2×2 table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TwoByTwoResult {
    pub exposure: String,
    pub outcome: String,
    /// The level counted as exposed and as the outcome.
    pub exposed_level: String,
    pub outcome_level: String,
    /// [[exposed & outcome, exposed & no outcome], [unexposed & outcome, unexposed & neither]].
    pub table: [[u64; 2]; 2],
    pub odds_ratio: Measure,
    pub relative_risk: Measure,
    /// Pearson's chi-square without continuity correction, 1 df.
    pub chi_square: f64,
    pub p_value: f64,
    /// With Yates' continuity correction, as R's `chisq.test` by default.
    pub chi_square_yates: f64,
    pub p_value_yates: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Measure {
    pub estimate: f64,
    pub ci_lower: f64,
    pub ci_upper: f64,
}

/// `cells` row-major over the dictionary's level order (exposure rows,
/// outcome columns); the second level of each is "exposed" / "outcome".
pub fn two_by_two(
    names: (&str, &str),
    levels: (&str, &str),
    cells: &[Vec<PooledCell>],
) -> Result<TwoByTwoResult> {
    let get = |r: usize, c: usize| {
        cells[r][c].count.ok_or_else(|| {
            Error::disclosure(format!(
                "a cell of the {} × {} table was suppressed{}; odds ratio and relative risk need all four (widen the cohort)",
                names.0,
                names.1,
                if cells[r][c].suppressed_at.is_empty() {
                    String::new()
                } else {
                    format!(" at {}", cells[r][c].suppressed_at.join(", "))
                }
            ))
        })
    };
    let (a, b, c, d) = (get(1, 1)?, get(1, 0)?, get(0, 1)?, get(0, 0)?);
    let (af, bf, cf, df) = (a as f64, b as f64, c as f64, d as f64);
    let z = Reference::Normal.critical();
    let or = (af * df) / (bf * cf);
    let se_or = (1.0 / af + 1.0 / bf + 1.0 / cf + 1.0 / df).sqrt();
    let rr = (af / (af + bf)) / (cf / (cf + df));
    let se_rr = (1.0 / af - 1.0 / (af + bf) + 1.0 / cf - 1.0 / (cf + df)).sqrt();
    let n = af + bf + cf + df;
    let margins = (af + bf) * (cf + df) * (af + cf) * (bf + df);
    let chi = n * (af * df - bf * cf).powi(2) / margins;
    let yates_diff = ((af * df - bf * cf).abs() - n / 2.0).max(0.0);
    let chi_y = n * yates_diff.powi(2) / margins;
    Ok(TwoByTwoResult {
        exposure: names.0.into(),
        outcome: names.1.into(),
        exposed_level: levels.0.into(),
        outcome_level: levels.1.into(),
        table: [[a, b], [c, d]],
        odds_ratio: Measure {
            estimate: or,
            ci_lower: (or.ln() - z * se_or).exp(),
            ci_upper: (or.ln() + z * se_or).exp(),
        },
        relative_risk: Measure {
            estimate: rr,
            ci_lower: (rr.ln() - z * se_rr).exp(),
            ci_upper: (rr.ln() + z * se_rr).exp(),
        },
        chi_square: chi,
        p_value: chi_square_p(chi, 1.0),
        chi_square_yates: chi_y,
        p_value_yates: chi_square_p(chi_y, 1.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(n: u64) -> PooledCell {
        PooledCell {
            count: Some(n),
            ..PooledCell::default()
        }
    }

    #[test]
    fn two_by_two_textbook() {
        // exposed: 20 cases, 80 non-cases; unexposed: 10 cases, 90 non-cases.
        let cells = vec![vec![cell(90), cell(10)], vec![cell(80), cell(20)]];
        let r = two_by_two(("smoker", "mi"), ("true", "true"), &cells).unwrap();
        assert!((r.odds_ratio.estimate - 2.25).abs() < 1e-12);
        assert!((r.relative_risk.estimate - 2.0).abs() < 1e-12);
        // chi-square = 200 (20·90 − 80·10)² / (100·100·30·170) = 3.9216
        assert!((r.chi_square - 3.921569).abs() < 1e-6);
        // Yates: 200 (|1800 − 800| − 100)² / 51e6 = 3.17647
        assert!((r.chi_square_yates - 3.176471).abs() < 1e-6);
        assert!((r.odds_ratio.ci_lower - 0.9943).abs() < 1e-3);
    }

    #[test]
    fn quantiles_interpolate_within_bins() {
        let edges = [0.0, 10.0, 20.0, 30.0];
        let bins = vec![cell(10), cell(20), cell(10)];
        let r = quantiles("x", &edges, &bins, &cell(0), &cell(0), &[0.25, 0.5, 0.75]);
        let est: Vec<f64> = r.quantiles.iter().map(|q| q.estimate.unwrap()).collect();
        assert_eq!(est, [10.0, 15.0, 20.0]);
        assert_eq!(r.precision, 10.0);
    }
}
