//! A regression's disclosure rules in an exact study, decided at the node
//! on its complete cases before any round is computed (DataSHIELD's
//! nfilter.glm and nfilter.tab, and the two-way cells a model's sums
//! reveal). Under differential privacy the same rules run on the noised
//! first round instead (`privacy::decisions`).
//!
//! A rule looks at a variable's values at the node, not at its declared
//! type: a model's sums hold n, Σx and Σx² for every column (and Σx·y for
//! every pair), which give away how many patients hold each value of a
//! column that takes at most three values here, whatever the dictionary
//! calls it (a 0/1 flag declared `integer` is a boolean as far as
//! disclosure goes). Messages name the rule and the level, never a count.

use std::collections::BTreeMap;

use super::design::{ColumnData, Columns};
use crate::dictionary::Dictionary;
use crate::error::{Error, Result};

/// Most distinct values a numeric column may take at a node and still
/// have them counted by the moments a model releases.
pub const FEW_VALUES: usize = 3;

/// A model variable seen as levels over the complete cases.
struct Levels<'a> {
    name: &'a str,
    /// The level of each complete case, in `rows` order.
    of_row: Vec<usize>,
    /// The dictionary's level names, or `None` for a numeric column with
    /// few values (whose values are data and are never named).
    labels: Option<Vec<String>>,
    count: usize,
}

impl Levels<'_> {
    fn name_of(&self, level: usize) -> String {
        match &self.labels {
            Some(l) => format!("level \"{}\" of \"{}\"", l[level], self.name),
            None => format!(
                "a value of \"{}\" (it takes at most {FEW_VALUES} values at this node, so a model's sums reveal how many patients hold each)",
                self.name
            ),
        }
    }

    fn cell_of(&self, level: usize) -> String {
        match &self.labels {
            Some(l) => format!("\"{}\" = \"{}\"", self.name, l[level]),
            None => format!(
                "one value of \"{}\" (which takes at most {FEW_VALUES} values at this node)",
                self.name
            ),
        }
    }
}

/// `name` as levels when its column has them: a boolean or categorical
/// variable, or a numeric column with at most [`FEW_VALUES`] distinct
/// values among `rows`.
fn levels<'a>(
    dict: &Dictionary,
    columns: &Columns,
    rows: &[usize],
    name: &'a str,
) -> Result<Option<Levels<'a>>> {
    let column = columns
        .get(name)
        .ok_or_else(|| Error::internal(format!("model variable \"{name}\" was not extracted")))?;
    Ok(match column {
        ColumnData::Levels(values) => {
            let labels = dict.get(name)?.levels();
            let of_row = rows.iter().map(|&r| values[r] as usize).collect();
            Some(Levels {
                name,
                of_row,
                count: labels.len(),
                labels: Some(labels),
            })
        }
        ColumnData::Numeric(values) => {
            let mut distinct: BTreeMap<u64, usize> = BTreeMap::new();
            for &r in rows {
                let n = distinct.len();
                // -0.0 and 0.0 are one value.
                let v = values[r] + 0.0;
                distinct.entry(v.to_bits()).or_insert(n);
                if distinct.len() > FEW_VALUES {
                    return Ok(None);
                }
            }
            let of_row = rows
                .iter()
                .map(|&r| distinct[&(values[r] + 0.0).to_bits()])
                .collect();
            Some(Levels {
                name,
                of_row,
                count: distinct.len(),
                labels: None,
            })
        }
    })
}

/// The parameter-share and level rules: the model's parameters may not
/// exceed `max_share` of the complete cases, and every level of every
/// variable among `variables` that has levels (see [`levels`]) must hold
/// at least `k` of them.
pub fn check_disclosure(
    dict: &Dictionary,
    columns: &Columns,
    rows: &[usize],
    variables: &[&str],
    parameters: usize,
    max_share: f64,
    k: u32,
) -> Result<()> {
    if parameters as f64 > max_share * rows.len() as f64 {
        return Err(Error::disclosure(format!(
            "parameter-share rule: the model's {parameters} parameters are more than {max_share} of this node's complete cases (use fewer covariates or a wider cohort)"
        )));
    }
    for name in variables {
        let Some(l) = levels(dict, columns, rows, name)? else {
            continue;
        };
        let mut counts = vec![0u64; l.count];
        for &v in &l.of_row {
            if let Some(c) = counts.get_mut(v) {
                *c += 1;
            }
        }
        if let Some(i) = counts.iter().position(|&c| c < u64::from(k)) {
            return Err(Error::disclosure(format!(
                "level rule: {} has fewer than {k} of this node's complete cases (merge levels, drop \"{name}\" or widen the cohort)",
                l.name_of(i)
            )));
        }
    }
    Ok(())
}

/// The two-way rule: X'X at the starting weights holds every two-way
/// count between indicator columns, and the outcome's cross-tabulation
/// with each level follows from a fitted model. So every pair of levels
/// of two variables among `variables` that have levels must hold at least
/// `k` complete cases (an empty combination counts as under k, as a zero
/// count does everywhere).
pub fn check_cross_cells(
    dict: &Dictionary,
    columns: &Columns,
    rows: &[usize],
    variables: &[&str],
    k: u32,
) -> Result<()> {
    let mut discrete = Vec::new();
    for name in variables {
        if let Some(l) = levels(dict, columns, rows, name)? {
            discrete.push(l);
        }
    }
    for (i, a) in discrete.iter().enumerate() {
        for b in &discrete[i + 1..] {
            let width = b.count;
            let mut cells = vec![0u64; a.count * width];
            for (x, y) in a.of_row.iter().zip(&b.of_row) {
                if *x < a.count && *y < width {
                    cells[x * width + y] += 1;
                }
            }
            if let Some(cell) = cells.iter().position(|c| *c < u64::from(k)) {
                return Err(Error::disclosure(format!(
                    "two-way rule: fewer than {k} of this node's complete cases have {} and {}, which the model's sums would reveal (merge levels, drop one of the two variables or widen the cohort)",
                    a.cell_of(cell / width),
                    b.cell_of(cell % width)
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
        assert!(e.message.starts_with("parameter-share rule"), "{e}");
        // The rule and the public figures, never the node's count.
        assert!(!e.message.contains("10"), "{e}");
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
        cols.insert(
            "age".into(),
            ColumnData::Numeric((0..20).map(f64::from).collect()),
        );
        let rows: Vec<usize> = (0..20).collect();
        // Each level on its own has at least 5 patients...
        check_disclosure(&d, &cols, &rows, &["sex", "death", "age"], 2, 0.33, 5).unwrap();
        // ...but men who died are one.
        let e = check_cross_cells(&d, &cols, &rows, &["sex", "death", "age"], 5).unwrap_err();
        assert!(
            e.message
                .contains("\"sex\" = \"M\" and \"death\" = \"true\""),
            "{e}"
        );
        check_cross_cells(&d, &cols, &rows, &["sex", "death"], 1).unwrap();
    }

    #[test]
    fn a_flag_declared_numeric_is_a_level_variable_by_its_values() {
        let d = Dictionary::cardiovascular();
        let mut cols = Columns::new();
        // "age" holding 0/1: four patients with 1, as a declared integer.
        let mut flag = vec![0.0; 20];
        flag[..4].iter_mut().for_each(|v| *v = 1.0);
        cols.insert("age".into(), ColumnData::Numeric(flag.clone()));
        cols.insert(
            "sex".into(),
            ColumnData::Levels([vec![0; 10], vec![1; 10]].concat()),
        );
        let rows: Vec<usize> = (0..20).collect();
        let e = check_disclosure(&d, &cols, &rows, &["age"], 2, 0.33, 5).unwrap_err();
        assert!(
            e.message.starts_with("level rule: a value of \"age\""),
            "{e}"
        );
        // Neither the value nor the count is named.
        assert!(
            !e.message.contains('4') && !e.message.contains("\"1\""),
            "{e}"
        );
        // Its two-way cells with another level variable too: 0/1 × sex
        // with every level at least 5, but "1 and M" empty.
        let mut flag = vec![0.0; 20];
        flag[..6].iter_mut().for_each(|v| *v = 1.0);
        cols.insert("age".into(), ColumnData::Numeric(flag));
        check_disclosure(&d, &cols, &rows, &["age", "sex"], 2, 0.33, 5).unwrap();
        let e = check_cross_cells(&d, &cols, &rows, &["age", "sex"], 5).unwrap_err();
        assert!(e.message.starts_with("two-way rule"), "{e}");
        // A numeric column with more than three values is not a level
        // variable: its moments do not count its values.
        cols.insert(
            "age".into(),
            ColumnData::Numeric((0..20).map(|i| f64::from(i % 4)).collect()),
        );
        check_disclosure(&d, &cols, &rows, &["age"], 2, 0.33, 5).unwrap();
        check_cross_cells(&d, &cols, &rows, &["age", "sex"], 5).unwrap();
    }
}
