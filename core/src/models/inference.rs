//! Wald inference for fitted coefficients: standard errors, test statistics,
//! p-values and 95% confidence intervals, from statrs distributions.

use serde::{Deserialize, Serialize};
use statrs::distribution::{ChiSquared, ContinuousCDF, Normal, StudentsT};

/// The two-sided level used for every confidence interval.
pub const CONFIDENCE: f64 = 0.95;

/// How a coefficient's test statistic is referred.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reference {
    /// Standard normal (z).
    Normal,
    /// Student's t with these residual degrees of freedom.
    T(f64),
}

impl Reference {
    /// Two-sided p-value of a statistic.
    pub fn p_value(self, statistic: f64) -> f64 {
        if !statistic.is_finite() {
            return f64::NAN;
        }
        let tail = match self {
            Reference::Normal => normal().sf(statistic.abs()),
            Reference::T(df) => match StudentsT::new(0.0, 1.0, df) {
                Ok(t) => t.sf(statistic.abs()),
                Err(_) => f64::NAN,
            },
        };
        (2.0 * tail).min(1.0)
    }

    /// The quantile giving a two-sided [`CONFIDENCE`] interval.
    pub fn critical(self) -> f64 {
        let q = 0.5 + CONFIDENCE / 2.0;
        match self {
            Reference::Normal => normal().inverse_cdf(q),
            Reference::T(df) => match StudentsT::new(0.0, 1.0, df) {
                Ok(t) => t.inverse_cdf(q),
                Err(_) => f64::NAN,
            },
        }
    }
}

fn normal() -> Normal {
    Normal::new(0.0, 1.0).expect("standard normal")
}

/// Upper tail of a chi-square statistic.
pub fn chi_square_p(statistic: f64, df: f64) -> f64 {
    if !(statistic.is_finite() && df > 0.0) {
        return f64::NAN;
    }
    match ChiSquared::new(df) {
        Ok(c) => c.sf(statistic.max(0.0)),
        Err(_) => f64::NAN,
    }
}

/// One row of a regression table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Coefficient {
    pub term: String,
    pub estimate: f64,
    pub std_error: f64,
    /// z or t, as the result's `statistic` says.
    pub statistic: f64,
    pub p_value: f64,
    pub ci_lower: f64,
    pub ci_upper: f64,
    /// exp(estimate) with its interval: the odds ratio of a logistic
    /// model, the rate ratio of a Poisson model, the hazard ratio of a Cox
    /// model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<Ratio>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Ratio {
    pub estimate: f64,
    pub ci_lower: f64,
    pub ci_upper: f64,
}

/// Builds the table from estimates and their covariance diagonal.
pub fn coefficients(
    terms: &[String],
    estimates: &[f64],
    variances: &[f64],
    reference: Reference,
    exponentiate: bool,
) -> Vec<Coefficient> {
    let q = reference.critical();
    terms
        .iter()
        .zip(estimates)
        .zip(variances)
        .map(|((term, &b), &v)| {
            let se = v.max(0.0).sqrt();
            let stat = b / se;
            let (lo, hi) = (b - q * se, b + q * se);
            Coefficient {
                term: term.clone(),
                estimate: b,
                std_error: se,
                statistic: stat,
                p_value: reference.p_value(stat),
                ci_lower: lo,
                ci_upper: hi,
                ratio: exponentiate.then(|| Ratio {
                    estimate: b.exp(),
                    ci_lower: lo.exp(),
                    ci_upper: hi.exp(),
                }),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_values() {
        assert!((Reference::Normal.critical() - 1.959964).abs() < 1e-6);
        assert!((Reference::Normal.p_value(1.959964) - 0.05).abs() < 1e-6);
        // t with 10 df: 97.5% quantile 2.228139
        assert!((Reference::T(10.0).critical() - 2.228139).abs() < 1e-6);
        // chi-square 3.841459 on 1 df is the 5% point
        assert!((chi_square_p(3.841459, 1.0) - 0.05).abs() < 1e-6);
    }
}
