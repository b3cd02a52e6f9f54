//! Differential privacy for GLM rounds (binomial and gaussian families).
//!
//! A round's sums are made of per-patient contributions: w·x·x' to X'WX,
//! w·z·x to X'Wz, a deviance term, 1 to n and y to Σy. Covariates and the
//! outcome are clamped to the dictionary's bounds at the node, so with
//! Mⱼ = max |xⱼ| (1 for the intercept and for level indicators) every
//! contribution is bounded by public facts:
//!
//! - binomial: w = μ(1−μ) ≤ 1/4 and |w·z| = |w·η + (y − μ)| ≤ 1.225 (the
//!   largest w·|η| is 0.224, at |η| ≈ 1.54), whatever the coefficients;
//! - gaussian: w = 1 and w·z = y, so |w·z| ≤ M_y;
//! - deviance terms are clipped per patient (binomial at 2·ln 10⁴, which
//!   only touches patients predicted at under 1 in 10,000; gaussian at the
//!   outcome's squared range).
//!
//! Numeric covariates are centred on the middle of their bounds when the
//! model has an intercept (the coordinator turns the intercept back).
//! Scaling column j by 1/Mⱼ, the X'WX block of one patient has L2 norm at
//! most W·p and the X'Wz block at most B·√p, so noising entry (i, j) with
//! σ_A·Mᵢ·Mⱼ and entry j with σ_b·Mⱼ is the Gaussian mechanism on the
//! scaled blocks. A round's ρ is split between the blocks by [`SHARES`];
//! a query's ρ is split evenly over a fixed number of rounds
//! ([`DP_GLM_ROUNDS`]). The sums are floats; each is noised in fixed point
//! at a resolution of σ/1024 with the exact discrete Gaussian.
//!
//! Poisson models are refused: their weights e^η have no bound without
//! clipping that would bias every fit.

use serde::{Deserialize, Serialize};

use crate::dictionary::Dictionary;
use crate::dp::accountant::sigma_for_rho;
use crate::dp::noise::discrete_gaussian;
use crate::error::{Error, Result};
use crate::models::design::Term;
use crate::models::glm::{Family, GlmStats};
use crate::models::linalg::packed_index;

/// Rounds of a GLM fit under differential privacy: R's IRLS from its
/// starting values takes 4 to 6 steps to 1e-8 on well-posed models; the
/// last round gives the standard errors at the last step.
pub const DP_GLM_ROUNDS: u32 = 6;

/// How a round's ρ is shared: X'WX, X'Wz, deviance, null deviance, n, Σy.
pub const SHARES: [f64; 6] = [0.3, 0.4, 0.1, 0.05, 0.1, 0.05];

/// Per-patient clip of a binomial deviance term: 2·ln(10⁴).
pub const BINOMIAL_DEVIANCE_CLIP: f64 = 18.420_680_743_952_367;

/// Largest |w·z| of one patient in a logistic model.
const LOGISTIC_WZ: f64 = 1.225;

/// Why a poisson model is refused under differential privacy, with what
/// to ask instead.
pub(crate) fn poisson_refused() -> Error {
    Error::policy(
        "poisson models are not released under differential privacy (their weights have no public bound); use a binomial or gaussian model, or a study registered with [privacy] exact = true",
    )
}

/// The public bounds a GLM round's sensitivity follows from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GlmBounds {
    /// Mⱼ: the largest magnitude of each design column (after centring).
    pub scale: Vec<f64>,
    /// What each column is centred on: the middle of a numeric covariate's
    /// bounds when the model has an intercept (0 otherwise). Centring
    /// shrinks Mⱼ to half the range and keeps X'WX well conditioned under
    /// noise; the coordinator turns the intercept back at the end.
    pub centre: Vec<f64>,
    /// Clamp limits of each design column (numeric covariates only;
    /// indicators and the intercept are within [0, 1] by construction).
    pub clamp: Vec<Option<(f64, f64)>>,
    /// Clamp limits of the outcome (gaussian).
    pub outcome: Option<(f64, f64)>,
    /// Largest weight w.
    pub weight: f64,
    /// Largest |w·z|.
    pub wz: f64,
    /// Largest |y|.
    pub y: f64,
    /// Per-patient clip of deviance terms.
    pub deviance_clip: f64,
}

impl GlmBounds {
    pub fn new(family: Family, terms: &[Term], outcome: &str, dict: &Dictionary) -> Result<Self> {
        let mut scale = Vec::with_capacity(terms.len());
        let mut clamp = Vec::with_capacity(terms.len());
        let mut centre = Vec::with_capacity(terms.len());
        let intercept = terms.iter().any(|t| matches!(t, Term::Intercept));
        for t in terms {
            match t {
                Term::Intercept | Term::Level { .. } => {
                    scale.push(1.0);
                    clamp.push(None);
                    centre.push(0.0);
                }
                Term::Numeric { variable } => {
                    let (lo, hi) = dict.get(variable)?.numeric_bounds().ok_or_else(|| {
                        Error::invalid(format!(
                            "\"{variable}\" has no public bounds in the data dictionary, so a model using it cannot be noised; add min and max"
                        ))
                    })?;
                    let c = if intercept { (lo + hi) / 2.0 } else { 0.0 };
                    scale.push((lo - c).abs().max((hi - c).abs()).max(f64::MIN_POSITIVE));
                    clamp.push(Some((lo, hi)));
                    centre.push(c);
                }
            }
        }
        let (weight, wz, y, deviance_clip, outcome) = match family {
            Family::Binomial => (0.25, LOGISTIC_WZ, 1.0, BINOMIAL_DEVIANCE_CLIP, None),
            Family::Gaussian => {
                let (lo, hi) = dict.get(outcome)?.numeric_bounds().ok_or_else(|| {
                    Error::invalid(format!(
                        "the outcome \"{outcome}\" has no public bounds in the data dictionary, so the model cannot be noised; add min and max"
                    ))
                })?;
                let m = lo.abs().max(hi.abs());
                (1.0, m, m, (hi - lo) * (hi - lo), Some((lo, hi)))
            }
            Family::Poisson => return Err(poisson_refused()),
        };
        Ok(GlmBounds {
            scale,
            centre,
            clamp,
            outcome,
            weight,
            wz,
            y,
            deviance_clip,
        })
    }

    fn p(&self) -> usize {
        self.scale.len()
    }
}

/// The noise standard deviation of every released sum of one round.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GlmNoise {
    /// Packed like X'WX.
    pub xtwx: Vec<f64>,
    pub xtwz: Vec<f64>,
    pub deviance: f64,
    pub null_deviance: f64,
    pub n: f64,
    pub sum_y: f64,
}

/// The noise one round at cost `rho` carries.
pub fn glm_noise(bounds: &GlmBounds, rho: f64) -> Result<GlmNoise> {
    let p = bounds.p();
    let share = |i: usize| rho * SHARES[i];
    let sd_a = sigma_for_rho(bounds.weight * p as f64, share(0))?;
    let sd_b = sigma_for_rho(bounds.wz * (p as f64).sqrt(), share(1))?;
    let m = &bounds.scale;
    let mut xtwx = vec![0.0; crate::models::linalg::packed_len(p)];
    for i in 0..p {
        for j in i..p {
            xtwx[packed_index(p, i, j)] = sd_a * m[i] * m[j];
        }
    }
    Ok(GlmNoise {
        xtwx,
        xtwz: m.iter().map(|mj| sd_b * mj).collect(),
        deviance: sigma_for_rho(bounds.deviance_clip, share(2))?,
        null_deviance: sigma_for_rho(bounds.deviance_clip, share(3))?,
        n: sigma_for_rho(1.0, share(4))?,
        sum_y: sigma_for_rho(bounds.y, share(5))?,
    })
}

/// Steps of the fixed-point grid a float sum is noised on, per σ.
const STEPS_PER_SIGMA: f64 = 1024.0;

/// `v` plus discrete Gaussian noise of standard deviation `sigma`, on a
/// fixed-point grid of σ/1024.
pub fn noise_float(v: f64, sigma: f64) -> Result<f64> {
    if sigma <= 0.0 {
        return Ok(v);
    }
    let step = sigma / STEPS_PER_SIGMA;
    let grid = (v / step).round();
    let noise = discrete_gaussian(STEPS_PER_SIGMA)? as f64;
    Ok((grid + noise) * step)
}

/// Noises one round's sums. Post-processing keeps what cannot be negative
/// at 0 (deviances, the diagonal of X'WX, Σy of a binomial model).
pub fn release_glm(stats: GlmStats, noise: &GlmNoise, family: Family) -> Result<GlmStats> {
    let p = stats.xtwz.len();
    let mut xtwx = Vec::with_capacity(stats.xtwx.len());
    for (v, sd) in stats.xtwx.iter().zip(&noise.xtwx) {
        xtwx.push(noise_float(*v, *sd)?);
    }
    for i in 0..p {
        let d = &mut xtwx[packed_index(p, i, i)];
        *d = d.max(0.0);
    }
    let xtwz = stats
        .xtwz
        .iter()
        .zip(&noise.xtwz)
        .map(|(v, sd)| noise_float(*v, *sd))
        .collect::<Result<Vec<_>>>()?;
    let n = (stats.n as f64 + discrete_gaussian(noise.n)? as f64).max(0.0) as u64;
    let mut sum_y = noise_float(stats.sum_y, noise.sum_y)?;
    if family == Family::Binomial {
        sum_y = sum_y.clamp(0.0, n as f64);
    }
    Ok(GlmStats {
        n,
        xtwx,
        xtwz,
        deviance: noise_float(stats.deviance, noise.deviance)?.max(0.0),
        sum_y,
        null_deviance: noise_float(stats.null_deviance, noise.null_deviance)?.max(0.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::design::terms;

    #[test]
    fn bounds_and_noise_follow_the_dictionary() {
        let d = Dictionary::cardiovascular();
        let t = terms(&d, &["age".into(), "sex".into()], true).unwrap();
        let b = GlmBounds::new(Family::Binomial, &t, "death", &d).unwrap();
        // age in 18..=110, centred on 64.
        assert_eq!(b.scale, vec![1.0, 46.0, 1.0]);
        assert_eq!(b.centre, vec![0.0, 64.0, 0.0]);
        let n = glm_noise(&b, 0.1).unwrap();
        // X'WX block: Δ = p/4 = 0.75 on the scaled matrix at ρ 0.03.
        let sd_a = 0.75 / (2.0f64 * 0.03).sqrt();
        assert!((n.xtwx[packed_index(3, 1, 1)] - sd_a * 46.0 * 46.0).abs() < 1e-6);
        assert!((n.xtwx[packed_index(3, 0, 2)] - sd_a).abs() < 1e-12);
        let e = GlmBounds::new(Family::Poisson, &t, "age", &d).unwrap_err();
        assert_eq!(e.code, crate::ErrorCode::Policy);
        let g = GlmBounds::new(Family::Gaussian, &t, "sbp", &d).unwrap();
        assert_eq!((g.wz, g.deviance_clip), (260.0, 200.0 * 200.0));
    }

    #[test]
    fn the_logistic_weight_bound_holds() {
        // w·|η| for μ = logistic(η) peaks at about 0.224.
        let worst = (0..200_000)
            .map(|i| {
                let eta = i as f64 * 1e-4;
                let mu = 1.0 / (1.0 + (-eta).exp());
                mu * (1.0 - mu) * eta
            })
            .fold(0.0, f64::max);
        assert!(worst < LOGISTIC_WZ - 1.0 && worst > 0.22, "{worst}");
    }

    #[test]
    fn floats_are_noised_on_a_fine_grid_at_the_stated_scale() {
        let draws: Vec<f64> = (0..3000)
            .map(|_| noise_float(1234.5, 10.0).unwrap() - 1234.5)
            .collect();
        let m = draws.iter().sum::<f64>() / draws.len() as f64;
        let sd = (draws.iter().map(|x| (x - m).powi(2)).sum::<f64>() / 2999.0).sqrt();
        assert!(m.abs() < 1.0 && (sd - 10.0).abs() < 0.6, "{m} {sd}");
        assert_eq!(noise_float(3.0, 0.0).unwrap(), 3.0);
    }
}
