//! Generalized linear models fitted by iteratively reweighted least squares.
//!
//! Method and conventions (following R's `glm.fit`, unit prior weights, no
//! offset):
//!
//! * Families with their canonical links: Gaussian (identity), Binomial
//!   (logit; `y` is a 0/1 outcome or a proportion in `[0, 1]`), Poisson (log).
//! * Starting values: `mu = y` (Gaussian), `mu = (y + 0.5) / 2` (Binomial),
//!   `mu = y + 0.1` (Poisson); `eta = link(mu)`.
//! * Each iteration forms the working response `z = eta + (y - mu) / (dmu/deta)`
//!   and working weights `w = (dmu/deta)^2 / V(mu)`, solves the weighted least
//!   squares problem `(X'WX) beta = X'Wz`, and recomputes `eta`, `mu` and the
//!   deviance. It stops when `|dev - devold| / (|dev| + 0.1) < 1e-12` (tighter
//!   than R's default 1e-8) or after 100 iterations.
//! * Standard errors are `sqrt(diag((X'WX)^-1) * dispersion)` with `W`
//!   evaluated at the final coefficients. The dispersion is
//!   `deviance / (n - p)` for the Gaussian family and 1 otherwise.
//! * The null deviance is the deviance of the intercept-only model,
//!   `mu_i = mean(y)` for every `i`.
//! * As in R, the inverse logit and inverse log links are kept away from 0
//!   and 1 by `f64::EPSILON` safeguards; they have no effect on well-posed
//!   fits.

use nalgebra::{DMatrix, DVector};

/// Convergence tolerance on the relative change of the deviance.
const EPSILON: f64 = 1e-12;
/// Maximum number of IRLS iterations.
const MAX_ITERATIONS: u32 = 100;

/// Error family of the GLM; each uses its canonical link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Normal errors, identity link.
    Gaussian,
    /// Binomial errors (one trial per observation), logit link.
    Binomial,
    /// Poisson errors, log link.
    Poisson,
}

impl Family {
    /// Starting value of the mean for one observation.
    fn start_mu(self, y: f64) -> f64 {
        match self {
            Family::Gaussian => y,
            Family::Binomial => (y + 0.5) / 2.0,
            Family::Poisson => y + 0.1,
        }
    }

    /// Link function `eta = g(mu)`.
    fn link(self, mu: f64) -> f64 {
        match self {
            Family::Gaussian => mu,
            Family::Binomial => (mu / (1.0 - mu)).ln(),
            Family::Poisson => mu.ln(),
        }
    }

    /// Inverse link `mu = g^-1(eta)`.
    fn inverse_link(self, eta: f64) -> f64 {
        match self {
            Family::Gaussian => eta,
            Family::Binomial => {
                // R's thresholds: exp(eta) is kept in [eps, 1/eps].
                let e = eta.exp().clamp(f64::EPSILON, 1.0 / f64::EPSILON);
                e / (1.0 + e)
            }
            Family::Poisson => eta.exp().max(f64::EPSILON),
        }
    }

    /// Derivative `dmu/deta` at `eta`.
    fn mu_eta(self, eta: f64) -> f64 {
        match self {
            Family::Gaussian => 1.0,
            Family::Binomial => {
                let mu = self.inverse_link(eta);
                (mu * (1.0 - mu)).max(f64::EPSILON)
            }
            Family::Poisson => eta.exp().max(f64::EPSILON),
        }
    }

    /// Variance function `V(mu)`.
    fn variance(self, mu: f64) -> f64 {
        match self {
            Family::Gaussian => 1.0,
            Family::Binomial => mu * (1.0 - mu),
            Family::Poisson => mu,
        }
    }

    /// Unit deviance of one observation.
    fn unit_deviance(self, y: f64, mu: f64) -> f64 {
        match self {
            Family::Gaussian => (y - mu) * (y - mu),
            Family::Binomial => 2.0 * (y_log_y_over(y, mu) + y_log_y_over(1.0 - y, 1.0 - mu)),
            Family::Poisson => 2.0 * (y_log_y_over(y, mu) - (y - mu)),
        }
    }
}

/// `y * ln(y / mu)`, taken as 0 when `y == 0`.
fn y_log_y_over(y: f64, mu: f64) -> f64 {
    if y == 0.0 {
        0.0
    } else {
        y * (y / mu).ln()
    }
}

/// Total deviance of the observations `y` at means `mu`.
fn deviance(family: Family, y: &[f64], mu: &[f64]) -> f64 {
    y.iter()
        .zip(mu)
        .map(|(&yi, &mi)| family.unit_deviance(yi, mi))
        .sum()
}

/// Result of [`fit_glm`].
#[derive(Debug, Clone, PartialEq)]
pub struct GlmFit {
    /// Estimated coefficients, one per column of the design matrix.
    pub coefficients: Vec<f64>,
    /// Standard errors, `sqrt(diag((X'WX)^-1) * dispersion)`.
    pub std_errors: Vec<f64>,
    /// Residual deviance at the final coefficients.
    pub deviance: f64,
    /// Deviance of the intercept-only model (`mu = mean(y)`).
    pub null_deviance: f64,
    /// Number of IRLS iterations performed.
    pub iterations: u32,
    /// Dispersion: `deviance / (n - p)` for Gaussian, 1 otherwise.
    pub dispersion: f64,
}

/// Builds `X'WX` for the design `x` and the diagonal weights `w`.
fn cross_product(x: &DMatrix<f64>, w: &[f64]) -> DMatrix<f64> {
    let p = x.ncols();
    DMatrix::from_fn(p, p, |j, k| {
        (0..x.nrows()).map(|i| x[(i, j)] * w[i] * x[(i, k)]).sum()
    })
}

/// Fits a GLM with the canonical link of `family` by IRLS.
///
/// `x[i]` is row `i` of the design matrix (include a column of 1.0 for an
/// intercept); `y[i]` is the response. Panics if the dimensions disagree, if
/// `n <= p` for the Gaussian family (`n < p` otherwise), or if `X'WX` is not
/// positive definite.
pub fn fit_glm(x: &[Vec<f64>], y: &[f64], family: Family) -> GlmFit {
    let n = y.len();
    assert_eq!(x.len(), n, "x and y must have the same number of rows");
    assert!(n > 0, "at least one observation is needed");
    let p = x[0].len();
    assert!(p > 0, "the design matrix needs at least one column");
    assert!(
        x.iter().all(|row| row.len() == p),
        "all rows of x must have the same length"
    );
    assert!(n >= p, "need at least as many observations as coefficients");
    let design = DMatrix::from_fn(n, p, |i, j| x[i][j]);

    let mut eta: Vec<f64> = y
        .iter()
        .map(|&yi| family.link(family.start_mu(yi)))
        .collect();
    let mut mu: Vec<f64> = eta.iter().map(|&e| family.inverse_link(e)).collect();
    let mut dev_old = deviance(family, y, &mu);
    let mut beta = DVector::<f64>::zeros(p);
    let mut iterations = 0;
    let mut last_xtwx = DMatrix::<f64>::zeros(p, p);

    for iteration in 1..=MAX_ITERATIONS {
        iterations = iteration;
        let mut z = DVector::<f64>::zeros(n);
        let mut w = vec![0.0; n];
        for i in 0..n {
            let d = family.mu_eta(eta[i]);
            z[i] = eta[i] + (y[i] - mu[i]) / d;
            w[i] = d * d / family.variance(mu[i]);
        }
        let xtwx = cross_product(&design, &w);
        let xtwz = DVector::from_fn(p, |j, _| (0..n).map(|i| design[(i, j)] * w[i] * z[i]).sum());
        beta = xtwx
            .clone()
            .cholesky()
            .expect("X'WX is not positive definite")
            .solve(&xtwz);
        last_xtwx = xtwx;
        let new_eta = &design * &beta;
        eta = new_eta.iter().copied().collect();
        mu = eta.iter().map(|&e| family.inverse_link(e)).collect();
        let dev = deviance(family, y, &mu);
        let converged = (dev - dev_old).abs() / (dev.abs() + 0.1) < EPSILON;
        dev_old = dev;
        if converged {
            break;
        }
    }
    let final_deviance = dev_old;

    // Standard errors from the X'WX the last step was solved from (W at
    // the coefficients before it), as R's glm.fit and statsmodels report
    // them.
    let covariance_unscaled = last_xtwx
        .cholesky()
        .expect("X'WX is not positive definite")
        .inverse();
    let dispersion = match family {
        Family::Gaussian => {
            assert!(n > p, "Gaussian dispersion needs n > p");
            final_deviance / (n - p) as f64
        }
        Family::Binomial | Family::Poisson => 1.0,
    };
    let std_errors = (0..p)
        .map(|j| (covariance_unscaled[(j, j)] * dispersion).sqrt())
        .collect();

    let mean_y = y.iter().sum::<f64>() / n as f64;
    let null_deviance = deviance(family, y, &vec![mean_y; n]);

    GlmFit {
        coefficients: beta.iter().copied().collect(),
        std_errors,
        deviance: final_deviance,
        null_deviance,
        iterations,
        dispersion,
    }
}

#[cfg(test)]
mod tests {
    use super::super::assert_close;
    use super::*;

    /// Challenger O-ring data: launch temperature (F) and O-ring damage (0/1).
    const CHALLENGER: [(f64, f64); 23] = [
        (66.0, 0.0),
        (70.0, 1.0),
        (69.0, 0.0),
        (68.0, 0.0),
        (67.0, 0.0),
        (72.0, 0.0),
        (73.0, 0.0),
        (70.0, 0.0),
        (57.0, 1.0),
        (63.0, 1.0),
        (70.0, 1.0),
        (78.0, 0.0),
        (67.0, 0.0),
        (53.0, 1.0),
        (67.0, 0.0),
        (75.0, 0.0),
        (70.0, 0.0),
        (81.0, 0.0),
        (76.0, 0.0),
        (79.0, 0.0),
        (75.0, 1.0),
        (76.0, 0.0),
        (58.0, 1.0),
    ];

    #[test]
    fn challenger_logistic_regression() {
        let x: Vec<Vec<f64>> = CHALLENGER.iter().map(|&(t, _)| vec![1.0, t]).collect();
        let y: Vec<f64> = CHALLENGER.iter().map(|&(_, d)| d).collect();
        let fit = fit_glm(&x, &y, Family::Binomial);
        assert_close(fit.coefficients[0], 15.0429, 5e-5, "intercept");
        assert_close(fit.std_errors[0], 7.3786, 5e-5, "intercept SE");
        assert_close(fit.coefficients[1], -0.2322, 5e-5, "temp");
        assert_close(fit.std_errors[1], 0.1082, 5e-5, "temp SE");
        assert_close(fit.deviance, 20.315, 5e-4, "residual deviance");
        assert_close(fit.null_deviance, 28.267, 5e-4, "null deviance");
        assert_eq!(fit.dispersion, 1.0);
        assert!(fit.iterations < MAX_ITERATIONS);
    }

    #[test]
    fn dobson_poisson_regression() {
        let counts = [18.0, 17.0, 15.0, 20.0, 10.0, 20.0, 25.0, 13.0, 12.0];
        let outcome = [1, 2, 3, 1, 2, 3, 1, 2, 3];
        let treatment = [1, 1, 1, 2, 2, 2, 3, 3, 3];
        let indicator = |value: i32, level: i32| if value == level { 1.0 } else { 0.0 };
        let x: Vec<Vec<f64>> = (0..9)
            .map(|i| {
                vec![
                    1.0,
                    indicator(outcome[i], 2),
                    indicator(outcome[i], 3),
                    indicator(treatment[i], 2),
                    indicator(treatment[i], 3),
                ]
            })
            .collect();
        let fit = fit_glm(&x, &counts, Family::Poisson);
        let c = &fit.coefficients;
        let se = &fit.std_errors;
        assert_close(c[0], 3.045, 5e-4, "intercept");
        assert_close(se[0], 0.1709, 5e-5, "intercept SE");
        assert_close(c[1], -0.4543, 5e-5, "outcome2");
        assert_close(se[1], 0.2022, 5e-5, "outcome2 SE");
        assert_close(c[2], -0.2930, 5e-5, "outcome3");
        assert_close(se[2], 0.1927, 5e-5, "outcome3 SE");
        assert_close(c[3], 0.0, 1e-10, "treatment2");
        assert_close(se[3], 0.2000, 5e-5, "treatment2 SE");
        assert_close(c[4], 0.0, 1e-10, "treatment3");
        assert_close(se[4], 0.2000, 5e-5, "treatment3 SE");
        assert_close(fit.deviance, 5.1291, 5e-5, "residual deviance");
        assert_close(fit.null_deviance, 10.5814, 5e-5, "null deviance");
        // Closed form for this main-effects log-linear model: fitted cells are
        // row total * column total / N. Outcome totals 63, 40, 47; treatment
        // totals 50 each; N = 150; so mu(outcome 1, treatment 1) = 21.
        assert_close(c[0], 21.0_f64.ln(), 1e-10, "intercept = ln(63/3)");
        assert_close(c[1], (40.0_f64 / 63.0).ln(), 1e-10, "outcome2 = ln(40/63)");
        assert_close(c[2], (47.0_f64 / 63.0).ln(), 1e-10, "outcome3 = ln(47/63)");
    }

    #[test]
    fn gaussian_simple_regression_matches_closed_form() {
        let xs = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0];
        let ys = [2.1, 3.9, 6.2, 7.8, 10.3, 11.9, 14.2];
        let n = xs.len() as f64;
        let x_bar = xs.iter().sum::<f64>() / n;
        let y_bar = ys.iter().sum::<f64>() / n;
        let sxx: f64 = xs.iter().map(|&v| (v - x_bar).powi(2)).sum();
        let sxy: f64 = xs
            .iter()
            .zip(&ys)
            .map(|(&a, &b)| (a - x_bar) * (b - y_bar))
            .sum();
        let slope = sxy / sxx;
        let intercept = y_bar - slope * x_bar;
        let rss: f64 = xs
            .iter()
            .zip(&ys)
            .map(|(&a, &b)| (b - intercept - slope * a).powi(2))
            .sum();
        let tss: f64 = ys.iter().map(|&b| (b - y_bar).powi(2)).sum();
        let sigma2 = rss / (n - 2.0);
        let se_slope = (sigma2 / sxx).sqrt();
        let se_intercept = (sigma2 * (1.0 / n + x_bar * x_bar / sxx)).sqrt();

        let x: Vec<Vec<f64>> = xs.iter().map(|&v| vec![1.0, v]).collect();
        let fit = fit_glm(&x, &ys, Family::Gaussian);
        assert_close(fit.coefficients[0], intercept, 1e-10, "intercept");
        assert_close(fit.coefficients[1], slope, 1e-10, "slope");
        assert_close(fit.std_errors[0], se_intercept, 1e-10, "intercept SE");
        assert_close(fit.std_errors[1], se_slope, 1e-10, "slope SE");
        assert_close(fit.deviance, rss, 1e-10, "deviance = RSS");
        assert_close(fit.null_deviance, tss, 1e-10, "null deviance = TSS");
        assert_close(fit.dispersion, sigma2, 1e-12, "dispersion");
    }

    #[test]
    fn gaussian_multiple_regression_matches_normal_equations() {
        let x: Vec<Vec<f64>> = vec![
            vec![1.0, 0.5, 3.0],
            vec![1.0, 1.5, 1.0],
            vec![1.0, 2.0, 4.0],
            vec![1.0, 3.5, 2.0],
            vec![1.0, 4.0, 5.0],
            vec![1.0, 5.5, 0.5],
            vec![1.0, 6.0, 3.5],
            vec![1.0, 7.5, 2.5],
        ];
        let y = [4.0, 3.1, 7.2, 6.0, 10.5, 6.1, 10.9, 11.0];
        let n = y.len();
        let p = 3;
        // Normal equations (X'X) b = X'y solved by a plain inverse.
        let xm = DMatrix::from_fn(n, p, |i, j| x[i][j]);
        let yv = DVector::from_column_slice(&y);
        let xtx = xm.transpose() * &xm;
        let xtx_inv = xtx.try_inverse().expect("X'X invertible");
        let b = &xtx_inv * xm.transpose() * &yv;
        let resid = &yv - &xm * &b;
        let rss = resid.dot(&resid);
        let sigma2 = rss / (n - p) as f64;

        let fit = fit_glm(&x, &y, Family::Gaussian);
        for j in 0..p {
            assert_close(fit.coefficients[j], b[j], 1e-10, "coefficient");
            assert_close(
                fit.std_errors[j],
                (sigma2 * xtx_inv[(j, j)]).sqrt(),
                1e-10,
                "SE",
            );
        }
        assert_close(fit.deviance, rss, 1e-10, "deviance");
        assert_close(fit.dispersion, sigma2, 1e-12, "dispersion");
    }
}
