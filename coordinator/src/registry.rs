//! Live nodes and the jobs waiting on them. Each connected node has one
//! outgoing message channel (its stream) and a heartbeat time; each job in
//! flight has a one-shot waiter that only the node it was sent to can fill.
//!
//! One connection per node identity, and the newest wins: a second
//! `Attach` under a node's certificate replaces the first, whose stream the
//! caller closes (see [`Replaced::close`]) so a legitimate node reconnects.
//! Every connection has its own id, and a connection's end removes the
//! node's entry only while that entry is still its own, so one connection
//! of a node never evicts another by going away.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use plexus_proto::v1 as pb;

use crate::store::now_ms;

/// What a node told us about itself, and when we last heard from it.
#[derive(Debug, Clone, Default)]
pub struct NodeState {
    pub node_id: String,
    pub version: String,
    pub dictionary_version: String,
    pub data_snapshot: String,
    pub connected_at: i64,
    pub last_heartbeat: i64,
    pub peer_address: String,
    /// From the latest heartbeat: the node cannot reach its data, and why.
    pub degraded: bool,
    pub health_detail: String,
    /// The node's clock minus ours, from its latest heartbeat's sending
    /// time (so it includes the one-way transit): positive when ahead.
    pub clock_offset_ms: i64,
    /// The size of the coordinator's audit checkpoint the node says it
    /// witnessed last (hello, heartbeats): the size the next job's
    /// consistency proof starts from.
    pub witnessed_size: u64,
    /// From the hello: what the node's mapping check noticed at start-up.
    pub mapping_notices: Vec<String>,
}

type Outbound = mpsc::Sender<Result<pb::CoordinatorMessage, Status>>;

struct Connection {
    conn_id: u64,
    tx: Outbound,
    /// Cancelled when a newer connection of the node replaces this one.
    closed: CancellationToken,
    state: NodeState,
}

/// A node's connection as registered: its id, to hand back on disconnect,
/// the token cancelled should a newer connection replace it, and the older
/// connection this one replaced, if any.
pub struct Connected {
    pub conn_id: u64,
    pub closed: CancellationToken,
    pub replaced: Option<Replaced>,
}

/// The older connection of a node that a newer one replaced. Its jobs in
/// flight have already failed; [`Replaced::close`] ends its stream.
pub struct Replaced {
    pub conn_id: u64,
    /// What the older connection told us, with its peer address and when
    /// it connected.
    pub state: NodeState,
    tx: Outbound,
    closed: CancellationToken,
}

impl Replaced {
    /// Ends the older stream with `status` (what the node is told) and
    /// stops its reader. Never waits: a stream whose buffer is full just
    /// ends without the status, which the node also reconnects from.
    pub fn close(self, status: Status) {
        let _ = self.tx.try_send(Err(status));
        self.closed.cancel();
    }
}

/// A node's verified answer: its outcome and privacy receipt, taken from
/// the statement it signed, and what a third party needs to check that
/// signature later.
#[derive(Debug, Clone)]
pub struct SignedReply {
    pub outcome: pb::job_result::Outcome,
    pub privacy: Option<pb::PrivacyReceipt>,
    pub statement: Vec<u8>,
    pub signature: Vec<u8>,
    /// The node's certificate (DER) the signature was checked against.
    pub certificate: Vec<u8>,
    /// The hospital data steward's decision, when the node held the result
    /// for review.
    pub review: Option<pb::Review>,
}

/// A node's answer, or why there is none.
pub type JobReply = Result<SignedReply, String>;

struct Waiter {
    node_id: String,
    /// The connection the job went down: its end fails the job.
    conn_id: u64,
    /// The job's study and query hash, to name them in the audit log.
    study_id: String,
    query_hash: String,
    /// SHA-256 of the signed job bytes sent, which the node's statement must name.
    job_hash: Vec<u8>,
    tx: oneshot::Sender<JobReply>,
    /// The node holds the result for its data steward: the answer may come
    /// on a later connection, so a disconnect does not fail the job.
    held: bool,
}

pub struct Registry {
    nodes: Mutex<HashMap<String, Connection>>,
    /// Nodes seen since start that are not connected now, for `plexus nodes`.
    gone: Mutex<HashMap<String, NodeState>>,
    waiters: Mutex<HashMap<String, Waiter>>,
    next_conn: AtomicU64,
    liveness: Duration,
}

impl Registry {
    pub fn new(liveness: Duration) -> Self {
        Registry {
            nodes: Mutex::new(HashMap::new()),
            gone: Mutex::new(HashMap::new()),
            waiters: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            liveness,
        }
    }

    /// Registers a node's stream. An older connection of the same node is
    /// replaced (the newest wins): it is returned in
    /// [`Connected::replaced`] for the caller to close and record, and the
    /// jobs it still owed an answer fail now.
    pub fn connect(&self, state: NodeState, tx: Outbound) -> Connected {
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let closed = CancellationToken::new();
        self.gone.lock().expect("lock").remove(&state.node_id);
        let old = self.nodes.lock().expect("lock").insert(
            state.node_id.clone(),
            Connection {
                conn_id,
                tx,
                closed: closed.clone(),
                state,
            },
        );
        let replaced = old.map(|c| {
            self.fail_jobs_of(
                c.conn_id,
                "another connection with the node's identity replaced the one the job was sent on",
            );
            Replaced {
                conn_id: c.conn_id,
                state: c.state,
                tx: c.tx,
                closed: c.closed,
            }
        });
        Connected {
            conn_id,
            closed,
            replaced,
        }
    }

    /// A connection ended: the node's entry goes if it is still this
    /// connection's (a replaced connection's end leaves its successor
    /// alone), and every job sent on it that is not held for review fails.
    /// Returns whether it was the node's current connection.
    pub fn disconnect(&self, node_id: &str, conn_id: u64) -> bool {
        let mut nodes = self.nodes.lock().expect("lock");
        let current = nodes.get(node_id).map(|c| c.conn_id) == Some(conn_id);
        if current {
            if let Some(c) = nodes.remove(node_id) {
                self.gone
                    .lock()
                    .expect("lock")
                    .insert(node_id.to_string(), c.state);
            }
        }
        drop(nodes);
        self.fail_jobs_of(conn_id, "node disconnected during the job");
        current
    }

    /// Fails the jobs sent on connection `conn_id`, except those the node
    /// holds for review, which may be answered on a later connection.
    fn fail_jobs_of(&self, conn_id: u64, why: &str) {
        let mut waiters = self.waiters.lock().expect("lock");
        let ids: Vec<String> = waiters
            .iter()
            .filter(|(_, w)| w.conn_id == conn_id && !w.held)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            if let Some(w) = waiters.remove(&id) {
                let _ = w.tx.send(Err(why.into()));
            }
        }
    }

    pub fn heartbeat(&self, node_id: &str, conn_id: u64) {
        if let Some(c) = self.nodes.lock().expect("lock").get_mut(node_id) {
            if c.conn_id == conn_id {
                c.state.last_heartbeat = now_ms();
            }
        }
    }

    /// A heartbeat that carries the node's snapshot and health (nodes that
    /// predate these fields send them empty: the snapshot from the hello
    /// stays).
    ///
    /// Returns the echo of the node's clock to send back, so the node
    /// measures its offset from the round trip.
    pub fn heartbeat_with(
        &self,
        node_id: &str,
        conn_id: u64,
        beat: &pb::Heartbeat,
    ) -> Option<(Outbound, pb::ClockEcho)> {
        let mut nodes = self.nodes.lock().expect("lock");
        let c = nodes.get_mut(node_id).filter(|c| c.conn_id == conn_id)?;
        let now = now_ms();
        c.state.last_heartbeat = now;
        if !beat.data_snapshot.is_empty() {
            c.state.data_snapshot = beat.data_snapshot.clone();
        }
        c.state.degraded = beat.degraded;
        c.state.health_detail = beat.health_detail.clone();
        c.state.witnessed_size = beat.witnessed_size;
        if beat.sent_unix_ms <= 0 {
            return None;
        }
        c.state.clock_offset_ms = beat.sent_unix_ms.saturating_sub(now);
        let echo = pb::ClockEcho {
            coordinator_unix_ms: now,
            heartbeat_sent_unix_ms: beat.sent_unix_ms,
        };
        Some((c.tx.clone(), echo))
    }

    /// What is wrong with this coordinator's clock, if anything: most of
    /// the live nodes (at least one) measure it off by more than the
    /// tolerance, in the same direction. One node whose clock is off is
    /// that node's problem, which it reports itself.
    pub fn clock_problem(&self) -> Option<String> {
        let now = now_ms();
        let liveness = self.liveness.as_millis() as i64;
        let mut offsets: Vec<i64> = self
            .nodes
            .lock()
            .expect("lock")
            .values()
            .filter(|c| now - c.state.last_heartbeat <= liveness)
            .map(|c| c.state.clock_offset_ms)
            .collect();
        if offsets.is_empty() {
            return None;
        }
        offsets.sort_unstable();
        // Our clock minus theirs, as the nodes see it (the median node).
        let ours = -offsets[offsets.len() / 2];
        let off = offsets
            .iter()
            .filter(|o| plexus_core::clock::is_off(**o) && o.signum() == -ours.signum())
            .count();
        if off * 2 <= offsets.len() && offsets.len() > 1 {
            return None;
        }
        plexus_core::clock::problem(
            "the coordinator's",
            &format!("the clocks of {off} of its {} live nodes", offsets.len()),
            ours,
        )
    }

    /// The size of the audit checkpoint `node_id` reported it witnessed
    /// last (0 when it reported none or is not connected).
    pub fn witnessed_size(&self, node_id: &str) -> u64 {
        self.nodes
            .lock()
            .expect("lock")
            .get(node_id)
            .map_or(0, |c| c.state.witnessed_size)
    }

    pub fn is_live(&self, node_id: &str) -> bool {
        let now = now_ms();
        self.nodes
            .lock()
            .expect("lock")
            .get(node_id)
            .is_some_and(|c| now - c.state.last_heartbeat <= self.liveness.as_millis() as i64)
    }

    /// Every node seen since start, with whether it is live now.
    pub fn list(&self) -> Vec<(NodeState, bool)> {
        let now = now_ms();
        let mut out: Vec<(NodeState, bool)> = self
            .nodes
            .lock()
            .expect("lock")
            .values()
            .map(|c| {
                let live = now - c.state.last_heartbeat <= self.liveness.as_millis() as i64;
                (c.state.clone(), live)
            })
            .collect();
        out.extend(
            self.gone
                .lock()
                .expect("lock")
                .values()
                .map(|s| (s.clone(), false)),
        );
        out.sort_by(|a, b| a.0.node_id.cmp(&b.0.node_id));
        out
    }

    /// Sends a job down a node's stream and returns the waiter for its answer.
    /// The job is signed here, over the exact bytes the node receives.
    pub async fn send_job(
        &self,
        node_id: &str,
        job: pb::Job,
        signer: &plexus_tls::SigningKey,
    ) -> Result<oneshot::Receiver<JobReply>, String> {
        let (wtx, wrx) = oneshot::channel();
        let job_id = job.job_id.clone();
        let bytes = prost::Message::encode_to_vec(&job);
        let job_hash = ring::digest::digest(&ring::digest::SHA256, &bytes)
            .as_ref()
            .to_vec();
        // The waiter is filed under the connection while that connection
        // is still the node's, so a replacement from now on fails it.
        let tx = {
            let nodes = self.nodes.lock().expect("lock");
            let c = nodes
                .get(node_id)
                .ok_or_else(|| "not connected".to_string())?;
            self.waiters.lock().expect("lock").insert(
                job_id.clone(),
                Waiter {
                    node_id: node_id.to_string(),
                    conn_id: c.conn_id,
                    study_id: job.study_id.clone(),
                    query_hash: job.query_hash.clone(),
                    job_hash,
                    tx: wtx,
                    held: false,
                },
            );
            c.tx.clone()
        };
        let msg = pb::CoordinatorMessage {
            msg: Some(pb::coordinator_message::Msg::SignedJob(pb::SignedJob {
                signature: signer.sign(&bytes),
                job: bytes,
            })),
        };
        if tx.send(Ok(msg)).await.is_err() {
            self.waiters.lock().expect("lock").remove(&job_id);
            return Err("stream closed while sending the job".into());
        }
        Ok(wrx)
    }

    /// Delivers a node's answer to the job's waiter. Answers for unknown
    /// jobs, or from a node the job was not sent to, are refused; an
    /// answer whose signed statement names another job's bytes reaches the
    /// waiter as an error.
    pub fn deliver(
        &self,
        node_id: &str,
        job_id: &str,
        job_hash: Option<&[u8]>,
        reply: JobReply,
    ) -> Result<(), String> {
        let mut waiters = self.waiters.lock().expect("lock");
        match waiters.get(job_id) {
            None => Err(format!("no job {job_id} is waiting for an answer")),
            Some(w) if w.node_id != node_id => {
                Err(format!("job {job_id} was not sent to node {node_id}"))
            }
            Some(_) => {
                let w = waiters.remove(job_id).expect("present");
                let reply = match (reply, job_hash) {
                    (Ok(_), Some(h)) if h != w.job_hash.as_slice() => Err(
                        "the node's signed statement names other job bytes than those sent".into(),
                    ),
                    (reply, _) => reply,
                };
                let _ = w.tx.send(reply);
                Ok(())
            }
        }
    }

    /// Marks a job as held for review at its node, which keeps it waiting
    /// across the node's reconnections until its deadline. Refused for an
    /// unknown job or one sent to another node. Returns the job's study and
    /// query hash.
    pub fn hold(&self, node_id: &str, job_id: &str) -> Result<(String, String), String> {
        match self.waiters.lock().expect("lock").get_mut(job_id) {
            None => Err(format!("no job {job_id} is waiting for an answer")),
            Some(w) if w.node_id != node_id => {
                Err(format!("job {job_id} was not sent to node {node_id}"))
            }
            Some(w) => {
                w.held = true;
                Ok((w.study_id.clone(), w.query_hash.clone()))
            }
        }
    }

    /// Forgets a job whose deadline passed.
    pub fn abandon(&self, job_id: &str) {
        self.waiters.lock().expect("lock").remove(job_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str) -> pb::Job {
        pb::Job {
            job_id: id.into(),
            study_id: "s".into(),
            query_hash: "q".into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_coordinator_s_clock_is_off_when_most_live_nodes_say_so() {
        let registry = Registry::new(Duration::from_secs(10));
        let beat = |ahead_ms: i64| pb::Heartbeat {
            sent_unix_ms: now_ms() + ahead_ms,
            ..Default::default()
        };
        let mut conns = Vec::new();
        for id in ["a", "b", "c"] {
            let (tx, rx) = mpsc::channel(8);
            let hello = NodeState {
                node_id: id.into(),
                ..Default::default()
            };
            conns.push((id, registry.connect(hello, tx).conn_id, rx));
        }
        // Each beat is echoed with the coordinator's time and the node's.
        let (tx, echo) = registry.heartbeat_with("a", conns[0].1, &beat(0)).unwrap();
        assert!(!tx.is_closed());
        assert!((echo.coordinator_unix_ms - now_ms()).abs() < 1_000);
        // One node a minute ahead: its problem, not the coordinator's.
        registry.heartbeat_with("b", conns[1].1, &beat(0));
        registry.heartbeat_with("c", conns[2].1, &beat(60_000));
        assert_eq!(registry.clock_problem(), None);
        // Two of three a minute ahead: the coordinator is the one behind.
        registry.heartbeat_with("b", conns[1].1, &beat(60_000));
        let why = registry.clock_problem().unwrap();
        assert!(
            why.starts_with(
                "the coordinator's clock is 60.0 s behind the clocks of 2 of its 3 live nodes"
            ),
            "{why}"
        );
    }

    #[test]
    fn heartbeats_carry_the_latest_snapshot_and_health() {
        let registry = Registry::new(Duration::from_secs(10));
        let (tx, _rx) = mpsc::channel(8);
        let hello = NodeState {
            node_id: "a".into(),
            data_snapshot: "s0".into(),
            ..Default::default()
        };
        let conn = registry.connect(hello, tx).conn_id;
        let beat = |snapshot: &str, detail: &str| pb::Heartbeat {
            sent_unix_ms: 1,
            data_snapshot: snapshot.into(),
            degraded: !detail.is_empty(),
            health_detail: detail.into(),
            ..Default::default()
        };
        let state = || registry.list().into_iter().next().unwrap().0;
        registry.heartbeat_with(
            "a",
            conn,
            &beat("", "the hospital database at db:5432 is unreachable"),
        );
        let s = state();
        assert_eq!((s.data_snapshot.as_str(), s.degraded), ("s0", true));
        assert!(s.health_detail.contains("db:5432"));
        // An old connection's beat is ignored.
        registry.heartbeat_with("a", conn + 1, &beat("old", ""));
        assert!(state().degraded);
        registry.heartbeat_with("a", conn, &beat("s1", ""));
        let s = state();
        assert_eq!(
            (
                s.data_snapshot.as_str(),
                s.degraded,
                s.health_detail.as_str()
            ),
            ("s1", false, "")
        );
    }

    #[tokio::test]
    async fn the_newest_connection_wins_and_an_older_ones_end_evicts_nobody() {
        let dir = tempfile::tempdir().unwrap();
        let (signer, _, _) = plexus_tls::SigningKey::generate_into(dir.path(), "c").unwrap();
        let registry = Registry::new(Duration::from_secs(10));
        let hello = |peer: &str| NodeState {
            node_id: "a".into(),
            peer_address: peer.into(),
            connected_at: now_ms(),
            last_heartbeat: now_ms(),
            ..Default::default()
        };
        let (tx1, mut rx1) = mpsc::channel(8);
        let first = registry.connect(hello("10.0.0.1:4000"), tx1);
        assert!(first.replaced.is_none());
        let mut job_on_first = registry.send_job("a", job("j1"), &signer).await.unwrap();
        assert!(
            rx1.recv().await.unwrap().is_ok(),
            "the job went down the first stream"
        );

        let (tx2, mut rx2) = mpsc::channel(8);
        let second = registry.connect(hello("10.0.0.9:5000"), tx2);
        let old = second.replaced.expect("the first connection was replaced");
        assert_eq!(old.conn_id, first.conn_id);
        assert_eq!(old.state.peer_address, "10.0.0.1:4000");
        // The job sent on the replaced connection fails now, not at its deadline.
        assert!(job_on_first
            .try_recv()
            .unwrap()
            .unwrap_err()
            .contains("replaced"));
        assert!(!first.closed.is_cancelled());
        old.close(Status::aborted("replaced"));
        assert!(
            first.closed.is_cancelled(),
            "the older reader is told to stop"
        );
        assert_eq!(
            rx1.recv().await.unwrap().unwrap_err().code(),
            tonic::Code::Aborted
        );

        // New jobs go down the second stream; the first one's end leaves
        // the node connected and its new job waiting.
        let mut job_on_second = registry.send_job("a", job("j2"), &signer).await.unwrap();
        assert!(rx2.recv().await.unwrap().is_ok());
        assert!(!registry.disconnect("a", first.conn_id));
        assert!(registry.is_live("a"));
        assert_eq!(
            registry.list()[0].0.peer_address,
            "10.0.0.9:5000",
            "the node is listed with its current connection"
        );
        assert!(job_on_second.try_recv().is_err(), "still waiting");
        assert!(registry.disconnect("a", second.conn_id));
        assert!(!registry.is_live("a"));
        assert_eq!(
            job_on_second.try_recv().unwrap().unwrap_err(),
            "node disconnected during the job"
        );
    }

    #[tokio::test]
    async fn a_held_job_outlives_its_nodes_disconnect_and_others_fail() {
        let dir = tempfile::tempdir().unwrap();
        let (signer, _, _) = plexus_tls::SigningKey::generate_into(dir.path(), "c").unwrap();
        let registry = Registry::new(Duration::from_secs(10));
        let (tx, _rx) = mpsc::channel(8);
        let state = |id: &str| NodeState {
            node_id: id.into(),
            ..Default::default()
        };
        let conn = registry.connect(state("a"), tx.clone()).conn_id;
        let mut held = registry.send_job("a", job("held"), &signer).await.unwrap();
        let mut plain = registry.send_job("a", job("plain"), &signer).await.unwrap();

        assert!(registry
            .hold("b", "held")
            .unwrap_err()
            .contains("not sent to node b"));
        assert!(registry.hold("a", "nope").is_err());
        assert_eq!(
            registry.hold("a", "held").unwrap(),
            ("s".to_string(), "q".to_string())
        );
        registry.disconnect("a", conn);
        assert_eq!(
            plain.try_recv().unwrap().unwrap_err(),
            "node disconnected during the job"
        );
        assert!(held.try_recv().is_err(), "still waiting");

        // The node comes back and answers on its new connection.
        registry.connect(state("a"), tx);
        let reply = SignedReply {
            outcome: pb::job_result::Outcome::Error(pb::Error::default()),
            privacy: None,
            statement: vec![],
            signature: vec![],
            certificate: vec![],
            review: None,
        };
        registry.deliver("a", "held", None, Ok(reply)).unwrap();
        assert!(held.try_recv().unwrap().is_ok());
    }
}
