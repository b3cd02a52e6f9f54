//! `plexus-coordinator audit-repair`, with every coordinator of the
//! database stopped: opens the database as the coordinator of `config`
//! would and records the break with [`AuditLog::repair`], keeping this
//! coordinator's seal.
//!
//! On PostgreSQL every write must carry the lease's epoch (the fencing
//! trigger refuses the others), so the repair takes the lease as
//! `<instance> (audit-repair)` for its writes and releases it after; it
//! refuses while another coordinator holds the lease, as a repair beside
//! a running coordinator would race its appends.

use std::sync::Arc;
use std::time::Duration;

use plexus_core::Error;

use crate::audit_log::{AuditLog, Repair};
use crate::audit_seal::Seal;
use crate::config::CoordinatorConfig;
use crate::error::Result;
use crate::lease::{Attempt, Lease};
use crate::store::{database_name, is_postgres, Store};

/// Records the break of the stored log in the log itself (see
/// [`AuditLog::repair`]); `by` and `reason` are kept in the entry.
pub async fn repair(config: &CoordinatorConfig, by: &str, reason: &str) -> Result<Repair> {
    let url = &config.coordinator.database_url;
    let signer = Arc::new(config.signing_key()?);
    let seal = Seal::for_config(config);
    let origin = &config.coordinator.id;
    if !is_postgres(url) {
        let store = Store::open(url).await?;
        let r = AuditLog::repair(store.clone(), signer, origin, seal, by, reason).await;
        store.close().await;
        return r;
    }
    let unfenced = Store::open(url).await?;
    let pool = unfenced.postgres().expect("a postgres store").clone();
    let lease = Lease::new(
        pool,
        &format!("{} (audit-repair)", config.instance()),
        Duration::from_millis(config.coordinator.lease_ttl_ms),
    );
    let epoch = match lease.try_acquire().await? {
        Attempt::Acquired { epoch, .. } => epoch,
        Attempt::HeldBy {
            holder,
            expires_in_ms,
            ..
        } => {
            unfenced.close().await;
            return Err(Error::unavailable(format!(
                "coordinator {holder} holds the lease of {} (for {expires_in_ms} ms more unless renewed): stop every coordinator sharing the database, then run audit-repair again",
                database_name(url)
            ))
            .into());
        }
    };
    let r = match Store::open_fenced(url, Some(epoch)).await {
        Ok(store) => {
            let r = AuditLog::repair(store.clone(), signer, origin, seal, by, reason).await;
            store.close().await;
            r
        }
        Err(e) => Err(e),
    };
    if let Err(e) = lease.release(epoch).await {
        tracing::warn!(error = %e, "could not release the lease audit-repair took; the next coordinator takes it when it expires");
    }
    unfenced.close().await;
    r
}
