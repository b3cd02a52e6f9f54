//! A row-at-a-time evaluator of cohorts with SQL's three-valued logic.
//! Nodes compile cohorts to DataFusion expressions; this evaluator is the
//! independent reference the tests hold them to, and must agree with SQL:
//! a condition on a missing value is unknown, and unknown rows are dropped.

use chrono::NaiveDate;

use crate::query::{parse_date, Cohort, CompareOp, Value};

/// One value of one patient, as the reference evaluator sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum Datum {
    Null,
    Integer(i64),
    Float(f64),
    Boolean(bool),
    Text(String),
    Date(NaiveDate),
}

/// `Some(true)` when the row is in the cohort, `Some(false)` when not,
/// `None` when unknown (treated as not in the cohort).
pub fn matches(cohort: &Cohort, row: &dyn Fn(&str) -> Datum) -> Option<bool> {
    match cohort {
        Cohort::And(items) => {
            let mut unknown = false;
            for c in items {
                match matches(c, row) {
                    Some(false) => return Some(false),
                    None => unknown = true,
                    Some(true) => {}
                }
            }
            if unknown {
                None
            } else {
                Some(true)
            }
        }
        Cohort::Or(items) => {
            let mut unknown = false;
            for c in items {
                match matches(c, row) {
                    Some(true) => return Some(true),
                    None => unknown = true,
                    Some(false) => {}
                }
            }
            if unknown {
                None
            } else {
                Some(false)
            }
        }
        Cohort::Not(c) => matches(c, row).map(|b| !b),
        Cohort::Compare {
            variable,
            op,
            value,
        } => compare(&row(variable), value).map(|ord| match op {
            CompareOp::Eq => ord.is_eq(),
            CompareOp::Ne => ord.is_ne(),
            CompareOp::Lt => ord.is_lt(),
            CompareOp::Le => ord.is_le(),
            CompareOp::Gt => ord.is_gt(),
            CompareOp::Ge => ord.is_ge(),
        }),
        Cohort::In { variable, values } => {
            let d = row(variable);
            if d == Datum::Null {
                return None;
            }
            Some(
                values
                    .iter()
                    .any(|v| compare(&d, v) == Some(std::cmp::Ordering::Equal)),
            )
        }
        Cohort::IsNull { variable } => Some(row(variable) == Datum::Null),
        Cohort::NotNull { variable } => Some(row(variable) != Datum::Null),
    }
}

fn compare(d: &Datum, v: &Value) -> Option<std::cmp::Ordering> {
    let num = |v: &Value| match v {
        Value::Integer(i) => Some(*i as f64),
        Value::Float(x) => Some(*x),
        _ => None,
    };
    match d {
        Datum::Null => None,
        Datum::Integer(i) => (*i as f64).partial_cmp(&num(v)?),
        Datum::Float(x) => x.partial_cmp(&num(v)?),
        Datum::Boolean(b) => match v {
            Value::Boolean(w) => Some(b.cmp(w)),
            _ => None,
        },
        Datum::Text(s) => match v {
            Value::Text(w) => Some(s.as_str().cmp(w.as_str())),
            _ => None,
        },
        Datum::Date(a) => match v {
            Value::Text(w) => Some(a.cmp(&parse_date(w)?)),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_valued_logic() {
        let age_null = |_: &str| Datum::Null;
        let gt = Cohort::Compare {
            variable: "age".into(),
            op: CompareOp::Gt,
            value: Value::Integer(60),
        };
        assert_eq!(matches(&gt, &age_null), None);
        assert_eq!(matches(&Cohort::Not(Box::new(gt.clone())), &age_null), None);
        let or = Cohort::Or(vec![
            gt.clone(),
            Cohort::IsNull {
                variable: "age".into(),
            },
        ]);
        assert_eq!(matches(&or, &age_null), Some(true));
        let old = |_: &str| Datum::Integer(70);
        assert_eq!(matches(&gt, &old), Some(true));
    }
}
