//! The mapped columns of the patient table kept in memory between jobs.
//!
//! Planning and running a DataFusion query costs about a millisecond even
//! on a few thousand rows, and every job paid it two or three times
//! (consent, the complement rule's count, the analysis) plus the Parquet
//! decoding. The node instead reads the id column and the mapped columns
//! once per version of the data file, keeps them as Arrow arrays within
//! `data.memory_mib`, and answers a job by evaluating the same typed
//! expressions the scanning path plans ([`super::compile`], the consent
//! filter of [`super::ids`]) directly on those arrays: one pass, no plan,
//! no file read. Consent stays decided per job (a withdrawal takes effect
//! on the next query); the consenting rows are remembered per admitted set.
//!
//! A table larger than the budget is not kept: the node logs it once and
//! reads the file for every job, as before.

use std::path::Path;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::compute::{and, cast as arrow_cast, concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::common::DFSchema;
use datafusion::logical_expr::ColumnarValue;
use datafusion::prelude::{Expr, SessionContext};
use futures::StreamExt;
use plexus_core::models::design::Columns;
use plexus_core::{Dictionary, Error, RawStats, Result, Variable};

use super::compile::{column, Mapped};
use super::compute::{bin_code, level_index};
use super::config::DataFormat;
use super::extract;
use super::files::read_error;
use super::ids::IdSet;

/// Consenting-row masks kept at once (one per admitted set in use).
const CACHED_MASKS: usize = 4;

/// One version of the data file's mapped columns, in file order.
pub(crate) struct Resident {
    batch: RecordBatch,
    schema: DFSchema,
    /// Consenting rows per admitted set, most recently used first.
    masks: Mutex<Vec<(Arc<IdSet>, BooleanArray)>>,
}

/// The consenting rows of a job's cohort.
pub(crate) struct Cohort<'a> {
    table: &'a Resident,
    rows: RecordBatch,
    /// The consenting patients, in the cohort or not (the study population
    /// of the complement rule).
    pub population: u64,
}

impl Resident {
    /// Reads the id column and the mapped columns of `table` (registered in
    /// `ctx`); `None` when they take more than `budget` bytes.
    pub async fn load(
        ctx: &SessionContext,
        table: &str,
        (path, format): (&Path, DataFormat),
        id_column: &str,
        mapped: impl Iterator<Item = &Mapped>,
        budget: usize,
    ) -> Result<Option<Resident>> {
        let mut names: Vec<&str> = vec![id_column];
        for m in mapped {
            if !names.contains(&m.column.as_str()) {
                names.push(m.column.as_str());
            }
        }
        let df = ctx
            .table(table)
            .await
            .map_err(|e| read_error("data file", path, format, e))?;
        let df = df
            .select(names.iter().map(|n| column(n)).collect::<Vec<_>>())
            .map_err(|e| Error::internal(format!("cannot plan the column read: {e}")))?;
        let schema = Arc::new(df.schema().as_arrow().clone());
        let mut stream = df
            .execute_stream()
            .await
            .map_err(|e| read_error("data file", path, format, e))?;
        // Stops reading as soon as the budget is passed: a file far over
        // it is never held whole.
        let (mut batches, mut bytes) = (Vec::new(), 0usize);
        while let Some(b) = stream.next().await {
            let b = b.map_err(|e| read_error("data file", path, format, e))?;
            bytes += b.get_array_memory_size();
            if bytes > budget {
                return Ok(None);
            }
            batches.push(b);
        }
        let batch = concat_batches(&schema, &batches)
            .map_err(|e| Error::internal(format!("cannot join the column batches: {e}")))?;
        if batch.get_array_memory_size() > budget {
            return Ok(None);
        }
        let schema = DFSchema::try_from(batch.schema())
            .map_err(|e| Error::internal(format!("cannot describe the columns: {e}")))?;
        Ok(Some(Resident {
            batch,
            schema,
            masks: Mutex::new(Vec::new()),
        }))
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.batch.get_array_memory_size()
    }

    /// Evaluates an expression over the columns of `batch` (this table's
    /// rows or a subset of them), with DataFusion's type coercion.
    fn eval(&self, ctx: &SessionContext, expr: Expr, batch: &RecordBatch) -> Result<ArrayRef> {
        let physical = ctx
            .create_physical_expr(expr, &self.schema)
            .map_err(|e| Error::internal(format!("cannot plan an expression: {e}")))?;
        let value = physical
            .evaluate(batch)
            .and_then(|v: ColumnarValue| v.into_array(batch.num_rows()))
            .map_err(|e| {
                tracing::warn!(error = %e, "evaluating over the in-memory columns failed");
                Error::data(
                    "the node could not evaluate the query over its data (see the node log)",
                )
            })?;
        Ok(value)
    }

    fn mask(&self, ctx: &SessionContext, expr: Expr) -> Result<BooleanArray> {
        let a = self.eval(ctx, expr, &self.batch)?;
        a.as_boolean_opt()
            .cloned()
            .ok_or_else(|| Error::internal("a filter did not evaluate to true or false"))
    }

    /// Rows of patients in `admitted`, remembered per set.
    fn consenting(
        &self,
        ctx: &SessionContext,
        admitted: &Arc<IdSet>,
        id_column: &str,
        id_type: &DataType,
    ) -> Result<BooleanArray> {
        {
            let mut masks = self.masks.lock().expect("mask lock");
            if let Some(i) = masks.iter().position(|(s, _)| Arc::ptr_eq(s, admitted)) {
                let hit = masks.remove(i);
                let mask = hit.1.clone();
                masks.insert(0, hit);
                return Ok(mask);
            }
        }
        let mask = self.mask(ctx, admitted.filter(id_column, id_type))?;
        let mut masks = self.masks.lock().expect("mask lock");
        masks.insert(0, (Arc::clone(admitted), mask.clone()));
        masks.truncate(CACHED_MASKS);
        Ok(mask)
    }

    /// The consenting rows that satisfy `filter` (a compiled cohort; rows
    /// where it is unknown are left out, as in SQL).
    pub fn cohort(
        &self,
        ctx: &SessionContext,
        (admitted, id_column, id_type): (&Arc<IdSet>, &str, &DataType),
        filter: Option<Expr>,
    ) -> Result<Cohort<'_>> {
        let mut keep = self.consenting(ctx, admitted, id_column, id_type)?;
        let population = keep.true_count() as u64;
        if let Some(f) = filter {
            let matches = self.mask(ctx, f)?;
            keep = and(&keep, &matches)
                .map_err(|e| Error::internal(format!("cannot combine row masks: {e}")))?;
        }
        let rows = filter_record_batch(&self.batch, &keep)
            .map_err(|e| Error::internal(format!("cannot select the cohort's rows: {e}")))?;
        Ok(Cohort {
            table: self,
            rows,
            population,
        })
    }
}

impl Cohort<'_> {
    pub fn len(&self) -> u64 {
        self.rows.num_rows() as u64
    }

    fn eval(&self, ctx: &SessionContext, expr: Expr) -> Result<ArrayRef> {
        self.table.eval(ctx, expr, &self.rows)
    }

    /// `variables` of the cohort's rows, as [`extract::columns`] reads them.
    pub fn columns(
        &self,
        ctx: &SessionContext,
        variables: &[(&str, &Mapped)],
        dict: &Dictionary,
    ) -> Result<Columns> {
        let (exprs, kinds) = extract::plan(variables, dict)?;
        let arrays = exprs
            .into_iter()
            .map(|e| Ok(vec![self.eval(ctx, e)?]))
            .collect::<Result<Vec<_>>>()?;
        let names: Vec<&str> = variables.iter().map(|(n, _)| *n).collect();
        extract::convert(&names, &kinds, &arrays)
    }

    /// Counts on public bin edges, as [`super::compute::histogram`].
    pub fn histogram(&self, ctx: &SessionContext, m: &Mapped, edges: &[f64]) -> Result<RawStats> {
        let xs = self.eval(ctx, m.as_f64())?;
        let xs = xs.as_primitive::<Float64Type>();
        let bins = edges.len().saturating_sub(1);
        let mut counts = vec![0u64; bins];
        let (mut below, mut above) = (0u64, 0u64);
        for x in xs.iter().flatten() {
            match bin_code(edges, x) {
                -1 => below += 1,
                c if c >= 0 && (c as usize) < bins => counts[c as usize] += 1,
                _ => above += 1,
            }
        }
        Ok(RawStats::Histogram {
            bins: counts,
            below,
            above,
        })
    }

    /// Counts per level pair, as [`super::compute::table`].
    pub fn table(
        &self,
        ctx: &SessionContext,
        (row, row_var): (&Mapped, &Variable),
        (col, col_var): (&Mapped, &Variable),
    ) -> Result<RawStats> {
        let text = |a: ArrayRef| {
            arrow_cast(&a, &DataType::Utf8)
                .map_err(|e| Error::internal(format!("cannot read the table's levels: {e}")))
        };
        let rs = text(self.eval(ctx, row.value())?)?;
        let cs = text(self.eval(ctx, col.value())?)?;
        let (rs, cs) = (rs.as_string::<i32>(), cs.as_string::<i32>());
        let row_levels = row_var.levels();
        let col_levels = col_var.levels();
        let mut cells = vec![0u64; row_levels.len() * col_levels.len()];
        for i in 0..rs.len() {
            if rs.is_null(i) || cs.is_null(i) {
                continue;
            }
            let ri = level_index(&row_levels, rs.value(i), row)?;
            let ci = level_index(&col_levels, cs.value(i), col)?;
            cells[ri * col_levels.len() + ci] += 1;
        }
        Ok(RawStats::Table {
            rows: row_levels.len() as u32,
            columns: col_levels.len() as u32,
            cells,
        })
    }
}
