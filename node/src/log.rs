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

//!
//! Every line is a sealed record ([`crate::record`]): it carries its own
//! hash and the previous line's, so a torn or edited line is named at
//! start-up. Write-ahead: a job the node takes gets an `accepted` entry
//! before anything is computed, then exactly one outcome (`released`,
//! `refused:<code>`, `failed:<code>`, `held`, or `dropped:link` when the
//! link to the coordinator broke with the job in hand) before anything goes
//! back. An `accepted` entry without an outcome at start-up is a job the
//! node was killed with: it gets `dropped:crash`. So after any crash every
//! job the node took has an outcome, and reconciling with the coordinator's
//! log shows no noise.
//!
//! At start-up the log must match every checkpoint the node signed: a log
//! shorter than a checkpoint (cut) or one whose lines do not make its root
//! (rewritten) stops the node. A last line torn by a crash during its write
//! is cut off with a warning when no checkpoint covers it: its outcome was
//! never sent, since the answer waits for the sync.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tracing::warn;

use plexus_core::merkle::{leaf_of, verify_log_heads, Checkpoint, MerkleLog, TreeHead};

use crate::record::{self, Appender, Recovered, Writer};

// The entry format and file names auditors read too: in plexus-core, so
// the CLI reads a node's log without linking the node.
pub use plexus_core::node_audit::{
    read_checkpoints, LogEntry, ACCEPTED, AUDIT_KEY_STEM, CHECKPOINT_FILE, DROPPED_CRASH,
    DROPPED_LINK, JOB_LOG_FILE,
};

/// A job the log says was charged, for the start-up cross-check with the
/// privacy ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct Charged {
    pub line: usize,
    pub job_id: String,
    pub rho: f64,
}

pub struct JobLog {
    path: PathBuf,
    checkpoints: PathBuf,
    origin: String,
    key: Option<Arc<plexus_tls::SigningKey>>,
    /// Charged jobs as read at open.
    charged: Vec<Charged>,
    inner: Mutex<Inner>,
}

struct Inner {
    /// The log file; read-only for a tool beside a running node.
    records: Writer,
    tree: MerkleLog,
    last_signed: Option<u64>,
    /// Jobs with an `accepted` entry and no outcome yet.
    open: HashMap<String, LogEntry>,
}

/// How the log is opened.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// The node: repairs a torn last line and appends.
    Write,
    /// A tool beside a (possibly running) node: reads and signs, never
    /// changes the log, leaves out a last line still being written.
    Read,
}

fn bad(message: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message)
}

impl JobLog {
    /// Opens the log in `dir` for the node (repairing a torn last line)
    /// without a signing key: checkpoints cannot be made.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        Self::open_mode(dir, Mode::Write)
    }

    fn open_mode(dir: &Path, mode: Mode) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(JOB_LOG_FILE);
        let checkpoints = dir.join(CHECKPOINT_FILE);
        let scan = record::scan(&path, "job log", |line| {
            serde_json::from_slice::<LogEntry>(line).map_err(|e| format!("not a job log entry ({e})"))
        })?
        .map_err(|e| {
            bad(format!(
                "{e}; the node does not run on a damaged job log: restore {} from the last backup of the state folder (an auditor can check a copy with `plexus audit verify --node-log`)",
                path.display()
            ))
        })?;
        let signed = read_checkpoints(&checkpoints)?;
        let (_, public) = plexus_tls::signing_key_files(dir, AUDIT_KEY_STEM);
        let key = plexus_tls::VerifyingKey::load(&public).ok();
        check_against_checkpoints(
            &path,
            &checkpoints,
            scan.records.iter().map(|r| leaf_of(&r.bytes)),
            scan.records.len() as u64,
            &signed,
            key.as_ref(),
        )?;
        if let Some(torn) = &scan.torn {
            if mode == Mode::Write {
                warn!(
                    path = %path.display(),
                    line = torn.line,
                    reason = %torn.reason,
                    "cutting off the job log's last line, torn by a crash while it was written (its outcome was never sent: answers wait for the write)"
                );
            }
        }
        let mut tree = MerkleLog::new();
        let mut open = HashMap::new();
        let mut charged = Vec::new();
        for r in &scan.records {
            tree.push(leaf_of(&r.bytes));
            let e = &r.value;
            if e.outcome == ACCEPTED {
                open.insert(e.job_id.clone(), e.clone());
            } else {
                open.remove(&e.job_id);
            }
            if let Some(rho) = e.privacy_cost.filter(|rho| *rho > 0.0) {
                if e.outcome == "released" || e.outcome.starts_with("refused") {
                    charged.push(Charged {
                        line: r.line,
                        job_id: e.job_id.clone(),
                        rho,
                    });
                }
            }
        }
        let file = match mode {
            Mode::Write => Some(Appender::open(&scan)?),
            Mode::Read => None,
        };
        Ok(JobLog {
            path,
            checkpoints,
            origin: String::new(),
            key: None,
            charged,
            inner: Mutex::new(Inner {
                records: Writer::new(file),
                tree,
                last_signed: signed.last().map(|c| c.head.size),
                open,
            }),
        })
    }

    /// Opens the log of node `node_id` with its audit key, making the key
    /// on first use: the node's own way in.
    pub fn open_signed(dir: &Path, node_id: &str) -> std::io::Result<Self> {
        let key = audit_key(dir)?;
        let mut log = Self::open_mode(dir, Mode::Write)?;
        log.origin = format!("node/{node_id}");
        log.key = Some(key);
        Ok(log)
    }

    /// Opens the log read-only with the node's audit key, to sign a
    /// checkpoint beside a running node (`plexus-node checkpoint`).
    pub fn open_to_sign(dir: &Path, node_id: &str) -> std::io::Result<Self> {
        let key = audit_key(dir)?;
        let mut log = Self::open_mode(dir, Mode::Read)?;
        log.origin = format!("node/{node_id}");
        log.key = Some(key);
        Ok(log)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A secret of this node for `label`, derived from its audit key (an
    /// Ed25519 signature is a deterministic function of key and message
    /// nobody else can compute): the same across restarts, unknown to the
    /// coordinator and researchers. `None` for a log opened without the
    /// key.
    pub fn secret(&self, label: &str) -> Option<[u8; 32]> {
        self.key.as_ref().map(|k| secret_of(k, label))
    }

    /// Appends one entry, durably (written and synced) before it returns.
    /// The entry is written under the log's lock and synced after it, so
    /// the entries of jobs running at once share one sync (group commit).
    /// A failed write leaves no fragment behind and is remembered (see
    /// [`JobLog::trouble`]) until an append succeeds; a failed sync until
    /// [`JobLog::recover`].
    pub fn append(&self, entry: &LogEntry) -> std::io::Result<()> {
        self.write(entry)?.durable().map(drop)
    }

    /// [`JobLog::append`] for async callers: the job's task awaits the
    /// sync without holding an async worker.
    pub async fn append_async(&self, entry: &LogEntry) -> std::io::Result<()> {
        self.write(entry)?.durable_async().await.map(drop)
    }

    /// Writes one entry without waiting for it to reach the disk: a job's
    /// write-ahead `accepted` entry, made durable by the sync of its
    /// outcome ([`JobLog::append`]), which covers every entry before it. A
    /// failed write is refused at once, as by [`JobLog::append`].
    pub fn write_ahead(&self, entry: &LogEntry) -> std::io::Result<()> {
        // Not waited for: durable with the next entry synced after it.
        let _unsynced = self.write(entry)?;
        Ok(())
    }

    /// Writes one entry under the lock and updates the tree and the open
    /// jobs; the caller waits for it outside the lock.
    fn write(&self, entry: &LogEntry) -> std::io::Result<record::Written> {
        let object = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        let mut inner = self.inner.lock().expect("log lock");
        let written = inner
            .records
            .write(&object, |e| e.to_string())
            .unwrap_or_else(|| {
                Err(std::io::Error::other(
                    "this job log was opened read-only (a tool beside the node)",
                ))
            })?;
        inner.tree.push(leaf_of(written.line()));
        if entry.outcome == ACCEPTED {
            inner.open.insert(entry.job_id.clone(), entry.clone());
        } else {
            inner.open.remove(&entry.job_id);
        }
        Ok(written)
    }

    /// Why the last write failed, while no write has succeeded since.
    pub fn trouble(&self) -> Option<String> {
        self.inner.lock().expect("log lock").records.trouble()
    }

    /// After a failed write, once the disk takes writes again: cuts its
    /// leftovers off and forgets it ([`Writer::recover`]).
    ///
    /// After a failed sync the log is cut back to its last durable entry
    /// and read again from the file.
    pub fn recover(&self) -> std::io::Result<()> {
        let mut inner = self.inner.lock().expect("log lock");
        if inner.records.recover()? == Recovered::Reload {
            let dir = self.path.parent().unwrap_or(Path::new("."));
            let fresh = Self::open_mode(dir, Mode::Write)?;
            *inner = fresh.inner.into_inner().expect("log lock");
        }
        Ok(())
    }

    #[cfg(any(test, feature = "fault-injection"))]
    /// Test hook (fault injection): the next `n` writes fail as on a full
    /// disk.
    pub fn fail_next_writes(&self, n: u32) {
        self.inner.lock().expect("log lock").records.fail_next(n);
    }

    #[cfg(any(test, feature = "fault-injection"))]
    /// Test hook (fault injection): the next `n` syncs fail (EIO).
    pub fn fail_next_syncs(&self, n: u32) {
        self.inner
            .lock()
            .expect("log lock")
            .records
            .fail_next_syncs(n);
    }

    /// Whether `job_id` was accepted and has no outcome yet.
    pub fn is_open(&self, job_id: &str) -> bool {
        self.inner
            .lock()
            .expect("log lock")
            .open
            .contains_key(job_id)
    }

    /// Jobs the log says were charged (released or refused with a privacy
    /// cost), as read at open.
    pub fn charged(&self) -> &[Charged] {
        &self.charged
    }

    /// Closes each job accepted and never finished, which at start-up is
    /// a job the node was killed with, with `outcome` (`dropped:crash`).
    /// Returns how many.
    pub fn close_open(&self, outcome: &str, detail: &str) -> std::io::Result<usize> {
        let open: Vec<LogEntry> = {
            let inner = self.inner.lock().expect("log lock");
            let mut v: Vec<LogEntry> = inner.open.values().cloned().collect();
            v.sort_by(|a, b| a.at.cmp(&b.at).then(a.job_id.cmp(&b.job_id)));
            v
        };
        for accepted in &open {
            self.append(&LogEntry {
                at: chrono::Utc::now().to_rfc3339(),
                outcome: outcome.to_string(),
                detail: detail.to_string(),
                privacy_cost: None,
                privacy_remaining: None,
                ..accepted.clone()
            })?;
        }
        Ok(open.len())
    }

    /// The job's `accepted` entry, if it has no outcome yet.
    pub fn accepted(&self, job_id: &str) -> Option<LogEntry> {
        self.inner
            .lock()
            .expect("log lock")
            .open
            .get(job_id)
            .cloned()
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
        // A checkpoint covers only entries on disk.
        if let Some(ticket) = inner.records.ticket() {
            ticket.wait()?;
        }
        let c = Checkpoint::sign_with(
            |m| key.sign(m),
            &self.origin,
            inner.tree.head(),
            chrono::Utc::now().timestamp_millis(),
        );
        append_checkpoint(&self.checkpoints, &c)?;
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

    /// Reads every entry back (`accepted` ones included), e.g. for an
    /// auditor or a test. A last line still being written is left out.
    pub fn read_all(path: &Path) -> std::io::Result<Vec<LogEntry>> {
        let scan = record::scan(path, "job log", |line| {
            serde_json::from_slice::<LogEntry>(line)
                .map_err(|e| format!("not a job log entry ({e})"))
        })?
        .map_err(bad)?;
        Ok(scan.records.into_iter().map(|r| r.value).collect())
    }

    /// Every entry but the write-ahead `accepted` ones: what became of
    /// each job, in order.
    pub fn read_outcomes(path: &Path) -> std::io::Result<Vec<LogEntry>> {
        let mut all = Self::read_all(path)?;
        all.retain(|e| e.outcome != ACCEPTED);
        Ok(all)
    }
}

/// The node's audit key in `dir`, made on first use.
/// [`JobLog::secret`] for `key`.
fn secret_of(key: &plexus_tls::SigningKey, label: &str) -> [u8; 32] {
    let signature = key.sign(format!("plexus node secret v1\0{label}").as_bytes());
    let digest = ring::digest::digest(&ring::digest::SHA256, &signature);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The salt of the patients a study's models hold out for validation at
/// the node whose state folder is `dir` ([`crate::job::JobRunner::holdout_salt`]),
/// for tests that check what a node computed.
pub fn holdout_salt(dir: &Path, study_id: &str) -> std::io::Result<u64> {
    let secret = secret_of(audit_key(dir)?.as_ref(), &holdout_label(study_id));
    Ok(u64::from_le_bytes(secret[..8].try_into().expect("8 bytes")))
}

/// The label of a study's holdout secret.
pub(crate) fn holdout_label(study_id: &str) -> String {
    format!("gbdt holdout\0{study_id}")
}

pub(crate) fn audit_key(dir: &Path) -> std::io::Result<Arc<plexus_tls::SigningKey>> {
    std::fs::create_dir_all(dir)?;
    let (key_path, _) = plexus_tls::signing_key_files(dir, AUDIT_KEY_STEM);
    let key = if key_path.exists() {
        plexus_tls::SigningKey::load(&key_path)
    } else {
        plexus_tls::SigningKey::generate_into(dir, AUDIT_KEY_STEM).map(|(k, _, _)| k)
    }
    .map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(Arc::new(key))
}

/// Checks a record's lines against every checkpoint signed over it: none
/// may cover more lines than there are, each must verify with the node's
/// key (when its `.pub` is there) and the lines must make each root.
pub(crate) fn check_against_checkpoints(
    path: &Path,
    checkpoints_path: &Path,
    leaves: impl Iterator<Item = plexus_core::merkle::Leaf>,
    len: u64,
    signed: &[Checkpoint],
    key: Option<&plexus_tls::VerifyingKey>,
) -> std::io::Result<()> {
    let restore = "restore the state folder from its last backup; do not edit these files";
    for (i, c) in signed.iter().enumerate() {
        if let Some(key) = key {
            let public = hex::decode(key.to_hex()).expect("hex from the key");
            if c.verify(&public).is_err() {
                return Err(bad(format!(
                    "line {} of {} is a checkpoint not signed by this node's audit key; {restore}",
                    i + 1,
                    checkpoints_path.display()
                )));
            }
        }
        if c.head.size > len {
            return Err(bad(format!(
                "{} holds {len} records but line {} of {} signed {}: records were removed from its end; {restore}",
                path.display(),
                i + 1,
                checkpoints_path.display(),
                c.head.size
            )));
        }
    }
    let heads: Vec<TreeHead> = signed.iter().map(|c| c.head.clone()).collect();
    verify_log_heads(leaves, &heads).map_err(|e| {
        bad(format!(
            "{} does not match the checkpoints in {}: {}; {restore}",
            path.display(),
            checkpoints_path.display(),
            e.message
        ))
    })?;
    Ok(())
}

/// Appends a signed checkpoint to a checkpoint file, cutting a failed
/// write back off so no line follows a fragment.
pub(crate) fn append_checkpoint(path: &Path, c: &Checkpoint) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(c).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    let len = f.metadata()?.len();
    if let Err(e) = f.write_all(&line).and_then(|()| f.sync_data()) {
        let _ = f.set_len(len).and_then(|()| f.sync_all());
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_core::merkle::verify_log;
    use std::fs::OpenOptions;

    #[test]
    fn entries_appended_at_once_from_many_threads_are_all_kept_in_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(JobLog::open_signed(dir.path(), "node-a").unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..40 {
                        log.append(&entry(&format!("job-{t}-{i}"), ACCEPTED))
                            .unwrap();
                        log.append(&entry(&format!("job-{t}-{i}"), "released"))
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let c = log.checkpoint().unwrap();
        assert_eq!(c.head.size, 640);
        drop(log);
        // Reopening checks every line's chain and the checkpoint's root.
        let log = JobLog::open_signed(dir.path(), "node-a").unwrap();
        assert_eq!(log.len(), 640);
        let all = JobLog::read_all(&dir.path().join(JOB_LOG_FILE)).unwrap();
        let jobs: std::collections::HashSet<_> = all.iter().map(|e| e.job_id.clone()).collect();
        assert_eq!(jobs.len(), 320);
        assert!((0..8).all(|t| (0..40).all(|i| !log.is_open(&format!("job-{t}-{i}")))));
    }

    #[test]
    fn a_failed_sync_refuses_until_recovery_cuts_the_log_back_to_what_was_durable() {
        let dir = tempfile::tempdir().unwrap();
        let log = JobLog::open_signed(dir.path(), "node-a").unwrap();
        log.append(&entry("a", ACCEPTED)).unwrap();
        log.fail_next_syncs(1);
        let e = log.append(&entry("a", "released")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(5), "{e}");
        // Not written over: every later append and checkpoint is refused
        // while the failed sync stands, and the node's storage check says so.
        assert!(log.trouble().is_some());
        assert!(log.append(&entry("b", ACCEPTED)).is_err());
        assert!(log.checkpoint().is_err());
        log.recover().unwrap();
        assert_eq!(log.trouble(), None);
        assert_eq!(log.len(), 1, "cut back to the durable entry");
        assert!(log.is_open("a"), "its outcome was never durable");
        log.append(&entry("a", "failed:storage")).unwrap();
        let c = log.checkpoint().unwrap();
        assert_eq!(c.head.size, 2);
        drop(log);
        let log = JobLog::open_signed(dir.path(), "node-a").unwrap();
        let all = JobLog::read_all(&dir.path().join(JOB_LOG_FILE)).unwrap();
        let outcomes: Vec<_> = all.iter().map(|e| e.outcome.as_str()).collect();
        assert_eq!(outcomes, [ACCEPTED, "failed:storage"]);
        assert_eq!(log.len(), 2);
    }

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

    fn entry(job: &str, outcome: &str) -> LogEntry {
        LogEntry {
            job_id: job.into(),
            outcome: outcome.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_torn_last_line_is_cut_off_unless_a_checkpoint_covers_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = JobLog::open_signed(dir.path(), "node-a").unwrap();
        log.append(&entry("j1", "released")).unwrap();
        log.append(&entry("j2", "released")).unwrap();
        drop(log);
        let path = dir.path().join(JOB_LOG_FILE);
        let whole = std::fs::read(&path).unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"at":"","job_id":"j3","stu"#).unwrap();
        drop(f);
        let log = JobLog::open_signed(dir.path(), "node-a").unwrap();
        assert_eq!(log.len(), 2);
        assert_eq!(std::fs::read(&path).unwrap(), whole);
        log.append(&entry("j3", "released")).unwrap();
        log.checkpoint().unwrap();
        drop(log);
        assert_eq!(JobLog::read_all(&path).unwrap().len(), 3);

        // The signed last line cut short: records were removed.
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, &text[..text.len() - 20]).unwrap();
        let e = JobLog::open(dir.path()).err().unwrap();
        assert!(e.to_string().contains("holds 2 records"), "{e}");

        // A line edited in the middle: named by its line.
        std::fs::write(&path, text.replacen("j2", "j9", 1)).unwrap();
        let e = JobLog::open(dir.path()).err().unwrap();
        assert!(e.to_string().contains("line 2 of the job log"), "{e}");
    }

    #[test]
    fn a_full_disk_leaves_no_fragment_and_the_log_goes_on_when_space_returns() {
        let dir = tempfile::tempdir().unwrap();
        let log = JobLog::open(dir.path()).unwrap();
        log.append(&entry("j1", ACCEPTED)).unwrap();
        log.fail_next_writes(1);
        assert!(crate::record::is_full(
            &log.append(&entry("j1", "released")).unwrap_err()
        ));
        assert!(log.trouble().is_some());
        assert!(log.is_open("j1"));
        log.append(&entry("j1", "failed:unavailable")).unwrap();
        assert!(log.trouble().is_none() && !log.is_open("j1"));
        drop(log);
        let outcomes: Vec<String> = JobLog::read_all(&dir.path().join(JOB_LOG_FILE))
            .unwrap()
            .into_iter()
            .map(|e| e.outcome)
            .collect();
        assert_eq!(outcomes, [ACCEPTED, "failed:unavailable"]);
    }

    #[test]
    fn jobs_accepted_and_never_answered_are_closed_as_dropped_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let log = JobLog::open(dir.path()).unwrap();
        log.append(&entry("j1", ACCEPTED)).unwrap();
        log.append(&entry("j2", ACCEPTED)).unwrap();
        log.append(&entry("j1", "released")).unwrap();
        drop(log);
        let log = JobLog::open(dir.path()).unwrap();
        assert!(log.is_open("j2") && !log.is_open("j1"));
        assert_eq!(log.close_open(DROPPED_CRASH, "killed").unwrap(), 1);
        assert_eq!(log.close_open(DROPPED_CRASH, "killed").unwrap(), 0);
        drop(log);
        let path = dir.path().join(JOB_LOG_FILE);
        let outcomes: Vec<(String, String)> = JobLog::read_outcomes(&path)
            .unwrap()
            .into_iter()
            .map(|e| (e.job_id, e.outcome))
            .collect();
        assert_eq!(
            outcomes,
            [
                ("j1".to_string(), "released".to_string()),
                ("j2".to_string(), DROPPED_CRASH.to_string())
            ]
        );
    }
}
