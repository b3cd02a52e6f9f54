//! The node's data source: patient files read through DataFusion, or a
//! PostgreSQL warehouse, chosen by `data.source`. Both answer with the
//! same `RawStats` for the same rows.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::NaiveDate;
use plexus_core::models::fit::Iteration;
use plexus_core::timeline::{Derived, StudyConceptSet};
use plexus_core::{Dictionary, Error, Purpose, Query, RawStats, Result, StudyDefinition};

use super::config::{ConsentConfig, DataConfig, SourceKind};
use super::warehouse::Warehouse;
use super::{FileSource, Limits};

/// What a job's study adds to the network dictionary: the variables it
/// derives itself (`[derived]` in its definition), which the node builds
/// from its own mapping of the dictionary variables they read.
#[derive(Debug, Clone)]
pub struct StudyScope {
    /// The network dictionary with the derived variables.
    pub dictionary: Arc<Dictionary>,
    pub derived: Arc<BTreeMap<String, Derived>>,
    /// The OMOP concept sets it brings.
    pub concept_sets: Arc<BTreeMap<String, StudyConceptSet>>,
    /// [`plexus_core::timeline::fingerprint`] of both: empty for none.
    pub fingerprint: String,
}

impl StudyScope {
    /// A study that derives nothing: the network dictionary alone.
    pub fn network(dictionary: Arc<Dictionary>) -> Self {
        StudyScope {
            dictionary,
            derived: Arc::new(BTreeMap::new()),
            concept_sets: Arc::new(BTreeMap::new()),
            fingerprint: String::new(),
        }
    }

    /// `study`'s variables over the network dictionary `base`.
    pub fn of(study: &StudyDefinition, base: &Arc<Dictionary>) -> Result<Self> {
        if study.derived.is_empty() && study.concept_sets.is_empty() {
            return Ok(Self::network(base.clone()));
        }
        Ok(StudyScope {
            dictionary: Arc::new(study.dictionary(base)?),
            derived: Arc::new(study.derived.clone()),
            concept_sets: Arc::new(study.concept_sets.clone()),
            fingerprint: plexus_core::timeline::fingerprint(&study.derived, &study.concept_sets),
        })
    }

    /// The first of `query`'s variables the study derives (or brings as
    /// a concept set).
    pub fn derived_in(&self, query: &Query) -> Option<String> {
        query
            .variables()
            .into_iter()
            .find(|v| self.derived.contains_key(v) || self.concept_sets.contains_key(v))
    }
}

/// One per node, opened once and shared behind an `Arc`: the variants'
/// sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum DataSource {
    Files(FileSource),
    Warehouse(Warehouse),
}

impl DataSource {
    /// Opens the configured source and checks the mapping against it;
    /// refuses to start with an error naming the field when it does not fit.
    pub async fn open(
        data: &DataConfig,
        consent: &ConsentConfig,
        dict: Arc<Dictionary>,
    ) -> Result<Self> {
        data.validate()?;
        match (data.source(), &data.postgres) {
            (SourceKind::Postgres, Some(pg)) => {
                data.validate_consent(consent)?;
                Ok(DataSource::Warehouse(
                    Warehouse::open(pg, consent, dict).await?,
                ))
            }
            _ => Ok(DataSource::Files(
                FileSource::open(data, consent, dict).await?,
            )),
        }
    }

    /// Variables this node can answer about (the mapped ones).
    pub fn variables(&self) -> Vec<String> {
        match self {
            DataSource::Files(f) => f.variables(),
            DataSource::Warehouse(w) => w.variables(),
        }
    }

    /// What the mapping check noticed at start-up that the hospital should
    /// fix (concepts not in the vocabulary, not standard, of another
    /// domain), decided without patient data, so the node may report it
    /// to the coordinator for `plexus nodes`.
    pub fn notices(&self) -> Vec<String> {
        match self {
            DataSource::Files(_) => Vec::new(),
            DataSource::Warehouse(w) => w.notices().to_vec(),
        }
    }

    /// Start-up findings that depend on patient data (a concept set that
    /// matches no row): for the node's log and `plexus-node` checks only.
    pub fn local_findings(&self) -> Vec<String> {
        match self {
            DataSource::Files(_) => Vec::new(),
            DataSource::Warehouse(w) => w.local_findings().to_vec(),
        }
    }

    /// Changes whenever the data or the consent records change (for a
    /// warehouse: as of the last [`Self::refresh`]).
    pub fn snapshot(&self) -> Result<String> {
        match self {
            DataSource::Files(f) => f.snapshot(),
            DataSource::Warehouse(w) => Ok(w.snapshot()),
        }
    }

    /// Bytes of the data file's columns kept in memory between jobs; 0 when
    /// every job reads the file (a warehouse, a file over
    /// `data.memory_mib`, or one written in the last moments).
    pub fn in_memory_bytes(&self) -> usize {
        match self {
            DataSource::Files(f) => f.in_memory_bytes(),
            DataSource::Warehouse(_) => 0,
        }
    }

    /// `None` when healthy; why not otherwise (a warehouse that cannot be
    /// reached). As of the last [`Self::refresh`] or failed query.
    pub fn health(&self) -> Option<String> {
        match self {
            DataSource::Files(_) => None,
            DataSource::Warehouse(w) => w.health(),
        }
    }

    /// Probes the source (for heartbeats): its health afterwards.
    pub async fn refresh(&self) -> Option<String> {
        match self {
            DataSource::Files(_) => None,
            DataSource::Warehouse(w) => w.refresh().await,
        }
    }

    /// Runs one query (or one round of an iterative fit); see
    /// [`FileSource::compute`]. Jobs use [`Self::compute_apart`].
    pub async fn compute(
        &self,
        query: &Query,
        purpose: &Purpose,
        today: NaiveDate,
        limits: Limits,
        iteration: Option<&Iteration>,
    ) -> Result<RawStats> {
        match self {
            DataSource::Files(f) => f.compute(query, purpose, today, limits, iteration).await,
            DataSource::Warehouse(w) => w.compute(query, purpose, today, limits, iteration).await,
        }
    }

    /// [`Self::compute`] for a job of a study that may derive variables of
    /// its own (`scope`). A warehouse builds them from its mapping of the
    /// dated events; a node reading files refuses a query naming one,
    /// naming the variable.
    pub async fn compute_in(
        &self,
        scope: &StudyScope,
        query: &Query,
        purpose: &Purpose,
        today: NaiveDate,
        limits: Limits,
        iteration: Option<&Iteration>,
    ) -> Result<RawStats> {
        match self {
            DataSource::Warehouse(w) => {
                w.compute_in(scope, query, purpose, today, limits, iteration)
                    .await
            }
            DataSource::Files(f) => {
                if let Some(v) = scope.derived_in(query) {
                    return Err(Error::data(format!(
                        "variable \"{v}\" is derived by the study from dated events and dates, or is one of its concept sets ([derived], [concept_sets] in its definition); this node reads patient files, which hold one row per patient and no event rows, and derives no study variables: leave the variable out, or run the study on warehouse nodes"
                    )));
                }
                f.compute(query, purpose, today, limits, iteration).await
            }
        }
    }

    /// [`Self::compute_in`], with a file source's computation (DataFusion's
    /// planning and execution: all CPU) on the node's compute threads,
    /// never on the async workers that keep the coordinator link: a burst
    /// of jobs slows the jobs, while heartbeats, HTTP/2 keep-alive answers
    /// and other jobs' answers still go out. (With DataFusion on the async
    /// workers, a 200-query burst on 20 nodes in one process held both
    /// workers for tens of seconds, jobs expired before they were opened
    /// and nodes dropped out of fits.) Dropping the returned future stops
    /// the computation.
    pub async fn compute_apart(
        self: &Arc<Self>,
        scope: &StudyScope,
        query: &Query,
        purpose: &Purpose,
        today: NaiveDate,
        limits: Limits,
        iteration: Option<&Iteration>,
    ) -> Result<RawStats> {
        if let DataSource::Warehouse(_) = &**self {
            // Waits on the warehouse: nothing to move.
            return self
                .compute_in(scope, query, purpose, today, limits, iteration)
                .await;
        }
        let (source, scope, query, purpose, iteration) = (
            self.clone(),
            scope.clone(),
            query.clone(),
            purpose.clone(),
            iteration.cloned(),
        );
        let task = compute_threads().spawn(async move {
            source
                .compute_in(&scope, &query, &purpose, today, limits, iteration.as_ref())
                .await
        });
        tokio_util::task::AbortOnDropHandle::new(task)
            .await
            .map_err(|e| {
                plexus_core::Error::internal(format!("the node's computation stopped: {e}"))
            })?
    }
}

/// The runtime DataFusion runs on: one thread per core, apart from the
/// async workers (DataFusion's own advice for CPU-bound work beside
/// network I/O). One per process, made on first use.
fn compute_threads() -> &'static tokio::runtime::Handle {
    static THREADS: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    THREADS
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(
                    std::thread::available_parallelism()
                        .map(|n| n.get())
                        .unwrap_or(1),
                )
                .thread_name("plexus-compute")
                .enable_all()
                .build()
                .expect("the node's compute threads start")
        })
        .handle()
}
