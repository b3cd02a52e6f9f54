//! Plexus node: runs inside a hospital next to its data. It dials out to
//! the coordinator, checks each job against the hospital's own policy,
//! computes aggregates over consenting patients only, applies disclosure
//! control and logs every job. It never sends a patient row.
#![forbid(unsafe_code)]

pub mod config;
pub mod data;
pub mod envelope;
pub mod error;
pub mod job;
pub mod ledger;
pub mod link;
pub mod log;
pub mod secagg;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::info;

pub use config::NodeConfig;
pub use error::{NodeError, Result};

/// Options a test harness may set; production leaves them default.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Wait this long before computing each job (fault-injection tests).
    pub job_delay: Duration,
    /// Drop each job unanswered right after its ledger debit, as if the
    /// node died between debit and release (fault-injection tests).
    pub crash_after_debit: bool,
    /// Answer the key round of secure aggregation, then drop every masked
    /// job unanswered after computing it, as if the node died mid-job
    /// (fault-injection tests).
    pub drop_masked_jobs: bool,
}

/// Opens the data (refusing to start when the mapping does not match it),
/// then keeps the link to the coordinator up until `shutdown`.
pub async fn run(config: NodeConfig, shutdown: CancellationToken) -> Result<()> {
    run_with(config, shutdown, RunOptions::default()).await
}

pub async fn run_with(
    config: NodeConfig,
    shutdown: CancellationToken,
    options: RunOptions,
) -> Result<()> {
    let runner = Arc::new(open_runner(config, options).await?);
    let tls =
        plexus_tls::client_config(&runner.config.tls).map_err(|e| NodeError::Tls(e.to_string()))?;
    let data = runner.data.clone();
    info!(node = %runner.config.node.id, variables = data.variables().len(), log = %runner.log.path().display(), "node ready");
    let link = link::Link {
        runner,
        tls,
        snapshot: Box::new(move || data.snapshot().unwrap_or_else(|e| format!("unknown ({e})"))),
    };
    link.run(shutdown).await;
    info!("node stopped");
    Ok(())
}

/// Everything a node needs to take jobs, opened from its config: the
/// data (refused when the mapping does not match it), the local log, the
/// privacy ledger, the seen jobs, the coordinator's pinned key and the
/// node's signing key. Tests drive a runner directly with crafted jobs.
pub async fn open_runner(config: NodeConfig, options: RunOptions) -> Result<job::JobRunner> {
    config.validate()?;
    let dictionary = Arc::new(plexus_core::Dictionary::load_or_default(
        config.node.dictionary.as_deref(),
    )?);
    let data =
        Arc::new(data::DataSource::open(&config.data, &config.consent, dictionary.clone()).await?);
    let log = Arc::new(log::JobLog::open(&config.node.state_dir)?);
    let ledger = Arc::new(ledger::Ledger::open(&config.node.state_dir)?);
    let seen = Arc::new(envelope::SeenJobs::open(
        &config.node.state_dir,
        chrono::Utc::now().timestamp_millis(),
    )?);
    let verifying_key = config.verifying_key()?;
    let signer = Arc::new(
        plexus_tls::CertSigner::load(&config.tls.key).map_err(|e| NodeError::Tls(e.to_string()))?,
    );
    Ok(job::JobRunner {
        config: Arc::new(config),
        dictionary,
        data,
        log,
        ledger,
        verifying_key,
        seen,
        signer,
        job_delay: options.job_delay,
        crash_after_debit: options.crash_after_debit,
        sessions: Arc::new(secagg::Sessions::new()),
        drop_masked_jobs: options.drop_masked_jobs,
    })
}
