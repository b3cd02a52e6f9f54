//! Differentially private logistic regression, as the nodes and the
//! coordinator run it (clamped, centred design; six noised rounds; noise
//! in the standard errors), against the exact fit on the same rows.

use plexus_core::models::design::terms;
use plexus_core::models::fit::{IterativeFit, RoundStats, Step};
use plexus_core::models::glm::{glm_round, Family, FitOptions, GlmFitter, GlmResult, GlmStats};
use plexus_core::privacy::glm::{glm_noise, release_glm, GlmBounds, DP_GLM_ROUNDS};
use plexus_core::Dictionary;
use plexus_sandbox::synth::{generate_site, Patient, SiteSpec};

const COVARIATES: [&str; 4] = ["age", "smoking", "diabetes", "aaa_diameter"];

/// Design rows (intercept, age, smoking former/current, diabetes, aaa
/// diameter) of the complete cases, and the outcome.
fn design(patients: &[Patient], centre: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for p in patients {
        let Some(d) = p.aaa_diameter else { continue };
        x.extend([
            1.0,
            p.age as f64 - centre[1],
            f64::from(u8::from(p.smoking == "former")),
            f64::from(u8::from(p.smoking == "current")),
            f64::from(u8::from(p.diabetes)),
            d - centre[5],
        ]);
        y.push(f64::from(u8::from(p.death)));
    }
    (x, y)
}

fn fitter(private: Option<&GlmBounds>) -> GlmFitter {
    let names = [
        "(intercept)",
        "age",
        "smoking=former",
        "smoking=current",
        "diabetes=true",
        "aaa_diameter",
    ];
    let f = GlmFitter::new(
        Family::Binomial,
        "death".into(),
        names.iter().map(|s| s.to_string()).collect(),
        true,
        FitOptions {
            tolerance: 1e-8,
            max_iterations: 25,
        },
    );
    match private {
        Some(b) => f.private(DP_GLM_ROUNDS, b.centre.clone()),
        None => f,
    }
}

/// Runs a fit over `sites`, noising each site's round at `rho` when given.
fn fit(
    sites: &[(Vec<f64>, Vec<f64>)],
    bounds: Option<(&GlmBounds, f64)>,
) -> plexus_core::Result<GlmResult> {
    let p = 6;
    let mut f = fitter(bounds.map(|b| b.0));
    let mut it = f.start();
    loop {
        let mut total = GlmStats::zero(p);
        let (mut a, mut b) = (vec![0.0; 21], vec![0.0; p]);
        for (x, y) in sites {
            let clip = bounds.map_or(f64::INFINITY, |(b, _)| b.deviance_clip);
            let (stats, _) = glm_round(
                Family::Binomial,
                x,
                y,
                p,
                &it.coefficients,
                it.null_mean,
                clip,
            );
            let stats = match bounds {
                Some((bd, rho)) => {
                    let noise = glm_noise(bd, rho)?;
                    a.iter_mut().zip(&noise.xtwx).for_each(|(v, s)| *v += s * s);
                    b.iter_mut().zip(&noise.xtwz).for_each(|(v, s)| *v += s * s);
                    release_glm(stats, &noise, Family::Binomial)?
                }
                None => stats,
            };
            total.merge(&stats);
        }
        if bounds.is_some() {
            f.set_noise(a, b);
        }
        match f.step(&total)? {
            Step::Next(next) => it = next,
            Step::Done(r) => return Ok(r),
        }
    }
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// At the default cost (ρ 0.01 for the whole fit, so 0.01/6 a round), the
/// private fit's 95% intervals hold the exact fit's coefficients as often
/// as they should. `PLEXUS_DP_GLM_PATIENTS` (per site, default 60,000) and
/// `PLEXUS_DP_GLM_TRIALS` (default 20) scale the measurement.
#[test]
fn private_logistic_coefficients_are_within_their_stated_intervals() {
    let per_site = env("PLEXUS_DP_GLM_PATIENTS", 60_000);
    let trials = env("PLEXUS_DP_GLM_TRIALS", 20);
    let dict = Dictionary::cardiovascular();
    let covariates: Vec<String> = COVARIATES.iter().map(|s| s.to_string()).collect();
    let t = terms(&dict, &covariates, true).unwrap();
    let bounds = GlmBounds::new(Family::Binomial, &t, "death", &dict).unwrap();
    let sites: Vec<_> = (0..3u64)
        .map(|i| {
            let s = generate_site(&SiteSpec {
                name: format!("site-{i}"),
                patients: per_site,
                seed: 900 + i,
            });
            design(&s.patients, &bounds.centre)
        })
        .collect();
    // The exact fit on the same (centred) rows; its intercept is in
    // centred units, so only the slopes are compared.
    let exact = fit(&sites, None).unwrap();
    let rho = plexus_core::study::DEFAULT_QUERY_RHO / f64::from(DP_GLM_ROUNDS);
    let (mut inside, mut checks) = (0, 0);
    let mut worst = vec![0.0f64; exact.coefficients.len()];
    let mut se_ratio = vec![0.0f64; exact.coefficients.len()];
    for _ in 0..trials {
        let r = fit(&sites, Some((&bounds, rho))).unwrap();
        for (j, (e, p)) in exact
            .coefficients
            .iter()
            .zip(&r.coefficients)
            .enumerate()
            .skip(1)
        {
            checks += 1;
            inside += u32::from(p.ci_lower <= e.estimate && e.estimate <= p.ci_upper);
            worst[j] = worst[j].max((p.estimate - e.estimate).abs());
            se_ratio[j] += p.std_error / e.std_error / trials as f64;
        }
    }
    for (j, e) in exact.coefficients.iter().enumerate().skip(1) {
        eprintln!(
            "{} patients, rho {}: {} exact {:.5} (se {:.5}); private se {:.2}x exact, largest error {:.5}",
            3 * per_site,
            plexus_core::study::DEFAULT_QUERY_RHO,
            e.term,
            e.estimate,
            e.std_error,
            se_ratio[j],
            worst[j]
        );
    }
    eprintln!("exact coefficients within the private 95% intervals: {inside} of {checks}");
    // 95% intervals: at 100 checks, fewer than 85 inside is a 4.5-sd event.
    assert!(
        f64::from(inside) >= 0.85 * checks as f64,
        "{inside} of {checks}"
    );
}
