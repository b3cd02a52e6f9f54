//! Exact integer noise: the discrete Gaussian and discrete Laplace
//! samplers of OpenDP (Canonne, Kamath and Steinke 2020), which sample by
//! exact rational arithmetic, never through floating point, with entropy
//! from OpenSSL's `RAND_priv_bytes` (seeded by the operating system).
//!
//! The scale is public (it follows from the privacy budget), so turning it
//! into an exact rational from its `f64` value leaks nothing; only the
//! sampling has to be exact.

use dashu::integer::IBig;
use dashu::rational::RBig;
use opendp::traits::samplers::{sample_discrete_gaussian, sample_discrete_laplace};

use crate::error::{Error, Result};

fn rational(scale: f64, what: &str) -> Result<RBig> {
    if !(scale.is_finite() && scale >= 0.0) {
        return Err(Error::internal(format!(
            "the {what} scale must be a finite number of at least 0, got {scale}"
        )));
    }
    RBig::try_from(scale)
        .map_err(|e| Error::internal(format!("cannot use {scale} as a {what} scale: {e:?}")))
}

fn integer(x: IBig) -> Result<i64> {
    i64::try_from(x).map_err(|_| Error::internal("a noise draw does not fit in 64 bits"))
}

/// One draw from the discrete Gaussian N_Z(0, σ²): P(x) ∝ exp(−x²/2σ²).
pub fn discrete_gaussian(sigma: f64) -> Result<i64> {
    let scale = rational(sigma, "discrete Gaussian")?;
    let x = sample_discrete_gaussian(scale).map_err(|e| {
        Error::internal(format!(
            "the noise sampler failed (not enough system entropy?): {e:?}"
        ))
    })?;
    integer(x)
}

/// One draw from the discrete Laplace L_Z(0, b): P(x) ∝ exp(−|x|/b).
pub fn discrete_laplace(scale: f64) -> Result<i64> {
    let scale = rational(scale, "discrete Laplace")?;
    let x = sample_discrete_laplace(scale).map_err(|e| {
        Error::internal(format!(
            "the noise sampler failed (not enough system entropy?): {e:?}"
        ))
    })?;
    integer(x)
}

#[cfg(test)]
mod tests {
    //! Goodness of fit against the exact distributions, as OpenDP tests its
    //! samplers: a chi-square test over the central values and a
    //! Kolmogorov-Smirnov test over the whole range, both at α = 1e-6, and
    //! the same tests catching a mechanism that adds too little noise.

    use statrs::distribution::{ChiSquared, ContinuousCDF};

    use super::*;

    const ALPHA: f64 = 1e-6;
    const SAMPLES: usize = 20_000;

    /// Exact probabilities on `-width..=width`, from an unnormalised mass.
    fn pmf(width: i64, mass: impl Fn(i64) -> f64) -> Vec<f64> {
        let raw: Vec<f64> = (-width..=width).map(mass).collect();
        let total: f64 = raw.iter().sum();
        raw.into_iter().map(|p| p / total).collect()
    }

    /// p-value of a chi-square test of `draws` against `probs` (centred on
    /// 0), pooling values whose expected count is under 5 into the tails.
    fn chi_square_p(draws: &[i64], probs: &[f64]) -> f64 {
        let width = (probs.len() / 2) as i64;
        let n = draws.len() as f64;
        let mut observed = vec![0.0; probs.len()];
        for &x in draws {
            let i = (x.clamp(-width, width) + width) as usize;
            observed[i] += 1.0;
        }
        // Central cells with an expected count of at least 5, plus one
        // cell for each tail.
        let central: Vec<usize> = (0..probs.len()).filter(|&i| probs[i] * n >= 5.0).collect();
        let (lo, hi) = (central[0], central[central.len() - 1]);
        let mut cells: Vec<(f64, f64)> = Vec::new();
        let tail = |r: std::ops::Range<usize>| {
            r.fold((0.0, 0.0), |(o, e), i| (o + observed[i], e + probs[i] * n))
        };
        cells.push(tail(0..lo));
        cells.extend((lo..=hi).map(|i| (observed[i], probs[i] * n)));
        cells.push(tail(hi + 1..probs.len()));
        let cells: Vec<(f64, f64)> = cells.into_iter().filter(|(_, e)| *e > 0.0).collect();
        let chi: f64 = cells.iter().map(|(o, e)| (o - e) * (o - e) / e).sum();
        let df = (cells.len() - 1) as f64;
        ChiSquared::new(df).unwrap().sf(chi)
    }

    /// Kolmogorov-Smirnov distance between the draws and the exact CDF.
    fn ks_distance(draws: &[i64], probs: &[f64]) -> f64 {
        let width = (probs.len() / 2) as i64;
        let mut sorted = draws.to_vec();
        sorted.sort_unstable();
        let n = sorted.len() as f64;
        let mut cdf = 0.0;
        let mut d: f64 = 0.0;
        for (i, p) in probs.iter().enumerate() {
            cdf += p;
            let x = i as i64 - width;
            let empirical = sorted.partition_point(|v| *v <= x) as f64 / n;
            d = d.max((empirical - cdf).abs());
        }
        d
    }

    /// The distance the KS test tolerates at level `ALPHA` (conservative
    /// for discrete distributions).
    fn ks_critical(n: usize) -> f64 {
        ((2.0 / ALPHA).ln() / (2.0 * n as f64)).sqrt()
    }

    fn draws(f: impl Fn() -> Result<i64>) -> Vec<i64> {
        (0..SAMPLES).map(|_| f().unwrap()).collect()
    }

    fn gaussian_pmf(sigma: f64) -> Vec<f64> {
        pmf((sigma * 12.0).ceil() as i64, |x| {
            (-(x as f64).powi(2) / (2.0 * sigma * sigma)).exp()
        })
    }

    fn laplace_pmf(b: f64) -> Vec<f64> {
        pmf((b * 40.0).ceil() as i64, |x| (-(x as f64).abs() / b).exp())
    }

    #[test]
    fn discrete_gaussian_fits_its_exact_distribution() {
        for sigma in [1.5, 4.0] {
            let probs = gaussian_pmf(sigma);
            let xs = draws(|| discrete_gaussian(sigma));
            let p = chi_square_p(&xs, &probs);
            assert!(p > ALPHA, "sigma {sigma}: chi-square p = {p}");
            let d = ks_distance(&xs, &probs);
            assert!(d < ks_critical(SAMPLES), "sigma {sigma}: KS distance {d}");
        }
    }

    #[test]
    fn discrete_laplace_fits_its_exact_distribution() {
        for b in [1.0, 3.0] {
            let probs = laplace_pmf(b);
            let xs = draws(|| discrete_laplace(b));
            let p = chi_square_p(&xs, &probs);
            assert!(p > ALPHA, "scale {b}: chi-square p = {p}");
            let d = ks_distance(&xs, &probs);
            assert!(d < ks_critical(SAMPLES), "scale {b}: KS distance {d}");
        }
    }

    #[test]
    fn an_under_noised_mechanism_is_caught() {
        // Claims σ = 4 but draws with σ = 2: both tests reject it.
        let probs = gaussian_pmf(4.0);
        let xs = draws(|| discrete_gaussian(2.0));
        assert!(chi_square_p(&xs, &probs) < ALPHA);
        assert!(ks_distance(&xs, &probs) > ks_critical(SAMPLES));
        // Claims b = 3 but draws with b = 2.
        let probs = laplace_pmf(3.0);
        let xs = draws(|| discrete_laplace(2.0));
        assert!(chi_square_p(&xs, &probs) < ALPHA);
    }

    #[test]
    fn bad_scales_are_refused() {
        assert!(discrete_gaussian(f64::NAN).is_err());
        assert!(discrete_gaussian(-1.0).is_err());
        assert_eq!(discrete_gaussian(0.0).unwrap(), 0);
        assert!(discrete_laplace(f64::INFINITY).is_err());
    }
}
