//! Pooling: combining the nodes' released sufficient statistics into one
//! answer, by summing counts, sums and sums of squares (never averaging
//! averages), and recording which node contributed what kind of answer.

use serde::{Deserialize, Serialize};

use crate::cell::{Cell, PooledCell};
use crate::dictionary::Dictionary;
use crate::error::{Error, ErrorCode, Result};
use crate::models::correlation::{self, CorrelationResult};
use crate::models::cox::CoxResult;
use crate::models::derived::{self, QuantilesResult, TwoByTwoResult};
use crate::models::gbdt::GbdtResult;
use crate::models::glm::GlmResult;
use crate::models::survival::{self, KaplanMeierResult};
use crate::query::Analysis;
use crate::stats::{Moments, NodeStats};

/// The normal quantile of a two-sided 95% interval.
pub const Z_95: f64 = 1.959_963_984_540_054;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// Answered with released statistics.
    Answered,
    /// Answered, but its whole value fell under the minimum cell size.
    Suppressed,
    /// Not connected, or no answer before the deadline.
    Missing,
    /// Refused the job under its local policy or disclosure control.
    Refused,
    /// Tried and failed (data error, invalid answer).
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeOutcome {
    pub node: String,
    pub status: NodeStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The error class a refusing or failing node gave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    pub nodes: Vec<NodeOutcome>,
    /// Nodes that returned statistics (including suppressed ones).
    pub answered: u32,
    pub min_nodes: u32,
    /// Minimum cell size the pooled result was checked against.
    pub min_cell_size: u32,
    /// What the researcher should know about how the result came about
    /// (a node lost during a fit, for instance).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Wall time of each round of an iterative fit, in milliseconds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub round_ms: Vec<u64>,
}

impl Provenance {
    /// What `node` did for this result.
    pub fn node(&self, node: &str) -> Option<&NodeOutcome> {
        self.nodes.iter().find(|n| n.node == node)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum PooledValue {
    Count {
        n: PooledCell,
    },
    Summary {
        variable: String,
        n: u64,
        mean: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        variance: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sd: Option<f64>,
        /// 95% confidence interval of the mean: sampling error plus, under
        /// differential privacy, the noise.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ci: Option<[f64; 2]>,
        /// Standard deviation of the privacy noise in the mean.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        noise_sd: Option<f64>,
    },
    Histogram {
        variable: String,
        edges: Vec<f64>,
        bins: Vec<PooledCell>,
        below: PooledCell,
        above: PooledCell,
    },
    Table {
        row: String,
        column: String,
        row_levels: Vec<String>,
        column_levels: Vec<String>,
        /// `cells[r][c]`.
        cells: Vec<Vec<PooledCell>>,
    },
    Glm(GlmResult),
    Cox(CoxResult),
    KaplanMeier(KaplanMeierResult),
    Correlation(CorrelationResult),
    Quantiles(QuantilesResult),
    TwoByTwo(TwoByTwoResult),
    Gbdt(Box<GbdtResult>),
    /// A model's validation (`model_performance`).
    #[serde(rename = "model_performance")]
    Performance(Box<crate::models::performance::PerformanceResult>),
}

/// One site's own answer, when the query asked for them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteResult {
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<PooledValue>,
    /// Why the site has no answer of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl SiteResult {
    /// A site's answer, or why it has none.
    pub fn new(node: &str, outcome: Result<PooledValue>) -> Self {
        let (value, error) = match outcome {
            Ok(v) => (Some(v), None),
            Err(e) => (None, Some(format!("{}: {}", e.code, e.message))),
        };
        SiteResult {
            node: node.to_string(),
            value,
            error,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PooledResult {
    pub value: PooledValue,
    pub provenance: Provenance,
    /// Each site on its own, when the query asked `by_site`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub by_site: Vec<SiteResult>,
    /// What the query cost and how its values were noised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<PrivacyReport>,
}

/// One node's part of a query's cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeCharge {
    pub node: String,
    /// Debited for this query at the node (0 when it answered from its cache).
    pub charged_rho: f64,
    /// The study's spent budget at the node, after this query.
    pub spent_rho: f64,
    /// The budget the node enforces (the study's, or less by its policy).
    pub budget_rho: f64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
}

/// A result's privacy terms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrivacyReport {
    /// An exact study: no noise, no budget.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exact: bool,
    /// What the query asked to spend (zCDP ρ).
    pub cost_rho: f64,
    /// The most any node debited for it (0 when every node repeated an
    /// earlier answer).
    pub charged_rho: f64,
    /// Every node answered from its cache: the same answer as before, free.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
    /// The study's budget and what it has spent, as the coordinator
    /// accounts it (the most any node has spent).
    pub budget_rho: f64,
    pub spent_rho: f64,
    pub remaining_rho: f64,
    /// The (ε, δ)-DP equivalent of what the study has spent.
    pub epsilon_spent: f64,
    pub delta: f64,
    /// Standard deviation of the noise in each pooled count (cells, bins,
    /// n at risk), when the result has counts; for Kaplan-Meier, the
    /// largest of a pooled number at risk (a note gives the rest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count_noise_sd: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeCharge>,
    /// How noise was post-processed (negative counts set to 0, a variance
    /// clamped at 0) when that happened.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

impl PooledResult {
    /// The number of patients the pooled value rests on, when known.
    pub fn n(&self) -> Option<u64> {
        match &self.value {
            PooledValue::Count { n } => n.count,
            PooledValue::Summary { n, .. } => Some(*n),
            PooledValue::Histogram {
                bins, below, above, ..
            } => bins
                .iter()
                .chain([below, above])
                .map(|c| c.count)
                .sum::<Option<u64>>(),
            PooledValue::Table { cells, .. } => {
                cells.iter().flatten().map(|c| c.count).sum::<Option<u64>>()
            }
            PooledValue::Glm(g) => Some(g.n),
            PooledValue::Cox(c) => Some(c.n),
            PooledValue::KaplanMeier(k) => Some(k.curves.iter().map(|c| c.at_risk).sum()),
            PooledValue::Correlation(c) => c.n.iter().flatten().flatten().copied().min(),
            PooledValue::Quantiles(q) => Some(q.n),
            PooledValue::TwoByTwo(t) => Some(t.table.iter().flatten().sum()),
            PooledValue::Gbdt(g) => Some(g.n),
            PooledValue::Performance(p) => p.groups.first().map(|g| g.n),
        }
    }
}

impl PooledResult {
    /// How many of the result's cells were withheld by disclosure control.
    pub fn suppressed_cells(&self) -> u64 {
        let count = |cells: &mut dyn Iterator<Item = &PooledCell>| {
            cells.filter(|c| c.is_suppressed()).count() as u64
        };
        match &self.value {
            PooledValue::Count { n } => count(&mut std::iter::once(n)),
            PooledValue::Histogram {
                bins, below, above, ..
            } => count(&mut bins.iter().chain([below, above])),
            PooledValue::Table { cells, .. } => count(&mut cells.iter().flatten()),
            _ => 0,
        }
    }
}

fn pool_cells<'a>(cells: impl Iterator<Item = (&'a str, Cell)>, k: u32) -> PooledCell {
    let mut sum = 0u64;
    let mut suppressed_at = Vec::new();
    let mut any = false;
    for (node, c) in cells {
        any = true;
        match c {
            Cell::Count(n) => sum = sum.saturating_add(n),
            Cell::Suppressed => suppressed_at.push(node.to_string()),
        }
    }
    if !any {
        return PooledCell::default();
    }
    PooledCell {
        suppressed_at: suppressed_at.clone(),
        ..settle(sum, !suppressed_at.is_empty(), k)
    }
}

/// A pooled cell from the sum of the parts released and how many nodes
/// suppressed theirs. Secure aggregation knows only how many
/// (`suppressed_by`); the plain pool knows who.
pub fn pooled_cell(total: u64, suppressed_by: u32, k: u32) -> PooledCell {
    PooledCell {
        suppressed_by,
        ..settle(total, suppressed_by > 0, k)
    }
}

/// Released only when no node suppressed its part and the total reaches
/// `k` (a pooled total under k is never released either); otherwise the
/// parts released are at least the total.
fn settle(total: u64, suppressed: bool, k: u32) -> PooledCell {
    if suppressed {
        PooledCell {
            at_least: (total > 0).then_some(total),
            ..PooledCell::default()
        }
    } else if total < u64::from(k) {
        PooledCell::default()
    } else {
        PooledCell {
            count: Some(total),
            ..PooledCell::default()
        }
    }
}

/// Why a result cannot stand: too few nodes answered.
pub fn quorum_error(answered: u32, others: &[NodeOutcome], min_nodes: u32) -> Error {
    // Nodes that gave the same reason are named together and the reason
    // said once: three hospitals that have not approved a study are one
    // refusal to read, not three.
    let mut reasons: Vec<(String, Vec<&str>)> = Vec::new();
    for o in others {
        let status = format!("{:?}", o.status).to_lowercase();
        let why = match &o.detail {
            Some(d) => format!("{status}: {d}"),
            None => status,
        };
        match reasons.iter_mut().find(|(w, _)| *w == why) {
            Some((_, nodes)) => nodes.push(&o.node),
            None => reasons.push((why, vec![&o.node])),
        }
    }
    let missing: Vec<String> = reasons
        .iter()
        .map(|(why, nodes)| format!("{} ({why})", nodes.join(", ")))
        .collect();
    // Say why: nodes that were unreachable make it an availability
    // problem; nodes that all refused under one rule make it that rule's.
    let code = if others.iter().any(|o| o.status == NodeStatus::Missing) || others.is_empty() {
        ErrorCode::Unavailable
    } else {
        let codes: std::collections::BTreeSet<_> = others.iter().filter_map(|o| o.code).collect();
        match codes.into_iter().collect::<Vec<_>>().as_slice() {
            [one] => *one,
            _ => ErrorCode::Unavailable,
        }
    };
    Error::new(
            code,
            format!(
                "only {answered} of the study's nodes answered and it needs at least {min_nodes}; not answering: {}",
                if missing.is_empty() { "none".to_string() } else { missing.join("; ") }
            ),
        )
}

/// The pooled summary of the moments every node released, refused when
/// they rest on fewer than `k` patients.
pub fn summary_value(variable: &str, total: Moments, k: u32) -> Result<PooledValue> {
    if total.n < u64::from(k).max(1) {
        return Err(Error::disclosure(format!(
            "the summary of \"{variable}\" was suppressed at every node: fewer than {k} patients with a value"
        )));
    }
    let variance = total.variance();
    let mean = total.mean().unwrap_or(f64::NAN);
    let ci = variance.map(|v| {
        let half = Z_95 * (v / total.n as f64).sqrt();
        [mean - half, mean + half]
    });
    Ok(PooledValue::Summary {
        variable: variable.to_string(),
        n: total.n,
        mean,
        variance,
        sd: variance.map(f64::sqrt),
        ci,
        noise_sd: None,
    })
}

/// Combines the answers of the nodes that returned statistics. `others`
/// lists nodes that did not (missing, refused, failed). Fails with an
/// `unavailable` error when fewer than `min_nodes` answered.
pub fn pool(
    analysis: &Analysis,
    dict: &Dictionary,
    answers: &[(String, NodeStats)],
    others: Vec<NodeOutcome>,
    min_nodes: u32,
    k: u32,
) -> Result<PooledResult> {
    // A node whose every released value was suppressed counts as suppressed.
    let status_of = |stats: &NodeStats| match stats {
        NodeStats::Survival(groups)
            if groups
                .iter()
                .all(|g| *g == survival::GroupStats::Suppressed) =>
        {
            NodeStatus::Suppressed
        }
        NodeStats::Pairs(pairs) if pairs.iter().all(Option::is_none) => NodeStatus::Suppressed,
        NodeStats::Count(Cell::Suppressed) | NodeStats::Summary(None) => NodeStatus::Suppressed,
        NodeStats::Histogram { bins, below, above }
            if bins
                .iter()
                .chain([below, above])
                .all(|c| *c == Cell::Suppressed) =>
        {
            NodeStatus::Suppressed
        }
        NodeStats::Table { cells, .. } if cells.iter().all(|c| *c == Cell::Suppressed) => {
            NodeStatus::Suppressed
        }
        _ => NodeStatus::Answered,
    };
    let statuses: Vec<(String, NodeStatus)> = answers
        .iter()
        .map(|(node, stats)| (node.clone(), status_of(stats)))
        .collect();
    let provenance = quorum(&statuses, others, min_nodes, k)?;
    let value = pool_value(analysis, dict, answers, k)?;
    Ok(PooledResult {
        value,
        provenance,
        by_site: Vec::new(),
        privacy: None,
    })
}

/// Checks the quorum for an analysis pooled elsewhere (iterative fits)
/// and describes every node's part.
pub fn quorum(
    answers: &[(String, NodeStatus)],
    others: Vec<NodeOutcome>,
    min_nodes: u32,
    k: u32,
) -> Result<Provenance> {
    let answered = answers.len() as u32;
    if answered < min_nodes {
        return Err(quorum_error(answered, &others, min_nodes));
    }
    let mut nodes: Vec<NodeOutcome> = answers
        .iter()
        .map(|(node, status)| NodeOutcome {
            node: node.clone(),
            status: *status,
            detail: None,
            code: None,
        })
        .collect();
    nodes.extend(others);
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(Provenance {
        nodes,
        answered,
        min_nodes,
        min_cell_size: k,
        notes: Vec::new(),
        round_ms: Vec::new(),
    })
}

/// The pooled value of a one-shot analysis from the answering nodes'
/// released statistics.
pub fn pool_value(
    analysis: &Analysis,
    dict: &Dictionary,
    answers: &[(String, NodeStats)],
    k: u32,
) -> Result<PooledValue> {
    let mismatch =
        || Error::internal("node statistics do not match the analysis (checked on receipt)");

    let value = match analysis {
        Analysis::Count {} => {
            let cells = answers.iter().map(|(n, s)| match s {
                NodeStats::Count(c) => Ok((n.as_str(), *c)),
                _ => Err(mismatch()),
            });
            let cells: Vec<_> = cells.collect::<Result<_>>()?;
            PooledValue::Count {
                n: pool_cells(cells.into_iter(), k),
            }
        }
        Analysis::Summary { variable } => {
            let mut total = Moments::default();
            for (_, s) in answers {
                match s {
                    NodeStats::Summary(Some(m)) => total.merge(m),
                    NodeStats::Summary(None) => {}
                    _ => return Err(mismatch()),
                }
            }
            summary_value(variable, total, k)?
        }
        Analysis::Histogram { variable, edges } => {
            let mut parts = Vec::new();
            for (n, s) in answers {
                match s {
                    NodeStats::Histogram { bins, below, above } => {
                        parts.push((n.as_str(), bins, *below, *above))
                    }
                    _ => return Err(mismatch()),
                }
            }
            let nbins = edges.len() - 1;
            PooledValue::Histogram {
                variable: variable.clone(),
                edges: edges.clone(),
                bins: (0..nbins)
                    .map(|i| pool_cells(parts.iter().map(|p| (p.0, p.1[i])), k))
                    .collect(),
                below: pool_cells(parts.iter().map(|p| (p.0, p.2)), k),
                above: pool_cells(parts.iter().map(|p| (p.0, p.3)), k),
            }
        }
        Analysis::Table { row, column } => {
            let row_levels = dict.get(row)?.levels();
            let column_levels = dict.get(column)?.levels();
            let mut parts = Vec::new();
            for (n, s) in answers {
                match s {
                    NodeStats::Table { cells, .. } => parts.push((n.as_str(), cells)),
                    _ => return Err(mismatch()),
                }
            }
            let nc = column_levels.len();
            let cells = (0..row_levels.len())
                .map(|r| {
                    (0..nc)
                        .map(|c| pool_cells(parts.iter().map(|p| (p.0, p.1[r * nc + c])), k))
                        .collect()
                })
                .collect();
            PooledValue::Table {
                row: row.clone(),
                column: column.clone(),
                row_levels,
                column_levels,
                cells,
            }
        }
        Analysis::Quantiles {
            variable,
            edges,
            probabilities,
        } => {
            let histogram = Analysis::Histogram {
                variable: variable.clone(),
                edges: edges.clone(),
            };
            match pool_value(&histogram, dict, answers, k)? {
                PooledValue::Histogram {
                    bins, below, above, ..
                } => PooledValue::Quantiles(derived::quantiles(
                    variable,
                    edges,
                    &bins,
                    &below,
                    &above,
                    probabilities,
                )),
                _ => return Err(mismatch()),
            }
        }
        Analysis::TwoByTwo { exposure, outcome } => {
            let table = Analysis::Table {
                row: exposure.clone(),
                column: outcome.clone(),
            };
            match pool_value(&table, dict, answers, k)? {
                PooledValue::Table {
                    row_levels,
                    column_levels,
                    cells,
                    ..
                } => PooledValue::TwoByTwo(derived::two_by_two(
                    (exposure, outcome),
                    (&row_levels[1], &column_levels[1]),
                    &cells,
                )?),
                _ => return Err(mismatch()),
            }
        }
        Analysis::KaplanMeier {
            time,
            event,
            group,
            grid,
        } => {
            let points = grid.points()?;
            let labels = analysis.survival_groups(dict)?;
            let parts = answers
                .iter()
                .map(|(n, s)| match s {
                    NodeStats::Survival(g) => Ok((n.clone(), g.clone())),
                    _ => Err(mismatch()),
                })
                .collect::<Result<Vec<_>>>()?;
            PooledValue::KaplanMeier(survival::pool(
                &points,
                &labels,
                &parts,
                (time, event, group.as_deref()),
            )?)
        }
        Analysis::Correlation { variables, missing } => {
            let parts = answers
                .iter()
                .map(|(n, s)| match s {
                    NodeStats::Pairs(p) => Ok((n.clone(), p.clone())),
                    _ => Err(mismatch()),
                })
                .collect::<Result<Vec<_>>>()?;
            PooledValue::Correlation(correlation::pool(variables, *missing, &parts)?)
        }
        Analysis::Glm { .. }
        | Analysis::Cox { .. }
        | Analysis::Gbdt { .. }
        | Analysis::ModelPerformance { .. } => {
            return Err(Error::internal(
                "models are pooled round by round by the fitting loop",
            ))
        }
    };
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_sum_and_suppression_is_reported() {
        let d = Dictionary::cardiovascular();
        let answers = vec![
            ("a".to_string(), NodeStats::Count(Cell::Count(10))),
            ("b".to_string(), NodeStats::Count(Cell::Count(7))),
        ];
        let r = pool(&Analysis::Count {}, &d, &answers, vec![], 2, 5).unwrap();
        assert_eq!(r.n(), Some(17));
        let answers = vec![
            ("a".to_string(), NodeStats::Count(Cell::Count(10))),
            ("b".to_string(), NodeStats::Count(Cell::Suppressed)),
        ];
        let r = pool(&Analysis::Count {}, &d, &answers, vec![], 2, 5).unwrap();
        match r.value {
            PooledValue::Count { n } => {
                assert_eq!(n.count, None);
                assert_eq!(n.at_least, Some(10));
                assert_eq!(n.suppressed_at, ["b"]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.provenance.nodes[1].status, NodeStatus::Suppressed);
    }

    #[test]
    fn quorum_is_explicit() {
        let d = Dictionary::cardiovascular();
        let answers = vec![("a".to_string(), NodeStats::Count(Cell::Count(10)))];
        let missing = vec![NodeOutcome {
            node: "c".into(),
            status: NodeStatus::Missing,
            detail: Some("not connected".into()),
            code: None,
        }];
        let e = pool(&Analysis::Count {}, &d, &answers, missing, 2, 5).unwrap_err();
        assert_eq!(e.code, crate::ErrorCode::Unavailable);
        assert!(e.message.contains("c (missing: not connected)"), "{e}");
    }

    #[test]
    fn nodes_refusing_alike_are_named_together_with_the_reason_once() {
        let outcome = |node: &str, status, detail: &str| NodeOutcome {
            node: node.into(),
            status,
            detail: Some(detail.into()),
            code: Some(crate::ErrorCode::Policy),
        };
        let unapproved = "study \"s\" has not been approved by this hospital yet; approve it";
        let others = [
            outcome("a", NodeStatus::Refused, unapproved),
            outcome("b", NodeStatus::Refused, unapproved),
            outcome("c", NodeStatus::Refused, "node c does not run glm analyses"),
            outcome("d", NodeStatus::Refused, unapproved),
        ];
        let e = quorum_error(0, &others, 2);
        assert_eq!(e.code, crate::ErrorCode::Policy);
        assert_eq!(e.message.matches(unapproved).count(), 1, "{e}");
        assert!(
            e.message.ends_with(&format!(
                "not answering: a, b, d (refused: {unapproved}); c (refused: node c does not run glm analyses)"
            )),
            "{e}"
        );
    }

    #[test]
    fn summary_is_pooled_from_sums() {
        let d = Dictionary::cardiovascular();
        let mut a = Moments::default();
        let mut b = Moments::default();
        let mut all = Moments::default();
        for (i, x) in [
            60.0, 61.0, 70.0, 75.0, 80.0, 55.0, 66.0, 67.0, 90.0, 71.0, 72.0,
        ]
        .iter()
        .enumerate()
        {
            if i < 5 {
                a.add(*x)
            } else {
                b.add(*x)
            }
            all.add(*x);
        }
        let answers = vec![
            ("a".to_string(), NodeStats::Summary(Some(a))),
            ("b".to_string(), NodeStats::Summary(Some(b))),
        ];
        let an = Analysis::Summary {
            variable: "age".into(),
        };
        let r = pool(&an, &d, &answers, vec![], 1, 5).unwrap();
        match r.value {
            PooledValue::Summary {
                n, mean, variance, ..
            } => {
                assert_eq!(n, 11);
                assert!((mean - all.mean().unwrap()).abs() < 1e-12);
                assert!((variance.unwrap() - all.variance().unwrap()).abs() < 1e-9);
            }
            other => panic!("{other:?}"),
        }
    }
}
