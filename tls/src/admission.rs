//! Which unauthenticated sockets the listener keeps while they handshake.
//!
//! Before its handshake a socket is anyone's: a flood of them must not
//! starve the nodes and researchers that have certificates. Pausing accept
//! when too many handshakes are in flight (what this replaced) let 2,000
//! idle sockets, reopened as they timed out, block every new connection. So
//! the listener never pauses: when it holds as many pending handshakes as it
//! allows, in all or from one source address, it drops one to make room,
//! chosen so that a real client is almost never the one dropped:
//!
//! - from the source holding the most pending handshakes (the flooder,
//!   when one address floods), or from the new socket's own source when
//!   that source is at its own limit;
//! - a socket that has not sent its first byte yet before one that has (a
//!   TLS client sends its ClientHello as soon as it connects; an idle
//!   socket is the cheapest attack);
//! - the oldest first (a real handshake takes milliseconds).
//!
//! Silent sockets are also dropped after [`Limits::first_byte`], and every
//! handshake after [`Limits::handshake`].

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::{AbortHandle, Id};

/// Bounds on sockets that have not finished their TLS handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Pending handshakes held at once, from all sources together.
    pub max_pending: usize,
    /// Pending handshakes held at once from one source address.
    pub max_pending_per_source: usize,
    /// A socket that sends nothing for this long after it was accepted is
    /// dropped.
    pub first_byte: Duration,
    /// A handshake that has not finished by then is dropped.
    pub handshake: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pending: 1024,
            max_pending_per_source: 256,
            first_byte: Duration::from_secs(2),
            handshake: Duration::from_secs(5),
        }
    }
}

struct Entry {
    source: IpAddr,
    spoke: Arc<AtomicBool>,
    abort: AbortHandle,
}

/// The handshakes in flight, in the order their sockets were accepted.
#[derive(Default)]
pub(crate) struct Pending {
    entries: BTreeMap<u64, Entry>,
    by_task: HashMap<Id, u64>,
    per_source: HashMap<IpAddr, usize>,
    next: u64,
}

impl Pending {
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Makes room for a socket from `source` under `limits`: returns the
    /// sources of the handshakes dropped for it (already aborted).
    pub(crate) fn make_room(&mut self, source: IpAddr, limits: &Limits) -> Vec<IpAddr> {
        let mut dropped = Vec::new();
        while self.per_source.get(&source).copied().unwrap_or(0)
            >= limits.max_pending_per_source.max(1)
        {
            match self.evict(source) {
                Some(s) => dropped.push(s),
                None => break,
            }
        }
        while self.entries.len() >= limits.max_pending.max(1) {
            let Some(busiest) = self.busiest() else { break };
            match self.evict(busiest) {
                Some(s) => dropped.push(s),
                None => break,
            }
        }
        dropped
    }

    /// Records a handshake task; `spoke` turns true once its socket sent
    /// its first byte.
    pub(crate) fn insert(&mut self, source: IpAddr, spoke: Arc<AtomicBool>, abort: AbortHandle) {
        let key = self.next;
        self.next += 1;
        self.by_task.insert(abort.id(), key);
        *self.per_source.entry(source).or_default() += 1;
        self.entries.insert(
            key,
            Entry {
                source,
                spoke,
                abort,
            },
        );
    }

    /// Forgets a finished (or aborted) handshake task.
    pub(crate) fn finished(&mut self, task: Id) {
        if let Some(key) = self.by_task.remove(&task) {
            if let Some(e) = self.entries.remove(&key) {
                self.forget_source(e.source);
            }
        }
    }

    fn forget_source(&mut self, source: IpAddr) {
        if let Some(n) = self.per_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&source);
            }
        }
    }

    fn busiest(&self) -> Option<IpAddr> {
        self.per_source
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(s, _)| *s)
    }

    /// Drops `source`'s oldest silent handshake, or its oldest one.
    fn evict(&mut self, source: IpAddr) -> Option<IpAddr> {
        let mut oldest = None;
        let mut victim = None;
        for (key, e) in &self.entries {
            if e.source != source {
                continue;
            }
            oldest.get_or_insert(*key);
            if !e.spoke.load(Ordering::Relaxed) {
                victim = Some(*key);
                break;
            }
        }
        let key = victim.or(oldest)?;
        let e = self.entries.remove(&key)?;
        self.by_task.remove(&e.abort.id());
        e.abort.abort();
        self.forget_source(e.source);
        Some(e.source)
    }
}

/// Why a socket was dropped before it became a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Dropped {
    /// Made room for a newer socket under the pending limits.
    Evicted,
    /// Sent nothing within [`Limits::first_byte`].
    Silent,
    /// Did not finish its handshake within [`Limits::handshake`].
    TimedOut,
    /// The TLS handshake failed (no or a bad certificate, not TLS).
    Failed,
    /// The certificate carries no Plexus identity.
    Rejected,
}

impl Dropped {
    fn as_str(self) -> &'static str {
        match self {
            Dropped::Evicted => "dropped to make room under the pending handshake limits",
            Dropped::Silent => "sent nothing before the first-byte deadline",
            Dropped::TimedOut => "did not finish the handshake before its deadline",
            Dropped::Failed => "tls handshake failed",
            Dropped::Rejected => "certificate carries no plexus identity",
        }
    }
}

/// How often dropped sockets are summarised in the log.
const DROP_LOG_WINDOW: Duration = Duration::from_secs(10);

/// Logs dropped sockets without letting a flood flood the log: the first
/// drop of each kind in a window is logged with its source and error, the
/// rest are counted and summarised once the window is over.
pub(crate) struct DropLog {
    window_start: Instant,
    counts: BTreeMap<Dropped, (u64, IpAddr)>,
}

impl Default for DropLog {
    fn default() -> Self {
        DropLog {
            window_start: Instant::now(),
            counts: BTreeMap::new(),
        }
    }
}

impl DropLog {
    pub(crate) fn record(&mut self, why: Dropped, source: IpAddr, error: &dyn std::fmt::Display) {
        self.roll();
        let slot = self.counts.entry(why).or_insert((0, source));
        slot.0 += 1;
        if slot.0 == 1 {
            tracing::warn!(%source, %error, "{}; dropping connection", why.as_str());
        }
    }

    /// Ends the window when it is over, summarising what it only counted.
    pub(crate) fn roll(&mut self) {
        if self.window_start.elapsed() < DROP_LOG_WINDOW {
            return;
        }
        for (why, (n, last_source)) in std::mem::take(&mut self.counts) {
            if n > 1 {
                tracing::warn!(
                    count = n - 1,
                    window_secs = DROP_LOG_WINDOW.as_secs(),
                    example_source = %last_source,
                    "more sockets dropped: {}",
                    why.as_str()
                );
            }
        }
        self.window_start = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Spawns a task that never ends, to stand for a pending handshake.
    fn pending(set: &mut tokio::task::JoinSet<()>) -> AbortHandle {
        set.spawn(std::future::pending())
    }

    #[tokio::test]
    async fn a_flooding_source_loses_its_own_silent_sockets_first() {
        let limits = Limits {
            max_pending: 4,
            max_pending_per_source: 3,
            ..Limits::default()
        };
        let mut tasks = tokio::task::JoinSet::new();
        let mut p = Pending::default();
        let flooder = ip("192.0.2.1");
        let client = ip("198.51.100.7");
        // A real client that spoke, then three idle sockets from a flooder.
        let spoke = Arc::new(AtomicBool::new(true));
        let real = pending(&mut tasks);
        p.insert(client, spoke, real.clone());
        for _ in 0..3 {
            assert!(p.make_room(flooder, &limits).is_empty());
            p.insert(flooder, Arc::default(), pending(&mut tasks));
        }
        // The flooder is at its own limit: its oldest socket makes room.
        assert_eq!(p.make_room(flooder, &limits), vec![flooder]);
        p.insert(flooder, Arc::default(), pending(&mut tasks));
        assert_eq!(p.len(), 4);
        // The whole set is full: a newcomer from elsewhere takes the
        // flooder's place, never the real client's.
        let other = ip("203.0.113.9");
        assert_eq!(p.make_room(other, &limits), vec![flooder]);
        assert!(!real.is_finished());
    }

    #[tokio::test]
    async fn a_source_s_silent_sockets_go_before_those_that_spoke() {
        let limits = Limits {
            max_pending: 10,
            max_pending_per_source: 2,
            ..Limits::default()
        };
        let mut tasks = tokio::task::JoinSet::new();
        let mut p = Pending::default();
        let source = ip("127.0.0.1");
        let spoke = Arc::new(AtomicBool::new(true));
        let talking = pending(&mut tasks);
        p.insert(source, spoke, talking.clone());
        let silent = pending(&mut tasks);
        p.insert(source, Arc::default(), silent.clone());
        assert_eq!(p.make_room(source, &limits), vec![source]);
        tokio::task::yield_now().await;
        assert!(silent.is_finished(), "the silent socket was dropped");
        assert!(!talking.is_finished(), "the one that spoke was kept");
        p.finished(talking.id());
        assert_eq!(p.len(), 0);
    }
}
