//! Property tests of the text forms: printed trees parse back to the
//! same query, and no text makes a parser panic.

use proptest::prelude::*;

use super::*;
use crate::dictionary::Dictionary;
use crate::query::{Analysis, AnalysisKind, Cohort, CompareOp, Query, Value};

fn dict() -> Dictionary {
    Dictionary::cardiovascular()
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
    let numeric = prop_oneof![
        Just("age"),
        Just("followup_days"),
        Just("bmi"),
        Just("sbp"),
        Just("cholesterol")
    ];
    let discrete = prop_oneof![
        Just(("sex", vec!["F", "M"])),
        Just(("smoking", vec!["never", "former", "current"])),
    ];
    let any_variable =
        proptest::sample::select(dict().variables.keys().cloned().collect::<Vec<_>>());
    prop_oneof![
        (numeric.clone(), ops.clone(), -1000i64..1000).prop_map(|(v, op, x)| Cohort::Compare {
            variable: v.into(),
            op,
            value: Value::Integer(x),
        }),
        (numeric, ops, -1.0e6f64..1.0e6).prop_map(|(v, op, x)| Cohort::Compare {
            variable: v.into(),
            op,
            value: Value::Float(x),
        }),
        (
            prop_oneof![Just("diabetes"), Just("hypertension"), Just("death")],
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(v, eq, b)| Cohort::Compare {
                variable: v.into(),
                op: if eq { CompareOp::Eq } else { CompareOp::Ne },
                value: Value::Boolean(b),
            }),
        (
            discrete.clone(),
            any::<bool>(),
            any::<prop::sample::Index>()
        )
            .prop_map(|((v, levels), eq, i)| {
                Cohort::Compare {
                    variable: v.into(),
                    op: if eq { CompareOp::Eq } else { CompareOp::Ne },
                    value: Value::Text(i.get(&levels).to_string()),
                }
            }),
        discrete.prop_flat_map(|(v, levels)| {
            proptest::sample::subsequence(levels, 1..=2).prop_map(move |vs| Cohort::In {
                variable: v.into(),
                values: vs.into_iter().map(|s| Value::Text(s.into())).collect(),
            })
        }),
        (0u32..3650, any::<bool>()).prop_map(|(days, before)| Cohort::Compare {
            variable: "inclusion_date".into(),
            op: if before { CompareOp::Lt } else { CompareOp::Ge },
            value: Value::Text(
                (chrono::NaiveDate::from_ymd_opt(2005, 1, 1).unwrap()
                    + chrono::Days::new(days.into()))
                .to_string()
            ),
        }),
        any_variable
            .clone()
            .prop_map(|variable| Cohort::IsNull { variable }),
        any_variable.prop_map(|variable| Cohort::NotNull { variable }),
    ]
}

fn random_cohort() -> impl Strategy<Value = Cohort> {
    leaf().prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 1..4).prop_map(Cohort::And),
            prop::collection::vec(inner.clone(), 1..4).prop_map(Cohort::Or),
            inner.prop_map(|c| Cohort::Not(Box::new(c))),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Printing a cohort and parsing the text gives the same query, down
    /// to its canonical hash.
    #[test]
    fn printed_cohorts_parse_to_the_same_query(c in random_cohort()) {
        let d = dict();
        let q = Query { cohort: Some(c.clone()), analysis: Analysis::Count {}, by_site: false, rho: None };
        q.validate(&d).unwrap();
        let text = cohort_text(&c);
        let parsed = parse_cohort(&text, &d).map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
        let again = Query { cohort: Some(parsed.clone()), ..q.clone() };
        prop_assert_eq!(again.canonical_hash(&d).unwrap(), q.canonical_hash(&d).unwrap(), "{}", text);
        // Printing is stable: the parsed tree prints as the same text.
        prop_assert_eq!(cohort_text(&parsed), text.clone());
    }

    /// No text makes the parsers panic.
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,40}") {
        let d = dict();
        let _ = parse_cohort(&text, &d);
        for kind in [AnalysisKind::Glm, AnalysisKind::Cox, AnalysisKind::KaplanMeier] {
            let _ = parse_formula(&text, kind, &d);
        }
    }

    /// Nor does text made of the grammar's own pieces.
    #[test]
    fn grammar_soup_never_panics(pieces in prop::collection::vec(
        prop::sample::select(vec![
            "age", "sex", "Surv", "(", ")", "~", "+", "-", "1", "0", "&", "|", "!", "==", "<",
            "%in%", "c(", ",", "\"F\"", "'", "is.na(", ":", "*", "TRUE", " ", ".", "`", "\\",
        ]),
        0..30,
    )) {
        let text: String = pieces.concat();
        let d = dict();
        let _ = parse_cohort(&text, &d);
        for kind in [AnalysisKind::Glm, AnalysisKind::Cox, AnalysisKind::KaplanMeier] {
            let _ = parse_formula(&text, kind, &d);
        }
    }
}
