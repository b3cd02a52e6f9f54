//! Shared state of a running coordinator.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::error;

use plexus_core::Dictionary;

use crate::config::CoordinatorConfig;
use crate::registry::Registry;
use crate::store::{now_ms, AuditEntry, Store};

pub struct State {
    pub config: CoordinatorConfig,
    pub store: Store,
    pub registry: Registry,
    pub dictionary: Arc<Dictionary>,
    /// Signs every job envelope.
    pub signer: Arc<plexus_tls::SigningKey>,
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
    pub async fn audit(&self, mut entry: AuditEntry) {
        if entry.at == 0 {
            entry.at = now_ms();
        }
        if let Err(e) = self.store.append_audit(&entry).await {
            error!(error = %e, action = %entry.action, "could not append to the audit log");
        }
    }

    pub fn notify_finished(&self) {
        self.finished.send_modify(|v| *v = v.wrapping_add(1));
    }
}
