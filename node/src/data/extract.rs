//! Model variables of the consenting cohort as in-memory columns, for the
//! analyses whose arithmetic runs in Rust at the node (regression rounds,
//! survival counts, cross-products). The columns never leave this module's
//! callers: only the sums computed from them are released.

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast as arrow_cast;
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::prelude::DataFrame;
use plexus_core::models::design::{ColumnData, Columns, MISSING_LEVEL};
use plexus_core::{Dictionary, Error, Result, VarType};

use super::compile::Mapped;

/// Reads `variables` of every row of `df` into memory.
pub(crate) async fn columns(
    df: DataFrame,
    variables: &[(&str, &Mapped)],
    dict: &Dictionary,
) -> Result<Columns> {
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
        kinds.push((var.kind, var.levels(), m.column.clone()));
    }
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
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut out = Columns::new();
    for (i, ((name, _), (kind, levels, column))) in variables.iter().zip(kinds).enumerate() {
        let data = if kind.is_numeric() {
            let mut v = Vec::with_capacity(rows);
            for b in &batches {
                let a = b.column(i).as_primitive::<Float64Type>();
                v.extend((0..a.len()).map(|r| if a.is_null(r) { f64::NAN } else { a.value(r) }));
            }
            ColumnData::Numeric(v)
        } else {
            let mut v = Vec::with_capacity(rows);
            for b in &batches {
                let text = arrow_cast(b.column(i), &DataType::Utf8).map_err(|e| {
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
