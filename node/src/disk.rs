//! Waiting for the disk without holding up the node's async workers.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::runtime::{Handle, RuntimeFlavor};

/// Runs `f`, which waits for the disk (a write and its fsync), so that the
/// async worker it is called on is not held: the worker's other tasks (the
/// coordinator link, heartbeats, other jobs) move to another worker
/// meanwhile. Without it, a burst of jobs held the workers in fsyncs and
/// left the CPU idle. On a current-thread runtime, or outside one, `f`
/// just runs.
pub(crate) fn wait<T>(f: impl FnOnce() -> T) -> T {
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Group commit for one append-only file: appends are written under their
/// owner's lock (in order, into the page cache) and then wait here, outside
/// that lock, for one `fdatasync` that covers every append written before
/// it started. While one waiter syncs, later appends are written and the
/// next sync takes them all; a waiter whose bytes an earlier sync covered
/// returns at once. So a node taking many jobs at once pays one sync per
/// batch, not one per record, and no job waits for the disk while holding
/// the record's lock.
///
/// A failed sync leaves the bytes since the last good one of unknown
/// durability (Linux may drop them and report success next time), so the
/// file is failed from then on: every wait refuses until its owner cuts
/// the file back to [`GroupSync::failed`]'s length and starts a new one.
#[derive(Debug)]
pub(crate) struct GroupSync {
    file: std::fs::File,
    /// The file's length after the last whole write.
    written: AtomicU64,
    /// The length the last good sync made durable (a copy of `state.upto`
    /// read without the lock, for waiters already covered).
    synced: AtomicU64,
    state: Mutex<Synced>,
    /// Test hook: the next this many syncs fail as a failing disk's would.
    fail_next: AtomicU32,
    /// A sync of the async path is running.
    syncing: AtomicBool,
    /// Syncs made, for tests and figures.
    syncs: AtomicU64,
    /// Counts the async path's syncs, for the waiters that did not run one.
    rounds: tokio::sync::watch::Sender<u64>,
}

#[derive(Debug)]
struct Synced {
    upto: u64,
    failed: Option<String>,
}

/// A sync round of [`GroupSync::wait_async`]: ends, waking the other
/// waiters, when dropped.
struct Round(Arc<GroupSync>);

impl Drop for Round {
    fn drop(&mut self) {
        self.0.syncing.store(false, Ordering::Release);
        self.0.rounds.send_modify(|n| *n += 1);
    }
}

impl GroupSync {
    /// For `file` (appended to through another handle), `len` bytes long
    /// and durable.
    pub(crate) fn new(file: &std::fs::File, len: u64) -> std::io::Result<GroupSync> {
        Ok(GroupSync {
            file: file.try_clone()?,
            written: AtomicU64::new(len),
            synced: AtomicU64::new(len),
            state: Mutex::new(Synced {
                upto: len,
                failed: None,
            }),
            fail_next: AtomicU32::new(0),
            syncing: AtomicBool::new(false),
            syncs: AtomicU64::new(0),
            rounds: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Called by the owner, under its lock, after a whole write that ends
    /// at `end`.
    pub(crate) fn wrote(&self, end: u64) {
        self.written.store(end, Ordering::Release);
    }

    /// Returns once every byte up to `end` is durable, holding the calling
    /// thread (an async worker hands its other tasks on meanwhile).
    pub(crate) fn wait(&self, end: u64) -> std::io::Result<()> {
        if self.synced.load(Ordering::Acquire) >= end {
            return Ok(());
        }
        wait(|| self.sync_upto(end))
    }

    /// [`GroupSync::wait`] for async callers: a waiter whose bytes are not
    /// yet durable either runs the next sync on the blocking pool or, when
    /// one is running, awaits its end; no async worker is held and no
    /// thread is handed over per waiter.
    pub(crate) async fn wait_async(self: &Arc<Self>, end: u64) -> std::io::Result<()> {
        let mut rounds = self.rounds.subscribe();
        loop {
            if self.synced.load(Ordering::Acquire) >= end {
                return Ok(());
            }
            if let Some((why, _)) = self.failed() {
                return Err(std::io::Error::other(why));
            }
            if !self.syncing.swap(true, Ordering::AcqRel) {
                // The round ends when the closure ends, or when it is
                // dropped unrun (a runtime shutting down) or panics: the
                // other waiters then run the next round themselves.
                let round = Round(self.clone());
                let synced = tokio::task::spawn_blocking(move || round.0.sync_upto(end)).await;
                return synced.unwrap_or_else(|e| Err(std::io::Error::other(e)));
            }
            // Another waiter syncs: its round may cover these bytes. (The
            // sender lives in `self`, so waiting cannot fail.)
            let _ = rounds.changed().await;
        }
    }

    /// Syncs unless `end` is durable already, under the sync lock: waiters
    /// queued on the lock find their bytes covered by the sync before them.
    fn sync_upto(&self, end: u64) -> std::io::Result<()> {
        let mut s = self.state.lock().expect("group sync lock");
        if let Some(why) = &s.failed {
            return Err(std::io::Error::other(why.clone()));
        }
        if s.upto >= end {
            return Ok(());
        }
        let target = self.written.load(Ordering::Acquire);
        self.syncs.fetch_add(1, Ordering::Relaxed);
        let synced = if self.fail_next.load(Ordering::Relaxed) > 0 {
            self.fail_next.fetch_sub(1, Ordering::Relaxed);
            Err(std::io::Error::from_raw_os_error(5))
        } else {
            self.file.sync_data()
        };
        match synced {
            Ok(()) => {
                s.upto = target;
                self.synced.store(target, Ordering::Release);
                Ok(())
            }
            Err(e) => {
                s.failed = Some(format!(
                    "a sync failed ({e}); what was written since the last good sync may be lost"
                ));
                Err(e)
            }
        }
    }

    #[cfg(any(test, feature = "fault-injection"))]
    /// Test hook (fault injection): the next `n` syncs fail with EIO.
    pub(crate) fn fail_next_syncs(&self, n: u32) {
        self.fail_next.store(n, Ordering::Relaxed);
    }

    /// How many syncs were made.
    #[cfg(test)]
    pub(crate) fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Why a sync failed and the length that was durable before it.
    pub(crate) fn failed(&self) -> Option<(String, u64)> {
        let s = self.state.lock().expect("group sync lock");
        s.failed.clone().map(|why| (why, s.upto))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Appends `n` lines to `file`, telling `sync`; the end of each.
    fn write_lines(file: &mut std::fs::File, sync: &GroupSync, n: usize) -> Vec<u64> {
        let mut len = file.metadata().unwrap().len();
        (0..n)
            .map(|i| {
                let line = format!("{{\"n\":{i}}}\n");
                file.write_all(line.as_bytes()).unwrap();
                len += line.len() as u64;
                sync.wrote(len);
                len
            })
            .collect()
    }

    /// An empty record file to append to and its syncs (the folder lives
    /// as long as the first).
    fn fresh() -> (tempfile::TempDir, std::fs::File, Arc<GroupSync>) {
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("records.jsonl"))
            .unwrap();
        let sync = Arc::new(GroupSync::new(&file, 0).unwrap());
        (dir, file, sync)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiters_for_records_written_before_a_sync_share_it() {
        let (_dir, mut file, sync) = fresh();
        let ends = write_lines(&mut file, &sync, 200);
        let waiters: Vec<_> = ends
            .iter()
            .map(|&end| {
                let sync = sync.clone();
                tokio::spawn(async move { sync.wait_async(end).await })
            })
            .collect();
        for w in waiters {
            w.await.unwrap().unwrap();
        }
        assert_eq!(sync.syncs(), 1, "one sync covers all 200 records");
        // Covered already: no sync at all.
        sync.wait(ends[10]).unwrap();
        sync.wait_async(ends[199]).await.unwrap();
        assert_eq!(sync.syncs(), 1);
        // A record written after it takes a sync of its own.
        let more = write_lines(&mut file, &sync, 1);
        sync.wait(more[0]).unwrap();
        assert_eq!(sync.syncs(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_round_that_ends_without_syncing_wakes_its_waiters_to_sync_themselves() {
        let (_dir, mut file, sync) = fresh();
        let end = write_lines(&mut file, &sync, 1)[0];
        // A round that is running, as far as the waiter can tell.
        sync.syncing.store(true, Ordering::Release);
        let waiter = tokio::spawn({
            let sync = sync.clone();
            async move { sync.wait_async(end).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "it waits for the running round");
        assert_eq!(sync.syncs(), 0);
        // The round is dropped unrun (a panic, a runtime shutting down).
        drop(Round(sync.clone()));
        waiter.await.unwrap().unwrap();
        assert_eq!(sync.syncs(), 1, "the waiter ran the next round itself");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_sync_fails_every_waiter_after_the_last_good_one() {
        let (_dir, mut file, sync) = fresh();
        let first = write_lines(&mut file, &sync, 1)[0];
        sync.wait_async(first).await.unwrap();
        sync.fail_next_syncs(1);
        let later = write_lines(&mut file, &sync, 3);
        let e = sync.wait_async(later[0]).await.unwrap_err();
        assert_eq!(e.raw_os_error(), Some(5), "{e}");
        // Sticky: Linux may have dropped the bytes and report the next
        // sync as good, so nothing after the last good sync is trusted.
        assert!(sync.wait(later[2]).is_err());
        assert!(sync.wait_async(later[1]).await.is_err());
        let (why, durable) = sync.failed().unwrap();
        assert!(why.contains("a sync failed"), "{why}");
        assert_eq!(durable, first);
        // What was durable stays durable.
        sync.wait(first).unwrap();
    }
}
