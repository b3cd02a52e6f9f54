//! Cox proportional hazards stratified by site, by federated
//! Newton-Raphson. Every site is its own stratum with its own baseline
//! hazard, so the partial log-likelihood, its gradient and its information
//! matrix are sums over sites: each round every node returns its own at the
//! current coefficients ([`CoxStats`]) and the coordinator takes the Newton
//! step ([`CoxFitter`]). Ties are handled by Efron's method (R's default)
//! or Breslow's.

use serde::{Deserialize, Serialize};

use super::fit::{Iteration, IterativeFit, RoundStats, Step};
use super::glm::FitOptions;
use super::inference::{chi_square_p, coefficients, Coefficient, Reference};
use super::linalg::{add_outer, packed_index, packed_len, solve_spd};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ties {
    #[default]
    Efron,
    Breslow,
}

/// One node's contribution to one Newton round.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CoxStats {
    pub n: u64,
    pub events: u64,
    /// Log partial likelihood at the round's coefficients.
    pub loglik: f64,
    pub gradient: Vec<f64>,
    /// Information matrix (minus the Hessian), packed upper triangle.
    pub information: Vec<f64>,
}

impl RoundStats for CoxStats {
    fn zero(p: usize) -> Self {
        CoxStats {
            gradient: vec![0.0; p],
            information: vec![0.0; packed_len(p)],
            ..Default::default()
        }
    }

    fn merge(&mut self, other: &CoxStats) {
        self.n = self.n.saturating_add(other.n);
        self.events = self.events.saturating_add(other.events);
        self.loglik += other.loglik;
        self.gradient
            .iter_mut()
            .zip(&other.gradient)
            .for_each(|(a, b)| *a += b);
        self.information
            .iter_mut()
            .zip(&other.information)
            .for_each(|(a, b)| *a += b);
    }
}

impl CoxStats {
    pub fn check(&self, p: usize) -> Result<()> {
        if self.gradient.len() != p || self.information.len() != packed_len(p) {
            return Err(Error::invalid(format!(
                "node answered a {p}-parameter Cox model with {} and {} values",
                self.gradient.len(),
                self.information.len()
            )));
        }
        let finite = self
            .gradient
            .iter()
            .chain(&self.information)
            .chain([&self.loglik])
            .all(|v| v.is_finite());
        if !finite || self.loglik > 1e-9 || self.events > self.n {
            return Err(Error::invalid(
                "node answered with a partial likelihood that is not finite, positive, or more events than patients",
            ));
        }
        if (0..p).any(|i| self.information[packed_index(p, i, i)] < 0.0) {
            return Err(Error::invalid(
                "node answered with an information matrix whose diagonal is negative",
            ));
        }
        Ok(())
    }
}

/// A node's survival data ready for repeated rounds: sorted by time,
/// latest first, with covariates centred on their local means (which
/// leaves the partial likelihood unchanged and keeps exp(xβ) in range).
#[derive(Debug, Clone)]
pub struct CoxData {
    p: usize,
    x: Vec<f64>,
    time: Vec<f64>,
    event: Vec<bool>,
}

impl CoxData {
    /// `x` is row-major with `p` columns, one row per patient.
    pub fn new(x: &[f64], time: &[f64], event: &[bool], p: usize) -> Self {
        let n = time.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| time[b].total_cmp(&time[a]));
        let mut means = vec![0.0; p];
        for row in x.chunks_exact(p.max(1)).take(n) {
            means.iter_mut().zip(row).for_each(|(m, v)| *m += v);
        }
        means.iter_mut().for_each(|m| *m /= n.max(1) as f64);
        let mut xs = Vec::with_capacity(n * p);
        for &i in &order {
            xs.extend(x[i * p..(i + 1) * p].iter().zip(&means).map(|(v, m)| v - m));
        }
        CoxData {
            p,
            x: xs,
            time: order.iter().map(|&i| time[i]).collect(),
            event: order.iter().map(|&i| event[i]).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.time.len()
    }

    pub fn parameters(&self) -> usize {
        self.p
    }

    pub fn is_empty(&self) -> bool {
        self.time.is_empty()
    }

    pub fn events(&self) -> u64 {
        self.event.iter().filter(|e| **e).count() as u64
    }

    /// Log partial likelihood, gradient and information at `beta`.
    pub fn stats(&self, beta: &[f64], ties: Ties) -> CoxStats {
        self.round(beta, ties).0
    }

    /// [`CoxData::stats`] and the effective number of patients the risk
    /// weights r = exp(xβ) rest on, (Σr)²/Σr², from the same pass:
    /// coefficients chosen to put all the weight on a few patients would
    /// make the round's sums theirs, so the node checks it before release.
    pub fn round(&self, beta: &[f64], ties: Ties) -> (CoxStats, f64) {
        let p = self.p;
        let mut sum_r2 = 0.0;
        let q = packed_len(p);
        let mut out = CoxStats::zero(p);
        out.n = self.len() as u64;
        out.events = self.events();
        // Risk-set sums S0 = Σ r, S1 = Σ r x, S2 = Σ r x xᵀ over time ≥ t.
        let (mut s0, mut s1, mut s2) = (0.0, vec![0.0; p], vec![0.0; q]);
        // Sums over the tied events at t.
        let (mut e1, mut e2) = (vec![0.0; p], vec![0.0; q]);
        let mut i = 0;
        let n = self.len();
        while i < n {
            let t = self.time[i];
            let mut j = i;
            let mut d = 0usize;
            let mut e0 = 0.0;
            e1.iter_mut().for_each(|v| *v = 0.0);
            e2.iter_mut().for_each(|v| *v = 0.0);
            while j < n && self.time[j] == t {
                let row = &self.x[j * p..(j + 1) * p];
                let xb: f64 = row.iter().zip(beta).map(|(a, b)| a * b).sum();
                let r = xb.exp();
                s0 += r;
                sum_r2 += r * r;
                s1.iter_mut().zip(row).for_each(|(s, v)| *s += r * v);
                add_outer(&mut s2, row, r);
                if self.event[j] {
                    d += 1;
                    out.loglik += xb;
                    out.gradient.iter_mut().zip(row).for_each(|(g, v)| *g += v);
                    if ties == Ties::Efron && d > 0 {
                        e0 += r;
                        e1.iter_mut().zip(row).for_each(|(s, v)| *s += r * v);
                        add_outer(&mut e2, row, r);
                    }
                }
                j += 1;
            }
            for l in 0..d {
                let f = match ties {
                    Ties::Efron => l as f64 / d as f64,
                    Ties::Breslow => 0.0,
                };
                let a0 = s0 - f * e0;
                out.loglik -= a0.ln();
                for a in 0..p {
                    let m_a = (s1[a] - f * e1[a]) / a0;
                    out.gradient[a] -= m_a;
                    for b in a..p {
                        let k = packed_index(p, a, b);
                        let m_b = (s1[b] - f * e1[b]) / a0;
                        out.information[k] += (s2[k] - f * e2[k]) / a0 - m_a * m_b;
                    }
                }
            }
            i = j;
        }
        // After the last (earliest) time the risk set is everyone: s0 = Σr.
        let effective = if sum_r2 > 0.0 && sum_r2.is_finite() {
            s0 * s0 / sum_r2
        } else {
            0.0
        };
        (out, effective)
    }
}

/// The pooled result of a Cox fit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoxResult {
    pub time: String,
    pub event: String,
    pub ties: Ties,
    /// "site": every node is its own stratum.
    pub strata: String,
    pub n: u64,
    pub events: u64,
    /// With `ratio` the hazard ratio and its interval.
    pub coefficients: Vec<Coefficient>,
    pub loglik: f64,
    pub loglik_null: f64,
    pub likelihood_ratio: LikelihoodRatio,
    pub iterations: u32,
    pub converged: bool,
    pub tolerance: f64,
    pub missing: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LikelihoodRatio {
    pub chi_square: f64,
    pub df: u32,
    pub p_value: f64,
}

/// The coordinator's side of a federated Newton-Raphson Cox fit, following
/// R's `coxph`: start at zero, halve a step that lowers the likelihood,
/// stop when the relative change of the log partial likelihood is under
/// the tolerance.
pub struct CoxFitter {
    time: String,
    event: String,
    terms: Vec<String>,
    ties: Ties,
    options: FitOptions,
    round: u32,
    /// Coefficients the current round was evaluated at.
    beta: Vec<f64>,
    /// The best point so far: coefficients and log-likelihood.
    best: Option<(Vec<f64>, f64)>,
    loglik_null: f64,
    halvings: u32,
}

impl CoxFitter {
    pub fn new(
        time: String,
        event: String,
        terms: Vec<String>,
        ties: Ties,
        options: FitOptions,
    ) -> Self {
        let p = terms.len();
        CoxFitter {
            time,
            event,
            terms,
            ties,
            options,
            round: 0,
            beta: vec![0.0; p],
            best: None,
            loglik_null: 0.0,
            halvings: 0,
        }
    }
}

impl IterativeFit for CoxFitter {
    type Stats = CoxStats;
    type Output = CoxResult;

    fn parameters(&self) -> usize {
        self.terms.len()
    }

    fn start(&mut self) -> Iteration {
        self.round = 1;
        Iteration {
            round: 1,
            coefficients: self.beta.clone(),
            null_mean: None,
            gbdt: None,
            ..Iteration::default()
        }
    }

    fn step(&mut self, pooled: &CoxStats) -> Result<Step<CoxResult>> {
        let p = self.parameters();
        pooled.check(p)?;
        if pooled.events == 0 {
            return Err(Error::invalid(
                "no events in the pooled cohort; a Cox model needs at least one",
            ));
        }
        let l = pooled.loglik;
        if self.round == 1 {
            self.loglik_null = l;
        }
        if let Some((best_beta, best_l)) = &self.best {
            if l < *best_l - 1e-12 * best_l.abs().max(1.0) && self.halvings < 20 {
                // The step overshot: go half way back and evaluate again.
                self.halvings += 1;
                self.beta = best_beta
                    .iter()
                    .zip(&self.beta)
                    .map(|(a, b)| (a + b) / 2.0)
                    .collect();
                return Ok(self.next());
            }
            let converged =
                ((l - best_l) / l.abs().max(f64::MIN_POSITIVE)).abs() < self.options.tolerance;
            // Twenty halvings that still lower the likelihood: stop, and say
            // the fit did not converge rather than step from a worse point.
            let stuck = l < *best_l - 1e-12 * best_l.abs().max(1.0);
            if stuck || converged || self.round > self.options.max_iterations {
                return self.finish(pooled, converged && !stuck);
            }
        }
        self.halvings = 0;
        let (step, _) = solve_spd(
            p,
            &pooled.information,
            &pooled.gradient,
            "information matrix",
        )?;
        self.best = Some((self.beta.clone(), l));
        self.beta = self.beta.iter().zip(&step).map(|(b, s)| b + s).collect();
        if self.beta.iter().any(|b| !b.is_finite()) {
            return Err(Error::invalid(
                "the Cox fit diverged (coefficients are not finite)",
            ));
        }
        Ok(self.next())
    }
}

impl CoxFitter {
    fn next(&mut self) -> Step<CoxResult> {
        self.round += 1;
        Step::Next(Iteration {
            round: self.round,
            coefficients: self.beta.clone(),
            null_mean: None,
            gbdt: None,
            ..Iteration::default()
        })
    }

    fn finish(&self, pooled: &CoxStats, converged: bool) -> Result<Step<CoxResult>> {
        let p = self.parameters();
        let (_, inverse) = solve_spd(
            p,
            &pooled.information,
            &pooled.gradient,
            "information matrix",
        )?;
        let variances: Vec<f64> = (0..p).map(|i| inverse[(i, i)]).collect();
        let chi = 2.0 * (pooled.loglik - self.loglik_null);
        Ok(Step::Done(CoxResult {
            time: self.time.clone(),
            event: self.event.clone(),
            ties: self.ties,
            strata: "site".into(),
            n: pooled.n,
            events: pooled.events,
            coefficients: coefficients(
                &self.terms,
                &self.beta,
                &variances,
                Reference::Normal,
                true,
            ),
            loglik: pooled.loglik,
            loglik_null: self.loglik_null,
            likelihood_ratio: LikelihoodRatio {
                chi_square: chi,
                df: p as u32,
                p_value: chi_square_p(chi, p as f64),
            },
            iterations: self.round - 1,
            converged,
            tolerance: self.options.tolerance,
            missing:
                "complete cases: patients missing the time, the event or any covariate are left out"
                    .into(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// R's `survival::aml`, with x = 1 for "Nonmaintained".
    fn aml() -> (Vec<f64>, Vec<f64>, Vec<bool>) {
        let rows = &crate::models::fixtures::AML;
        (
            rows.iter().map(|r| f64::from(r.2)).collect(),
            rows.iter().map(|r| r.0).collect(),
            rows.iter().map(|r| r.1).collect(),
        )
    }

    fn fit(ties: Ties) -> CoxResult {
        let (x, t, e) = aml();
        let data = CoxData::new(&x, &t, &e, 1);
        let fitter = CoxFitter::new(
            "time".into(),
            "status".into(),
            vec!["x=nonmaintained".into()],
            ties,
            FitOptions {
                tolerance: 1e-12,
                max_iterations: 30,
            },
        );
        crate::models::fit::fit_locally(fitter, |it| Ok(data.stats(&it.coefficients, ties)))
            .unwrap()
    }

    #[test]
    fn aml_matches_published_efron_fit() {
        let r = fit(Ties::Efron);
        assert!(r.converged);
        let c = &r.coefficients[0];
        assert!((c.estimate - 0.9155).abs() < 5e-4, "{c:?}");
        assert!((c.std_error - 0.5119).abs() < 5e-4);
        assert!((r.likelihood_ratio.chi_square - 3.38).abs() < 5e-3);
        assert_eq!((r.n, r.events), (23, 18));
    }

    #[test]
    fn effective_n_counts_the_patients_the_weights_rest_on() {
        let x: Vec<f64> = (0..20).map(f64::from).collect();
        let t: Vec<f64> = (0..20).map(|i| f64::from(i) + 1.0).collect();
        let data = CoxData::new(&x, &t, &[true; 20], 1);
        // Equal weights: every patient counts.
        assert!((data.round(&[0.0], Ties::Efron).1 - 20.0).abs() < 1e-9);
        // exp(5x): the largest x carries nearly all the weight.
        assert!(data.round(&[5.0], Ties::Efron).1 < 1.1);
        assert_eq!(
            data.round(&[0.3], Ties::Efron).0,
            data.stats(&[0.3], Ties::Efron)
        );
    }

    #[test]
    fn breslow_differs_from_efron_with_ties() {
        let b = fit(Ties::Breslow);
        let e = fit(Ties::Efron);
        assert!((b.coefficients[0].estimate - e.coefficients[0].estimate).abs() > 1e-3);
        assert!(
            (b.coefficients[0].estimate - 0.9043).abs() < 5e-4,
            "{:?}",
            b.coefficients
        );
    }
}
