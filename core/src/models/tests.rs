//! Property tests: sufficient statistics from any split of the same rows
//! across nodes pool to the same answer as the rows in one place.
//!
//! Every generator draws a small synthetic cohort (30 to 120 rows) with a
//! fixed relationship plus proptest-drawn noise, so the models are
//! well-posed, and a split: each row's node among 1 to 6 nodes. Where the
//! node-side code is meant to cope with a node without rows (regression
//! rounds, correlation sums) some nodes may be left empty; elsewhere every
//! node holds at least one row.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::correlation::{self, Missing};
use super::cox::{self, CoxData, CoxResult, CoxStats, Ties};
use super::fit::{Iteration, RoundStats};
use super::glm::{self, Family, FitOptions, GlmFitter, GlmResult, GlmStats};
use super::survival::{self, Curve, Grid, GroupStats, KaplanMeierResult};
use crate::dictionary::Dictionary;
use crate::disclosure;
use crate::error::{ErrorCode, Result};
use crate::pool::{pool_value, PooledValue};
use crate::query::Analysis;
use crate::stats::{NodeStats, RawStats};

const CASES: u32 = 48;
const MAX_NODES: usize = 6;
const ROWS: std::ops::RangeInclusive<usize> = 30..=120;

type Check = std::result::Result<(), TestCaseError>;

/// `a` and `b` agree to `tol`, relative to the larger of them, or
/// absolutely for values under 1 (where a relative error means nothing);
/// equal infinities and two NaNs agree.
fn close(a: f64, b: f64, tol: f64) -> bool {
    a == b || (a.is_nan() && b.is_nan()) || (a - b).abs() <= tol * a.abs().max(b.abs()).max(1.0)
}

fn all_close(a: &[f64], b: &[f64], tol: f64) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| close(*x, *y, tol))
}

/// [`all_close`] for values that may be missing: missing in both, or close.
fn all_close_opt(a: &[Option<f64>], b: &[Option<f64>], tol: f64) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| match (x, y) {
            (Some(x), Some(y)) => close(*x, *y, tol),
            (x, y) => x.is_none() && y.is_none(),
        })
}

// ---------------------------------------------------------------------------
// Splits

/// Which node each row lives at.
#[derive(Debug, Clone)]
struct Split {
    nodes: usize,
    node_of: Vec<usize>,
}

impl Split {
    /// Row indices per node, in row order.
    fn rows(&self) -> Vec<Vec<usize>> {
        let mut out = vec![Vec::new(); self.nodes];
        for (row, &node) in self.node_of.iter().enumerate() {
            out[node].push(row);
        }
        out
    }
}

/// Every node gets at least one of the `n` rows.
fn split_nonempty(n: usize) -> impl Strategy<Value = Split> {
    (1..=MAX_NODES).prop_flat_map(move |nodes| {
        (
            vec(0..nodes, n),
            Just((0..n).collect::<Vec<usize>>()).prop_shuffle(),
        )
            .prop_map(move |(mut node_of, order)| {
                for (node, &row) in order.iter().take(nodes).enumerate() {
                    node_of[row] = node;
                }
                Split { nodes, node_of }
            })
    })
}

/// Some nodes (about a quarter, anywhere in the order) may hold no rows.
fn split_maybe_empty(n: usize) -> impl Strategy<Value = Split> {
    (1..=MAX_NODES).prop_flat_map(move |nodes| {
        (vec(prop::bool::weighted(0.25), nodes), vec(0..60usize, n)).prop_map(
            move |(silent, raw)| {
                let mut active: Vec<usize> = (0..nodes).filter(|&i| !silent[i]).collect();
                if active.is_empty() {
                    active = (0..nodes).collect();
                }
                let node_of = raw.iter().map(|r| active[r % active.len()]).collect();
                Split { nodes, node_of }
            },
        )
    })
}

// ---------------------------------------------------------------------------
// GLM

const GLM_P: usize = 3;

/// Design `[1, x1, x2]` (row-major) and outcome.
#[derive(Debug, Clone)]
struct GlmData {
    x: Vec<f64>,
    y: Vec<f64>,
}

/// Smallest count whose Poisson(`mu`) distribution function reaches `u`.
fn poisson_quantile(mu: f64, u: f64) -> f64 {
    let (mut k, mut p) = (0u32, (-mu).exp());
    let mut cdf = p;
    while u > cdf && k < 200 {
        k += 1;
        p *= mu / f64::from(k);
        cdf += p;
    }
    f64::from(k)
}

/// x1 uniform in [-2, 2], x2 a 0/1 indicator, y from the family's model
/// at fixed coefficients with noise `u`. The first four rows are forced
/// to hold both levels of x2 (and, for the logistic model, both outcomes
/// at each level), so the design is never singular.
fn glm_data(family: Family, raw: &[(f64, bool, f64)]) -> GlmData {
    let mut x = Vec::with_capacity(raw.len() * GLM_P);
    let mut y = Vec::with_capacity(raw.len());
    for (i, &(x1, x2, u)) in raw.iter().enumerate() {
        let x2 = match i {
            0 | 1 => 0.0,
            2 | 3 => 1.0,
            _ => f64::from(u8::from(x2)),
        };
        let yi = match family {
            Family::Gaussian => 1.5 + 2.0 * x1 - 0.7 * x2 + 2.0 * (u - 0.5),
            Family::Binomial if i < 4 => (i % 2) as f64,
            Family::Binomial => {
                let eta = -0.4 + 1.0 * x1 + 0.8 * x2;
                f64::from(u8::from(u < 1.0 / (1.0 + (-eta).exp())))
            }
            Family::Poisson => poisson_quantile((0.3 + 0.5 * x1 - 0.4 * x2).exp(), u),
        };
        x.extend([1.0, x1, x2]);
        y.push(yi);
    }
    GlmData { x, y }
}

fn glm_case(family: Family) -> impl Strategy<Value = (GlmData, Split)> {
    ROWS.prop_flat_map(|n| {
        (
            vec((-2.0..=2.0f64, any::<bool>(), 0.0..1.0f64), n),
            split_maybe_empty(n),
        )
    })
    .prop_map(move |(raw, split)| (glm_data(family, &raw), split))
}

fn glm_fit(family: Family, mut round: impl FnMut(&Iteration) -> GlmStats) -> Result<GlmResult> {
    let fitter = GlmFitter::new(
        family,
        "y".into(),
        vec!["(intercept)".into(), "x1".into(), "x2".into()],
        true,
        FitOptions {
            tolerance: 1e-10,
            max_iterations: 25,
        },
    );
    crate::models::fit::fit_locally(fitter, |it| Ok(round(it)))
}

/// The federated fit (each round merges the nodes' own statistics) equals
/// the fit with each round's statistics over all rows at once.
fn check_glm_split(family: Family, data: &GlmData, split: &Split) -> Check {
    let whole = glm_fit(family, |it| {
        glm::glm_stats(
            family,
            &data.x,
            &data.y,
            GLM_P,
            &it.coefficients,
            it.null_mean,
        )
    })
    .map_err(|e| TestCaseError::fail(format!("centralised fit failed: {e}")))?;
    prop_assert!(whole.converged, "centralised fit did not converge");

    let nodes: Vec<GlmData> = split
        .rows()
        .iter()
        .map(|rows| GlmData {
            x: rows
                .iter()
                .flat_map(|&r| data.x[r * GLM_P..(r + 1) * GLM_P].iter().copied())
                .collect(),
            y: rows.iter().map(|&r| data.y[r]).collect(),
        })
        .collect();
    let federated = glm_fit(family, |it| {
        let mut pooled = GlmStats::zero(GLM_P);
        for node in &nodes {
            let s = glm::glm_stats(
                family,
                &node.x,
                &node.y,
                GLM_P,
                &it.coefficients,
                it.null_mean,
            );
            pooled.merge(&s);
        }
        pooled
    })
    .map_err(|e| TestCaseError::fail(format!("federated fit failed: {e}")))?;

    prop_assert_eq!(federated.n, whole.n);
    prop_assert_eq!(federated.iterations, whole.iterations);
    prop_assert_eq!(federated.converged, whole.converged);
    prop_assert_eq!(federated.df_residual, whole.df_residual);
    prop_assert!(close(federated.deviance, whole.deviance, 1e-9));
    match (federated.null_deviance, whole.null_deviance) {
        (Some(f), Some(w)) => prop_assert!(close(f, w, 1e-9), "null deviance {} vs {}", f, w),
        other => prop_assert!(false, "null deviance missing: {:?}", other),
    }
    prop_assert!(close(federated.dispersion, whole.dispersion, 1e-9));
    prop_assert_eq!(federated.coefficients.len(), GLM_P);
    for (f, w) in federated.coefficients.iter().zip(&whole.coefficients) {
        prop_assert_eq!(&f.term, &w.term);
        for (a, b) in [
            (f.estimate, w.estimate),
            (f.std_error, w.std_error),
            (f.statistic, w.statistic),
            (f.p_value, w.p_value),
            (f.ci_lower, w.ci_lower),
            (f.ci_upper, w.ci_upper),
        ] {
            prop_assert!(close(a, b, 1e-9), "{}: {} vs {}", f.term, a, b);
        }
    }
    Ok(())
}

#[test]
fn glm_stats_of_no_rows_are_zero() {
    for family in [Family::Gaussian, Family::Binomial, Family::Poisson] {
        for (beta, null_mean) in [(vec![], None), (vec![0.1, -0.2, 0.3], Some(0.4))] {
            let s = glm::glm_stats(family, &[], &[], GLM_P, &beta, null_mean);
            assert_eq!(s, GlmStats::zero(GLM_P), "{family:?}");
            let mut merged =
                glm::glm_stats(family, &[1.0, 0.5, 1.0], &[1.0], GLM_P, &beta, null_mean);
            let before = merged.clone();
            merged.merge(&s);
            assert_eq!(merged, before);
        }
    }
}

// ---------------------------------------------------------------------------
// Kaplan-Meier

/// Grid 0, 1, …, 20: times at or before 0 fall outside the curves, times
/// after 20 are censored in the last interval.
fn km_points() -> Vec<f64> {
    Grid::Range {
        from: 0.0,
        to: 20.0,
        step: 1.0,
    }
    .points()
    .expect("valid grid")
}

#[derive(Debug, Clone)]
struct KmData {
    groups: usize,
    time: Vec<f64>,
    event: Vec<bool>,
    group: Vec<u32>,
}

impl KmData {
    fn labels(&self) -> Vec<String> {
        if self.groups == 1 {
            vec!["all".into()]
        } else {
            (0..self.groups).map(|g| format!("g{g}")).collect()
        }
    }

    /// The node's released groups for rows `rows` under minimum cell size `k`.
    fn part(&self, points: &[f64], rows: &[usize], k: u32) -> Vec<GroupStats> {
        let time: Vec<f64> = rows.iter().map(|&r| self.time[r]).collect();
        let event: Vec<bool> = rows.iter().map(|&r| self.event[r]).collect();
        let group: Vec<u32> = rows.iter().map(|&r| self.group[r]).collect();
        survival::disclose(
            survival::count(points, &time, &event, &group, self.groups),
            k,
        )
    }
}

/// 1 to 3 groups; times on a half-day lattice in [0, 22] (many ties, some
/// on grid points, some at 0 and some beyond the grid); about 70% events.
fn km_case() -> impl Strategy<Value = (KmData, Split)> {
    (1..=3usize, ROWS).prop_flat_map(|(groups, n)| {
        (
            Just(groups),
            vec((0.0..=22.0f64, prop::bool::weighted(0.7), 0.0..1.0f64), n),
            split_nonempty(n),
        )
            .prop_map(|(groups, raw, split)| {
                let data = KmData {
                    groups,
                    time: raw.iter().map(|r| (r.0 * 2.0).round() / 2.0).collect(),
                    event: raw.iter().map(|r| r.1).collect(),
                    group: raw
                        .iter()
                        .map(|r| ((r.2 * groups as f64) as u32).min(groups as u32 - 1))
                        .collect(),
                };
                (data, split)
            })
    })
}

fn km_pool(
    points: &[f64],
    labels: &[String],
    parts: &[(String, Vec<GroupStats>)],
) -> Result<KaplanMeierResult> {
    survival::pool(points, labels, parts, ("time", "event", Some("group")))
}

fn node_parts(
    data: &KmData,
    points: &[f64],
    split: &Split,
    k: u32,
) -> Vec<(String, Vec<GroupStats>)> {
    split
        .rows()
        .iter()
        .enumerate()
        .map(|(i, rows)| (format!("node{i}"), data.part(points, rows, k)))
        .collect()
}

fn same_curve(a: &Curve, b: &Curve) -> Check {
    prop_assert_eq!(&a.group, &b.group);
    prop_assert_eq!(a.at_risk, b.at_risk);
    prop_assert_eq!(a.events, b.events);
    prop_assert_eq!(&a.times, &b.times);
    prop_assert_eq!(&a.n_risk, &b.n_risk);
    prop_assert_eq!(&a.n_event, &b.n_event);
    prop_assert_eq!(&a.n_censor, &b.n_censor);
    prop_assert!(all_close_opt(&a.survival, &b.survival, 1e-12));
    prop_assert!(all_close_opt(&a.std_error, &b.std_error, 1e-12));
    prop_assert!(all_close_opt(&a.lower, &b.lower, 1e-12));
    prop_assert!(all_close_opt(&a.upper, &b.upper, 1e-12));
    prop_assert_eq!(a.median, b.median);
    prop_assert_eq!(a.stated_until, b.stated_until);
    prop_assert_eq!(&a.notes, &b.notes);
    prop_assert_eq!(a.merged_after, b.merged_after);
    Ok(())
}

// ---------------------------------------------------------------------------
// Correlation

/// Offsets keep the sums of squares well away from the centred ones, so
/// the pooled formulas' cancellation is exercised.
const COR_OFFSET: [f64; 4] = [0.0, 10.0, -5.0, 40.0];
const COR_LOADING: [f64; 4] = [1.0, 0.6, -0.8, 0.0];

fn cor_case() -> impl Strategy<Value = (Vec<Vec<f64>>, Split)> {
    (2..=4usize, ROWS).prop_flat_map(|(p, n)| {
        (
            Just(p),
            vec(
                (
                    -3.0..3.0f64,
                    prop::array::uniform4(-1.0..1.0f64),
                    prop::array::uniform4(prop::bool::weighted(0.12)),
                ),
                n,
            ),
            split_maybe_empty(n),
        )
            .prop_map(|(p, raw, split)| {
                let columns = (0..p)
                    .map(|j| {
                        raw.iter()
                            .map(|(z, e, missing)| {
                                if missing[j] {
                                    f64::NAN
                                } else {
                                    COR_OFFSET[j] + COR_LOADING[j] * z + e[j]
                                }
                            })
                            .collect()
                    })
                    .collect();
                (columns, split)
            })
    })
}

fn same_option(a: Option<f64>, b: Option<f64>, tol: f64) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => close(a, b, tol),
        _ => false,
    }
}

// ---------------------------------------------------------------------------
// Cox

const COX_P: usize = 2;

#[derive(Debug, Clone)]
struct CoxRows {
    /// `[x1, x2]` row-major.
    x: Vec<f64>,
    time: Vec<f64>,
    event: Vec<bool>,
}

impl CoxRows {
    fn data(&self, rows: &[usize], shift: [f64; COX_P]) -> CoxData {
        let x: Vec<f64> = rows
            .iter()
            .flat_map(|&r| (0..COX_P).map(move |j| (r, j)))
            .map(|(r, j)| self.x[r * COX_P + j] + shift[j])
            .collect();
        let time: Vec<f64> = rows.iter().map(|&r| self.time[r]).collect();
        let event: Vec<bool> = rows.iter().map(|&r| self.event[r]).collect();
        CoxData::new(&x, &time, &event, COX_P)
    }
}

/// Exponential times with hazard exp(0.6 x1 − 0.8 x2) on a quarter-unit
/// lattice (so there are ties), about 75% events; x2 has both levels.
fn cox_rows(raw: &[(f64, bool, f64, bool)]) -> CoxRows {
    let mut out = CoxRows {
        x: Vec::with_capacity(raw.len() * COX_P),
        time: Vec::with_capacity(raw.len()),
        event: Vec::with_capacity(raw.len()),
    };
    for (i, &(x1, x2, u, event)) in raw.iter().enumerate() {
        let x2 = match i {
            0 => 0.0,
            1 => 1.0,
            _ => f64::from(u8::from(x2)),
        };
        let rate = (0.6 * x1 - 0.8 * x2).exp();
        let t = -u.ln() / rate;
        out.x.extend([x1, x2]);
        out.time.push((t * 4.0).ceil() / 4.0);
        out.event.push(event);
    }
    out
}

/// Rows, a split, random sort keys for shuffling rows within nodes and a
/// random order of the nodes.
type CoxCase = (CoxRows, Split, Vec<u64>, Vec<usize>, Ties);

fn cox_case() -> impl Strategy<Value = CoxCase> {
    ROWS.prop_flat_map(|n| {
        (
            vec(
                (
                    -2.0..=2.0f64,
                    any::<bool>(),
                    0.001..1.0f64,
                    prop::bool::weighted(0.75),
                ),
                n,
            ),
            split_maybe_empty(n),
            vec(any::<u64>(), n),
            Just((0..MAX_NODES).collect::<Vec<usize>>()).prop_shuffle(),
            prop_oneof![Just(Ties::Efron), Just(Ties::Breslow)],
        )
            .prop_map(|(raw, split, keys, order, ties)| (cox_rows(&raw), split, keys, order, ties))
    })
}

fn cox_fit(nodes: &[CoxData], ties: Ties) -> Result<CoxResult> {
    let fitter = cox::CoxFitter::new(
        "time".into(),
        "event".into(),
        vec!["x1".into(), "x2".into()],
        ties,
        FitOptions {
            tolerance: 1e-10,
            max_iterations: 30,
        },
    );
    crate::models::fit::fit_locally(fitter, |it| {
        let mut pooled = CoxStats::zero(COX_P);
        for node in nodes {
            pooled.merge(&node.stats(&it.coefficients, ties));
        }
        Ok(pooled)
    })
}

// ---------------------------------------------------------------------------
// Counting analyses

const AGE_EDGES: [f64; 9] = [20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0];
const K: u32 = 5;

/// Per node: a 2×2 diabetes × death table and an age histogram (8 bins,
/// below, above), every count at least k so nothing is suppressed.
type NodeCounts = (Vec<u64>, Vec<u64>, u64, u64);

fn counts_case() -> impl Strategy<Value = Vec<NodeCounts>> {
    vec(
        (
            vec(u64::from(K)..=80, 4),
            vec(u64::from(K)..=50, AGE_EDGES.len() - 1),
            u64::from(K)..=20,
            u64::from(K)..=20,
        ),
        1..=MAX_NODES,
    )
}

fn table_stats(cells: &[u64]) -> NodeStats {
    disclosure::apply(
        RawStats::Table {
            rows: 2,
            columns: 2,
            cells: cells.to_vec(),
        },
        disclosure::Rules::new(K),
    )
}

fn histogram_stats(bins: &[u64], below: u64, above: u64) -> NodeStats {
    disclosure::apply(
        RawStats::Histogram {
            bins: bins.to_vec(),
            below,
            above,
        },
        disclosure::Rules::new(K),
    )
}

fn sum_columns(rows: impl Iterator<Item = Vec<u64>>, len: usize) -> Vec<u64> {
    rows.fold(vec![0; len], |mut acc, r| {
        acc.iter_mut().zip(r).for_each(|(a, b)| *a += b);
        acc
    })
}

// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn glm_gaussian_fit_is_split_invariant((data, split) in glm_case(Family::Gaussian)) {
        check_glm_split(Family::Gaussian, &data, &split)?;
    }

    #[test]
    fn glm_binomial_fit_is_split_invariant((data, split) in glm_case(Family::Binomial)) {
        check_glm_split(Family::Binomial, &data, &split)?;
    }

    #[test]
    fn glm_poisson_fit_is_split_invariant((data, split) in glm_case(Family::Poisson)) {
        check_glm_split(Family::Poisson, &data, &split)?;
    }

    /// With k = 1 nothing is merged, so the pooled curves and the log-rank
    /// test equal those of all rows at one node.
    #[test]
    fn kaplan_meier_is_split_invariant((data, split) in km_case()) {
        let points = km_points();
        let labels = data.labels();
        let all: Vec<usize> = (0..data.time.len()).collect();
        let whole = km_pool(&points, &labels, &[("all".into(), data.part(&points, &all, 1))]);
        let whole = whole.map_err(|e| TestCaseError::fail(format!("whole: {e}")))?;
        let parts = node_parts(&data, &points, &split, 1);
        let pooled = km_pool(&points, &labels, &parts)
            .map_err(|e| TestCaseError::fail(format!("split: {e}")))?;

        prop_assert_eq!(pooled.start, whole.start);
        prop_assert_eq!(pooled.grid_intervals, whole.grid_intervals);
        prop_assert_eq!(pooled.curves.len(), data.groups);
        prop_assert_eq!(whole.curves.len(), data.groups);
        for (a, b) in pooled.curves.iter().zip(&whole.curves) {
            same_curve(a, b)?;
            prop_assert!(a.merged_at.is_empty());
        }
        // Sanity of the reference: the curves count every row after time 0.
        let counted = data.time.iter().filter(|t| **t > 0.0).count() as u64;
        prop_assert_eq!(whole.curves.iter().map(|c| c.at_risk).sum::<u64>(), counted);
        match (&pooled.log_rank, &whole.log_rank) {
            (None, None) => prop_assert!(data.groups == 1 || whole.curves.iter().filter(|c| c.at_risk > 0).count() < 2),
            (Some(a), Some(b)) => {
                prop_assert!(data.groups > 1);
                prop_assert_eq!(a.df, b.df);
                prop_assert!(close(a.chi_square, b.chi_square, 1e-9), "{} vs {}", a.chi_square, b.chi_square);
                prop_assert!(close(a.p_value, b.p_value, 1e-9));
                prop_assert!(all_close(&a.observed, &b.observed, 1e-12));
                prop_assert!(all_close(&a.expected, &b.expected, 1e-9));
            }
            (a, b) => prop_assert!(false, "log-rank {:?} vs {:?}", a, b),
        }
    }

    /// With k = 3 no node releases an interval starting with 1 or 2 at
    /// risk, so neither does the pooled curve; before its merged tail a
    /// curve no node suppressed is the exact one.
    #[test]
    fn kaplan_meier_never_releases_thin_intervals((data, split) in km_case()) {
        const K3: u32 = 3;
        let points = km_points();
        let intervals = points.len() - 1;
        let labels = data.labels();
        let all: Vec<usize> = (0..data.time.len()).collect();
        let exact = km_pool(&points, &labels, &[("all".into(), data.part(&points, &all, 1))])
            .map_err(|e| TestCaseError::fail(format!("exact: {e}")))?;
        let parts = node_parts(&data, &points, &split, K3);
        for (node, groups) in &parts {
            prop_assert!(
                survival::check(groups, data.groups, intervals, K3).is_ok(),
                "{} released {:?}", node, groups
            );
            for g in groups {
                if let GroupStats::Released(c) = g {
                    prop_assert!(c.at_risk_by_interval().iter().all(|n| *n == 0 || *n >= 3));
                }
            }
        }
        let pooled = match km_pool(&points, &labels, &parts) {
            Ok(r) => r,
            Err(e) => {
                prop_assert_eq!(e.code, ErrorCode::Disclosure);
                prop_assert!(parts.iter().flat_map(|p| &p.1).all(|g| *g == GroupStats::Suppressed));
                return Ok(());
            }
        };
        for (g, (c, e)) in pooled.curves.iter().zip(&exact.curves).enumerate() {
            prop_assert!(c.n_risk.iter().all(|n| *n == 0 || *n >= 3), "{:?}", c.n_risk);
            let released: u64 = parts
                .iter()
                .filter_map(|(_, groups)| match &groups[g] {
                    GroupStats::Released(c) => Some(c.at_risk),
                    GroupStats::Suppressed => None,
                })
                .sum();
            prop_assert_eq!(c.at_risk, released);
            if !c.suppressed_at.is_empty() {
                continue;
            }
            let kept = c.times.len();
            prop_assert_eq!(c.at_risk, e.at_risk);
            // Events after the grid's end, folded into the last interval at
            // nodes that followed fewer than k patients beyond it.
            prop_assert!(c.events >= e.events);
            let folded = c.events - e.events;
            prop_assert_eq!(&c.n_risk[..], &e.n_risk[..kept]);
            prop_assert_eq!(&c.n_event[..kept - 1], &e.n_event[..kept - 1]);
            prop_assert_eq!(
                c.n_event[kept - 1],
                e.n_event[kept - 1..].iter().sum::<u64>() + folded
            );
            prop_assert!(all_close_opt(&c.survival[..kept - 1], &e.survival[..kept - 1], 1e-12));
            prop_assert_eq!(c.merged_after.is_some(), !c.merged_at.is_empty());
            if kept < intervals || folded > 0 {
                prop_assert!(c.merged_after.is_some());
            }
        }
    }

    #[test]
    fn correlation_is_split_invariant((columns, split) in cor_case()) {
        let p = columns.len();
        let variables: Vec<String> = (0..p).map(|j| format!("v{j}")).collect();
        for missing in [Missing::CompleteCases, Missing::Pairwise] {
            let whole = correlation::pair_sums(&columns, missing);
            let whole = correlation::pool(
                &variables,
                missing,
                &[("all".into(), whole.into_iter().map(Some).collect())],
            )
            .map_err(|e| TestCaseError::fail(format!("whole: {e}")))?;
            let parts: Vec<(String, Vec<Option<correlation::PairSums>>)> = split
                .rows()
                .iter()
                .enumerate()
                .map(|(i, rows)| {
                    let cols: Vec<Vec<f64>> = columns
                        .iter()
                        .map(|c| rows.iter().map(|&r| c[r]).collect())
                        .collect();
                    let sums = correlation::pair_sums(&cols, missing);
                    (format!("node{i}"), sums.into_iter().map(Some).collect())
                })
                .collect();
            let pooled = correlation::pool(&variables, missing, &parts)
                .map_err(|e| TestCaseError::fail(format!("split: {e}")))?;

            prop_assert_eq!(&pooled.n, &whole.n);
            prop_assert!(pooled.suppressed.is_empty() && whole.suppressed.is_empty());
            for a in 0..p {
                for b in 0..p {
                    prop_assert!(
                        same_option(pooled.covariance[a][b], whole.covariance[a][b], 1e-9),
                        "{:?} cov[{}][{}]: {:?} vs {:?}", missing, a, b,
                        pooled.covariance[a][b], whole.covariance[a][b]
                    );
                    prop_assert!(
                        same_option(pooled.correlation[a][b], whole.correlation[a][b], 1e-9),
                        "{:?} cor[{}][{}]: {:?} vs {:?}", missing, a, b,
                        pooled.correlation[a][b], whole.correlation[a][b]
                    );
                }
            }
            // The reference itself counts what the missingness rule says.
            let present = |j: usize, r: usize| columns[j][r].is_finite();
            let rows = columns[0].len();
            let complete = (0..rows).filter(|&r| (0..p).all(|j| present(j, r))).count() as u64;
            for a in 0..p {
                for b in 0..p {
                    let expected = match missing {
                        Missing::CompleteCases => complete,
                        Missing::Pairwise => {
                            (0..rows).filter(|&r| present(a, r) && present(b, r)).count() as u64
                        }
                    };
                    prop_assert_eq!(whole.n[a][b], Some(expected));
                }
            }
        }
    }

    #[test]
    fn two_by_two_and_quantiles_are_split_invariant(nodes in counts_case()) {
        let dict = Dictionary::cardiovascular();
        let two_by_two = Analysis::TwoByTwo {
            exposure: "diabetes".into(),
            outcome: "death".into(),
        };
        let quantiles = Analysis::Quantiles {
            variable: "age".into(),
            edges: AGE_EDGES.to_vec(),
            probabilities: vec![0.05, 0.25, 0.5, 0.75, 0.95],
        };
        let name = |i: usize| format!("node{i}");
        let tables: Vec<(String, NodeStats)> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (name(i), table_stats(&n.0)))
            .collect();
        let histograms: Vec<(String, NodeStats)> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (name(i), histogram_stats(&n.1, n.2, n.3)))
            .collect();
        for (_, s) in &tables {
            prop_assert!(s.check(&two_by_two, &dict, K).is_ok());
        }
        for (_, s) in &histograms {
            prop_assert!(s.check(&quantiles, &dict, K).is_ok());
        }

        let cells = sum_columns(nodes.iter().map(|n| n.0.clone()), 4);
        let bins = sum_columns(nodes.iter().map(|n| n.1.clone()), AGE_EDGES.len() - 1);
        let below: u64 = nodes.iter().map(|n| n.2).sum();
        let above: u64 = nodes.iter().map(|n| n.3).sum();
        let whole_table = [("all".to_string(), table_stats(&cells))];
        let whole_histogram = [("all".to_string(), histogram_stats(&bins, below, above))];

        let split = pool_value(&two_by_two, &dict, &tables, K)
            .map_err(|e| TestCaseError::fail(format!("split 2x2: {e}")))?;
        let whole = pool_value(&two_by_two, &dict, &whole_table, K)
            .map_err(|e| TestCaseError::fail(format!("whole 2x2: {e}")))?;
        prop_assert_eq!(&split, &whole);
        match &split {
            // cells are row-major (diabetes false/true × death false/true).
            PooledValue::TwoByTwo(t) => {
                prop_assert_eq!(t.table, [[cells[3], cells[2]], [cells[1], cells[0]]]);
                prop_assert!(t.odds_ratio.estimate.is_finite() && t.chi_square >= 0.0);
            }
            other => prop_assert!(false, "not a 2x2: {:?}", other),
        }

        let split = pool_value(&quantiles, &dict, &histograms, K)
            .map_err(|e| TestCaseError::fail(format!("split quantiles: {e}")))?;
        let whole = pool_value(&quantiles, &dict, &whole_histogram, K)
            .map_err(|e| TestCaseError::fail(format!("whole quantiles: {e}")))?;
        prop_assert_eq!(&split, &whole);
        match &split {
            PooledValue::Quantiles(q) => {
                prop_assert_eq!(q.n, below + above + bins.iter().sum::<u64>());
                prop_assert_eq!(q.suppressed_cells, 0);
                for est in &q.quantiles {
                    if let (Some(v), Some(lo), Some(hi)) = (est.estimate, est.bin_lower, est.bin_upper) {
                        prop_assert!(lo <= v && v <= hi);
                    }
                }
            }
            other => prop_assert!(false, "not quantiles: {:?}", other),
        }
    }

    /// Each node's statistics at a fixed beta depend on its own rows only
    /// (not on how they are centred), and the coordinator's merge is their
    /// sum in any node order.
    #[test]
    fn cox_stats_add_over_nodes(
        (rows, split, _, order, ties) in cox_case(),
        beta in prop::array::uniform2(-1.0..1.0f64),
        shift in prop::array::uniform2(-50.0..50.0f64),
    ) {
        let node_rows = split.rows();
        let stats: Vec<CoxStats> = node_rows
            .iter()
            .map(|r| rows.data(r, [0.0; COX_P]).stats(&beta, ties))
            .collect();
        for (r, s) in node_rows.iter().zip(&stats) {
            let shifted = rows.data(r, shift).stats(&beta, ties);
            prop_assert_eq!((shifted.n, shifted.events), (s.n, s.events));
            prop_assert!(close(shifted.loglik, s.loglik, 1e-9), "{} vs {}", shifted.loglik, s.loglik);
            prop_assert!(all_close(&shifted.gradient, &s.gradient, 1e-9));
            prop_assert!(all_close(&shifted.information, &s.information, 1e-9));
        }

        let mut merged = CoxStats::zero(COX_P);
        stats.iter().for_each(|s| merged.merge(s));
        let mut reordered = CoxStats::zero(COX_P);
        for &i in order.iter().filter(|&&i| i < split.nodes) {
            reordered.merge(&stats[i]);
        }
        // The sums, by hand.
        let n: u64 = stats.iter().map(|s| s.n).sum();
        let events: u64 = stats.iter().map(|s| s.events).sum();
        let loglik: f64 = stats.iter().map(|s| s.loglik).sum();
        let gradient: Vec<f64> = (0..COX_P).map(|a| stats.iter().map(|s| s.gradient[a]).sum()).collect();
        let information: Vec<f64> = (0..merged.information.len())
            .map(|a| stats.iter().map(|s| s.information[a]).sum())
            .collect();

        prop_assert_eq!(n, rows.time.len() as u64);
        prop_assert_eq!(events, rows.event.iter().filter(|e| **e).count() as u64);
        for m in [&merged, &reordered] {
            prop_assert!(m.check(COX_P).is_ok());
            prop_assert_eq!((m.n, m.events), (n, events));
            prop_assert!(close(m.loglik, loglik, 1e-9));
            prop_assert!(all_close(&m.gradient, &gradient, 1e-9));
            prop_assert!(all_close(&m.information, &information, 1e-9));
        }
        if split.nodes == 1 {
            let all: Vec<usize> = (0..rows.time.len()).collect();
            prop_assert_eq!(&merged, &rows.data(&all, [0.0; COX_P]).stats(&beta, ties));
        }
    }

    /// A stratified Cox fit is invariant to the order of the rows within
    /// each node and to the order of the nodes. It is NOT invariant to the
    /// split itself, and must not be: every node is its own stratum with
    /// its own baseline hazard, so moving rows between nodes changes the
    /// model. Only the statistics' additivity is split-invariant.
    #[test]
    fn cox_fit_ignores_row_and_node_order((rows, split, keys, order, ties) in cox_case()) {
        let node_rows = split.rows();
        let nodes: Vec<CoxData> = node_rows.iter().map(|r| rows.data(r, [0.0; COX_P])).collect();
        let reordered: Vec<CoxData> = order
            .iter()
            .filter(|&&i| i < split.nodes)
            .map(|&i| {
                let mut r = node_rows[i].clone();
                r.sort_by_key(|&row| keys[row]);
                rows.data(&r, [0.0; COX_P])
            })
            .collect();
        let a = cox_fit(&nodes, ties).map_err(|e| TestCaseError::fail(format!("fit: {e}")))?;
        let b = cox_fit(&reordered, ties)
            .map_err(|e| TestCaseError::fail(format!("reordered fit: {e}")))?;
        prop_assert!(a.converged, "fit did not converge");
        prop_assert_eq!((a.n, a.events), (b.n, b.events));
        prop_assert_eq!(a.iterations, b.iterations);
        prop_assert_eq!(a.converged, b.converged);
        prop_assert!(close(a.loglik, b.loglik, 1e-9));
        prop_assert!(close(a.loglik_null, b.loglik_null, 1e-9));
        for (x, y) in a.coefficients.iter().zip(&b.coefficients) {
            prop_assert!(close(x.estimate, y.estimate, 1e-9), "{}: {} vs {}", x.term, x.estimate, y.estimate);
            prop_assert!(close(x.std_error, y.std_error, 1e-9), "{}: {} vs {}", x.term, x.std_error, y.std_error);
        }
    }
}
