//! The researcher's query: a cohort (a boolean tree of conditions on
//! dictionary variables) and one analysis. Queries arrive as JSON from the
//! CLI or as protobuf on the wire; both become these types and are checked
//! against the dictionary before anything runs. Nothing is ever evaluated
//! as a string.

use serde::{Deserialize, Serialize};

use crate::dictionary::{Dictionary, VarType};
use crate::error::{Error, Result};

/// Deepest cohort tree accepted; deeper trees are refused before any work.
pub const MAX_COHORT_DEPTH: usize = 16;
/// Most conditions (leaves and branches) in one cohort tree.
pub const MAX_COHORT_NODES: usize = 256;
/// Most values in one `in` condition.
pub const MAX_SET_SIZE: usize = 256;
/// Most bins in one histogram.
pub const MAX_BINS: usize = 1000;

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
}

impl AnalysisKind {
    pub const ALL: [AnalysisKind; 4] = [
        AnalysisKind::Count,
        AnalysisKind::Summary,
        AnalysisKind::Histogram,
        AnalysisKind::Table,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AnalysisKind::Count => "count",
            AnalysisKind::Summary => "summary",
            AnalysisKind::Histogram => "histogram",
            AnalysisKind::Table => "table",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s.trim())
            .ok_or_else(|| {
                Error::invalid(format!(
                    "\"{s}\" is not an analysis (use count, summary, histogram or table)"
                ))
            })
    }
}

impl std::fmt::Display for AnalysisKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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
}

impl Analysis {
    pub fn kind(&self) -> AnalysisKind {
        match self {
            Analysis::Count {} => AnalysisKind::Count,
            Analysis::Summary { .. } => AnalysisKind::Summary,
            Analysis::Histogram { .. } => AnalysisKind::Histogram,
            Analysis::Table { .. } => AnalysisKind::Table,
        }
    }

    pub fn variables(&self) -> Vec<&str> {
        match self {
            Analysis::Count {} => vec![],
            Analysis::Summary { variable } | Analysis::Histogram { variable, .. } => {
                vec![variable]
            }
            Analysis::Table { row, column } => vec![row, column],
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
}

impl Query {
    /// Parses a query from JSON, naming the problem when it does not fit.
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| {
            Error::invalid(format!(
                "query is not valid JSON for a Plexus query: {e} (see the README's \"Query format\")"
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
        if let Some(c) = &self.cohort {
            let mut nodes = 0;
            c.validate(dict, 1, &mut nodes)?;
        }
        match &self.analysis {
            Analysis::Count {} => Ok(()),
            Analysis::Summary { variable } => numeric(dict, variable, "summary").map(|_| ()),
            Analysis::Histogram { variable, edges } => {
                numeric(dict, variable, "histogram")?;
                validate_edges(edges)
            }
            Analysis::Table { row, column } => {
                discrete(dict, row)?;
                discrete(dict, column)?;
                if row == column {
                    return Err(Error::invalid(format!(
                        "a table needs two different variables, got \"{row}\" twice"
                    )));
                }
                Ok(())
            }
        }
    }

    /// Hash of the query's JSON form, naming it in logs and job envelopes.
    pub fn hash(&self) -> String {
        let bytes = serde_json::to_vec(self).expect("query serialises");
        crate::hash::sha256_hex(&bytes)
    }
}

fn numeric<'a>(dict: &'a Dictionary, name: &str, what: &str) -> Result<&'a crate::Variable> {
    let v = dict.get(name)?;
    if !v.kind.is_numeric() {
        return Err(Error::invalid(format!(
            "a {what} needs a numeric variable, and \"{name}\" is {}",
            v.kind
        )));
    }
    Ok(v)
}

fn discrete(dict: &Dictionary, name: &str) -> Result<()> {
    let v = dict.get(name)?;
    if !v.kind.is_discrete() {
        return Err(Error::invalid(format!(
            "a table needs categorical or boolean variables, and \"{name}\" is {} (use a histogram for numeric variables)",
            v.kind
        )));
    }
    Ok(())
}

fn validate_edges(edges: &[f64]) -> Result<()> {
    if edges.len() < 2 {
        return Err(Error::invalid(
            "a histogram needs at least two bin edges, e.g. [40, 50, 60]",
        ));
    }
    if edges.len() > MAX_BINS + 1 {
        return Err(Error::invalid(format!(
            "a histogram may have at most {MAX_BINS} bins, got {}",
            edges.len() - 1
        )));
    }
    if let Some(bad) = edges.iter().find(|e| !e.is_finite()) {
        return Err(Error::invalid(format!(
            "bin edge {bad} is not a finite number"
        )));
    }
    if let Some(w) = edges.windows(2).find(|w| w[0] >= w[1]) {
        return Err(Error::invalid(format!(
            "bin edges must be strictly increasing, but {} is followed by {}",
            w[0], w[1]
        )));
    }
    Ok(())
}

impl Cohort {
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

    fn validate(&self, dict: &Dictionary, depth: usize, nodes: &mut usize) -> Result<()> {
        *nodes += 1;
        if depth > MAX_COHORT_DEPTH {
            return Err(Error::invalid(format!(
                "cohort is nested deeper than {MAX_COHORT_DEPTH} levels; flatten it"
            )));
        }
        if *nodes > MAX_COHORT_NODES {
            return Err(Error::invalid(format!(
                "cohort has more than {MAX_COHORT_NODES} conditions; simplify it"
            )));
        }
        match self {
            Cohort::And(items) | Cohort::Or(items) => {
                if items.is_empty() {
                    let op = if matches!(self, Cohort::And(_)) {
                        "and"
                    } else {
                        "or"
                    };
                    return Err(Error::invalid(format!(
                        "cohort has an empty \"{op}\"; give it at least one condition or leave the cohort out to select everyone"
                    )));
                }
                items
                    .iter()
                    .try_for_each(|c| c.validate(dict, depth + 1, nodes))
            }
            Cohort::Not(c) => c.validate(dict, depth + 1, nodes),
            Cohort::Compare {
                variable,
                op,
                value,
            } => {
                let var = dict.get(variable)?;
                if op.is_ordering() && var.kind.is_discrete() {
                    return Err(Error::invalid(format!(
                        "\"{variable}\" is {} and can only be compared with = or != (or \"in\")",
                        var.kind
                    )));
                }
                check_value(variable, var, value)
            }
            Cohort::In { variable, values } => {
                let var = dict.get(variable)?;
                if values.is_empty() {
                    return Err(Error::invalid(format!(
                        "\"in\" on \"{variable}\" lists no values"
                    )));
                }
                if values.len() > MAX_SET_SIZE {
                    return Err(Error::invalid(format!(
                        "\"in\" on \"{variable}\" lists more than {MAX_SET_SIZE} values"
                    )));
                }
                values
                    .iter()
                    .try_for_each(|v| check_value(variable, var, v))
            }
            Cohort::IsNull { variable } | Cohort::NotNull { variable } => {
                dict.get(variable).map(|_| ())
            }
        }
    }
}

fn check_value(name: &str, var: &crate::Variable, value: &Value) -> Result<()> {
    let ok = match (var.kind, value) {
        (VarType::Integer, Value::Integer(_)) => true,
        (VarType::Integer, Value::Float(x)) => x.is_finite(),
        (VarType::Float, Value::Integer(_)) => true,
        (VarType::Float, Value::Float(x)) => x.is_finite(),
        (VarType::Boolean, Value::Boolean(_)) => true,
        (VarType::Categorical, Value::Text(s)) => {
            if !var.categories.contains(s) {
                return Err(Error::invalid(format!(
                    "\"{s}\" is not a category of \"{name}\" (categories: {})",
                    var.categories.join(", ")
                )));
            }
            true
        }
        (VarType::Date, Value::Text(s)) => {
            if parse_date(s).is_none() {
                return Err(Error::invalid(format!(
                    "\"{s}\" is not a date for \"{name}\"; write dates as YYYY-MM-DD"
                )));
            }
            true
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        let want = match var.kind {
            VarType::Integer | VarType::Float => "a number",
            VarType::Boolean => "true or false",
            VarType::Categorical => "one of its categories as a string",
            VarType::Date => "a date string YYYY-MM-DD",
        };
        Err(Error::invalid(format!(
            "\"{name}\" is {} and cannot be compared with {value}; give {want}",
            var.kind
        )))
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
        };
        assert!(q.validate(&dict()).unwrap_err().message.contains("deeper"));
    }
}
