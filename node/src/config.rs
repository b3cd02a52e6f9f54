//! `node.toml`: what a hospital's IT configures. Parsed strictly, then
//! validated with errors that name the field.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use plexus_core::{AnalysisKind, Dictionary, StudyDefinition};
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
    /// Absent on a warehouse node that keeps consent in its database.
    #[serde(default)]
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
    /// Where to serve `/metrics`, `/healthz` and `/readyz` over plain HTTP
    /// (e.g. `127.0.0.1:9465`). Absent by default: the node then opens no
    /// port at all; keep it on localhost or a monitoring network.
    #[serde(default)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// On SIGTERM/SIGINT, how long jobs in flight may take to finish
    /// before they are answered with a retryable error.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_secs: u64,
}

fn default_shutdown_grace() -> u64 {
    20
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorSection {
    /// `https://host:port` of the coordinator; the node dials out to it.
    #[serde(default)]
    pub address: String,
    /// More coordinators (active/standby on one database): the node tries
    /// `address` then these in turn whenever it (re)connects, and stays
    /// with the one that accepts it.
    #[serde(default)]
    pub addresses: Vec<String>,
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

impl CoordinatorSection {
    /// Every coordinator to try, in order: `address`, then `addresses`
    /// (empty entries left out, each once).
    pub fn addresses(&self) -> Vec<&str> {
        let mut all: Vec<&str> = Vec::new();
        for a in std::iter::once(&self.address).chain(&self.addresses) {
            let a = a.trim();
            if !a.is_empty() && !all.contains(&a) {
                all.push(a);
            }
        }
        all
    }
}

/// The hospital's own rules, enforced whatever the coordinator says.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The studies this hospital takes part in, each pinned to the
    /// definitions it approved (`[policy.studies.ID]`). Jobs of any other
    /// study, or of a definition not approved, are refused.
    #[serde(default)]
    pub studies: BTreeMap<String, StudyPolicy>,
    /// Studies whose results wait for the hospital's data steward
    /// (`plexus-node review ...`) before they leave; `"*"` for every study.
    #[serde(default)]
    pub review: BTreeSet<String>,
    /// Replaced by `[policy.studies.ID]`; read only to say so.
    #[serde(default, skip_serializing)]
    pub allowed_studies: Option<Vec<String>>,
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
    /// The least one job may spend (zCDP ρ). A job asking less is refused:
    /// the budget then bounds how many questions a study can ask here, not
    /// only how much they learn.
    #[serde(default = "default_min_query_rho")]
    pub min_query_rho: f64,
    /// The most budget any study may spend here, whatever it was registered with.
    #[serde(default = "default_max_study_rho")]
    pub max_study_rho: f64,
    /// Share of a sum one or two patients may hold before it is withheld.
    #[serde(default = "default_dominance_share")]
    pub dominance_share: f64,
}

/// What the hospital approved of one study (`[policy.studies.ID]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyPolicy {
    /// SHA-256 (hex) of each approved version of the study's definition, as
    /// `plexus study show ID` prints it. Versions approved later with
    /// `plexus-node approve` (kept in the state folder) count too.
    #[serde(default)]
    pub definition_hashes: BTreeSet<String>,
    /// The approved hash of each prediction model the study may validate
    /// here, as `plexus model list --study ID` prints it. Models approved
    /// later with `plexus-node approve --model` count too.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub model_hashes: BTreeSet<String>,
    /// When set, the only analyses this node runs for the study.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analyses: Option<BTreeSet<AnalysisKind>>,
    /// When set, the only variables (in cohorts and analyses) this node
    /// lets the study use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variables: Option<BTreeSet<String>>,
}

impl StudyPolicy {
    /// A study pinned to the given definition hashes, not narrowed.
    pub fn pinned(hashes: impl IntoIterator<Item = String>) -> Self {
        StudyPolicy {
            definition_hashes: hashes.into_iter().collect(),
            ..Default::default()
        }
    }
}

impl Default for Policy {
    /// No study approved, every other setting at its default.
    fn default() -> Self {
        Policy {
            studies: BTreeMap::new(),
            review: BTreeSet::new(),
            allowed_studies: None,
            max_parameter_share: default_parameter_share(),
            exact_studies: BTreeSet::new(),
            max_query_rho: default_max_query_rho(),
            min_query_rho: default_min_query_rho(),
            max_study_rho: default_max_study_rho(),
            dominance_share: default_dominance_share(),
        }
    }
}

impl Policy {
    /// A policy approving exactly these study definitions, every other
    /// setting at its default.
    pub fn approving<'a>(studies: impl IntoIterator<Item = &'a StudyDefinition>) -> Self {
        let mut policy = Policy::default();
        for s in studies {
            policy.approve(s);
        }
        policy
    }

    /// Adds `study`'s current definition to the approved versions of its id.
    pub fn approve(&mut self, study: &StudyDefinition) {
        self.studies
            .entry(study.id.clone())
            .or_default()
            .definition_hashes
            .insert(study.definition_hash());
    }

    /// Whether results of `study` wait for the data steward.
    pub fn reviews(&self, study: &str) -> bool {
        self.review.contains("*") || self.review.contains(study)
    }

    /// Checks the narrowing lists against the network's data dictionary,
    /// which the node loads only when it starts.
    pub fn validate_variables(&self, dictionary: &Dictionary) -> Result<()> {
        for (id, s) in &self.studies {
            for v in s.variables.iter().flatten() {
                if dictionary.get(v).is_err() {
                    return Err(NodeError::Config(format!(
                        "policy.studies.{id}.variables names \"{v}\", which is not in the data dictionary; use the dictionary's names (`plexus dictionary` lists them)"
                    )));
                }
            }
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<()> {
        if self.allowed_studies.is_some() {
            return Err(NodeError::Config(
                "policy.allowed_studies was replaced by one [policy.studies.ID] table per study that pins the approved definition hashes (definition_hashes = [\"...\"], as `plexus study show ID` prints them); move each study there".into(),
            ));
        }
        for (id, s) in &self.studies {
            if !plexus_core::dictionary::is_identifier(id) {
                return Err(NodeError::Config(format!(
                    "[policy.studies.{id}]: \"{id}\" is not a study id (lowercase letters, digits, '_' or '-', starting with a letter)"
                )));
            }
            if let Some(h) = s.definition_hashes.iter().find(|h| !is_sha256_hex(h)) {
                return Err(NodeError::Config(format!(
                    "policy.studies.{id}.definition_hashes: \"{h}\" is not a SHA-256 hex digest (64 characters 0-9, a-f); copy it from `plexus study show {id}`"
                )));
            }
            for (key, empty) in [
                (
                    "analyses",
                    s.analyses.as_ref().is_some_and(|a| a.is_empty()),
                ),
                (
                    "variables",
                    s.variables.as_ref().is_some_and(|v| v.is_empty()),
                ),
            ] {
                if empty {
                    return Err(NodeError::Config(format!(
                        "policy.studies.{id}.{key} is empty, which lets the study do nothing; leave the key out to allow what the study allows, or remove the study"
                    )));
                }
            }
        }
        for (key, list) in [
            ("exact_studies", &self.exact_studies),
            ("review", &self.review),
        ] {
            let unknown = list
                .iter()
                .find(|s| !(self.studies.contains_key(*s) || (key == "review" && *s == "*")));
            if let Some(s) = unknown {
                let hint = if key == "review" {
                    " (\"*\" reviews every study)"
                } else {
                    ""
                };
                return Err(NodeError::Config(format!(
                    "policy.{key} lists \"{s}\", which has no [policy.studies.{s}] table{hint}"
                )));
            }
        }
        Ok(())
    }
}

/// Whether `s` is a SHA-256 digest written as 64 lowercase hex characters.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn default_parameter_share() -> f64 {
    plexus_core::DEFAULT_MAX_PARAMETER_SHARE
}
/// A count noised with σ ≥ √5 ≈ 2.2.
pub const DEFAULT_MAX_QUERY_RHO: f64 = 0.1;
fn default_max_query_rho() -> f64 {
    DEFAULT_MAX_QUERY_RHO
}
/// A hospital's floor on one job's cost when it sets none: a count at
/// this cost is noised with σ ≈ 71 patients, and a study's default budget
/// pays for at most 10,000 jobs at it.
pub const DEFAULT_MIN_QUERY_RHO: f64 = 1e-4;

fn default_min_query_rho() -> f64 {
    DEFAULT_MIN_QUERY_RHO
}
fn default_max_study_rho() -> f64 {
    plexus_core::study::DEFAULT_BUDGET_RHO
}
fn default_dominance_share() -> f64 {
    plexus_core::disclosure::suppression::DEFAULT_DOMINANCE_SHARE
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
        if self.node.shutdown_grace_secs > 3600 {
            return Err(NodeError::Config(format!(
                "node.shutdown_grace_secs must be at most 3600 (20 is the default), got {}",
                self.node.shutdown_grace_secs
            )));
        }
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
        if self.coordinator.addresses().is_empty() {
            return Err(NodeError::Config(
                "coordinator.address is empty; set it to https://host:port of your network's coordinator (or list several in coordinator.addresses)".into(),
            ));
        }
        for addr in self.coordinator.addresses() {
            if !addr.starts_with("https://") {
                return Err(NodeError::Config(format!(
                    "coordinator address \"{addr}\" must start with https:// (nodes only speak mTLS)"
                )));
            }
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
        if !(p.min_query_rho.is_finite() && p.min_query_rho >= 0.0)
            || p.min_query_rho > p.max_query_rho
        {
            return Err(NodeError::Config(format!(
                "policy.min_query_rho must be a zCDP rho from 0 up to policy.max_query_rho ({}), got {}",
                p.max_query_rho, p.min_query_rho
            )));
        }
        if !(p.dominance_share > 0.5 && p.dominance_share <= 1.0) {
            return Err(NodeError::Config(format!(
                "policy.dominance_share must be above 0.5 and at most 1 (0.85 is the usual value), got {}",
                p.dominance_share
            )));
        }
        p.validate()?;
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
        self.data
            .validate_consent(&self.consent)
            .map_err(|e| NodeError::Config(format!("[consent] {e}")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::CoordinatorSection;

    #[test]
    fn coordinators_are_tried_address_first_then_the_list_each_once() {
        let c: CoordinatorSection = toml::from_str(
            r#"address = "https://a.example:7443"
addresses = ["https://b.example:7443", "https://a.example:7443", " "]
signing_key = "coordinator-signing.pub""#,
        )
        .unwrap();
        assert_eq!(
            c.addresses(),
            ["https://a.example:7443", "https://b.example:7443"]
        );
        let c: CoordinatorSection = toml::from_str(
            r#"addresses = ["https://b.example:7443"]
signing_key = "coordinator-signing.pub""#,
        )
        .unwrap();
        assert_eq!(c.addresses(), ["https://b.example:7443"]);
    }
}
