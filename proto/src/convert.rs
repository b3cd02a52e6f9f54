//! Wire <-> domain conversions. Everything arriving from a peer is junk
//! until proven otherwise: missing oneofs, unknown enum values and
//! out-of-range sizes are refused here with an `invalid` error.

use plexus_core::error::{Error, ErrorCode, Result};
use plexus_core::models::correlation::{Missing, PairSums};
use plexus_core::models::cox::{CoxStats, Ties};
use plexus_core::models::glm::{Family, GlmStats, Iteration};
use plexus_core::models::survival::{Grid, GroupCounts, GroupStats, MAX_GRID_INTERVALS};
use plexus_core::query::{
    Analysis, AnalysisKind, Cohort, CompareOp, Query, Value, MAX_BINS, MAX_CORRELATION_VARIABLES,
    MAX_COVARIATES, MAX_PROBABILITIES,
};
use plexus_core::stats::{Cell, Moments, NodeStats};
use plexus_core::study::{PurposeSpec, StudyDefinition};
use plexus_core::Purpose;

use crate::v1 as pb;

/// Largest repeated field accepted from a peer (bins, cells, list items).
const MAX_REPEATED: usize = 100_000;
/// Largest vector of model sums accepted from a peer.
const MAX_WIRE_VECTOR: usize = 1 << 16;

fn missing(what: &str) -> Error {
    Error::invalid(format!("{what} is missing from the message"))
}

// ---- errors ----

impl From<ErrorCode> for pb::ErrorCode {
    fn from(c: ErrorCode) -> Self {
        match c {
            ErrorCode::Disclosure => pb::ErrorCode::Disclosure,
            ErrorCode::Data => pb::ErrorCode::Data,
            ErrorCode::Policy => pb::ErrorCode::Policy,
            ErrorCode::Unavailable => pb::ErrorCode::Unavailable,
            ErrorCode::Invalid => pb::ErrorCode::Invalid,
            ErrorCode::Internal => pb::ErrorCode::Internal,
            ErrorCode::NotFound => pb::ErrorCode::NotFound,
        }
    }
}

pub fn code_from_i32(code: i32) -> ErrorCode {
    match pb::ErrorCode::try_from(code).unwrap_or(pb::ErrorCode::Unspecified) {
        pb::ErrorCode::Disclosure => ErrorCode::Disclosure,
        pb::ErrorCode::Data => ErrorCode::Data,
        pb::ErrorCode::Policy => ErrorCode::Policy,
        pb::ErrorCode::Unavailable => ErrorCode::Unavailable,
        pb::ErrorCode::Invalid => ErrorCode::Invalid,
        pb::ErrorCode::NotFound => ErrorCode::NotFound,
        pb::ErrorCode::Internal | pb::ErrorCode::Unspecified => ErrorCode::Internal,
    }
}

impl From<&Error> for pb::Error {
    fn from(e: &Error) -> Self {
        pb::Error {
            code: pb::ErrorCode::from(e.code) as i32,
            message: e.message.clone(),
        }
    }
}

impl From<pb::Error> for Error {
    fn from(e: pb::Error) -> Self {
        Error::new(code_from_i32(e.code), e.message)
    }
}

/// Maps a domain error to a gRPC status; the stable code travels in the
/// `plexus-error-code` metadata so clients need not parse text.
pub fn to_status(e: &Error) -> tonic::Status {
    let code = match e.code {
        ErrorCode::Invalid => tonic::Code::InvalidArgument,
        ErrorCode::Policy => tonic::Code::PermissionDenied,
        ErrorCode::Disclosure => tonic::Code::FailedPrecondition,
        ErrorCode::Data => tonic::Code::FailedPrecondition,
        ErrorCode::Unavailable => tonic::Code::Unavailable,
        ErrorCode::NotFound => tonic::Code::NotFound,
        ErrorCode::Internal => tonic::Code::Internal,
    };
    let mut status = tonic::Status::new(code, e.message.clone());
    if let Ok(v) = e.code.as_str().parse() {
        status.metadata_mut().insert("plexus-error-code", v);
    }
    status
}

/// Recovers the domain error from a status made by [`to_status`].
pub fn from_status(s: &tonic::Status) -> Error {
    let code = s
        .metadata()
        .get("plexus-error-code")
        .and_then(|v| v.to_str().ok())
        .and_then(ErrorCode::parse)
        .unwrap_or(match s.code() {
            tonic::Code::InvalidArgument => ErrorCode::Invalid,
            tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => ErrorCode::Policy,
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => ErrorCode::Unavailable,
            tonic::Code::NotFound => ErrorCode::NotFound,
            _ => ErrorCode::Internal,
        });
    Error::new(code, s.message().to_string())
}

// ---- query ----

impl From<&Value> for pb::Value {
    fn from(v: &Value) -> Self {
        use pb::value::Kind;
        let kind = match v {
            Value::Boolean(b) => Kind::Boolean(*b),
            Value::Integer(i) => Kind::Integer(*i),
            Value::Float(x) => Kind::Float(*x),
            Value::Text(s) => Kind::Text(s.clone()),
        };
        pb::Value { kind: Some(kind) }
    }
}

impl TryFrom<pb::Value> for Value {
    type Error = Error;
    fn try_from(v: pb::Value) -> Result<Self> {
        use pb::value::Kind;
        Ok(match v.kind.ok_or_else(|| missing("value"))? {
            Kind::Boolean(b) => Value::Boolean(b),
            Kind::Integer(i) => Value::Integer(i),
            Kind::Float(x) => Value::Float(x),
            Kind::Text(s) => Value::Text(s),
        })
    }
}

fn op_to_pb(op: CompareOp) -> pb::CompareOp {
    match op {
        CompareOp::Eq => pb::CompareOp::Eq,
        CompareOp::Ne => pb::CompareOp::Ne,
        CompareOp::Lt => pb::CompareOp::Lt,
        CompareOp::Le => pb::CompareOp::Le,
        CompareOp::Gt => pb::CompareOp::Gt,
        CompareOp::Ge => pb::CompareOp::Ge,
    }
}

fn op_from_pb(op: i32) -> Result<CompareOp> {
    Ok(match pb::CompareOp::try_from(op) {
        Ok(pb::CompareOp::Eq) => CompareOp::Eq,
        Ok(pb::CompareOp::Ne) => CompareOp::Ne,
        Ok(pb::CompareOp::Lt) => CompareOp::Lt,
        Ok(pb::CompareOp::Le) => CompareOp::Le,
        Ok(pb::CompareOp::Gt) => CompareOp::Gt,
        Ok(pb::CompareOp::Ge) => CompareOp::Ge,
        _ => {
            return Err(Error::invalid(format!(
                "comparison operator {op} is not one Plexus knows"
            )))
        }
    })
}

impl From<&Cohort> for pb::Cohort {
    fn from(c: &Cohort) -> Self {
        use pb::cohort::Node;
        let list = |items: &[Cohort]| pb::CohortList {
            items: items.iter().map(pb::Cohort::from).collect(),
        };
        let node = match c {
            Cohort::And(items) => Node::And(list(items)),
            Cohort::Or(items) => Node::Or(list(items)),
            Cohort::Not(inner) => Node::Not(Box::new(pb::Cohort::from(inner.as_ref()))),
            Cohort::Compare {
                variable,
                op,
                value,
            } => Node::Compare(pb::Comparison {
                variable: variable.clone(),
                op: op_to_pb(*op) as i32,
                value: Some(value.into()),
            }),
            Cohort::In { variable, values } => Node::In(pb::Membership {
                variable: variable.clone(),
                values: values.iter().map(pb::Value::from).collect(),
            }),
            Cohort::IsNull { variable } => Node::Null(pb::NullTest {
                variable: variable.clone(),
                is_null: true,
            }),
            Cohort::NotNull { variable } => Node::Null(pb::NullTest {
                variable: variable.clone(),
                is_null: false,
            }),
        };
        pb::Cohort { node: Some(node) }
    }
}

fn cohort_from_pb(c: pb::Cohort, depth: usize) -> Result<Cohort> {
    use pb::cohort::Node;
    // Depth is checked again by Query::validate; this bound only keeps a
    // hostile message from recursing deeply before validation.
    if depth > plexus_core::query::MAX_COHORT_DEPTH + 1 {
        return Err(Error::invalid("cohort is nested too deeply"));
    }
    let list = |l: pb::CohortList| -> Result<Vec<Cohort>> {
        if l.items.len() > plexus_core::query::MAX_COHORT_NODES {
            return Err(Error::invalid("cohort has too many conditions"));
        }
        l.items
            .into_iter()
            .map(|i| cohort_from_pb(i, depth + 1))
            .collect()
    };
    Ok(match c.node.ok_or_else(|| missing("cohort condition"))? {
        Node::And(l) => Cohort::And(list(l)?),
        Node::Or(l) => Cohort::Or(list(l)?),
        Node::Not(inner) => Cohort::Not(Box::new(cohort_from_pb(*inner, depth + 1)?)),
        Node::Compare(cmp) => Cohort::Compare {
            op: op_from_pb(cmp.op)?,
            value: cmp
                .value
                .ok_or_else(|| missing("comparison value"))?
                .try_into()?,
            variable: cmp.variable,
        },
        Node::In(m) => {
            if m.values.len() > plexus_core::query::MAX_SET_SIZE {
                return Err(Error::invalid("\"in\" lists too many values"));
            }
            Cohort::In {
                values: m
                    .values
                    .into_iter()
                    .map(Value::try_from)
                    .collect::<Result<_>>()?,
                variable: m.variable,
            }
        }
        Node::Null(n) if n.is_null => Cohort::IsNull {
            variable: n.variable,
        },
        Node::Null(n) => Cohort::NotNull {
            variable: n.variable,
        },
    })
}

impl TryFrom<pb::Cohort> for Cohort {
    type Error = Error;
    fn try_from(c: pb::Cohort) -> Result<Self> {
        cohort_from_pb(c, 0)
    }
}

impl From<&Analysis> for pb::Analysis {
    fn from(a: &Analysis) -> Self {
        use pb::analysis::Kind;
        let kind = match a {
            Analysis::Count {} => Kind::Count(pb::CountAnalysis {}),
            Analysis::Summary { variable } => Kind::Summary(pb::SummaryAnalysis {
                variable: variable.clone(),
            }),
            Analysis::Histogram { variable, edges } => Kind::Histogram(pb::HistogramAnalysis {
                variable: variable.clone(),
                edges: edges.clone(),
            }),
            Analysis::Table { row, column } => Kind::Table(pb::TableAnalysis {
                row: row.clone(),
                column: column.clone(),
            }),
            Analysis::Glm {
                family,
                outcome,
                covariates,
                intercept,
                tolerance,
                max_iterations,
            } => Kind::Glm(pb::GlmAnalysis {
                family: match family {
                    Family::Gaussian => pb::GlmFamily::Gaussian,
                    Family::Binomial => pb::GlmFamily::Binomial,
                    Family::Poisson => pb::GlmFamily::Poisson,
                } as i32,
                outcome: outcome.clone(),
                covariates: covariates.clone(),
                no_intercept: !intercept,
                fit: Some(fit_to_pb(*tolerance, *max_iterations)),
            }),
            Analysis::Cox {
                time,
                event,
                covariates,
                ties,
                tolerance,
                max_iterations,
            } => Kind::Cox(pb::CoxAnalysis {
                time: time.clone(),
                event: event.clone(),
                covariates: covariates.clone(),
                ties: match ties {
                    Ties::Efron => pb::CoxTies::Efron,
                    Ties::Breslow => pb::CoxTies::Breslow,
                } as i32,
                fit: Some(fit_to_pb(*tolerance, *max_iterations)),
            }),
            Analysis::KaplanMeier {
                time,
                event,
                group,
                grid,
            } => Kind::KaplanMeier(pb::KaplanMeierAnalysis {
                time: time.clone(),
                event: event.clone(),
                group: group.clone().unwrap_or_default(),
                grid: Some(match grid {
                    Grid::Points(points) => pb::TimeGrid {
                        points: points.clone(),
                        ..Default::default()
                    },
                    Grid::Range { from, to, step } => pb::TimeGrid {
                        points: vec![],
                        from: *from,
                        to: *to,
                        step: *step,
                    },
                }),
            }),
            Analysis::Correlation { variables, missing } => {
                Kind::Correlation(pb::CorrelationAnalysis {
                    variables: variables.clone(),
                    missing: match missing {
                        Missing::CompleteCases => pb::MissingValues::CompleteCases,
                        Missing::Pairwise => pb::MissingValues::Pairwise,
                    } as i32,
                })
            }
            Analysis::Quantiles {
                variable,
                edges,
                probabilities,
            } => Kind::Quantiles(pb::QuantilesAnalysis {
                variable: variable.clone(),
                edges: edges.clone(),
                probabilities: probabilities.clone(),
            }),
            Analysis::TwoByTwo { exposure, outcome } => Kind::TwoByTwo(pb::TwoByTwoAnalysis {
                exposure: exposure.clone(),
                outcome: outcome.clone(),
            }),
        };
        pb::Analysis { kind: Some(kind) }
    }
}

impl TryFrom<pb::Analysis> for Analysis {
    type Error = Error;
    fn try_from(a: pb::Analysis) -> Result<Self> {
        use pb::analysis::Kind;
        Ok(match a.kind.ok_or_else(|| missing("analysis"))? {
            Kind::Count(_) => Analysis::Count {},
            Kind::Summary(s) => Analysis::Summary {
                variable: s.variable,
            },
            Kind::Histogram(h) => {
                if h.edges.len() > plexus_core::query::MAX_BINS + 1 {
                    return Err(Error::invalid("histogram has too many bin edges"));
                }
                Analysis::Histogram {
                    variable: h.variable,
                    edges: h.edges,
                }
            }
            Kind::Table(t) => Analysis::Table {
                row: t.row,
                column: t.column,
            },
            Kind::Glm(g) => {
                let (tolerance, max_iterations) = fit_from_pb(g.fit);
                Analysis::Glm {
                    family: match pb::GlmFamily::try_from(g.family) {
                        Ok(pb::GlmFamily::Gaussian) => Family::Gaussian,
                        Ok(pb::GlmFamily::Binomial) => Family::Binomial,
                        Ok(pb::GlmFamily::Poisson) => Family::Poisson,
                        _ => return Err(Error::invalid("the GLM names no known family")),
                    },
                    outcome: g.outcome,
                    covariates: bounded(g.covariates, MAX_COVARIATES, "covariates")?,
                    intercept: !g.no_intercept,
                    tolerance,
                    max_iterations,
                }
            }
            Kind::Cox(c) => {
                let (tolerance, max_iterations) = fit_from_pb(c.fit);
                Analysis::Cox {
                    time: c.time,
                    event: c.event,
                    covariates: bounded(c.covariates, MAX_COVARIATES, "covariates")?,
                    ties: match pb::CoxTies::try_from(c.ties) {
                        Ok(pb::CoxTies::Breslow) => Ties::Breslow,
                        Ok(pb::CoxTies::Efron | pb::CoxTies::Unspecified) => Ties::Efron,
                        Err(_) => return Err(Error::invalid("unknown Cox ties method")),
                    },
                    tolerance,
                    max_iterations,
                }
            }
            Kind::KaplanMeier(k) => {
                let g = k.grid.ok_or_else(|| missing("survival grid"))?;
                let grid = if g.points.is_empty() {
                    Grid::Range {
                        from: g.from,
                        to: g.to,
                        step: g.step,
                    }
                } else {
                    Grid::Points(bounded(g.points, MAX_GRID_INTERVALS + 1, "grid points")?)
                };
                Analysis::KaplanMeier {
                    time: k.time,
                    event: k.event,
                    group: (!k.group.is_empty()).then_some(k.group),
                    grid,
                }
            }
            Kind::Correlation(c) => Analysis::Correlation {
                variables: bounded(c.variables, MAX_CORRELATION_VARIABLES, "variables")?,
                missing: match pb::MissingValues::try_from(c.missing) {
                    Ok(pb::MissingValues::Pairwise) => Missing::Pairwise,
                    Ok(_) => Missing::CompleteCases,
                    Err(_) => return Err(Error::invalid("unknown missing-values rule")),
                },
            },
            Kind::Quantiles(q) => Analysis::Quantiles {
                variable: q.variable,
                edges: bounded(q.edges, MAX_BINS + 1, "bin edges")?,
                probabilities: bounded(q.probabilities, MAX_PROBABILITIES, "probabilities")?,
            },
            Kind::TwoByTwo(t) => Analysis::TwoByTwo {
                exposure: t.exposure,
                outcome: t.outcome,
            },
        })
    }
}

fn fit_to_pb(tolerance: Option<f64>, max_iterations: Option<u32>) -> pb::FitSettings {
    pb::FitSettings {
        tolerance: tolerance.unwrap_or(0.0),
        max_iterations: max_iterations.unwrap_or(0),
    }
}

fn fit_from_pb(f: Option<pb::FitSettings>) -> (Option<f64>, Option<u32>) {
    let f = f.unwrap_or_default();
    (
        (f.tolerance != 0.0).then_some(f.tolerance),
        (f.max_iterations != 0).then_some(f.max_iterations),
    )
}

/// Refuses a list longer than any valid message holds, before anything
/// else looks at it.
fn bounded<T>(items: Vec<T>, max: usize, what: &str) -> Result<Vec<T>> {
    if items.len() > max {
        return Err(Error::invalid(format!(
            "the message carries {} {what}, more than the {max} allowed",
            items.len()
        )));
    }
    Ok(items)
}

impl From<&Iteration> for pb::Iteration {
    fn from(i: &Iteration) -> Self {
        pb::Iteration {
            round: i.round,
            coefficients: i.coefficients.clone(),
            null_mean: i.null_mean,
        }
    }
}

impl TryFrom<pb::Iteration> for Iteration {
    type Error = Error;
    fn try_from(i: pb::Iteration) -> Result<Self> {
        let coefficients = bounded(i.coefficients, MAX_WIRE_VECTOR, "coefficients")?;
        if coefficients
            .iter()
            .chain(&i.null_mean)
            .any(|v| !v.is_finite())
        {
            return Err(Error::invalid(
                "the iteration carries a value that is not finite",
            ));
        }
        if i.round == 0 {
            return Err(Error::invalid("iteration rounds start at 1"));
        }
        Ok(Iteration {
            round: i.round,
            coefficients,
            null_mean: i.null_mean,
        })
    }
}

impl From<&Query> for pb::Query {
    fn from(q: &Query) -> Self {
        pb::Query {
            cohort: q.cohort.as_ref().map(pb::Cohort::from),
            analysis: Some((&q.analysis).into()),
            by_site: q.by_site,
        }
    }
}

impl TryFrom<pb::Query> for Query {
    type Error = Error;
    fn try_from(q: pb::Query) -> Result<Self> {
        Ok(Query {
            cohort: q.cohort.map(Cohort::try_from).transpose()?,
            analysis: q.analysis.ok_or_else(|| missing("analysis"))?.try_into()?,
            by_site: q.by_site,
        })
    }
}

// ---- node statistics ----

fn cell_to_pb(c: Cell) -> pb::CountCell {
    use pb::count_cell::Value as V;
    pb::CountCell {
        value: Some(match c {
            Cell::Count(n) => V::Count(n),
            Cell::Suppressed => V::Suppressed(true),
        }),
    }
}

fn cell_from_pb(c: Option<pb::CountCell>) -> Result<Cell> {
    use pb::count_cell::Value as V;
    match c.and_then(|c| c.value) {
        Some(V::Count(n)) => Ok(Cell::Count(n)),
        Some(V::Suppressed(true)) => Ok(Cell::Suppressed),
        Some(V::Suppressed(false)) | None => Err(missing("count cell")),
    }
}

fn cells_from_pb(cells: Vec<pb::CountCell>) -> Result<Vec<Cell>> {
    if cells.len() > MAX_REPEATED {
        return Err(Error::invalid("too many cells in node statistics"));
    }
    cells.into_iter().map(|c| cell_from_pb(Some(c))).collect()
}

impl From<&NodeStats> for pb::NodeStats {
    fn from(s: &NodeStats) -> Self {
        use pb::node_stats::Kind;
        let kind = match s {
            NodeStats::Count(c) => Kind::Count(pb::CountStats {
                n: Some(cell_to_pb(*c)),
            }),
            NodeStats::Summary(m) => Kind::Summary(pb::MomentStats {
                value: Some(match m {
                    Some(m) => pb::moment_stats::Value::Moments(pb::Moments {
                        n: m.n,
                        sum: m.sum,
                        sum_squares: m.sum_squares,
                    }),
                    None => pb::moment_stats::Value::Suppressed(true),
                }),
            }),
            NodeStats::Histogram { bins, below, above } => Kind::Histogram(pb::HistogramStats {
                bins: bins.iter().map(|c| cell_to_pb(*c)).collect(),
                below: Some(cell_to_pb(*below)),
                above: Some(cell_to_pb(*above)),
            }),
            NodeStats::Table {
                rows,
                columns,
                cells,
            } => Kind::Table(pb::TableStats {
                rows: *rows,
                columns: *columns,
                cells: cells.iter().map(|c| cell_to_pb(*c)).collect(),
            }),
            NodeStats::Glm(g) => Kind::Glm(pb::GlmStats {
                n: g.n,
                xtwx: g.xtwx.clone(),
                xtwz: g.xtwz.clone(),
                deviance: g.deviance,
                sum_y: g.sum_y,
                null_deviance: g.null_deviance,
            }),
            NodeStats::Cox(c) => Kind::Cox(pb::CoxStats {
                n: c.n,
                events: c.events,
                loglik: c.loglik,
                gradient: c.gradient.clone(),
                information: c.information.clone(),
            }),
            NodeStats::Survival(groups) => Kind::Survival(pb::SurvivalStats {
                groups: groups
                    .iter()
                    .map(|g| pb::SurvivalGroup {
                        value: Some(match g {
                            GroupStats::Released(c) => {
                                pb::survival_group::Value::Counts(pb::SurvivalCounts {
                                    at_risk: c.at_risk,
                                    events: c.events.clone(),
                                    censored: c.censored.clone(),
                                })
                            }
                            GroupStats::Suppressed => pb::survival_group::Value::Suppressed(true),
                        }),
                    })
                    .collect(),
            }),
            NodeStats::Pairs(pairs) => Kind::Pairs(pb::PairStats {
                pairs: pairs
                    .iter()
                    .map(|p| pb::PairCell {
                        value: Some(match p {
                            Some(p) => pb::pair_cell::Value::Sums(pb::PairSums {
                                n: p.n,
                                sum_x: p.sum_x,
                                sum_y: p.sum_y,
                                sum_xx: p.sum_xx,
                                sum_yy: p.sum_yy,
                                sum_xy: p.sum_xy,
                            }),
                            None => pb::pair_cell::Value::Suppressed(true),
                        }),
                    })
                    .collect(),
            }),
        };
        pb::NodeStats { kind: Some(kind) }
    }
}

impl TryFrom<pb::NodeStats> for NodeStats {
    type Error = Error;
    fn try_from(s: pb::NodeStats) -> Result<Self> {
        use pb::node_stats::Kind;
        Ok(match s.kind.ok_or_else(|| missing("statistics"))? {
            Kind::Count(c) => NodeStats::Count(cell_from_pb(c.n)?),
            Kind::Summary(m) => NodeStats::Summary(match m.value {
                Some(pb::moment_stats::Value::Moments(m)) => Some(Moments {
                    n: m.n,
                    sum: m.sum,
                    sum_squares: m.sum_squares,
                }),
                Some(pb::moment_stats::Value::Suppressed(true)) => None,
                _ => return Err(missing("moments")),
            }),
            Kind::Histogram(h) => NodeStats::Histogram {
                bins: cells_from_pb(h.bins)?,
                below: cell_from_pb(h.below)?,
                above: cell_from_pb(h.above)?,
            },
            Kind::Table(t) => NodeStats::Table {
                rows: t.rows,
                columns: t.columns,
                cells: cells_from_pb(t.cells)?,
            },
            Kind::Glm(g) => NodeStats::Glm(GlmStats {
                n: g.n,
                xtwx: bounded(g.xtwx, MAX_WIRE_VECTOR, "matrix entries")?,
                xtwz: bounded(g.xtwz, MAX_WIRE_VECTOR, "vector entries")?,
                deviance: g.deviance,
                sum_y: g.sum_y,
                null_deviance: g.null_deviance,
            }),
            Kind::Cox(c) => NodeStats::Cox(CoxStats {
                n: c.n,
                events: c.events,
                loglik: c.loglik,
                gradient: bounded(c.gradient, MAX_WIRE_VECTOR, "vector entries")?,
                information: bounded(c.information, MAX_WIRE_VECTOR, "matrix entries")?,
            }),
            Kind::Survival(s) => NodeStats::Survival(
                bounded(s.groups, MAX_REPEATED, "survival groups")?
                    .into_iter()
                    .map(|g| match g.value {
                        Some(pb::survival_group::Value::Counts(c)) => {
                            Ok(GroupStats::Released(GroupCounts {
                                at_risk: c.at_risk,
                                events: bounded(c.events, MAX_GRID_INTERVALS, "intervals")?,
                                censored: bounded(c.censored, MAX_GRID_INTERVALS, "intervals")?,
                            }))
                        }
                        Some(pb::survival_group::Value::Suppressed(true)) => {
                            Ok(GroupStats::Suppressed)
                        }
                        _ => Err(missing("survival group")),
                    })
                    .collect::<Result<_>>()?,
            ),
            Kind::Pairs(p) => NodeStats::Pairs(
                bounded(p.pairs, MAX_REPEATED, "pairs")?
                    .into_iter()
                    .map(|p| match p.value {
                        Some(pb::pair_cell::Value::Sums(s)) => Ok(Some(PairSums {
                            n: s.n,
                            sum_x: s.sum_x,
                            sum_y: s.sum_y,
                            sum_xx: s.sum_xx,
                            sum_yy: s.sum_yy,
                            sum_xy: s.sum_xy,
                        })),
                        Some(pb::pair_cell::Value::Suppressed(true)) => Ok(None),
                        _ => Err(missing("pair sums")),
                    })
                    .collect::<Result<_>>()?,
            ),
        })
    }
}

// ---- studies ----

impl From<&Purpose> for pb::Purpose {
    fn from(p: &Purpose) -> Self {
        pb::Purpose {
            code: p.code_str().to_string(),
            disease: p.disease().to_string(),
            modifiers: p.modifiers.iter().cloned().collect(),
        }
    }
}

impl TryFrom<pb::Purpose> for Purpose {
    type Error = Error;
    fn try_from(p: pb::Purpose) -> Result<Self> {
        Purpose::from_parts(&p.code, &p.disease, &p.modifiers)
    }
}

/// Wire form of a study definition, with its registration time.
pub fn study_to_pb(s: &StudyDefinition, registered_unix_ms: i64) -> pb::Study {
    pb::Study {
        id: s.id.clone(),
        title: s.title.clone(),
        purpose: Some(pb::Purpose {
            code: s.purpose.code.clone(),
            disease: s.purpose.disease.clone(),
            modifiers: s.purpose.modifiers.clone(),
        }),
        variables: s.variables.clone(),
        analyses: s.analyses.iter().map(|a| a.as_str().to_string()).collect(),
        researchers: s.researchers.clone(),
        nodes: s.nodes.clone(),
        min_nodes: s.min_nodes,
        registered_unix_ms,
        continue_without_lost_nodes: s.continue_without_lost_nodes,
    }
}

impl TryFrom<pb::Study> for StudyDefinition {
    type Error = Error;
    fn try_from(s: pb::Study) -> Result<Self> {
        let purpose = s.purpose.ok_or_else(|| missing("study purpose"))?;
        Ok(StudyDefinition {
            id: s.id,
            title: s.title,
            variables: s.variables,
            analyses: s
                .analyses
                .iter()
                .map(|a| AnalysisKind::parse(a))
                .collect::<Result<_>>()?,
            researchers: s.researchers,
            nodes: s.nodes,
            min_nodes: s.min_nodes,
            continue_without_lost_nodes: s.continue_without_lost_nodes,
            purpose: PurposeSpec {
                code: purpose.code,
                disease: purpose.disease,
                modifiers: purpose.modifiers,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_round_trips() {
        let q = Query::from_json(
            r#"{"cohort": {"or": [
                   {"compare": {"variable": "age", "op": ">=", "value": 65}},
                   {"not": {"in": {"variable": "smoking", "values": ["former", "current"]}}},
                   {"is_null": {"variable": "bmi"}},
                   {"not_null": {"variable": "sbp"}},
                   {"compare": {"variable": "diabetes", "op": "=", "value": true}},
                   {"compare": {"variable": "bmi", "op": "<", "value": 30.5}}
                ]},
                "analysis": {"histogram": {"variable": "sbp", "edges": [100, 120, 140]}}}"#,
        )
        .unwrap();
        let wire = pb::Query::from(&q);
        assert_eq!(Query::try_from(wire).unwrap(), q);
    }

    #[test]
    fn junk_is_refused() {
        assert!(Query::try_from(pb::Query::default()).is_err());
        let bad_op = pb::Cohort {
            node: Some(pb::cohort::Node::Compare(pb::Comparison {
                variable: "age".into(),
                op: 99,
                value: Some(pb::Value {
                    kind: Some(pb::value::Kind::Integer(1)),
                }),
            })),
        };
        assert!(Cohort::try_from(bad_op).is_err());
        let bad_cell = pb::NodeStats {
            kind: Some(pb::node_stats::Kind::Count(pb::CountStats {
                n: Some(pb::CountCell {
                    value: Some(pb::count_cell::Value::Suppressed(false)),
                }),
            })),
        };
        assert!(NodeStats::try_from(bad_cell).is_err());
    }

    #[test]
    fn stats_round_trip() {
        let s = NodeStats::Table {
            rows: 2,
            columns: 2,
            cells: vec![
                Cell::Count(7),
                Cell::Suppressed,
                Cell::Count(9),
                Cell::Count(12),
            ],
        };
        assert_eq!(NodeStats::try_from(pb::NodeStats::from(&s)).unwrap(), s);
        let e = Error::disclosure("too few");
        let back = from_status(&to_status(&e));
        assert_eq!(back, e);
    }

    #[test]
    fn every_analysis_round_trips() {
        for json in [
            r#"{"analysis": {"glm": {"family": "poisson", "outcome": "age", "covariates": ["sex"],
                "intercept": false, "tolerance": 1e-6, "max_iterations": 9}}, "by_site": true}"#,
            r#"{"analysis": {"glm": {"family": "binomial", "outcome": "death", "covariates": []}}}"#,
            r#"{"analysis": {"cox": {"time": "followup_days", "event": "death",
                "covariates": ["age"], "ties": "breslow"}}}"#,
            r#"{"analysis": {"kaplan_meier": {"time": "followup_days", "event": "death",
                "group": "sex", "grid": {"from": 0, "to": 10, "step": 2}}}}"#,
            r#"{"analysis": {"kaplan_meier": {"time": "followup_days", "event": "death",
                "grid": [0, 1, 5]}}}"#,
            r#"{"analysis": {"correlation": {"variables": ["age", "bmi"], "missing": "pairwise"}}}"#,
            r#"{"analysis": {"quantiles": {"variable": "age", "edges": [40, 60, 100]}}}"#,
            r#"{"analysis": {"two_by_two": {"exposure": "diabetes", "outcome": "death"}}}"#,
        ] {
            let q = Query::from_json(json).unwrap();
            assert_eq!(Query::try_from(pb::Query::from(&q)).unwrap(), q, "{json}");
        }
    }

    #[test]
    fn model_statistics_round_trip_and_junk_is_refused() {
        let all = [
            NodeStats::Glm(GlmStats {
                n: 10,
                xtwx: vec![1.0, 2.0, 3.0],
                xtwz: vec![4.0, 5.0],
                deviance: 6.0,
                sum_y: 7.0,
                null_deviance: 8.0,
            }),
            NodeStats::Cox(CoxStats {
                n: 10,
                events: 4,
                loglik: -3.5,
                gradient: vec![0.1],
                information: vec![2.0],
            }),
            NodeStats::Survival(vec![
                GroupStats::Released(GroupCounts {
                    at_risk: 9,
                    events: vec![1, 2],
                    censored: vec![3, 3],
                }),
                GroupStats::Suppressed,
            ]),
            NodeStats::Pairs(vec![
                Some(PairSums {
                    n: 6,
                    sum_x: 1.0,
                    sum_y: 2.0,
                    sum_xx: 3.0,
                    sum_yy: 4.0,
                    sum_xy: 2.5,
                }),
                None,
            ]),
        ];
        for s in all {
            assert_eq!(NodeStats::try_from(pb::NodeStats::from(&s)).unwrap(), s);
        }
        let empty_group = pb::NodeStats {
            kind: Some(pb::node_stats::Kind::Survival(pb::SurvivalStats {
                groups: vec![pb::SurvivalGroup { value: None }],
            })),
        };
        assert!(NodeStats::try_from(empty_group).is_err());
        let huge = pb::NodeStats {
            kind: Some(pb::node_stats::Kind::Glm(pb::GlmStats {
                xtwx: vec![0.0; MAX_WIRE_VECTOR + 1],
                ..Default::default()
            })),
        };
        assert!(NodeStats::try_from(huge).is_err());
        let nan = pb::Iteration {
            round: 2,
            coefficients: vec![f64::NAN],
            null_mean: None,
        };
        assert!(Iteration::try_from(nan).is_err());
        let zero = pb::Iteration {
            round: 0,
            ..Default::default()
        };
        assert!(Iteration::try_from(zero).is_err());
    }
}
