use super::*;
use crate::dictionary::Dictionary;
use crate::query::{Analysis, AnalysisKind, Cohort, CompareOp, Query, Value};
use crate::ErrorCode;

fn dict() -> Dictionary {
    Dictionary::cardiovascular()
}

fn cohort(text: &str) -> Cohort {
    parse_cohort(text, &dict()).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn tree(json: &str) -> Cohort {
    serde_json::from_str(json).unwrap()
}

fn cohort_error(text: &str) -> String {
    let e = parse_cohort(text, &dict()).expect_err(text);
    assert_eq!(e.code, ErrorCode::Invalid, "{e}");
    e.message
}

fn formula(text: &str, kind: AnalysisKind) -> Formula {
    parse_formula(text, kind, &dict()).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn formula_error(text: &str, kind: AnalysisKind) -> String {
    let e = parse_formula(text, kind, &dict()).expect_err(text);
    assert_eq!(e.code, ErrorCode::Invalid, "{e}");
    e.message
}

#[test]
fn cohort_expressions_become_the_json_tree() {
    assert_eq!(
        cohort(r#"age >= 65 & sex == "M" & !is.na(bmi)"#),
        tree(
            r#"{"and": [
                {"compare": {"variable": "age", "op": ">=", "value": 65}},
                {"compare": {"variable": "sex", "op": "=", "value": "M"}},
                {"not_null": {"variable": "bmi"}}]}"#
        )
    );
    assert_eq!(
        cohort(r#"smoking %in% c("former", 'current')"#),
        tree(r#"{"in": {"variable": "smoking", "values": ["former", "current"]}}"#)
    );
    assert_eq!(
        cohort("is.na(sbp) | diabetes == TRUE & bmi < 30.5"),
        tree(
            r#"{"or": [
                {"is_null": {"variable": "sbp"}},
                {"and": [
                    {"compare": {"variable": "diabetes", "op": "=", "value": true}},
                    {"compare": {"variable": "bmi", "op": "<", "value": 30.5}}]}]}"#
        )
    );
    assert_eq!(
        cohort(r#"inclusion_date < "2020-01-01""#),
        tree(r#"{"compare": {"variable": "inclusion_date", "op": "<", "value": "2020-01-01"}}"#)
    );
    assert_eq!(
        cohort("followup_days > -5 & cholesterol != 1e1 & age <= 70"),
        Cohort::And(vec![
            Cohort::Compare {
                variable: "followup_days".into(),
                op: CompareOp::Gt,
                value: Value::Integer(-5),
            },
            Cohort::Compare {
                variable: "cholesterol".into(),
                op: CompareOp::Ne,
                value: Value::Float(10.0),
            },
            Cohort::Compare {
                variable: "age".into(),
                op: CompareOp::Le,
                value: Value::Integer(70),
            },
        ])
    );
}

#[test]
fn precedence_follows_r() {
    // ! binds looser than a comparison.
    assert_eq!(cohort("!age == 65"), cohort("!(age == 65)"));
    // & binds tighter than |.
    assert_eq!(
        cohort("diabetes == TRUE | hypertension == TRUE & age > 70"),
        cohort("diabetes == TRUE | (hypertension == TRUE & age > 70)")
    );
    assert_ne!(
        cohort("(diabetes == TRUE | hypertension == TRUE) & age > 70"),
        cohort("diabetes == TRUE | hypertension == TRUE & age > 70")
    );
    // ! binds tighter than &.
    assert_eq!(
        cohort("!diabetes == TRUE & age > 70"),
        Cohort::And(vec![
            Cohort::Not(Box::new(cohort("diabetes == TRUE"))),
            cohort("age > 70"),
        ])
    );
    // Parentheses keep their grouping in the tree.
    assert_eq!(
        cohort("(age > 1 | age < 0) | bmi > 3"),
        Cohort::Or(vec![
            Cohort::Or(vec![cohort("age > 1"), cohort("age < 0")]),
            cohort("bmi > 3"),
        ])
    );
}

#[test]
fn cohort_conveniences() {
    // A value on the left mirrors the comparison.
    assert_eq!(cohort("65 <= age"), cohort("age >= 65"));
    // A boolean variable on its own is itself being TRUE.
    assert_eq!(
        cohort("diabetes & !hypertension"),
        cohort("diabetes == TRUE & !(hypertension == TRUE)")
    );
    // Single value after %in%, backticked names, !(is.na(x)).
    assert_eq!(
        cohort(r#"`smoking` %in% "never""#),
        tree(r#"{"in": {"variable": "smoking", "values": ["never"]}}"#)
    );
    assert_eq!(cohort("!(is.na(bmi))"), cohort("!is.na(bmi)"));
    assert_eq!(cohort("  age\n>= 65  "), cohort("age >= 65"));
}

#[test]
fn cohort_errors_name_the_column() {
    let cases = [
        (
            "agee >= 65",
            "column 1: no variable \"agee\" in the dictionary; did you mean \"age\"?",
        ),
        (
            "age >= 65 & smokin == \"never\"",
            "column 13: no variable \"smokin\" in the dictionary; did you mean \"smoking\"?",
        ),
        (
            "age = 65",
            "column 5: = is assignment in R; write == to compare",
        ),
        (
            "age => 65",
            "column 5: => is not an operator; write >= for greater than or equal",
        ),
        (
            "age >= 65 && sex == \"F\"",
            "column 11: && compares single values in R; write & to combine conditions",
        ),
        (
            "age >= 65 || sex == \"F\"",
            "column 11: || compares single values in R; write | to combine conditions",
        ),
        ("age <-5", "column 5: <- is assignment in R"),
        ("(age >= 65", "column 11: expected"),
        ("age >= 65)", "column 10: expected"),
        (
            "diabetes == true",
            "column 13: write booleans as TRUE or FALSE",
        ),
        (
            "sex == \"X\"",
            "column 1: \"X\" is not a category of \"sex\"",
        ),
        (
            "sex > \"F\"",
            "column 1: \"sex\" is categorical and can only be compared with = or !=",
        ),
        (
            "age > \"old\"",
            "column 1: \"age\" is integer and cannot be compared with \"old\"",
        ),
        (
            "bmi == NA",
            "column 8: missing values are tested with is.na(x)",
        ),
        (
            "age >= sbp",
            "column 8: compare a variable with a value, not with another variable",
        ),
        (
            "log(age) > 3",
            "column 1: log() is not supported in a cohort",
        ),
        (
            "age",
            "column 1: \"age\" is integer and is not a condition on its own",
        ),
        ("smoking %in% c()", "column 14: c() lists no values"),
        (
            "age %like% 3",
            "column 5: only the %in% operator is supported",
        ),
        ("sex == \"F\" &", "column 13: expected"),
        (
            "age >= 65 & sex == \"F\" &\n bmi >> 3",
            "line 2, column 7: expected",
        ),
        ("is.na(age, bmi)", "column 1: is.na() takes one variable"),
    ];
    for (text, expected) in cases {
        let message = cohort_error(text);
        assert!(message.starts_with(expected), "{text}: {message}");
    }
    assert_eq!(cohort_error("   "), "the cohort expression is empty");
    assert_eq!(
        cohort_error("age >= 65)"),
        "column 10: expected %in%, \"&\", \"|\" or the end of the text, found \")\""
    );
    assert_eq!(
        cohort_error("sex == \"F"),
        "column 10: the string is not closed; end it with the quote it starts with"
    );
    assert!(cohort_error("1 < age < 5").starts_with("column 9: expected"));
}

#[test]
fn hostile_cohort_text_is_refused_before_parsing() {
    let deep = format!("{}age > 1{}", "(".repeat(200), ")".repeat(200));
    assert!(cohort_error(&deep).contains("nested more than 64 levels"));
    let bangs = format!("{}diabetes", "!".repeat(100));
    assert!(cohort_error(&bangs).contains("nested more than 64 levels"));
    assert!(cohort_error(&"age > 1 & ".repeat(1000)).contains("longer than"));
    // Nesting is what is limited, not how many conditions use ! or ().
    let many = vec!["!is.na(bmi) & (age != 1)"; 100].join(" & ");
    assert!(matches!(cohort(&many), Cohort::And(items) if items.len() == 200));
    // At the limit, the grammar's recursion stays within a test thread's stack.
    let at_limit = format!("{}age > 1{}", "(".repeat(64), ")".repeat(64));
    assert_eq!(cohort(&at_limit), cohort("age > 1"));
    let bangs = format!("{}(age > 1)", "!".repeat(64));
    assert!(parse_cohort(&bangs, &dict()).is_ok());
    let control = cohort_error("sex == \"F\u{1b}[2J\"");
    assert!(control.contains("U+001B"), "{control}");
    // Escapes are limited; nothing produced from them is a control character.
    assert!(cohort_error(r#"sex == "F\n""#).contains("unsupported escape"));
}

#[test]
fn formulas_become_analysis_fields() {
    assert_eq!(
        formula("death ~ age + smoking + diabetes", AnalysisKind::Glm),
        Formula {
            outcome: Outcome::Variable("death".into()),
            covariates: vec!["age".into(), "smoking".into(), "diabetes".into()],
            intercept: true,
        }
    );
    for no_intercept in [
        "sbp ~ age - 1",
        "sbp ~ age + 0",
        "sbp ~ 0 + age",
        "sbp ~ -1 + age",
    ] {
        let f = formula(no_intercept, AnalysisKind::Glm);
        assert!(!f.intercept, "{no_intercept}");
        assert_eq!(f.covariates, ["age"]);
    }
    assert!(formula("sbp ~ 1 + age", AnalysisKind::Glm).intercept);
    assert_eq!(
        formula("sbp ~ 1", AnalysisKind::Glm).covariates,
        Vec::<String>::new()
    );
    assert_eq!(
        formula(
            "Surv(followup_days, death) ~ age + smoking",
            AnalysisKind::Cox
        ),
        Formula {
            outcome: Outcome::Survival {
                time: "followup_days".into(),
                event: "death".into()
            },
            covariates: vec!["age".into(), "smoking".into()],
            intercept: true,
        }
    );
    let km = formula(
        "Surv( followup_days ,death ) ~ smoking",
        AnalysisKind::KaplanMeier,
    );
    assert_eq!(km.covariates, ["smoking"]);
    assert!(
        formula("Surv(followup_days, death) ~ 1", AnalysisKind::KaplanMeier)
            .covariates
            .is_empty()
    );
    assert_eq!(
        formula("death ~ (age + sex)", AnalysisKind::Glm).covariates,
        ["age", "sex"]
    );
}

#[test]
fn formula_errors_name_the_column() {
    use AnalysisKind::{Cox, Glm, KaplanMeier};
    let cases = [
        ("death ~ age:sex", Glm, "column 12: interactions (:) are not supported"),
        ("death ~ age * sex", Glm, "column 13: interactions (*) are not supported"),
        ("death ~ log(age)", Glm, "column 9: log() is not supported"),
        ("death ~ I(age^2)", Glm, "column 9: I() (arithmetic on variables) is not supported"),
        ("death ~ .", Glm, "column 9: `.` (every other variable) is not supported"),
        ("death ~ age + sex + age", Glm, "column 21: \"age\" appears twice in the formula"),
        ("death ~ agee", Glm, "column 9: no variable \"agee\" in the dictionary; did you mean \"age\"?"),
        ("death ~ age - sex", Glm, "column 15: - removes only the intercept"),
        ("death ~ death + age", Glm, "column 9: \"death\" is left of ~"),
        ("death ~ age + 2", Glm, "column 15: 2 is not a term"),
        ("Surv(followup_days, death) ~ age", Glm, "column 1: Surv(...) is a survival outcome; fit it with cox or kaplan_meier"),
        ("~ age", Glm, "column 1: a glm needs an outcome left of ~"),
        ("death + sex ~ age", Glm, "column 1: the left of ~ holds one outcome"),
        ("death age", Glm, "column 1: a formula needs ~"),
        ("death ~", Glm, "column 8: expected"),
        ("death ~ (age + sex", Glm, "column 19: expected"),
        ("death ~ age +", Glm, "column 14: expected"),
        ("death ~ age + sex)", Glm, "column 18: expected"),
        ("death ~ age", Cox, "column 1: a cox needs Surv(time, event) left of ~"),
        ("Surv(followup_days, death) ~ age + strata(sex)", Cox, "column 36: strata() is not needed: a cox model is always stratified by site"),
        ("Surv(followup_days, death) ~ age - 1", Cox, "column 36: a cox has no intercept to drop"),
        ("Surv(followup_days, death) ~ 1", Cox, "column 29: a cox model needs at least one covariate"),
        ("Surv(followup_dayz, death) ~ age", Cox, "column 6: no variable \"followup_dayz\" in the dictionary; did you mean \"followup_days\"?"),
        ("Surv(followup_days, deaht) ~ age", Cox, "column 21: no variable \"deaht\""),
        ("Surv(followup_days) ~ age", Cox, "column 1: Surv() takes a time and an event variable"),
        ("Surv(followup_days, death) ~ Surv(age, death)", Cox, "column 30: Surv() belongs left of ~"),
        ("Surv(followup_days, death) ~ smoking + sex", KaplanMeier, "column 40: kaplan_meier curves take at most one group variable, and the formula has a second term (the first is at column 30)"),
    ];
    for (text, kind, expected) in cases {
        let message = formula_error(text, kind);
        assert!(message.starts_with(expected), "{text}: {message}");
    }
    assert!(parse_formula("age ~ sex", AnalysisKind::Summary, &dict())
        .unwrap_err()
        .message
        .contains("takes no formula"));
}

#[test]
fn requests_in_text_form_give_the_tree_form() {
    let d = dict();
    let pairs = [
        (
            r#"{"where": "age >= 65 & smoking %in% c(\"former\", \"current\") & !is.na(bmi)",
                "analysis": {"glm": {"formula": "death ~ age + smoking + diabetes", "family": "binomial"}},
                "rho": 0.01}"#,
            r#"{"cohort": {"and": [
                   {"compare": {"variable": "age", "op": ">=", "value": 65}},
                   {"in": {"variable": "smoking", "values": ["former", "current"]}},
                   {"not_null": {"variable": "bmi"}}]},
                "analysis": {"glm": {"family": "binomial", "outcome": "death",
                                     "covariates": ["age", "smoking", "diabetes"]}},
                "rho": 0.01}"#,
        ),
        (
            r#"{"analysis": {"glm": {"formula": "sbp ~ age - 1", "family": "gaussian", "tolerance": 1e-9}}}"#,
            r#"{"analysis": {"glm": {"family": "gaussian", "outcome": "sbp", "covariates": ["age"],
                                     "intercept": false, "tolerance": 1e-9}}}"#,
        ),
        (
            r#"{"where": "sex == 'F'", "by_site": true,
                "analysis": {"cox": {"formula": "Surv(followup_days, death) ~ age + smoking", "ties": "breslow"}}}"#,
            r#"{"cohort": {"compare": {"variable": "sex", "op": "=", "value": "F"}}, "by_site": true,
                "analysis": {"cox": {"time": "followup_days", "event": "death",
                                     "covariates": ["age", "smoking"], "ties": "breslow"}}}"#,
        ),
        (
            r#"{"analysis": {"kaplan_meier": {"formula": "Surv(followup_days, death) ~ smoking",
                                              "grid": {"from": 0, "to": 1826, "step": 30}}}}"#,
            r#"{"analysis": {"kaplan_meier": {"time": "followup_days", "event": "death", "group": "smoking",
                                              "grid": {"from": 0, "to": 1826, "step": 30}}}}"#,
        ),
        (
            r#"{"analysis": {"kaplan_meier": {"formula": "Surv(followup_days, death) ~ 1",
                                              "grid": [0, 365, 730]}}}"#,
            r#"{"analysis": {"kaplan_meier": {"time": "followup_days", "event": "death",
                                              "grid": [0, 365, 730]}}}"#,
        ),
        (
            r#"{"where": "inclusion_date >= \"2020-01-01\"", "analysis": {"count": {}}}"#,
            r#"{"cohort": {"compare": {"variable": "inclusion_date", "op": ">=", "value": "2020-01-01"}},
                "analysis": {"count": {}}}"#,
        ),
    ];
    for (text, json) in pairs {
        let from_text = Query::from_request(text, &d).unwrap_or_else(|e| panic!("{text}: {e}"));
        let from_tree = Query::from_json(json).unwrap();
        from_tree.validate(&d).unwrap();
        assert_eq!(from_text, from_tree);
        assert_eq!(from_text.hash(), from_tree.hash());
        assert_eq!(
            from_text.canonical_hash(&d).unwrap(),
            from_tree.canonical_hash(&d).unwrap()
        );
        // The tree form is accepted by from_request too, unchanged.
        assert_eq!(Query::from_request(json, &d).unwrap(), from_tree);
    }
}

#[test]
fn request_errors() {
    let d = dict();
    let err = |json: &str| Query::from_request(json, &d).unwrap_err().message;
    assert!(err(r#"{"where": "age > 1", "cohort": {"is_null": {"variable": "age"}}, "analysis": {"count": {}}}"#)
        .contains("both \"where\" and \"cohort\""));
    assert!(err(r#"{"analysis": {"glm": {"formula": "death ~ age", "outcome": "death", "family": "binomial"}}}"#)
        .contains("both \"formula\" and \"outcome\""));
    assert!(err(r#"{"analysis": {"kaplan_meier": {"formula": "Surv(followup_days, death) ~ 1", "group": "sex", "grid": [0, 1]}}}"#)
        .contains("both \"formula\" and \"group\""));
    assert!(
        err(r#"{"analysis": {"summary": {"formula": "sbp ~ age"}}}"#)
            .contains("takes no \"formula\"")
    );
    assert!(err(r#"{"where": 3, "analysis": {"count": {}}}"#)
        .contains("\"where\" holds a cohort expression as a string"));
    assert_eq!(
        err(r#"{"where": "agee > 3", "analysis": {"count": {}}}"#),
        "where: column 1: no variable \"agee\" in the dictionary; did you mean \"age\"?"
    );
    assert_eq!(
        err(r#"{"analysis": {"glm": {"formula": "death ~ age:sex", "family": "binomial"}}}"#),
        "formula: column 12: interactions (:) are not supported; list main effects joined by +"
    );
    assert!(err(r#"{"analysis": {"count": {}}, "wher": "age > 3"}"#).contains("unknown field"));
    assert!(err(r#"{"analysis": {"count": {}}"#).contains("not valid JSON"));
}

#[test]
fn a_study_refuses_a_variable_named_in_a_formula() {
    let d = dict();
    let toml = crate::study::tests::EXAMPLE
        .replace(
            r#"analyses = ["count", "summary"]"#,
            r#"analyses = ["count", "glm"]"#,
        )
        .replace(r#""smoking"]"#, r#""smoking", "death"]"#);
    let study = crate::StudyDefinition::from_toml(&toml).unwrap();
    let q = Query::from_request(
        r#"{"analysis": {"glm": {"formula": "death ~ age + sbp", "family": "binomial"}}}"#,
        &d,
    )
    .unwrap();
    q.validate(&d).unwrap();
    let e = study.permits(&q).unwrap_err();
    assert_eq!(e.code, ErrorCode::Policy);
    assert!(
        e.message.starts_with(
            "study \"aaa-outcomes\" does not allow variable \"sbp\", used as the glm's covariate (allowed: "
        ),
        "{e}"
    );
    let q =
        Query::from_request(r#"{"where": "sbp > 140", "analysis": {"count": {}}}"#, &d).unwrap();
    let e = study.permits(&q).unwrap_err();
    assert!(
        e.message
            .contains("\"sbp\", used as a condition of the cohort"),
        "{e}"
    );
}

#[test]
fn trees_print_as_text() {
    let c = tree(
        r#"{"and": [
            {"compare": {"variable": "age", "op": ">=", "value": 65}},
            {"or": [{"in": {"variable": "smoking", "values": ["former", "current"]}},
                    {"not": {"compare": {"variable": "bmi", "op": "<", "value": 30.0}}}]},
            {"not_null": {"variable": "bmi"}}]}"#,
    );
    let text = cohort_text(&c);
    assert_eq!(
        text,
        r#"age >= 65 & (smoking %in% c("former", "current") | !(bmi < 30.0)) & !is.na(bmi)"#
    );
    assert_eq!(cohort(&text), c);
    assert_eq!(
        cohort_text(&tree(
            r#"{"compare": {"variable": "sex", "op": "=", "value": "a\"b\\c"}}"#
        )),
        r#"sex == "a\"b\\c""#
    );

    let analysis = |json: &str| serde_json::from_str::<Analysis>(json).unwrap();
    assert_eq!(
        formula_text(&analysis(r#"{"glm": {"family": "binomial", "outcome": "death", "covariates": ["age", "smoking"]}}"#)).unwrap(),
        "death ~ age + smoking"
    );
    assert_eq!(
        formula_text(&analysis(r#"{"glm": {"family": "gaussian", "outcome": "sbp", "covariates": ["age"], "intercept": false}}"#)).unwrap(),
        "sbp ~ age - 1"
    );
    assert_eq!(
        formula_text(&analysis(
            r#"{"cox": {"time": "followup_days", "event": "death", "covariates": ["age"]}}"#
        ))
        .unwrap(),
        "Surv(followup_days, death) ~ age"
    );
    assert_eq!(
        formula_text(&analysis(
            r#"{"kaplan_meier": {"time": "followup_days", "event": "death", "grid": [0, 1]}}"#
        ))
        .unwrap(),
        "Surv(followup_days, death) ~ 1"
    );
    assert_eq!(formula_text(&analysis(r#"{"count": {}}"#)), None);
    for text in ["death ~ age + smoking", "sbp ~ age - 1", "sbp ~ 1"] {
        let f = formula(text, AnalysisKind::Glm);
        let Outcome::Variable(outcome) = f.outcome else {
            unreachable!()
        };
        let a = Analysis::Glm {
            family: crate::models::glm::Family::Gaussian,
            outcome,
            covariates: f.covariates,
            intercept: f.intercept,
            tolerance: None,
            max_iterations: None,
        };
        assert_eq!(formula_text(&a).unwrap(), text);
    }
}

#[test]
fn pointer_marks_the_column() {
    let text = "age >= 65 && sex == \"F\"";
    let e = parse_cohort(text, &dict()).unwrap_err();
    assert_eq!(
        pointer(text, &e.message).unwrap(),
        "  age >= 65 && sex == \"F\"\n            ^"
    );
    assert_eq!(pointer(text, "no column here"), None);
}
