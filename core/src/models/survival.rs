//! Kaplan-Meier curves and the log-rank test on a public time grid.
//!
//! The query names grid points g₀ < g₁ < … < gₘ. Interval j is (gⱼ, gⱼ₊₁].
//! For every group a node counts the patients at risk after g₀, and the
//! events and censorings in each interval; patients still followed after
//! gₘ are counted as censored in the last interval (which changes no
//! estimate on the grid and reveals nothing beyond it). Patients whose time
//! is at or before g₀ are outside the curve. On a grid through every
//! distinct time the pooled curve is the exact product-limit estimate.
//!
//! Disclosure control: once fewer than k patients are at risk at the start
//! of an interval, that interval and every later one are merged into the
//! last interval that still starts with k or more at risk; a group with
//! fewer than k at risk from the start is suppressed.

use serde::{Deserialize, Serialize};

use super::inference::{chi_square_p, CONFIDENCE};
use crate::error::{Error, Result};

/// Most intervals in one grid (a daily grid over 27 years).
pub const MAX_GRID_INTERVALS: usize = 10_000;

/// The public time grid of a Kaplan-Meier query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Grid {
    /// Every `step` from `from` to `to` (both included).
    Range {
        from: f64,
        to: f64,
        step: f64,
    },
    Points(Vec<f64>),
}

impl Grid {
    pub fn points(&self) -> Result<Vec<f64>> {
        let points = match self {
            Grid::Points(p) => p.clone(),
            Grid::Range { from, to, step } => {
                if !(from.is_finite() && to.is_finite() && step.is_finite() && *step > 0.0) {
                    return Err(Error::invalid(
                        "a grid range needs finite \"from\" and \"to\" and a positive \"step\"",
                    ));
                }
                let count = ((to - from) / step).floor();
                if count < 1.0 || count > MAX_GRID_INTERVALS as f64 {
                    return Err(Error::invalid(format!(
                        "a grid needs between 1 and {MAX_GRID_INTERVALS} intervals, and from {from} to {to} by {step} gives {count}"
                    )));
                }
                (0..=count as usize)
                    .map(|i| from + i as f64 * step)
                    .collect()
            }
        };
        if points.len() < 2 || points.len() > MAX_GRID_INTERVALS + 1 {
            return Err(Error::invalid(format!(
                "a grid needs between 2 and {} points, got {}",
                MAX_GRID_INTERVALS + 1,
                points.len()
            )));
        }
        if let Some(bad) = points.iter().find(|p| !p.is_finite()) {
            return Err(Error::invalid(format!(
                "grid point {bad} is not a finite number"
            )));
        }
        if let Some(w) = points.windows(2).find(|w| w[0] >= w[1]) {
            return Err(Error::invalid(format!(
                "grid points must be strictly increasing, but {} is followed by {}",
                w[0], w[1]
            )));
        }
        Ok(points)
    }
}

/// The interval of time `t` on `points`: `None` at or before the first
/// point, the last interval after the last point.
pub fn interval_of(points: &[f64], t: f64) -> Option<usize> {
    let m = points.len() - 1;
    // NaN compares false and falls out with the times before the grid.
    if t.partial_cmp(&points[0]) != Some(std::cmp::Ordering::Greater) {
        return None;
    }
    // First point ≥ t closes t's interval.
    let idx = points.partition_point(|p| *p < t);
    Some(idx.clamp(1, m + 1).min(m) - 1)
}

/// A group's counts, one entry per interval.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct GroupCounts {
    /// At risk just after the first grid point.
    pub at_risk: u64,
    pub events: Vec<u64>,
    pub censored: Vec<u64>,
    /// Fewer than k patients were still followed after the grid's end, so
    /// the last interval also holds their events: its step covers all
    /// later time.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub open_end: bool,
}

/// A group's counts before disclosure control, with what the node knows
/// about the patients followed beyond the grid (never released as such;
/// under secure aggregation only their sum over the nodes is read).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Tally {
    /// Patients beyond the grid are counted as censored in the last interval.
    pub counts: GroupCounts,
    pub beyond: u64,
    pub beyond_events: u64,
}

impl Tally {
    pub fn zero(intervals: usize) -> Self {
        Tally {
            counts: GroupCounts::zero(intervals),
            beyond: 0,
            beyond_events: 0,
        }
    }

    /// Counts one patient.
    pub fn add(&mut self, points: &[f64], time: f64, event: bool) {
        self.add_many(points, time, event, 1);
    }

    /// Counts `n` patients with the same time and event (a node whose
    /// database counted them).
    pub fn add_many(&mut self, points: &[f64], time: f64, event: bool, n: u64) {
        if let Some(j) = interval_of(points, time) {
            self.counts.at_risk += n;
            if time > points[points.len() - 1] {
                self.counts.censored[j] += n;
                self.beyond += n;
                self.beyond_events += if event { n } else { 0 };
            } else if event {
                self.counts.events[j] += n;
            } else {
                self.counts.censored[j] += n;
            }
        }
    }
}

impl GroupCounts {
    pub fn zero(intervals: usize) -> Self {
        GroupCounts {
            at_risk: 0,
            events: vec![0; intervals],
            censored: vec![0; intervals],
            open_end: false,
        }
    }

    /// At risk at the start of each interval.
    pub fn at_risk_by_interval(&self) -> Vec<u64> {
        let mut n = self.at_risk;
        self.events
            .iter()
            .zip(&self.censored)
            .map(|(d, c)| {
                let here = n;
                n = n.saturating_sub(d + c);
                here
            })
            .collect()
    }

    /// Sums every interval from `from` on into interval `from`.
    fn merge_tail(&mut self, from: usize) {
        let d: u64 = self.events[from..].iter().sum();
        let c: u64 = self.censored[from..].iter().sum();
        self.events.truncate(from + 1);
        self.censored.truncate(from + 1);
        self.events[from] = d;
        self.censored[from] = c;
    }
}

/// Counts every patient of a cohort: `group[i]` indexes `groups` groups.
pub fn count(
    points: &[f64],
    time: &[f64],
    event: &[bool],
    group: &[u32],
    groups: usize,
) -> Vec<Tally> {
    let mut out = vec![Tally::zero(points.len() - 1); groups];
    for ((t, e), g) in time.iter().zip(event).zip(group) {
        if let Some(c) = out.get_mut(*g as usize) {
            c.add(points, *t, *e);
        }
    }
    out
}

/// What a node releases for one group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupStats {
    /// `events` and `censored` may be shorter than the grid: the last entry
    /// then covers every interval from its own to the grid's end.
    Released(GroupCounts),
    Suppressed,
}

/// Applies the at-risk rule to every group: intervals starting with 1 to
/// k − 1 at risk are merged into the last interval starting with k or more.
/// (Intervals with nobody left at risk hold nothing and stay as they are.)
/// The time after the grid's end counts as one more interval: when 1 to
/// k − 1 patients are followed beyond it, their events join the last
/// interval, so moving the grid's end cannot reveal when they died.
pub fn disclose(groups: Vec<Tally>, k: u32) -> Vec<GroupStats> {
    disclose_above(groups, k, u64::from(k))
}

/// [`disclose`] with the at-risk rule's floor raised to `floor` (never
/// under k): intervals starting with 1 to floor − 1 at risk are merged, and
/// a group with fewer than `floor` at risk from the start is suppressed.
/// Under differential privacy the floor also covers the noise of a
/// released number at risk ([`crate::privacy::survival`]), so a tail that
/// could be noise over nobody is never shown interval by interval. The rule
/// on patients followed beyond the grid stays at k (a noised release has
/// none: they are censorings of the last interval).
pub fn disclose_above(groups: Vec<Tally>, k: u32, floor: u64) -> Vec<GroupStats> {
    let k = u64::from(k);
    let floor = floor.max(k);
    groups
        .into_iter()
        .map(|t| {
            let mut g = t.counts;
            if t.beyond > 0 && t.beyond < k {
                if let (Some(e), Some(c)) = (g.events.last_mut(), g.censored.last_mut()) {
                    *e += t.beyond_events;
                    *c -= t.beyond_events;
                    g.open_end = true;
                }
            }
            let at_risk = g.at_risk_by_interval();
            if g.at_risk < floor {
                return GroupStats::Suppressed;
            }
            if let Some(thin) = at_risk.iter().position(|n| *n > 0 && *n < floor) {
                g.merge_tail(thin - 1);
            }
            GroupStats::Released(g)
        })
        .collect()
}

/// Checks a received group against the grid and the at-risk rule.
pub fn check(
    groups: &[GroupStats],
    expected_groups: usize,
    intervals: usize,
    k: u32,
) -> Result<()> {
    if groups.len() != expected_groups {
        return Err(Error::invalid(format!(
            "node answered {} survival groups where {expected_groups} were asked",
            groups.len()
        )));
    }
    for g in groups {
        let GroupStats::Released(c) = g else { continue };
        let len = c.events.len();
        if len == 0 || len > intervals || c.censored.len() != len {
            return Err(Error::invalid(format!(
                "node answered {len} survival intervals for a grid of {intervals}"
            )));
        }
        let total = c
            .events
            .iter()
            .chain(&c.censored)
            .try_fold(0u64, |acc, v| acc.checked_add(*v));
        if total != Some(c.at_risk) {
            return Err(Error::invalid(
                "node's events and censorings do not add up to its number at risk",
            ));
        }
        if c.at_risk_by_interval()
            .iter()
            .any(|n| *n > 0 && *n < u64::from(k))
        {
            return Err(Error::disclosure(
                "node released a survival interval with fewer than the minimum cell size at risk",
            ));
        }
    }
    Ok(())
}

/// One pooled survival curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Curve {
    /// The group's level, or "all".
    pub group: String,
    pub at_risk: u64,
    pub events: u64,
    /// Right end of each interval.
    pub times: Vec<f64>,
    pub n_risk: Vec<u64>,
    pub n_event: Vec<u64>,
    pub n_censor: Vec<u64>,
    /// Survival at each time; missing (null) where the released counts
    /// cannot place it at that time: nobody is at risk any more, or the
    /// interval is a merged tail whose events fall anywhere after its start.
    pub survival: Vec<Option<f64>>,
    /// Greenwood standard error of the survival; missing also where it is
    /// not finite (every patient at risk died, so survival is 0).
    pub std_error: Vec<Option<f64>>,
    pub lower: Vec<Option<f64>>,
    pub upper: Vec<Option<f64>>,
    /// First time where the stated survival is 0.5 or less; `None` if not
    /// reached by [`Curve::stated_until`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub median: Option<f64>,
    /// The last time at which survival is stated: where the released counts
    /// stop showing patients at risk, or where intervals were merged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stated_until: Option<f64>,
    /// Nodes that suppressed this group (fewer than k at risk).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suppressed_at: Vec<String>,
    /// When intervals were merged under the at-risk rule: the grid time
    /// after which the curve has one merged step, and the nodes that merged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_after: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged_at: Vec<String>,
    /// Why survival or the median is not stated beyond some time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Under secure aggregation: how many nodes suppressed this group, and
    /// how many merged intervals, which nobody can tell.
    #[serde(default, skip_serializing_if = "crate::cell::is_zero")]
    pub suppressed_by: u32,
    #[serde(default, skip_serializing_if = "crate::cell::is_zero")]
    pub merged_by: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRank {
    pub chi_square: f64,
    pub df: u32,
    pub p_value: f64,
    pub observed: Vec<f64>,
    pub expected: Vec<f64>,
    /// When the test ran over merged intervals: the time after which every
    /// interval counted as one, the nodes that merged them, and a note
    /// saying so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_after: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged_at: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KaplanMeierResult {
    pub time: String,
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The grid's first point: the curves start at 1 there.
    pub start: f64,
    pub grid_intervals: u32,
    /// How the confidence band is computed.
    pub confidence: String,
    pub curves: Vec<Curve>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_rank: Option<LogRank>,
}

/// Pools the nodes' released groups into curves and, with two or more
/// groups, the log-rank test. `labels` names the groups.
pub fn pool(
    points: &[f64],
    labels: &[String],
    parts: &[(String, Vec<GroupStats>)],
    names: (&str, &str, Option<&str>),
) -> Result<KaplanMeierResult> {
    let intervals = points.len() - 1;
    let mut groups = Vec::with_capacity(labels.len());
    for g in 0..labels.len() {
        // The group's partition: as many intervals as its coarsest node kept.
        let mut kept = intervals;
        let mut merged_at = Vec::new();
        let mut suppressed_at = Vec::new();
        let mut released = Vec::new();
        for (node, groups) in parts {
            match groups.get(g) {
                Some(GroupStats::Released(c)) => {
                    if c.events.len() < intervals || c.open_end {
                        merged_at.push(node.clone());
                    }
                    kept = kept.min(c.events.len());
                    released.push(c);
                }
                Some(GroupStats::Suppressed) => suppressed_at.push(node.clone()),
                None => {
                    return Err(Error::internal(
                        "survival groups do not match the query (checked on receipt)",
                    ))
                }
            }
        }
        let mut total = GroupCounts::zero(kept);
        for c in released {
            let c = coarsen(c.clone(), kept);
            total.at_risk = total.at_risk.saturating_add(c.at_risk);
            for j in 0..kept {
                total.events[j] = total.events[j].saturating_add(c.events[j]);
                total.censored[j] = total.censored[j].saturating_add(c.censored[j]);
            }
        }
        groups.push(PooledGroup {
            total,
            suppressed_at,
            merged_at,
            suppressed_by: 0,
            merged_by: 0,
        });
    }
    finish(points, labels, groups, names)
}

/// One group pooled over the nodes: the sum of the released counts on the
/// coarsest partition any node kept, and who (or, under secure
/// aggregation, how many) suppressed the group or merged intervals.
#[derive(Debug, Clone, PartialEq)]
pub struct PooledGroup {
    pub total: GroupCounts,
    pub suppressed_at: Vec<String>,
    pub merged_at: Vec<String>,
    pub suppressed_by: u32,
    pub merged_by: u32,
}

impl PooledGroup {
    fn merged(&self) -> bool {
        !self.merged_at.is_empty() || self.merged_by > 0
    }
}

/// Curves and the log-rank test from groups pooled already.
pub fn finish(
    points: &[f64],
    labels: &[String],
    groups: Vec<PooledGroup>,
    names: (&str, &str, Option<&str>),
) -> Result<KaplanMeierResult> {
    let intervals = points.len() - 1;
    let mut curves = Vec::with_capacity(labels.len());
    let mut pooled = Vec::with_capacity(labels.len());
    for (group, label) in groups.into_iter().zip(labels) {
        let kept = group.total.events.len();
        let merged = group.merged();
        let total = group.total;
        let merged_after = (merged && total.at_risk > 0).then(|| points[kept - 1]);
        let mut curve = curve(
            &total,
            label,
            &times_of(points, kept),
            merged_after.is_some(),
        );
        curve.suppressed_at = group.suppressed_at;
        curve.merged_after = merged_after;
        curve.merged_at = group.merged_at;
        curve.suppressed_by = group.suppressed_by;
        curve.merged_by = group.merged_by;
        curve.notes = curve_notes(&curve);
        curves.push(curve);
        pooled.push(total);
    }
    if pooled.iter().all(|g| g.at_risk == 0) {
        return Err(Error::disclosure(
            "every group was suppressed at every node: fewer than the minimum cell size at risk",
        ));
    }
    // The test needs one partition for all groups: the coarsest.
    let common = pooled
        .iter()
        .filter(|g| g.at_risk > 0)
        .map(|g| g.events.len())
        .min()
        .unwrap_or(intervals);
    let coarse: Vec<GroupCounts> = pooled.into_iter().map(|g| coarsen(g, common)).collect();
    let log_rank = (labels.len() > 1)
        .then(|| log_rank(&coarse))
        .flatten()
        .map(|test| merged_test(test, &curves, points[common - 1]));
    Ok(KaplanMeierResult {
        time: names.0.into(),
        event: names.1.into(),
        group: names.2.map(str::to_string),
        start: points[0],
        grid_intervals: intervals as u32,
        confidence: format!(
            "{}% pointwise, log transform, Greenwood variance",
            (CONFIDENCE * 100.0).round()
        ),
        curves,
        log_rank,
    })
}

/// Merges the tail of `c` so it has `kept` intervals.
pub fn coarsen(mut c: GroupCounts, kept: usize) -> GroupCounts {
    if c.events.len() > kept {
        c.merge_tail(kept - 1);
    }
    c
}

/// Right ends of the first `kept` intervals, the last reaching the grid's end.
fn times_of(points: &[f64], kept: usize) -> Vec<f64> {
    let m = points.len() - 1;
    (0..kept)
        .map(|j| {
            if j + 1 == kept {
                points[m]
            } else {
                points[j + 1]
            }
        })
        .collect()
}

/// The curve of pooled counts `g` at `times`. Survival is stated at the
/// end of an interval only when the released counts show patients at risk
/// in it and it is a single grid interval: never in a merged last interval
/// (`merged_tail`), whose events may fall anywhere after its start, nor
/// once nobody is left at risk. So the median, and any survival read off
/// the curve, rest on times the data reach.
fn curve(g: &GroupCounts, label: &str, times: &[f64], merged_tail: bool) -> Curve {
    let mut out = Curve {
        group: label.to_string(),
        at_risk: g.at_risk,
        events: g.events.iter().sum(),
        times: vec![],
        n_risk: vec![],
        n_event: vec![],
        n_censor: vec![],
        survival: vec![],
        std_error: vec![],
        lower: vec![],
        upper: vec![],
        median: None,
        stated_until: None,
        suppressed_at: vec![],
        merged_after: None,
        merged_at: vec![],
        notes: vec![],
        suppressed_by: 0,
        merged_by: 0,
    };
    // A group nobody released has no curve, not a flat one at 1.
    if g.at_risk == 0 {
        return out;
    }
    let n_risk = g.at_risk_by_interval();
    let z = super::inference::Reference::Normal.critical();
    let (mut s, mut greenwood) = (1.0f64, 0.0f64);
    let last = n_risk.len() - 1;
    for (j, (&n, &d)) in n_risk.iter().zip(&g.events).enumerate() {
        if n == 0 || (merged_tail && j == last) {
            for v in [
                &mut out.survival,
                &mut out.std_error,
                &mut out.lower,
                &mut out.upper,
            ] {
                v.push(None);
            }
            continue;
        }
        if d > 0 {
            s *= 1.0 - d as f64 / n as f64;
            greenwood += if n > d {
                d as f64 / (n as f64 * (n - d) as f64)
            } else {
                f64::INFINITY
            };
        }
        let se_log = greenwood.sqrt();
        let finite = se_log.is_finite();
        out.survival.push(Some(s));
        out.std_error.push(finite.then_some(s * se_log));
        let band = s > 0.0 && finite;
        out.lower
            .push(band.then(|| (s * (-z * se_log).exp()).max(0.0)));
        out.upper
            .push(band.then(|| (s * (z * se_log).exp()).min(1.0)));
        if out.median.is_none() && s <= 0.5 {
            out.median = Some(times[j]);
        }
        out.stated_until = Some(times[j]);
    }
    out.times = times.to_vec();
    out.n_risk = n_risk;
    out.n_event = g.events.clone();
    out.n_censor = g.censored.clone();
    out
}

/// Says why a curve stops short of the grid, from its released counts.
fn curve_notes(c: &Curve) -> Vec<String> {
    let mut notes = Vec::new();
    if c.at_risk == 0 {
        return notes;
    }
    let shown = |t: Option<f64>| t.map_or("at any time".to_string(), |t| format!("after {t}"));
    if let Some(after) = c.merged_after {
        let last = c.times.len() - 1;
        notes.push(format!(
            "survival is not stated {}: the intervals after {after} were merged into one at {}, where too few patients were at risk to release them one by one; its {} events and {} censorings fall somewhere after {after}",
            shown(c.stated_until),
            merged_where(c),
            c.n_event[last],
            c.n_censor[last]
        ));
    } else if c.n_risk.last() == Some(&0) {
        notes.push(format!(
            "survival is not stated {}: the released counts show nobody at risk after it",
            shown(c.stated_until)
        ));
    }
    if c.median.is_none() && !notes.is_empty() {
        notes.push(match c.stated_until {
            Some(t) => {
                format!("the median is not reached by {t}, the last time survival is stated")
            }
            None => "the median is not stated".to_string(),
        });
    }
    notes
}

/// Where a curve's intervals were merged: the nodes, or under secure
/// aggregation how many (which ones nobody can tell).
fn merged_where(c: &Curve) -> String {
    if c.merged_at.is_empty() {
        format!("{} node(s)", c.merged_by)
    } else {
        c.merged_at.join(", ")
    }
}

/// Marks a log-rank test that ran over merged intervals: after `after`
/// (the start of the common partition's last interval) every interval
/// counted as one, at the nodes the curves name.
fn merged_test(mut test: LogRank, curves: &[Curve], after: f64) -> LogRank {
    let merged: Vec<&Curve> = curves.iter().filter(|c| c.merged_after.is_some()).collect();
    if merged.is_empty() {
        return test;
    }
    let mut nodes: Vec<String> = merged
        .iter()
        .flat_map(|c| c.merged_at.iter().cloned())
        .collect();
    nodes.sort();
    nodes.dedup();
    let place = if nodes.is_empty() {
        let most = merged.iter().map(|c| c.merged_by).max().unwrap_or(0);
        format!("{most} node(s), not named under secure aggregation")
    } else {
        nodes.join(", ")
    };
    test.note = Some(format!(
        "the test ran with the intervals after {after} merged into one (at {place}, where too few patients were at risk): it compares the groups interval by interval up to {after} and only in total after it"
    ));
    test.merged_after = Some(after);
    test.merged_at = nodes;
    test
}

/// The k-group log-rank test (R's `survdiff`, rho = 0) on the pooled
/// intervals; `None` when fewer than two groups have anyone at risk.
fn log_rank(groups: &[GroupCounts]) -> Option<LogRank> {
    let present: Vec<&GroupCounts> = groups.iter().filter(|g| g.at_risk > 0).collect();
    let k = present.len();
    if k < 2 {
        return None;
    }
    let risk: Vec<Vec<u64>> = present.iter().map(|g| g.at_risk_by_interval()).collect();
    let intervals = risk[0].len();
    let mut observed = vec![0.0; k];
    let mut expected = vec![0.0; k];
    let mut v = nalgebra::DMatrix::<f64>::zeros(k, k);
    for j in 0..intervals {
        let n: f64 = risk.iter().map(|r| r[j] as f64).sum();
        let d: f64 = present.iter().map(|g| g.events[j] as f64).sum();
        if n <= 0.0 || d <= 0.0 {
            continue;
        }
        let factor = if n > 1.0 {
            d * (n - d) / (n - 1.0)
        } else {
            0.0
        };
        for a in 0..k {
            let na = risk[a][j] as f64;
            observed[a] += present[a].events[j] as f64;
            expected[a] += na * d / n;
            for b in 0..k {
                let nb = risk[b][j] as f64;
                let delta = if a == b { 1.0 } else { 0.0 };
                v[(a, b)] += factor * (na / n) * (delta - nb / n);
            }
        }
    }
    let m = k - 1;
    let u = nalgebra::DVector::from_iterator(m, (0..m).map(|a| observed[a] - expected[a]));
    let vm = v.view((0, 0), (m, m)).into_owned();
    let chi = vm
        .try_inverse()
        .map(|inv| (u.transpose() * inv * &u)[(0, 0)])?;
    Some(LogRank {
        chi_square: chi,
        df: m as u32,
        p_value: chi_square_p(chi, m as f64),
        observed,
        expected,
        merged_after: None,
        merged_at: Vec::new(),
        note: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aml() -> (Vec<f64>, Vec<bool>, Vec<u32>) {
        let rows = &crate::models::fixtures::AML;
        (
            rows.iter().map(|r| r.0).collect(),
            rows.iter().map(|r| r.1).collect(),
            rows.iter().map(|r| r.2).collect(),
        )
    }

    #[test]
    fn intervals_are_left_open() {
        let p = [0.0, 10.0, 20.0];
        assert_eq!(interval_of(&p, 0.0), None);
        assert_eq!(interval_of(&p, 0.5), Some(0));
        assert_eq!(interval_of(&p, 10.0), Some(0));
        assert_eq!(interval_of(&p, 10.5), Some(1));
        assert_eq!(interval_of(&p, 20.0), Some(1));
        assert_eq!(interval_of(&p, 99.0), Some(1));
    }

    #[test]
    fn aml_curves_and_log_rank_match_published_values() {
        let (t, e, g) = aml();
        let points = Grid::Range {
            from: 0.0,
            to: 200.0,
            step: 1.0,
        }
        .points()
        .unwrap();
        let counts = count(&points, &t, &e, &g, 2);
        let released = disclose(counts, 1);
        let labels = vec!["maintained".to_string(), "nonmaintained".to_string()];
        let r = pool(
            &points,
            &labels,
            &[("a".into(), released)],
            ("time", "status", Some("x")),
        )
        .unwrap();
        assert_eq!(r.curves[0].median, Some(31.0));
        assert_eq!(r.curves[1].median, Some(23.0));
        let at =
            |c: &Curve, t: f64| c.survival[c.times.iter().position(|x| *x == t).unwrap()].unwrap();
        assert!((at(&r.curves[0], 9.0) - 10.0 / 11.0).abs() < 1e-12);
        assert!((at(&r.curves[0], 23.0) - 54.0 / 88.0).abs() < 1e-12);
        assert!((at(&r.curves[0], 31.0) - 216.0 / 440.0).abs() < 1e-12);
        let lr = r.log_rank.unwrap();
        assert!((lr.chi_square - 3.4).abs() < 0.05, "{lr:?}");
        assert_eq!(lr.observed, [7.0, 11.0]);
        assert!((lr.expected[0] - 10.69).abs() < 0.01);
    }

    #[test]
    fn thin_tails_are_merged_and_small_groups_suppressed() {
        let points = [0.0, 1.0, 2.0, 3.0, 4.0];
        // 10 patients: at risk 10, 8, 6, 3 at the starts of the intervals.
        let t = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 3.0, 4.0, 9.0, 9.0];
        let e = [
            true, true, true, false, true, false, true, true, false, false,
        ];
        let counts = count(&points, &t, &e, &[0; 10], 1);
        assert_eq!(counts[0].counts.at_risk_by_interval(), [10, 8, 6, 3]);
        let released = disclose(counts.clone(), 5);
        let GroupStats::Released(c) = &released[0] else {
            panic!()
        };
        assert_eq!(c.events, [2, 1, 3]);
        assert_eq!(c.censored, [0, 1, 3]);
        check(&released, 1, 4, 5).unwrap();
        assert_eq!(disclose(counts, 11), [GroupStats::Suppressed]);
        let r = pool(
            &points,
            &["all".into()],
            &[("a".into(), released)],
            ("t", "e", None),
        )
        .unwrap();
        assert_eq!(r.curves[0].merged_after, Some(2.0));
        assert_eq!(r.curves[0].merged_at, ["a"]);
        assert_eq!(r.curves[0].times, [1.0, 2.0, 4.0]);
    }

    #[test]
    fn moving_the_grid_end_cannot_reveal_the_last_patients() {
        // Six deaths at t = 1, then deaths at 3, 4 and 6 and one censored at 7.
        let t = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 3.0, 4.0, 6.0, 7.0];
        let e = [true, true, true, true, true, true, true, true, true, false];
        let released = |end: f64| {
            let counts = count(&[0.0, 1.0, end], &t, &e, &[0; 10], 1);
            disclose(counts, 4).remove(0)
        };
        // Fewer than k = 4 are followed beyond 3.5 or 5: their deaths join the
        // last interval, so both ends release the same counts.
        let (a, b) = (released(3.5), released(5.0));
        assert_eq!(a, b);
        let GroupStats::Released(c) = a else { panic!() };
        assert!(c.open_end);
        assert_eq!(
            (c.events.clone(), c.censored.clone()),
            (vec![6, 3], vec![0, 1])
        );
        // Four (k) beyond 2: nothing is folded.
        let GroupStats::Released(c) = released(2.0) else {
            panic!()
        };
        assert!(!c.open_end);
        assert_eq!(c.censored, [0, 4]);
        let r = pool(
            &[0.0, 1.0, 3.5],
            &["all".into()],
            &[
                ("a".into(), vec![GroupStats::Released(c.clone())]),
                ("b".into(), released_open(&t, &e)),
            ],
            ("t", "e", None),
        )
        .unwrap();
        assert_eq!(r.curves[0].merged_at, ["b"]);
        assert_eq!(r.curves[0].merged_after, Some(1.0));
    }

    #[test]
    fn survival_and_the_median_stop_where_follow_up_stops() {
        // The finding: nobody followed beyond 2358, a grid to 3650, a tail
        // merged at the node, and most of the merged tail's patients dying.
        let points = [0.0, 500.0, 1000.0, 1500.0, 2000.0, 2500.0, 3000.0, 3650.0];
        let short = [
            (400.0, true),
            (400.0, true),
            (900.0, false),
            (1400.0, true),
            (1400.0, true),
            (1450.0, false),
            (1600.0, true),
            (1700.0, true),
            (2100.0, true),
            (2200.0, true),
            (2300.0, false),
            (2358.0, true),
        ];
        // A second group followed to 3600, never thin.
        let long: Vec<(f64, bool)> = (0..30)
            .map(|i| (100.0 + 100.0 * f64::from(i % 20) + f64::from(i), i % 3 == 0))
            .chain((0..10).map(|_| (3600.0, false)))
            .collect();
        let rows: Vec<(f64, bool, u32)> = short
            .iter()
            .map(|(t, e)| (*t, *e, 0))
            .chain(long.iter().map(|(t, e)| (*t, *e, 1)))
            .collect();
        let t: Vec<f64> = rows.iter().map(|r| r.0).collect();
        let e: Vec<bool> = rows.iter().map(|r| r.1).collect();
        let g: Vec<u32> = rows.iter().map(|r| r.2).collect();
        let released = disclose(count(&points, &t, &e, &g, 2), 5);
        let r = pool(
            &points,
            &["short".into(), "long".into()],
            &[("hospital-a".into(), released)],
            ("t", "e", Some("cohort")),
        )
        .unwrap();
        let c = &r.curves[0];
        // Four at risk after 2000 (under k): merged into (1500, 3650].
        assert_eq!(c.merged_after, Some(1500.0));
        assert_eq!(c.times.last(), Some(&3650.0));
        // Its survival drops to 0.11 in the merged tail, but no median of
        // 3650 and no survival at 3650: both stop at 1500.
        assert_eq!(c.survival.last(), Some(&None));
        assert_eq!(c.std_error.last(), Some(&None));
        assert_eq!(c.stated_until, Some(1500.0));
        assert_eq!(c.median, None);
        let stated = c.survival.iter().flatten().copied().fold(1.0, f64::min);
        assert!((stated - 10.0 / 12.0 * 7.0 / 9.0).abs() < 1e-12, "{stated}");
        assert!(c.notes[0].starts_with("survival is not stated after 1500: the intervals after 1500 were merged into one at hospital-a"), "{:?}", c.notes);
        assert!(
            c.notes[0].ends_with("its 5 events and 1 censorings fall somewhere after 1500"),
            "{:?}",
            c.notes
        );
        assert_eq!(
            c.notes[1],
            "the median is not reached by 1500, the last time survival is stated"
        );
        // The other group is stated to the grid's end.
        assert_eq!(r.curves[1].stated_until, Some(3650.0));
        assert!(r.curves[1].notes.is_empty(), "{:?}", r.curves[1].notes);
        // The log-rank test had to merge both groups after 1500, and says so.
        let lr = r.log_rank.unwrap();
        assert_eq!(lr.merged_after, Some(1500.0));
        assert_eq!(lr.merged_at, ["hospital-a"]);
        assert!(lr.note.unwrap().starts_with(
            "the test ran with the intervals after 1500 merged into one (at hospital-a"
        ));

        // An exact study with k = 1 merges nothing: on a daily grid the
        // curve is stated to the last follow-up, 2358, and not after.
        let daily = Grid::Range {
            from: 0.0,
            to: 3650.0,
            step: 1.0,
        }
        .points()
        .unwrap();
        let (t, e): (Vec<f64>, Vec<bool>) = short.iter().copied().unzip();
        let released = disclose(count(&daily, &t, &e, &[0; 12], 1), 1);
        let r = pool(
            &daily,
            &["all".into()],
            &[("a".into(), released)],
            ("t", "e", None),
        )
        .unwrap();
        let c = &r.curves[0];
        assert_eq!(c.merged_after, None);
        assert_eq!(c.times.len(), 3650);
        assert_eq!(c.stated_until, Some(2358.0));
        assert_eq!(c.survival.iter().flatten().count(), 2358);
        // Every patient left by 2358, the last of them dying: survival is 0
        // there, its standard error not finite, so missing.
        let j = 2357;
        assert_eq!(c.survival[j], Some(0.0));
        assert_eq!((c.std_error[j], c.lower[j], c.upper[j]), (None, None, None));
        assert_eq!(c.median, Some(1700.0));
        assert_eq!(
            c.notes,
            ["survival is not stated after 2358: the released counts show nobody at risk after it"]
        );
        assert!(r.log_rank.is_none());
        // A missing standard error is null in JSON and reads back.
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("null"));
        let back = serde_json::from_str::<KaplanMeierResult>(&json).unwrap();
        let b = &back.curves[0];
        assert_eq!(
            (b.survival[j], b.std_error[j], b.lower[j]),
            (Some(0.0), None, None)
        );
        assert_eq!(b.survival.len(), c.survival.len());
        assert_eq!(b.notes, c.notes);
    }

    fn released_open(t: &[f64], e: &[bool]) -> Vec<GroupStats> {
        disclose(count(&[0.0, 1.0, 3.5], t, e, &vec![0; t.len()], 1), 4)
    }

    #[test]
    fn a_group_nobody_released_has_no_curve() {
        let r = pool(
            &[0.0, 1.0, 2.0],
            &["F".into(), "M".into()],
            &[(
                "a".into(),
                vec![
                    GroupStats::Suppressed,
                    GroupStats::Released(GroupCounts {
                        at_risk: 5,
                        events: vec![1, 1],
                        censored: vec![0, 3],
                        open_end: false,
                    }),
                ],
            )],
            ("t", "e", Some("sex")),
        )
        .unwrap();
        assert!(r.curves[0].times.is_empty() && r.curves[0].survival.is_empty());
        assert_eq!(r.curves[0].suppressed_at, ["a"]);
        assert_eq!(r.curves[1].survival.len(), 2);
        assert!(r.log_rank.is_none());
    }
}
