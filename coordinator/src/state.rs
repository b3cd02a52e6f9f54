//! Shared state of a running coordinator.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::error;

use plexus_core::Dictionary;

use crate::audit_log::AuditLog;
use crate::config::CoordinatorConfig;
use crate::registry::Registry;
use crate::store::{AuditEntry, Store};

pub struct State {
    pub config: CoordinatorConfig,
    pub store: Store,
    pub registry: Registry,
    pub dictionary: Arc<Dictionary>,
    /// Signs every job envelope.
    pub signer: Arc<plexus_tls::SigningKey>,
    /// The Merkle audit log.
    pub audit_log: Arc<AuditLog>,
    /// The TLS config new connections get; replaced when the `[tls]` files
    /// change (rotation, a new revocation list).
    pub tls: plexus_tls::ServerTls,
    pub shutdown: CancellationToken,
    /// Bumped whenever a query finishes, to wake waiting `GetResult` calls.
    pub finished: watch::Sender<u64>,
}

impl State {
    /// Appends an audit entry. A failure to audit is logged loudly; the
    /// action it describes has already happened and cannot be undone.
    pub async fn audit(&self, entry: AuditEntry) {
        let action = entry.action.clone();
        if let Err(e) = self.audit_log.append(entry).await {
            error!(error = %e, %action, "could not append to the audit log");
        }
    }

    pub fn notify_finished(&self) {
        self.finished.send_modify(|v| *v = v.wrapping_add(1));
    }
}
