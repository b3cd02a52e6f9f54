//! The hospital's release gate. For the studies `policy.review` names, a
//! result that passed every automatic check (disclosure control, noise,
//! ledger debit) is held here instead of being sent, until the hospital's
//! data steward approves or rejects it (`plexus-node review ...`) or the
//! job's deadline passes.
//!
//! The queue is a folder of small files in the node's state folder, so it
//! survives restarts and the steward's commands need no connection to the
//! running daemon, which polls the folder:
//!
//! - `JOB.held.json`: the held result, exactly as it would leave, and what
//!   the job asked (written once, atomically);
//! - `JOB.decision.json`: the decision (approved, rejected, or expired when
//!   the daemon found no decision in time). Created exclusively, so the
//!   first decision stands and a late one is refused;
//! - `JOB.answer.pb`: the signed answer the daemon made from the decision;
//! - `JOB.closed`: the answer went out to the coordinator, or never will
//!   (its deadline passed first); the file says which.

pub mod cli;
pub mod desk;
mod gate;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::NodeError;

/// The queue's folder inside the node's state folder.
pub const REVIEW_DIR: &str = "review";

/// How long before the job's deadline an undecided result expires, so that
/// the expiry still reaches the coordinator while it waits.
pub const ANSWER_MARGIN_MS: i64 = 1_000;

/// A result waiting for the data steward, with what the job asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldResult {
    pub job_id: String,
    pub node_id: String,
    pub study_id: String,
    /// The study definition the job ran under.
    pub study_definition_hash: String,
    pub purpose: String,
    pub analysis: String,
    pub query_hash: String,
    /// The query as the researcher wrote it: cohort and analysis.
    pub query: serde_json::Value,
    /// SHA-256 (hex) of the signed job bytes, which the answer names.
    pub job_hash: String,
    pub held_unix_ms: i64,
    pub deadline_unix_ms: i64,
    /// The encoded `NodeStats` (hex): the exact aggregate that leaves on approval.
    pub stats: String,
    /// The encoded `PrivacyReceipt` (hex); absent for exact studies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<String>,
    /// The data snapshot the result was computed on.
    pub data_snapshot: String,
    /// The local log's line about it: shape, suppression and cost.
    pub summary: String,
    /// Under secure aggregation: `stats` leaves masked for this session's
    /// roster, with the keys the running node holds in memory (a restart
    /// loses them, and the node is then a dropout of the session).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secure_aggregation: Option<crate::secagg::HeldMask>,
}

impl HeldResult {
    /// The last moment a decision is taken: a little before the deadline.
    pub fn answer_by_unix_ms(&self) -> i64 {
        (self.deadline_unix_ms - ANSWER_MARGIN_MS).max(self.held_unix_ms)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Approved,
    Rejected,
    /// No decision before the job's deadline: nothing was released.
    Expired,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Approved => "approved",
            Verdict::Rejected => "rejected",
            Verdict::Expired => "expired",
        }
    }

    /// The outcome both the node's log and the coordinator's audit record.
    pub fn outcome(self) -> &'static str {
        match self {
            Verdict::Approved => "reviewed-approved",
            Verdict::Rejected => "reviewed-rejected",
            Verdict::Expired => "review-expired",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub verdict: Verdict,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// The local account that decided, or `plexus-node` for an expiry.
    pub by: String,
    pub decided_unix_ms: i64,
}

/// Where a held result stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Waiting for the steward.
    Pending,
    /// Decided; the daemon has not answered the coordinator yet.
    Decided(Verdict),
    /// Decided and answered (or its deadline passed before it could be).
    Answered(Verdict),
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Status::Pending => f.write_str("pending"),
            Status::Decided(v) => write!(f, "{} (not yet sent)", v.as_str()),
            Status::Answered(v) => f.write_str(v.as_str()),
        }
    }
}

/// One item of the queue with everything known about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub held: HeldResult,
    pub decision: Option<Decision>,
    /// The daemon made the signed answer.
    pub answered: bool,
    /// Whether and when the answer went out (`sent at ...`, or why not).
    pub closed: Option<String>,
}

impl Entry {
    pub fn status(&self) -> Status {
        match &self.decision {
            None => Status::Pending,
            Some(d) if self.closed.is_some() || self.answered => Status::Answered(d.verdict),
            Some(d) => Status::Decided(d.verdict),
        }
    }
}

/// The review queue's folder.
#[derive(Debug, Clone)]
pub struct ReviewQueue {
    dir: PathBuf,
}

const HELD: &str = ".held.json";
const DECISION: &str = ".decision.json";
const ANSWER: &str = ".answer.pb";
const CLOSED: &str = ".closed";

impl ReviewQueue {
    /// Opens (creating) `STATE_DIR/review`.
    pub fn open(state_dir: &Path) -> Result<Self, NodeError> {
        let dir = state_dir.join(REVIEW_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| {
            NodeError::State(format!(
                "cannot create the review queue {}: {e} (check the node's state folder)",
                dir.display()
            ))
        })?;
        Ok(ReviewQueue { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, job_id: &str, suffix: &str) -> Result<PathBuf, NodeError> {
        check_job_id(job_id)?;
        Ok(self.dir.join(format!("{job_id}{suffix}")))
    }

    fn io(&self, what: &str, job_id: &str, e: std::io::Error) -> NodeError {
        NodeError::State(format!(
            "cannot {what} job {job_id} in the review queue {}: {e} (run as the node's account, or check the state folder)",
            self.dir.display()
        ))
    }

    /// Puts a result in the queue.
    pub fn hold(&self, held: &HeldResult) -> Result<(), NodeError> {
        let path = self.path(&held.job_id, HELD)?;
        let bytes = serde_json::to_vec_pretty(held).expect("a held result serialises");
        write_atomically(&path, &bytes).map_err(|e| self.io("hold", &held.job_id, e))
    }

    /// Every item of the queue, oldest first.
    pub fn entries(&self) -> Result<Vec<Entry>, NodeError> {
        let mut out: Vec<Entry> = self
            .job_ids()?
            .iter()
            .map(|id| self.entry(id))
            .collect::<Result<_, _>>()?;
        out.sort_by(|a, b| {
            (a.held.held_unix_ms, &a.held.job_id).cmp(&(b.held.held_unix_ms, &b.held.job_id))
        });
        Ok(out)
    }

    /// The ids of the queue's items, each with the suffixes of its files.
    fn files(&self) -> Result<BTreeMap<String, Vec<&'static str>>, NodeError> {
        let read = std::fs::read_dir(&self.dir).map_err(|e| {
            NodeError::State(format!(
                "cannot list the review queue {}: {e}",
                self.dir.display()
            ))
        })?;
        let mut out: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
        for f in read.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            for suffix in [HELD, DECISION, ANSWER, CLOSED] {
                if let Some(id) = name.strip_suffix(suffix) {
                    if check_job_id(id).is_ok() {
                        out.entry(id.to_string()).or_default().push(suffix);
                    }
                }
            }
        }
        out.retain(|_, suffixes| suffixes.contains(&HELD));
        Ok(out)
    }

    /// The ids of every held result.
    pub fn job_ids(&self) -> Result<Vec<String>, NodeError> {
        Ok(self.files()?.into_keys().collect())
    }

    /// Ids of held results not closed yet, with whether each has its answer.
    pub fn open_items(&self) -> Result<Vec<(String, bool)>, NodeError> {
        Ok(self
            .files()?
            .into_iter()
            .filter(|(_, s)| !s.contains(&CLOSED))
            .map(|(id, s)| (id, s.contains(&ANSWER)))
            .collect())
    }

    /// One item, by job id.
    pub fn entry(&self, job_id: &str) -> Result<Entry, NodeError> {
        let path = self.path(job_id, HELD)?;
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(NodeError::State(format!(
                    "no result of job {job_id} is in the review queue {} (`plexus-node review list` shows them)",
                    self.dir.display()
                )))
            }
            Err(e) => return Err(self.io("read", job_id, e)),
        };
        let held: HeldResult = serde_json::from_slice(&text).map_err(|e| {
            NodeError::State(format!(
                "{} is not a held result ({e}); it was edited or damaged",
                path.display()
            ))
        })?;
        Ok(Entry {
            held,
            decision: self.decision(job_id)?,
            answered: self.path(job_id, ANSWER)?.exists(),
            closed: match std::fs::read_to_string(self.path(job_id, CLOSED)?) {
                Ok(t) => Some(t),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(self.io("read the state of", job_id, e)),
            },
        })
    }

    fn decision(&self, job_id: &str) -> Result<Option<Decision>, NodeError> {
        let path = self.path(job_id, DECISION)?;
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                NodeError::State(format!(
                    "{} is not a decision ({e}); it was edited or damaged",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io("read the decision on", job_id, e)),
        }
    }

    /// Records a decision unless one was already taken; returns the
    /// decision that stands and whether it is this one.
    pub fn decide(&self, job_id: &str, decision: &Decision) -> Result<(Decision, bool), NodeError> {
        let path = self.path(job_id, DECISION)?;
        if !self.path(job_id, HELD)?.exists() {
            return Err(NodeError::State(format!(
                "no result of job {job_id} is in the review queue {} (`plexus-node review list` shows them)",
                self.dir.display()
            )));
        }
        let bytes = serde_json::to_vec_pretty(decision).expect("a decision serialises");
        // Written aside, then linked into place: the link fails if a
        // decision exists, so the first one stands and none is ever torn.
        let tmp = self.dir.join(format!(
            "{job_id}.decision.{}.{}.tmp",
            std::process::id(),
            rand::random::<u64>()
        ));
        let linked = write_synced(&tmp, &bytes).and_then(|_| std::fs::hard_link(&tmp, &path));
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                sync_dir(&self.dir);
                Ok((decision.clone(), true))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let standing = self.decision(job_id)?.ok_or_else(|| {
                    NodeError::State(format!("the decision on job {job_id} vanished"))
                })?;
                Ok((standing, false))
            }
            Err(e) => Err(self.io("record the decision on", job_id, e)),
        }
    }

    /// Keeps the signed answer made from the decision.
    pub fn save_answer(&self, job_id: &str, bytes: &[u8]) -> Result<(), NodeError> {
        write_atomically(&self.path(job_id, ANSWER)?, bytes)
            .map_err(|e| self.io("keep the answer to", job_id, e))
    }

    pub fn answer(&self, job_id: &str) -> Result<Vec<u8>, NodeError> {
        std::fs::read(self.path(job_id, ANSWER)?)
            .map_err(|e| self.io("read the answer to", job_id, e))
    }

    /// Closes an item: its answer went out, or never can (`note` says which).
    pub fn close(&self, job_id: &str, note: &str) -> Result<(), NodeError> {
        write_atomically(&self.path(job_id, CLOSED)?, note.as_bytes())
            .map_err(|e| self.io("close", job_id, e))
    }
}

/// Job ids name files here: only the hex the coordinator makes is accepted.
fn check_job_id(job_id: &str) -> Result<(), NodeError> {
    if job_id.is_empty() || job_id.len() > 128 || !job_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(NodeError::State(format!(
            "\"{job_id}\" is not a job id (hex digits, as `plexus-node review list` prints them)"
        )));
    }
    Ok(())
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Writes aside, then renames into place: readers see all or nothing.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("{}.tmp", rand::random::<u64>()));
    let written = write_synced(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    if let Some(dir) = path.parent() {
        sync_dir(dir);
    }
    written
}

/// Makes a rename or link in `dir` durable (a no-op where folders cannot be opened).
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests;
