//! Shared state of a running coordinator.

use std::sync::Arc;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::error;

use plexus_core::Dictionary;

use crate::audit_log::AuditLog;
use crate::config::CoordinatorConfig;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store::{AuditEntry, Store};

pub struct State {
    pub config: CoordinatorConfig,
    pub store: Store,
    pub registry: Arc<Registry>,
    pub dictionary: Arc<Dictionary>,
    /// Signs every job envelope.
    pub signer: Arc<plexus_tls::SigningKey>,
    /// The Merkle audit log.
    pub audit_log: Arc<AuditLog>,
    /// The TLS config new connections get; replaced when the `[tls]` files
    /// change (rotation, a new revocation list).
    pub tls: plexus_tls::ServerTls,
    /// Cancelled last, once queries in flight are done: node streams and
    /// waiting `GetResult` calls end, the server stops.
    pub shutdown: CancellationToken,
    /// Cancelled when shutdown is asked for: new queries are refused while
    /// those in flight get the grace period to finish.
    pub draining: CancellationToken,
    /// Cancelled when the grace period is over: jobs still waiting for a
    /// node give up and their queries fail with a retryable error.
    pub abort_queries: CancellationToken,
    /// Every query running in the background.
    pub queries: TaskTracker,
    /// Turns to run (`coordinator.max_running_queries`): a query holds
    /// one from its first job to its result; the rest wait in order.
    pub running: tokio::sync::Semaphore,
    pub metrics: Arc<Metrics>,
    /// `/readyz`: the store is open and the server serving, the lease (when
    /// there is one) held, and no shutdown under way.
    pub readiness: plexus_ops::Readiness,
    /// The id of each query as it finishes, to wake the `GetResult` calls
    /// waiting for that query (and only those: with hundreds in flight,
    /// waking every waiter on every finish made each re-read its query and
    /// starved the database's read connections).
    pub finished: broadcast::Sender<String>,
}

impl State {
    /// The key a query's privacy charge is kept under: its canonical
    /// hash, with the study's own variables' fingerprint when it has any
    /// (the same query over a redefined variable is another question, as
    /// the nodes' ledgers have it).
    pub fn charge_key(
        &self,
        study: &plexus_core::StudyDefinition,
        query: &plexus_core::Query,
    ) -> Result<String, plexus_core::Error> {
        let dict = self.dictionary_for(study)?;
        let canonical = query.canonical_hash(&dict)?;
        let fp = plexus_core::timeline::fingerprint(&study.derived, &study.concept_sets);
        if fp.is_empty() {
            return Ok(canonical);
        }
        Ok(plexus_core::hash::sha256_hex(
            format!("{canonical}\0derived {fp}").as_bytes(),
        ))
    }

    /// The dictionary a study's queries are read, checked and pooled
    /// against: the network's, with the variables the study derives.
    pub fn dictionary_for(
        &self,
        study: &plexus_core::StudyDefinition,
    ) -> Result<Arc<Dictionary>, plexus_core::Error> {
        if study.derived.is_empty() && study.concept_sets.is_empty() {
            return Ok(self.dictionary.clone());
        }
        Ok(Arc::new(study.dictionary(&self.dictionary)?))
    }

    /// Appends an audit entry. A failure to audit is logged loudly; the
    /// action it describes has already happened and cannot be undone.
    pub async fn audit(&self, entry: AuditEntry) {
        let action = entry.action;
        match self.audit_log.append(entry).await {
            Ok(seq) => {
                self.metrics.audit_entries.set(seq);
            }
            Err(e) => error!(error = %e, %action, "could not append to the audit log"),
        }
    }

    pub fn notify_finished(&self, query_id: &str) {
        // No receiver means no one is waiting.
        let _ = self.finished.send(query_id.to_string());
    }
}
