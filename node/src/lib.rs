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
mod disk;
pub mod envelope;
pub mod error;
pub mod job;
pub mod ledger;
pub mod link;
pub mod log;
pub mod metrics;
pub mod policy;
pub mod record;
pub mod review;
pub mod secagg;
pub mod witness;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::NodeConfig;
pub use error::{NodeError, Result};

/// Options a test harness may set; production leaves them default. The
/// fault-injection hooks exist only with the `fault-injection` feature
/// (the integration tests turn it on), so a release build of the node has
/// none of them.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Wait this long before computing each job (fault-injection tests).
    #[cfg(feature = "fault-injection")]
    pub job_delay: Duration,
    /// Only the first this many jobs wait `job_delay`; later ones run at
    /// once, as a node that was slow and is fast again. `None`: every job.
    #[cfg(feature = "fault-injection")]
    pub slow_jobs: Option<u32>,
    /// Drop each job unanswered right after its ledger debit, as if the
    /// node died between debit and release (fault-injection tests).
    #[cfg(feature = "fault-injection")]
    pub crash_after_debit: bool,
    /// Answer the key round of secure aggregation, then drop every masked
    /// job unanswered after computing it, as if the node died mid-job
    /// (fault-injection tests).
    #[cfg(feature = "fault-injection")]
    pub drop_masked_jobs: bool,
    /// Fault injection: this node's clock reads this many milliseconds
    /// ahead of the machine's (behind when negative), for the checks of
    /// jobs' issue times and deadlines and for its heartbeats.
    #[cfg(feature = "fault-injection")]
    pub clock_skew_ms: i64,
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
    let metrics_listener = match config.node.metrics_listen {
        Some(addr) => Some(plexus_ops::bind(addr, "node.metrics_listen").await?),
        None => None,
    };
    let (runner, credentials) = open_parts(config, options).await?;
    let runner = Arc::new(runner);
    runner.readiness.set(
        link::LINK_CHECK,
        false,
        "not connected to the coordinator yet",
    );
    let ops_stop = CancellationToken::new();
    let ops = metrics_listener.map(|l| {
        let endpoint = plexus_ops::Endpoint {
            registry: runner.metrics.registry.clone(),
            readiness: runner.readiness.clone(),
            refresh: None,
        };
        info!(addr = ?l.local_addr().ok(), "metrics, health and readiness served over http");
        tokio::spawn(plexus_ops::serve(l, endpoint, ops_stop.clone()))
    });
    let data = runner.data.clone();
    let review = runner.review.clone();
    let audit = runner.log.clone();
    let ledger = runner.ledger.clone();
    let checkpoints = tokio::spawn(publish_checkpoints(
        audit.clone(),
        ledger.clone(),
        Duration::from_secs(runner.config.node.audit_checkpoint_secs),
        shutdown.clone(),
    ));
    // A node whose records could not be written turns ready again once
    // they can, without a job or a restart.
    let storage = {
        let runner = runner.clone();
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            loop {
                tokio::time::sleep(STORAGE_PROBE).await;
                let runner = runner.clone();
                let _ = tokio::task::spawn_blocking(move || runner.check_storage()).await;
            }
        }))
    };
    info!(node = %runner.config.node.id, variables = data.variables().len(), log = %runner.log.path().display(), "node ready");
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
    drop(storage);
    if let Err(e) = audit.publish_if_grown() {
        tracing::warn!(error = %e, "could not publish the final checkpoint of the job log");
    }
    if let Err(e) = ledger.publish_if_grown() {
        tracing::warn!(error = %e, "could not publish the final checkpoint of the privacy ledger");
    }
    ops_stop.cancel();
    if let Some(ops) = ops {
        let _ = ops.await;
    }
    info!("node stopped");
    Ok(())
}

/// How often a node whose records could not be written checks whether
/// they can again.
const STORAGE_PROBE: Duration = Duration::from_secs(2);

/// Signs checkpoints of the job log and of the privacy ledger every
/// `every` while they grow, until `shutdown`.
async fn publish_checkpoints(
    log: Arc<log::JobLog>,
    ledger: Arc<ledger::Ledger>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = log.publish_if_grown() {
            warn!(error = %e, "could not publish a checkpoint of the job log");
        }
        if let Err(e) = ledger.publish_if_grown() {
            warn!(error = %e, "could not publish a checkpoint of the privacy ledger");
        }
    }
}

/// Everything a node needs to take jobs, opened from its config: the
/// data (refused when the mapping does not match it), the local log, the
/// privacy ledger, the seen jobs, the review queue, the coordinator's pinned
/// key and the node's signing key. Tests drive a runner directly with
/// crafted jobs.
pub async fn open_runner(config: NodeConfig, options: RunOptions) -> Result<job::JobRunner> {
    Ok(open_parts(config, options).await?.0)
}

async fn open_parts(
    config: NodeConfig,
    #[cfg_attr(not(feature = "fault-injection"), allow(unused_variables))] options: RunOptions,
) -> Result<(job::JobRunner, credentials::Credentials)> {
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
    let log_path = config.node.state_dir.join(log::JOB_LOG_FILE);
    let log = Arc::new(
        log::JobLog::open_signed(&config.node.state_dir, &config.node.id)
            .map_err(NodeError::log(&log_path))?,
    );
    let ledger = Arc::new(ledger::Ledger::open_signed(
        &config.node.state_dir,
        &config.node.id,
    )?);
    // A debit the job log shows cannot have vanished from the ledger.
    ledger.cross_check(&log)?;
    // Jobs the node was killed with: accepted, never answered.
    let dropped = log
        .close_open(
            log::DROPPED_CRASH,
            "the node stopped (killed or crashed) with this job accepted and unanswered; nothing was sent for it",
        )
        .map_err(NodeError::log(log.path()))?;
    if dropped > 0 {
        warn!(
            jobs = dropped,
            "the node last stopped with jobs in hand; they are logged as dropped:crash"
        );
    }
    let seen = Arc::new(envelope::SeenJobs::open(
        &config.node.state_dir,
        chrono::Utc::now().timestamp_millis(),
    )?);
    let verifying_key = config.verifying_key()?;
    let metrics = Arc::new(metrics::NodeMetrics::new());
    metrics.data_in_memory.set(data.in_memory_bytes() as i64);
    let readiness = plexus_ops::Readiness::new();
    let witness = Arc::new(witness::Witness::open(
        &config.node.state_dir,
        verifying_key.clone(),
        readiness.clone(),
        metrics.witness_refusals.clone(),
    )?);
    let credentials = credentials::Credentials::load(config.tls.clone())?;
    let config_state_dir = config.node.state_dir.clone();
    let runner = job::JobRunner {
        config: Arc::new(config),
        dictionary,
        data,
        log,
        ledger,
        verifying_key,
        seen,
        signer: credentials.signer(),
        review,
        #[cfg(feature = "fault-injection")]
        job_delay: options.job_delay,
        #[cfg(feature = "fault-injection")]
        slow_jobs_left: options.slow_jobs.map(std::sync::atomic::AtomicU32::new),
        #[cfg(feature = "fault-injection")]
        crash_after_debit: options.crash_after_debit,
        sessions: Arc::new(secagg::Sessions::new()),
        commitments: Arc::new(secagg::Commitments::open(&config_state_dir)?),
        #[cfg(feature = "fault-injection")]
        drop_masked_jobs: options.drop_masked_jobs,
        #[cfg(feature = "fault-injection")]
        clock_skew_ms: options.clock_skew_ms,
        unlogged: std::sync::Mutex::new(Vec::new()),
        metrics,
        readiness,
        witness,
    };
    Ok((runner, credentials))
}
