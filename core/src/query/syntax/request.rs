//! The query request: the JSON tree form, or the same with text in two
//! places: `"where"` instead of `"cohort"`, and `"formula"` inside `glm`,
//! `cox` and `kaplan_meier` instead of the variable fields. Text is parsed
//! and put in the tree's place, so what comes out is the plain tree and
//! its hash does not depend on the form.

use serde_json::{Map, Value as Json};

use super::{parse_cohort, parse_formula, Outcome};
use crate::dictionary::Dictionary;
use crate::error::{Error, Result};
use crate::query::{AnalysisKind, Query};

impl Query {
    /// Parses a query request in either form, with the text parsed against
    /// `dict`. The result still has to pass [`Query::validate`].
    pub fn from_request(json: &str, dict: &Dictionary) -> Result<Query> {
        let mut request: Json = serde_json::from_str(json).map_err(|e| not_a_query(&e))?;
        if let Some(fields) = request.as_object_mut() {
            replace_where(fields, dict)?;
            if let Some(analysis) = fields.get_mut("analysis").and_then(Json::as_object_mut) {
                replace_formula(analysis, dict)?;
            }
        }
        serde_json::from_value(request).map_err(|e| not_a_query(&e))
    }
}

fn not_a_query(e: &serde_json::Error) -> Error {
    Error::invalid(format!(
        "query is not valid JSON for a Plexus query: {e} (see the book's query reference, docs/src/reference/query-format.md)"
    ))
}

fn replace_where(fields: &mut Map<String, Json>, dict: &Dictionary) -> Result<()> {
    let Some(text) = fields.remove("where") else {
        return Ok(());
    };
    if fields.contains_key("cohort") {
        return Err(Error::invalid(
            "the query has both \"where\" and \"cohort\"; give the cohort once, as text in \"where\" or as a tree in \"cohort\"",
        ));
    }
    let Json::String(text) = text else {
        return Err(Error::invalid(
            "\"where\" holds a cohort expression as a string, e.g. \"age >= 65 & sex == \\\"F\\\"\"",
        ));
    };
    let cohort = parse_cohort(&text, dict)
        .map_err(|e| Error::new(e.code, format!("where: {}", e.message)))?;
    let tree = serde_json::to_value(cohort).expect("a cohort serialises");
    fields.insert("cohort".into(), tree);
    Ok(())
}

/// The fields a formula stands for, by analysis.
fn formula_fields(kind: AnalysisKind) -> &'static [&'static str] {
    match kind {
        AnalysisKind::Glm => &["outcome", "covariates", "intercept"],
        AnalysisKind::Cox => &["time", "event", "covariates"],
        AnalysisKind::KaplanMeier => &["time", "event", "group"],
        _ => &[],
    }
}

fn replace_formula(analysis: &mut Map<String, Json>, dict: &Dictionary) -> Result<()> {
    if analysis.len() != 1 {
        // Not one analysis: the tree's own parsing says so.
        return Ok(());
    }
    let Some((name, Json::Object(body))) = analysis.iter_mut().next() else {
        return Ok(());
    };
    let Some(text) = body.remove("formula") else {
        return Ok(());
    };
    let kind = AnalysisKind::parse(name)?;
    let replaced = formula_fields(kind);
    if replaced.is_empty() {
        return Err(Error::invalid(format!(
            "a {kind} analysis takes no \"formula\"; formulas are for glm, cox and kaplan_meier"
        )));
    }
    if let Some(field) = replaced.iter().find(|f| body.contains_key(**f)) {
        return Err(Error::invalid(format!(
            "the {kind} analysis has both \"formula\" and \"{field}\"; the formula names its variables, so leave \"{field}\" out"
        )));
    }
    let Json::String(text) = text else {
        return Err(Error::invalid(format!(
            "the {kind} \"formula\" is a string, e.g. \"{}\"",
            match kind {
                AnalysisKind::Glm => "death ~ age + smoking",
                _ => "Surv(followup_days, death) ~ smoking",
            }
        )));
    };
    let formula = parse_formula(&text, kind, dict)
        .map_err(|e| Error::new(e.code, format!("formula: {}", e.message)))?;
    let covariates = || Json::from(formula.covariates.clone());
    match (kind, formula.outcome.clone()) {
        (AnalysisKind::Glm, Outcome::Variable(outcome)) => {
            body.insert("outcome".into(), outcome.into());
            body.insert("covariates".into(), covariates());
            if !formula.intercept {
                body.insert("intercept".into(), false.into());
            }
        }
        (AnalysisKind::Cox, Outcome::Survival { time, event }) => {
            body.insert("time".into(), time.into());
            body.insert("event".into(), event.into());
            body.insert("covariates".into(), covariates());
        }
        (AnalysisKind::KaplanMeier, Outcome::Survival { time, event }) => {
            body.insert("time".into(), time.into());
            body.insert("event".into(), event.into());
            if let Some(group) = formula.covariates.first() {
                body.insert("group".into(), group.clone().into());
            }
        }
        _ => return Err(Error::internal("a formula parsed for another analysis")),
    }
    Ok(())
}
