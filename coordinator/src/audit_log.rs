//! The coordinator's audit log as a Merkle log: entries live in the
//! database, their tree in memory (rebuilt from the database at start-up),
//! and checkpoints signed with the coordinator's Ed25519 key are published
//! at a fixed interval and on demand.
//!
//! Appends are serialised here, so an entry's `seq` is its position in the
//! tree: entries are numbered from 1 without gaps, and an auditor who reads
//! them in order rebuilds exactly the tree the checkpoints signed.
//!
//! Group commit: an append joins a queue and waits; one writer task takes
//! everything queued, numbers it, commits it in one transaction (one fsync)
//! and only then adds the leaves to the tree and tells each waiter its
//! `seq`. While a batch is on its way to the disk the next one gathers, so
//! a burst of appends costs a few commits instead of one each, and the
//! durability of the log no longer serialises the whole coordinator. A
//! batch that fails is in neither the database nor the tree, and every
//! append in it gets the error: the numbering stays without gaps.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Mutex};
use tracing::{error, info, warn};

use plexus_core::audit::AuditEntry;
use plexus_core::audit::{Action, Outcome, Role};
use plexus_core::merkle::{Checkpoint, MerkleLog};
use plexus_core::Error;

use crate::audit_seal::Seal;
use crate::error::Result;
use crate::store::{now_ms, JobRow, Store};

pub struct AuditLog {
    store: Store,
    signer: Arc<plexus_tls::SigningKey>,
    origin: String,
    /// The checkpoint and leaves kept outside the database (see
    /// [`crate::audit_seal`]).
    seal: Option<Seal>,
    /// The latest checkpoint and its proofs, read by every job without
    /// waiting for the appends that hold `inner`.
    shown: std::sync::RwLock<Option<Arc<Shown>>>,
    inner: Arc<Mutex<Inner>>,
    /// The group commit's queue; `None` in the baseline mode, where each
    /// append is its own commit behind the lock (as before group commit).
    queue: Option<mpsc::UnboundedSender<Waiting>>,
}

/// Entries waiting for the writer, and where to say how they fared: the
/// `seq` of the last of them once they are durable, or why they are not.
struct Waiting {
    entries: Vec<AuditEntry>,
    /// Job rows written in the same transaction as the entries.
    jobs: Vec<JobRow>,
    done: oneshot::Sender<std::result::Result<i64, Error>>,
}

/// Most entries committed in one transaction.
const MAX_BATCH: usize = 4096;

/// What jobs show their nodes, as of the latest checkpoint.
struct Shown {
    checkpoint: Checkpoint,
    by_size: std::collections::BTreeMap<u64, String>,
}

struct Inner {
    tree: MerkleLog,
    latest: Option<Checkpoint>,
    /// Consistency proofs to `latest` from the sizes nodes witnessed.
    proofs: WitnessProofs,
}

/// Proofs from earlier sizes to the latest published checkpoint, for the
/// jobs that show it to nodes. A proof to a checkpoint can only be made
/// while the tree is that checkpoint's size, so they are made when it is
/// signed, for the sizes nodes were recently proven from (most nodes
/// report the previous checkpoint); a size not among them makes a new
/// checkpoint rather than one per job.
#[derive(Default)]
struct WitnessProofs {
    /// Earlier size → hex proof to `latest` (empty when not made yet).
    by_size: std::collections::BTreeMap<u64, String>,
}

/// The most earlier sizes proofs are kept for.
const WITNESS_PROOF_SIZES: usize = 64;

/// What a job shows its node of the audit log: the latest published
/// checkpoint and an RFC 6962 consistency proof from the size the node
/// witnessed last.
#[derive(Debug, Clone)]
pub struct ShownCheckpoint {
    pub checkpoint: Checkpoint,
    /// The size the proof starts from (the node's reported size).
    pub from_size: u64,
    /// Lowercase hex hashes, 32 bytes each; empty when `from_size` is 0
    /// or not smaller than the checkpoint (the node then checks roots or
    /// sees a truncation).
    pub proof: Vec<String>,
}

/// The stored log read at start-up: its tree and where it stops
/// extending the reference checkpoint, if it does.
struct Loaded {
    tree: MerkleLog,
    /// Positions missing from the stored log (1-based, below its end).
    gaps: Vec<i64>,
    /// Why the log does not extend the reference checkpoint.
    broken: Option<String>,
    /// The checkpoint the log was checked against.
    reference: Option<Checkpoint>,
}

/// A line about an entry for messages: what it says it is.
fn describe(e: &AuditEntry) -> String {
    let at = chrono::DateTime::from_timestamp_millis(e.at)
        .map(|t| t.to_rfc3339())
        .unwrap_or_else(|| e.at.to_string());
    let mut s = format!("{} by {} at {at}", e.action, e.who);
    if !e.job_id.is_empty() {
        s.push_str(&format!(", job {}", e.job_id));
    } else if !e.query_id.is_empty() {
        s.push_str(&format!(", query {}", e.query_id));
    }
    s.push_str(&format!(", outcome {}", e.outcome));
    s
}

/// Reads the stored log and checks it against the last signed checkpoint
/// (the newer of the database's and the seal's), naming the first entry
/// that differs when the sealed leaves can tell.
async fn load(
    store: &Store,
    signer: &plexus_tls::SigningKey,
    seal: Option<&Seal>,
) -> Result<Loaded> {
    let stored = store.latest_checkpoint().await?;
    let sealed = match seal {
        Some(s) => s.checkpoint()?,
        None => None,
    };
    let public = signer.verifying_key();
    let mut broken = None;
    for (c, whence) in [(&stored, "the database"), (&sealed, "the seal file")] {
        if let Some(c) = c {
            let sig = hex::decode(&c.signature).unwrap_or_default();
            let bytes = Checkpoint::signed_bytes(&c.origin, &c.head, c.at_unix_ms);
            if !public.verify(&bytes, &sig) && broken.is_none() {
                broken = Some(format!(
                    "the last checkpoint in {whence} is not signed by this coordinator's key (coordinator.signing_key): it was forged, or the key was replaced (restore the key or the file)"
                ));
            }
        }
    }
    let reference = match (stored, sealed.clone()) {
        (Some(a), Some(b)) => {
            if a.head.size == b.head.size && a.head.root != b.head.root {
                broken = Some(format!(
                    "the database and the seal file hold two checkpoints of {} entries with different roots ({} and {})",
                    a.head.size, a.head.root, b.head.root
                ));
            }
            Some(if b.head.size > a.head.size { b } else { a })
        }
        (a, b) => a.or(b),
    };
    // The leaves the seal holds of its own checkpoint, which name an
    // edited entry within it (also when the database's checkpoint is the
    // newer one, as on a standby whose seal predates the active one's).
    let sealed_leaves = match (seal, &sealed) {
        (Some(s), Some(c)) => s.leaves_of(c)?,
        _ => None,
    };
    let mut tree = MerkleLog::new();
    let mut gaps = Vec::new();
    let mut pages = store.audit_pages(0);
    while let Some(page) = pages.recv().await {
        for e in &page? {
            let position = tree.len() as i64 + 1;
            if e.seq > position {
                gaps.extend(position..e.seq);
                if broken.is_none() {
                    broken = Some(format!(
                        "entry {position} is missing (the stored log goes from entry {} to entry {}): entries were deleted",
                        position - 1,
                        e.seq
                    ));
                }
                // Placeholders keep positions and seq numbers in step
                // until a repair writes them.
                for missing in position..e.seq {
                    tree.push(missing_entry(missing).leaf());
                }
            }
            let i = tree.len() as usize;
            if broken.is_none() {
                if let Some(leaf) = sealed_leaves.as_ref().and_then(|l| l.get(i)) {
                    if *leaf != e.leaf() {
                        broken = Some(format!(
                            "entry {} ({}) is not the entry the checkpoint signed: it was edited",
                            e.seq,
                            describe(e)
                        ));
                    }
                }
            }
            tree.push(e.leaf());
        }
    }
    // The stored log must extend both checkpoints: the newer one, and the
    // seal's when it is older (a prefix check).
    let older = sealed.filter(|s| {
        reference
            .as_ref()
            .is_some_and(|r| s.head.size < r.head.size)
    });
    for c in reference.iter().chain(older.iter()) {
        if broken.is_some() {
            break;
        }
        if tree.len() < c.head.size {
            broken = Some(if tree.is_empty() {
                format!(
                    "the database holds no audit entries but the last checkpoint signed {}: the database was deleted or replaced (or emptied)",
                    c.head.size
                )
            } else {
                format!(
                    "entries {} to {} are missing (the stored log ends at entry {}): the log was truncated, or the database was restored from an older backup",
                    tree.len() + 1,
                    c.head.size,
                    tree.len()
                )
            });
        } else {
            let prefix =
                MerkleLog::from_leaves(tree.leaves()[..c.head.size as usize].iter().copied());
            if prefix.head() != c.head {
                broken = Some(format!(
                    "the first {} entries do not make the root the checkpoint signed: an entry among them was edited or moved, or the database was replaced (the sealed leaves that would name the entry are missing)",
                    c.head.size
                ));
            }
        }
    }
    Ok(Loaded {
        tree,
        gaps,
        broken,
        reference,
    })
}

/// The entry a repair writes where one was deleted.
fn missing_entry(seq: i64) -> AuditEntry {
    AuditEntry {
        seq,
        at: 0,
        detail: format!("entry {seq} was deleted from the stored log; written by audit-repair"),
        ..AuditEntry::new(
            String::new(),
            Role::Coordinator,
            Action::AuditMissing,
            Outcome::Missing,
        )
    }
}

/// What `audit-repair` recorded.
#[derive(Debug, Clone)]
pub struct Repair {
    /// The checkpoint the stored log did not extend.
    pub old: Option<Checkpoint>,
    /// Why.
    pub break_: String,
    /// The `audit.repair` entry's position.
    pub seq: i64,
    /// Positions written as `audit.missing`.
    pub filled: Vec<i64>,
    /// The checkpoint signed over the repaired log.
    pub new: Checkpoint,
}

impl AuditLog {
    /// Rebuilds the tree from the stored entries and checks that the log
    /// extends its last signed checkpoint. A log that does not was changed
    /// behind the coordinator's back: start-up is refused, naming the
    /// first entry that differs, until `plexus-coordinator audit-repair`
    /// records the break in the log itself (signing fresh checkpoints over
    /// the edited log would launder it).
    pub async fn open(
        store: Store,
        signer: Arc<plexus_tls::SigningKey>,
        origin: &str,
    ) -> Result<Self> {
        Self::open_sealed(store, signer, origin, None).await
    }

    /// [`AuditLog::open`], also checking against (and from now on
    /// keeping) the seal beside the database.
    pub async fn open_sealed(
        store: Store,
        signer: Arc<plexus_tls::SigningKey>,
        origin: &str,
        seal: Option<Seal>,
    ) -> Result<Self> {
        if let Some(seal) = &seal {
            seal.check_writable()?;
        }
        let loaded = load(&store, &signer, seal.as_ref()).await?;
        if let Some(why) = loaded.broken {
            let c = loaded.reference.as_ref();
            let sealed = match &seal {
                Some(s) => format!("the seal {}", s.checkpoint_path().display()),
                None => "no seal outside the database".into(),
            };
            error!(reason = %why, database = %store.name(), seal = %sealed, "the stored audit log does not extend its last signed checkpoint; refusing to start");
            return Err(Error::invalid(format!(
                "the stored audit log in {} does not extend its last signed checkpoint ({} entries, root {}, signed at {}; checked against the database and {sealed}): {why}; restore the database from backup, or record the break with `plexus-coordinator audit-repair --config FILE --reason \"...\"` (nodes that witnessed the old log refuse jobs until their operators reset)",
                store.name(),
                c.map_or(0, |c| c.head.size),
                c.map(|c| c.head.root.as_str()).unwrap_or(""),
                c.map(|c| c.at_unix_ms).unwrap_or(0),
            ))
            .into());
        }
        let tree = loaded.tree;
        let latest = loaded.reference;
        info!(entries = tree.len(), "audit log loaded");
        let shown = std::sync::RwLock::new(latest.clone().map(|checkpoint| {
            Arc::new(Shown {
                checkpoint,
                by_size: Default::default(),
            })
        }));
        let inner = Arc::new(Mutex::new(Inner {
            tree,
            latest,
            proofs: WitnessProofs::default(),
        }));
        let (queue, waiting) = mpsc::unbounded_channel();
        tokio::spawn(write(store.clone(), inner.clone(), waiting));
        Ok(AuditLog {
            store,
            signer,
            origin: origin.to_string(),
            seal,
            shown,
            inner,
            queue: Some(queue),
        })
    }

    /// `plexus-coordinator audit-repair`, with the coordinator stopped:
    /// records a break of the stored log instead of hiding it. Deleted
    /// entries are written back as `audit.missing`, then an
    /// `audit.repair` entry names the old checkpoint, the log's head, the
    /// first bad entry and the reason, and a checkpoint is signed over
    /// the result, after which start-up accepts the log.
    pub async fn repair(
        store: Store,
        signer: Arc<plexus_tls::SigningKey>,
        origin: &str,
        seal: Option<Seal>,
        by: &str,
        reason: &str,
    ) -> Result<Repair> {
        let reason = reason.trim();
        if reason.is_empty() {
            return Err(Error::invalid(
                "say why the audit log is repaired with --reason \"...\" (it is kept in the log)",
            )
            .into());
        }
        plexus_core::text::check("reason", reason)?;
        let loaded = load(&store, &signer, seal.as_ref()).await?;
        let Some(why) = loaded.broken else {
            return Err(Error::invalid(
                "the stored audit log extends its last signed checkpoint: there is nothing to repair",
            )
            .into());
        };
        let mut filled = Vec::new();
        for &seq in &loaded.gaps {
            let mut e = missing_entry(seq);
            e.at = now_ms();
            store.append_audit(&e).await?;
            filled.push(seq);
        }
        // Rebuilt from the database, with the written placeholders.
        let mut tree = MerkleLog::new();
        let mut pages = store.audit_pages(0);
        while let Some(page) = pages.recv().await {
            for e in &page? {
                tree.push(e.leaf());
            }
        }
        let head = tree.head();
        let old = loaded.reference;
        let entry = AuditEntry {
            seq: tree.len() as i64 + 1,
            at: now_ms(),
            detail: format!(
                "the stored log ({} entries, root {}) did not extend the checkpoint of {} entries (root {}, signed at {}): {why}{}; reason: {reason}",
                head.size,
                head.root,
                old.as_ref().map_or(0, |c| c.head.size),
                old.as_ref().map(|c| c.head.root.as_str()).unwrap_or(""),
                old.as_ref().map_or(0, |c| c.at_unix_ms),
                if filled.is_empty() {
                    String::new()
                } else {
                    format!("; deleted entries written back as audit.missing: {filled:?}")
                },
            ),
            ..AuditEntry::new(by.to_string(), Role::Admin, Action::AuditRepair, Outcome::Ok)
        };
        store.append_audit(&entry).await?;
        tree.push(entry.leaf());
        let log = AuditLog {
            store,
            signer,
            origin: origin.to_string(),
            seal: None,
            shown: std::sync::RwLock::new(None),
            inner: Arc::new(Mutex::new(Inner {
                tree,
                latest: None,
                proofs: WitnessProofs::default(),
            })),
            queue: None,
        };
        let new = log.checkpoint().await?;
        if let Some(seal) = &seal {
            let inner = log.inner.lock().await;
            seal.replace(&new, inner.tree.leaves())?;
        }
        warn!(
            seq = entry.seq,
            reason, "audit log repaired: the break is recorded in the log"
        );
        Ok(Repair {
            old,
            break_: why,
            seq: entry.seq,
            filled,
            new,
        })
    }

    /// The same log without group commit: every append is its own commit
    /// behind one lock, as before group commit (what `plexus-bench
    /// throughput` measures against, with
    /// `coordinator.audit_group_commit = false`).
    pub fn without_group_commit(mut self) -> Self {
        // The writer ends once its queue has no sender left.
        self.queue = None;
        self
    }

    /// Appends an entry at the log's next position; returns its `seq` once
    /// the entry is durable in the database.
    pub async fn append(&self, mut entry: AuditEntry) -> Result<i64> {
        if entry.at == 0 {
            entry.at = now_ms();
        }
        if self.queue.is_some() {
            return self.enqueue(vec![entry]).await;
        }
        let mut inner = self.inner.lock().await;
        entry.seq = inner.tree.len() as i64 + 1;
        self.store.append_audit(&entry).await?;
        inner.tree.push(entry.leaf());
        Ok(entry.seq)
    }

    /// [`Self::append`], writing `job`'s row in the same transaction: a
    /// job's row and its `sent` (or outcome) entry are durable together or
    /// not at all, and take one turn of the database, not two. Without
    /// group commit they are two writes, as before: a sent job's row before
    /// its entry, a finished job's after it (the log has an outcome before
    /// the jobs table does).
    pub async fn append_with_job(&self, mut entry: AuditEntry, job: JobRow) -> Result<i64> {
        if entry.at == 0 {
            entry.at = now_ms();
        }
        if self.queue.is_some() {
            return self.enqueue_with(vec![entry], vec![job]).await;
        }
        if !job.finished {
            self.store.write_jobs(std::slice::from_ref(&job)).await?;
            return self.append(entry).await;
        }
        let seq = self.append(entry).await?;
        if let Err(e) = self.store.write_jobs(std::slice::from_ref(&job)).await {
            // The outcome is in the log; only the jobs table lags, as it
            // could before group commit.
            warn!(job_id = %job.id, error = %e, "could not record the job's outcome and the node's signed statement");
        }
        Ok(seq)
    }

    /// Appends `entries` in one commit, at consecutive positions, all or
    /// none; returns the `seq` of the last (the log's size before, when
    /// `entries` is empty).
    pub async fn append_all(&self, mut entries: Vec<AuditEntry>) -> Result<i64> {
        for e in &mut entries {
            if e.at == 0 {
                e.at = now_ms();
            }
        }
        if self.queue.is_some() {
            return self.enqueue(entries).await;
        }
        let mut inner = self.inner.lock().await;
        let start = inner.tree.len() as i64 + 1;
        for (i, e) in entries.iter_mut().enumerate() {
            e.seq = start + i as i64;
        }
        self.store.append_audit_batch(&entries, &[]).await?;
        for e in &entries {
            inner.tree.push(e.leaf());
        }
        Ok(inner.tree.len() as i64)
    }

    /// Hands `entries` to the writer and waits until they are durable.
    async fn enqueue(&self, entries: Vec<AuditEntry>) -> Result<i64> {
        self.enqueue_with(entries, Vec::new()).await
    }

    /// [`Self::enqueue`] with job rows for the same transaction.
    async fn enqueue_with(&self, entries: Vec<AuditEntry>, jobs: Vec<JobRow>) -> Result<i64> {
        let (done, answer) = oneshot::channel();
        let stopped = || {
            crate::error::CoordinatorError::Core(Error::unavailable(
                "the audit log's writer has stopped (the coordinator is stopping); nothing was recorded",
            ))
        };
        self.queue
            .as_ref()
            .expect("group commit")
            .send(Waiting {
                entries,
                jobs,
                done,
            })
            .map_err(|_| stopped())?;
        match answer.await {
            Ok(r) => r.map_err(crate::error::CoordinatorError::Core),
            Err(_) => Err(stopped()),
        }
    }

    /// Writes many entries at once, each at the next position (imports and
    /// benchmarks).
    pub async fn append_batch(&self, entries: Vec<AuditEntry>) -> Result<()> {
        if self.queue.is_some() {
            return self.append_all(entries).await.map(|_| ());
        }
        let mut inner = self.inner.lock().await;
        let start = inner.tree.len() as i64 + 1;
        let entries: Vec<AuditEntry> = entries
            .into_iter()
            .enumerate()
            .map(|(i, mut e)| {
                e.seq = start + i as i64;
                if e.at == 0 {
                    e.at = now_ms();
                }
                e
            })
            .collect();
        self.store.append_audit_batch(&entries, &[]).await?;
        for e in &entries {
            inner.tree.push(e.leaf());
        }
        Ok(())
    }

    /// Signs and stores a checkpoint of the log as it is now.
    pub async fn checkpoint(&self) -> Result<Checkpoint> {
        let mut inner = self.inner.lock().await;
        self.sign(&mut inner).await
    }

    async fn sign(&self, inner: &mut Inner) -> Result<Checkpoint> {
        let signer = &self.signer;
        let c = Checkpoint::sign_with(
            |m| signer.sign(m),
            &self.origin,
            inner.tree.head(),
            now_ms(),
        );
        self.store.insert_checkpoint(&c).await?;
        if let Some(seal) = &self.seal {
            seal.record(&c, inner.tree.leaves())?;
        }
        // Proofs to the new checkpoint from the previous one and from the
        // sizes nodes were proven from lately (kept, largest first).
        let mut sizes: Vec<u64> = inner.proofs.by_size.keys().copied().collect();
        sizes.extend(inner.latest.as_ref().map(|l| l.head.size));
        sizes.retain(|&s| s > 0 && s < c.head.size);
        sizes.sort_unstable_by(|a, b| b.cmp(a));
        sizes.dedup();
        sizes.truncate(WITNESS_PROOF_SIZES);
        let mut by_size = std::collections::BTreeMap::new();
        for size in sizes {
            by_size.insert(size, inner.tree.prove_consistency(size)?);
        }
        *self.shown.write().expect("shown lock") = Some(Arc::new(Shown {
            checkpoint: c.clone(),
            by_size: by_size.clone(),
        }));
        inner.proofs.by_size = by_size;
        inner.latest = Some(c.clone());
        Ok(c)
    }

    /// The latest published checkpoint (one is signed if none exists yet)
    /// and a consistency proof to it from `from_size`, the size a node
    /// witnessed last, for the node to check before it takes a job. No
    /// checkpoint is signed per job: only when none exists, or when the
    /// log grew since the latest one and no proof from `from_size` was
    /// made while it could be.
    pub async fn witness(&self, from_size: u64) -> Result<ShownCheckpoint> {
        // Most jobs: what the latest signing prepared, without the lock.
        let ready = self.shown.read().expect("shown lock").clone();
        if let Some(shown) = ready {
            let size = shown.checkpoint.head.size;
            let proof = if from_size == 0 || from_size >= size {
                Some(String::new())
            } else {
                shown
                    .by_size
                    .get(&from_size)
                    .filter(|p| !p.is_empty())
                    .cloned()
            };
            if let Some(proof) = proof {
                return Ok(ShownCheckpoint {
                    checkpoint: shown.checkpoint.clone(),
                    from_size,
                    proof: split_hashes(&proof),
                });
            }
        }
        let mut inner = self.inner.lock().await;
        let mut checkpoint = match &inner.latest {
            Some(c) => c.clone(),
            None => self.sign(&mut inner).await?,
        };
        let size = checkpoint.head.size;
        if from_size == 0 || from_size >= size {
            // Nothing to prove from, or a node that witnessed more than
            // this log's latest checkpoint: it is shown the checkpoint and
            // sees for itself that the log shrank.
            return Ok(ShownCheckpoint {
                checkpoint,
                from_size,
                proof: Vec::new(),
            });
        }
        let proof = match inner.proofs.by_size.get(&from_size) {
            Some(p) => p.clone(),
            None if inner.tree.len() == size => {
                let p = inner.tree.prove_consistency(from_size)?;
                inner.proofs.by_size.insert(from_size, p.clone());
                *self.shown.write().expect("shown lock") = Some(Arc::new(Shown {
                    checkpoint: checkpoint.clone(),
                    by_size: inner.proofs.by_size.clone(),
                }));
                p
            }
            None => {
                inner.proofs.by_size.insert(from_size, String::new());
                checkpoint = self.sign(&mut inner).await?;
                inner
                    .proofs
                    .by_size
                    .get(&from_size)
                    .cloned()
                    .unwrap_or_default()
            }
        };
        Ok(ShownCheckpoint {
            checkpoint,
            from_size,
            proof: split_hashes(&proof),
        })
    }

    /// A checkpoint of the current tree: the latest one if nothing was
    /// appended since, else a new one.
    async fn current(&self, inner: &mut Inner) -> Result<Checkpoint> {
        match &inner.latest {
            Some(c) if c.head == inner.tree.head() => Ok(c.clone()),
            _ => self.sign(inner).await,
        }
    }

    /// Publishes a checkpoint when the log grew since the last one (the
    /// fixed-interval publication).
    pub async fn publish_if_grown(&self) -> Result<Option<Checkpoint>> {
        let mut inner = self.inner.lock().await;
        if inner
            .latest
            .as_ref()
            .is_some_and(|c| c.head.size == inner.tree.len())
        {
            return Ok(None);
        }
        self.sign(&mut inner).await.map(Some)
    }

    /// The latest published checkpoint (none before the first).
    pub async fn latest(&self) -> Option<Checkpoint> {
        self.inner.lock().await.latest.clone()
    }

    /// Proof that entry `seq` is in the log, against a checkpoint of the
    /// current tree.
    pub async fn prove_inclusion(&self, seq: i64) -> Result<(AuditEntry, Checkpoint, String)> {
        let mut inner = self.inner.lock().await;
        if seq < 1 || seq as u64 > inner.tree.len() {
            return Err(Error::not_found(format!(
                "entry {seq} is not in the audit log, which holds entries 1 to {}",
                inner.tree.len()
            ))
            .into());
        }
        let entry =
            self.store.audit_entry(seq).await?.ok_or_else(|| {
                Error::not_found(format!("entry {seq} is missing from the database"))
            })?;
        let checkpoint = self.current(&mut inner).await?;
        let proof = inner.tree.prove_inclusion(seq as u64 - 1)?;
        Ok((entry, checkpoint, proof))
    }

    /// Proof that the log of `old_size` entries is a prefix of the current
    /// one, against a checkpoint of the current tree.
    pub async fn prove_consistency(&self, old_size: u64) -> Result<(Checkpoint, String)> {
        let mut inner = self.inner.lock().await;
        let checkpoint = self.current(&mut inner).await?;
        if old_size > inner.tree.len() {
            // A checkpoint larger than the log: the log was truncated (or
            // the checkpoint is not this log's). Say so, with the evidence.
            return Err(Error::invalid(format!(
                "an earlier checkpoint covers {old_size} entries but the log now holds {}: entries were removed or the log was truncated",
                inner.tree.len()
            ))
            .into());
        }
        let proof = if old_size == 0 {
            String::new()
        } else {
            inner.tree.prove_consistency(old_size)?
        };
        Ok((checkpoint, proof))
    }

    /// Publishes a checkpoint every `every` while the log grows, until
    /// `shutdown`.
    pub async fn publish_every(
        self: Arc<Self>,
        every: std::time::Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    if let Err(e) = self.publish_if_grown().await {
                        warn!(error = %e, "could not publish an audit checkpoint");
                    }
                }
            }
        }
    }
}

/// A hex proof (32 bytes a step) as one hex hash a step.
pub fn split_hashes(proof: &str) -> Vec<String> {
    proof
        .as_bytes()
        .chunks(64)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect()
}

/// The group commit's writer: takes everything queued (up to
/// [`MAX_BATCH`] entries), numbers it from the tree's size, commits it in
/// one transaction, then adds the leaves and answers each waiter. Ends
/// when the log is dropped.
async fn write(
    store: Store,
    inner: Arc<Mutex<Inner>>,
    mut queue: mpsc::UnboundedReceiver<Waiting>,
) {
    while let Some(first) = queue.recv().await {
        let mut n = first.entries.len();
        let mut batch = vec![first];
        while n < MAX_BATCH {
            match queue.try_recv() {
                Ok(w) => {
                    n += w.entries.len();
                    batch.push(w);
                }
                Err(_) => break,
            }
        }
        let mut inner = inner.lock().await;
        let mut seq = inner.tree.len() as i64;
        let mut entries = Vec::with_capacity(n);
        let mut jobs = Vec::new();
        let mut last = Vec::with_capacity(batch.len());
        for w in &mut batch {
            jobs.append(&mut w.jobs);
            for mut e in w.entries.drain(..) {
                seq += 1;
                e.seq = seq;
                entries.push(e);
            }
            last.push(seq);
        }
        let written = if entries.is_empty() && jobs.is_empty() {
            Ok(())
        } else {
            store.append_audit_batch(&entries, &jobs).await
        };
        match written {
            Ok(()) => {
                for e in &entries {
                    inner.tree.push(e.leaf());
                }
                drop(inner);
                for (w, seq) in batch.into_iter().zip(last) {
                    let _ = w.done.send(Ok(seq));
                }
            }
            Err(e) => {
                drop(inner);
                let e = e.to_core();
                let e = Error::new(
                    e.code,
                    format!("the audit log could not record this action: {}", e.message),
                );
                error!(entries = entries.len(), error = %e.message, "an audit batch was not written; none of its entries is in the log");
                for w in batch {
                    let _ = w.done.send(Err(e.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn log_in(dir: &std::path::Path) -> (Store, AuditLog) {
        let url = format!("sqlite://{}", dir.join("audit.db").display());
        let store = Store::open(&url).await.unwrap();
        let (key, _, _) = plexus_tls::SigningKey::generate_into(dir, "coordinator").unwrap();
        let log = AuditLog::open(store.clone(), Arc::new(key), "test")
            .await
            .unwrap();
        (store, log)
    }

    fn entry(i: usize) -> AuditEntry {
        AuditEntry {
            ..AuditEntry::new(
                format!("researcher-{i}"),
                Role::Researcher,
                Action::QuerySubmit,
                Outcome::Accepted,
            )
        }
    }

    /// Appends racing each other come back with the positions 1..n, each
    /// once, the database holds exactly them, and the tree the
    /// checkpoints sign is the one rebuilt from the database.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_are_numbered_without_gaps_and_match_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let (store, log) = log_in(dir.path()).await;
        let log = Arc::new(log);
        let appends = (0..300).map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.append(entry(i)).await.unwrap() })
        });
        let mut seqs: Vec<i64> = futures::future::join_all(appends)
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=300).collect::<Vec<i64>>());
        let head = log.checkpoint().await.unwrap().head;
        assert_eq!(head.size, 300);
        let mut rebuilt = MerkleLog::new();
        let mut pages = store.audit_pages(0);
        while let Some(page) = pages.recv().await {
            for e in page.unwrap() {
                assert_eq!(e.seq, rebuilt.len() as i64 + 1);
                rebuilt.push(e.leaf());
            }
        }
        assert_eq!(rebuilt.head(), head);
        // Every acknowledged entry is the one stored at its position.
        let (e, _, _) = log.prove_inclusion(seqs[150]).await.unwrap();
        assert_eq!(e.seq, seqs[150]);
    }

    /// A batch the database refuses is in neither the database nor the
    /// tree; every append in it gets an error naming the database file,
    /// and the next append takes the position the failed batch did not.
    #[tokio::test]
    async fn a_failed_batch_leaves_no_gap_and_its_error_names_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let (store, log) = log_in(dir.path()).await;
        assert_eq!(log.append(entry(0)).await.unwrap(), 1);
        // Make the audit table refuse inserts for a moment.
        let url = format!("sqlite://{}", dir.path().join("audit.db").display());
        let other = Store::open(&url).await.unwrap();
        other
            .exec_for_test(
                "CREATE TRIGGER refuse BEFORE INSERT ON audit_events BEGIN SELECT RAISE(ABORT, 'refused for the test'); END",
            )
            .await;
        let e = log.append(entry(1)).await.unwrap_err().to_core();
        assert!(
            e.message
                .contains(&dir.path().join("audit.db").display().to_string()),
            "{}",
            e.message
        );
        assert!(e.message.contains("refused for the test"), "{}", e.message);
        assert_eq!(log.checkpoint().await.unwrap().head.size, 1);
        other.exec_for_test("DROP TRIGGER refuse").await;
        assert_eq!(log.append(entry(2)).await.unwrap(), 2);
        assert_eq!(
            store.audit_entry(2).await.unwrap().unwrap().who,
            "researcher-2"
        );
    }

    /// A job's row and its entry share one transaction: a batch that
    /// fails leaves the row as it was, and the next one writes both.
    #[tokio::test]
    async fn a_job_row_and_its_entry_are_written_together_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let (store, log) = log_in(dir.path()).await;
        let url = format!("sqlite://{}", dir.path().join("audit.db").display());
        let other = Store::open(&url).await.unwrap();
        other
            .exec_for_test("INSERT INTO studies VALUES ('s', '{}', 'h', 'r', 0)")
            .await;
        other
            .exec_for_test(
                "INSERT INTO queries (id, study_id, researcher, query, query_hash, status, submitted_at) \
                 VALUES ('q', 's', 'r', '{}', 'h', 'pending', 0)",
            )
            .await;
        let status = |store: Store| async move {
            let jobs = store.jobs_of("q").await.unwrap();
            jobs.into_iter().map(|(_, _, s)| s).collect::<Vec<_>>()
        };
        let sent = JobRow::sent("j", "q", "node-a");
        assert_eq!(log.append_with_job(entry(0), sent).await.unwrap(), 1);
        assert_eq!(status(store.clone()).await, ["sent"]);
        other
            .exec_for_test(
                "CREATE TRIGGER refuse BEFORE INSERT ON audit_events BEGIN SELECT RAISE(ABORT, 'refused for the test'); END",
            )
            .await;
        let signed = Some((
            b"statement".to_vec(),
            b"signature".to_vec(),
            b"cert".to_vec(),
        ));
        let answered = JobRow::finished(
            ("j", "q", "node-a"),
            "answered",
            Some("{}".into()),
            None,
            signed,
        );
        log.append_with_job(entry(1), answered.clone())
            .await
            .unwrap_err();
        assert_eq!(status(store.clone()).await, ["sent"]);
        assert_eq!(store.signature_of("j").await.unwrap(), None);
        other.exec_for_test("DROP TRIGGER refuse").await;
        assert_eq!(log.append_with_job(entry(2), answered).await.unwrap(), 2);
        assert_eq!(status(store.clone()).await, ["answered"]);
        let kept = store.signature_of("j").await.unwrap().unwrap();
        assert_eq!(kept.0, b"statement");
    }

    /// Appends per second with 1, 8 and 64 appenders, each waiting for its
    /// entry to be durable before the next, with and without group commit
    /// (`cargo test -p plexus-coordinator --release audit_append_rate --
    /// --ignored --nocapture`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement, not a check"]
    async fn audit_append_rate() {
        for group in [false, true] {
            for appenders in [1usize, 8, 64] {
                let dir = tempfile::tempdir().unwrap();
                let (_, log) = log_in(dir.path()).await;
                let log = Arc::new(if group {
                    log
                } else {
                    log.without_group_commit()
                });
                let until = std::time::Instant::now() + std::time::Duration::from_secs(3);
                let started = std::time::Instant::now();
                let tasks = (0..appenders).map(|i| {
                    let log = log.clone();
                    tokio::spawn(async move {
                        let mut n = 0u64;
                        while std::time::Instant::now() < until {
                            log.append(entry(i)).await.unwrap();
                            n += 1;
                        }
                        n
                    })
                });
                let n: u64 = futures::future::join_all(tasks)
                    .await
                    .into_iter()
                    .map(|r| r.unwrap())
                    .sum();
                println!(
                    "group commit {group}, {appenders} appenders: {:.0} durable appends/s",
                    n as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
    }

    /// A standby's seal is older than the database (the active coordinator
    /// signed since): it opens as long as the stored log extends the sealed
    /// checkpoint, and seals the leaves it lacks at its next checkpoint. An
    /// entry edited under the older sealed checkpoint is named through its
    /// leaves, with the seal file, though the database's checkpoint is newer.
    #[tokio::test]
    async fn a_standby_seal_older_than_the_database_is_a_prefix_check() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("audit.db").display());
        let store = Store::open(&url).await.unwrap();
        let (key, _, _) = plexus_tls::SigningKey::generate_into(dir.path(), "c").unwrap();
        let key = Arc::new(key);
        let seal = |instance: &str| Some(Seal::named(dir.path(), instance));
        let open = |instance: &'static str| {
            AuditLog::open_sealed(store.clone(), key.clone(), "test", seal(instance))
        };
        // b was active first and sealed 2 entries; then a, 5.
        let b = open("b").await.unwrap();
        b.append_all(vec![entry(0), entry(1)]).await.unwrap();
        b.checkpoint().await.unwrap();
        drop(b);
        let a = open("a").await.unwrap();
        a.append_all(vec![entry(2), entry(3), entry(4)])
            .await
            .unwrap();
        assert_eq!(a.checkpoint().await.unwrap().head.size, 5);
        drop(a);

        store
            .exec_for_test("UPDATE audit_events SET who = 'nobody' WHERE seq = 1")
            .await;
        let e = open("b").await.err().unwrap().to_core().message;
        let b_seal = dir.path().join("b.audit-checkpoint.json");
        assert!(
            e.contains("entry 1 (")
                && e.contains("edited")
                && e.contains(&b_seal.display().to_string()),
            "{e}"
        );
        store
            .exec_for_test("UPDATE audit_events SET who = 'researcher-0' WHERE seq = 1")
            .await;

        // b takes over: its seal is a prefix; its next checkpoint seals
        // the three leaves it lacked.
        let b = open("b").await.unwrap();
        let c = b.checkpoint().await.unwrap();
        assert_eq!(c.head.size, 5);
        let sealed = Seal::named(dir.path(), "b").leaves_of(&c).unwrap();
        assert_eq!(sealed.map(|l| l.len()), Some(5));
    }

    /// The baseline mode (no group commit) numbers entries the same way.
    #[tokio::test]
    async fn without_group_commit_appends_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let (_, log) = log_in(dir.path()).await;
        let log = log.without_group_commit();
        assert_eq!(log.append(entry(0)).await.unwrap(), 1);
        assert_eq!(log.append_all(vec![entry(1), entry(2)]).await.unwrap(), 3);
        assert_eq!(log.checkpoint().await.unwrap().head.size, 3);
    }
}
