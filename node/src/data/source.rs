//! The node's data source: patient files read through DataFusion, or a
//! PostgreSQL warehouse, chosen by `data.source`. Both answer with the
//! same `RawStats` for the same rows.

use std::sync::Arc;

use chrono::NaiveDate;
use plexus_core::models::glm::Iteration;
use plexus_core::{Dictionary, Purpose, Query, RawStats, Result};

use super::config::{ConsentConfig, DataConfig, SourceKind};
use super::warehouse::Warehouse;
use super::{FileSource, Limits};

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

    /// Changes whenever the data or the consent records change (for a
    /// warehouse: as of the last [`Self::refresh`]).
    pub fn snapshot(&self) -> Result<String> {
        match self {
            DataSource::Files(f) => f.snapshot(),
            DataSource::Warehouse(w) => Ok(w.snapshot()),
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
    /// [`FileSource::compute`].
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
}
