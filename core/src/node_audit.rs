//! What a node keeps for its auditors, in the formats they read: the
//! entries of its job log and their outcomes, the signed checkpoints of
//! that log, and the coordinator's audit log as the node witnessed it
//! (`witnessed-checkpoint.json`). The node writes these files
//! (`plexus_node::log`, `plexus_node::witness`); `plexus audit verify
//! --node-log` and `--witnessed` read them with the same types, without
//! linking the node.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::merkle::{Checkpoint, TreeHead};
use crate::{Error, Result};

/// The job log's file name in the state folder.
pub const JOB_LOG_FILE: &str = "jobs.log.jsonl";
/// Signed checkpoints of the job log, one JSON line each.
pub const CHECKPOINT_FILE: &str = "audit-checkpoints.jsonl";
/// Stem of the node's audit key files (`node-audit-signing.key` / `.pub`).
pub const AUDIT_KEY_STEM: &str = "node-audit";

/// The outcome written before a job is computed.
pub const ACCEPTED: &str = "accepted";
/// The outcome of a job the node was computing when its link broke.
pub const DROPPED_LINK: &str = "dropped:link";
/// The outcome, written at start-up, of a job the node was killed with.
pub const DROPPED_CRASH: &str = "dropped:crash";

/// One job as the node saw it. Never holds patient data.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LogEntry {
    pub at: String,
    pub job_id: String,
    pub study_id: String,
    pub purpose: String,
    pub query_hash: String,
    pub analysis: String,
    /// `accepted` (write-ahead, before computing), then one of `released`,
    /// `refused:<code>`, `failed:<code>`, `dropped:link`, `dropped:crash`;
    /// for a study under review `held`, then `reviewed-approved`,
    /// `reviewed-rejected` or `review-expired`.
    pub outcome: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// What the job debited from the study's budget here (zCDP ρ).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy_cost: Option<f64>,
    /// The study's budget left here after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy_remaining: Option<f64>,
}

fn bad(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

/// Every checkpoint in a node's checkpoint file, oldest first. A last line
/// without its newline (a write cut short) is left out.
pub fn read_checkpoints(path: &Path) -> std::io::Result<Vec<Checkpoint>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path)?;
    let complete = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let n = lines.len();
    lines
        .into_iter()
        .enumerate()
        .filter(|(i, l)| !l.trim().is_empty() && (complete || i + 1 < n))
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                bad(format!(
                    "line {} of {} is not a checkpoint: {e}",
                    i + 1,
                    path.display()
                ))
            })
        })
        .collect()
}

/// The file a node keeps what it witnessed in.
pub const WITNESS_FILE: &str = "witnessed-checkpoint.json";
/// The version of [`Witnessed`] this build reads and writes.
pub const WITNESSED_FORMAT: u32 = 1;

/// The rules a checkpoint shown in a job must keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// The checkpoint is not signed by the pinned coordinator key.
    Signature,
    /// The checkpoint names another log than the one witnessed.
    Origin,
    /// Two checkpoints of one size with different roots.
    SplitView,
    /// A checkpoint smaller than the witnessed one, not proven a prefix.
    Truncated,
    /// The consistency proof does not show the witnessed log is a prefix.
    Fork,
    /// A job without a checkpoint once one was witnessed.
    Missing,
    /// A proof from a size this node never witnessed.
    Unproven,
}

impl Rule {
    /// The rule's name in refusals, readiness and the metric.
    pub fn name(self) -> &'static str {
        match self {
            Rule::Signature => "witness.signature",
            Rule::Origin => "witness.origin",
            Rule::SplitView => "witness.split-view",
            Rule::Truncated => "witness.truncated",
            Rule::Fork => "witness.fork",
            Rule::Missing => "witness.missing",
            Rule::Unproven => "witness.unproven",
        }
    }

    /// Whether breaking the rule shows the coordinator's log itself is
    /// not what this node witnessed (jobs are refused until an operator
    /// acts), rather than one job being incomplete.
    pub fn sticky(self) -> bool {
        !matches!(self, Rule::Missing | Rule::Unproven)
    }
}

/// A break of the witnessed log: jobs are refused until a reset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Broken {
    pub rule: Rule,
    pub detail: String,
    /// RFC 3339.
    pub at: String,
    /// The job that showed the checkpoint.
    pub job_id: String,
    /// The checkpoint shown.
    pub shown: Checkpoint,
}

/// An operator's reset, kept for auditors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reset {
    pub at: String,
    pub by: String,
    pub reason: String,
    /// What was witnessed before the reset.
    pub forgot: Option<Checkpoint>,
    /// The break the reset cleared, if any.
    pub cleared: Option<Broken>,
}

/// `STATE_DIR/witnessed-checkpoint.json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Witnessed {
    pub format: u32,
    /// The newest checkpoint witnessed (verified).
    pub checkpoint: Option<Checkpoint>,
    /// Earlier heads witnessed, oldest first.
    #[serde(default)]
    pub history: Vec<TreeHead>,
    #[serde(default)]
    pub broken: Option<Broken>,
    #[serde(default)]
    pub resets: Vec<Reset>,
}

impl Witnessed {
    /// Reads the file in `dir` (empty when there is none).
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(WITNESS_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Witnessed {
                    format: WITNESSED_FORMAT,
                    ..Default::default()
                })
            }
            Err(e) => {
                return Err(Error::internal(format!(
                    "cannot read {}: {e} (check the node's state folder)",
                    path.display()
                )))
            }
        };
        let w: Witnessed = serde_json::from_str(&text).map_err(|e| {
            Error::invalid(format!(
                "{} is not a witnessed checkpoint file: {e}; it is written whole or not at all, so it was edited or the disk is failing: restore it from backup, or run `plexus-node witness reset --reason \"...\"` to witness afresh",
                path.display()
            ))
        })?;
        if w.format != WITNESSED_FORMAT {
            return Err(Error::invalid(format!(
                "{} has format {}, this node reads format {WITNESSED_FORMAT}: run the node version that wrote it, or `plexus-node witness reset --reason \"...\"`",
                path.display(),
                w.format
            )));
        }
        Ok(w)
    }

    /// Every head witnessed, the newest checkpoint's included: root by size.
    pub fn heads(&self) -> BTreeMap<u64, String> {
        let mut heads: BTreeMap<u64, String> = self
            .history
            .iter()
            .map(|h| (h.size, h.root.clone()))
            .collect();
        if let Some(c) = &self.checkpoint {
            heads.insert(c.head.size, c.head.root.clone());
        }
        heads
    }
}
