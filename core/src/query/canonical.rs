//! One written form for every phrasing of the same cohort, so a repeated
//! question can be recognised (and answered from the cache without
//! spending budget) however it was written. The canonical form is derived
//! from the query's text alone, never from the patients it selects, so its
//! hash says nothing about whether two different cohorts hold the same
//! people.
//!
//! Every rewrite keeps SQL's three-valued logic: a canonical cohort selects
//! exactly the patients the original does, missing values included.

use super::*;
use crate::dictionary::VarType;

impl Query {
    /// The query in canonical form. The query must have passed
    /// [`Query::validate`] against `dict`.
    pub fn canonical(&self, dict: &Dictionary) -> Result<Query> {
        Ok(Query {
            cohort: self
                .cohort
                .as_ref()
                .map(|c| canonical(c, dict, false))
                .transpose()?,
            analysis: self.analysis.clone(),
            by_site: self.by_site,
            rho: self.rho,
        })
    }

    /// Hash of the canonical form: equal for equivalent phrasings.
    pub fn canonical_hash(&self, dict: &Dictionary) -> Result<String> {
        Ok(self.canonical(dict)?.hash())
    }
}

fn key(c: &Cohort) -> String {
    serde_json::to_string(c).expect("a cohort serialises")
}

/// Negation normal form with sorted, flattened, de-duplicated branches and
/// comparisons in one spelling. `negate` carries a `not` down the tree
/// (De Morgan holds in Kleene's three-valued logic).
fn canonical(c: &Cohort, dict: &Dictionary, negate: bool) -> Result<Cohort> {
    Ok(match c {
        Cohort::Not(inner) => canonical(inner, dict, !negate)?,
        Cohort::And(items) | Cohort::Or(items) => {
            let is_and = matches!(c, Cohort::And(_)) != negate;
            let mut flat: Vec<Cohort> = Vec::new();
            for item in items {
                match canonical(item, dict, negate)? {
                    Cohort::And(inner) if is_and => flat.extend(inner),
                    Cohort::Or(inner) if !is_and => flat.extend(inner),
                    other => flat.push(other),
                }
            }
            flat.sort_by_key(key);
            flat.dedup();
            if flat.len() == 1 {
                flat.pop().expect("one item")
            } else if is_and {
                Cohort::And(flat)
            } else {
                Cohort::Or(flat)
            }
        }
        Cohort::IsNull { variable } | Cohort::NotNull { variable } => {
            let is_null = matches!(c, Cohort::IsNull { .. }) != negate;
            let variable = variable.clone();
            if is_null {
                Cohort::IsNull { variable }
            } else {
                Cohort::NotNull { variable }
            }
        }
        Cohort::Compare {
            variable,
            op,
            value,
        } => {
            // not (x op v) is x (¬op) v: both are unknown when x is missing.
            let op = if negate { negated(*op) } else { *op };
            compare(variable, op, value, dict)?
        }
        Cohort::In { variable, values } => {
            let kind = dict.get(variable)?.kind;
            let mut values: Vec<Value> = values.iter().map(|v| literal(kind, v)).collect();
            values.sort_by_key(|v| serde_json::to_string(v).expect("a value serialises"));
            values.dedup();
            let positive = if values.len() == 1 {
                Cohort::Compare {
                    variable: variable.clone(),
                    op: CompareOp::Eq,
                    value: values.pop().expect("one value"),
                }
            } else {
                Cohort::In {
                    variable: variable.clone(),
                    values,
                }
            };
            match (negate, positive) {
                (false, p) => p,
                (
                    true,
                    Cohort::Compare {
                        variable, value, ..
                    },
                ) => Cohort::Compare {
                    variable,
                    op: CompareOp::Ne,
                    value,
                },
                (true, p) => Cohort::Not(Box::new(p)),
            }
        }
    })
}

fn negated(op: CompareOp) -> CompareOp {
    match op {
        CompareOp::Eq => CompareOp::Ne,
        CompareOp::Ne => CompareOp::Eq,
        CompareOp::Lt => CompareOp::Ge,
        CompareOp::Ge => CompareOp::Lt,
        CompareOp::Gt => CompareOp::Le,
        CompareOp::Le => CompareOp::Gt,
    }
}

/// A literal in its variable's one spelling: integral numbers as integers
/// for integer variables, every number as a float for float variables.
fn literal(kind: VarType, v: &Value) -> Value {
    match (kind, v) {
        (VarType::Integer, Value::Float(x)) if x.fract() == 0.0 && x.abs() < 9e15 => {
            Value::Integer(*x as i64)
        }
        (VarType::Float, Value::Integer(i)) => Value::Float(*i as f64),
        (VarType::Float, Value::Float(x)) if *x == 0.0 => Value::Float(0.0),
        _ => v.clone(),
    }
}

/// An ordering on an integer variable is written `>=` or `<` an integer:
/// `age > 64`, `age >= 64.5` and `age >= 65` are one condition.
fn compare(variable: &str, op: CompareOp, value: &Value, dict: &Dictionary) -> Result<Cohort> {
    let kind = dict.get(variable)?.kind;
    let value = literal(kind, value);
    let number = match &value {
        Value::Integer(i) => Some(*i as f64),
        Value::Float(x) => Some(*x),
        _ => None,
    };
    let (op, value) = match (kind, number, op) {
        (VarType::Integer, Some(x), CompareOp::Ge) => (CompareOp::Ge, x.ceil()),
        (VarType::Integer, Some(x), CompareOp::Gt) => (CompareOp::Ge, x.floor() + 1.0),
        (VarType::Integer, Some(x), CompareOp::Lt) => (CompareOp::Lt, x.ceil()),
        (VarType::Integer, Some(x), CompareOp::Le) => (CompareOp::Lt, x.floor() + 1.0),
        // `age = 64.5` selects nobody with an age; keep it as written.
        _ => {
            return Ok(Cohort::Compare {
                variable: variable.to_string(),
                op,
                value,
            })
        }
    };
    Ok(Cohort::Compare {
        variable: variable.to_string(),
        op,
        value: if value.abs() < 9e15 {
            Value::Integer(value as i64)
        } else {
            Value::Float(value)
        },
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::eval::{matches, Datum};

    fn dict() -> Dictionary {
        Dictionary::cardiovascular()
    }

    fn canonical_of(json: &str) -> String {
        let q = Query::from_json(&format!(
            r#"{{"cohort": {json}, "analysis": {{"count": {{}}}}}}"#
        ))
        .unwrap();
        q.validate(&dict()).unwrap();
        q.canonical_hash(&dict()).unwrap()
    }

    #[test]
    fn rephrasings_share_one_form() {
        let same = [
            r#"{"compare": {"variable": "age", "op": ">=", "value": 65}}"#,
            r#"{"compare": {"variable": "age", "op": ">", "value": 64}}"#,
            r#"{"compare": {"variable": "age", "op": ">=", "value": 64.5}}"#,
            r#"{"not": {"compare": {"variable": "age", "op": "<", "value": 65}}}"#,
            r#"{"and": [{"compare": {"variable": "age", "op": ">", "value": 64}}]}"#,
            r#"{"not": {"not": {"compare": {"variable": "age", "op": "ge", "value": 65.0}}}}"#,
        ];
        let first = canonical_of(same[0]);
        for s in &same[1..] {
            assert_eq!(canonical_of(s), first, "{s}");
        }
        let a = canonical_of(
            r#"{"and": [{"compare": {"variable": "sex", "op": "=", "value": "M"}},
                        {"and": [{"in": {"variable": "smoking", "values": ["current", "former", "current"]}},
                                 {"not_null": {"variable": "bmi"}}]}]}"#,
        );
        let b = canonical_of(
            r#"{"and": [{"not": {"is_null": {"variable": "bmi"}}},
                        {"in": {"variable": "smoking", "values": ["former", "current"]}},
                        {"not": {"compare": {"variable": "sex", "op": "!=", "value": "M"}}}]}"#,
        );
        assert_eq!(a, b);
        let c = canonical_of(
            r#"{"not": {"or": [{"compare": {"variable": "bmi", "op": "<", "value": 30}},
                               {"in": {"variable": "sex", "values": ["F"]}}]}}"#,
        );
        let d = canonical_of(
            r#"{"and": [{"compare": {"variable": "sex", "op": "!=", "value": "F"}},
                        {"compare": {"variable": "bmi", "op": ">=", "value": 30.0}}]}"#,
        );
        assert_eq!(c, d);
        // Different cohorts stay different.
        assert_ne!(
            canonical_of(r#"{"compare": {"variable": "age", "op": ">=", "value": 65}}"#),
            canonical_of(r#"{"compare": {"variable": "age", "op": ">=", "value": 66}}"#)
        );
    }

    fn leaf() -> impl Strategy<Value = Cohort> {
        let ops = prop_oneof![
            Just(CompareOp::Eq),
            Just(CompareOp::Ne),
            Just(CompareOp::Lt),
            Just(CompareOp::Le),
            Just(CompareOp::Gt),
            Just(CompareOp::Ge),
        ];
        prop_oneof![
            (ops.clone(), 60i64..70).prop_map(|(op, v)| Cohort::Compare {
                variable: "age".into(),
                op,
                value: Value::Integer(v),
            }),
            (ops.clone(), 600i64..700).prop_map(|(op, v)| Cohort::Compare {
                variable: "age".into(),
                op,
                value: Value::Float(v as f64 / 10.0),
            }),
            (ops, 25i64..30).prop_map(|(op, v)| Cohort::Compare {
                variable: "bmi".into(),
                op,
                value: Value::Integer(v),
            }),
            (any::<bool>(), any::<bool>()).prop_map(|(eq, v)| Cohort::Compare {
                variable: "diabetes".into(),
                op: if eq { CompareOp::Eq } else { CompareOp::Ne },
                value: Value::Boolean(v),
            }),
            proptest::sample::subsequence(vec!["never", "former", "current"], 1..=3).prop_map(
                |vs| Cohort::In {
                    variable: "smoking".into(),
                    values: vs.into_iter().map(|v| Value::Text(v.into())).collect(),
                }
            ),
            Just(Cohort::IsNull {
                variable: "bmi".into()
            }),
            Just(Cohort::NotNull {
                variable: "bmi".into()
            }),
        ]
    }

    fn cohort() -> impl Strategy<Value = Cohort> {
        leaf().prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 1..4).prop_map(Cohort::And),
                prop::collection::vec(inner.clone(), 1..4).prop_map(Cohort::Or),
                inner.prop_map(|c| Cohort::Not(Box::new(c))),
            ]
        })
    }

    fn patient() -> impl Strategy<Value = (Option<i64>, Option<f64>, Option<bool>, Option<usize>)> {
        (
            proptest::option::of(58i64..72),
            proptest::option::of(prop_oneof![
                (24i64..31).prop_map(|v| v as f64),
                24.0f64..31.0
            ]),
            proptest::option::of(any::<bool>()),
            proptest::option::of(0usize..3),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The canonical cohort selects exactly the patients the original
        /// does (unknown included), and canonicalising twice changes nothing.
        #[test]
        fn canonical_form_selects_the_same_patients(
            c in cohort(),
            patients in prop::collection::vec(patient(), 40),
        ) {
            let d = dict();
            let q = Query { cohort: Some(c.clone()), analysis: Analysis::Count {}, by_site: false, rho: None };
            prop_assume!(q.validate(&d).is_ok());
            let canon = q.canonical(&d).unwrap();
            let again = canon.canonical(&d).unwrap();
            prop_assert_eq!(&again, &canon);
            let cc = canon.cohort.unwrap();
            for (age, bmi, diabetes, smoking) in patients {
                let row = |v: &str| match v {
                    "age" => age.map(Datum::Integer).unwrap_or(Datum::Null),
                    "bmi" => bmi.map(Datum::Float).unwrap_or(Datum::Null),
                    "diabetes" => diabetes.map(Datum::Boolean).unwrap_or(Datum::Null),
                    "smoking" => smoking
                        .map(|i| Datum::Text(["never", "former", "current"][i].into()))
                        .unwrap_or(Datum::Null),
                    _ => Datum::Null,
                };
                prop_assert_eq!(matches(&c, &row), matches(&cc, &row), "{:?} vs {:?}", c, cc);
            }
        }
    }
}
