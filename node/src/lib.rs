//! Plexus node: runs inside a hospital next to its data. It dials out to
//! the coordinator, checks each job against the hospital's own policy
//! (approved study definitions, narrowing), computes aggregates over
//! consenting patients only, applies disclosure control, holds the results
//! the hospital reviews for its data steward, and logs every job. It never
//! sends a patient row.
#![forbid(unsafe_code)]

pub mod config;
pub mod credentials;
pub mod data;
pub mod envelope;
pub mod error;
pub mod job;
pub mod ledger;
pub mod link;
pub mod log;
pub mod policy;
pub mod review;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

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
    config.validate()?;
    let dictionary = Arc::new(plexus_core::Dictionary::load_or_default(
        config.node.dictionary.as_deref(),
    )?);
    config.policy.validate_variables(&dictionary)?;
    for id in config.policy.studies.keys() {
        if policy::approved_hashes(&config, id)?.is_empty() {
            warn!(study = %id, "no definition of this study is approved yet; its jobs are refused until `plexus-node approve` records one");
        }
    }
    let review = review::ReviewQueue::open(&config.node.state_dir)?;
    let data =
        Arc::new(data::DataSource::open(&config.data, &config.consent, dictionary.clone()).await?);
    let log = Arc::new(log::JobLog::open_signed(
        &config.node.state_dir,
        &config.node.id,
    )?);
    let audit = log.clone();
    let checkpoints = tokio::spawn(log.clone().publish_every(
        std::time::Duration::from_secs(config.node.audit_checkpoint_secs),
        shutdown.clone(),
    ));
    let ledger = Arc::new(ledger::Ledger::open(&config.node.state_dir)?);
    let seen = Arc::new(envelope::SeenJobs::open(
        &config.node.state_dir,
        chrono::Utc::now().timestamp_millis(),
    )?);
    let verifying_key = config.verifying_key()?;
    let credentials = credentials::Credentials::load(config.tls.clone())?;
    info!(node = %config.node.id, variables = data.variables().len(), log = %log.path().display(), "node ready");
    let runner = Arc::new(job::JobRunner {
        config: Arc::new(config),
        dictionary,
        data: data.clone(),
        log,
        ledger,
        verifying_key,
        seen,
        signer: credentials.signer(),
        review: review.clone(),
        job_delay: options.job_delay,
        crash_after_debit: options.crash_after_debit,
    });
    let desk = Arc::new(review::desk::Desk {
        queue: review.clone(),
        runner: runner.clone(),
    });
    // Dies with this future, also when a harness aborts the node.
    let desk = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(desk.run(shutdown.clone())));
    let link = link::Link {
        runner,
        credentials,
        snapshot: Box::new(move || data.snapshot().unwrap_or_else(|e| format!("unknown ({e})"))),
        review,
    };
    link.run(shutdown).await;
    let _ = desk.await;
    // The last entries get their checkpoint before the node says it stopped.
    checkpoints.abort();
    if let Err(e) = audit.publish_if_grown() {
        tracing::warn!(error = %e, "could not publish the final checkpoint of the job log");
    }
    info!("node stopped");
    Ok(())
}
