//! Every string a query carries (variable names, category and date
//! literals) checked against [`crate::text::check`] before anything else
//! looks at the query, so no later error echoes a control character back
//! to the researcher or into the audit log. Fields are named by their path
//! in the query's JSON form, e.g. `cohort.and[1].in.values[0]`.

use super::*;
use crate::text::check;

pub(super) fn check_query(q: &Query) -> Result<()> {
    if let Some(c) = &q.cohort {
        cohort(c, "cohort")?;
    }
    analysis(&q.analysis)
}

fn value(v: &Value, path: &str) -> Result<()> {
    match v {
        Value::Text(s) => check(path, s),
        _ => Ok(()),
    }
}

fn cohort(c: &Cohort, path: &str) -> Result<()> {
    match c {
        Cohort::And(items) | Cohort::Or(items) => {
            let op = if matches!(c, Cohort::And(_)) {
                "and"
            } else {
                "or"
            };
            for (i, item) in items.iter().enumerate() {
                cohort(item, &format!("{path}.{op}[{i}]"))?;
            }
            Ok(())
        }
        Cohort::Not(inner) => cohort(inner, &format!("{path}.not")),
        Cohort::Compare {
            variable, value: v, ..
        } => {
            check(&format!("{path}.compare.variable"), variable)?;
            value(v, &format!("{path}.compare.value"))
        }
        Cohort::In { variable, values } => {
            check(&format!("{path}.in.variable"), variable)?;
            for (i, v) in values.iter().enumerate() {
                value(v, &format!("{path}.in.values[{i}]"))?;
            }
            Ok(())
        }
        Cohort::IsNull { variable } => check(&format!("{path}.is_null.variable"), variable),
        Cohort::NotNull { variable } => check(&format!("{path}.not_null.variable"), variable),
    }
}

fn analysis(a: &Analysis) -> Result<()> {
    let kind = a.kind();
    let field = |name: &str| format!("analysis.{kind}.{name}");
    let list = |name: &str, items: &[String]| -> Result<()> {
        crate::text::check_all(&field(name), items)
    };
    match a {
        Analysis::Count {} => Ok(()),
        Analysis::Summary { variable }
        | Analysis::Histogram { variable, .. }
        | Analysis::Quantiles { variable, .. } => check(&field("variable"), variable),
        Analysis::Table { row, column } => {
            check(&field("row"), row)?;
            check(&field("column"), column)
        }
        Analysis::TwoByTwo { exposure, outcome } => {
            check(&field("exposure"), exposure)?;
            check(&field("outcome"), outcome)
        }
        Analysis::Glm {
            outcome,
            covariates,
            ..
        } => {
            check(&field("outcome"), outcome)?;
            list("covariates", covariates)
        }
        Analysis::Gbdt {
            outcome,
            covariates,
            edges,
            ..
        } => {
            check(&field("outcome"), outcome)?;
            list("covariates", covariates)?;
            edges.keys().try_for_each(|k| check(&field("edges"), k))
        }
        Analysis::Cox {
            time,
            event,
            covariates,
            ..
        } => {
            check(&field("time"), time)?;
            check(&field("event"), event)?;
            list("covariates", covariates)
        }
        Analysis::KaplanMeier {
            time, event, group, ..
        } => {
            check(&field("time"), time)?;
            check(&field("event"), event)?;
            group
                .as_deref()
                .map_or(Ok(()), |g| check(&field("group"), g))
        }
        Analysis::Correlation { variables, .. } => list("variables", variables),
        Analysis::ModelPerformance {
            model,
            model_hash,
            inputs,
            outcome,
            subgroups,
            ..
        } => {
            check(&field("model"), model)?;
            check(&field("model_hash"), model_hash)?;
            list("inputs", inputs)?;
            check(&field("outcome"), outcome)?;
            list("subgroups", subgroups)
        }
    }
}
