//! Start-up checks of the column mapping against the data file: every
//! mapped variable is in the dictionary, every mapped column is in the file
//! with a type that can hold the variable, and categories and text dates
//! hold only what the dictionary allows.

use std::collections::BTreeMap;
use std::path::Path;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::{DataType, Int64Type, Schema};
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::prelude::{cast, in_list, lit, try_cast, when, DataFrame, Expr};
use plexus_core::{Dictionary, Error, Result, VarType};

use super::compile::{column, is_float, is_int, is_string, Mapped};
use super::config::ColumnMapping;

/// Most offending values quoted in a start-up error.
const EXAMPLES: usize = 3;

/// Checks the mapping against the file's schema (no data read yet).
pub(crate) fn map_columns(
    dict: &Dictionary,
    columns: &BTreeMap<String, ColumnMapping>,
    schema: &Schema,
    path: &Path,
) -> Result<BTreeMap<String, Mapped>> {
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let mut out = BTreeMap::new();
    for (var, mapping) in columns {
        let col = &mapping.column;
        let v = dict.get(var).map_err(|e| {
            Error::invalid(format!(
                "data.columns maps \"{var}\" to column \"{col}\", but {}; fix or remove the line in node.toml",
                e.message
            ))
        })?;
        let field = schema.field_with_name(col).map_err(|_| {
            Error::data(format!(
                "variable \"{var}\" is mapped to column \"{col}\" which is not in {} (columns: {})",
                path.display(),
                names.join(", ")
            ))
        })?;
        let t = field.data_type();
        if mapping.booleans.is_some() && v.kind != VarType::Boolean {
            return Err(Error::invalid(format!(
                "data.columns.{var} declares true_values and false_values, but \"{var}\" is {}; only a boolean variable takes them, so remove them",
                v.kind
            )));
        }
        let ok = match v.kind {
            VarType::Integer => is_int(t),
            VarType::Float => is_int(t) || is_float(t),
            // Codes such as 0/1 or Y/N, read through the declared values.
            VarType::Boolean if mapping.booleans.is_some() => is_int(t) || is_string(t),
            VarType::Boolean => *t == DataType::Boolean,
            VarType::Categorical => is_string(t),
            VarType::Date => matches!(t, DataType::Date32 | DataType::Date64) || is_string(t),
        };
        if !ok {
            let want = match v.kind {
                VarType::Integer => "an integer column",
                VarType::Float => "a numeric column",
                VarType::Boolean if mapping.booleans.is_some() => {
                    "a text or integer column (its values are compared with true_values and false_values), or drop them to read a boolean column"
                }
                VarType::Boolean => {
                    "a boolean column (true/false), or declare the column's codes: data.columns.VAR = { column = \"...\", true_values = [\"1\"], false_values = [\"0\"] }"
                }
                VarType::Categorical => "a text column",
                VarType::Date => "a date column (YYYY-MM-DD)",
            };
            return Err(Error::data(format!(
                "variable \"{var}\" ({}) is mapped to column \"{col}\" in {}, which holds {t}; map it to {want} or convert the column",
                v.kind,
                path.display()
            )));
        }
        out.insert(
            var.clone(),
            Mapped {
                kind: v.kind,
                column: col.clone(),
                dtype: t.clone(),
                booleans: mapping.booleans.clone(),
            },
        );
    }
    Ok(out)
}

/// Checks that the id column exists and can be joined on.
pub(crate) fn check_id(schema: &Schema, id: &str, path: &Path) -> Result<DataType> {
    let field = schema.field_with_name(id).map_err(|_| {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        Error::data(format!(
            "data.patient_id names column \"{id}\" which is not in {} (columns: {})",
            path.display(),
            names.join(", ")
        ))
    })?;
    let t = field.data_type();
    if !(is_int(t) || is_string(t)) {
        return Err(Error::data(format!(
            "patient id column \"{id}\" in {} holds {t}; patient ids must be integers or text",
            path.display()
        )));
    }
    Ok(t.clone())
}

/// A condition no row may meet, and how to describe the rows that do.
struct Check<'a> {
    var: &'a str,
    mapped: &'a Mapped,
    bad: Expr,
    problem: &'static str,
}

fn checks<'a>(dict: &Dictionary, mapped: &'a BTreeMap<String, Mapped>) -> Vec<Check<'a>> {
    let mut out = Vec::new();
    for (var, m) in mapped {
        let c = column(&m.column);
        let (bad, problem) = match m.kind {
            VarType::Categorical => {
                let cats = dict.variables[var]
                    .categories
                    .iter()
                    .map(|s| lit(s.as_str()));
                let text = cast(c, DataType::Utf8);
                let bad = text
                    .clone()
                    .is_not_null()
                    .and(in_list(text, cats.collect(), true));
                (bad, "values that are not categories of the dictionary")
            }
            VarType::Boolean => match &m.booleans {
                Some(b) => {
                    let declared = b.declared().into_iter().map(lit).collect();
                    let text = cast(c, DataType::Utf8);
                    let bad = text
                        .clone()
                        .is_not_null()
                        .and(in_list(text, declared, true));
                    (bad, "values that are in none of its lists")
                }
                None => continue,
            },
            VarType::Date if is_string(&m.dtype) => {
                let bad = c
                    .clone()
                    .is_not_null()
                    .and(try_cast(c, DataType::Date32).is_null());
                (bad, "values that are not dates YYYY-MM-DD")
            }
            _ => continue,
        };
        out.push(Check {
            var,
            mapped: m,
            bad,
            problem,
        });
    }
    out
}

/// Scans the data once: every mapped column reads (a CSV date column with
/// "2020-02-30" fails here, not at the first query), every category is one
/// the dictionary lists, every text date parses.
pub(crate) async fn check_values(
    df: &DataFrame,
    dict: &Dictionary,
    mapped: &BTreeMap<String, Mapped>,
    path: &Path,
) -> Result<()> {
    let checks = checks(dict, mapped);
    let mut aggs: Vec<Expr> = mapped.values().map(|m| count(column(&m.column))).collect();
    aggs.extend(
        checks
            .iter()
            .map(|c| count(when(c.bad.clone(), lit(1)).end().expect("one branch"))),
    );
    if aggs.is_empty() {
        return Ok(());
    }
    let read_err = |e| Error::data(format!("cannot read {}: {e}", path.display()));
    let plan_err = |e| Error::internal(format!("cannot plan the start-up check: {e}"));
    let counts = df
        .clone()
        .aggregate(vec![], aggs)
        .map_err(plan_err)?
        .collect()
        .await
        .map_err(read_err)?;
    let Some(counts) = counts.iter().find(|b| b.num_rows() > 0) else {
        return Ok(());
    };
    for (i, check) in checks.iter().enumerate() {
        let failing = counts
            .column(mapped.len() + i)
            .as_primitive::<Int64Type>()
            .value(0);
        if failing == 0 {
            continue;
        }
        let found = df
            .clone()
            .filter(check.bad.clone())
            .and_then(|d| {
                d.select(vec![
                    cast(column(&check.mapped.column), DataType::Utf8).alias("v")
                ])
            })
            .and_then(|d| d.distinct())
            .and_then(|d| d.limit(0, Some(EXAMPLES)))
            .map_err(plan_err)?
            .collect()
            .await
            .map_err(read_err)?;
        let mut examples = Vec::new();
        for b in &found {
            let a = b.column(0).as_string::<i32>();
            examples.extend((0..b.num_rows()).map(|i| format!("\"{}\"", a.value(i))));
        }
        let allowed = match (check.mapped.kind, &check.mapped.booleans) {
            (VarType::Categorical, _) => {
                format!(
                    "; allowed: {}",
                    dict.variables[check.var].categories.join(", ")
                )
            }
            (VarType::Boolean, Some(b)) => format!(
                "; data.columns.{} declares {}: add each value to the list it belongs to (missing_values for unknowns)",
                check.var,
                b.described()
            ),
            _ => String::new(),
        };
        return Err(Error::data(format!(
            "variable \"{}\" is mapped to column \"{}\" in {}, which holds {} (e.g. {}{allowed}); fix the data or map another column",
            check.var,
            check.mapped.column,
            path.display(),
            check.problem,
            examples.join(", ")
        )));
    }
    Ok(())
}
