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

use chrono::NaiveDate;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::compute::{and, cast as arrow_cast, concat, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Float64Type};
use datafusion::common::DFSchema;
use datafusion::logical_expr::ColumnarValue;
use datafusion::prelude::{Expr, SessionContext};
use futures::StreamExt;
use plexus_core::models::design::Columns;
use plexus_core::{Dictionary, Error, Purpose, RawStats, Result, Variable};

use super::compile::{column, Mapped};
use super::compute::{bin_code, level_index};
use super::config::DataFormat;
use super::consent::ConsentSource;
use super::extract;
use super::files::read_error;
use super::selection::ConsentRows;

/// Consent selections kept at once (one per purpose and day in use).
const CACHED_SELECTIONS: usize = 4;

/// One version of the data file's mapped columns, in file order.
pub(crate) struct Resident {
    batch: RecordBatch,
    schema: DFSchema,
    id_column: String,
    id_type: DataType,
    /// The consent records joined to these rows, for one version of the
    /// consent files; built by the first job after they change.
    consent: tokio::sync::Mutex<Option<Arc<ConsentRows>>>,
    /// Consenting rows per purpose and day, for `consent`'s version, most
    /// recently used first.
    selections: Mutex<Vec<((String, NaiveDate), BooleanArray)>>,
}

/// The consenting rows of a job's cohort: a row mask over the table. Only
/// the columns an analysis reads are copied out, when it reads them.
pub(crate) struct Cohort<'a> {
    table: &'a Resident,
    keep: BooleanArray,
    len: u64,
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
        (id_column, id_type): (&str, &DataType),
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
        // Kept column by column, so that joining the pieces of one column
        // holds that column twice for a moment, not the whole table.
        let mut pieces: Vec<Vec<ArrayRef>> = vec![Vec::new(); schema.fields().len()];
        let mut bytes = 0usize;
        while let Some(b) = stream.next().await {
            let b = b.map_err(|e| read_error("data file", path, format, e))?;
            bytes += b.get_array_memory_size();
            if bytes > budget {
                return Ok(None);
            }
            for (p, c) in pieces.iter_mut().zip(b.columns()) {
                p.push(Arc::clone(c));
            }
        }
        let mut columns = Vec::with_capacity(pieces.len());
        for p in &mut pieces {
            let parts: Vec<&dyn Array> = p.iter().map(|a| a.as_ref()).collect();
            let whole = match parts.len() {
                0 => datafusion::arrow::array::new_empty_array(
                    schema.field(columns.len()).data_type(),
                ),
                _ => concat(&parts)
                    .map_err(|e| Error::internal(format!("cannot join the column pieces: {e}")))?,
            };
            drop(parts);
            p.clear();
            columns.push(whole);
        }
        let batch = RecordBatch::try_new(Arc::clone(&schema), columns)
            .map_err(|e| Error::internal(format!("cannot join the column batches: {e}")))?;
        if batch.get_array_memory_size() > budget {
            return Ok(None);
        }
        let schema = DFSchema::try_from(batch.schema())
            .map_err(|e| Error::internal(format!("cannot describe the columns: {e}")))?;
        Ok(Some(Resident {
            batch,
            schema,
            id_column: id_column.to_string(),
            id_type: id_type.clone(),
            consent: tokio::sync::Mutex::new(None),
            selections: Mutex::new(Vec::new()),
        }))
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.batch.get_array_memory_size()
    }

    /// Rows where a filter holds (unknown counts as not).
    fn mask(&self, ctx: &SessionContext, expr: Expr) -> Result<BooleanArray> {
        let a = eval(ctx, &self.schema, expr, &self.batch)?;
        a.as_boolean_opt()
            .cloned()
            .ok_or_else(|| Error::internal("a filter did not evaluate to true or false"))
    }

    /// Rows of patients whose consent covers `purpose` on `today` and who
    /// have not opted out, by the consent files as they are now.
    pub async fn consenting(
        &self,
        consent: &ConsentSource,
        purpose: &Purpose,
        today: NaiveDate,
    ) -> Result<BooleanArray> {
        let stamps = consent.stamps()?;
        let joined = {
            let mut slot = self.consent.lock().await;
            match slot.as_ref() {
                Some(c) if c.stamps == stamps => Arc::clone(c),
                _ => {
                    let id = self.batch.schema().index_of(&self.id_column).map_err(|e| {
                        Error::internal(format!("the id column is not in memory: {e}"))
                    })?;
                    let started = std::time::Instant::now();
                    let built = Arc::new(
                        ConsentRows::build(consent, stamps, self.batch.column(id), &self.id_type)
                            .await?,
                    );
                    tracing::debug!(
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        kib = built.bytes() / 1024,
                        "consent records joined to the rows in memory"
                    );
                    // A file written within the last moments could change
                    // again without changing its stamp: read it again next
                    // time until it has settled.
                    let settled = stamps.0.settled() && stamps.1.is_none_or(|s| s.settled());
                    *slot = settled.then(|| Arc::clone(&built));
                    // After the slot changed: a selection of the old version
                    // cached meanwhile goes too (see below).
                    self.selections.lock().expect("selection lock").clear();
                    built
                }
            }
        };
        let key = (purpose.to_string(), today);
        {
            let mut cache = self.selections.lock().expect("selection lock");
            if let Some(i) = cache.iter().position(|(k, _)| *k == key) {
                let hit = cache.remove(i);
                let rows = hit.1.clone();
                cache.insert(0, hit);
                return Ok(rows);
            }
        }
        let rows = joined.select(purpose, today);
        let mut cache = self.selections.lock().expect("selection lock");
        // Only selections of the consent version in the slot are kept.
        if self
            .consent
            .try_lock()
            .is_ok_and(|slot| slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, &joined)))
        {
            cache.insert(0, (key, rows.clone()));
            cache.truncate(CACHED_SELECTIONS);
        }
        Ok(rows)
    }

    /// The consenting rows that satisfy `filter` (a compiled cohort; rows
    /// where it is unknown are left out, as in SQL).
    pub fn cohort(
        &self,
        ctx: &SessionContext,
        consenting: BooleanArray,
        filter: Option<Expr>,
    ) -> Result<Cohort<'_>> {
        let mut keep = consenting;
        let population = keep.true_count() as u64;
        if let Some(f) = filter {
            let matches = self.mask(ctx, f)?;
            keep = and(&keep, &matches)
                .map_err(|e| Error::internal(format!("cannot combine row masks: {e}")))?;
        }
        let len = keep.true_count() as u64;
        Ok(Cohort {
            table: self,
            keep,
            len,
            population,
        })
    }
}

/// Evaluates an expression over `batch`, whose schema is `schema`, with
/// DataFusion's type coercion.
fn eval(
    ctx: &SessionContext,
    schema: &DFSchema,
    expr: Expr,
    batch: &RecordBatch,
) -> Result<ArrayRef> {
    let physical = ctx
        .create_physical_expr(expr, schema)
        .map_err(|e| Error::internal(format!("cannot plan an expression: {e}")))?;
    physical
        .evaluate(batch)
        .and_then(|v: ColumnarValue| v.into_array(batch.num_rows()))
        .map_err(|e| {
            tracing::warn!(error = %e, "evaluating over the in-memory columns failed");
            Error::data("the node could not evaluate the query over its data (see the node log)")
        })
}

impl Cohort<'_> {
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Evaluates `expr` over the cohort's rows of the columns it names
    /// (a summary reads one column of a dozen: the others are not copied).
    fn eval(&self, ctx: &SessionContext, expr: Expr) -> Result<ArrayRef> {
        let table = &self.table.batch;
        let mut indices = expr
            .column_refs()
            .into_iter()
            .map(|c| table.schema().index_of(&c.name))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::internal(format!("an expression names no column held: {e}")))?;
        indices.sort_unstable();
        let internal = |e: &dyn std::fmt::Display| {
            Error::internal(format!("cannot select the cohort's rows: {e}"))
        };
        let columns = table.project(&indices).map_err(|e| internal(&e))?;
        let rows = filter_record_batch(&columns, &self.keep).map_err(|e| internal(&e))?;
        let schema = DFSchema::try_from(rows.schema()).map_err(|e| internal(&e))?;
        eval(ctx, &schema, expr, &rows)
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
