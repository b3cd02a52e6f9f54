//! Authenticated keys: what a node signs about one session, and the
//! roster that carries every member's signed bundle.
//!
//! ring's X25519 private keys are ephemeral, good for one agreement each,
//! so a node makes one key pair per other candidate of the session and
//! signs the bundle of its public keys (n − 1 keys of 32 bytes). That keeps
//! key agreement on ring, the crate the rest of Plexus already trusts.
//!
//! What is signed is `BUNDLE_LABEL || bytes`, where `bytes` is the encoded
//! bundle exactly as it travels; the label keeps a bundle signature from
//! ever being taken for a signed result statement (which the same key
//! signs, and whose encoding starts with another byte) or the reverse.

use std::collections::BTreeMap;

use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use ring::hkdf;
use ring::rand::SystemRandom;

use super::mask::PairKeys;
use super::{MAX_NODES, MIN_NODES};
use crate::error::{Error, Result};

/// Bytes of an X25519 public key.
pub const KEY_LEN: usize = 32;
pub type PublicKey = [u8; KEY_LEN];

/// Prefixed to a bundle's bytes before they are signed.
pub const BUNDLE_LABEL: &[u8] = b"plexus secagg key bundle v1\0";
/// Prefixed to a survivor list before it is signed (see [`survivors_message`]).
pub const SURVIVORS_LABEL: &[u8] = b"plexus secagg survivors v1\0";
const ROSTER_LABEL: &[u8] = b"plexus secagg roster v2";

/// What a node says about its keys for one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyBundle {
    pub session_id: String,
    pub study_id: String,
    /// The study definition the node checked the session against.
    pub definition_hash: String,
    /// SHA-256 of what the session computes (study, definition, query and
    /// privacy terms): keys made for one question serve no other.
    pub binding: [u8; 32],
    pub node: String,
    /// The node's public key for each other candidate of the session.
    pub keys: BTreeMap<String, PublicKey>,
}

/// A bundle as its node signed it: the exact bytes, the signature over
/// [`BUNDLE_LABEL`] followed by them, the node's certificate (DER), and the
/// bundle those bytes decode to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedBundle {
    pub bytes: Vec<u8>,
    pub signature: Vec<u8>,
    pub certificate: Vec<u8>,
    pub bundle: KeyBundle,
}

/// The message a node's signature over a bundle's `bytes` covers.
pub fn bundle_message(bytes: &[u8]) -> Vec<u8> {
    [BUNDLE_LABEL, bytes].concat()
}

/// The message a survivor signs in the confirm step of `step`: the
/// session, the roster's digest and the survivors, each length-prefixed.
pub fn survivors_message(
    session_id: &str,
    roster_digest: &[u8; 32],
    step: u32,
    survivors: &[String],
) -> Vec<u8> {
    let mut out = SURVIVORS_LABEL.to_vec();
    let mut field = |bytes: &[u8]| {
        out.extend((bytes.len() as u64).to_be_bytes());
        out.extend(bytes);
    };
    field(session_id.as_bytes());
    field(roster_digest);
    field(&step.to_be_bytes());
    for s in survivors {
        field(s.as_bytes());
    }
    out
}

/// Who takes part in one session: every member's signed bundle, in
/// node-id order (which also orders the pairs: the first of two adds
/// their mask, the second subtracts it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roster {
    pub session_id: String,
    pub members: Vec<SignedBundle>,
}

impl Roster {
    /// Checks the roster's shape: a session id, [`MIN_NODES`] to
    /// [`MAX_NODES`] members in strict id order, each bundle for this
    /// session, and each member holding a key for every other member.
    /// Who the members are and whether they signed is for the node to
    /// check against the network's CA and the study.
    pub fn validate(&self) -> Result<()> {
        let sid = &self.session_id;
        if sid.is_empty() {
            return Err(Error::invalid("the roster names no session"));
        }
        let n = self.members.len();
        if n < MIN_NODES {
            return Err(Error::policy(format!(
                "the roster of secure aggregation session {sid} has {n} nodes and needs at least {MIN_NODES}: in a smaller sum a node's figure could be read by the others; refused"
            )));
        }
        if n > MAX_NODES {
            return Err(Error::invalid(format!(
                "the roster of session {sid} has {n} nodes, more than the {MAX_NODES} secure aggregation takes"
            )));
        }
        if let Some(w) = self
            .members
            .windows(2)
            .find(|w| w[0].bundle.node >= w[1].bundle.node)
        {
            return Err(Error::invalid(format!(
                "the roster is not in node-id order with each node once (\"{}\" before \"{}\")",
                w[0].bundle.node, w[1].bundle.node
            )));
        }
        for m in &self.members {
            let b = &m.bundle;
            if b.session_id != *sid {
                return Err(Error::policy(format!(
                    "the roster of session {sid} carries keys {} made for session {}; refused",
                    b.node, b.session_id
                )));
            }
            if let Some(other) = self
                .members
                .iter()
                .find(|o| o.bundle.node != b.node && !b.keys.contains_key(&o.bundle.node))
            {
                return Err(Error::policy(format!(
                    "the roster's member {} made no key for member {} in session {sid}; refused",
                    b.node, other.bundle.node
                )));
            }
        }
        Ok(())
    }

    pub fn position(&self, node: &str) -> Option<usize> {
        self.members.iter().position(|m| m.bundle.node == node)
    }

    pub fn member(&self, node: &str) -> Option<&SignedBundle> {
        self.members.iter().find(|m| m.bundle.node == node)
    }

    pub fn node_ids(&self) -> Vec<String> {
        self.members.iter().map(|m| m.bundle.node.clone()).collect()
    }

    /// The Shamir share identifier of `node`: its position plus one.
    pub fn holder_id(&self, node: &str) -> Option<u8> {
        self.position(node).and_then(|p| u8::try_from(p + 1).ok())
    }

    /// SHA-256 over the session id and every member's id and signed
    /// bundle bytes: two rosters with the same digest are the same roster.
    pub fn digest(&self) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut field = |bytes: &[u8]| {
            ctx.update(&(bytes.len() as u64).to_be_bytes());
            ctx.update(bytes);
        };
        field(ROSTER_LABEL);
        field(self.session_id.as_bytes());
        field(&(self.members.len() as u64).to_be_bytes());
        for m in &self.members {
            field(m.bundle.node.as_bytes());
            field(&m.bytes);
        }
        let d = ctx.finish();
        d.as_ref().try_into().expect("32 bytes")
    }
}

/// The key pairs one node made for one session, one per other candidate.
/// The private halves live in memory only and are used once each.
pub struct KeyPairs {
    session_id: String,
    node: String,
    private: BTreeMap<String, EphemeralPrivateKey>,
    public: BTreeMap<String, PublicKey>,
}

impl std::fmt::Debug for KeyPairs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPairs")
            .field("session_id", &self.session_id)
            .field("node", &self.node)
            .field("peers", &self.public.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KeyPairs {
    /// Fresh key pairs of `node` for every other node of `peers`.
    pub fn generate<'a>(
        session_id: &str,
        node: &str,
        peers: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self> {
        let rng = SystemRandom::new();
        let mut private = BTreeMap::new();
        let mut public = BTreeMap::new();
        for peer in peers.into_iter().filter(|p| *p != node) {
            let key = EphemeralPrivateKey::generate(&X25519, &rng)
                .map_err(|_| Error::internal("the system's random source failed"))?;
            let pk: PublicKey = key
                .compute_public_key()
                .map_err(|_| Error::internal("cannot compute an X25519 public key"))?
                .as_ref()
                .try_into()
                .map_err(|_| Error::internal("an X25519 public key is not 32 bytes"))?;
            public.insert(peer.to_string(), pk);
            private.insert(peer.to_string(), key);
        }
        Ok(KeyPairs {
            session_id: session_id.to_string(),
            node: node.to_string(),
            private,
            public,
        })
    }

    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// The public key made for each peer.
    pub fn public_keys(&self) -> &BTreeMap<String, PublicKey> {
        &self.public
    }

    /// Agrees a pair key with every other member of `roster`, whose shape
    /// is checked first and whose bundle for this node must hold exactly
    /// the keys made here. The private keys are spent, whatever happens.
    pub fn agree(self, roster: &Roster) -> Result<PairKeys> {
        roster.validate()?;
        let sid = &roster.session_id;
        if *sid != self.session_id {
            return Err(Error::policy(format!(
                "the roster is for session {sid}, not {}; refused",
                self.session_id
            )));
        }
        let mine = roster.member(&self.node).ok_or_else(|| {
            Error::policy(format!(
                "the roster of session {sid} does not name this node ({}); refused",
                self.node
            ))
        })?;
        let members = roster.node_ids();
        for (peer, key) in &mine.bundle.keys {
            if !members.contains(peer) {
                continue;
            }
            if self.public.get(peer) != Some(key) {
                return Err(Error::policy(format!(
                    "the roster's key of this node ({}) for {peer} is not the one this node made for session {sid}; refused",
                    self.node
                )));
            }
        }
        let digest = roster.digest();
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, &digest);
        let mut private = self.private;
        let mut pairs = BTreeMap::new();
        for other in &roster.members {
            let peer = &other.bundle.node;
            if *peer == self.node {
                continue;
            }
            let key = private.remove(peer).ok_or_else(|| {
                Error::policy(format!(
                    "the roster names {peer}, for whom this node ({}) made no key in session {sid}; refused",
                    self.node
                ))
            })?;
            let theirs = other.bundle.keys.get(&self.node).ok_or_else(|| {
                Error::internal(format!("{peer} has no key for this node (validated)"))
            })?;
            let prk = agreement::agree_ephemeral(
                key,
                &UnparsedPublicKey::new(&X25519, theirs),
                |secret| salt.extract(secret),
            )
            .map_err(|_| {
                Error::policy(format!(
                    "the key of {peer} in the roster of session {sid} is not a valid X25519 public key; refused"
                ))
            })?;
            pairs.insert(peer.clone(), prk);
        }
        Ok(PairKeys::new(
            self.node,
            roster.session_id.clone(),
            digest,
            pairs,
        ))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("hospital-{i:02}")).collect()
    }

    /// A roster of unsigned bundles (signatures are the node's to check)
    /// and every member's key pairs.
    pub(crate) fn session(sid: &str, nodes: &[String]) -> (Vec<KeyPairs>, Roster) {
        let pairs: Vec<KeyPairs> = nodes
            .iter()
            .map(|n| KeyPairs::generate(sid, n, nodes.iter().map(String::as_str)).unwrap())
            .collect();
        let members = pairs
            .iter()
            .map(|p| SignedBundle {
                bytes: format!("bundle of {}", p.node).into_bytes(),
                signature: Vec::new(),
                certificate: Vec::new(),
                bundle: KeyBundle {
                    session_id: sid.into(),
                    study_id: "s".into(),
                    definition_hash: "d".into(),
                    binding: [7; 32],
                    node: p.node.clone(),
                    keys: p.public_keys().clone(),
                },
            })
            .collect();
        (
            pairs,
            Roster {
                session_id: sid.into(),
                members,
            },
        )
    }

    #[test]
    fn rosters_that_cannot_hide_a_node_are_refused() {
        let nodes = names(3);
        let (mut pairs, roster) = session("s1", &nodes);
        roster.validate().unwrap();

        let mut two = roster.clone();
        two.members.pop();
        let e = two.validate().unwrap_err();
        assert_eq!(e.code, crate::ErrorCode::Policy);
        assert!(e.message.contains("at least 3"), "{e}");

        // This node's key for another member swapped.
        let mut forged = roster.clone();
        let k = forged.members[0].bundle.keys.get_mut(&nodes[1]).unwrap();
        k[0] ^= 1;
        let e = pairs.remove(0).agree(&forged).unwrap_err();
        assert!(e.message.contains("not the one this node made"), "{e}");

        // A roster without this node.
        let outsider =
            KeyPairs::generate("s1", "hospital-zz", nodes.iter().map(String::as_str)).unwrap();
        let e = outsider.agree(&roster).unwrap_err();
        assert!(e.message.contains("does not name this node"), "{e}");

        // Another session's bundle in the roster.
        let mut mixed = roster.clone();
        mixed.members[2].bundle.session_id = "s2".into();
        let e = mixed.validate().unwrap_err();
        assert!(e.message.contains("made for session s2"), "{e}");

        // Any change to a member's bytes changes the digest.
        let mut changed = roster.clone();
        changed.members[2].bytes[0] ^= 1;
        assert_ne!(changed.digest(), roster.digest());
    }
}
