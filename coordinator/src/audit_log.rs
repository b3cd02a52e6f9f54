//! The coordinator's audit log as a Merkle log: entries live in the
//! database, their tree in memory (rebuilt from the database at start-up),
//! and checkpoints signed with the coordinator's Ed25519 key are published
//! at a fixed interval and on demand.
//!
//! Appends are serialised here, so an entry's `seq` is its position in the
//! tree: entries are numbered from 1 without gaps, and an auditor who reads
//! them in order rebuilds exactly the tree the checkpoints signed.

use std::sync::Arc;

use tokio::sync::Mutex;
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
    inner: Mutex<Inner>,
}

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
        Ok(AuditLog {
            store,
            signer,
            origin: origin.to_string(),
            inner: Mutex::new(Inner { tree, latest }),
        })
    }

    /// Appends an entry at the log's next position; returns its `seq`.
    pub async fn append(&self, mut entry: AuditEntry) -> Result<i64> {
        if entry.at == 0 {
            entry.at = now_ms();
        }
        let mut inner = self.inner.lock().await;
        entry.seq = inner.tree.len() as i64 + 1;
        self.store.append_audit(&entry).await?;
        inner.tree.push(entry.leaf());
        Ok(entry.seq)
    }

    /// Writes many entries at once, each at the next position (imports and
    /// benchmarks).
    pub async fn append_batch(&self, entries: Vec<AuditEntry>) -> Result<()> {
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
