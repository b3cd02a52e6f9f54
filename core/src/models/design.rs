//! Design matrices from dictionary variables, built the same way at every
//! node so the columns of X'WX mean the same thing everywhere: numeric
//! variables as they are, booleans as an indicator of `true`, categorical
//! variables as indicators of every level but the first (the reference),
//! in the dictionary's order.
//!
//! At the node, model variables arrive as in-memory columns of the
//! consenting cohort ([`ColumnData`]); rows missing any model variable are
//! left out (complete cases) before anything is computed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dictionary::{Dictionary, VarType};
use crate::error::{Error, Result};

/// Marks a missing level in [`ColumnData::Levels`].
pub const MISSING_LEVEL: u32 = u32::MAX;

/// One column of the design matrix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Term {
    Intercept,
    Numeric {
        variable: String,
    },
    /// Indicator of one level (`"true"` for booleans).
    Level {
        variable: String,
        level: String,
        index: u32,
    },
}

impl Term {
    pub fn name(&self) -> String {
        match self {
            Term::Intercept => "(intercept)".into(),
            Term::Numeric { variable } => variable.clone(),
            Term::Level {
                variable, level, ..
            } => format!("{variable}={level}"),
        }
    }
}

/// The design's columns for `covariates`, in order, after an intercept
/// when asked for.
pub fn terms(dict: &Dictionary, covariates: &[String], intercept: bool) -> Result<Vec<Term>> {
    let mut out = Vec::new();
    if intercept {
        out.push(Term::Intercept);
    }
    for name in covariates {
        let v = dict.get(name)?;
        match v.kind {
            VarType::Integer | VarType::Float => out.push(Term::Numeric {
                variable: name.clone(),
            }),
            VarType::Boolean | VarType::Categorical => {
                for (i, level) in v.levels().into_iter().enumerate().skip(1) {
                    out.push(Term::Level {
                        variable: name.clone(),
                        level,
                        index: i as u32,
                    });
                }
            }
            VarType::Date => {
                return Err(Error::invalid(format!(
                    "\"{name}\" is a date and cannot be a covariate; use a numeric variable derived from it"
                )))
            }
        }
    }
    Ok(out)
}

/// A model variable's values for the cohort at one node. Numbers use NaN
/// for missing, levels use [`MISSING_LEVEL`]; level `i` is the `i`-th of
/// the dictionary's levels (false, true for booleans).
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnData {
    Numeric(Vec<f64>),
    Levels(Vec<u32>),
}

impl ColumnData {
    pub fn len(&self) -> usize {
        match self {
            ColumnData::Numeric(v) => v.len(),
            ColumnData::Levels(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_missing(&self, row: usize) -> bool {
        match self {
            ColumnData::Numeric(v) => !v[row].is_finite(),
            ColumnData::Levels(v) => v[row] == MISSING_LEVEL,
        }
    }

    /// The value as a number: the level index for levels.
    pub fn number(&self, row: usize) -> f64 {
        match self {
            ColumnData::Numeric(v) => v[row],
            ColumnData::Levels(v) => f64::from(v[row]),
        }
    }
}

/// Named columns, all of one length.
pub type Columns = BTreeMap<String, ColumnData>;

fn column<'a>(columns: &'a Columns, name: &str) -> Result<&'a ColumnData> {
    columns
        .get(name)
        .ok_or_else(|| Error::internal(format!("model variable \"{name}\" was not extracted")))
}

/// Rows with a value for every one of `variables`.
pub fn complete_rows(columns: &Columns, variables: &[&str]) -> Result<Vec<usize>> {
    let cols: Vec<&ColumnData> = variables
        .iter()
        .map(|v| column(columns, v))
        .collect::<Result<_>>()?;
    let n = cols.first().map_or(0, |c| c.len());
    if cols.iter().any(|c| c.len() != n) {
        return Err(Error::internal("model columns differ in length"));
    }
    Ok((0..n)
        .filter(|&r| cols.iter().all(|c| !c.is_missing(r)))
        .collect())
}

/// The design matrix (row-major, `rows.len() × terms.len()`) over `rows`.
pub fn design_matrix(terms: &[Term], columns: &Columns, rows: &[usize]) -> Result<Vec<f64>> {
    let p = terms.len();
    let mut x = vec![0.0; rows.len() * p];
    for (j, term) in terms.iter().enumerate() {
        match term {
            Term::Intercept => rows
                .iter()
                .enumerate()
                .for_each(|(i, _)| x[i * p + j] = 1.0),
            Term::Numeric { variable } => {
                let c = column(columns, variable)?;
                for (i, &r) in rows.iter().enumerate() {
                    x[i * p + j] = c.number(r);
                }
            }
            Term::Level {
                variable, index, ..
            } => match column(columns, variable)? {
                ColumnData::Levels(v) => {
                    for (i, &r) in rows.iter().enumerate() {
                        x[i * p + j] = f64::from(u8::from(v[r] == *index));
                    }
                }
                ColumnData::Numeric(_) => {
                    return Err(Error::internal(format!(
                        "\"{variable}\" was extracted as numbers, not levels"
                    )))
                }
            },
        }
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categorical_covariates_expand_to_indicators() {
        let d = Dictionary::cardiovascular();
        let t = terms(
            &d,
            &["age".into(), "smoking".into(), "diabetes".into()],
            true,
        )
        .unwrap();
        let names: Vec<String> = t.iter().map(Term::name).collect();
        assert_eq!(
            names,
            [
                "(intercept)",
                "age",
                "smoking=former",
                "smoking=current",
                "diabetes=true"
            ]
        );
        let mut cols = Columns::new();
        cols.insert(
            "age".into(),
            ColumnData::Numeric(vec![60.0, f64::NAN, 70.0]),
        );
        cols.insert("smoking".into(), ColumnData::Levels(vec![2, 0, 1]));
        cols.insert("diabetes".into(), ColumnData::Levels(vec![1, 1, 0]));
        let rows = complete_rows(&cols, &["age", "smoking", "diabetes"]).unwrap();
        assert_eq!(rows, [0, 2]);
        let x = design_matrix(&t, &cols, &rows).unwrap();
        assert_eq!(x, [1.0, 60.0, 0.0, 1.0, 1.0, 1.0, 70.0, 1.0, 0.0, 0.0]);
        assert!(terms(&d, &["inclusion_date".into()], true).is_err());
    }
}
