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

/// Disclosure check shared by the regression models: every level of every
/// discrete variable among `variables` must hold at least `k` of the
/// complete cases, and the number of parameters may not exceed
/// `max_share` of them (DataSHIELD's nfilter.glm).
pub fn check_disclosure(
    dict: &Dictionary,
    columns: &Columns,
    rows: &[usize],
    variables: &[&str],
    parameters: usize,
    max_share: f64,
    k: u32,
) -> Result<()> {
    let n = rows.len();
    if parameters as f64 > max_share * n as f64 {
        return Err(Error::disclosure(format!(
            "the model has {parameters} parameters and this node has {n} complete cases; \
             at most {max_share} of the cases may be parameters (use fewer covariates or a wider cohort)"
        )));
    }
    for name in variables {
        let var = dict.get(name)?;
        if !var.kind.is_discrete() {
            continue;
        }
        let ColumnData::Levels(values) = column(columns, name)? else {
            continue;
        };
        let levels = var.levels();
        let mut counts = vec![0u64; levels.len()];
        for &r in rows {
            if let Some(c) = counts.get_mut(values[r] as usize) {
                *c += 1;
            }
        }
        if let Some((i, _)) = counts.iter().enumerate().find(|(_, &c)| c < u64::from(k)) {
            return Err(Error::disclosure(format!(
                "level \"{}\" of \"{name}\" has fewer than {k} patients among this node's complete cases \
                 (merge levels, drop \"{name}\" or widen the cohort)",
                levels[i]
            )));
        }
    }
    Ok(())
}

/// Disclosure check of the joint counts a regression's sums can reveal:
/// X'X at the starting weights holds every two-way count between indicator
/// columns, and the outcome's cross-tabulation with each level follows
/// from a fitted model. So every pair of levels of two discrete variables
/// among `variables` must hold at least `k` complete cases (an empty
/// combination counts as under k, as a zero count does everywhere).
pub fn check_cross_cells(
    dict: &Dictionary,
    columns: &Columns,
    rows: &[usize],
    variables: &[&str],
    k: u32,
) -> Result<()> {
    let discrete: Vec<(&str, Vec<String>, &Vec<u32>)> = variables
        .iter()
        .filter_map(|name| {
            let var = dict.get(name).ok()?;
            match (var.kind.is_discrete(), columns.get(*name)) {
                (true, Some(ColumnData::Levels(v))) => Some((*name, var.levels(), v)),
                _ => None,
            }
        })
        .collect();
    for (i, (a, a_levels, a_values)) in discrete.iter().enumerate() {
        for (b, b_levels, b_values) in &discrete[i + 1..] {
            let width = b_levels.len();
            let mut cells = vec![0u64; a_levels.len() * width];
            for &r in rows {
                let (x, y) = (a_values[r] as usize, b_values[r] as usize);
                if x < a_levels.len() && y < width {
                    cells[x * width + y] += 1;
                }
            }
            if let Some(cell) = cells.iter().position(|c| *c < u64::from(k)) {
                return Err(Error::disclosure(format!(
                    "fewer than {k} of this node's complete cases have \"{a}\" = \"{}\" and \"{b}\" = \"{}\", \
                     which the model's sums would reveal (merge levels, drop one of the two variables or widen the cohort)",
                    a_levels[cell / width],
                    b_levels[cell % width]
                )));
            }
        }
    }
    Ok(())
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

    #[test]
    fn small_levels_and_too_many_parameters_are_refused() {
        let d = Dictionary::cardiovascular();
        let mut cols = Columns::new();
        cols.insert(
            "sex".into(),
            ColumnData::Levels(vec![0, 0, 0, 1, 1, 1, 1, 1, 1, 1]),
        );
        let rows: Vec<usize> = (0..10).collect();
        let e = check_disclosure(&d, &cols, &rows, &["sex"], 2, 0.33, 5).unwrap_err();
        assert!(e.message.contains("level \"F\" of \"sex\""), "{e}");
        let e = check_disclosure(&d, &cols, &rows, &["sex"], 4, 0.33, 1).unwrap_err();
        assert!(e.message.contains("4 parameters"), "{e}");
        check_disclosure(&d, &cols, &rows, &["sex"], 3, 0.33, 3).unwrap();
    }

    #[test]
    fn small_cross_cells_are_refused() {
        let d = Dictionary::cardiovascular();
        let mut cols = Columns::new();
        // Ten women and ten men; only one man died.
        cols.insert(
            "sex".into(),
            ColumnData::Levels([vec![0; 10], vec![1; 10]].concat()),
        );
        let mut death = vec![0; 20];
        death[..5].iter_mut().for_each(|d| *d = 1);
        death[10] = 1;
        cols.insert("death".into(), ColumnData::Levels(death));
        let rows: Vec<usize> = (0..20).collect();
        // Each level on its own has at least 5 patients...
        check_disclosure(&d, &cols, &rows, &["sex", "death"], 2, 0.33, 5).unwrap();
        // ...but men who died are one.
        let e = check_cross_cells(&d, &cols, &rows, &["sex", "death", "age"], 5).unwrap_err();
        assert!(
            e.message
                .contains("\"sex\" = \"M\" and \"death\" = \"true\""),
            "{e}"
        );
        check_cross_cells(&d, &cols, &rows, &["sex", "death"], 1).unwrap();
    }
}
