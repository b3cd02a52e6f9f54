//! Active/standby coordinators on one PostgreSQL database.
//!
//! One row of `coordinator_lease` says which coordinator is active, under
//! which fencing epoch and until when (in the database's clock, so the
//! coordinators' clocks do not matter). The active one renews the lease
//! every third of its time to live; a standby takes over a lease that has
//! expired by raising the epoch. Every write of the active coordinator
//! carries its epoch and the database refuses writes under any other
//! (the fencing trigger of migration 0005), so a coordinator that lost the
//! lease without noticing cannot change anything after the takeover.

use std::time::Duration;

use sqlx::{PgPool, Row};

use crate::error::Result;

/// The database's clock in milliseconds since 1970.
const NOW_MS: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";

/// Who holds the lease, as seen by one try to take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// This coordinator now holds the lease at `epoch`; `previous` is the
    /// holder and epoch it took over from (none for the first lease).
    Acquired {
        epoch: i64,
        previous: Option<(String, i64)>,
    },
    /// Another coordinator holds the lease for `expires_in_ms` more.
    HeldBy {
        holder: String,
        epoch: i64,
        expires_in_ms: i64,
    },
}

/// One coordinator's side of the lease.
#[derive(Clone)]
pub struct Lease {
    pool: PgPool,
    instance: String,
    ttl: Duration,
}

impl Lease {
    /// `pool` is a connection pool without an epoch (the lease table is
    /// not fenced); `instance` names this coordinator in the lease and in
    /// the logs and must differ between the coordinators sharing a
    /// database.
    pub fn new(pool: PgPool, instance: &str, ttl: Duration) -> Self {
        Lease {
            pool,
            instance: instance.to_string(),
            ttl,
        }
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn ttl_ms(&self) -> i64 {
        self.ttl.as_millis() as i64
    }

    /// Takes the lease if nobody holds it or its holder let it expire.
    pub async fn try_acquire(&self) -> Result<Attempt> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(&format!(
            "SELECT holder, epoch, expires_at - {NOW_MS} AS left_ms FROM coordinator_lease WHERE id = 1 FOR UPDATE"
        ))
        .fetch_optional(&mut *tx)
        .await?;
        let attempt = match row {
            None => {
                let inserted = sqlx::query(&format!(
                    "INSERT INTO coordinator_lease (id, holder, epoch, expires_at, acquired_at) \
                     VALUES (1, $1, 1, {NOW_MS} + $2, {NOW_MS}) ON CONFLICT (id) DO NOTHING"
                ))
                .bind(&self.instance)
                .bind(self.ttl_ms())
                .execute(&mut *tx)
                .await?;
                if inserted.rows_affected() == 1 {
                    Attempt::Acquired {
                        epoch: 1,
                        previous: None,
                    }
                } else {
                    // Another coordinator inserted the first lease meanwhile.
                    Attempt::HeldBy {
                        holder: "another coordinator".into(),
                        epoch: 1,
                        expires_in_ms: self.ttl_ms(),
                    }
                }
            }
            Some(row) => {
                let holder: String = row.try_get("holder")?;
                let epoch: i64 = row.try_get("epoch")?;
                let left: i64 = row.try_get("left_ms")?;
                if left > 0 {
                    Attempt::HeldBy {
                        holder,
                        epoch,
                        expires_in_ms: left,
                    }
                } else {
                    // Waits for the old holder's writes in flight (they
                    // hold the row FOR SHARE); any later write of theirs
                    // is refused.
                    let epoch: i64 = sqlx::query_scalar(&format!(
                        "UPDATE coordinator_lease SET holder = $1, epoch = epoch + 1, \
                         expires_at = {NOW_MS} + $2, acquired_at = {NOW_MS} WHERE id = 1 RETURNING epoch"
                    ))
                    .bind(&self.instance)
                    .bind(self.ttl_ms())
                    .fetch_one(&mut *tx)
                    .await?;
                    Attempt::Acquired {
                        epoch,
                        previous: Some((holder, epoch - 1)),
                    }
                }
            }
        };
        tx.commit().await?;
        Ok(attempt)
    }

    /// Extends the lease held at `epoch`; false when it is no longer ours.
    pub async fn renew(&self, epoch: i64) -> Result<bool> {
        let r = sqlx::query(&format!(
            "UPDATE coordinator_lease SET expires_at = {NOW_MS} + $1 \
             WHERE id = 1 AND holder = $2 AND epoch = $3"
        ))
        .bind(self.ttl_ms())
        .bind(&self.instance)
        .bind(epoch)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// Lets the lease held at `epoch` expire now, so a standby takes over
    /// without waiting out the time to live (a clean shutdown).
    pub async fn release(&self, epoch: i64) -> Result<()> {
        sqlx::query(
            "UPDATE coordinator_lease SET expires_at = 0 WHERE id = 1 AND holder = $1 AND epoch = $2",
        )
        .bind(&self.instance)
        .bind(epoch)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Keeps renewing the lease held at `epoch` every third of its time
    /// to live; returns why it was lost. A renewal that fails leaves the
    /// lease standing until its expiry, so it is retried; once the time to
    /// live has passed since the last renewal began, the lease counts as
    /// lost (a standby may hold it by now).
    pub async fn keep(&self, epoch: i64) -> String {
        let every = self.ttl / 3;
        let mut renewed_at = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(every).await;
            let started = tokio::time::Instant::now();
            let left = (renewed_at + self.ttl).saturating_duration_since(started);
            match tokio::time::timeout(left, self.renew(epoch)).await {
                Ok(Ok(true)) => renewed_at = started,
                Ok(Ok(false)) => {
                    return format!("another coordinator took the lease over from epoch {epoch}")
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, epoch, "could not renew the coordinator lease; retrying")
                }
                Err(_) => {}
            }
            if renewed_at + self.ttl <= tokio::time::Instant::now() {
                return format!(
                    "the lease of epoch {epoch} could not be renewed within its time to live ({} ms): the database is unreachable or too slow",
                    self.ttl.as_millis()
                );
            }
        }
    }
}
