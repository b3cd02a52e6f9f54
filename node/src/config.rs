//! `node.toml`: what a hospital's IT configures. Parsed strictly, then
//! validated with errors that name the field.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use plexus_tls::TlsFiles;

use crate::data::{ConsentConfig, DataConfig};
use crate::error::{NodeError, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub node: NodeSection,
    pub coordinator: CoordinatorSection,
    pub tls: TlsFiles,
    pub data: DataConfig,
    pub consent: ConsentConfig,
    pub policy: Policy,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// The node's name; must equal the name in its certificate.
    pub id: String,
    /// Minimum cell size. The coordinator may ask for more, never less.
    #[serde(default = "default_k")]
    pub min_cell_size: u32,
    /// Folder for the node's own state (local audit log).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Network data dictionary; the embedded cardiovascular one when absent.
    #[serde(default)]
    pub dictionary: Option<PathBuf>,
    /// How often a signed checkpoint of the local job log is written while
    /// the log grows.
    #[serde(default = "default_checkpoint_interval")]
    pub audit_checkpoint_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorSection {
    /// `https://host:port` of the coordinator; the node dials out to it.
    pub address: String,
    /// TLS name to expect on the coordinator's certificate, when it differs from the host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// `http://host:port` of the hospital's HTTP CONNECT proxy, if outbound traffic must use one.
    #[serde(default)]
    pub proxy: Option<String>,
    /// Longest wait between reconnection attempts.
    #[serde(default = "default_max_backoff")]
    pub max_backoff_secs: u64,
    /// The coordinator's job-signing public key (`coordinator-signing.pub`,
    /// 64 hex characters), pinned: a job not signed by it is refused.
    pub signing_key: PathBuf,
}

/// The hospital's own rules, enforced whatever the coordinator says.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Studies this hospital has approved. Jobs of any other study are refused.
    pub allowed_studies: BTreeSet<String>,
    /// A regression model may have at most this share of the node's
    /// complete cases as parameters (DataSHIELD's nfilter.glm).
    #[serde(default = "default_parameter_share")]
    pub max_parameter_share: f64,
    /// Studies this hospital accepts exact answers for (no noise, no
    /// budget), such as a validation network's. Every other study is
    /// answered under differential privacy, whatever its registration says.
    #[serde(default)]
    pub exact_studies: BTreeSet<String>,
    /// The most one job may spend (zCDP ρ): the least noise the hospital
    /// accepts. A job asking more is answered at this cost, with more noise.
    #[serde(default = "default_max_query_rho")]
    pub max_query_rho: f64,
    /// The most budget any study may spend here, whatever it was registered with.
    #[serde(default = "default_max_study_rho")]
    pub max_study_rho: f64,
    /// Share of a sum one or two patients may hold before it is withheld.
    #[serde(default = "default_dominance_share")]
    pub dominance_share: f64,
}

impl Policy {
    /// A policy approving `studies`, with every other setting at its default.
    pub fn allowing(studies: impl IntoIterator<Item = String>) -> Self {
        Policy {
            allowed_studies: studies.into_iter().collect(),
            max_parameter_share: default_parameter_share(),
            exact_studies: BTreeSet::new(),
            max_query_rho: default_max_query_rho(),
            max_study_rho: default_max_study_rho(),
            dominance_share: default_dominance_share(),
        }
    }
}

fn default_parameter_share() -> f64 {
    plexus_core::DEFAULT_MAX_PARAMETER_SHARE
}
/// A count noised with σ ≥ √5 ≈ 2.2.
pub const DEFAULT_MAX_QUERY_RHO: f64 = 0.1;
fn default_max_query_rho() -> f64 {
    DEFAULT_MAX_QUERY_RHO
}
fn default_max_study_rho() -> f64 {
    plexus_core::study::DEFAULT_BUDGET_RHO
}
fn default_dominance_share() -> f64 {
    plexus_core::privacy::suppression::DEFAULT_DOMINANCE_SHARE
}

fn default_k() -> u32 {
    plexus_core::DEFAULT_MIN_CELL_SIZE
}
fn default_checkpoint_interval() -> u64 {
    60
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("state")
}
fn default_max_backoff() -> u64 {
    30
}

impl NodeConfig {
    /// The coordinator's pinned job-signing key.
    pub fn verifying_key(&self) -> Result<plexus_tls::VerifyingKey> {
        plexus_tls::VerifyingKey::load(&self.coordinator.signing_key).map_err(|e| {
            NodeError::Config(format!(
                "coordinator.signing_key: {e} (ask the network admin for the coordinator's coordinator-signing.pub)"
            ))
        })
    }

    /// Reads, parses and validates a config file; relative paths are taken
    /// from the file's folder.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| NodeError::Config(format!("cannot read {}: {e}", path.display())))?;
        let mut cfg: NodeConfig = toml::from_str(&text).map_err(|e| {
            NodeError::Config(format!(
                "{} is not a valid node config: {e}",
                path.display()
            ))
        })?;
        cfg.resolve(path.parent().unwrap_or(Path::new(".")));
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn resolve(&mut self, base: &Path) {
        self.tls = self.tls.resolve(base);
        self.coordinator.signing_key = base.join(&self.coordinator.signing_key);
        self.data = self.data.resolve(base);
        self.consent = self.consent.resolve(base);
        self.node.state_dir = base.join(&self.node.state_dir);
        if let Some(d) = &self.node.dictionary {
            self.node.dictionary = Some(base.join(d));
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !plexus_core::study::is_principal_name(&self.node.id) {
            return Err(NodeError::Config(format!(
                "node.id \"{}\" must be the name in the node's certificate (letters, digits, '.', '_', '-', '@')",
                self.node.id
            )));
        }
        if self.node.min_cell_size < 1 {
            return Err(NodeError::Config(
                "node.min_cell_size must be at least 1 (5 is the usual minimum)".into(),
            ));
        }
        if !(1..=86_400).contains(&self.node.audit_checkpoint_secs) {
            return Err(NodeError::Config(
                "node.audit_checkpoint_secs must be between 1 and 86400 (a day)".into(),
            ));
        }
        let addr = self.coordinator.address.trim();
        if addr.is_empty() {
            return Err(NodeError::Config(
                "coordinator.address is empty; set it to https://host:port of your network's coordinator".into(),
            ));
        }
        if !addr.starts_with("https://") {
            return Err(NodeError::Config(format!(
                "coordinator.address \"{addr}\" must start with https:// (nodes only speak mTLS)"
            )));
        }
        if let Some(p) = &self.coordinator.proxy {
            if !p.starts_with("http://") {
                return Err(NodeError::Config(format!(
                    "coordinator.proxy \"{p}\" must be an http://host:port HTTP CONNECT proxy"
                )));
            }
        }
        let share = self.policy.max_parameter_share;
        if !(share > 0.0 && share <= 1.0) {
            return Err(NodeError::Config(format!(
                "policy.max_parameter_share must be above 0 and at most 1 (0.33 is the usual value), got {share}"
            )));
        }
        let p = &self.policy;
        for (name, v) in [
            ("max_query_rho", p.max_query_rho),
            ("max_study_rho", p.max_study_rho),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(NodeError::Config(format!(
                    "policy.{name} must be a positive zCDP rho, got {v}"
                )));
            }
        }
        if !(p.dominance_share > 0.5 && p.dominance_share <= 1.0) {
            return Err(NodeError::Config(format!(
                "policy.dominance_share must be above 0.5 and at most 1 (0.85 is the usual value), got {}",
                p.dominance_share
            )));
        }
        if let Some(s) = p.exact_studies.difference(&p.allowed_studies).next() {
            return Err(NodeError::Config(format!(
                "policy.exact_studies lists \"{s}\", which is not in policy.allowed_studies"
            )));
        }
        if self.coordinator.max_backoff_secs == 0 {
            return Err(NodeError::Config(
                "coordinator.max_backoff_secs must be at least 1".into(),
            ));
        }
        self.tls
            .validate()
            .map_err(|e| NodeError::Config(format!("[tls] {e}")))?;
        self.verifying_key()?;
        self.data
            .validate()
            .map_err(|e| NodeError::Config(format!("[data] {e}")))?;
        self.consent
            .validate()
            .map_err(|e| NodeError::Config(format!("[consent] {e}")))?;
        Ok(())
    }
}
