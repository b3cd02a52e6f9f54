//! The noised release: what a node sends for a study under differential
//! privacy. Every released number is an integer sum with a sensitivity
//! fixed by public facts (1 for a count; the clamping bound of a
//! fixed-point sum), noised with the exact discrete Gaussian at the σ the
//! query's cost ρ buys. The minimum cell size, secondary suppression and
//! the at-risk rule then run on the noised values, which is
//! post-processing and costs nothing more.
//!
//! How each analysis spends its ρ:
//! - count: one count, Δ = 1, σ = 1/√(2ρ);
//! - histogram, quantiles, table, two-by-two: every patient falls in
//!   exactly one cell (the bins with below and above, or the table's
//!   cells), so the whole vector has L2 sensitivity 1 and each cell gets
//!   σ = 1/√(2ρ);
//! - summary: ρ/3 each to the count, the sum and the sum of squares of
//!   the clamped values minus the middle of their bounds, with Δ = 1, half
//!   the range and its square, in fixed point;
//! - Kaplan-Meier: the events and censorings of each group go through a
//!   tree of range counts over the grid ([`super::survival`]): a patient
//!   changes one leaf-to-root path of L nodes, so every node gets
//!   σ = √L/√(2ρ), and the numbers at risk come from the consistent
//!   cumulative counts, with an error that grows with log m, not m.
//!
//! GLM rounds (binomial, gaussian) are noised as [`super::glm`] explains,
//! correlation sums as [`release_pairs`] does. Cox rounds are refused under
//! differential privacy for now.
//!
//! No rule here looks at an exact value. The rules that exact studies
//! decide on the data (the complement rule, the dominance rule, a
//! model's level, two-way, parameter-share and singular-design rules)
//! are either decided on the noised values the job pays for
//! ([`super::decisions`]) or left to the noise, whose scale is set by what
//! any one patient could add; the book's differential privacy page (docs/src/privacy/differential-privacy.md) says which
//! and why.

use super::decisions::glm_first_round;
use super::glm::{glm_noise, noise_float, poisson_refused, release_glm, GlmBounds};
use super::scale::NoiseScale;
use crate::dictionary::Dictionary;
use crate::disclosure::{cell, suppress_table, Rules};
use crate::dp::accountant::sigma_for_rho;
use crate::dp::noise::discrete_gaussian;
use crate::error::{Error, Result};
use crate::models::correlation::PairSums;
use crate::models::fit::Iteration;
use crate::models::glm::Family;
use crate::models::linalg::{packed_index, packed_len};
use crate::query::{Analysis, Query};
use crate::stats::{Moments, NodeStats, RawStats, SummarySums};

fn noisy_count(n: u64, sigma: f64) -> Result<u64> {
    let v = i128::from(n) + i128::from(discrete_gaussian(sigma)?);
    // A negative count is impossible: post-processing makes it 0.
    Ok(u64::try_from(v.max(0)).unwrap_or(u64::MAX))
}

fn noisy_sum(v: i128, sigma: f64) -> Result<i128> {
    Ok(v + i128::from(discrete_gaussian(sigma)?))
}

/// Refuses, with a `policy` error saying why and what to do, a query whose
/// answer is not released under differential privacy: a Cox model, a
/// poisson GLM (its weights have no public bound), or a fit per site (each
/// would spend the query's budget again). The coordinator asks this at
/// submission and every node again before it computes.
pub fn releasable(query: &Query) -> Result<()> {
    match &query.analysis {
        Analysis::Cox { .. } => Err(cox_refused()),
        Analysis::Gbdt { .. } => Err(gbdt_refused()),
        Analysis::ModelPerformance { .. } => Err(performance_refused()),
        Analysis::Glm { family, .. } if *family == Family::Poisson => Err(poisson_refused()),
        Analysis::Glm { .. } if query.by_site => Err(Error::policy(
            "by_site is not offered for models under differential privacy: each site's own fit would spend the query's budget again; ask without by_site",
        )),
        _ => Ok(()),
    }
}

pub fn gbdt_refused() -> Error {
    Error::policy(
        "gbdt is not yet released under differential privacy; run it in a study registered with [privacy] exact = true that the hospitals accept",
    )
}

pub fn performance_refused() -> Error {
    Error::policy(
        "model_performance is not yet released under differential privacy; run it in a study registered with [privacy] exact = true that the hospitals accept",
    )
}

fn cox_refused() -> Error {
    Error::policy(
        "cox is not yet released under differential privacy; run it in a study registered with [privacy] exact = true that the hospitals accept",
    )
}

/// What a node sends for one job in a study under differential privacy:
/// the noised statistics, or a refusal decided on them. A refusal is
/// post-processing of a release the job paid for, so it is charged like
/// an answer and says nothing the noised statistics would not.
#[derive(Debug, Clone, PartialEq)]
pub enum Release {
    Stats(NodeStats),
    Refused(Error),
}

/// [`release`] for any analysis: GLM rounds are noised by
/// [`super::glm::release_glm`] with the bounds of their design (and a
/// fit's first round is checked by [`glm_first_round`] on its noised
/// sums), everything else by [`release`].
pub fn release_for(
    raw: RawStats,
    analysis: &Analysis,
    dict: &Dictionary,
    rules: Rules,
    rho: f64,
    iteration: Option<&Iteration>,
) -> Result<(Release, NoiseScale)> {
    if let (RawStats::Pairs(pairs), Analysis::Correlation { variables, .. }) = (&raw, analysis) {
        let (stats, noise) = release_pairs(pairs, variables, dict, rules, rho)?;
        return Ok((Release::Stats(stats), noise));
    }
    let RawStats::Glm(stats) = raw else {
        let (stats, noise) = release(raw, rules, rho)?;
        return Ok((Release::Stats(stats), noise));
    };
    let Analysis::Glm {
        family, outcome, ..
    } = analysis
    else {
        return Err(Error::internal("GLM sums for another analysis"));
    };
    let terms = analysis.terms(dict)?;
    let bounds = GlmBounds::new(*family, &terms, outcome, dict)?;
    let noise = glm_noise(&bounds, rho)?;
    let scale = NoiseScale {
        count_sd: noise.n,
        rho,
        ..NoiseScale::default()
    };
    let noised = release_glm(stats, &noise, *family)?;
    let first = iteration.is_some_and(|it| it.coefficients.is_empty());
    if first {
        if let Some(refusal) = glm_first_round(&noised, &terms, *family, outcome, dict, rules)? {
            return Ok((Release::Refused(refusal), scale));
        }
    }
    Ok((Release::Stats(NodeStats::Glm(noised)), scale))
}

/// Noises a correlation's per-pair sums. Each variable is clamped (at the
/// node) and, here, centred and scaled to u = (x − c)/h in [−1, 1]; every
/// patient then adds at most 1 to each of a pair's six sums (n, Σu, Σv,
/// Σu², Σv², Σuv), so the whole packed set of m pairs has L2 sensitivity
/// √(6m). Noised in that scale, the sums are made consistent (Σu² ≥ (Σu)²/n,
/// |cross| ≤ the product of spreads) and turned back into the variables'
/// units; an entry on fewer than k noised patients is withheld.
fn release_pairs(
    pairs: &[PairSums],
    variables: &[String],
    dict: &Dictionary,
    rules: Rules,
    rho: f64,
) -> Result<(NodeStats, NoiseScale)> {
    let (noised, noise) = noise_pairs(pairs, variables, dict, rho)?;
    // An entry on fewer than k (noised) patients is withheld. The rule
    // against thin pairwise differences is not needed here: every count is
    // noised, so a difference between two of them is noise, not patients.
    let k = u64::from(rules.k);
    let released = noised
        .into_iter()
        .map(|s| (s.n >= k).then_some(s))
        .collect();
    Ok((NodeStats::Pairs(released), noise))
}

/// The noised, mutually consistent per-pair sums of [`release_pairs`],
/// before any is withheld.
fn noise_pairs(
    pairs: &[PairSums],
    variables: &[String],
    dict: &Dictionary,
    rho: f64,
) -> Result<(Vec<PairSums>, NoiseScale)> {
    let p = variables.len();
    if pairs.len() != packed_len(p) {
        return Err(Error::internal("pair sums do not match the variables"));
    }
    let mut scale = Vec::with_capacity(p);
    for v in variables {
        let (lo, hi) = dict.get(v)?.numeric_bounds().ok_or_else(|| {
            Error::invalid(format!(
                "\"{v}\" has no public bounds in the data dictionary, so its sums cannot be noised; add min and max"
            ))
        })?;
        scale.push(((lo + hi) / 2.0, ((hi - lo) / 2.0).max(f64::MIN_POSITIVE)));
    }
    let sigma = sigma_for_rho((6.0 * pairs.len() as f64).sqrt(), rho)?;
    let mut noised = Vec::with_capacity(pairs.len());
    for a in 0..p {
        for b in a..p {
            let s = &pairs[packed_index(p, a, b)];
            let ((ca, ha), (cb, hb)) = (scale[a], scale[b]);
            let n = s.n as f64;
            // Centred, scaled sums of the clamped values.
            let su = (s.sum_x - ca * n) / ha;
            let sv = (s.sum_y - cb * n) / hb;
            let suu = (s.sum_xx - 2.0 * ca * s.sum_x + ca * ca * n) / (ha * ha);
            let svv = (s.sum_yy - 2.0 * cb * s.sum_y + cb * cb * n) / (hb * hb);
            let suv = (s.sum_xy - cb * s.sum_x - ca * s.sum_y + ca * cb * n) / (ha * hb);
            let n = noisy_count(s.n, sigma)?;
            let nf = (n as f64).max(1.0);
            let su = noise_float(su, sigma)?;
            let sv = if a == b { su } else { noise_float(sv, sigma)? };
            let suu = noise_float(suu, sigma)?.max(su * su / nf);
            let svv = if a == b {
                suu
            } else {
                noise_float(svv, sigma)?.max(sv * sv / nf)
            };
            let spread = ((suu - su * su / nf) * (svv - sv * sv / nf))
                .max(0.0)
                .sqrt();
            let cross = if a == b {
                suu - su * su / nf
            } else {
                (noise_float(suv, sigma)? - su * sv / nf).clamp(-spread, spread)
            };
            let suv = cross + su * sv / nf;
            let nf = n as f64;
            noised.push(PairSums {
                n,
                sum_x: ca * nf + ha * su,
                sum_y: cb * nf + hb * sv,
                sum_xx: ca * ca * nf + 2.0 * ca * ha * su + ha * ha * suu,
                sum_yy: cb * cb * nf + 2.0 * cb * hb * sv + hb * hb * svv,
                sum_xy: ca * cb * nf + ca * hb * sv + cb * ha * su + ha * hb * suv,
            });
        }
    }
    let noise = NoiseScale {
        count_sd: sigma,
        rho,
        ..NoiseScale::default()
    };
    Ok((noised, noise))
}

/// The noise a summary's release carries: ρ/3 each to the count, the
/// centred sum and the centred sum of squares. Returns the scale in the
/// variable's units and the three σ in fixed-point units the noise is
/// drawn at.
fn summary_noise(s: &SummarySums, rho: f64) -> Result<(NoiseScale, [f64; 3])> {
    let Some((fp, _)) = &s.fixed else {
        return Err(Error::invalid(
            "the variable has no public bounds in the data dictionary, so its sum cannot be noised; add min and max to the dictionary",
        ));
    };
    let third = rho / 3.0;
    let spread = fp.centred_sensitivity() as f64;
    let sd_n = sigma_for_rho(1.0, third)?;
    let sd_sum = sigma_for_rho(spread, third)?;
    let sd_sq = sigma_for_rho(spread * spread, third)?;
    let scale = NoiseScale {
        count_sd: sd_n,
        sum_sd: sd_sum / fp.scale(),
        square_sd: sd_sq / (fp.scale() * fp.scale()),
        centre: fp.decode(i128::from(fp.centre())),
        rho,
    };
    Ok((scale, [sd_n, sd_sum, sd_sq]))
}

/// A summary's count, sum and sum of squares, noised in fixed point at
/// the σ of [`summary_noise`] and turned back from centred sums:
/// Σx = Σ(x−c) + c·n and Σx² = Σ(x−c)² + 2c·Σ(x−c) + c²·n, all from noised
/// values. With `floor`, a noised centred sum of squares under 0 is raised
/// to 0.
fn noised_moments(s: &SummarySums, sigmas: [f64; 3], floor: bool) -> Result<Moments> {
    let Some((fp, sums)) = &s.fixed else {
        return Err(Error::internal(
            "a summary without fixed-point sums (checked)",
        ));
    };
    let [sd_n, sd_sum, sd_sq] = sigmas;
    let n = noisy_count(sums.n, sd_n)?;
    let centred = fp.decode(noisy_sum(sums.sum, sd_sum)?);
    let squares = noisy_sum(sums.squares, sd_sq)?;
    let centred_squares = fp.decode_square(if floor { squares.max(0) } else { squares });
    let (c, nf) = (fp.decode(i128::from(fp.centre())), n as f64);
    Ok(Moments {
        n,
        sum: centred + c * nf,
        sum_squares: centred_squares + 2.0 * c * centred + c * c * nf,
    })
}

/// Noises and checks what a node computed for a study under differential
/// privacy at cost `rho`.
pub fn release(raw: RawStats, rules: Rules, rho: f64) -> Result<(NodeStats, NoiseScale)> {
    let k = rules.k;
    let unit = sigma_for_rho(1.0, rho)?;
    let counts = NoiseScale {
        count_sd: unit,
        rho,
        ..NoiseScale::default()
    };
    let noisy = |n: u64| noisy_count(n, unit);
    Ok(match raw {
        RawStats::Count(n) => (NodeStats::Count(cell(noisy(n)?, k)), counts),
        RawStats::Summary(s) => {
            // No dominance rule here: it would decide on exact values (an
            // oracle), and the sums are clamped to the dictionary's bounds
            // and noised at a scale set by the largest value any patient
            // could hold, so no patient's value stands out of the noise.
            let (scale, sigmas) = summary_noise(&s, rho)?;
            let m = noised_moments(&s, sigmas, true)?;
            // Noise can leave Σx² below (Σx)²/n, a negative variance: it is
            // raised to that floor (variance 0), which the pooled result
            // then reports.
            let released = (m.n >= u64::from(k)).then(|| Moments {
                sum_squares: m.sum_squares.max(m.sum * m.sum / m.n as f64),
                ..m
            });
            (NodeStats::Summary(released), scale)
        }
        RawStats::Histogram { bins, below, above } => (
            NodeStats::Histogram {
                bins: bins
                    .into_iter()
                    .map(|n| Ok(cell(noisy(n)?, k)))
                    .collect::<Result<_>>()?,
                below: cell(noisy(below)?, k),
                above: cell(noisy(above)?, k),
            },
            counts,
        ),
        RawStats::Table {
            rows,
            columns,
            cells,
        } => {
            let cells = cells.into_iter().map(noisy).collect::<Result<Vec<_>>>()?;
            (
                NodeStats::Table {
                    rows,
                    columns,
                    cells: suppress_table(cells, rows, columns, k),
                },
                counts,
            )
        }
        RawStats::Survival(groups) => {
            let (groups, noise) = super::survival::release_groups(groups, k, rho)?;
            (NodeStats::Survival(groups), noise)
        }
        RawStats::Glm(_) => {
            return Err(Error::internal(
                "GLM rounds are released by release_for, which knows their design",
            ))
        }
        RawStats::Pairs(_) => {
            return Err(Error::internal(
                "correlation sums are released by release_for, which knows their variables",
            ))
        }
        RawStats::Cox(_) => return Err(cox_refused()),
        RawStats::Gbdt(_) => return Err(gbdt_refused()),
        RawStats::Performance(_) => return Err(performance_refused()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::Cell;
    use crate::models::correlation;
    use crate::stats::SummarySums;
    use crate::Dictionary;

    #[test]
    fn counts_are_noised_at_the_scale_rho_buys() {
        // ρ = 0.005 buys σ = 10 for a count.
        let rules = Rules::new(5);
        let draws: Vec<f64> = (0..2000)
            .map(|_| {
                let (s, noise) = release(RawStats::Count(1000), rules, 0.005).unwrap();
                assert!((noise.count_sd - 10.0).abs() < 1e-12);
                match s {
                    NodeStats::Count(Cell::Count(n)) => n as f64 - 1000.0,
                    other => panic!("{other:?}"),
                }
            })
            .collect();
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        let var = draws.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (draws.len() - 1) as f64;
        assert!(mean.abs() < 1.0, "mean noise {mean}");
        assert!((var.sqrt() - 10.0).abs() < 1.0, "noise sd {}", var.sqrt());
        assert!(draws.iter().any(|d| *d != 0.0));
    }

    #[test]
    fn summaries_are_noised_sums_of_clamped_values() {
        let d = Dictionary::cardiovascular();
        let age = d.get("age").unwrap();
        // 500 is clamped to the dictionary's 110 before it is summed.
        let mut values = vec![60.0; 999];
        values.push(500.0);
        let s = SummarySums::of(age, "age", &values);
        let (fp, sums) = s.fixed.unwrap();
        // Centred on 64 (the middle of 18..=110).
        assert_eq!(sums.sum, 999 * (6000 - 6400) + (11_000 - 6400));
        let (out, noise) = release(RawStats::Summary(s), Rules::new(5), 0.03).unwrap();
        // σ of the sum = 46 / √(2 · 0.01) ≈ 325 years.
        assert!((noise.sum_sd - 46.0 / 0.02f64.sqrt()).abs() < 1e-9);
        assert_eq!(noise.centre, 64.0);
        assert!((noise.count_sd - 1.0 / 0.02f64.sqrt()).abs() < 1e-12);
        let NodeStats::Summary(Some(m)) = out else {
            panic!()
        };
        assert!((m.sum - 60_050.0).abs() < 10.0 * noise.sum_sd, "{m:?}");
        assert!(m.sum_squares >= 0.0);
        assert_eq!(fp.scale(), 100.0);
    }

    #[test]
    fn thin_cells_and_tables_stay_protected_after_noise() {
        let rules = Rules::new(5);
        // A tiny cell is suppressed whenever its noised value is under k,
        // and secondary suppression then covers it.
        let (t, _) = release(
            RawStats::Table {
                rows: 2,
                columns: 2,
                cells: vec![0, 1000, 1000, 1000],
            },
            rules,
            // σ ≈ 0.7: the zero cell stays under 5.
            1.0,
        )
        .unwrap();
        let NodeStats::Table { cells, .. } = t else {
            panic!()
        };
        assert_eq!(cells[0], Cell::Suppressed);
        assert_eq!(cells.iter().filter(|c| **c == Cell::Suppressed).count(), 4);
        let e = release(RawStats::Cox(Default::default()), rules, 0.1).unwrap_err();
        assert_eq!(e.code, crate::ErrorCode::Policy);
        assert!(e.message.contains("exact"), "{e}");
    }

    #[test]
    fn correlation_sums_are_noised_consistently_and_stay_close() {
        let d = Dictionary::cardiovascular();
        // age and sbp, correlated, 20,000 patients, a few without sbp.
        let age: Vec<f64> = (0..20_000).map(|i| 40.0 + f64::from(i % 50)).collect();
        let sbp: Vec<f64> = age
            .iter()
            .enumerate()
            .map(|(i, a)| {
                if i % 97 == 0 {
                    f64::NAN
                } else {
                    80.0 + a + f64::from((i * 7919 % 31) as u32)
                }
            })
            .collect();
        let raw = correlation::pair_sums(&[age, sbp], correlation::Missing::Pairwise);
        let vars = vec!["age".to_string(), "sbp".to_string()];
        let analysis = Analysis::Correlation {
            variables: vars.clone(),
            missing: correlation::Missing::Pairwise,
        };
        let exact = correlation::pool(
            &vars,
            correlation::Missing::Pairwise,
            &[("a".into(), raw.iter().copied().map(Some).collect())],
        )
        .unwrap();
        let (Release::Stats(stats), noise) = release_for(
            RawStats::Pairs(raw),
            &analysis,
            &d,
            Rules::new(5),
            0.1,
            None,
        )
        .unwrap() else {
            panic!("correlation sums are never refused")
        };
        // √(6·3)/√0.2 ≈ 9.5 in units of half the range.
        assert!((noise.count_sd - (18.0f64).sqrt() / 0.2f64.sqrt()).abs() < 1e-9);
        let NodeStats::Pairs(pairs) = stats else {
            panic!()
        };
        assert!(
            pairs.iter().all(|p| p.is_some_and(|p| p.plausible())),
            "{pairs:?}"
        );
        let noised = correlation::pool(
            &vars,
            correlation::Missing::Pairwise,
            &[("a".into(), pairs)],
        )
        .unwrap();
        let (r, want) = (
            noised.correlation[0][1].unwrap(),
            exact.correlation[0][1].unwrap(),
        );
        assert!((r - want).abs() < 0.05, "{r} vs {want}");
    }
}
