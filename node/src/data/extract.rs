//! Model variables of the consenting cohort as in-memory columns, for the
//! analyses whose arithmetic runs in Rust at the node (regression rounds,
//! survival counts, cross-products). The columns never leave this module's
//! callers: only the sums computed from them are released.

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::cast as arrow_cast;
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::prelude::{DataFrame, Expr};
use plexus_core::models::design::{ColumnData, Columns, MISSING_LEVEL};
use plexus_core::{Dictionary, Error, Result, VarType};

use super::compile::Mapped;

/// How one extracted column is turned into numbers or level indices.
pub(crate) struct Kind {
    kind: VarType,
    levels: Vec<String>,
    column: String,
}

/// The expressions that read `variables` (numbers as Float64, levels as
/// their stored value), aliased `v0`, `v1`, ..., and how to convert each.
pub(crate) fn plan(
    variables: &[(&str, &Mapped)],
    dict: &Dictionary,
) -> Result<(Vec<Expr>, Vec<Kind>)> {
    let mut exprs = Vec::with_capacity(variables.len());
    let mut kinds = Vec::with_capacity(variables.len());
    for (i, (name, m)) in variables.iter().enumerate() {
        let var = dict.get(name)?;
        let expr = match var.kind {
            VarType::Integer | VarType::Float => m.as_f64(),
            VarType::Boolean | VarType::Categorical => m.value(),
            VarType::Date => {
                return Err(Error::invalid(format!(
                    "\"{name}\" is a date and cannot be used in this analysis"
                )))
            }
        };
        exprs.push(expr.alias(format!("v{i}")));
        kinds.push(Kind {
            kind: var.kind,
            levels: var.levels(),
            column: m.column.clone(),
        });
    }
    Ok((exprs, kinds))
}

/// Reads `variables` of every row of `df` into memory.
pub(crate) async fn columns(
    df: DataFrame,
    variables: &[(&str, &Mapped)],
    dict: &Dictionary,
) -> Result<Columns> {
    let (exprs, kinds) = plan(variables, dict)?;
    let batches = df
        .select(exprs)
        .map_err(|e| Error::internal(format!("cannot plan the model variables: {e}")))?
        .collect()
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "reading model variables failed");
            Error::data(
                "the node could not read its data file while computing (see the node log; \
                 if the file changed since start-up, check it and restart the node)",
            )
        })?;
    let names: Vec<&str> = variables.iter().map(|(n, _)| *n).collect();
    let arrays: Vec<Vec<ArrayRef>> = (0..kinds.len())
        .map(|i| batches.iter().map(|b| b.column(i).clone()).collect())
        .collect();
    convert(&names, &kinds, &arrays)
}

/// Turns the arrays [`plan`]'s expressions produced (per variable, one
/// array per batch) into columns.
pub(crate) fn convert(names: &[&str], kinds: &[Kind], arrays: &[Vec<ArrayRef>]) -> Result<Columns> {
    let mut out = Columns::new();
    for ((name, k), parts) in names.iter().zip(kinds).zip(arrays) {
        let rows: usize = parts.iter().map(|a| a.len()).sum();
        let (levels, column) = (&k.levels, &k.column);
        let data = if k.kind.is_numeric() {
            let mut v = Vec::with_capacity(rows);
            for a in parts {
                let a = a.as_primitive::<Float64Type>();
                v.extend((0..a.len()).map(|r| if a.is_null(r) { f64::NAN } else { a.value(r) }));
            }
            ColumnData::Numeric(v)
        } else {
            let mut v = Vec::with_capacity(rows);
            for a in parts {
                let text = arrow_cast(a, &DataType::Utf8).map_err(|e| {
                    Error::internal(format!("cannot read the levels of \"{name}\": {e}"))
                })?;
                let text = text.as_string::<i32>();
                for r in 0..text.len() {
                    if text.is_null(r) {
                        v.push(MISSING_LEVEL);
                        continue;
                    }
                    let level = levels.iter().position(|l| l == text.value(r)).ok_or_else(|| {
                        Error::data(format!(
                            "column \"{column}\" holds a value that is not a level of the dictionary; \
                             fix the data file or the mapping and restart the node"
                        ))
                    })?;
                    v.push(level as u32);
                }
            }
            ColumnData::Levels(v)
        };
        out.insert(name.to_string(), data);
    }
    Ok(out)
}
