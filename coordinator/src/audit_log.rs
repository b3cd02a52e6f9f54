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
use plexus_core::merkle::{Checkpoint, MerkleLog};
use plexus_core::Error;

use crate::error::Result;
use crate::store::{now_ms, Store};

pub struct AuditLog {
    store: Store,
    signer: Arc<plexus_tls::SigningKey>,
    origin: String,
    inner: Arc<Mutex<Inner>>,
    /// The group commit's queue; `None` in the baseline mode, where each
    /// append is its own commit behind the lock (as before group commit).
    queue: Option<mpsc::UnboundedSender<Waiting>>,
}

/// Entries waiting for the writer, and where to say how they fared: the
/// `seq` of the last of them once they are durable, or why they are not.
struct Waiting {
    entries: Vec<AuditEntry>,
    done: oneshot::Sender<std::result::Result<i64, Error>>,
}

/// Most entries committed in one transaction.
const MAX_BATCH: usize = 4096;

struct Inner {
    tree: MerkleLog,
    latest: Option<Checkpoint>,
}

impl AuditLog {
    /// Rebuilds the tree from the stored entries and checks it against the
    /// last stored checkpoint. A log that no longer matches its own
    /// checkpoint was changed behind the coordinator's back: that is logged
    /// as an error (auditors' `plexus audit verify` reports it too) and the
    /// coordinator carries on appending, since refusing to record new
    /// actions would hide them as well.
    pub async fn open(
        store: Store,
        signer: Arc<plexus_tls::SigningKey>,
        origin: &str,
    ) -> Result<Self> {
        let latest = store.latest_checkpoint().await?;
        let mut tree = MerkleLog::new();
        let mut at_checkpoint = None;
        let mut pages = store.audit_pages(0);
        while let Some(page) = pages.recv().await {
            for e in &page? {
                if e.seq != tree.len() as i64 + 1 {
                    error!(
                        expected = tree.len() + 1,
                        found = e.seq,
                        "the audit log has a gap or a reordering: entries were removed or moved"
                    );
                }
                tree.push(e.leaf());
                if latest.as_ref().is_some_and(|c| c.head.size == tree.len()) {
                    at_checkpoint = Some(tree.head());
                }
            }
        }
        if let Some(c) = &latest {
            if c.head.size == 0 {
                at_checkpoint = Some(MerkleLog::new().head());
            }
            if at_checkpoint.as_ref() != Some(&c.head) {
                error!(
                    entries = tree.len(),
                    checkpoint_size = c.head.size,
                    "the stored audit log does not match its last signed checkpoint: entries were edited, removed or truncated"
                );
            }
        }
        info!(entries = tree.len(), "audit log loaded");
        let inner = Arc::new(Mutex::new(Inner { tree, latest }));
        let (queue, waiting) = mpsc::unbounded_channel();
        tokio::spawn(write(store.clone(), inner.clone(), waiting));
        Ok(AuditLog {
            store,
            signer,
            origin: origin.to_string(),
            inner,
            queue: Some(queue),
        })
    }

    /// The same log without group commit: every append is its own commit
    /// behind one lock, as before group commit (what `plexus bench
    /// --throughput` measures against, with
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
        self.store.append_audit_batch(&entries).await?;
        for e in &entries {
            inner.tree.push(e.leaf());
        }
        Ok(inner.tree.len() as i64)
    }

    /// Hands `entries` to the writer and waits until they are durable.
    async fn enqueue(&self, entries: Vec<AuditEntry>) -> Result<i64> {
        let (done, answer) = oneshot::channel();
        let stopped = || {
            crate::error::CoordinatorError::Core(Error::unavailable(
                "the audit log's writer has stopped (the coordinator is stopping); nothing was recorded",
            ))
        };
        self.queue
            .as_ref()
            .expect("group commit")
            .send(Waiting { entries, done })
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
        self.store.append_audit_batch(&entries).await?;
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
        inner.latest = Some(c.clone());
        Ok(c)
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
        let mut last = Vec::with_capacity(batch.len());
        for w in &mut batch {
            for mut e in w.entries.drain(..) {
                seq += 1;
                e.seq = seq;
                entries.push(e);
            }
            last.push(seq);
        }
        let written = if entries.is_empty() {
            Ok(())
        } else {
            store.append_audit_batch(&entries).await
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
            who: format!("researcher-{i}"),
            role: "researcher".into(),
            action: "query.submit".into(),
            outcome: "accepted".into(),
            ..Default::default()
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
