//! Generalised linear models by federated iteratively reweighted least
//! squares. Each round the coordinator sends the current coefficients; every
//! node returns X'WX, X'Wz, its deviance and N at those coefficients
//! ([`GlmStats`], which add across sites); the coordinator sums them and
//! solves for the next coefficients ([`GlmFitter`]). Nothing per patient
//! (residuals, fitted values, leverage) ever leaves a node.
//!
//! The iteration follows R's `glm.fit`: the same starting values, the same
//! deviance-based convergence rule, so a fit over all sites equals the
//! standard fit on the union of their rows.

use serde::{Deserialize, Serialize};

use super::fit::{Iteration, IterativeFit, RoundStats, Step};
use super::inference::{coefficients, Coefficient, Reference};
use super::linalg::{add_outer, packed_index, packed_len, solve_spd};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// Identity link: linear regression.
    Gaussian,
    /// Logit link: logistic regression of a boolean outcome.
    Binomial,
    /// Log link: Poisson regression of a count.
    Poisson,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Gaussian => "gaussian",
            Family::Binomial => "binomial",
            Family::Poisson => "poisson",
        }
    }

    pub fn link(self) -> &'static str {
        match self {
            Family::Gaussian => "identity",
            Family::Binomial => "logit",
            Family::Poisson => "log",
        }
    }

    /// Mean from the linear predictor; R's clamping for the logit.
    fn mean(self, eta: f64) -> f64 {
        match self {
            Family::Gaussian => eta,
            Family::Binomial => {
                const THRESH: f64 = 30.0;
                let e = eta.clamp(-THRESH, THRESH).exp();
                (e / (1.0 + e)).clamp(f64::EPSILON, 1.0 - f64::EPSILON)
            }
            Family::Poisson => eta.exp().max(f64::EPSILON),
        }
    }

    fn link_of(self, mu: f64) -> f64 {
        match self {
            Family::Gaussian => mu,
            Family::Binomial => (mu / (1.0 - mu)).ln(),
            Family::Poisson => mu.ln(),
        }
    }

    /// dμ/dη.
    fn mu_eta(self, eta: f64, mu: f64) -> f64 {
        match self {
            Family::Gaussian => 1.0,
            Family::Binomial => {
                let e = (-eta.abs()).exp();
                (e / ((1.0 + e) * (1.0 + e))).max(f64::EPSILON)
            }
            Family::Poisson => mu.max(f64::EPSILON),
        }
    }

    fn variance(self, mu: f64) -> f64 {
        match self {
            Family::Gaussian => 1.0,
            Family::Binomial => mu * (1.0 - mu),
            Family::Poisson => mu,
        }
    }

    /// One observation's contribution to the deviance.
    pub fn deviance(self, y: f64, mu: f64) -> f64 {
        let ylogy = |y: f64, mu: f64| if y > 0.0 { y * (y / mu).ln() } else { 0.0 };
        match self {
            Family::Gaussian => (y - mu) * (y - mu),
            Family::Binomial => 2.0 * (ylogy(y, mu) + ylogy(1.0 - y, 1.0 - mu)),
            Family::Poisson => 2.0 * (ylogy(y, mu) - (y - mu)),
        }
    }

    /// R's starting mean for each observation.
    fn start(self, y: f64) -> f64 {
        match self {
            Family::Gaussian => y,
            Family::Binomial => (y + 0.5) / 2.0,
            Family::Poisson => y + 0.1,
        }
    }

    /// The weight w and the product w·z one patient with outcome `y`
    /// adds in a fit's first round, at R's starting values. They depend
    /// on the outcome only, which is what lets the first round's sums be
    /// read as counts (see `privacy::decisions`).
    pub(crate) fn first_round_weights(self, y: f64) -> (f64, f64) {
        let mu = self.start(y);
        let eta = self.link_of(mu);
        let d = self.mu_eta(eta, mu);
        let w = d * d / self.variance(mu);
        (w, w * (eta + (y - mu) / d))
    }

    /// Whether `y` is a possible outcome for the family.
    pub fn admits(self, y: f64) -> bool {
        match self {
            Family::Gaussian => y.is_finite(),
            Family::Binomial => y == 0.0 || y == 1.0,
            Family::Poisson => y >= 0.0 && y.is_finite(),
        }
    }
}

/// One node's contribution to one IRLS round.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct GlmStats {
    pub n: u64,
    /// X'WX, packed upper triangle.
    pub xtwx: Vec<f64>,
    pub xtwz: Vec<f64>,
    /// Deviance at the round's coefficients.
    pub deviance: f64,
    pub sum_y: f64,
    /// Deviance of the null model (0 until the round names its mean).
    pub null_deviance: f64,
}

impl RoundStats for GlmStats {
    fn zero(p: usize) -> Self {
        GlmStats {
            xtwx: vec![0.0; packed_len(p)],
            xtwz: vec![0.0; p],
            ..Default::default()
        }
    }

    fn merge(&mut self, other: &GlmStats) {
        self.n = self.n.saturating_add(other.n);
        self.xtwx
            .iter_mut()
            .zip(&other.xtwx)
            .for_each(|(a, b)| *a += b);
        self.xtwz
            .iter_mut()
            .zip(&other.xtwz)
            .for_each(|(a, b)| *a += b);
        self.deviance += other.deviance;
        self.sum_y += other.sum_y;
        self.null_deviance += other.null_deviance;
    }
}

impl GlmStats {
    /// Shape and finiteness of an aggregate received from a node.
    pub fn check(&self, p: usize) -> Result<()> {
        if self.xtwx.len() != packed_len(p) || self.xtwz.len() != p {
            return Err(Error::invalid(format!(
                "node answered a {p}-parameter model with {} and {} values",
                self.xtwx.len(),
                self.xtwz.len()
            )));
        }
        let finite = self
            .xtwx
            .iter()
            .chain(&self.xtwz)
            .chain([&self.deviance, &self.sum_y, &self.null_deviance])
            .all(|v| v.is_finite());
        if !finite || self.deviance < 0.0 || self.null_deviance < 0.0 {
            return Err(Error::invalid(
                "node answered with sums that are not finite or a negative deviance",
            ));
        }
        let diagonal_ok = (0..p).all(|i| self.xtwx[super::linalg::packed_index(p, i, i)] >= 0.0);
        if !diagonal_ok {
            return Err(Error::invalid(
                "node answered with an X'WX whose diagonal is negative",
            ));
        }
        Ok(())
    }
}

/// A node's IRLS round over its design `x` (row-major, `p` columns) and
/// outcome `y` at `beta`, or at R's starting values when `beta` is empty.
pub fn glm_stats(
    family: Family,
    x: &[f64],
    y: &[f64],
    p: usize,
    beta: &[f64],
    null_mean: Option<f64>,
) -> GlmStats {
    glm_round(family, x, y, p, beta, null_mean, f64::INFINITY).0
}

/// [`glm_stats`] and the effective number of patients its weights rest on,
/// (Σw)²/Σw²: coefficients chosen to put all the weight on a few patients
/// would make X'WX and X'Wz theirs, so the node checks it before release.
/// Each patient's deviance terms are clipped at `deviance_clip` (infinite
/// for exact answers; the noised release needs a bound).
pub fn glm_round(
    family: Family,
    x: &[f64],
    y: &[f64],
    p: usize,
    beta: &[f64],
    null_mean: Option<f64>,
    deviance_clip: f64,
) -> (GlmStats, f64) {
    let (mut sum_w, mut sum_w2) = (0.0, 0.0);
    let mut out = GlmStats::zero(p);
    out.n = y.len() as u64;
    for (row, &yi) in x.chunks_exact(p).zip(y) {
        let eta = if beta.is_empty() {
            family.link_of(family.start(yi))
        } else {
            row.iter().zip(beta).map(|(a, b)| a * b).sum()
        };
        let mu = family.mean(eta);
        let d = family.mu_eta(eta, mu);
        let w = d * d / family.variance(mu);
        let z = eta + (yi - mu) / d;
        sum_w += w;
        sum_w2 += w * w;
        add_outer(&mut out.xtwx, row, w);
        let wz = w * z;
        out.xtwz
            .iter_mut()
            .zip(row)
            .for_each(|(a, xij)| *a += wz * xij);
        // The deviance at the starting values is never used for
        // convergence, only as the first "previous" deviance.
        out.deviance += family
            .deviance(
                yi,
                if beta.is_empty() {
                    family.start(yi)
                } else {
                    mu
                },
            )
            .min(deviance_clip);
        out.sum_y += yi;
        if let Some(m) = null_mean {
            out.null_deviance += family.deviance(yi, m).min(deviance_clip);
        }
    }
    let effective = if sum_w2 > 0.0 {
        sum_w * sum_w / sum_w2
    } else {
        0.0
    };
    (out, effective)
}

/// Options a researcher may set on an iterative fit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitOptions {
    pub tolerance: f64,
    pub max_iterations: u32,
}

/// The pooled result of a GLM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GlmResult {
    pub family: Family,
    pub link: String,
    pub outcome: String,
    /// Complete cases the fit rests on.
    pub n: u64,
    pub coefficients: Vec<Coefficient>,
    /// `z` or `t`.
    pub statistic: String,
    pub deviance: f64,
    pub df_residual: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub null_deviance: Option<f64>,
    pub df_null: f64,
    pub dispersion: f64,
    pub iterations: u32,
    pub converged: bool,
    pub tolerance: f64,
    /// How missing values were handled.
    pub missing: String,
}

/// The coordinator's side of a federated IRLS fit.
pub struct GlmFitter {
    family: Family,
    outcome: String,
    terms: Vec<String>,
    intercept: bool,
    options: FitOptions,
    round: u32,
    beta: Vec<f64>,
    previous_deviance: Option<f64>,
    null_mean: Option<f64>,
    /// Under differential privacy: the fixed number of rounds.
    rounds: Option<u32>,
    /// What the nodes centred each column on (empty: nothing).
    centres: Vec<f64>,
    /// The coefficients before the last step.
    previous_beta: Vec<f64>,
    /// The pooled X'WX the last step was solved from (weights at the
    /// coefficients before it), whose inverse R's `glm` and statsmodels
    /// report as the covariance of an exact fit.
    previous_xtwx: Option<Vec<f64>>,
    /// Under differential privacy: the pooled noise variance of each
    /// X'WX entry (packed) and each X'Wz entry, for the standard errors.
    noise: Option<(Vec<f64>, Vec<f64>)>,
}

impl GlmFitter {
    /// A fit under differential privacy: exactly `rounds` rounds (unless
    /// the deviance criterion is met first), standard errors that include
    /// the noise set by [`GlmFitter::set_noise`]. `centres` are what the
    /// nodes subtract from each design column (the intercept, first, is
    /// turned back at the end).
    pub fn private(mut self, rounds: u32, centres: Vec<f64>) -> Self {
        self.rounds = Some(rounds.max(2));
        self.centres = centres;
        self
    }

    /// The pooled noise variances of the last round's sums.
    pub fn set_noise(&mut self, xtwx: Vec<f64>, xtwz: Vec<f64>) {
        self.noise = Some((xtwx, xtwz));
    }

    pub fn new(
        family: Family,
        outcome: String,
        terms: Vec<String>,
        intercept: bool,
        options: FitOptions,
    ) -> Self {
        GlmFitter {
            family,
            outcome,
            terms,
            intercept,
            options,
            round: 0,
            beta: Vec::new(),
            previous_deviance: None,
            null_mean: None,
            rounds: None,
            centres: Vec::new(),
            previous_beta: Vec::new(),
            previous_xtwx: None,
            noise: None,
        }
    }
}

impl IterativeFit for GlmFitter {
    type Stats = GlmStats;
    type Output = GlmResult;

    fn parameters(&self) -> usize {
        self.terms.len()
    }

    fn start(&mut self) -> Iteration {
        self.round = 1;
        Iteration {
            round: 1,
            coefficients: Vec::new(),
            null_mean: None,
            gbdt: None,
            ..Iteration::default()
        }
    }

    fn step(&mut self, pooled: &GlmStats) -> Result<Step<GlmResult>> {
        let p = self.parameters();
        pooled.check(p)?;
        if pooled.n == 0 {
            return Err(Error::invalid(
                "no complete cases in the pooled cohort; check the cohort and missing values",
            ));
        }
        if self.null_mean.is_none() {
            self.null_mean = Some(if self.intercept {
                pooled.sum_y / pooled.n as f64
            } else {
                self.family.mean(0.0)
            });
        }
        let deviance = pooled.deviance;
        let done = !self.beta.is_empty()
            && self.previous_deviance.is_some_and(|prev| {
                (deviance - prev).abs() / (deviance.abs() + 0.1) < self.options.tolerance
            });
        let iterations = self.round - 1;
        let last = match self.rounds {
            Some(r) => self.round >= r,
            None => !self.beta.is_empty() && iterations >= self.options.max_iterations,
        };
        if done || last {
            return self.finish(pooled, done);
        }
        let (beta, _) = self.solve(pooled)?;
        if beta.iter().any(|b| !b.is_finite()) {
            return Err(Error::invalid(
                "the fit diverged (coefficients are not finite)",
            ));
        }
        self.previous_deviance = Some(deviance);
        self.previous_xtwx = Some(pooled.xtwx.clone());
        self.previous_beta = std::mem::replace(&mut self.beta, beta);
        self.round += 1;
        Ok(Step::Next(Iteration {
            round: self.round,
            coefficients: self.beta.clone(),
            null_mean: self.null_mean,
            gbdt: None,
            ..Iteration::default()
        }))
    }
}

impl GlmFitter {
    fn solve(&self, pooled: &GlmStats) -> Result<(Vec<f64>, nalgebra::DMatrix<f64>)> {
        let p = self.parameters();
        solve_spd(p, &pooled.xtwx, &pooled.xtwz, "X'WX").map_err(|e| match self.rounds {
            Some(_) => Error::invalid(format!(
                "the noised X'WX is not positive definite in round {}: at this cost the privacy noise outweighs what the cohort says about some coefficient; ask again with a larger \"rho\", fewer covariates or a larger cohort ({})",
                self.round, e.message
            )),
            None => e,
        })
    }

    fn finish(&self, pooled: &GlmStats, converged: bool) -> Result<Step<GlmResult>> {
        let p = self.parameters();
        // An exact fit reports the covariance as R's glm.fit and
        // statsmodels' IRLS do: from the X'WX of the step that gave the
        // final coefficients (weights one step behind them), so that the
        // standard errors equal theirs to the last digits, not to the
        // fit's tolerance. A private fit keeps the last round's, which its
        // noise terms below are computed for.
        let (_, inverse) = match (&self.previous_xtwx, self.rounds) {
            (Some(xtwx), None) => solve_spd(p, xtwx, &pooled.xtwz, "X'WX")?,
            _ => self.solve(pooled)?,
        };
        let n = pooled.n as f64;
        let df_residual = n - p as f64;
        let (dispersion, reference, statistic) = match self.family {
            Family::Gaussian => (
                pooled.deviance / df_residual,
                Reference::T(df_residual),
                "t",
            ),
            _ => (1.0, Reference::Normal, "z"),
        };
        let mut cov = inverse.clone() * dispersion;
        if let Some((a_var, b_var)) = &self.noise {
            // β = A⁻¹b with noised A and b: to first order the noise adds
            // A⁻¹ (Σ_b + Σ_A(β)) A⁻¹, where Σ_A(β)ₖ = Σⱼ Var(Aₖⱼ)·βⱼ².
            let extra: Vec<f64> = (0..p)
                .map(|k| {
                    let from_a: f64 = (0..p)
                        .map(|j| a_var[packed_index(p, k.min(j), k.max(j))] * self.beta[j].powi(2))
                        .sum();
                    b_var[k] + from_a
                })
                .collect();
            for i in 0..p {
                for l in 0..p {
                    cov[(i, l)] += (0..p)
                        .map(|k| inverse[(i, k)] * inverse[(l, k)] * extra[k])
                        .sum::<f64>();
                }
            }
        }
        // Under noise the deviance never settles to a tolerance, and each
        // round's fresh noise keeps every step at about √2 standard errors:
        // a private fit has converged when its last step moved every
        // coefficient by less than twice its standard error (centred units).
        let converged = match self.rounds {
            Some(_) => {
                self.previous_beta.len() == p
                    && (0..p).all(|j| {
                        let moved = (self.beta[j] - self.previous_beta[j]).abs();
                        moved <= 2.0 * cov[(j, j)].max(0.0).sqrt()
                    })
            }
            None => converged,
        };
        let mut beta = self.beta.clone();
        if self.intercept && self.centres.iter().any(|c| *c != 0.0) {
            // The nodes fitted x − c: the intercept in x's own units is
            // β₀ − Σ cⱼβⱼ, with variance e'Σe for e = (1, −c₁, …).
            let e: Vec<f64> = self
                .centres
                .iter()
                .enumerate()
                .map(|(j, c)| if j == 0 { 1.0 } else { -c })
                .collect();
            beta[0] = e.iter().zip(&self.beta).map(|(a, b)| a * b).sum();
            let var0: f64 = (0..p)
                .flat_map(|i| (0..p).map(move |l| (i, l)))
                .map(|(i, l)| e[i] * e[l] * cov[(i, l)])
                .sum();
            cov[(0, 0)] = var0;
        }
        let variances: Vec<f64> = (0..p).map(|i| cov[(i, i)]).collect();
        let coefficients = coefficients(
            &self.terms,
            &beta,
            &variances,
            reference,
            self.family != Family::Gaussian,
        );
        Ok(Step::Done(GlmResult {
            family: self.family,
            link: self.family.link().into(),
            outcome: self.outcome.clone(),
            n: pooled.n,
            coefficients,
            statistic: statistic.into(),
            deviance: pooled.deviance,
            df_residual,
            null_deviance: (self.round >= 2).then_some(pooled.null_deviance),
            df_null: n - f64::from(u8::from(self.intercept)),
            dispersion,
            iterations: self.round - 1,
            converged,
            tolerance: self.options.tolerance,
            missing: "complete cases: patients missing the outcome or any covariate are left out"
                .into(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fit(family: Family, x: &[f64], y: &[f64], p: usize, terms: &[&str]) -> GlmResult {
        let fitter = GlmFitter::new(
            family,
            "y".into(),
            terms.iter().map(|s| s.to_string()).collect(),
            true,
            FitOptions {
                tolerance: 1e-10,
                max_iterations: 25,
            },
        );
        crate::models::fit::fit_locally(fitter, |it| {
            Ok(glm_stats(family, x, y, p, &it.coefficients, it.null_mean))
        })
        .unwrap()
    }

    #[test]
    fn challenger_logistic_regression_matches_published_fit() {
        let data = [
            (66, 0),
            (70, 1),
            (69, 0),
            (68, 0),
            (67, 0),
            (72, 0),
            (73, 0),
            (70, 0),
            (57, 1),
            (63, 1),
            (70, 1),
            (78, 0),
            (67, 0),
            (53, 1),
            (67, 0),
            (75, 0),
            (70, 0),
            (81, 0),
            (76, 0),
            (79, 0),
            (75, 1),
            (76, 0),
            (58, 1),
        ];
        let x: Vec<f64> = data.iter().flat_map(|(t, _)| [1.0, *t as f64]).collect();
        let y: Vec<f64> = data.iter().map(|(_, d)| *d as f64).collect();
        let r = fit(Family::Binomial, &x, &y, 2, &["(intercept)", "temp"]);
        assert!(r.converged);
        let c = &r.coefficients;
        assert!((c[0].estimate - 15.0429).abs() < 5e-4, "{c:?}");
        assert!((c[0].std_error - 7.3786).abs() < 5e-4);
        assert!((c[1].estimate + 0.2322).abs() < 5e-5);
        assert!((c[1].std_error - 0.1082).abs() < 5e-5);
        assert!((r.deviance - 20.315).abs() < 5e-4);
        assert!((r.null_deviance.unwrap() - 28.267).abs() < 5e-4);
        assert_eq!(r.df_residual, 21.0);
        assert!(c[1].ratio.unwrap().estimate < 1.0);
    }

    #[test]
    fn gaussian_fit_is_least_squares() {
        let pts = [(1.0, 2.1), (2.0, 3.9), (3.0, 6.2), (4.0, 7.8), (5.0, 10.1)];
        let x: Vec<f64> = pts.iter().flat_map(|(a, _)| [1.0, *a]).collect();
        let y: Vec<f64> = pts.iter().map(|(_, b)| *b).collect();
        let r = fit(Family::Gaussian, &x, &y, 2, &["(intercept)", "x"]);
        // slope = Sxy/Sxx = 19.9/10, intercept = ybar - slope * xbar
        assert!((r.coefficients[1].estimate - 1.99).abs() < 1e-10);
        assert!((r.coefficients[0].estimate - (6.02 - 1.99 * 3.0)).abs() < 1e-10);
        assert_eq!(r.statistic, "t");
        assert!(r.coefficients[0].ratio.is_none());
    }
}
