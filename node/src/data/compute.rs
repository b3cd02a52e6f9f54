//! Analyses as DataFusion aggregates: only aggregate rows come back from
//! the plan, never patient rows.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch};
use datafusion::arrow::compute::cast as arrow_cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use datafusion::functions_aggregate::count::count_all;
use datafusion::logical_expr::{create_udf, ColumnarValue, Volatility};
use datafusion::prelude::DataFrame;
use plexus_core::{Error, RawStats, Result, Variable};

use super::compile::Mapped;

type DfResult<T> = std::result::Result<T, DataFusionError>;

/// A plan that does not build is a bug here, not a problem with the data.
fn plan(df: DfResult<DataFrame>) -> Result<DataFrame> {
    df.map_err(|e| Error::internal(format!("cannot plan the query: {e}")))
}

/// Runs a plan. The engine's message may quote file content, so it stays
/// in the node's own log and the caller gets a message without it.
async fn collect(df: DataFrame) -> Result<Vec<RecordBatch>> {
    df.collect().await.map_err(|e| {
        tracing::warn!(error = %e, "query over the data file failed");
        Error::data(
            "the node could not read its data file while computing (see the node log; \
             if the file changed since start-up, check it and restart the node)",
        )
    })
}

pub(crate) async fn count_rows(df: DataFrame) -> Result<RawStats> {
    let batches = collect(plan(df.aggregate(vec![], vec![count_all().alias("n")]))?).await?;
    Ok(RawStats::Count(first_i64(&batches, 0) as u64))
}

/// Bin code of `x` on `edges`: `0..bins` for a bin (the last one closed on
/// the right), -1 below the first edge, `bins` above the last.
pub(crate) fn bin_code(edges: &[f64], x: f64) -> i64 {
    let bins = edges.len() as i64 - 1;
    // The edges at or below x. For the few edges of a histogram a count
    // without branches is faster than a binary search, whose branches the
    // data decides (a third of a node's time at a million patients).
    let le = if edges.len() <= 64 {
        edges.iter().map(|e| usize::from(*e <= x)).sum::<usize>() as i64
    } else {
        edges.partition_point(|e| *e <= x) as i64
    };
    if le == 0 {
        -1
    } else if le <= bins {
        le - 1
    } else if x == edges[edges.len() - 1] {
        bins - 1
    } else {
        bins
    }
}

pub(crate) async fn histogram(df: DataFrame, m: &Mapped, edges: &[f64]) -> Result<RawStats> {
    let bins = edges.len().saturating_sub(1);
    let owned: Arc<[f64]> = edges.into();
    let code = move |args: &[ColumnarValue]| -> DfResult<ColumnarValue> {
        Ok(match &args[0] {
            ColumnarValue::Array(a) => {
                let xs = a.as_primitive::<Float64Type>();
                let out: Int64Array = xs.unary_opt(|x| Some(bin_code(&owned, x)));
                ColumnarValue::Array(Arc::new(out) as ArrayRef)
            }
            ColumnarValue::Scalar(s) => {
                let x = match s {
                    ScalarValue::Float64(x) => *x,
                    _ => None,
                };
                ColumnarValue::Scalar(ScalarValue::Int64(x.map(|x| bin_code(&owned, x))))
            }
        })
    };
    let udf = create_udf(
        "plexus_bin",
        vec![DataType::Float64],
        DataType::Int64,
        Volatility::Immutable,
        Arc::new(code),
    );
    let x = m.as_f64();
    let grouped = df.filter(x.clone().is_not_null()).and_then(|df| {
        df.aggregate(
            vec![udf.call(vec![x]).alias("bin")],
            vec![count_all().alias("n")],
        )
    });
    let batches = collect(plan(grouped)?).await?;
    let mut counts = vec![0u64; bins];
    let (mut below, mut above) = (0u64, 0u64);
    for b in &batches {
        let codes = b.column(0).as_primitive::<Int64Type>();
        let ns = b.column(1).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            if codes.is_null(i) {
                continue;
            }
            let n = ns.value(i) as u64;
            match codes.value(i) {
                -1 => below += n,
                c if c >= 0 && (c as usize) < bins => counts[c as usize] += n,
                _ => above += n,
            }
        }
    }
    Ok(RawStats::Histogram {
        bins: counts,
        below,
        above,
    })
}

/// Counts per level pair, row-major over the dictionary's level order.
pub(crate) async fn table(
    df: DataFrame,
    (row, row_var): (&Mapped, &Variable),
    (col, col_var): (&Mapped, &Variable),
) -> Result<RawStats> {
    let (r, c) = (row.value(), col.value());
    // Group on the stored values (cheap keys) and turn the few group keys
    // into level names afterwards.
    let grouped = df
        .filter(r.clone().is_not_null().and(c.clone().is_not_null()))
        .and_then(|df| {
            df.aggregate(
                vec![r.alias("r"), c.alias("c")],
                vec![count_all().alias("n")],
            )
        });
    let batches = collect(plan(grouped)?).await?;
    let row_levels = row_var.levels();
    let col_levels = col_var.levels();
    let mut cells = vec![0u64; row_levels.len() * col_levels.len()];
    let text = |a: &ArrayRef| {
        arrow_cast(a, &DataType::Utf8)
            .map_err(|e| Error::internal(format!("cannot read the table's levels: {e}")))
    };
    for b in &batches {
        let (rs, cs) = (text(b.column(0))?, text(b.column(1))?);
        let (rs, cs) = (rs.as_string::<i32>(), cs.as_string::<i32>());
        let ns = b.column(2).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            let ri = level_index(&row_levels, rs.value(i), row)?;
            let ci = level_index(&col_levels, cs.value(i), col)?;
            cells[ri * col_levels.len() + ci] += ns.value(i) as u64;
        }
    }
    Ok(RawStats::Table {
        rows: row_levels.len() as u32,
        columns: col_levels.len() as u32,
        cells,
    })
}

/// Index of a stored value among a variable's dictionary levels.
pub(crate) fn level_index(levels: &[String], v: &str, m: &Mapped) -> Result<usize> {
    levels.iter().position(|l| l == v).ok_or_else(|| {
        Error::data(format!(
            "column \"{}\" holds a value that is not a level of the dictionary; \
             fix the data file or the mapping and restart the node",
            m.column
        ))
    })
}

fn first(batches: &[RecordBatch], col: usize) -> Option<&ArrayRef> {
    batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .map(|b| b.column(col))
}

fn first_i64(batches: &[RecordBatch], col: usize) -> i64 {
    first(batches, col)
        .map(|a| a.as_primitive::<Int64Type>())
        .filter(|a| !a.is_null(0))
        .map_or(0, |a| a.value(0))
}
