//! Stratified Cox proportional hazards regression.
//!
//! Method and conventions (following R's `survival::coxph` with
//! `strata(...)`):
//!
//! * Each stratum has its own baseline hazard; the log partial likelihood,
//!   its gradient (score) and the observed information are sums over strata.
//! * Risk sets are computed naively: for an event time `t` in stratum `s`
//!   the risk set is every subject of stratum `s` with `time >= t`
//!   (subjects censored at `t` are at risk at `t`).
//! * Tied event times are handled by Breslow's approximation (every death at
//!   `t` sees the full risk set) or Efron's (the `k`-th of `d` tied deaths,
//!   `k = 0..d-1`, sees the risk-set sums minus `k/d` of the tied deaths'
//!   sums).
//! * Newton-Raphson from `beta = 0`. A step that lowers the log partial
//!   likelihood is halved (at most 30 times), as coxph does. Iteration stops
//!   when `|loglik - old| / |loglik| < 1e-13`, when the largest absolute step
//!   component is below `1e-12`, or after 50 iterations.
//! * Standard errors are `sqrt(diag(I^-1))` with the information `I`
//!   evaluated at the final coefficients.
//! * `x` has no intercept column (an intercept is absorbed by the baseline).

use nalgebra::{DMatrix, DVector};

/// Maximum number of Newton-Raphson iterations.
const MAX_ITERATIONS: u32 = 50;
/// Relative tolerance on the change of the log partial likelihood.
const LOGLIK_TOLERANCE: f64 = 1e-13;
/// Tolerance on the largest absolute Newton step component.
const STEP_TOLERANCE: f64 = 1e-12;
/// Maximum number of step halvings within one iteration.
const MAX_HALVINGS: u32 = 30;

/// Approximation used for tied event times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ties {
    /// Breslow's approximation.
    Breslow,
    /// Efron's approximation (R's default).
    Efron,
}

/// Result of [`fit_cox`].
#[derive(Debug, Clone, PartialEq)]
pub struct CoxFit {
    /// Estimated log hazard ratios, one per column of `x`.
    pub coefficients: Vec<f64>,
    /// Standard errors, `sqrt(diag(I^-1))` at the final coefficients.
    pub std_errors: Vec<f64>,
    /// Log partial likelihood at `beta = 0`.
    pub loglik_null: f64,
    /// Log partial likelihood at the final coefficients.
    pub loglik: f64,
    /// Number of Newton-Raphson iterations performed.
    pub iterations: u32,
}

/// Log partial likelihood with its gradient and information at one `beta`.
struct Evaluation {
    loglik: f64,
    gradient: DVector<f64>,
    information: DMatrix<f64>,
}

/// Evaluates the stratified log partial likelihood, score and observed
/// information at `beta`.
fn evaluate(
    x: &[Vec<f64>],
    time: &[f64],
    event: &[bool],
    strata: &[u32],
    ties: Ties,
    beta: &[f64],
) -> Evaluation {
    let n = time.len();
    let p = beta.len();
    let eta: Vec<f64> = x
        .iter()
        .map(|row| row.iter().zip(beta).map(|(a, b)| a * b).sum())
        .collect();
    let risk: Vec<f64> = eta.iter().map(|e| e.exp()).collect();

    // Distinct (stratum, event time) pairs.
    let mut event_keys: Vec<(u32, f64)> = (0..n)
        .filter(|&i| event[i])
        .map(|i| (strata[i], time[i]))
        .collect();
    event_keys.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    event_keys.dedup();

    let mut loglik = 0.0;
    let mut gradient = DVector::<f64>::zeros(p);
    let mut information = DMatrix::<f64>::zeros(p, p);

    for &(stratum, t) in &event_keys {
        // Sums over the risk set (R) and over the tied deaths (D).
        let mut s0 = 0.0;
        let mut s1 = DVector::<f64>::zeros(p);
        let mut s2 = DMatrix::<f64>::zeros(p, p);
        let mut d0 = 0.0;
        let mut d1 = DVector::<f64>::zeros(p);
        let mut d2 = DMatrix::<f64>::zeros(p, p);
        let mut deaths = 0usize;
        for i in 0..n {
            if strata[i] != stratum || time[i] < t {
                continue;
            }
            let xi = DVector::from_column_slice(&x[i]);
            let r = risk[i];
            s0 += r;
            s1 += &xi * r;
            s2 += &xi * xi.transpose() * r;
            if event[i] && time[i] == t {
                deaths += 1;
                d0 += r;
                d1 += &xi * r;
                d2 += &xi * xi.transpose() * r;
                loglik += eta[i];
                gradient += &xi;
            }
        }
        for k in 0..deaths {
            let fraction = match ties {
                Ties::Breslow => 0.0,
                Ties::Efron => k as f64 / deaths as f64,
            };
            let denom = s0 - fraction * d0;
            let mean = (&s1 - &d1 * fraction) / denom;
            let second = (&s2 - &d2 * fraction) / denom;
            loglik -= denom.ln();
            gradient -= &mean;
            information += second - &mean * mean.transpose();
        }
    }

    Evaluation {
        loglik,
        gradient,
        information,
    }
}

/// Fits a stratified Cox proportional hazards model by Newton-Raphson.
///
/// `x[i]` holds the covariates of subject `i` (no intercept), `time[i]` its
/// follow-up time, `event[i]` whether it ended in an event (`false` =
/// censored) and `strata[i]` its stratum label. Panics if the lengths
/// disagree, a time is not finite, or the information matrix is not positive
/// definite (e.g. no events).
pub fn fit_cox(x: &[Vec<f64>], time: &[f64], event: &[bool], strata: &[u32], ties: Ties) -> CoxFit {
    let n = time.len();
    assert_eq!(x.len(), n, "x and time must have the same length");
    assert_eq!(event.len(), n, "event and time must have the same length");
    assert_eq!(strata.len(), n, "strata and time must have the same length");
    assert!(time.iter().all(|t| t.is_finite()), "times must be finite");
    let p = x.first().map_or(0, Vec::len);
    assert!(
        x.iter().all(|row| row.len() == p),
        "all rows of x must have the same length"
    );

    let mut beta = vec![0.0; p];
    let mut current = evaluate(x, time, event, strata, ties, &beta);
    let loglik_null = current.loglik;
    let mut iterations = 0;

    if p > 0 {
        while iterations < MAX_ITERATIONS {
            iterations += 1;
            let full_step = current
                .information
                .clone()
                .cholesky()
                .expect("information matrix is not positive definite")
                .solve(&current.gradient);
            let mut step = full_step;
            let mut candidate: Vec<f64> =
                beta.iter().zip(step.iter()).map(|(b, s)| b + s).collect();
            let mut next = evaluate(x, time, event, strata, ties, &candidate);
            let mut halvings = 0;
            while next.loglik < current.loglik && halvings < MAX_HALVINGS {
                halvings += 1;
                step /= 2.0;
                candidate = beta.iter().zip(step.iter()).map(|(b, s)| b + s).collect();
                next = evaluate(x, time, event, strata, ties, &candidate);
            }
            let largest_step = step.iter().fold(0.0_f64, |m, s| m.max(s.abs()));
            let relative_change = (next.loglik - current.loglik).abs() / next.loglik.abs();
            beta = candidate;
            current = next;
            if relative_change < LOGLIK_TOLERANCE || largest_step < STEP_TOLERANCE {
                break;
            }
        }
    }

    let std_errors = if p > 0 {
        let covariance = current
            .information
            .clone()
            .cholesky()
            .expect("information matrix is not positive definite")
            .inverse();
        (0..p).map(|j| covariance[(j, j)].sqrt()).collect()
    } else {
        Vec::new()
    };

    CoxFit {
        coefficients: beta,
        std_errors,
        loglik_null,
        loglik: current.loglik,
        iterations,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{assert_close, MAINTAINED, NONMAINTAINED};
    use super::*;

    /// R survival's `aml` data: (time, event, nonmaintained).
    fn aml() -> Vec<(f64, bool, f64)> {
        MAINTAINED
            .iter()
            .map(|&(t, e)| (t, e, 0.0))
            .chain(NONMAINTAINED.iter().map(|&(t, e)| (t, e, 1.0)))
            .collect()
    }

    fn aml_columns() -> (Vec<Vec<f64>>, Vec<f64>, Vec<bool>) {
        let data = aml();
        (
            data.iter().map(|&(_, _, g)| vec![g]).collect(),
            data.iter().map(|&(t, _, _)| t).collect(),
            data.iter().map(|&(_, e, _)| e).collect(),
        )
    }

    #[test]
    fn aml_efron_matches_coxph() {
        let (x, time, event) = aml_columns();
        let strata = vec![0; time.len()];
        let fit = fit_cox(&x, &time, &event, &strata, Ties::Efron);
        assert_close(fit.coefficients[0], 0.9155, 5e-5, "coef");
        assert_close(fit.std_errors[0], 0.5119, 5e-5, "se");
        let lr = 2.0 * (fit.loglik - fit.loglik_null);
        assert_close(lr, 3.38, 5e-3, "likelihood ratio");
        assert!(fit.iterations < MAX_ITERATIONS);
    }

    /// Score and information of the binary-covariate model written directly
    /// from group counts at each distinct event time (`r = exp(beta)`): the
    /// `k`-th tied death contributes mean `m = (n1 r - f d1 r) /
    /// (n0 + n1 r - f (d0 + d1 r))` with `f = k/d` (Efron) or 0 (Breslow),
    /// and information `m (1 - m)` because `x^2 = x`.
    fn two_group_score_information(data: &[(f64, bool, f64)], beta: f64, ties: Ties) -> (f64, f64) {
        let mut times: Vec<f64> = data.iter().filter(|d| d.1).map(|d| d.0).collect();
        times.sort_by(f64::total_cmp);
        times.dedup();
        let r = beta.exp();
        let (mut score, mut information) = (0.0, 0.0);
        for t in times {
            let count = |group: f64, deaths_only: bool| {
                data.iter()
                    .filter(|d| d.2 == group)
                    .filter(|d| {
                        if deaths_only {
                            d.1 && d.0 == t
                        } else {
                            d.0 >= t
                        }
                    })
                    .count() as f64
            };
            let (n0, n1) = (count(0.0, false), count(1.0, false));
            let (d0, d1) = (count(0.0, true), count(1.0, true));
            let d = d0 + d1;
            score += d1;
            for k in 0..(d as usize) {
                let f = match ties {
                    Ties::Breslow => 0.0,
                    Ties::Efron => k as f64 / d,
                };
                let m = (n1 * r - f * d1 * r) / (n0 + n1 * r - f * (d0 + d1 * r));
                score -= m;
                information += m * (1.0 - m);
            }
        }
        (score, information)
    }

    #[test]
    fn aml_matches_two_group_closed_form() {
        let data = aml();
        let (x, time, event) = aml_columns();
        let strata = vec![0; time.len()];
        for ties in [Ties::Breslow, Ties::Efron] {
            // The score is decreasing in beta; bisect for its root.
            let (mut lo, mut hi) = (0.0_f64, 3.0_f64);
            for _ in 0..200 {
                let mid = 0.5 * (lo + hi);
                if two_group_score_information(&data, mid, ties).0 > 0.0 {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            let root = 0.5 * (lo + hi);
            let se = 1.0 / two_group_score_information(&data, root, ties).1.sqrt();
            let fit = fit_cox(&x, &time, &event, &strata, ties);
            assert_close(fit.coefficients[0], root, 1e-9, "coef vs bisection");
            assert_close(fit.std_errors[0], se, 1e-9, "se vs closed form");
        }
    }

    #[test]
    fn score_is_zero_at_the_estimate() {
        let (x, time, event) = aml_columns();
        let strata = vec![0; time.len()];
        for ties in [Ties::Breslow, Ties::Efron] {
            let fit = fit_cox(&x, &time, &event, &strata, ties);
            let at = evaluate(&x, &time, &event, &strata, ties, &fit.coefficients);
            assert!(at.gradient[0].abs() < 1e-10, "score {}", at.gradient[0]);
        }
    }

    #[test]
    fn null_loglik_without_ties_is_sum_of_log_risk_set_sizes() {
        // No ties: loglik(0) = -sum over deaths of ln(risk set size).
        let time = [1.0, 2.0, 3.0, 4.0, 5.0];
        let event = [true, false, true, true, false];
        let x: Vec<Vec<f64>> = vec![vec![0.3], vec![-1.0], vec![2.0], vec![0.5], vec![1.0]];
        let strata = [0; 5];
        let expected = -(5.0_f64.ln() + 3.0_f64.ln() + 2.0_f64.ln());
        for ties in [Ties::Breslow, Ties::Efron] {
            let fit = fit_cox(&x, &time, &event, &strata, ties);
            assert_close(fit.loglik_null, expected, 1e-12, "null loglik");
        }
    }

    #[test]
    fn stratified_copies_match_unstratified_fit() {
        let (x, time, event) = aml_columns();
        let n = time.len();
        for ties in [Ties::Breslow, Ties::Efron] {
            let single = fit_cox(&x, &time, &event, &vec![0; n], ties);

            let x2: Vec<Vec<f64>> = x.iter().chain(x.iter()).cloned().collect();
            let time2: Vec<f64> = time.iter().chain(time.iter()).copied().collect();
            let event2: Vec<bool> = event.iter().chain(event.iter()).copied().collect();
            let strata2: Vec<u32> = (0..2 * n).map(|i| u32::from(i >= n)).collect();
            let doubled = fit_cox(&x2, &time2, &event2, &strata2, ties);

            assert_close(
                doubled.coefficients[0],
                single.coefficients[0],
                1e-9,
                "coef",
            );
            assert_close(doubled.loglik, 2.0 * single.loglik, 1e-9, "loglik");
            assert_close(
                doubled.loglik_null,
                2.0 * single.loglik_null,
                1e-9,
                "null loglik",
            );
            // Information doubles, so the SE shrinks by sqrt(2).
            assert_close(
                doubled.std_errors[0],
                single.std_errors[0] / 2.0_f64.sqrt(),
                1e-9,
                "se",
            );
        }
    }
}
