//! The patient table's columns kept in memory between jobs.
//!
//! Planning and running a DataFusion query costs about a millisecond even
//! on a few thousand rows, and every job paid it two or three times
//! (consent, the complement rule's count, the analysis) plus the Parquet
//! decoding. The node instead keeps the columns jobs use as Arrow arrays
//! within `data.memory_mib`, and answers a job by evaluating the same typed
//! expressions the scanning path plans ([`super::compile`]) directly on
//! those arrays: one pass, no plan, no file read.
//!
//! A column is read the first time a job needs it (the id column at
//! start-up, to join the consent records to the rows) and kept while it
//! fits: when a job needs columns that do not fit beside those kept, the
//! ones used longest ago go; a job whose own columns do not fit reads
//! them for itself and keeps none. A Parquet file gives one column without
//! decoding the others, so a node that is asked about three of its twelve
//! variables holds three. Consent stays decided per job (a withdrawal takes
//! effect on the next query) from the consent records joined to the rows
//! ([`super::selection`]), and the consenting rows are remembered per
//! purpose and day.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::NaiveDate;
use datafusion::arrow::array::{
    Array, ArrayRef, ArrowPrimitiveType, AsArray, BooleanArray, PrimitiveArray, RecordBatch,
};
use datafusion::arrow::array::{NullBufferBuilder, StringViewBuilder};
use datafusion::arrow::buffer::BooleanBuffer;
use datafusion::arrow::compute::{
    and, cast as arrow_cast, concat, filter_record_batch, prep_null_mask_filter,
};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Date64Type, Field, Float32Type, Float64Type, Int16Type, Int32Type,
    Int64Type, Int8Type, Schema, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use datafusion::common::DFSchema;
use datafusion::logical_expr::ColumnarValue;
use datafusion::prelude::{Expr, SessionContext};
use futures::StreamExt;
use plexus_core::models::design::Columns;
use plexus_core::stats::SummaryAcc;
use plexus_core::{Dictionary, Error, Purpose, RawStats, Result, VarType, Variable};

use super::compile::{column, Mapped};
use super::compute::{bin_code, level_index};
use super::config::DataFormat;
use super::consent::ConsentSource;
use super::extract;
use super::files::{read_error, stamp, FileStamp};
use super::saved::SavedJoin;
use super::selection::{ConsentRows, ConsentStamps};

/// Consent selections kept at once (one per purpose and day in use).
const CACHED_SELECTIONS: usize = 4;

/// Columns of one version of the data file, in file order.
pub(crate) struct Resident {
    ctx: SessionContext,
    table: String,
    path: PathBuf,
    format: DataFormat,
    /// The version of the file the columns are from.
    stamp: FileStamp,
    rows: usize,
    budget: usize,
    id_column: String,
    id_type: DataType,
    /// Where the consent join is saved for the next start, if anywhere.
    saved: Option<SavedJoin>,
    held: Mutex<Held>,
    /// One read of the file at a time.
    reading: tokio::sync::Mutex<()>,
    /// The consent records joined to these rows, for one version of the
    /// consent files; built by the first job after they change.
    consent: tokio::sync::Mutex<Option<Arc<ConsentRows>>>,
    /// Consenting rows per purpose and day, for `consent`'s version, most
    /// recently used first.
    selections: Mutex<Vec<((String, NaiveDate), BooleanArray)>>,
}

/// The columns kept, and when each was last used.
#[derive(Default)]
struct Held {
    columns: HashMap<String, (Arc<Field>, ArrayRef, u64)>,
    clock: u64,
}

impl Held {
    fn bytes(&self) -> usize {
        self.columns
            .values()
            .map(|(_, a, _)| a.get_array_memory_size())
            .sum()
    }
}

/// The consenting rows of a job's cohort: a row mask over the job's
/// columns. Only the columns an expression names are copied out.
pub(crate) struct Cohort {
    batch: RecordBatch,
    keep: BooleanArray,
    len: u64,
    /// The consenting patients, in the cohort or not (the study population
    /// of the complement rule).
    pub population: u64,
}

/// One column as the file's batches arrive. Numbers and dates are copied
/// into one buffer sized for the column, each batch let go at once: joining
/// the batches afterwards held the column twice, and the allocator kept the
/// batches' memory (a node's peak at a million patients was about 25 MiB
/// higher per column read). Text read as views (Parquet's strings) is
/// copied value by value into one column the same way: the batches' views
/// point into the decoded pages, which a kept batch holds on to (a first
/// start's peak was 16 MiB higher per node with the id column's batches
/// kept and joined). Other types are kept as batches and joined.
enum Gather {
    Numbers(Box<dyn NumberColumn>),
    Texts(StringViewBuilder),
    Pieces(Vec<ArrayRef>),
}

trait NumberColumn: Send {
    /// Appends `a`; false when it is not of this column's type.
    fn push(&mut self, a: &dyn Array) -> bool;
    fn finish(self: Box<Self>) -> ArrayRef;
}

struct Numbers<T: ArrowPrimitiveType> {
    values: Vec<T::Native>,
    nulls: NullBufferBuilder,
}

impl<T: ArrowPrimitiveType> NumberColumn for Numbers<T> {
    fn push(&mut self, a: &dyn Array) -> bool {
        let Some(a) = a.as_primitive_opt::<T>() else {
            return false;
        };
        self.values.extend_from_slice(a.values());
        match a.nulls() {
            Some(n) => self.nulls.append_buffer(n),
            None => self.nulls.append_n_non_nulls(a.len()),
        }
        true
    }

    fn finish(self: Box<Self>) -> ArrayRef {
        let Numbers { values, mut nulls } = *self;
        Arc::new(PrimitiveArray::<T>::new(values.into(), nulls.finish()))
    }
}

impl Gather {
    /// For a column of type `t` of about `rows` rows (0 when not known).
    fn new(t: &DataType, rows: usize) -> Self {
        fn numbers<T: ArrowPrimitiveType>(rows: usize) -> Gather {
            Gather::Numbers(Box::new(Numbers::<T> {
                values: Vec::with_capacity(rows),
                nulls: NullBufferBuilder::new(rows),
            }))
        }
        match t {
            DataType::Int8 => numbers::<Int8Type>(rows),
            DataType::Int16 => numbers::<Int16Type>(rows),
            DataType::Int32 => numbers::<Int32Type>(rows),
            DataType::Int64 => numbers::<Int64Type>(rows),
            DataType::UInt8 => numbers::<UInt8Type>(rows),
            DataType::UInt16 => numbers::<UInt16Type>(rows),
            DataType::UInt32 => numbers::<UInt32Type>(rows),
            DataType::UInt64 => numbers::<UInt64Type>(rows),
            DataType::Float32 => numbers::<Float32Type>(rows),
            DataType::Float64 => numbers::<Float64Type>(rows),
            DataType::Date32 => numbers::<Date32Type>(rows),
            DataType::Date64 => numbers::<Date64Type>(rows),
            DataType::Utf8View => Gather::Texts(StringViewBuilder::with_capacity(rows)),
            _ => Gather::Pieces(Vec::new()),
        }
    }

    fn push(&mut self, a: &ArrayRef) -> Result<()> {
        let other_type = || {
            Error::internal(format!(
                "a batch of the data file has type {} where the column had another",
                a.data_type()
            ))
        };
        match self {
            Gather::Numbers(n) => {
                if !n.push(a.as_ref()) {
                    return Err(other_type());
                }
            }
            Gather::Texts(b) => {
                let views = a.as_string_view_opt().ok_or_else(other_type)?;
                for v in views {
                    b.append_option(v);
                }
            }
            Gather::Pieces(p) => p.push(Arc::clone(a)),
        }
        Ok(())
    }

    fn finish(self, t: &DataType) -> Result<ArrayRef> {
        let whole = match self {
            Gather::Numbers(n) => return Ok(n.finish()),
            Gather::Texts(mut b) => return Ok(Arc::new(b.finish())),
            Gather::Pieces(p) => {
                let parts: Vec<&dyn Array> = p.iter().map(|a| a.as_ref()).collect();
                match parts.len() {
                    0 => datafusion::arrow::array::new_empty_array(t),
                    _ => concat(&parts).map_err(|e| {
                        Error::internal(format!("cannot join the column pieces: {e}"))
                    })?,
                }
            }
        };
        // Text read as views keeps the decoded pages it points into (an id
        // column of a million patients held 84 MiB): copy out what the
        // views use (16 MiB for short ids).
        Ok(match whole.as_string_view_opt() {
            Some(views) => Arc::new(views.gc()) as ArrayRef,
            None => whole,
        })
    }
}

/// Reads `names` of `table` whole, `rows` rows when known (0 when not).
async fn read_columns(
    ctx: &SessionContext,
    table: &str,
    (path, format): (&Path, DataFormat),
    names: &[String],
    rows: usize,
) -> Result<Vec<(Arc<Field>, ArrayRef)>> {
    let df = ctx
        .table(table)
        .await
        .map_err(|e| read_error("data file", path, format, e))?
        .select(names.iter().map(|n| column(n)).collect::<Vec<_>>())
        .map_err(|e| Error::internal(format!("cannot plan the column read: {e}")))?;
    let schema = Arc::new(df.schema().as_arrow().clone());
    let mut stream = df
        .execute_stream()
        .await
        .map_err(|e| read_error("data file", path, format, e))?;
    let mut columns: Vec<Gather> = schema
        .fields()
        .iter()
        .map(|f| Gather::new(f.data_type(), rows))
        .collect();
    while let Some(b) = stream.next().await {
        let b = b.map_err(|e| read_error("data file", path, format, e))?;
        for (g, c) in columns.iter_mut().zip(b.columns()) {
            g.push(c)?;
        }
    }
    schema
        .fields()
        .iter()
        .zip(columns)
        .map(|(field, g)| Ok((Arc::clone(field), g.finish(field.data_type())?)))
        .collect()
}

impl Resident {
    /// The rows of `table` (registered in `ctx`) from the file at `stamp`,
    /// ready to join consent: with the consent join saved for these files
    /// when there is one, else with the id column read. `None` when that
    /// alone takes more than `budget` bytes.
    pub async fn load(
        (ctx, table): (&SessionContext, &str),
        (path, format, stamp): (&Path, DataFormat, FileStamp),
        (id_column, id_type): (&str, &DataType),
        budget: usize,
        (consent, saved): (&ConsentSource, Option<&SavedJoin>),
    ) -> Result<Option<Resident>> {
        let resident = |rows: usize, held: Held, joined: Option<Arc<ConsentRows>>| Resident {
            ctx: ctx.clone(),
            table: table.to_string(),
            path: path.to_path_buf(),
            format,
            stamp,
            rows,
            budget,
            id_column: id_column.to_string(),
            id_type: id_type.clone(),
            saved: saved.cloned(),
            held: Mutex::new(held),
            reading: tokio::sync::Mutex::new(()),
            consent: tokio::sync::Mutex::new(joined),
            selections: Mutex::new(Vec::new()),
        };
        if let Some(saved) = saved {
            let stamps = consent.stamps()?;
            let key = join_key((path, &stamp), (id_column, id_type), consent, &stamps);
            let s = saved.clone();
            let loaded = tokio::task::spawn_blocking(move || s.load(&key, stamps))
                .await
                .map_err(|e| Error::internal(format!("loading the consent join failed: {e}")))?;
            if let Some(joined) = loaded.filter(|j| j.bytes() <= budget) {
                tracing::info!(
                    "consent join loaded from data.cache_dir (the files are as it was made from)"
                );
                return Ok(Some(resident(
                    joined.rows(),
                    Held::default(),
                    Some(Arc::new(joined)),
                )));
            }
        }
        let mut read =
            read_columns(ctx, table, (path, format), &[id_column.to_string()], 0).await?;
        let (field, ids) = read
            .pop()
            .ok_or_else(|| Error::internal("no id column read"))?;
        if ids.get_array_memory_size() > budget {
            return Ok(None);
        }
        let mut held = Held::default();
        held.columns
            .insert(id_column.to_string(), (field, Arc::clone(&ids), 0));
        Ok(Some(resident(ids.len(), held, None)))
    }

    /// Bytes held: columns and the joined consent records.
    pub fn bytes(&self) -> usize {
        let consent = self
            .consent
            .try_lock()
            .map_or(0, |c| c.as_ref().map_or(0, |c| c.bytes()));
        self.held.lock().expect("column lock").bytes() + consent
    }

    /// `names` (local columns) as one batch for a job: those kept, the
    /// others read from the file and kept when they fit beside the ones
    /// the job needs (the ones used longest ago make room).
    pub async fn columns(&self, names: &[String]) -> Result<RecordBatch> {
        let mut names: Vec<String> = names.to_vec();
        names.sort();
        names.dedup();
        let missing: Vec<String> = {
            let held = self.held.lock().expect("column lock");
            names
                .iter()
                .filter(|n| !held.columns.contains_key(*n))
                .cloned()
                .collect()
        };
        let mut read = Vec::new();
        if !missing.is_empty() {
            let _one = self.reading.lock().await;
            // Another job may have read them meanwhile.
            let missing: Vec<String> = {
                let held = self.held.lock().expect("column lock");
                missing
                    .into_iter()
                    .filter(|n| !held.columns.contains_key(n))
                    .collect()
            };
            if !missing.is_empty() {
                let started = std::time::Instant::now();
                read = read_columns(
                    &self.ctx,
                    &self.table,
                    (&self.path, self.format),
                    &missing,
                    self.rows,
                )
                .await?;
                // Columns of another version of the file must not meet these.
                let now = stamp(&self.path, "data file")?;
                if now != self.stamp || read.iter().any(|(_, a)| a.len() != self.rows) {
                    return Err(Error::data(
                        "the data file changed while the node read it; ask again (the next \
                         job reads the new file)",
                    ));
                }
                tracing::debug!(
                    columns = missing.join(","),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "columns read into memory"
                );
            }
        }
        let mut held = self.held.lock().expect("column lock");
        held.clock += 1;
        let clock = held.clock;
        let mut fields = Vec::with_capacity(names.len());
        let mut arrays = Vec::with_capacity(names.len());
        for n in &names {
            let (f, a) = match held.columns.get_mut(n) {
                Some(c) => {
                    c.2 = clock;
                    (Arc::clone(&c.0), Arc::clone(&c.1))
                }
                None => read
                    .iter()
                    .find(|(f, _)| f.name() == n)
                    .map(|(f, a)| (Arc::clone(f), Arc::clone(a)))
                    .ok_or_else(|| Error::internal(format!("column {n} was not read")))?,
            };
            fields.push(f);
            arrays.push(a);
        }
        // Keep what was read, making room from the columns used longest
        // ago; a job whose own columns exceed the budget keeps nothing new.
        if !read.is_empty() {
            let needed: usize = arrays.iter().map(|a| a.get_array_memory_size()).sum();
            if needed <= self.budget {
                for (f, a) in read {
                    held.columns.insert(f.name().clone(), (f, a, clock));
                }
                while held.bytes() > self.budget {
                    let oldest = held
                        .columns
                        .iter()
                        .filter(|(_, c)| c.2 != clock)
                        .min_by_key(|(_, c)| c.2)
                        .map(|(n, _)| n.clone());
                    match oldest {
                        Some(n) => held.columns.remove(&n),
                        None => break,
                    };
                }
            }
        }
        let rows =
            datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(self.rows));
        RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), arrays, &rows)
            .map_err(|e| Error::internal(format!("cannot assemble the job's columns: {e}")))
    }

    /// The consent records joined to these rows, for the consent files as
    /// they are now (joined again when they changed).
    pub async fn joined(&self, consent: &ConsentSource) -> Result<Arc<ConsentRows>> {
        let stamps = consent.stamps()?;
        let joined = {
            let mut slot = self.consent.lock().await;
            match slot.as_ref() {
                Some(c) if c.stamps == stamps => Arc::clone(c),
                _ => {
                    let ids = self.columns(std::slice::from_ref(&self.id_column)).await?;
                    let started = std::time::Instant::now();
                    let built = Arc::new(
                        ConsentRows::build(consent, stamps, ids.column(0), &self.id_type).await?,
                    );
                    drop(ids);
                    // Jobs do not read ids: they are read again when the
                    // consent files change.
                    self.held
                        .lock()
                        .expect("column lock")
                        .columns
                        .remove(&self.id_column);
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
                    if let Some(saved) = self
                        .saved
                        .clone()
                        .filter(|_| settled && self.stamp.settled())
                    {
                        let key = join_key(
                            (&self.path, &self.stamp),
                            (&self.id_column, &self.id_type),
                            consent,
                            &stamps,
                        );
                        let built = Arc::clone(&built);
                        // Off the job's path; the next start finds it.
                        tokio::task::spawn_blocking(move || saved.save(&key, &built));
                    }
                    // After the slot changed: a selection of the old version
                    // cached meanwhile goes too (see below).
                    self.selections.lock().expect("selection lock").clear();
                    built
                }
            }
        };
        Ok(joined)
    }

    /// Rows of patients whose consent covers `purpose` on `today` and who
    /// have not opted out, by the consent files as they are now.
    pub async fn consenting(
        &self,
        consent: &ConsentSource,
        purpose: &Purpose,
        today: NaiveDate,
    ) -> Result<BooleanArray> {
        let joined = self.joined(consent).await?;
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

impl Cohort {
    /// The consenting rows of `batch` (a job's columns, from
    /// [`Resident::columns`]) that satisfy `filter` (a compiled cohort; rows
    /// where it is unknown are left out, as in SQL).
    pub fn new(
        ctx: &SessionContext,
        batch: RecordBatch,
        consenting: BooleanArray,
        filter: Option<Expr>,
    ) -> Result<Cohort> {
        let mut keep = consenting;
        let population = keep.true_count() as u64;
        if let Some(f) = filter {
            let schema = DFSchema::try_from(batch.schema())
                .map_err(|e| Error::internal(format!("cannot describe the columns: {e}")))?;
            let matches = eval(ctx, &schema, f, &batch)?;
            let matches = matches
                .as_boolean_opt()
                .ok_or_else(|| Error::internal("a filter did not evaluate to true or false"))?;
            keep = and(&keep, matches)
                .map_err(|e| Error::internal(format!("cannot combine row masks: {e}")))?;
            if keep.null_count() > 0 {
                // Unknown is out, as in SQL: a plain mask walks faster.
                keep = prep_null_mask_filter(&keep);
            }
        }
        let len = keep.true_count() as u64;
        Ok(Cohort {
            batch,
            keep,
            len,
            population,
        })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// Evaluates `expr` over the cohort's rows of the columns it names
    /// (a summary reads one column of a dozen: the others are not copied).
    fn eval(&self, ctx: &SessionContext, expr: Expr) -> Result<ArrayRef> {
        let table = &self.batch;
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

    /// Calls `f` with the cohort's value of numeric variable `m` in each
    /// row where it is present, in row order, as `m.as_f64()` reads it.
    ///
    /// A column held as plain numbers is read in place through the row
    /// mask; other columns (codes, small floats) are evaluated from the
    /// expression. Reading in place skips copying the cohort's rows out and
    /// the cast: at 1,000,000 rows a summary took 2.3x as long that way
    /// (`plexus-bench peers`, see the commit).
    pub fn each_number(
        &self,
        ctx: &SessionContext,
        m: &Mapped,
        mut f: impl FnMut(f64),
    ) -> Result<()> {
        let plain = self.batch.column_by_name(&m.column).filter(|a| {
            let t = a.data_type();
            t == &m.dtype
                && m.booleans.is_none()
                && match m.kind {
                    VarType::Float => t == &DataType::Float64,
                    VarType::Integer => t.is_integer(),
                    _ => false,
                }
        });
        let Some(a) = plain else {
            let xs = self.eval(ctx, m.as_f64())?;
            xs.as_primitive::<Float64Type>()
                .iter()
                .flatten()
                .for_each(f);
            return Ok(());
        };
        let keep = self.keep.values();
        match a.data_type() {
            // NaN reads as missing.
            DataType::Float64 => each_in(
                a.as_primitive::<Float64Type>(),
                keep,
                |v| v,
                |x| {
                    if !x.is_nan() {
                        f(x)
                    }
                },
            ),
            DataType::Int64 => each_in(a.as_primitive::<Int64Type>(), keep, |v| v as f64, f),
            DataType::Int32 => each_in(a.as_primitive::<Int32Type>(), keep, |v| v as f64, f),
            DataType::Int16 => each_in(a.as_primitive::<Int16Type>(), keep, |v| v as f64, f),
            DataType::Int8 => each_in(a.as_primitive::<Int8Type>(), keep, |v| v as f64, f),
            DataType::UInt64 => each_in(a.as_primitive::<UInt64Type>(), keep, |v| v as f64, f),
            DataType::UInt32 => each_in(a.as_primitive::<UInt32Type>(), keep, |v| v as f64, f),
            DataType::UInt16 => each_in(a.as_primitive::<UInt16Type>(), keep, |v| v as f64, f),
            DataType::UInt8 => each_in(a.as_primitive::<UInt8Type>(), keep, |v| v as f64, f),
            t => return Err(Error::internal(format!("{t} read as a plain number"))),
        }
        Ok(())
    }

    /// A summary's sums, as [`SummarySums::of`] over the values
    /// [`extract::columns`] reads, in one pass.
    pub fn summary(
        &self,
        ctx: &SessionContext,
        (name, m, var): (&str, &Mapped, &Variable),
    ) -> Result<RawStats> {
        let mut acc = SummaryAcc::new(var, name);
        self.each_number(ctx, m, |x| acc.push(x))?;
        Ok(RawStats::Summary(acc.finish()))
    }

    /// Counts on public bin edges, as [`super::compute::histogram`].
    pub fn histogram(&self, ctx: &SessionContext, m: &Mapped, edges: &[f64]) -> Result<RawStats> {
        let bins = edges.len().saturating_sub(1);
        let mut counts = vec![0u64; bins];
        let (mut below, mut above) = (0u64, 0u64);
        self.each_number(ctx, m, |x| match bin_code(edges, x) {
            -1 => below += 1,
            c if c >= 0 && (c as usize) < bins => counts[c as usize] += 1,
            _ => above += 1,
        })?;
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

/// Calls `f` with `to_f64` of each present value of `a` in the rows `keep`
/// selects.
fn each_in<T: ArrowPrimitiveType>(
    a: &PrimitiveArray<T>,
    keep: &BooleanBuffer,
    to_f64: impl Fn(T::Native) -> f64,
    mut f: impl FnMut(f64),
) {
    let values = a.values();
    match a.nulls() {
        None => keep.set_indices().for_each(|i| f(to_f64(values[i]))),
        Some(nulls) => keep
            .set_indices()
            .filter(|&i| nulls.is_valid(i))
            .for_each(|i| f(to_f64(values[i]))),
    }
}

/// What a saved consent join must have been made from: the data file and
/// its id column, the consent and opt-out files, each path with its stamp.
fn join_key(
    (path, stamp): (&Path, &FileStamp),
    (id_column, id_type): (&str, &DataType),
    consent: &ConsentSource,
    stamps: &ConsentStamps,
) -> Vec<u8> {
    let mut key = format!(
        "data {}\n{stamp:?}\nid {id_column:?} {id_type}\n",
        path.display()
    );
    let consent_stamps = [Some(stamps.0), stamps.1];
    for (p, s) in consent.paths().into_iter().zip(consent_stamps) {
        key.push_str(&format!("consent {}\n{s:?}\n", p.display()));
    }
    key.into_bytes()
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::StringViewArray;

    use super::*;

    #[test]
    fn text_gathered_value_by_value_equals_the_batches_joined() {
        let long = "a patient id longer than twelve bytes";
        let batches: Vec<ArrayRef> = vec![
            Arc::new(StringViewArray::from(vec![Some("P1"), None, Some(long)])),
            Arc::new(StringViewArray::from(Vec::<Option<&str>>::new())),
            Arc::new(StringViewArray::from(vec![Some(""), Some("P0002"), None])),
        ];
        let mut g = Gather::new(&DataType::Utf8View, 0);
        for b in &batches {
            g.push(b).unwrap();
        }
        let got = g.finish(&DataType::Utf8View).unwrap();
        let parts: Vec<&dyn Array> = batches.iter().map(|a| a.as_ref()).collect();
        let want = concat(&parts).unwrap();
        assert_eq!(got.as_string_view(), want.as_string_view());
        assert_eq!(got.null_count(), 2);
        // A batch of another type is an error, not a wrong column.
        let ints: ArrayRef = Arc::new(PrimitiveArray::<Int64Type>::from(vec![1, 2]));
        let mut g = Gather::new(&DataType::Utf8View, 0);
        let e = g.push(&ints).unwrap_err();
        assert!(e.message.contains("has type Int64"), "{}", e.message);
    }
}
