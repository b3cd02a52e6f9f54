//! Queries, cohorts, analyses and the iterations of a fit, both ways.

use super::*;

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
            Analysis::Gbdt { .. } => {
                Kind::Gbdt(super::gbdt::analysis_to_pb(a).expect("a gbdt analysis"))
            }
            Analysis::ModelPerformance { .. } => Kind::ModelPerformance(
                super::performance::analysis_to_pb(a).expect("a model_performance analysis"),
            ),
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
            Kind::Gbdt(g) => super::gbdt::analysis_from_pb(g)?,
            Kind::ModelPerformance(m) => super::performance::analysis_from_pb(m)?,
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
pub(crate) fn bounded<T>(items: Vec<T>, max: usize, what: &str) -> Result<Vec<T>> {
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
            gbdt: i.gbdt.as_ref().map(super::gbdt::round_to_pb),
            model: i.model.as_deref().map(super::performance::artefact_to_pb),
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
            gbdt: i.gbdt.map(super::gbdt::round_from_pb).transpose()?,
            model: i
                .model
                .map(super::performance::artefact_from_pb)
                .transpose()?
                .map(std::sync::Arc::new),
        })
    }
}

impl From<&Query> for pb::Query {
    fn from(q: &Query) -> Self {
        pb::Query {
            cohort: q.cohort.as_ref().map(pb::Cohort::from),
            analysis: Some((&q.analysis).into()),
            by_site: q.by_site,
            rho: q.rho,
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
            rho: q.rho,
        })
    }
}
