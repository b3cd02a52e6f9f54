//! Signed job envelopes, checked before anything runs. A job is taken only
//! when it carries the coordinator's Ed25519 signature over its exact
//! bytes (against the key pinned in `coordinator.signing_key`), names this
//! node as its audience, has not expired, is valid for at most 15 minutes,
//! and was never seen before. Seen job ids are kept on disk until they
//! expire, so a replay is refused after a restart too.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use prost::Message;
use serde::{Deserialize, Serialize};

use plexus_core::{Error, Result};
use plexus_proto::v1 as pb;
use plexus_tls::VerifyingKey;

use crate::disk::GroupSync;
use crate::record::Ticket;

/// Longest a job may be valid, from issue to deadline.
pub const MAX_JOB_VALIDITY_MS: i64 = 15 * 60 * 1000;
/// How far ahead of this node's clock a job may claim to be issued.
pub const CLOCK_SKEW_MS: i64 = 60 * 1000;

/// Why an envelope was refused, with the job id when it could be read.
#[derive(Debug)]
pub struct Refusal {
    pub job_id: String,
    pub error: Error,
}

/// Checks `signed` and returns the job it carries.
pub fn open(
    signed: &pb::SignedJob,
    key: &VerifyingKey,
    node_id: &str,
    now_ms: i64,
    seen: &SeenJobs,
) -> std::result::Result<(pb::Job, Ticket), Refusal> {
    // The id is read before the signature is checked only to name the
    // refusal; nothing else of an unverified job is used.
    let unverified = pb::Job::decode(signed.job.as_slice()).ok();
    let job_id = unverified
        .as_ref()
        .map(|j| j.job_id.clone())
        .unwrap_or_default();
    let refuse = |error: Error| Refusal {
        job_id: job_id.clone(),
        error,
    };
    if !key.verify(&signed.job, &signed.signature) {
        return Err(refuse(Error::policy(
            "the job's signature does not verify against the coordinator key pinned in coordinator.signing_key; it was changed on the way or signed by another key, and is refused",
        )));
    }
    let job = unverified
        .ok_or_else(|| refuse(Error::invalid("the signed job is not a valid job message")))?;
    if job.audience != node_id {
        return Err(refuse(Error::policy(format!(
            "the job is addressed to \"{}\", not to this node ({node_id}), and is refused",
            job.audience
        ))));
    }
    if job.deadline_unix_ms <= now_ms {
        return Err(refuse(Error::policy(
            "the job has expired (its deadline passed) and is refused",
        )));
    }
    if job.issued_unix_ms > now_ms + CLOCK_SKEW_MS {
        return Err(refuse(Error::policy(
            "the job claims to be issued in the future (check the clocks of the coordinator and this node); refused",
        )));
    }
    if job.deadline_unix_ms - job.issued_unix_ms > MAX_JOB_VALIDITY_MS {
        return Err(refuse(Error::policy(
            "the job is valid for more than 15 minutes; refused",
        )));
    }
    if job.job_id.len() < 32 {
        return Err(refuse(Error::policy(
            "the job id is not a 128-bit random value; refused",
        )));
    }
    let recorded = seen
        .record(&job.job_id, job.deadline_unix_ms, now_ms)
        .map_err(refuse)?;
    Ok((job, recorded))
}

/// The seen-jobs file and the ids it holds.
struct Seens {
    file: File,
    /// The file's length after the last whole write.
    len: u64,
    live: HashMap<String, i64>,
    sync: Arc<GroupSync>,
}

#[derive(Serialize, Deserialize)]
struct Seen {
    job_id: String,
    expires_unix_ms: i64,
}

/// Job ids this node has taken, kept until they expire.
pub struct SeenJobs {
    path: PathBuf,
    inner: Mutex<Seens>,
    /// Why the last write failed, and the file's length before it (what
    /// a recovery cuts it back to), until a write or a recovery succeeds.
    failed: Mutex<Option<(String, Option<u64>)>>,
    /// Test hook (fault injection): writes that fail like a full disk.
    fail_next: std::sync::atomic::AtomicU32,
}

impl SeenJobs {
    /// Opens `STATE_DIR/seen_jobs.jsonl`, keeping only ids not yet expired.
    pub fn open(dir: &Path, now_ms: i64) -> Result<Self> {
        let io = |what: &str, e: std::io::Error| {
            Error::internal(format!(
                "cannot {what} the list of seen jobs in {}: {e} (check the node's state folder)",
                dir.display()
            ))
        };
        std::fs::create_dir_all(dir).map_err(|e| io("create the folder of", e))?;
        let path = dir.join("seen_jobs.jsonl");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io("read", e)),
        };
        // A line torn by a crash is skipped: its job was never run.
        let live: HashMap<String, i64> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Seen>(l).ok())
            .filter(|s| s.expires_unix_ms > now_ms)
            .map(|s| (s.job_id, s.expires_unix_ms))
            .collect();
        // Rewrite without the expired ids, then append.
        let mut compact = String::new();
        for (job_id, expires_unix_ms) in &live {
            let line = serde_json::to_string(&Seen {
                job_id: job_id.clone(),
                expires_unix_ms: *expires_unix_ms,
            })
            .expect("serialises");
            compact.push_str(&line);
            compact.push('\n');
        }
        let tmp = dir.join("seen_jobs.jsonl.tmp");
        std::fs::write(&tmp, compact).map_err(|e| io("write", e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io("replace", e))?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| io("open", e))?;
        let len = file.metadata().map_err(|e| io("read", e))?.len();
        let sync = Arc::new(GroupSync::new(&file, len).map_err(|e| io("open", e))?);
        Ok(SeenJobs {
            path,
            inner: Mutex::new(Seens {
                file,
                len,
                live,
                sync,
            }),
            failed: Mutex::new(None),
            fail_next: Default::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records `job_id` or refuses it as a replay. The id is written under
    /// the lock; the ticket returned is waited for ([`SeenJobs::durable`])
    /// before anything about the job leaves the node, so the ids of jobs
    /// taken together share one sync (group commit, as for the job log)
    /// and the sync overlaps the job's computation. A replay arriving
    /// meanwhile is refused already.
    fn record(&self, job_id: &str, expires_unix_ms: i64, now_ms: i64) -> Result<Ticket> {
        let mut inner = self.inner.lock().expect("seen jobs lock");
        if inner.live.get(job_id).is_some_and(|e| *e > now_ms) {
            return Err(Error::policy(format!(
                "job {job_id} was already taken by this node; a replayed job is refused"
            )));
        }
        let mut line = serde_json::to_vec(&Seen {
            job_id: job_id.to_string(),
            expires_unix_ms,
        })
        .expect("serialises");
        line.push(b'\n');
        // A failed write (a full disk) is cut back off, so the next id is
        // not appended to a fragment. After a failed sync nothing is
        // written until a recovery.
        let len = inner.len;
        let written = if let Some((why, _)) = inner.sync.failed() {
            Err(std::io::Error::other(why))
        } else if self.fail_next.load(Ordering::Relaxed) > 0 {
            self.fail_next.fetch_sub(1, Ordering::Relaxed);
            let _ = inner.file.write_all(&line[..line.len() / 2]);
            Err(std::io::Error::from_raw_os_error(28))
        } else {
            inner.file.write_all(&line)
        };
        match written {
            Ok(()) => {
                inner.len += line.len() as u64;
                inner.sync.wrote(inner.len);
                inner.live.insert(job_id.to_string(), expires_unix_ms);
                Ok(Ticket::new(inner.sync.clone(), inner.len))
            }
            Err(e) => {
                let _ = inner.file.set_len(len);
                // Until a write or a recovery succeeds, the node's storage
                // check says why (readiness, heartbeats), as for the ledger
                // and the job log. A failed sync says so by itself (see
                // `trouble`).
                *self.failed.lock().expect("seen jobs lock") = Some((
                    format!(
                        "cannot write its list of seen jobs {}: {e}",
                        self.path.display()
                    ),
                    Some(len),
                ));
                Err(self.refused(&e))
            }
        }
    }

    /// Waits until a job's id ([`SeenJobs::record`]) is on disk: before
    /// anything about the job goes back, so a replay after a restart is
    /// refused. `unavailable`, naming the file, when the sync failed.
    /// A failed sync is the list's trouble until [`SeenJobs::recover`].
    pub async fn durable(&self, recorded: Ticket) -> Result<()> {
        recorded.wait_async().await.map_err(|e| self.refused(&e))
    }

    /// The refusal of a job whose id could not be written or synced.
    fn refused(&self, e: &std::io::Error) -> Error {
        Error::unavailable(format!(
            "cannot record the job in {}: {e}; nothing was released, and the node takes no jobs until the hospital's IT frees space in its state folder or fixes the disk",
            self.path.display()
        ))
    }

    /// Why the last write failed, until a write or [`Self::recover`]
    /// succeeds.
    pub fn trouble(&self) -> Option<String> {
        let sync = self.inner.lock().expect("seen jobs lock").sync.clone();
        let failed = self.failed.lock().expect("seen jobs lock");
        failed.as_ref().map(|(why, _)| why.clone()).or_else(|| {
            sync.failed().map(|(why, _)| {
                format!(
                    "cannot write its list of seen jobs {}: {why}",
                    self.path.display()
                )
            })
        })
    }

    /// After a failed write: cuts off whatever of it reached the file, so
    /// the next id is not appended to a fragment, and clears the trouble.
    /// After a failed sync the file is cut back to what was durable and
    /// syncs start afresh (the ids cut off stay refused in memory: a
    /// replay check that remembers too much refuses, never admits).
    pub fn recover(&self) -> std::io::Result<()> {
        // Locks in the order `record` takes them.
        let mut inner = self.inner.lock().expect("seen jobs lock");
        let mut failed = self.failed.lock().expect("seen jobs lock");
        let cut = match (failed.as_ref(), inner.sync.failed()) {
            (_, Some((_, durable))) => Some(durable),
            (Some((_, len)), None) => *len,
            (None, None) => return Ok(()),
        };
        if let Some(len) = cut {
            if inner.file.metadata()?.len() > len {
                inner.file.set_len(len)?;
                inner.file.sync_all()?;
            }
            if inner.sync.failed().is_some() || inner.len > len {
                inner.len = len;
                inner.sync = Arc::new(GroupSync::new(&inner.file, len)?);
            }
        }
        *failed = None;
        Ok(())
    }

    #[cfg(any(test, feature = "fault-injection"))]
    /// Test hook (fault injection): the next `n` syncs fail (EIO).
    pub fn fail_next_syncs(&self, n: u32) {
        self.inner
            .lock()
            .expect("seen jobs lock")
            .sync
            .fail_next_syncs(n);
    }

    #[cfg(any(test, feature = "fault-injection"))]
    /// Test hook (fault injection): the next `n` writes fail like a full
    /// disk, each after writing half its line.
    pub fn fail_next_writes(&self, n: u32) {
        self.fail_next.store(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_tls::SigningKey;

    const NOW: i64 = 1_800_000_000_000;

    fn job(id: &str, audience: &str) -> pb::Job {
        pb::Job {
            job_id: id.into(),
            study_id: "s".into(),
            audience: audience.into(),
            issued_unix_ms: NOW,
            deadline_unix_ms: NOW + 30_000,
            ..Default::default()
        }
    }

    fn sign(key: &SigningKey, job: &pb::Job) -> pb::SignedJob {
        let bytes = job.encode_to_vec();
        pb::SignedJob {
            signature: key.sign(&bytes),
            job: bytes,
        }
    }

    #[test]
    fn tampered_expired_replayed_and_misaddressed_jobs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (key, _, _) = SigningKey::generate_into(dir.path(), "coordinator").unwrap();
        let pinned = key.verifying_key();
        let state = dir.path().join("state");
        let seen = SeenJobs::open(&state, NOW).unwrap();
        let id = "0123456789abcdef0123456789abcdef";
        let good = sign(&key, &job(id, "hospital-a"));

        // One byte changed anywhere in the job: the signature fails.
        for i in 0..good.job.len() {
            let mut bad = good.clone();
            bad.job[i] ^= 0x01;
            let r = open(&bad, &pinned, "hospital-a", NOW, &seen).unwrap_err();
            assert!(r.error.message.contains("signature"), "{i}: {}", r.error);
        }
        // Another key's signature.
        let dir2 = tempfile::tempdir().unwrap();
        let (other, _, _) = SigningKey::generate_into(dir2.path(), "evil").unwrap();
        let forged = sign(&other, &job(id, "hospital-a"));
        assert!(open(&forged, &pinned, "hospital-a", NOW, &seen).is_err());
        // For another node.
        let r = open(&good, &pinned, "hospital-b", NOW, &seen).unwrap_err();
        assert!(r.error.message.contains("addressed"), "{}", r.error);
        assert_eq!(r.job_id, id);
        // Expired.
        let r = open(&good, &pinned, "hospital-a", NOW + 31_000, &seen).unwrap_err();
        assert!(r.error.message.contains("expired"), "{}", r.error);
        // Valid too long.
        let mut long = job("fedcba9876543210fedcba9876543210", "hospital-a");
        long.deadline_unix_ms = NOW + MAX_JOB_VALIDITY_MS + 1;
        let r = open(&sign(&key, &long), &pinned, "hospital-a", NOW, &seen).unwrap_err();
        assert!(r.error.message.contains("15 minutes"), "{}", r.error);

        // Taken once, then a replay is refused, also after a restart.
        let (_, recorded) = open(&good, &pinned, "hospital-a", NOW, &seen).unwrap();
        recorded.wait().unwrap();
        let r = open(&good, &pinned, "hospital-a", NOW + 1, &seen).unwrap_err();
        assert!(r.error.message.contains("replayed"), "{}", r.error);
        drop(seen);
        let reopened = SeenJobs::open(&state, NOW + 2).unwrap();
        let r = open(&good, &pinned, "hospital-a", NOW + 2, &reopened).unwrap_err();
        assert!(r.error.message.contains("replayed"), "{}", r.error);
        // Expired ids are forgotten at the next start.
        drop(reopened);
        let later = SeenJobs::open(&state, NOW + 60_000).unwrap();
        let text = std::fs::read_to_string(later.path()).unwrap();
        assert!(text.is_empty(), "{text}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_sync_of_a_seen_id_refuses_the_job_and_recovery_cuts_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let (key, _, _) = SigningKey::generate_into(dir.path(), "coordinator").unwrap();
        let pinned = key.verifying_key();
        let state = dir.path().join("state");
        let seen = SeenJobs::open(&state, NOW).unwrap();
        let ids = [
            "0123456789abcdef0123456789abcde1",
            "0123456789abcdef0123456789abcde2",
            "0123456789abcdef0123456789abcde3",
        ];
        let signed: Vec<_> = ids.iter().map(|id| sign(&key, &job(id, "h"))).collect();
        let (_, first) = open(&signed[0], &pinned, "h", NOW, &seen).unwrap();
        seen.durable(first).await.unwrap();

        seen.fail_next_syncs(1);
        let (_, second) = open(&signed[1], &pinned, "h", NOW, &seen).unwrap();
        let e = seen.durable(second).await.unwrap_err();
        assert_eq!(e.code, plexus_core::ErrorCode::Unavailable);
        assert!(e.message.contains("seen_jobs.jsonl"), "{e}");
        assert!(seen.trouble().is_some());
        // Still refused as a replay: remembering too much refuses, never
        // admits. A new job is refused until a recovery.
        let r = open(&signed[1], &pinned, "h", NOW, &seen).unwrap_err();
        assert!(r.error.message.contains("replayed"), "{}", r.error);
        assert!(open(&signed[2], &pinned, "h", NOW, &seen).is_err());

        seen.recover().unwrap();
        assert_eq!(seen.trouble(), None);
        let text = std::fs::read_to_string(seen.path()).unwrap();
        assert_eq!(
            text.lines().count(),
            1,
            "cut back to the durable id: {text}"
        );
        assert!(text.contains(ids[0]), "{text}");
        let (_, third) = open(&signed[2], &pinned, "h", NOW, &seen).unwrap();
        seen.durable(third).await.unwrap();
        drop(seen);
        let reopened = SeenJobs::open(&state, NOW).unwrap();
        for i in [0, 2] {
            let r = open(&signed[i], &pinned, "h", NOW, &reopened).unwrap_err();
            assert!(r.error.message.contains("replayed"), "{}", r.error);
        }
    }
}
