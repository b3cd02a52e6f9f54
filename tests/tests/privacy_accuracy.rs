//! Accuracy under differential privacy, not just noise: over 1,000 seeded
//! trials, each a cohort of 10,002 patients drawn from three synthetic
//! hospitals (3,334 of each one's 5,000, chosen by the trial's seed), the
//! pooled noised mean's stated 95% interval holds the cohort's true mean
//! at least 95% of the time, and the pooled noised count is within its
//! stated noise band as often. The mechanism is the one the
//! nodes run (`privacy::release`) and the pooling the coordinator's.

use plexus::synth::{generate_site, SiteSpec};
use plexus_core::disclosure::Rules;
use plexus_core::pool::{pool_value, PooledValue, Z_95};
use plexus_core::privacy::release::{release, NoiseScale};
use plexus_core::privacy::report::{annotate_summary, count_noise_sd};
use plexus_core::stats::SummarySums;
use plexus_core::{Analysis, Dictionary, NodeStats, RawStats};
use rand::rngs::StdRng;
use rand::SeedableRng;

const TRIALS: u64 = 1000;
const PER_SITE: usize = 3334;
const SITE_SIZE: usize = 5000;
/// The default cost of a query.
const RHO: f64 = plexus_core::study::DEFAULT_QUERY_RHO;

#[test]
fn noised_means_and_counts_stay_within_their_stated_intervals() {
    let dict = Dictionary::cardiovascular();
    let variable = "aaa_diameter";
    let var = dict.get(variable).unwrap();
    let summary = Analysis::Summary {
        variable: variable.into(),
    };
    let rules = Rules::new(5);
    let (mut mean_hits, mut noise_only_hits, mut count_hits) = (0, 0, 0);
    let (mut mean_error, mut count_error) = (0.0f64, 0.0f64);
    let (mut sq_err, mut sq_sd) = (0.0f64, 0.0f64);
    let sites: Vec<_> = (0..3u64)
        .map(|site| {
            generate_site(&SiteSpec {
                name: format!("site-{site}"),
                patients: SITE_SIZE,
                seed: 2026 + site,
            })
        })
        .collect();
    for trial in 0..TRIALS {
        let mut rng = StdRng::seed_from_u64(trial);
        let mut answers = Vec::new();
        let mut noises: Vec<(String, NoiseScale)> = Vec::new();
        let mut counts = Vec::new();
        let (mut true_sum, mut true_n, mut true_count) = (0.0, 0u64, 0u64);
        for data in &sites {
            let name = data.name.clone();
            let cohort: Vec<_> = rand::seq::index::sample(&mut rng, SITE_SIZE, PER_SITE)
                .into_iter()
                .map(|i| &data.patients[i])
                .collect();
            let values: Vec<f64> = cohort.iter().filter_map(|p| p.aaa_diameter).collect();
            true_sum += values.iter().sum::<f64>();
            true_n += values.len() as u64;
            true_count += cohort.len() as u64;
            let sums = SummarySums::of(var, variable, &values);
            let (stats, noise) = release(RawStats::Summary(sums), rules, RHO).unwrap();
            answers.push((name.clone(), stats));
            noises.push((name.clone(), noise));
            let (count, count_noise) =
                release(RawStats::Count(cohort.len() as u64), rules, RHO).unwrap();
            let NodeStats::Count(c) = count else { panic!() };
            counts.push((c.count().unwrap(), count_noise));
        }
        let mut value = pool_value(&summary, &dict, &answers, 5).unwrap();
        annotate_summary(&mut value, &answers, |node| {
            noises.iter().find(|(n, _)| n == node).map(|(_, x)| *x)
        });
        let PooledValue::Summary {
            mean,
            ci: Some([lo, hi]),
            noise_sd: Some(noise_sd),
            ..
        } = value
        else {
            panic!("{value:?}")
        };
        let truth = true_sum / true_n as f64;
        mean_hits += u32::from(lo <= truth && truth <= hi);
        noise_only_hits += u32::from((mean - truth).abs() <= Z_95 * noise_sd);
        mean_error = mean_error.max((mean - truth).abs());
        sq_err += (mean - truth).powi(2);
        sq_sd += noise_sd * noise_sd;

        let pooled: u64 = counts.iter().map(|(c, _)| c).sum();
        let sd = count_noise_sd(&counts.iter().map(|(_, n)| *n).collect::<Vec<_>>()).unwrap();
        let off = (pooled as f64 - true_count as f64).abs();
        count_hits += u32::from(off <= Z_95 * sd);
        count_error = count_error.max(off);
    }
    let share = |hits: u32| f64::from(hits) / TRIALS as f64;
    eprintln!(
        "{TRIALS} trials at rho {RHO}: mean of {variable} within its stated 95% CI {:.1}% \
         (noise-only band {:.1}%; noise sd {:.4} mm stated, {:.4} mm seen; largest error {mean_error:.3} mm); \
         count within ±1.96 noise sd {:.1}% (largest error {count_error})",
        100.0 * share(mean_hits),
        100.0 * share(noise_only_hits),
        (sq_sd / TRIALS as f64).sqrt(),
        (sq_err / TRIALS as f64).sqrt(),
        100.0 * share(count_hits),
    );
    assert!(share(mean_hits) >= 0.95, "{mean_hits} of {TRIALS}");
    // The noise-only bands are exact 95% intervals: allow for chance
    // (1000 draws at 0.95 fall under 92% with probability about 1e-5).
    assert!(share(noise_only_hits) >= 0.92, "{noise_only_hits}");
    assert!(share(count_hits) >= 0.92, "{count_hits}");
}
