//! `coordinator.toml`: parsed strictly, then validated with errors that
//! name the field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use plexus_tls::TlsFiles;

use crate::error::{CoordinatorError, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    pub coordinator: CoordinatorSection,
    pub tls: TlsFiles,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorSection {
    /// Name this coordinator gives itself in logs and audit entries.
    #[serde(default = "default_id")]
    pub id: String,
    /// Address the gRPC server listens on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// `sqlite://path/to/file.db` (created if missing), or
    /// `postgres://user@host:5432/db`: coordinators sharing one PostgreSQL
    /// database run active/standby under a lease.
    #[serde(default = "default_database")]
    pub database_url: String,
    /// This coordinator's name in the lease of a shared PostgreSQL
    /// database (`id` when absent); each coordinator sharing one database
    /// needs its own.
    #[serde(default)]
    pub instance: Option<String>,
    /// How long the active coordinator's lease lasts without a renewal
    /// (milliseconds; renewed every third of it): a standby takes over
    /// this long after the active one died.
    #[serde(default = "default_lease_ttl_ms")]
    pub lease_ttl_ms: u64,
    /// Network data dictionary; the embedded cardiovascular one when absent.
    #[serde(default)]
    pub dictionary: Option<PathBuf>,
    /// The network's minimum cell size; nodes apply the larger of this and their own.
    #[serde(default = "default_k")]
    pub min_cell_size: u32,
    /// How long a job may take at a node before the node counts as missing.
    #[serde(default = "default_job_timeout")]
    pub job_timeout_secs: u64,
    /// How often nodes are asked to send heartbeats.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_interval_secs: u64,
    /// How often a signed checkpoint of the audit log is published while
    /// the log grows (auditors can also ask for one at any time).
    #[serde(default = "default_checkpoint_interval")]
    pub audit_checkpoint_secs: u64,
    /// The Ed25519 key jobs are signed with (`coordinator-signing.key`, as
    /// `plexus pki init` writes it); nodes pin its public half.
    pub signing_key: PathBuf,
    /// How often the `[tls]` files are checked for changes (milliseconds):
    /// a rotated certificate or a new revocation list is used for new
    /// connections within two intervals, without a restart.
    #[serde(default = "default_tls_reload_ms")]
    pub tls_reload_ms: u64,
    /// Where to serve `/metrics`, `/healthz` and `/readyz` over plain HTTP
    /// (e.g. `127.0.0.1:9464`); no listener when absent.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// On SIGTERM/SIGINT, how long queries in flight may take to finish
    /// before they are failed with a retryable error.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_secs: u64,
    /// Commit audit entries waiting for the disk together (one transaction
    /// and one fsync per batch). `false` runs the path of coordinators
    /// before group commit, one commit per entry behind one lock: only to
    /// measure against (`plexus-bench throughput` does), never in
    /// production.
    #[serde(default = "default_true")]
    pub audit_group_commit: bool,
    /// Queries whose jobs may be out at the nodes at once. More wait, in
    /// the order they were submitted, and their jobs are signed (and their
    /// deadlines start) only when their turn comes: a burst is answered
    /// first come, first served, instead of every query's jobs sharing the
    /// nodes at once and all of them finishing late (or expiring).
    #[serde(default = "default_running_queries")]
    pub max_running_queries: u32,
    /// Where this coordinator keeps its seal of the audit log (the last
    /// signed checkpoint and the leaves it covers, outside the database),
    /// so that a database emptied, replaced or restored from an older
    /// backup is refused at start. Default: beside a SQLite database file
    /// (`coordinator.db.checkpoint.json`, `coordinator.db.audit-leaves`);
    /// for PostgreSQL the folder of the config file. When set (or on
    /// PostgreSQL) the files are named for the instance,
    /// `<instance>.audit-checkpoint.json` and `<instance>.audit-leaves`,
    /// so an active and a standby coordinator may share the folder. It
    /// must be on this coordinator's own disk and writable by it.
    #[serde(default)]
    pub audit_seal_dir: Option<PathBuf>,
}

fn default_true() -> bool {
    true
}

fn default_id() -> String {
    "coordinator".into()
}
fn default_listen() -> SocketAddr {
    "127.0.0.1:7443".parse().expect("valid address")
}
fn default_database() -> String {
    "sqlite://coordinator.db".into()
}
fn default_lease_ttl_ms() -> u64 {
    5000
}
fn default_k() -> u32 {
    plexus_core::DEFAULT_MIN_CELL_SIZE
}
fn default_running_queries() -> u32 {
    16
}
fn default_job_timeout() -> u64 {
    60
}
fn default_heartbeat() -> u64 {
    5
}
fn default_checkpoint_interval() -> u64 {
    60
}
fn default_shutdown_grace() -> u64 {
    20
}
fn default_tls_reload_ms() -> u64 {
    plexus_tls::DEFAULT_RELOAD_INTERVAL.as_millis() as u64
}

impl CoordinatorConfig {
    /// Reads, parses and validates a config file; relative paths in it are
    /// taken from the file's folder.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            CoordinatorError::Config(format!("cannot read {}: {e}", path.display()))
        })?;
        let mut cfg: CoordinatorConfig = toml::from_str(&text).map_err(|e| {
            CoordinatorError::Config(format!(
                "{} is not a valid coordinator config: {e}",
                path.display()
            ))
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.resolve(base);
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn resolve(&mut self, base: &Path) {
        self.tls = self.tls.resolve(base);
        self.coordinator.signing_key = base.join(&self.coordinator.signing_key);
        if let Some(d) = &self.coordinator.dictionary {
            self.coordinator.dictionary = Some(base.join(d));
        }
        if let Some(rest) = self.coordinator.database_url.strip_prefix("sqlite://") {
            let p = Path::new(rest);
            if p.is_relative() && !rest.starts_with(':') {
                self.coordinator.database_url = format!("sqlite://{}", base.join(p).display());
            }
        }
        let base = if base.as_os_str().is_empty() {
            Path::new(".")
        } else {
            base
        };
        match &self.coordinator.audit_seal_dir {
            Some(d) => self.coordinator.audit_seal_dir = Some(base.join(d)),
            None if crate::store::is_postgres(&self.coordinator.database_url) => {
                self.coordinator.audit_seal_dir = Some(base.to_path_buf())
            }
            None => {}
        }
    }

    /// This coordinator's name in the lease.
    pub fn instance(&self) -> &str {
        self.coordinator
            .instance
            .as_deref()
            .unwrap_or(&self.coordinator.id)
    }

    /// The key jobs are signed with.
    pub fn signing_key(&self) -> Result<plexus_tls::SigningKey> {
        plexus_tls::SigningKey::load(&self.coordinator.signing_key).map_err(|e| {
            CoordinatorError::Config(format!(
                "coordinator.signing_key: {e} (`plexus pki init` writes coordinator-signing.key)"
            ))
        })
    }

    pub fn validate(&self) -> Result<()> {
        self.signing_key()?;
        let c = &self.coordinator;
        if c.min_cell_size == 0 {
            return Err(CoordinatorError::Config(
                "coordinator.min_cell_size must be at least 1 (5 is the usual minimum)".into(),
            ));
        }
        if !c.database_url.starts_with("sqlite:") && !crate::store::is_postgres(&c.database_url) {
            return Err(CoordinatorError::Config(format!(
                "coordinator.database_url \"{}\" is not supported; use sqlite://path/to/coordinator.db or postgres://user@host:5432/database",
                c.database_url
            )));
        }
        if !(300..=600_000).contains(&c.lease_ttl_ms) {
            return Err(CoordinatorError::Config(format!(
                "coordinator.lease_ttl_ms must be between 300 and 600000 (5000 is the default), got {}",
                c.lease_ttl_ms
            )));
        }
        if c.instance.as_deref().is_some_and(|i| i.trim().is_empty()) {
            return Err(CoordinatorError::Config(
                "coordinator.instance is empty; name this coordinator (e.g. coordinator-a) or leave the key out to use coordinator.id".into(),
            ));
        }
        if c.max_running_queries == 0 || c.max_running_queries > 10_000 {
            return Err(CoordinatorError::Config(format!(
                "coordinator.max_running_queries must be between 1 and 10000 (16 is the default), got {}",
                c.max_running_queries
            )));
        }
        if c.job_timeout_secs == 0 || c.job_timeout_secs > 3600 {
            return Err(CoordinatorError::Config(
                "coordinator.job_timeout_secs must be between 1 and 3600".into(),
            ));
        }
        if c.audit_checkpoint_secs == 0 || c.audit_checkpoint_secs > 86_400 {
            return Err(CoordinatorError::Config(
                "coordinator.audit_checkpoint_secs must be between 1 and 86400 (a day)".into(),
            ));
        }
        if c.heartbeat_interval_secs == 0 || c.heartbeat_interval_secs > 300 {
            return Err(CoordinatorError::Config(
                "coordinator.heartbeat_interval_secs must be between 1 and 300".into(),
            ));
        }
        if !(100..=600_000).contains(&c.tls_reload_ms) {
            return Err(CoordinatorError::Config(format!(
                "coordinator.tls_reload_ms must be between 100 and 600000 (2000 is the default), got {}",
                c.tls_reload_ms
            )));
        }
        if c.shutdown_grace_secs > 3600 {
            return Err(CoordinatorError::Config(format!(
                "coordinator.shutdown_grace_secs must be at most 3600 (20 is the default), got {}",
                c.shutdown_grace_secs
            )));
        }
        if let Some(dir) = &c.audit_seal_dir {
            if crate::audit_seal::is_in_memory(&c.database_url) {
                return Err(CoordinatorError::Config(format!(
                    "coordinator.audit_seal_dir is set ({}) but the database is in memory, so every start would find the sealed log gone; leave the key out, or use a database file",
                    dir.display()
                )));
            }
            let instance = self.instance();
            if instance.contains(['/', '\\']) || instance == "." || instance == ".." {
                return Err(CoordinatorError::Config(format!(
                    "the seal files in coordinator.audit_seal_dir are named for coordinator.instance (or coordinator.id), but \"{instance}\" is not a file name; choose a name without / or \\ (e.g. coordinator-a)"
                )));
            }
            if !dir.is_dir() {
                return Err(CoordinatorError::Config(format!(
                    "coordinator.audit_seal_dir {} is not a folder; create it on this coordinator's own disk, writable by the coordinator",
                    dir.display()
                )));
            }
        }
        if c.metrics_listen.is_some_and(|a| a == c.listen) {
            return Err(CoordinatorError::Config(
                "coordinator.metrics_listen must differ from coordinator.listen".into(),
            ));
        }
        self.tls
            .validate()
            .map_err(|e| CoordinatorError::Config(format!("[tls] {e}")))?;
        Ok(())
    }
}
