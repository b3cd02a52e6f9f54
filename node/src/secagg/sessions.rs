//! The secure aggregation sessions a node made keys for, in memory only: a
//! restarted node has none, and is a dropout of every session it was in.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use plexus_core::secagg::{KeyPairs, PairKeys, PublicKey, Roster, MAX_NODES, MIN_NODES};
use plexus_core::study::is_principal_name;
use plexus_core::{Error, RawStats, Result};
use tokio_util::task::AbortOnDropHandle;

/// How long a session's keys are kept after their last use.
pub const SESSION_TTL_MS: i64 = 30 * 60 * 1000;
/// Most sessions kept at once: a coordinator cannot fill the node's memory.
pub const MAX_SESSIONS: usize = 10_000;

/// The study a session runs under, as read from the definition the
/// hospital approved.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionStudy {
    pub study_id: String,
    pub definition_hash: String,
    /// The study's nodes: nobody else may be a member of a roster.
    pub nodes: BTreeSet<String>,
    pub min_nodes: u32,
}

pub(crate) enum Keys {
    /// Made, waiting for the roster.
    Made(KeyPairs),
    /// Agreed over the session's roster.
    Agreed(Arc<PairKeys>),
    /// A roster was refused and the private keys are gone.
    Spent,
}

/// Where one step of a session stands at this node.
#[derive(Debug, Clone, Default)]
pub struct StepState {
    /// Taken by a masked job (which may still be computing or held for
    /// review): the step is never masked twice.
    pub taken: bool,
    /// Masked and sent: this node's own share of its self-mask seed and
    /// the key of the contribution it masked.
    pub masked: Option<(Vec<u8>, String)>,
    /// The survivor list this node signed, once.
    pub confirmed: Option<Vec<String>>,
    /// Answered an unmask request, once.
    pub unmasked: bool,
}

pub struct Session {
    pub(crate) keys: Keys,
    pub study: SessionStudy,
    /// What the session computes (see `KeyBundle::binding`).
    pub binding: [u8; 32],
    /// The bundle bytes this node signed for the session.
    pub own_bundle: Vec<u8>,
    /// The roster accepted, once.
    pub roster: Option<Arc<Roster>>,
    pub steps: HashMap<u32, StepState>,
    expires_ms: i64,
    /// The computation started with the key round (see [`Pending`]).
    pending: Option<Pending>,
}

impl Session {
    /// The pair keys of the accepted roster.
    pub fn pair_keys(&self) -> Option<Arc<PairKeys>> {
        match &self.keys {
            Keys::Agreed(k) => Some(k.clone()),
            _ => None,
        }
    }
}

/// A computation a node starts when it is asked for keys, so that the
/// key round's round trip and the computation overlap: the statistics stay
/// in memory, nothing is noised, charged or sent until the masked job of
/// the session asks for exactly the same (`fingerprint`). Dropped (and
/// the computation stopped) with its session.
pub struct Pending {
    pub fingerprint: [u8; 32],
    pub today: chrono::NaiveDate,
    pub task: AbortOnDropHandle<Result<RawStats>>,
}

/// Every secure aggregation session this node has keys for.
#[derive(Default)]
pub struct Sessions {
    inner: Mutex<HashMap<String, Arc<Mutex<Session>>>>,
}

impl Sessions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes fresh key pairs of `me` for every other node of a new
    /// session and returns their public halves. `nodes` must name this
    /// node, only nodes of the study, and at least [`MIN_NODES`] in all;
    /// a session id is used once.
    pub fn make_keys(
        &self,
        session_id: &str,
        me: &str,
        nodes: &[String],
        study: SessionStudy,
        binding: [u8; 32],
        now_ms: i64,
    ) -> Result<BTreeMap<String, PublicKey>> {
        if session_id.len() != 32 || !session_id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::invalid(
                "the secure aggregation session id is not a 128-bit random value in hex",
            ));
        }
        let unique: BTreeSet<&String> = nodes.iter().collect();
        if unique.len() != nodes.len() || nodes.len() > MAX_NODES {
            return Err(Error::invalid(format!(
                "the key request names a node twice or more than {MAX_NODES} nodes"
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
        if let Some(stranger) = nodes.iter().find(|n| !study.nodes.contains(*n)) {
            return Err(Error::policy(format!(
                "the key request of session {session_id} names {stranger}, which is not a node of study \"{}\" in the definition this node approved ({}); refused",
                study.study_id, study.definition_hash
            )));
        }
        if nodes.len() < MIN_NODES {
            return Err(Error::policy(format!(
                "secure aggregation session {session_id} names {} nodes and needs at least {MIN_NODES}: in a smaller sum a node's figure could be read by the others; refused",
                nodes.len()
            )));
        }
        let mut inner = self.inner.lock().expect("sessions lock");
        inner.retain(|_, s| s.lock().map(|s| s.expires_ms > now_ms).unwrap_or(false));
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
        let session = Session {
            keys: Keys::Made(keys),
            study,
            binding,
            own_bundle: Vec::new(),
            roster: None,
            steps: HashMap::new(),
            expires_ms: now_ms + SESSION_TTL_MS,
            pending: None,
        };
        inner.insert(session_id.to_string(), Arc::new(Mutex::new(session)));
        Ok(public)
    }

    /// The session `session_id`, kept alive for another [`SESSION_TTL_MS`].
    pub fn get(&self, session_id: &str, now_ms: i64) -> Result<Arc<Mutex<Session>>> {
        let mut inner = self.inner.lock().expect("sessions lock");
        inner.retain(|_, s| s.lock().map(|s| s.expires_ms > now_ms).unwrap_or(false));
        let session = inner.get(session_id).cloned().ok_or_else(|| {
            Error::policy(format!(
                "this node holds no keys for secure aggregation session {session_id} (never made, expired, or lost in a restart); it is a dropout of that session"
            ))
        })?;
        session.lock().expect("session lock").expires_ms = now_ms + SESSION_TTL_MS;
        Ok(session)
    }

    /// Keeps the computation started for a session's key round.
    pub fn set_pending(&self, session_id: &str, pending: Pending) {
        let inner = self.inner.lock().expect("sessions lock");
        if let Some(s) = inner.get(session_id) {
            s.lock().expect("session lock").pending = Some(pending);
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
        let session = self
            .inner
            .lock()
            .expect("sessions lock")
            .get(session_id)?
            .clone();
        let pending = session.lock().expect("session lock").pending.take()?;
        (pending.fingerprint == *fingerprint && pending.today == today).then_some(pending.task)
    }
}

/// Accepts `roster` for the session (checked by `check`, which sees the
/// session) and returns the pair keys: refused when the roster differs
/// from one accepted before in the session, or when `check` or the key
/// agreement refuses it (then the keys are discarded and the session is
/// over for this node).
pub fn accept_roster(
    session: &mut Session,
    roster: &Roster,
    check: impl FnOnce(&Session, &Roster) -> Result<()>,
) -> Result<Arc<PairKeys>> {
    let sid = &roster.session_id;
    if let Some(seen) = &session.roster {
        if seen.digest() != roster.digest() {
            return Err(Error::policy(format!(
                "the roster of this job differs from the roster this node already accepted for secure aggregation session {sid}; refused"
            )));
        }
    }
    match std::mem::replace(&mut session.keys, Keys::Spent) {
        Keys::Made(keys) => {
            let agreed = check(session, roster).and_then(|_| keys.agree(roster));
            match agreed {
                Ok(k) => {
                    let k = Arc::new(k);
                    session.keys = Keys::Agreed(k.clone());
                    session.roster = Some(Arc::new(roster.clone()));
                    Ok(k)
                }
                Err(e) => Err(Error::new(
                    e.code,
                    format!(
                        "{}; the session's keys are discarded, so this node is a dropout of session {sid}",
                        e.message
                    ),
                )),
            }
        }
        Keys::Agreed(k) => {
            session.keys = Keys::Agreed(k.clone());
            Ok(k)
        }
        Keys::Spent => Err(Error::policy(format!(
            "this node refused an earlier roster of secure aggregation session {sid} and discarded its keys; refused"
        ))),
    }
}
