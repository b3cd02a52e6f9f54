//! The tree mechanism's tests: the tree's shape and sensitivity, that the
//! two passes are the least-squares estimate, unbiasedness and variance
//! against the flat mechanism (seeded), and what a release sends.

use super::*;

/// A seeded source of symmetric integer noise (a rounded normal by
/// Box-Muller on splitmix64), for statistical tests of what the
/// post-processing does; the release itself draws the exact discrete
/// Gaussian from the operating system's entropy.
struct Seeded(u64);

impl Seeded {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self, sigma: f64) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        sigma * (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }

    fn integer(&mut self, sigma: f64) -> i64 {
        self.normal(sigma).round() as i64
    }
}

/// The least-squares solution by brute force: (MᵀM)⁻¹Mᵀy over leaves.
fn least_squares(tree: &Tree, y: &[f64]) -> (Vec<f64>, nalgebra::DMatrix<f64>) {
    let (n, m) = (tree.len(), tree.intervals());
    let mut design = nalgebra::DMatrix::<f64>::zeros(n, m);
    for (i, node) in tree.nodes.iter().enumerate() {
        for l in node.lo..node.hi {
            design[(i, l)] = 1.0;
        }
    }
    let gram = (design.transpose() * &design).try_inverse().unwrap();
    let x = &gram * design.transpose() * nalgebra::DVector::from_column_slice(y);
    (x.iter().copied().collect(), gram)
}

#[test]
fn trees_cover_the_grid_with_logarithmic_depth() {
    for (m, levels) in [
        (1, 1),
        (2, 2),
        (3, 3),
        (4, 3),
        (5, 4),
        (1826, 12),
        (10_000, 15),
    ] {
        let t = Tree::new(m);
        assert_eq!(t.levels(), levels, "{m} intervals");
        assert_eq!(t.len(), 2 * m - 1);
        // Every patient (one leaf) lies on exactly one path of at most
        // `levels` nodes: the sensitivity is √levels.
        let ones: Vec<u64> = (0..m).map(|j| u64::from(j == m / 2)).collect();
        let touched = t.sums(&ones).iter().filter(|s| **s > 0).count();
        assert!(touched <= levels);
        assert_eq!(t.sums(&vec![1; m])[0], m as u64);
    }
    let noise = TreeNoise::for_cost(1826, 0.01).unwrap();
    assert!((noise.node_sd - 12f64.sqrt() / 0.02f64.sqrt()).abs() < 1e-12);
}

#[test]
fn consistency_is_the_least_squares_estimate_and_parents_add_up() {
    let mut rng = Seeded(7);
    for m in [1, 2, 3, 5, 8, 13, 16, 21] {
        let tree = Tree::new(m);
        let truth: Vec<u64> = (0..m).map(|j| (j * 7 % 5) as u64).collect();
        let y: Vec<f64> = tree
            .sums(&truth)
            .iter()
            .map(|s| *s as f64 + rng.integer(3.0) as f64)
            .collect();
        let x = tree.consistent(&y);
        // Parents equal the sum of their children.
        for (i, node) in tree.nodes.iter().enumerate() {
            if let Some((a, b)) = node.children {
                assert!(
                    (x[i] - x[a] - x[b]).abs() < 1e-9,
                    "{m}: {} vs {} + {}",
                    x[i],
                    x[a],
                    x[b]
                );
            }
        }
        // The two passes give the least-squares leaves...
        let (want, gram) = least_squares(&tree, &y);
        for (got, want) in tree.leaves(&x).iter().zip(&want) {
            assert!((got - want).abs() < 1e-9, "{m}: {got} vs {want}");
        }
        // ...and the range variances are cᵀ(MᵀM)⁻¹c.
        for lo in 0..m {
            for hi in lo + 1..=m {
                let want: f64 = (lo..hi)
                    .flat_map(|a| (lo..hi).map(move |b| (a, b)))
                    .map(|(a, b)| gram[(a, b)])
                    .sum();
                let got = tree.range_variance(lo, hi);
                assert!(
                    (got - want).abs() < 1e-9,
                    "{m} [{lo}, {hi}): {got} vs {want}"
                );
            }
        }
    }
}

#[test]
fn released_leaves_are_unbiased_before_the_floor_and_ranges_beat_the_flat_mechanism() {
    // A daily five-year grid, 4,000 draws: each consistent leaf and each
    // cumulative count is unbiased, and its spread is what
    // `range_variance` says.
    let m = 1826;
    let tree = Tree::new(m);
    let truth: Vec<u64> = (0..m).map(|j| (j % 3) as u64).collect();
    let sums = tree.sums(&truth);
    let sigma = tree.sensitivity() / (2.0f64 * 0.01).sqrt();
    let draws = 4000;
    let mut rng = Seeded(2026);
    let watched = [0usize, 17, 900, 1825];
    let prefix = 1000;
    let (mut leaf_sum, mut prefix_sum, mut prefix_sq) = (vec![0.0; watched.len()], 0.0, 0.0);
    for _ in 0..draws {
        let y: Vec<f64> = sums
            .iter()
            .map(|s| *s as f64 + rng.integer(sigma) as f64)
            .collect();
        let leaves = tree.leaves(&tree.consistent(&y));
        for (acc, &j) in leaf_sum.iter_mut().zip(&watched) {
            *acc += leaves[j] - truth[j] as f64;
        }
        let err: f64 =
            leaves[..prefix].iter().sum::<f64>() - truth[..prefix].iter().sum::<u64>() as f64;
        prefix_sum += err;
        prefix_sq += err * err;
    }
    let n = f64::from(draws);
    for (bias, &j) in leaf_sum.iter().zip(&watched) {
        let bias = bias / n;
        let se = sigma * tree.range_variance(j, j + 1).sqrt() / n.sqrt();
        assert!(
            bias.abs() < 5.0 * se,
            "leaf {j}: mean error {bias} (standard error {se})"
        );
    }
    // The rounded normal adds 1/12 to σ².
    let var_unit = sigma * sigma + 1.0 / 12.0;
    let want = var_unit * tree.range_variance(0, prefix);
    let mean = prefix_sum / n;
    let var = prefix_sq / n - mean * mean;
    assert!(
        mean.abs() < 5.0 * (want / n).sqrt(),
        "prefix mean error {mean}"
    );
    // Sample variance of 4,000 normals: within 10% with near certainty.
    assert!(
        (var / want - 1.0).abs() < 0.1,
        "prefix variance {var} vs {want}"
    );
    // The flat mechanism at the same cost: σ = 1/√(2ρ) on each of the
    // 1,000 intervals, variance 1,000/(2ρ). The tree's is under a tenth.
    let flat = prefix as f64 / (2.0 * 0.01);
    assert!(want < flat / 10.0, "tree {want} vs flat {flat}");
    // And the noise of a number at risk grows with log m, not m: a
    // 16-times finer grid at the same cost adds levels, not intervals.
    let fine = TreeNoise::for_cost(m, 0.01).unwrap();
    let coarse = TreeNoise::for_cost(114, 0.01).unwrap();
    let ratio = (fine.at_risk_sd / coarse.at_risk_sd).powi(2);
    assert!(ratio < 3.0, "{ratio}: {fine:?} vs {coarse:?}");
}

#[test]
fn released_counts_are_whole_non_negative_and_at_risk_never_rises() {
    let mut rng = Seeded(11);
    let m = 400;
    let tree = Tree::new(m);
    // Sparse counts: most intervals are empty, as on a daily grid.
    let events: Vec<u64> = (0..m).map(|j| u64::from(j % 37 == 0)).collect();
    let censored: Vec<u64> = (0..m).map(|j| u64::from(j % 53 == 0) * 2).collect();
    let d = release_counts(&tree, &events, || Ok(rng.integer(20.0))).unwrap();
    let c = release_counts(&tree, &censored, || Ok(rng.integer(20.0))).unwrap();
    let total: u64 = d.iter().chain(&c).sum();
    let mut at_risk = total;
    for j in 0..m {
        let next = at_risk - d[j] - c[j];
        assert!(next <= at_risk);
        at_risk = next;
    }
    assert_eq!(at_risk, 0);
    // No bias per interval: the total stays near the truth (24 here),
    // where clamping every interval at 0 would add about 0.4σ each,
    // some 3,000 in all.
    assert!(total < 24 + 300, "{total}");
}

#[test]
fn a_release_merges_the_tail_where_the_noised_at_risk_could_be_noise() {
    // 3,000 patients on a daily five-year grid, nobody followed past
    // day 1,000: with the exact sampler at the default cost the node's
    // curve is never shown interval by interval to the grid's end,
    // and what it sends passes the coordinator's check.
    let points: Vec<f64> = (0..=1826).map(f64::from).collect();
    let time: Vec<f64> = (0..3000).map(|i| f64::from(1 + i % 1000)).collect();
    let event: Vec<bool> = (0..3000).map(|i| i % 4 == 0).collect();
    let tallies = survival::count(&points, &time, &event, &[0; 3000], 1);
    let (groups, scale) = release_groups(tallies, 5, 0.01).unwrap();
    let noise = TreeNoise::for_cost(1826, 0.01).unwrap();
    assert_eq!(scale.count_sd, noise.node_sd);
    assert_eq!(scale.rho, 0.01);
    survival::check(&groups, 1, 1826, 5).unwrap();
    let GroupStats::Released(c) = &groups[0] else {
        panic!("{groups:?}")
    };
    let kept = c.events.len();
    assert!(kept < 1826, "the tail after day 1,000 was shown day by day");
    assert!(c.at_risk_by_interval()[kept - 1] >= noise.at_risk_floor(5));
    assert!(
        c.at_risk.abs_diff(3000) < 5 * noise.at_risk_sd as u64,
        "{}",
        c.at_risk
    );
}

#[test]
fn isotonic_regression_pools_violators() {
    assert_eq!(isotonic(&[1.0, 3.0, 2.0, 4.0]), [1.0, 2.5, 2.5, 4.0]);
    assert_eq!(isotonic(&[3.0, 2.0, 1.0]), [2.0, 2.0, 2.0]);
    // Cumulative -2, -1, 4, 3: held in [0, 3], so 0, 0, 3, 3.
    assert_eq!(
        counts_from_cumulative(&[-2.0, 1.0, 5.0, -1.0]),
        [0, 0, 3, 0]
    );
    // Cumulative 2, 5, 4, 6: 2, 4.5, 4.5, 6, rounded to 2, 5, 5, 6
    // (half away from zero).
    assert_eq!(counts_from_cumulative(&[2.0, 3.0, -1.0, 2.0]), [2, 3, 0, 1]);
    // A negative total releases nothing.
    assert_eq!(counts_from_cumulative(&[3.0, -5.0]), [0, 0]);
}
