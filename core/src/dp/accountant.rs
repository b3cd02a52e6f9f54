//! Zero-concentrated differential privacy (zCDP) accounting: what a noised
//! release costs in ρ, how much noise a cost buys, how costs add, and the
//! (ε, δ) guarantee a total ρ gives.
//!
//! - The discrete Gaussian mechanism with noise σ on a query of L2
//!   sensitivity Δ is ρ-zCDP with ρ = Δ² / 2σ² (Canonne, Kamath and Steinke
//!   2020, Theorem 14).
//! - zCDP composes by adding ρ (Bun and Steinke 2016, Lemma 2.3), so a
//!   study's budget is a sum.
//! - ρ-zCDP implies (ε, δ)-DP for every δ > 0 with
//!   ε = ρ + 2·√(ρ·ln(1/δ)) (Bun and Steinke 2016, Proposition 1.3), the
//!   conservative conversion shown next to every budget.

use crate::error::{Error, Result};

/// The smallest privacy cost a query or a study may name: a count at it
/// is noised with σ ≈ 707, well past any use, and the samplers stay exact.
pub const MIN_RHO: f64 = 1e-6;
/// The largest: a budget beyond it (ε in the hundreds) promises nothing.
pub const MAX_RHO: f64 = 100.0;

/// Refuses, naming `what` and the range, a privacy cost outside
/// [`MIN_RHO`]..=[`MAX_RHO`] (or not a number).
pub fn check_rho(what: &str, rho: f64) -> Result<()> {
    if !(rho.is_finite() && (MIN_RHO..=MAX_RHO).contains(&rho)) {
        return Err(Error::invalid(format!(
            "{what} is a privacy cost in zCDP rho and must be a number from {MIN_RHO:e} to {MAX_RHO}, got {rho:e}"
        )));
    }
    Ok(())
}

/// ρ of the discrete Gaussian mechanism with noise `sigma` on a query of
/// L2 sensitivity `sensitivity`.
pub fn rho_of_gaussian(sensitivity: f64, sigma: f64) -> f64 {
    if sigma <= 0.0 {
        return f64::INFINITY;
    }
    sensitivity * sensitivity / (2.0 * sigma * sigma)
}

/// The noise σ that makes a query of L2 sensitivity `sensitivity` cost `rho`.
pub fn sigma_for_rho(sensitivity: f64, rho: f64) -> Result<f64> {
    if !(rho > 0.0 && rho.is_finite() && sensitivity >= 0.0 && sensitivity.is_finite()) {
        return Err(Error::invalid(format!(
            "a privacy cost must be a positive finite rho and the sensitivity finite, got rho {rho} and sensitivity {sensitivity}"
        )));
    }
    Ok(sensitivity / (2.0 * rho).sqrt())
}

/// The ε of the (ε, δ)-DP guarantee that ρ-zCDP implies.
pub fn epsilon(rho: f64, delta: f64) -> f64 {
    if rho <= 0.0 {
        return 0.0;
    }
    rho + 2.0 * (rho * (1.0 / delta).ln()).sqrt()
}

/// Splits a cost over `parts` releases of equal sensitivity (the rounds of
/// a fit, the cells of a histogram released together): each gets an equal
/// share and the shares add back to the whole.
pub fn split(rho: f64, parts: u32) -> f64 {
    rho / f64::from(parts.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_noise_and_guarantees_agree() {
        // A count (sensitivity 1) with σ = 10 costs ρ = 1/200.
        assert!((rho_of_gaussian(1.0, 10.0) - 0.005).abs() < 1e-15);
        let sigma = sigma_for_rho(1.0, 0.005).unwrap();
        assert!((sigma - 10.0).abs() < 1e-12);
        // ρ = 0.5 at δ = 1e-6: ε = 0.5 + 2·√(0.5·ln 1e6) ≈ 5.757.
        assert!((epsilon(0.5, 1e-6) - 5.7568).abs() < 1e-3);
        assert_eq!(epsilon(0.0, 1e-6), 0.0);
        // Composition is additive: k releases at ρ/k cost ρ.
        let part = split(0.3, 3);
        assert!((3.0 * part - 0.3).abs() < 1e-15);
        assert!(sigma_for_rho(1.0, 0.0).is_err());
        assert!(sigma_for_rho(f64::NAN, 0.1).is_err());
    }
}
