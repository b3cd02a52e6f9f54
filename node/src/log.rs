//! The node's own append-only log of every job it ran or refused, kept
//! next to the hospital's data so its IT can see what was asked of it
//! without trusting the coordinator. JSON lines, flushed to disk per entry.
//!
//! The log is a Merkle log (RFC 6962 shape, [`plexus_core::merkle`]): each
//! line's leaf is the SHA-256 of its bytes, and checkpoints of the tree
//! (size, root, time), signed with the node's own Ed25519 audit key
//! (`STATE_DIR/node-audit-signing.key`, made at first start; give auditors
//! its `.pub`), are appended to `audit-checkpoints.jsonl` at a fixed interval,
//! when the node stops, and on demand (`plexus-node checkpoint`). An auditor
//! checks the lines against them with `plexus audit verify --node-log`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tracing::warn;

use plexus_core::merkle::{leaf_of, Checkpoint, MerkleLog};

/// The job log's file name in the state folder.
pub const JOB_LOG_FILE: &str = "jobs.log.jsonl";
/// Signed checkpoints of the job log, one JSON line each.
pub const CHECKPOINT_FILE: &str = "audit-checkpoints.jsonl";
/// Stem of the node's audit key files (`node-audit-signing.key` / `.pub`).
pub const AUDIT_KEY_STEM: &str = "node-audit";

/// One job as the node saw it. Never holds patient data.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LogEntry {
    pub at: String,
    pub job_id: String,
    pub study_id: String,
    pub purpose: String,
    pub query_hash: String,
    pub analysis: String,
    /// `released`, `refused:<code>` or `failed:<code>`; for a study under
    /// review `held`, then `reviewed-approved`, `reviewed-rejected` or
    /// `review-expired`.
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

pub struct JobLog {
    path: PathBuf,
    checkpoints: PathBuf,
    origin: String,
    key: Option<Arc<plexus_tls::SigningKey>>,
    inner: Mutex<Inner>,
}

struct Inner {
    file: File,
    tree: MerkleLog,
    last_signed: Option<u64>,
}

impl JobLog {
    /// Opens the log in `dir` without a signing key (checkpoints cannot be
    /// made): for tools that only read or append.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(JOB_LOG_FILE);
        let mut tree = MerkleLog::new();
        if path.exists() {
            let bytes = std::fs::read(&path)?;
            for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                tree.push(leaf_of(line));
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(JobLog {
            path,
            checkpoints: dir.join(CHECKPOINT_FILE),
            origin: String::new(),
            key: None,
            inner: Mutex::new(Inner {
                file,
                tree,
                last_signed: None,
            }),
        })
    }

    /// Opens the log of node `node_id` with its audit key, making the key
    /// on first use.
    pub fn open_signed(dir: &Path, node_id: &str) -> std::io::Result<Self> {
        let mut log = Self::open(dir)?;
        let (key_path, _) = plexus_tls::signing_key_files(dir, AUDIT_KEY_STEM);
        let key = if key_path.exists() {
            plexus_tls::SigningKey::load(&key_path)
        } else {
            plexus_tls::SigningKey::generate_into(dir, AUDIT_KEY_STEM).map(|(k, _, _)| k)
        }
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        log.origin = format!("node/{node_id}");
        log.key = Some(Arc::new(key));
        let last = read_checkpoints(&log.checkpoints)?
            .last()
            .map(|c| c.head.size);
        log.inner.lock().expect("log lock").last_signed = last;
        Ok(log)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn append(&self, entry: &LogEntry) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        let leaf = leaf_of(&line);
        line.push(b'\n');
        let mut inner = self.inner.lock().expect("log lock");
        inner.file.write_all(&line)?;
        inner.file.sync_data()?;
        inner.tree.push(leaf);
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.inner.lock().expect("log lock").tree.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Signs a checkpoint of the log as it is now and appends it to the
    /// checkpoint file.
    pub fn checkpoint(&self) -> std::io::Result<Checkpoint> {
        let mut inner = self.inner.lock().expect("log lock");
        self.sign(&mut inner)
    }

    fn sign(&self, inner: &mut Inner) -> std::io::Result<Checkpoint> {
        let key = self.key.as_ref().ok_or_else(|| {
            std::io::Error::other("this job log was opened without the node's audit key")
        })?;
        let c = Checkpoint::sign_with(
            |m| key.sign(m),
            &self.origin,
            inner.tree.head(),
            chrono::Utc::now().timestamp_millis(),
        );
        let mut line = serde_json::to_vec(&c).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.checkpoints)?;
        f.write_all(&line)?;
        f.sync_data()?;
        inner.last_signed = Some(c.head.size);
        Ok(c)
    }

    /// Signs a checkpoint when the log grew since the last one.
    pub fn publish_if_grown(&self) -> std::io::Result<Option<Checkpoint>> {
        let mut inner = self.inner.lock().expect("log lock");
        if inner.last_signed == Some(inner.tree.len()) {
            return Ok(None);
        }
        self.sign(&mut inner).map(Some)
    }

    /// Publishes checkpoints every `every` until `shutdown`, and one more
    /// when it comes.
    pub async fn publish_every(
        self: Arc<Self>,
        every: std::time::Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stop = tokio::select! {
                _ = shutdown.cancelled() => true,
                _ = tick.tick() => false,
            };
            if let Err(e) = self.publish_if_grown() {
                warn!(error = %e, "could not publish a checkpoint of the job log");
            }
            if stop {
                break;
            }
        }
    }

    /// Reads every entry back, e.g. for an auditor or a test.
    pub fn read_all(path: &Path) -> std::io::Result<Vec<LogEntry>> {
        let text = std::fs::read_to_string(path)?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(std::io::Error::other))
            .collect()
    }
}

/// Every checkpoint in a node's checkpoint file, oldest first.
pub fn read_checkpoints(path: &Path) -> std::io::Result<Vec<Checkpoint>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).map_err(|e| {
                std::io::Error::other(format!(
                    "{} holds a line that is not a checkpoint: {e}",
                    path.display()
                ))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_core::merkle::verify_log;

    #[test]
    fn checkpoints_sign_the_lines_as_written_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let log = JobLog::open_signed(dir.path(), "node-a").unwrap();
        for i in 0..5 {
            log.append(&LogEntry {
                job_id: format!("job-{i}"),
                outcome: "released".into(),
                ..Default::default()
            })
            .unwrap();
        }
        let c = log.checkpoint().unwrap();
        assert_eq!(c.head.size, 5);
        assert!(log.publish_if_grown().unwrap().is_none());
        drop(log);

        let log = JobLog::open_signed(dir.path(), "node-a").unwrap();
        assert_eq!(log.len(), 5);
        assert!(log.publish_if_grown().unwrap().is_none());
        let (_, public) = plexus_tls::signing_key_files(dir.path(), AUDIT_KEY_STEM);
        let key = plexus_tls::VerifyingKey::load(&public).unwrap();
        let saved = read_checkpoints(&dir.path().join(CHECKPOINT_FILE)).unwrap();
        assert_eq!(saved, vec![c.clone()]);
        c.verify(&hex::decode(key.to_hex()).unwrap()).unwrap();
        let bytes = std::fs::read(dir.path().join(JOB_LOG_FILE)).unwrap();
        let leaves = bytes
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(leaf_of);
        assert_eq!(verify_log(leaves, &c.head).unwrap(), 5);

        // One edited line breaks the checkpoint.
        let edited = String::from_utf8(bytes)
            .unwrap()
            .replacen("job-2", "job-9", 1);
        let leaves = edited.lines().map(|l| leaf_of(l.as_bytes()));
        assert!(verify_log(leaves, &c.head).is_err());
    }
}
