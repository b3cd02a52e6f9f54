//! Kaplan-Meier estimation, median survival and the k-group log-rank test.
//!
//! Conventions:
//!
//! * Kaplan-Meier: the exact product-limit estimate with one step per distinct
//!   *event* time in ascending order. At time `t`, `n_risk` counts subjects
//!   with `time >= t` (so subjects censored at `t` are at risk at `t`) and
//!   `n_event` counts events at `t`. `S(t) = prod (1 - d/n)`. The standard
//!   error is Greenwood's, on the survival scale:
//!   `S * sqrt(sum d / (n (n - d)))`. When every subject at risk dies
//!   (`n == d`) the estimate drops to 0 and the Greenwood sum is infinite;
//!   `std_err` is then reported as NaN.
//! * Median survival: the first event time at which `S <= 0.5`, or `None` if
//!   the curve never gets there. (R's `survfit` instead averages two times
//!   when `S` equals 0.5 exactly on an interval; this does not.)
//! * Log-rank: the k-group test of R's `survdiff` with `rho = 0`. At each
//!   distinct event time the expected deaths in group `j` are
//!   `d n_j / n` and the hypergeometric covariance is
//!   `d (n - d) / (n - 1) * (n_j / n) * (delta_jl - n_l / n)`. With
//!   `U = observed - expected`, the statistic is `U' V^-1 U` over the first
//!   `k - 1` groups, referred to a chi-square on `k - 1` degrees of freedom.

use nalgebra::{DMatrix, DVector};
use statrs::distribution::{ChiSquared, ContinuousCDF};

/// One step of the Kaplan-Meier curve, at a distinct event time.
#[derive(Debug, Clone, PartialEq)]
pub struct KmStep {
    /// The event time.
    pub time: f64,
    /// Number of subjects with `time >= self.time`.
    pub n_risk: u64,
    /// Number of events at this time.
    pub n_event: u64,
    /// Product-limit survival estimate just after this time.
    pub survival: f64,
    /// Greenwood standard error of `survival`.
    pub std_err: f64,
}

/// Sorted distinct times at which at least one event occurred.
fn distinct_event_times(time: &[f64], event: &[bool]) -> Vec<f64> {
    let mut times: Vec<f64> = time
        .iter()
        .zip(event)
        .filter(|&(_, &e)| e)
        .map(|(&t, _)| t)
        .collect();
    times.sort_by(f64::total_cmp);
    times.dedup();
    times
}

/// Kaplan-Meier product-limit estimate with Greenwood standard errors.
///
/// Panics if the lengths disagree or a time is not finite.
pub fn kaplan_meier(time: &[f64], event: &[bool]) -> Vec<KmStep> {
    assert_eq!(time.len(), event.len(), "time and event lengths differ");
    assert!(time.iter().all(|t| t.is_finite()), "times must be finite");
    let mut survival = 1.0;
    let mut greenwood_sum = 0.0;
    let mut steps = Vec::new();
    for t in distinct_event_times(time, event) {
        let n_risk = time.iter().filter(|&&ti| ti >= t).count() as u64;
        let n_event = time
            .iter()
            .zip(event)
            .filter(|&(&ti, &e)| e && ti == t)
            .count() as u64;
        let n = n_risk as f64;
        let d = n_event as f64;
        survival *= 1.0 - d / n;
        let std_err = if n_risk > n_event {
            greenwood_sum += d / (n * (n - d));
            survival * greenwood_sum.sqrt()
        } else {
            f64::NAN
        };
        steps.push(KmStep {
            time: t,
            n_risk,
            n_event,
            survival,
            std_err,
        });
    }
    steps
}

/// The first event time at which the Kaplan-Meier estimate is `<= 0.5`.
pub fn median_survival(steps: &[KmStep]) -> Option<f64> {
    steps.iter().find(|s| s.survival <= 0.5).map(|s| s.time)
}

/// Result of [`log_rank`].
#[derive(Debug, Clone, PartialEq)]
pub struct LogRank {
    /// The statistic `U' V^-1 U`.
    pub chi_square: f64,
    /// Degrees of freedom, `groups - 1`.
    pub df: u32,
    /// Upper-tail chi-square probability of `chi_square` on `df`.
    pub p_value: f64,
    /// Observed events per group.
    pub observed: Vec<f64>,
    /// Expected events per group under the null hypothesis.
    pub expected: Vec<f64>,
}

/// The k-group log-rank test (R's `survdiff`, `rho = 0`).
///
/// `group[i]` is in `0..groups`. Panics if the lengths disagree, a label is
/// out of range, `groups < 2`, or the covariance of the first `groups - 1`
/// groups is singular (e.g. a group with no subjects at any event time).
pub fn log_rank(time: &[f64], event: &[bool], group: &[u32], groups: u32) -> LogRank {
    assert_eq!(time.len(), event.len(), "time and event lengths differ");
    assert_eq!(time.len(), group.len(), "time and group lengths differ");
    assert!(groups >= 2, "need at least two groups");
    assert!(
        group.iter().all(|&g| g < groups),
        "group label out of range"
    );
    assert!(time.iter().all(|t| t.is_finite()), "times must be finite");
    let k = groups as usize;
    let mut observed = vec![0.0; k];
    let mut expected = vec![0.0; k];
    let mut variance = DMatrix::<f64>::zeros(k, k);

    for t in distinct_event_times(time, event) {
        let mut at_risk = vec![0.0; k];
        let mut deaths = vec![0.0; k];
        for i in 0..time.len() {
            let g = group[i] as usize;
            if time[i] >= t {
                at_risk[g] += 1.0;
            }
            if event[i] && time[i] == t {
                deaths[g] += 1.0;
            }
        }
        let n: f64 = at_risk.iter().sum();
        let d: f64 = deaths.iter().sum();
        for j in 0..k {
            observed[j] += deaths[j];
            expected[j] += d * at_risk[j] / n;
        }
        if n > 1.0 {
            let factor = d * (n - d) / (n - 1.0);
            for j in 0..k {
                for l in 0..k {
                    let delta = if j == l { 1.0 } else { 0.0 };
                    variance[(j, l)] += factor * (at_risk[j] / n) * (delta - at_risk[l] / n);
                }
            }
        }
    }

    let m = k - 1;
    let u = DVector::from_fn(m, |j, _| observed[j] - expected[j]);
    let v = variance.view((0, 0), (m, m)).into_owned();
    let v_inv = v
        .try_inverse()
        .expect("log-rank covariance matrix is singular");
    let chi_square = (u.transpose() * v_inv * &u)[(0, 0)];
    let df = groups - 1;
    let p_value = ChiSquared::new(f64::from(df))
        .expect("positive degrees of freedom")
        .sf(chi_square);

    LogRank {
        chi_square,
        df,
        p_value,
        observed,
        expected,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{assert_close, MAINTAINED, NONMAINTAINED};
    use super::*;

    fn split(data: &[(f64, bool)]) -> (Vec<f64>, Vec<bool>) {
        (
            data.iter().map(|&(t, _)| t).collect(),
            data.iter().map(|&(_, e)| e).collect(),
        )
    }

    #[test]
    fn aml_maintained_curve_matches_hand_computation() {
        let (time, event) = split(&MAINTAINED);
        let km = kaplan_meier(&time, &event);
        let times: Vec<f64> = km.iter().map(|s| s.time).collect();
        assert_eq!(times, vec![9.0, 13.0, 18.0, 23.0, 31.0, 34.0, 48.0]);
        let n_risk: Vec<u64> = km.iter().map(|s| s.n_risk).collect();
        assert_eq!(n_risk, vec![11, 10, 8, 7, 5, 4, 2]);
        assert!(km.iter().all(|s| s.n_event == 1));
        // Exact products: 10/11, *9/10, *7/8, *6/7, *4/5, *3/4, *1/2.
        let exact = [
            10.0 / 11.0,
            9.0 / 11.0,
            63.0 / 88.0,
            54.0 / 88.0,
            216.0 / 440.0,
            162.0 / 440.0,
            81.0 / 440.0,
        ];
        for (step, &s) in km.iter().zip(&exact) {
            assert_close(step.survival, s, 1e-12, "survival");
        }
        // Printed figures (R summary): 0.909 at t = 9, 0.614 at t = 23,
        // 0.491 at t = 31.
        assert_close(km[0].survival, 0.909, 5e-4, "S(9)");
        assert_close(km[3].survival, 0.614, 5e-4, "S(23)");
        assert_close(km[4].survival, 0.491, 5e-4, "S(31)");
        // Greenwood at t = 9: (10/11) * sqrt(1 / (11 * 10)).
        assert_close(
            km[0].std_err,
            10.0 / 11.0 * (1.0_f64 / 110.0).sqrt(),
            1e-12,
            "SE(9)",
        );
        // Greenwood at t = 13: S * sqrt(1/110 + 1/90).
        assert_close(
            km[1].std_err,
            9.0 / 11.0 * (1.0_f64 / 110.0 + 1.0 / 90.0).sqrt(),
            1e-12,
            "SE(13)",
        );
        assert_eq!(median_survival(&km), Some(31.0));
    }

    #[test]
    fn aml_nonmaintained_median() {
        let (time, event) = split(&NONMAINTAINED);
        let km = kaplan_meier(&time, &event);
        assert_eq!(km[0].time, 5.0);
        assert_eq!(km[0].n_risk, 12);
        assert_eq!(km[0].n_event, 2);
        assert_close(km[0].survival, 10.0 / 12.0, 1e-12, "S(5)");
        assert_eq!(median_survival(&km), Some(23.0));
        // All remaining subjects die at 45: the curve reaches 0.
        let last = km.last().expect("non-empty curve");
        assert_eq!(last.time, 45.0);
        assert_eq!(last.survival, 0.0);
        assert!(last.std_err.is_nan());
    }

    #[test]
    fn median_is_none_when_curve_stays_above_half() {
        let km = kaplan_meier(&[1.0, 2.0, 3.0, 4.0], &[true, false, false, false]);
        assert_eq!(median_survival(&km), None);
    }

    #[test]
    fn aml_log_rank_matches_survdiff() {
        let (mut time, mut event) = split(&MAINTAINED);
        let (t2, e2) = split(&NONMAINTAINED);
        let mut group = vec![0; time.len()];
        group.extend(vec![1; t2.len()]);
        time.extend(t2);
        event.extend(e2);
        let test = log_rank(&time, &event, &group, 2);
        assert_eq!(test.df, 1);
        assert_close(test.chi_square, 3.4, 0.05, "chi-square");
        assert_close(test.p_value, 0.0653, 5e-5, "p-value");
        assert_eq!(test.observed, vec![7.0, 11.0]);
        assert_close(test.expected[0], 10.69, 5e-3, "expected maintained");
        assert_close(test.expected[1], 7.31, 5e-3, "expected nonmaintained");
        assert_close(
            test.expected[0] + test.expected[1],
            18.0,
            1e-12,
            "expected sums to observed",
        );
    }

    #[test]
    fn three_group_log_rank_is_invariant_to_label_order() {
        let time = [1.0, 2.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0];
        let event = [
            true, true, false, true, true, true, false, true, true, true, true, false,
        ];
        let group = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2];
        let a = log_rank(&time, &event, &group, 3);
        // Relabel so a different group is dropped from U.
        let relabelled: Vec<u32> = group.iter().map(|&g| (g + 1) % 3).collect();
        let b = log_rank(&time, &event, &relabelled, 3);
        assert_eq!(a.df, 2);
        assert_close(a.chi_square, b.chi_square, 1e-10, "chi-square");
        assert_close(a.p_value, b.p_value, 1e-10, "p-value");
    }
}
