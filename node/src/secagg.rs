//! The node's half of secure aggregation: the key pairs it made for each
//! session (in memory only: a restarted node has none, and the coordinator
//! must start a new key round), the roster it accepted for the session,
//! and the steps it has masked. See `plexus_core::secagg` for the scheme.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use plexus_core::secagg::{KeyPairs, Masker, PublicKey, Roster, MIN_NODES};
use plexus_core::study::is_principal_name;
use plexus_core::{Error, RawStats, Result};
use plexus_proto::v1 as pb;
use tokio_util::task::AbortOnDropHandle;

/// How long a session's keys are kept after their last use.
pub const SESSION_TTL_MS: i64 = 30 * 60 * 1000;
/// Most sessions kept at once: a coordinator cannot fill the node's memory.
pub const MAX_SESSIONS: usize = 10_000;
/// Most nodes one session may name.
pub const MAX_SESSION_NODES: usize = 1000;

enum Keys {
    /// Made, waiting for the roster.
    Made(KeyPairs),
    /// Agreed over the roster whose digest is kept with the session.
    Agreed(Arc<Masker>),
    /// The roster was refused and the private keys are gone.
    Spent,
}

struct Session {
    keys: Keys,
    roster_digest: Option<[u8; 32]>,
    steps: HashSet<u32>,
    expires_ms: i64,
    /// The computation started with the key round, for the masked job
    /// that asks the same (see [`Pending`]).
    pending: Option<Pending>,
}

/// A computation a node starts when it is asked for keys, so that the
/// key round's round trip and the computation overlap: the statistics stay
/// in memory, nothing is noised, charged or sent until the masked job of
/// the session asks for exactly the same ([`fingerprint`]). Dropped (and
/// the computation stopped) with its session.
pub struct Pending {
    pub fingerprint: [u8; 32],
    pub today: chrono::NaiveDate,
    pub task: AbortOnDropHandle<Result<RawStats>>,
}

/// What a job asks a node to compute, without what differs between the
/// jobs of one session (id, times, the secure aggregation step): two jobs
/// with the same fingerprint ask for the same statistics.
pub(crate) fn fingerprint(job: &pb::Job) -> [u8; 32] {
    let what = pb::Job {
        study_id: job.study_id.clone(),
        purpose: job.purpose.clone(),
        query: job.query.clone(),
        min_cell_size: job.min_cell_size,
        query_hash: job.query_hash.clone(),
        iteration: job.iteration.clone(),
        privacy: job.privacy,
        audience: job.audience.clone(),
        ..Default::default()
    };
    let d = ring::digest::digest(&ring::digest::SHA256, &prost::Message::encode_to_vec(&what));
    d.as_ref().try_into().expect("32 bytes")
}

/// Every secure aggregation session this node has keys for.
#[derive(Default)]
pub struct Sessions {
    inner: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes fresh key pairs of `me` for every other node of a new
    /// session and returns their public halves. `nodes` must name this
    /// node and at least [`MIN_NODES`] in all; a session id is used once.
    pub fn make_keys(
        &self,
        session_id: &str,
        me: &str,
        nodes: &[String],
        now_ms: i64,
    ) -> Result<BTreeMap<String, PublicKey>> {
        if session_id.len() < 32 || !session_id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::invalid(
                "the secure aggregation session id is not a 128-bit random value in hex",
            ));
        }
        let unique: HashSet<&String> = nodes.iter().collect();
        if unique.len() != nodes.len() || nodes.len() > MAX_SESSION_NODES {
            return Err(Error::invalid(format!(
                "the key request names a node twice or more than {MAX_SESSION_NODES} nodes"
            )));
        }
        if let Some(bad) = nodes.iter().find(|n| !is_principal_name(n)) {
            return Err(Error::invalid(format!(
                "the key request names \"{bad}\", which is not a valid node name"
            )));
        }
        if !nodes.iter().any(|n| n == me) {
            return Err(Error::policy(format!(
                "the key request of session {session_id} does not name this node ({me}); refused"
            )));
        }
        if nodes.len() < MIN_NODES {
            return Err(Error::policy(format!(
                "secure aggregation session {session_id} names {} nodes and needs at least {MIN_NODES}: in a smaller sum a node's figure could be read by the others; refused",
                nodes.len()
            )));
        }
        let mut inner = self.inner.lock().expect("sessions lock");
        inner.retain(|_, s| s.expires_ms > now_ms);
        if inner.contains_key(session_id) {
            return Err(Error::policy(format!(
                "this node already made keys for secure aggregation session {session_id}; a session's keys are made once, refused"
            )));
        }
        if inner.len() >= MAX_SESSIONS {
            return Err(Error::unavailable(format!(
                "this node holds keys for {MAX_SESSIONS} open secure aggregation sessions; try again when some have expired"
            )));
        }
        let keys = KeyPairs::generate(session_id, me, nodes.iter().map(String::as_str))?;
        let public = keys.public_keys().clone();
        inner.insert(
            session_id.to_string(),
            Session {
                keys: Keys::Made(keys),
                roster_digest: None,
                steps: HashSet::new(),
                expires_ms: now_ms + SESSION_TTL_MS,
                pending: None,
            },
        );
        Ok(public)
    }

    /// Keeps the computation started for a session's key round.
    pub fn set_pending(&self, session_id: &str, pending: Pending) {
        let mut inner = self.inner.lock().expect("sessions lock");
        if let Some(s) = inner.get_mut(session_id) {
            s.pending = Some(pending);
        }
    }

    /// The computation started with the session's key round, when it was
    /// for the same statistics (`fingerprint`, on the same day); dropped
    /// otherwise.
    pub fn take_pending(
        &self,
        session_id: &str,
        fingerprint: &[u8; 32],
        today: chrono::NaiveDate,
    ) -> Option<AbortOnDropHandle<Result<RawStats>>> {
        let mut inner = self.inner.lock().expect("sessions lock");
        let pending = inner.get_mut(session_id)?.pending.take()?;
        (pending.fingerprint == *fingerprint && pending.today == today).then_some(pending.task)
    }

    /// Accepts `roster` for step `step` of its session and returns the
    /// masker: refused when this node made no keys for the session, when
    /// the roster differs from one it already accepted in the session, when
    /// the step was masked before (the same masks twice would give away the
    /// difference of two answers), or when the roster fails
    /// [`KeyPairs::agree`] (fewer than 3 nodes, this node missing, its keys
    /// not the ones made here).
    pub fn masker(&self, roster: &Roster, step: u32, now_ms: i64) -> Result<Arc<Masker>> {
        let sid = &roster.session_id;
        let mut inner = self.inner.lock().expect("sessions lock");
        inner.retain(|_, s| s.expires_ms > now_ms);
        let session = inner.get_mut(sid).ok_or_else(|| {
            Error::policy(format!(
                "this node holds no keys for secure aggregation session {sid} (never made, expired, or lost in a restart); the coordinator must start a new key round"
            ))
        })?;
        let digest = roster.digest();
        if let Some(seen) = session.roster_digest {
            if seen != digest {
                return Err(Error::policy(format!(
                    "the roster of this job differs from the roster this node already accepted for secure aggregation session {sid}; refused"
                )));
            }
        }
        if session.steps.contains(&step) {
            return Err(Error::policy(format!(
                "this node already masked step {step} of secure aggregation session {sid}; masking again under the same masks would give away the difference of two answers, so it is refused"
            )));
        }
        let masker = match std::mem::replace(&mut session.keys, Keys::Spent) {
            Keys::Made(keys) => match keys.agree(roster) {
                Ok(m) => Arc::new(m),
                Err(e) => {
                    // The private keys are gone: the session is over.
                    return Err(Error::new(
                        e.code,
                        format!(
                            "{}; the session's keys are discarded, so the coordinator must start a new key round",
                            e.message
                        ),
                    ));
                }
            },
            Keys::Agreed(m) => m,
            Keys::Spent => {
                return Err(Error::policy(format!(
                    "this node refused an earlier roster of secure aggregation session {sid} and discarded its keys; the coordinator must start a new key round"
                )))
            }
        };
        session.keys = Keys::Agreed(masker.clone());
        session.roster_digest = Some(digest);
        session.steps.insert(step);
        session.expires_ms = now_ms + SESSION_TTL_MS;
        Ok(masker)
    }
}

/// The step of secure aggregation a job asks for.
pub(crate) enum Step {
    Keys {
        session_id: String,
        nodes: Vec<String>,
    },
    Mask {
        roster: Roster,
        step: u32,
    },
}

impl Step {
    /// The step `job` asks for, or `None` for a plain job.
    pub(crate) fn of(job: &pb::Job) -> Result<Option<Self>, Error> {
        let Some(sa) = &job.secure_aggregation else {
            return Ok(None);
        };
        Ok(Some(match sa.step.clone() {
            Some(pb::secure_aggregation::Step::KeyRequest(k)) => Step::Keys {
                session_id: sa.session_id.clone(),
                nodes: k.nodes,
            },
            Some(pb::secure_aggregation::Step::Mask(m)) => {
                let roster = Roster::try_from(m.roster.ok_or_else(|| {
                    Error::invalid("the secure aggregation job carries no roster")
                })?)?;
                if roster.session_id != sa.session_id {
                    return Err(Error::invalid(format!(
                        "the roster is for session {}, and the job for session {}",
                        roster.session_id, sa.session_id
                    )));
                }
                Step::Mask {
                    roster,
                    step: m.step,
                }
            }
            None => {
                return Err(Error::invalid(
                    "the secure aggregation job names no step (key request or mask)",
                ))
            }
        }))
    }
}

/// The masker of the roster a job was accepted under, and where it is.
pub(crate) struct MaskFor {
    pub masker: Arc<Masker>,
    pub session_id: String,
    pub step: u32,
    /// The job's deadline. A masked answer is never sent after it: the
    /// coordinator has then given the node up and may re-run the round
    /// without it, and a late answer added to the first attempt's, less
    /// the re-run's sum, would be this node's figure.
    pub deadline_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;
    const SID: &str = "00112233445566778899aabbccddeeff";

    fn nodes() -> Vec<String> {
        ["a", "b", "c"].map(String::from).to_vec()
    }

    /// The roster as an honest coordinator builds it: this node's keys from
    /// `sessions`, the others' made here.
    fn roster(sessions: &Sessions) -> Roster {
        let mut keys = BTreeMap::new();
        keys.insert(
            "a".to_string(),
            sessions.make_keys(SID, "a", &nodes(), NOW).unwrap(),
        );
        for other in ["b", "c"] {
            let kp = KeyPairs::generate(SID, other, nodes().iter().map(String::as_str)).unwrap();
            keys.insert(other.to_string(), kp.public_keys().clone());
        }
        Roster::new(SID, keys)
    }

    #[test]
    fn a_session_takes_one_roster_and_masks_each_step_once() {
        let s = Sessions::new();
        let r = roster(&s);
        let m = s.masker(&r, 1, NOW).unwrap();
        assert_eq!(m.digest(), r.digest());
        // The same roster for the next step: the same pair keys.
        let again = s.masker(&r, 2, NOW).unwrap();
        assert!(Arc::ptr_eq(&m, &again));
        let e = s.masker(&r, 2, NOW).unwrap_err();
        assert!(e.message.contains("already masked step 2"), "{e}");
        // A changed roster in the same session.
        let mut changed = r.clone();
        changed.nodes[1].keys.values_mut().next().unwrap()[0] ^= 1;
        let e = s.masker(&changed, 3, NOW).unwrap_err();
        assert!(e.message.contains("differs from the roster"), "{e}");
        // Keys are made once per session.
        let e = s.make_keys(SID, "a", &nodes(), NOW).unwrap_err();
        assert!(e.message.contains("already made keys"), "{e}");
        // Expired sessions are forgotten.
        let e = s.masker(&r, 4, NOW + SESSION_TTL_MS + 1).unwrap_err();
        assert!(e.message.contains("holds no keys"), "{e}");
    }

    #[test]
    fn a_computation_started_with_the_keys_serves_only_the_same_question() {
        let key_job = pb::Job {
            job_id: "k".into(),
            study_id: "s".into(),
            query_hash: "q".into(),
            audience: "a".into(),
            deadline_unix_ms: 1,
            secure_aggregation: Some(pb::SecureAggregation {
                session_id: SID.into(),
                step: None,
            }),
            ..Default::default()
        };
        let mask_job = pb::Job {
            job_id: "m".into(),
            deadline_unix_ms: 2,
            issued_unix_ms: 1,
            secure_aggregation: None,
            ..key_job.clone()
        };
        assert_eq!(fingerprint(&key_job), fingerprint(&mask_job));
        let other = pb::Job {
            query_hash: "another query".into(),
            ..mask_job.clone()
        };
        assert_ne!(fingerprint(&key_job), fingerprint(&other));

        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let s = Sessions::new();
            s.make_keys(SID, "a", &nodes(), NOW).unwrap();
            let today = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
            let pending = |f| Pending {
                fingerprint: f,
                today,
                task: AbortOnDropHandle::new(tokio::spawn(async { Ok(RawStats::Count(7)) })),
            };
            s.set_pending(SID, pending(fingerprint(&key_job)));
            // Another question gets nothing, and the computation is dropped.
            assert!(s.take_pending(SID, &fingerprint(&other), today).is_none());
            assert!(s
                .take_pending(SID, &fingerprint(&mask_job), today)
                .is_none());
            s.set_pending(SID, pending(fingerprint(&key_job)));
            let task = s.take_pending(SID, &fingerprint(&mask_job), today).unwrap();
            assert_eq!(task.await.unwrap().unwrap(), RawStats::Count(7));
            // Taken once.
            assert!(s
                .take_pending(SID, &fingerprint(&mask_job), today)
                .is_none());
        });
    }

    #[test]
    fn small_foreign_or_forged_sessions_are_refused() {
        let s = Sessions::new();
        let two = ["a", "b"].map(String::from).to_vec();
        let e = s.make_keys(SID, "a", &two, NOW).unwrap_err();
        assert!(e.message.contains("at least 3"), "{e}");
        let e = s.make_keys(SID, "z", &nodes(), NOW).unwrap_err();
        assert!(e.message.contains("does not name this node"), "{e}");
        assert!(s.make_keys("short", "a", &nodes(), NOW).is_err());

        // A roster whose key for this node was swapped: refused, and the
        // session is over.
        let r = roster(&s);
        let mut forged = r.clone();
        forged.nodes[0].keys.values_mut().next().unwrap()[3] ^= 1;
        let e = s.masker(&forged, 1, NOW).unwrap_err();
        assert!(e.message.contains("not the one this node made"), "{e}");
        let e = s.masker(&r, 1, NOW).unwrap_err();
        assert!(
            e.message.contains("differs") || e.message.contains("discarded"),
            "{e}"
        );
    }
}
