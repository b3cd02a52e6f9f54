//! The node's embedded data source: a Parquet or CSV patient table read
//! through Apache DataFusion, restricted to consenting patients, answering
//! queries with aggregates only.
//!
//! Cohorts compile to typed DataFusion expressions on the mapped local
//! columns (no SQL text), consent is evaluated per query, and every analysis
//! runs as an aggregate inside DataFusion so no patient row leaves the plan.

mod booleans;
mod compile;
mod compute;
pub mod config;
mod consent;
mod extract;
mod files;
mod ids;
mod mapping;
mod models;
mod resident;
mod saved;
mod selection;
mod source;
#[cfg(test)]
mod tests;
pub mod warehouse;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use chrono::NaiveDate;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::{DataFrame, ParquetReadOptions, SessionContext};
use plexus_core::models::design::ColumnData;
use plexus_core::models::fit::Iteration;
use plexus_core::stats::SummarySums;
use plexus_core::{Analysis, Dictionary, Error, Purpose, Query, RawStats, Result};

pub use config::{BooleanValues, ColumnMapping, ConsentConfig, DataConfig, DataFormat, SourceKind};
pub use models::Limits;
pub use source::{DataSource, StudyScope};

use compile::Mapped;
use consent::ConsentSource;
use files::{csv_options, extension, path_str, read_error, stamp};
use resident::Resident;

const PATIENTS: &str = "patients";

/// The patient table, its mapping to the dictionary, and the consent
/// records that decide who may be counted.
pub struct FileSource {
    ctx: SessionContext,
    /// One partition: reads the file in its row order (see `open`).
    columns_ctx: SessionContext,
    dict: Arc<Dictionary>,
    path: PathBuf,
    format: DataFormat,
    id_column: String,
    id_type: DataType,
    mapped: BTreeMap<String, Mapped>,
    consent: ConsentSource,
    models: models::ModelCache,
    /// The study population's size for the last (purpose, day, snapshot).
    population: std::sync::Mutex<Option<(String, u64)>>,
    /// Bytes of mapped columns the node may keep in memory between jobs.
    memory_budget: usize,
    /// The columns in memory, for the data file's stamp; `None` beside a
    /// stamp when that version did not fit the budget.
    resident: tokio::sync::Mutex<Option<(files::FileStamp, Option<Arc<Resident>>)>>,
    /// Where the consent join is kept between runs (`data.cache_dir`).
    saved: Option<saved::SavedJoin>,
}

impl std::fmt::Debug for FileSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSource")
            .field("path", &self.path)
            .field("variables", &self.variables())
            .finish_non_exhaustive()
    }
}

impl FileSource {
    /// Opens and validates the data and consent files against the mapping
    /// and the dictionary; refuses to start with an error naming the
    /// variable, the column and the file when something does not fit.
    pub async fn open(
        data: &DataConfig,
        consent: &ConsentConfig,
        dict: Arc<Dictionary>,
    ) -> Result<Self> {
        data.validate()?;
        consent.validate()?;
        let started = Instant::now();
        let format = data.format()?;
        let path = data.path.clone();
        // Taken before anything is read: the value check below is of this
        // version of the file or a later one.
        let now = stamp(&path, "data file")?;
        let ctx = SessionContext::new();
        register(&ctx, &path, format, &data.patient_id).await?;
        // Columns kept in memory are read one or a few at a time, and must
        // line up row for row: one partition reads the file in its order.
        let columns_ctx = SessionContext::new_with_config(
            datafusion::prelude::SessionConfig::new().with_target_partitions(1),
        );
        register(&columns_ctx, &path, format, &data.patient_id).await?;
        // The start-up check reads every mapped column once; in one
        // partition it holds half the decoded pages at a time.
        let df = columns_ctx
            .table(PATIENTS)
            .await
            .map_err(|e| read_error("data file", &path, format, e))?;
        let schema = df.schema().as_arrow().clone();
        let id_type = mapping::check_id(&schema, &data.patient_id, &path)?;
        let mapped = mapping::map_columns(&dict, &data.columns, &schema, &path)?;
        // A restart on the same file, mapping and dictionary skips the
        // check it passed (see `saved`).
        let checked = data
            .cache_dir()
            .map(|d| saved::SavedCheck::in_dir(d, &path));
        let key = format!(
            "{}\n{now:?}\n{mapped:?}\n{}",
            path.display(),
            serde_json::to_string(dict.as_ref())
                .map_err(|e| Error::internal(format!("cannot write the dictionary: {e}")))?
        );
        if !checked.as_ref().is_some_and(|c| c.passed(&key)) {
            mapping::check_values(&df, &dict, &mapped, &path).await?;
            if let Some(c) = checked.filter(|_| now.settled()) {
                c.remember(&key);
            }
        }
        let consent = ConsentSource::open(consent).await?;
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "data source opened"
        );
        let source = FileSource {
            ctx,
            columns_ctx,
            dict,
            path,
            format,
            id_column: data.patient_id.clone(),
            id_type,
            mapped,
            consent,
            models: models::ModelCache::new(),
            population: std::sync::Mutex::new(None),
            memory_budget: data.memory_budget(),
            resident: tokio::sync::Mutex::new(None),
            saved: data
                .cache_dir()
                .map(|d| saved::SavedJoin::in_dir(d, &data.path)),
        };
        // Warm: the first job finds the columns in memory.
        source.resident().await?;
        Ok(source)
    }

    /// Variables this node can answer about (the mapped ones).
    pub fn variables(&self) -> Vec<String> {
        self.mapped.keys().cloned().collect()
    }

    /// Changes whenever the data, consent or opt-out file changes.
    pub fn snapshot(&self) -> Result<String> {
        let mut text = String::new();
        let files = [(self.path.as_path(), "data file")].into_iter().chain(
            self.consent
                .paths()
                .into_iter()
                .map(|p| (p, "consent file")),
        );
        for (p, what) in files {
            let s = stamp(p, what)?;
            text.push_str(&format!("{}\0{}\0{}\n", p.display(), s.len, s.modified_ns));
        }
        Ok(plexus_core::hash::sha256_hex(text.as_bytes()))
    }

    /// Runs one query (or one round of an iterative fit) for a study with
    /// purpose `purpose`, counting only patients whose consent covers it on
    /// `today`. Regression data is checked against `limits` before any
    /// round is computed. Answers from the columns in memory when the data
    /// file fits `data.memory_mib`, by scanning it otherwise; both give the
    /// same answer.
    pub async fn compute(
        &self,
        query: &Query,
        purpose: &Purpose,
        today: NaiveDate,
        limits: Limits,
        iteration: Option<&Iteration>,
    ) -> Result<RawStats> {
        query.validate(&self.dict)?;
        for v in query.variables() {
            self.lookup(&v)?;
        }
        let started = Instant::now();
        let analysis = &query.analysis;
        let resident = self.resident().await?;
        if analysis.kind().is_iterative() {
            let it = iteration.ok_or_else(|| {
                Error::invalid("a regression job carries no iteration (round and coefficients)")
            })?;
            // The limits are part of the key: data checked under a smaller k
            // is never reused for a job that asks a larger one.
            let key = format!(
                "{}\0{purpose}\0{today}\0{}\0{}\0{}\0{}",
                query.hash(),
                self.snapshot()?,
                limits.k,
                limits.max_parameter_share,
                limits.private
            );
            let prepared = match self.models.get(&key) {
                Some(p) => p,
                None => {
                    let vars = self.mapped_variables(analysis)?;
                    let rows = self
                        .rows(resident.as_deref(), query, purpose, today, limits)
                        .await?;
                    let columns = rows.columns(&self.ctx, &vars, &self.dict).await?;
                    let (a, d, i) = (analysis.clone(), self.dict.clone(), it.clone());
                    let prepared =
                        blocking(move || models::prepare(&a, &d, &columns, limits, &i)).await?;
                    let prepared = Arc::new(prepared);
                    self.models.put(key, prepared.clone());
                    prepared
                }
            };
            let (a, it) = (analysis.clone(), it.clone());
            let out = blocking(move || models::round(&prepared, &a, &it, limits)).await?;
            tracing::debug!(
                analysis = %analysis.kind(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "model round computed"
            );
            return Ok(out);
        }
        let rows = self
            .rows(resident.as_deref(), query, purpose, today, limits)
            .await?;
        let out = self.once(rows, analysis, limits).await?;
        tracing::debug!(
            analysis = %analysis.kind(),
            in_memory = resident.is_some(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "query computed"
        );
        Ok(out)
    }

    /// Bytes of columns kept between jobs (0 while loading).
    pub fn in_memory_bytes(&self) -> usize {
        self.resident.try_lock().map_or(0, |slot| {
            slot.as_ref()
                .and_then(|(_, t)| t.as_ref())
                .map_or(0, |t| t.bytes())
        })
    }

    /// The columns in memory for the data file as it is now, read when it
    /// changed; `None` when they do not fit the budget (said once per
    /// version of the file) or the budget is 0.
    async fn resident(&self) -> Result<Option<Arc<Resident>>> {
        if self.memory_budget == 0 {
            return Ok(None);
        }
        let now = stamp(&self.path, "data file")?;
        let mut slot = self.resident.lock().await;
        if let Some((s, table)) = slot.as_ref() {
            if *s == now {
                return Ok(table.clone());
            }
        }
        let started = Instant::now();
        let table = Resident::load(
            (&self.columns_ctx, PATIENTS),
            (&self.path, self.format, now),
            (&self.id_column, &self.id_type),
            self.memory_budget,
            (&self.consent, self.saved.as_ref()),
        )
        .await?
        .map(Arc::new);
        match &table {
            Some(t) => {
                // Warm: the consent records joined to the rows before the
                // first job asks (a consent file with a bad record is
                // reported by that job, naming the line).
                if let Err(e) = t.joined(&self.consent).await {
                    tracing::debug!(error = %e.message, "consent not joined at start");
                }
                tracing::info!(
                    mib = format!("{:.1}", t.bytes() as f64 / (1024.0 * 1024.0)),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "consent joined to the data file's rows; other columns are read when a job first needs them"
                )
            }
            None => tracing::warn!(
                budget_mib = self.memory_budget / (1024 * 1024),
                "the data file's id column does not fit data.memory_mib; \
                 every job reads the file (raise data.memory_mib to keep columns in memory)"
            ),
        }
        // A file written within the last moments could change again without
        // changing its stamp: keep re-reading it until it has settled.
        *slot = now.settled().then(|| (now, table.clone()));
        Ok(table)
    }

    /// The consenting rows of the query's cohort, after the complement rule
    /// of an exact study: from the columns in `table`, or planned over the
    /// file when there is none.
    async fn rows(
        &self,
        table: Option<&Resident>,
        query: &Query,
        purpose: &Purpose,
        today: NaiveDate,
        limits: Limits,
    ) -> Result<Rows> {
        let Some(table) = table else {
            let counted = self.check_complement(query, purpose, today, limits).await?;
            let df = self.cohort(query, purpose, today).await?;
            return Ok(Rows::File { df, counted });
        };
        let consenting = table.consenting(&self.consent, purpose, today).await?;
        let filter = match &query.cohort {
            Some(c) => Some(compile::compile(c, &|v| self.lookup(v))?),
            None => None,
        };
        // The columns the cohort and the analysis read, and no others.
        let mut names: Vec<String> = filter
            .iter()
            .flat_map(|f| f.column_refs())
            .map(|c| c.name.clone())
            .collect();
        for (_, m) in self.mapped_variables(&query.analysis)? {
            names.push(m.column.clone());
        }
        let batch = table.columns(&names).await?;
        let cohort = resident::Cohort::new(&self.ctx, batch, consenting, filter)?;
        if query.cohort.is_some() && !limits.private {
            plexus_core::disclosure::complement(cohort.population, cohort.len(), limits.k)?;
        }
        Ok(Rows::Memory(cohort))
    }

    /// A one-round analysis over the cohort's rows.
    async fn once(&self, rows: Rows, analysis: &Analysis, limits: Limits) -> Result<RawStats> {
        let ctx = &self.ctx;
        Ok(match analysis {
            Analysis::Count {} => RawStats::Count(rows.count().await?),
            Analysis::Summary { variable } => {
                let m = self.lookup(variable)?;
                if let Rows::Memory(c) = &rows {
                    return c.summary(ctx, (variable, m, self.dict.get(variable)?));
                }
                let vars = [(variable.as_str(), m)];
                let columns = rows.columns(ctx, &vars, &self.dict).await?;
                self.summary(variable, &columns)?
            }
            Analysis::Histogram { variable, edges }
            | Analysis::Quantiles {
                variable, edges, ..
            } => rows.histogram(ctx, self.lookup(variable)?, edges).await?,
            Analysis::Table { row, column }
            | Analysis::TwoByTwo {
                exposure: row,
                outcome: column,
            } => {
                let r = (self.lookup(row)?, self.dict.get(row)?);
                let c = (self.lookup(column)?, self.dict.get(column)?);
                rows.table(ctx, r, c).await?
            }
            Analysis::KaplanMeier { .. } | Analysis::Correlation { .. } => {
                let vars = self.mapped_variables(analysis)?;
                let columns = rows.columns(ctx, &vars, &self.dict).await?;
                survival_or_pairs(analysis, &self.dict, columns, limits.private).await?
            }
            Analysis::Glm { .. }
            | Analysis::Cox { .. }
            | Analysis::Gbdt { .. }
            | Analysis::ModelPerformance { .. } => {
                return Err(Error::internal("regressions are computed round by round"))
            }
        })
    }

    /// A summary's sums from its column: the noised release needs clamped
    /// fixed-point sums and the dominance rule the largest values.
    fn summary(
        &self,
        variable: &str,
        columns: &plexus_core::models::design::Columns,
    ) -> Result<RawStats> {
        let Some(ColumnData::Numeric(values)) = columns.get(variable) else {
            return Err(Error::internal(
                "a summary variable was not read as numbers",
            ));
        };
        let var = self.dict.get(variable)?;
        Ok(RawStats::Summary(SummarySums::of(var, variable, values)))
    }

    /// The complement rule of an exact study
    /// ([`plexus_core::disclosure::complement`]); returns the cohort's size
    /// when it counted it. Under differential privacy nothing is decided.
    async fn check_complement(
        &self,
        query: &Query,
        purpose: &Purpose,
        today: NaiveDate,
        limits: Limits,
    ) -> Result<Option<u64>> {
        if query.cohort.is_none() || limits.private {
            return Ok(None);
        }
        let population = self.population(purpose, today).await?;
        let RawStats::Count(cohort) =
            compute::count_rows(self.cohort(query, purpose, today).await?).await?
        else {
            return Err(Error::internal("a count returned something else"));
        };
        plexus_core::disclosure::complement(population, cohort, limits.k)?;
        Ok(Some(cohort))
    }

    /// How many patients the study may count here today (cached per
    /// purpose, day and data snapshot).
    async fn population(&self, purpose: &Purpose, today: NaiveDate) -> Result<u64> {
        let key = format!("{purpose}\0{today}\0{}", self.snapshot()?);
        if let Some((k, n)) = self.population.lock().expect("population lock").as_ref() {
            if *k == key {
                return Ok(*n);
            }
        }
        let RawStats::Count(n) =
            compute::count_rows(self.consenting(purpose, today).await?).await?
        else {
            return Err(Error::internal("a count returned something else"));
        };
        *self.population.lock().expect("population lock") = Some((key, n));
        Ok(n)
    }

    /// The consenting patients in the query's cohort.
    async fn cohort(
        &self,
        query: &Query,
        purpose: &Purpose,
        today: NaiveDate,
    ) -> Result<DataFrame> {
        let df = self.consenting(purpose, today).await?;
        match &query.cohort {
            Some(c) => {
                let filter = compile::compile(c, &|v| self.lookup(v))?;
                df.filter(filter)
                    .map_err(|e| Error::internal(format!("cannot plan the cohort: {e}")))
            }
            None => Ok(df),
        }
    }

    fn mapped_variables<'a>(
        &'a self,
        analysis: &'a Analysis,
    ) -> Result<Vec<(&'a str, &'a Mapped)>> {
        analysis
            .variables()
            .into_iter()
            .map(|v| Ok((v, self.lookup(v)?)))
            .collect()
    }

    fn lookup(&self, variable: &str) -> Result<&Mapped> {
        self.mapped.get(variable).ok_or_else(|| {
            Error::data(format!(
                "variable \"{variable}\" is not mapped at this node (the hospital can add it under [data.columns] in node.toml; otherwise leave it out of the query)"
            ))
        })
    }

    /// The patient table restricted to patients whose consent covers the
    /// purpose today and who have not opted out.
    async fn consenting(&self, purpose: &Purpose, today: NaiveDate) -> Result<DataFrame> {
        let admitted = self.consent.admitted(purpose, today, &self.id_type).await?;
        self.ctx
            .table(PATIENTS)
            .await
            .map_err(|e| read_error("data file", &self.path, self.format, e))?
            .filter(admitted.filter(&self.id_column, &self.id_type))
            .map_err(|e| Error::internal(format!("cannot plan the consent filter: {e}")))
    }
}

/// The consenting rows of one job's cohort: selected from the columns in
/// memory, or a plan over the data file (with the cohort's size when the
/// complement rule counted it). Each analysis reads them the same way
/// from either.
enum Rows {
    Memory(resident::Cohort),
    File { df: DataFrame, counted: Option<u64> },
}

impl Rows {
    async fn count(self) -> Result<u64> {
        match self {
            Rows::Memory(c) => Ok(c.len()),
            // Counted already by the complement check.
            Rows::File {
                counted: Some(n), ..
            } => Ok(n),
            Rows::File { df, counted: None } => match compute::count_rows(df).await? {
                RawStats::Count(n) => Ok(n),
                _ => Err(Error::internal("a count returned something else")),
            },
        }
    }

    async fn columns(
        self,
        ctx: &SessionContext,
        variables: &[(&str, &Mapped)],
        dict: &Dictionary,
    ) -> Result<plexus_core::models::design::Columns> {
        match self {
            Rows::Memory(c) => c.columns(ctx, variables, dict),
            Rows::File { df, .. } => extract::columns(df, variables, dict).await,
        }
    }

    async fn histogram(self, ctx: &SessionContext, m: &Mapped, edges: &[f64]) -> Result<RawStats> {
        match self {
            Rows::Memory(c) => c.histogram(ctx, m, edges),
            Rows::File { df, .. } => compute::histogram(df, m, edges).await,
        }
    }

    async fn table(
        self,
        ctx: &SessionContext,
        row: (&Mapped, &plexus_core::Variable),
        column: (&Mapped, &plexus_core::Variable),
    ) -> Result<RawStats> {
        match self {
            Rows::Memory(c) => c.table(ctx, row, column),
            Rows::File { df, .. } => compute::table(df, row, column).await,
        }
    }
}

/// Kaplan-Meier counts or correlation sums from the analysis's columns,
/// off the async workers; the file and the warehouse source share it.
async fn survival_or_pairs(
    analysis: &Analysis,
    dict: &Arc<Dictionary>,
    columns: plexus_core::models::design::Columns,
    private: bool,
) -> Result<RawStats> {
    let (a, d) = (analysis.clone(), dict.clone());
    blocking(move || match &a {
        Analysis::KaplanMeier { .. } => models::survival_counts(&a, &d, &columns),
        _ => models::pairs(&a, &d, &columns, private),
    })
    .await
}

/// Runs CPU-bound arithmetic off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("computation task failed: {e}")))?
}

/// Registers the patient table. CSV schemas are inferred from every row,
/// with the id column read as text so ids keep their leading zeros.
async fn register(
    ctx: &SessionContext,
    path: &std::path::Path,
    format: DataFormat,
    id: &str,
) -> Result<()> {
    let what = "data file";
    let p = path_str(path, what)?;
    let ext = extension(path);
    let err = |e| read_error(what, path, format, e);
    match format {
        DataFormat::Parquet => ctx
            .register_parquet(
                PATIENTS,
                p,
                ParquetReadOptions::default().file_extension(&ext),
            )
            .await
            .map_err(err),
        DataFormat::Csv => {
            let inferred = ctx
                .read_csv(p, csv_options(&ext).schema_infer_max_records(usize::MAX))
                .await
                .map_err(err)?;
            let fields: Vec<Field> = inferred
                .schema()
                .fields()
                .iter()
                .map(|f| match f.name() == id {
                    true => Field::new(f.name(), DataType::Utf8, true),
                    false => f.as_ref().clone(),
                })
                .collect();
            let schema = Schema::new(fields);
            ctx.register_csv(PATIENTS, p, csv_options(&ext).schema(&schema))
                .await
                .map_err(err)
        }
    }
}
