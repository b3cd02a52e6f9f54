//! Query trees written back as text, so the CLI and clients can show what
//! ran in the notation researchers type. Parsing the text again gives the
//! same tree (up to `and`/`or` lists of one item, which have no text of
//! their own).

use std::fmt::{self, Display, Write};

use super::lex::{name_text, quote};
use crate::query::{Analysis, Cohort, CompareOp, Value};

/// The cohort in R's notation: `age >= 65 & !is.na(bmi)`.
pub fn cohort_text(cohort: &Cohort) -> String {
    cohort.to_string()
}

/// The formula of a `glm`, `cox` or `kaplan_meier` analysis; `None` for
/// the analyses that have none.
pub fn formula_text(analysis: &Analysis) -> Option<String> {
    let right = |covariates: &[String]| -> Vec<String> {
        covariates.iter().map(|c| name_text(c)).collect()
    };
    let surv = |time: &str, event: &str| format!("Surv({}, {})", name_text(time), name_text(event));
    match analysis {
        Analysis::Glm {
            outcome,
            covariates,
            intercept,
            ..
        } => {
            let terms = right(covariates).join(" + ");
            let text = match (terms.is_empty(), intercept) {
                (true, true) => "1".to_string(),
                (true, false) => "0".to_string(),
                (false, true) => terms,
                (false, false) => format!("{terms} - 1"),
            };
            Some(format!("{} ~ {text}", name_text(outcome)))
        }
        Analysis::Cox {
            time,
            event,
            covariates,
            ..
        } => Some(format!(
            "{} ~ {}",
            surv(time, event),
            if covariates.is_empty() {
                "1".into()
            } else {
                right(covariates).join(" + ")
            }
        )),
        Analysis::KaplanMeier {
            time, event, group, ..
        } => Some(format!(
            "{} ~ {}",
            surv(time, event),
            group.as_deref().map_or("1".into(), name_text)
        )),
        _ => None,
    }
}

/// The cohort an `and` or `or` of one item stands for: the item.
fn effective(c: &Cohort) -> &Cohort {
    match c {
        Cohort::And(items) | Cohort::Or(items) if items.len() == 1 => effective(&items[0]),
        other => other,
    }
}

impl Display for Cohort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match effective(self) {
            Cohort::And(items) => list(f, items, " & ", |c| {
                matches!(effective(c), Cohort::And(_) | Cohort::Or(_))
            }),
            Cohort::Or(items) => list(f, items, " | ", |c| matches!(effective(c), Cohort::Or(_))),
            Cohort::Not(inner) => match effective(inner) {
                Cohort::IsNull { .. } | Cohort::NotNull { .. } | Cohort::Not(_) => {
                    write!(f, "!{inner}")
                }
                _ => write!(f, "!({inner})"),
            },
            Cohort::Compare {
                variable,
                op,
                value,
            } => {
                let op = match op {
                    CompareOp::Eq => "==",
                    other => other.as_str(),
                };
                write!(f, "{} {op} {}", name_text(variable), literal(value))
            }
            Cohort::In { variable, values } => {
                let values: Vec<String> = values.iter().map(literal).collect();
                write!(f, "{} %in% c({})", name_text(variable), values.join(", "))
            }
            Cohort::IsNull { variable } => write!(f, "is.na({})", name_text(variable)),
            Cohort::NotNull { variable } => write!(f, "!is.na({})", name_text(variable)),
        }
    }
}

/// Items joined by `sep`, parenthesising those `wrap` says would otherwise
/// merge into the list or bind differently.
fn list(
    f: &mut fmt::Formatter<'_>,
    items: &[Cohort],
    sep: &str,
    wrap: impl Fn(&Cohort) -> bool,
) -> fmt::Result {
    if items.is_empty() {
        // No text selects nobody or everybody; this tree is refused by
        // validation anyway.
        return f.write_str(if sep == " & " { "TRUE" } else { "FALSE" });
    }
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(sep)?;
        }
        if wrap(item) {
            write!(f, "({item})")?;
        } else {
            write!(f, "{item}")?;
        }
    }
    Ok(())
}

/// A literal as the parser reads it back into the same [`Value`]: floats
/// always carry a point or an exponent.
fn literal(value: &Value) -> String {
    match value {
        Value::Boolean(true) => "TRUE".into(),
        Value::Boolean(false) => "FALSE".into(),
        Value::Integer(i) => i.to_string(),
        Value::Float(x) => {
            let mut s = String::new();
            write!(s, "{x:?}").expect("writing to a string");
            s
        }
        Value::Text(s) => quote(s),
    }
}
