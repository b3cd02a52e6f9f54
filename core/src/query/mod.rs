//! The researcher's query: a cohort (a boolean tree of conditions on
//! dictionary variables) and one analysis. Queries arrive as JSON from the
//! CLI or as protobuf on the wire; both become these types and are checked
//! against the dictionary before anything runs. Nothing is ever evaluated
//! as a string.

use serde::{Deserialize, Serialize};

use crate::dictionary::Dictionary;
use crate::error::{Error, Result};
use crate::models::correlation::Missing;
use crate::models::cox::Ties;
use crate::models::gbdt::{self, GbdtOptions, Loss};
use crate::models::glm::{Family, FitOptions};
use std::collections::BTreeMap;

mod canonical;
pub mod syntax;
mod text;
mod validate;
use crate::models::survival::Grid;

/// Deepest cohort tree accepted; deeper trees are refused before any work.
pub const MAX_COHORT_DEPTH: usize = 16;
/// Most conditions (leaves and branches) in one cohort tree.
pub const MAX_COHORT_NODES: usize = 256;
/// Most values in one `in` condition.
pub const MAX_SET_SIZE: usize = 256;
/// Most bins in one histogram.
pub const MAX_BINS: usize = 1000;
/// Most covariates in one regression model.
pub const MAX_COVARIATES: usize = 50;
/// Most variables in one correlation matrix.
pub const MAX_CORRELATION_VARIABLES: usize = 20;
/// Most probabilities in one quantiles query.
pub const MAX_PROBABILITIES: usize = 99;
/// Convergence tolerance of a GLM when the query names none (R's default).
pub const DEFAULT_GLM_TOLERANCE: f64 = 1e-8;
pub const DEFAULT_GLM_MAX_ITERATIONS: u32 = 25;
/// Convergence tolerance of a Cox fit when the query names none (R's default).
pub const DEFAULT_COX_TOLERANCE: f64 = 1e-9;
pub const DEFAULT_COX_MAX_ITERATIONS: u32 = 20;
/// Most rounds any iterative fit may take.
pub const MAX_ITERATIONS: u32 = 100;

/// A literal in a condition. Text is a category label or an ISO date,
/// depending on the variable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Boolean(bool),
    Integer(i64),
    Float(f64),
    Text(String),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Boolean(b) => write!(f, "{b}"),
            Value::Integer(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Text(s) => write!(f, "\"{s}\""),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CompareOp {
    #[serde(rename = "=", alias = "==", alias = "eq")]
    Eq,
    #[serde(rename = "!=", alias = "ne")]
    Ne,
    #[serde(rename = "<", alias = "lt")]
    Lt,
    #[serde(rename = "<=", alias = "le")]
    Le,
    #[serde(rename = ">", alias = "gt")]
    Gt,
    #[serde(rename = ">=", alias = "ge")]
    Ge,
}

impl CompareOp {
    pub fn as_str(self) -> &'static str {
        match self {
            CompareOp::Eq => "=",
            CompareOp::Ne => "!=",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
        }
    }

    fn is_ordering(self) -> bool {
        !matches!(self, CompareOp::Eq | CompareOp::Ne)
    }
}

/// Who is in the analysed population, as a boolean tree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Cohort {
    And(Vec<Cohort>),
    Or(Vec<Cohort>),
    Not(Box<Cohort>),
    Compare {
        variable: String,
        op: CompareOp,
        value: Value,
    },
    In {
        variable: String,
        values: Vec<Value>,
    },
    IsNull {
        variable: String,
    },
    NotNull {
        variable: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnalysisKind {
    Count,
    Summary,
    Histogram,
    Table,
    Glm,
    Cox,
    KaplanMeier,
    Correlation,
    Quantiles,
    TwoByTwo,
    Gbdt,
    ModelPerformance,
}

impl AnalysisKind {
    pub const ALL: [AnalysisKind; 12] = [
        AnalysisKind::Count,
        AnalysisKind::Summary,
        AnalysisKind::Histogram,
        AnalysisKind::Table,
        AnalysisKind::Glm,
        AnalysisKind::Cox,
        AnalysisKind::KaplanMeier,
        AnalysisKind::Correlation,
        AnalysisKind::Quantiles,
        AnalysisKind::TwoByTwo,
        AnalysisKind::Gbdt,
        AnalysisKind::ModelPerformance,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AnalysisKind::Count => "count",
            AnalysisKind::Summary => "summary",
            AnalysisKind::Histogram => "histogram",
            AnalysisKind::Table => "table",
            AnalysisKind::Glm => "glm",
            AnalysisKind::Cox => "cox",
            AnalysisKind::KaplanMeier => "kaplan_meier",
            AnalysisKind::Correlation => "correlation",
            AnalysisKind::Quantiles => "quantiles",
            AnalysisKind::TwoByTwo => "two_by_two",
            AnalysisKind::Gbdt => "gbdt",
            AnalysisKind::ModelPerformance => "model_performance",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s.trim())
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|k| k.as_str()).collect();
                Error::invalid(format!(
                    "\"{s}\" is not an analysis (use one of {})",
                    names.join(", ")
                ))
            })
    }

    /// Analyses fitted over several rounds of jobs.
    pub fn is_iterative(self) -> bool {
        matches!(
            self,
            AnalysisKind::Glm
                | AnalysisKind::Cox
                | AnalysisKind::Gbdt
                | AnalysisKind::ModelPerformance
        )
    }
}

impl std::fmt::Display for AnalysisKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

fn default_true() -> bool {
    true
}

fn default_probabilities() -> Vec<f64> {
    vec![0.25, 0.5, 0.75]
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Analysis {
    /// Number of patients in the cohort.
    Count {},
    /// Mean, variance and standard deviation of a numeric variable.
    Summary { variable: String },
    /// Counts of a numeric variable on public bin edges.
    Histogram { variable: String, edges: Vec<f64> },
    /// Two-way contingency table of two discrete variables.
    Table { row: String, column: String },
    /// Generalised linear model by federated IRLS.
    Glm {
        family: Family,
        outcome: String,
        covariates: Vec<String>,
        #[serde(default = "default_true")]
        intercept: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tolerance: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_iterations: Option<u32>,
    },
    /// Cox proportional hazards, stratified by site.
    Cox {
        time: String,
        event: String,
        covariates: Vec<String>,
        #[serde(default)]
        ties: Ties,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tolerance: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_iterations: Option<u32>,
    },
    /// Kaplan-Meier curves on a public time grid, with a log-rank test
    /// between the groups.
    KaplanMeier {
        time: String,
        event: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<String>,
        grid: Grid,
    },
    /// Covariance and correlation matrices of numeric variables.
    Correlation {
        variables: Vec<String>,
        #[serde(default)]
        missing: Missing,
    },
    /// Quantiles estimated from a pooled histogram on public bin edges.
    Quantiles {
        variable: String,
        edges: Vec<f64>,
        #[serde(default = "default_probabilities")]
        probabilities: Vec<f64>,
    },
    /// Odds ratio, relative risk and chi-square of two binary variables.
    TwoByTwo { exposure: String, outcome: String },
    /// Gradient-boosted trees trained across sites, level by level, on
    /// public bins.
    Gbdt {
        #[serde(default)]
        loss: Loss,
        outcome: String,
        covariates: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        trees: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        depth: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        learning_rate: Option<f64>,
        /// L2 penalty on leaf values.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lambda: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min_child_weight: Option<f64>,
        /// Even bins of a numeric covariate between its dictionary bounds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bins: Option<u32>,
        /// Cut points of numeric covariates, instead of even bins.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        edges: BTreeMap<String, Vec<f64>>,
        /// Hold out a fixed share of each site's patients
        /// ([`gbdt::VALIDATION_SHARE`]) to measure the loss on.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        validation: bool,
        /// Trees without improvement of the held-out loss before stopping.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        early_stopping: Option<u32>,
    },
    /// How well a model the study registered predicts a boolean outcome:
    /// discrimination, calibration, threshold metrics and net benefit,
    /// overall and per level of each subgroup.
    ModelPerformance {
        /// The registered model's name.
        model: String,
        /// The approved hash of the model as registered: filled in by the
        /// coordinator when left out, and checked against the registered
        /// model when given.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        model_hash: String,
        /// The dictionary variables the model reads, filled in by the
        /// coordinator from the registration (every node checks them
        /// against the model it is sent).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        inputs: Vec<String>,
        outcome: String,
        /// Boolean or categorical variables to report every metric by.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        subgroups: Vec<String>,
        /// Risk thresholds for sensitivity, specificity, predictive values
        /// and net benefit (multiples of 0.0001).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        thresholds: Vec<f64>,
        /// Even bins of predicted risk for the calibration plot.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        calibration_bins: Option<u32>,
    },
}

impl Analysis {
    pub fn kind(&self) -> AnalysisKind {
        match self {
            Analysis::Count {} => AnalysisKind::Count,
            Analysis::Summary { .. } => AnalysisKind::Summary,
            Analysis::Histogram { .. } => AnalysisKind::Histogram,
            Analysis::Table { .. } => AnalysisKind::Table,
            Analysis::Glm { .. } => AnalysisKind::Glm,
            Analysis::Cox { .. } => AnalysisKind::Cox,
            Analysis::KaplanMeier { .. } => AnalysisKind::KaplanMeier,
            Analysis::Correlation { .. } => AnalysisKind::Correlation,
            Analysis::Quantiles { .. } => AnalysisKind::Quantiles,
            Analysis::TwoByTwo { .. } => AnalysisKind::TwoByTwo,
            Analysis::Gbdt { .. } => AnalysisKind::Gbdt,
            Analysis::ModelPerformance { .. } => AnalysisKind::ModelPerformance,
        }
    }

    pub fn variables(&self) -> Vec<&str> {
        match self {
            Analysis::Count {} => vec![],
            Analysis::Summary { variable }
            | Analysis::Histogram { variable, .. }
            | Analysis::Quantiles { variable, .. } => vec![variable],
            Analysis::Table { row, column } => vec![row, column],
            Analysis::TwoByTwo { exposure, outcome } => vec![exposure, outcome],
            Analysis::Glm {
                outcome,
                covariates,
                ..
            }
            | Analysis::Gbdt {
                outcome,
                covariates,
                ..
            } => std::iter::once(outcome.as_str())
                .chain(covariates.iter().map(String::as_str))
                .collect(),
            Analysis::Cox {
                time,
                event,
                covariates,
                ..
            } => [time.as_str(), event.as_str()]
                .into_iter()
                .chain(covariates.iter().map(String::as_str))
                .collect(),
            Analysis::KaplanMeier {
                time, event, group, ..
            } => [time.as_str(), event.as_str()]
                .into_iter()
                .chain(group.as_deref())
                .collect(),
            Analysis::Correlation { variables, .. } => {
                variables.iter().map(String::as_str).collect()
            }
            Analysis::ModelPerformance {
                inputs,
                outcome,
                subgroups,
                ..
            } => std::iter::once(outcome.as_str())
                .chain(subgroups.iter().map(String::as_str))
                .chain(inputs.iter().map(String::as_str))
                .collect(),
        }
    }

    /// What `variable` is to this analysis ("outcome", "covariate", ...),
    /// for messages; `None` when the analysis does not use it.
    pub fn role_of(&self, variable: &str) -> Option<&'static str> {
        let is = |name: &str| name == variable;
        let listed = |names: &[String]| names.iter().any(|n| is(n));
        match self {
            Analysis::Count {} => None,
            Analysis::Summary { variable: v }
            | Analysis::Histogram { variable: v, .. }
            | Analysis::Quantiles { variable: v, .. } => is(v).then_some("variable"),
            Analysis::Table { row, column } => {
                if is(row) {
                    Some("row")
                } else {
                    is(column).then_some("column")
                }
            }
            Analysis::TwoByTwo { exposure, outcome } => {
                if is(exposure) {
                    Some("exposure")
                } else {
                    is(outcome).then_some("outcome")
                }
            }
            Analysis::Glm {
                outcome,
                covariates,
                ..
            }
            | Analysis::Gbdt {
                outcome,
                covariates,
                ..
            } => {
                if is(outcome) {
                    Some("outcome")
                } else {
                    listed(covariates).then_some("covariate")
                }
            }
            Analysis::Cox {
                time,
                event,
                covariates,
                ..
            } => {
                if is(time) {
                    Some("time")
                } else if is(event) {
                    Some("event")
                } else {
                    listed(covariates).then_some("covariate")
                }
            }
            Analysis::KaplanMeier {
                time, event, group, ..
            } => {
                if is(time) {
                    Some("time")
                } else if is(event) {
                    Some("event")
                } else {
                    group.as_deref().is_some_and(is).then_some("group")
                }
            }
            Analysis::Correlation { variables, .. } => listed(variables).then_some("variable"),
            Analysis::ModelPerformance {
                inputs,
                outcome,
                subgroups,
                ..
            } => {
                if is(outcome) {
                    Some("outcome")
                } else if listed(subgroups) {
                    Some("subgroup")
                } else {
                    listed(inputs).then_some("model input")
                }
            }
        }
    }

    /// Convergence settings of an iterative fit, with the defaults filled in.
    pub fn fit_options(&self) -> Option<FitOptions> {
        match self {
            Analysis::Glm {
                tolerance,
                max_iterations,
                ..
            } => Some(FitOptions {
                tolerance: tolerance.unwrap_or(DEFAULT_GLM_TOLERANCE),
                max_iterations: max_iterations.unwrap_or(DEFAULT_GLM_MAX_ITERATIONS),
            }),
            Analysis::Cox {
                tolerance,
                max_iterations,
                ..
            } => Some(FitOptions {
                tolerance: tolerance.unwrap_or(DEFAULT_COX_TOLERANCE),
                max_iterations: max_iterations.unwrap_or(DEFAULT_COX_MAX_ITERATIONS),
            }),
            _ => None,
        }
    }

    /// A GBDT's settings, with the defaults filled in.
    pub fn gbdt_options(&self) -> Option<GbdtOptions> {
        let Analysis::Gbdt {
            loss,
            trees,
            depth,
            learning_rate,
            lambda,
            min_child_weight,
            validation,
            early_stopping,
            ..
        } = self
        else {
            return None;
        };
        Some(GbdtOptions {
            loss: *loss,
            trees: trees.unwrap_or(gbdt::DEFAULT_TREES),
            depth: depth.unwrap_or(gbdt::DEFAULT_DEPTH),
            learning_rate: learning_rate.unwrap_or(gbdt::DEFAULT_LEARNING_RATE),
            lambda: lambda.unwrap_or(gbdt::DEFAULT_LAMBDA),
            min_child_weight: min_child_weight.unwrap_or(gbdt::DEFAULT_MIN_CHILD_WEIGHT),
            validation: if *validation {
                gbdt::VALIDATION_SHARE
            } else {
                0.0
            },
            early_stopping: *early_stopping,
        })
    }

    /// A GBDT's features: its covariates cut at public thresholds.
    pub fn gbdt_features(&self, dict: &Dictionary) -> Result<Vec<gbdt::Feature>> {
        match self {
            Analysis::Gbdt {
                covariates,
                bins,
                edges,
                ..
            } => gbdt::features(dict, covariates, bins.unwrap_or(gbdt::DEFAULT_BINS), edges),
            other => Err(Error::internal(format!("a {} has no trees", other.kind()))),
        }
    }

    /// The design's columns of a regression model.
    pub fn terms(&self, dict: &Dictionary) -> Result<Vec<crate::models::design::Term>> {
        match self {
            Analysis::Glm {
                covariates,
                intercept,
                ..
            } => crate::models::design::terms(dict, covariates, *intercept),
            Analysis::Cox { covariates, .. } => {
                crate::models::design::terms(dict, covariates, false)
            }
            other => Err(Error::internal(format!(
                "a {} has no design matrix",
                other.kind()
            ))),
        }
    }

    /// The group labels of a Kaplan-Meier analysis ("all" without a group).
    pub fn survival_groups(&self, dict: &Dictionary) -> Result<Vec<String>> {
        match self {
            Analysis::KaplanMeier { group: Some(g), .. } => Ok(dict.get(g)?.levels()),
            Analysis::KaplanMeier { group: None, .. } => Ok(vec!["all".into()]),
            other => Err(Error::internal(format!("a {} has no groups", other.kind()))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Query {
    /// `None` means the whole study population.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cohort: Option<Cohort>,
    pub analysis: Analysis,
    /// Also answer for each site on its own, under the same disclosure
    /// control, next to the pooled answer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub by_site: bool,
    /// What the query may spend of its study's privacy budget (zCDP ρ);
    /// the study's `query_rho` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rho: Option<f64>,
}

impl Query {
    /// Parses a query from JSON, naming the problem when it does not fit.
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| {
            Error::invalid(format!(
                "query is not valid JSON for a Plexus query: {e} (see the book's query reference, docs/src/reference/query-format.md)"
            ))
        })
    }

    /// Every dictionary variable the query touches, sorted and unique.
    pub fn variables(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .analysis
            .variables()
            .into_iter()
            .map(str::to_string)
            .collect();
        if let Some(c) = &self.cohort {
            c.collect_variables(&mut out);
        }
        out.sort();
        out.dedup();
        out
    }

    /// Checks every variable, type, operator, bin edge and limit against the
    /// dictionary. Errors say what is wrong and how to fix it.
    pub fn validate(&self, dict: &Dictionary) -> Result<()> {
        // First, so that no later error echoes a control character.
        text::check_query(self)?;
        if let Some(c) = &self.cohort {
            let mut nodes = 0;
            c.validate(dict, 1, &mut nodes)?;
        }
        if let Some(rho) = self.rho {
            crate::dp::accountant::check_rho("the query's \"rho\"", rho)?;
        }
        validate::analysis(&self.analysis, dict)
    }

    /// Hash of the query's JSON form, naming it in logs and job envelopes.
    pub fn hash(&self) -> String {
        let bytes = serde_json::to_vec(self).expect("query serialises");
        crate::hash::sha256_hex(&bytes)
    }
}

impl Cohort {
    /// The variables the cohort's conditions read, sorted and unique.
    pub fn variables(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.collect_variables(&mut out);
        out.sort();
        out.dedup();
        out
    }

    fn collect_variables(&self, out: &mut Vec<String>) {
        match self {
            Cohort::And(items) | Cohort::Or(items) => {
                items.iter().for_each(|c| c.collect_variables(out))
            }
            Cohort::Not(c) => c.collect_variables(out),
            Cohort::Compare { variable, .. }
            | Cohort::In { variable, .. }
            | Cohort::IsNull { variable }
            | Cohort::NotNull { variable } => out.push(variable.clone()),
        }
    }
}

/// Parses an ISO calendar date.
pub fn parse_date(s: &str) -> Option<chrono::NaiveDate> {
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dict() -> Dictionary {
        Dictionary::cardiovascular()
    }

    #[test]
    fn parses_and_validates_example() {
        let q = Query::from_json(
            r#"{"cohort": {"and": [
                   {"compare": {"variable": "age", "op": ">=", "value": 65}},
                   {"in": {"variable": "smoking", "values": ["former", "current"]}},
                   {"not": {"is_null": {"variable": "bmi"}}},
                   {"compare": {"variable": "inclusion_date", "op": "<", "value": "2020-01-01"}}
                ]},
                "analysis": {"summary": {"variable": "sbp"}}}"#,
        )
        .unwrap();
        q.validate(&dict()).unwrap();
        assert_eq!(
            q.variables(),
            ["age", "bmi", "inclusion_date", "sbp", "smoking"]
        );
        let again = Query::from_json(&serde_json::to_string(&q).unwrap()).unwrap();
        assert_eq!(q, again);
        assert_eq!(q.hash(), again.hash());
    }

    fn err(json: &str) -> Error {
        match Query::from_json(json) {
            Err(e) => e,
            Ok(q) => q.validate(&dict()).unwrap_err(),
        }
    }

    #[test]
    fn bad_queries_are_explained() {
        assert!(err(r#"{"analysis": {"summary": {"variable": "sbpp"}}}"#)
            .message
            .contains("did you mean \"sbp\""));
        assert!(err(r#"{"analysis": {"summary": {"variable": "sex"}}}"#)
            .message
            .contains("needs a numeric variable"));
        assert!(err(r#"{"cohort": {"and": []}, "analysis": {"count": {}}}"#)
            .message
            .contains("empty \"and\""));
        assert!(
            err(r#"{"analysis": {"histogram": {"variable": "age", "edges": [50, 40]}}}"#)
                .message
                .contains("strictly increasing")
        );
        assert!(err(r#"{"cohort": {"compare": {"variable": "age", "op": ">", "value": "old"}}, "analysis": {"count": {}}}"#)
            .message
            .contains("cannot be compared"));
        assert!(err(r#"{"cohort": {"compare": {"variable": "sex", "op": ">", "value": "F"}}, "analysis": {"count": {}}}"#)
            .message
            .contains("only be compared with ="));
        assert!(err(r#"{"analysis": {"count": {}}, "extra": 1}"#)
            .message
            .contains("unknown field"));
        assert!(err(r#"{"analysis": {"count": {}"#)
            .message
            .contains("not valid JSON"));
        assert!(
            err(r#"{"analysis": {"table": {"row": "sex", "column": "sex"}}}"#)
                .message
                .contains("two different variables")
        );
    }

    #[test]
    fn control_characters_are_refused_naming_the_field() {
        let cases = [
            (
                r#"{"analysis": {"summary": {"variable": "age\u001b[2J"}}}"#,
                "analysis.summary.variable holds the control character U+001B",
            ),
            (
                r#"{"cohort": {"and": [{"is_null": {"variable": "bmi"}},
                     {"in": {"variable": "smoking", "values": ["former", "current\nforged"]}}]},
                   "analysis": {"count": {}}}"#,
                "cohort.and[1].in.values[1] holds the control character U+000A",
            ),
            (
                r#"{"cohort": {"not": {"compare": {"variable": "sex", "op": "=", "value": "F\u202e"}}},
                   "analysis": {"count": {}}}"#,
                "cohort.not.compare.value holds the control character U+202E",
            ),
            (
                r#"{"analysis": {"glm": {"family": "binomial", "outcome": "death",
                     "covariates": ["age", "\u0085sex"]}}}"#,
                "analysis.glm.covariates[1] holds the control character U+0085",
            ),
        ];
        for (json, expected) in cases {
            let e = err(json);
            assert_eq!(e.code, crate::ErrorCode::Invalid, "{e}");
            assert!(e.message.starts_with(expected), "{e}");
            assert!(!e.message.chars().any(crate::text::is_unsafe), "{e:?}");
        }
    }

    #[test]
    fn depth_is_limited() {
        let mut c = Cohort::IsNull {
            variable: "age".into(),
        };
        for _ in 0..MAX_COHORT_DEPTH + 1 {
            c = Cohort::Not(Box::new(c));
        }
        let q = Query {
            cohort: Some(c),
            analysis: Analysis::Count {},
            by_site: false,
            rho: None,
        };
        assert!(q.validate(&dict()).unwrap_err().message.contains("deeper"));
    }
}
