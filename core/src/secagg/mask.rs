//! Pairwise masks that cancel in a sum.
//!
//! Keys: ring's X25519 private keys are ephemeral, good for one agreement
//! each, so a node makes one key pair per other node of the session and
//! the roster carries n − 1 public keys per node (n(n − 1) keys of 32 bytes:
//! 12 KB for 20 nodes, 78 KB for 50). That keeps the whole of secure
//! aggregation on ring, the crate the rest of Plexus already trusts for
//! its cryptography, with no second X25519 implementation to review.
//!
//! Masks: node i and node j (i before j in the roster's order) agree a
//! secret with their keys for each other; HKDF-SHA256 extracts a pair key
//! from it, salted with the roster's digest (which binds the session id and
//! every key), and expands it, labelled with both node ids in order, the
//! step and a block counter, into a stream of 128-bit words. Node i adds
//! the stream and node j subtracts it, so in the sum over the roster every
//! pair's stream cancels. A session's pair keys serve several steps (the
//! rounds of a fit); the node never masks twice at the same step, since two
//! vectors under one mask would give away their difference.

use std::collections::BTreeMap;

use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, X25519};
use ring::hkdf;
use ring::rand::SystemRandom;

use crate::error::{Error, Result};

/// Fewest nodes a secure aggregate may have: with two, each could subtract
/// its own figure from the sum and read the other's.
pub const MIN_NODES: usize = 3;
/// Bytes of an X25519 public key.
pub const KEY_LEN: usize = 32;

pub type PublicKey = [u8; KEY_LEN];

/// HKDF-SHA256 expands at most 255 blocks of 32 bytes per call.
const BLOCK_BYTES: usize = 255 * 32;
const WORDS_PER_BLOCK: usize = BLOCK_BYTES / 16;

const ROSTER_LABEL: &[u8] = b"plexus secagg roster v1";
const MASK_LABEL: &[u8] = b"plexus secagg mask v1";

/// One node of a roster and its public key for each other node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterNode {
    pub node: String,
    pub keys: BTreeMap<String, PublicKey>,
}

/// Who takes part in one secure aggregation session, with their keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roster {
    pub session_id: String,
    /// Ordered by node id, each node once.
    pub nodes: Vec<RosterNode>,
}

impl Roster {
    /// Builds a roster from each node's public keys, in node-id order.
    pub fn new(session_id: &str, keys: BTreeMap<String, BTreeMap<String, PublicKey>>) -> Self {
        Roster {
            session_id: session_id.to_string(),
            nodes: keys
                .into_iter()
                .map(|(node, keys)| RosterNode { node, keys })
                .collect(),
        }
    }

    /// Checks the roster's shape: a session id, at least [`MIN_NODES`]
    /// nodes in strict id order, and for every node exactly one key for
    /// each other node.
    pub fn validate(&self) -> Result<()> {
        if self.session_id.is_empty() {
            return Err(Error::invalid("the roster names no session"));
        }
        if self.nodes.len() < MIN_NODES {
            return Err(Error::policy(format!(
                "the roster of secure aggregation session {} has {} nodes and needs at least {MIN_NODES}: in a smaller sum a node's figure could be read by the others",
                self.session_id,
                self.nodes.len()
            )));
        }
        if let Some(w) = self.nodes.windows(2).find(|w| w[0].node >= w[1].node) {
            return Err(Error::invalid(format!(
                "the roster is not in node-id order with each node once (\"{}\" before \"{}\")",
                w[0].node, w[1].node
            )));
        }
        for n in &self.nodes {
            let others = self.nodes.iter().filter(|o| o.node != n.node);
            let expected: Vec<&str> = others.map(|o| o.node.as_str()).collect();
            let got: Vec<&str> = n.keys.keys().map(String::as_str).collect();
            if got != expected {
                return Err(Error::invalid(format!(
                    "the roster gives {} keys for [{}] where one key for each other node [{}] is needed",
                    n.node,
                    got.join(", "),
                    expected.join(", ")
                )));
            }
        }
        Ok(())
    }

    pub fn position(&self, node: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.node == node)
    }

    pub fn node_ids(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.node.clone()).collect()
    }

    /// SHA-256 over a canonical encoding of the session id and every key:
    /// two rosters with the same digest are the same roster.
    pub fn digest(&self) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut field = |bytes: &[u8]| {
            ctx.update(&(bytes.len() as u64).to_be_bytes());
            ctx.update(bytes);
        };
        field(ROSTER_LABEL);
        field(self.session_id.as_bytes());
        field(&(self.nodes.len() as u64).to_be_bytes());
        for n in &self.nodes {
            field(n.node.as_bytes());
            field(&(n.keys.len() as u64).to_be_bytes());
            for (peer, key) in &n.keys {
                field(peer.as_bytes());
                field(key);
            }
        }
        let d = ctx.finish();
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    }
}

/// The key pairs one node made for one session, one per other node. The
/// private halves live in memory only and are used once each.
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
            let mut pk = [0u8; KEY_LEN];
            pk.copy_from_slice(
                key.compute_public_key()
                    .map_err(|_| Error::internal("cannot compute an X25519 public key"))?
                    .as_ref(),
            );
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

    /// Checks `roster` against these keys (same session, this node in it,
    /// its keys for this node the ones made here) and agrees a pair key
    /// with every other roster node. The private keys are spent.
    pub fn agree(self, roster: &Roster) -> Result<Masker> {
        roster.validate()?;
        if roster.session_id != self.session_id {
            return Err(Error::policy(format!(
                "the roster is for session {}, not {}",
                roster.session_id, self.session_id
            )));
        }
        let me = roster.position(&self.node).ok_or_else(|| {
            Error::policy(format!(
                "the roster of session {} does not name this node ({}); refused",
                roster.session_id, self.node
            ))
        })?;
        for (peer, key) in &roster.nodes[me].keys {
            match self.public.get(peer) {
                Some(made) if made == key => {}
                Some(_) => {
                    return Err(Error::policy(format!(
                        "the roster's key of this node ({}) for {peer} is not the one this node made for session {}; refused",
                        self.node, roster.session_id
                    )))
                }
                None => {
                    return Err(Error::policy(format!(
                        "the roster names {peer}, for whom this node ({}) made no key in session {}; refused",
                        self.node, roster.session_id
                    )))
                }
            }
        }
        let digest = roster.digest();
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, &digest);
        let mut private = self.private;
        let mut pairs = Vec::with_capacity(roster.nodes.len() - 1);
        for (j, other) in roster.nodes.iter().enumerate() {
            if j == me {
                continue;
            }
            let key = private.remove(&other.node).ok_or_else(|| {
                Error::internal(format!("no private key for {} (checked above)", other.node))
            })?;
            let theirs = other.keys.get(&self.node).ok_or_else(|| {
                Error::internal(format!(
                    "{} has no key for this node (validated)",
                    other.node
                ))
            })?;
            let prk = agreement::agree_ephemeral(key, &UnparsedPublicKey::new(&X25519, theirs), |secret| {
                salt.extract(secret)
            })
            .map_err(|_| {
                Error::policy(format!(
                    "the key of {} in the roster of session {} is not a valid X25519 public key; refused",
                    other.node, roster.session_id
                ))
            })?;
            let (lo, hi) = if me < j {
                (&self.node, &other.node)
            } else {
                (&other.node, &self.node)
            };
            pairs.push(Pair {
                add: me < j,
                lo: lo.clone(),
                hi: hi.clone(),
                prk,
            });
        }
        Ok(Masker {
            node: self.node,
            digest,
            pairs,
        })
    }
}

struct Pair {
    /// This node comes first in the pair: it adds the stream.
    add: bool,
    lo: String,
    hi: String,
    prk: hkdf::Prk,
}

/// A node's pair keys for one roster: masks its vectors.
pub struct Masker {
    node: String,
    digest: [u8; 32],
    pairs: Vec<Pair>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Masker")
            .field("node", &self.node)
            .field("digest", &hex::encode(self.digest))
            .field("pairs", &self.pairs.len())
            .finish()
    }
}

struct Bytes(usize);

impl hkdf::KeyType for Bytes {
    fn len(&self) -> usize {
        self.0
    }
}

impl Masker {
    /// The digest of the roster the pair keys were agreed over.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// `plain` with every pair's stream for `step` added or subtracted.
    pub fn mask(&self, step: u32, plain: &[u128]) -> Result<Vec<u128>> {
        let mut out = plain.to_vec();
        let mut block = vec![0u8; BLOCK_BYTES];
        for pair in &self.pairs {
            for (b, chunk) in out.chunks_mut(WORDS_PER_BLOCK).enumerate() {
                let bytes = &mut block[..chunk.len() * 16];
                let (step, counter) = (step.to_be_bytes(), (b as u64).to_be_bytes());
                let (lo_len, hi_len) = (
                    (pair.lo.len() as u32).to_be_bytes(),
                    (pair.hi.len() as u32).to_be_bytes(),
                );
                let info: [&[u8]; 7] = [
                    MASK_LABEL,
                    &lo_len,
                    pair.lo.as_bytes(),
                    &hi_len,
                    pair.hi.as_bytes(),
                    &step,
                    &counter,
                ];
                pair.prk
                    .expand(&info, Bytes(bytes.len()))
                    .and_then(|okm| okm.fill(bytes))
                    .map_err(|_| Error::internal("HKDF could not expand a mask block"))?;
                for (word, m) in chunk.iter_mut().zip(bytes.chunks_exact(16)) {
                    let m = u128::from_le_bytes(m.try_into().expect("16 bytes"));
                    *word = if pair.add {
                        word.wrapping_add(m)
                    } else {
                        word.wrapping_sub(m)
                    };
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secagg::add_into;
    use proptest::prelude::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("hospital-{i:02}")).collect()
    }

    /// Every node's key pairs and the roster built from their public keys.
    fn session(nodes: &[String]) -> (Vec<KeyPairs>, Roster) {
        let pairs: Vec<KeyPairs> = nodes
            .iter()
            .map(|n| KeyPairs::generate("s1", n, nodes.iter().map(String::as_str)).unwrap())
            .collect();
        let keys = pairs
            .iter()
            .map(|p| (p.node.clone(), p.public_keys().clone()))
            .collect();
        (pairs, Roster::new("s1", keys))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn masks_cancel_for_any_roster_of_3_to_50_nodes(
            n in 3usize..=50,
            len in 1usize..40,
            step in any::<u32>(),
            seed in any::<u64>(),
        ) {
            let nodes = names(n);
            let (pairs, roster) = session(&nodes);
            prop_assert!(roster.validate().is_ok());
            // Random plain vectors, one per node.
            let mut state = seed | 1;
            let mut next = || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                u128::from(state) << 64 | u128::from(state.rotate_left(21))
            };
            let plain: Vec<Vec<u128>> = (0..n).map(|_| (0..len).map(|_| next()).collect()).collect();
            let mut want = vec![0u128; len];
            let mut got = vec![0u128; len];
            for (kp, x) in pairs.into_iter().zip(&plain) {
                let masker = kp.agree(&roster).unwrap();
                let masked = masker.mask(step, x).unwrap();
                prop_assert_ne!(&masked, x);
                add_into(&mut want, x);
                add_into(&mut got, &masked);
            }
            prop_assert_eq!(got, want);
        }
    }

    /// Pearson's chi-square of the byte frequencies against uniform.
    fn byte_chi_square(words: &[u128]) -> f64 {
        let mut counts = [0u64; 256];
        for w in words {
            for b in w.to_le_bytes() {
                counts[b as usize] += 1;
            }
        }
        let expected = (words.len() * 16) as f64 / 256.0;
        counts
            .iter()
            .map(|c| (*c as f64 - expected).powi(2) / expected)
            .sum()
    }

    #[test]
    fn a_masked_vector_looks_uniformly_random_and_hides_the_plain_one() {
        let nodes = names(3);
        let (mut pairs, roster) = session(&nodes);
        let masker = pairs.remove(1).agree(&roster).unwrap();
        // Small counts, as a node's histogram would hold: bytes far from uniform.
        let plain: Vec<u128> = (0..4096u128).map(|i| i % 50).collect();
        let masked = masker.mask(0, &plain).unwrap();
        assert!(masked.iter().zip(&plain).all(|(m, p)| m != p));
        // 255 degrees of freedom: 330.5 is the 0.1% critical value.
        let chi = byte_chi_square(&masked);
        assert!(chi < 330.5, "masked bytes chi-square {chi}");
        assert!(byte_chi_square(&plain) > 100_000.0);
        // Another step of the same session gives an unrelated mask.
        let again = masker.mask(1, &plain).unwrap();
        assert!(again.iter().zip(&masked).all(|(a, m)| a != m));
    }

    #[test]
    fn rosters_that_cannot_hide_a_node_are_refused() {
        let nodes = names(3);
        let (mut pairs, roster) = session(&nodes);

        // Two nodes.
        let two = Roster {
            nodes: roster.nodes[..2]
                .iter()
                .map(|n| RosterNode {
                    node: n.node.clone(),
                    keys: n
                        .keys
                        .iter()
                        .filter(|(p, _)| **p != nodes[2])
                        .map(|(p, k)| (p.clone(), *k))
                        .collect(),
                })
                .collect(),
            ..roster.clone()
        };
        let e = two.validate().unwrap_err();
        assert_eq!(e.code, crate::ErrorCode::Policy);
        assert!(e.message.contains("at least 3"), "{e}");

        // A roster whose key for this node is not the one it made.
        let mut forged = roster.clone();
        let k = forged.nodes[0].keys.get_mut(&nodes[1]).unwrap();
        k[0] ^= 1;
        let first = pairs.remove(0);
        let e = first.agree(&forged).unwrap_err();
        assert!(e.message.contains("not the one this node made"), "{e}");

        // A roster without this node.
        let outsider =
            KeyPairs::generate("s1", "hospital-zz", nodes.iter().map(String::as_str)).unwrap();
        let e = outsider.agree(&roster).unwrap_err();
        assert!(e.message.contains("does not name this node"), "{e}");

        // Another session's roster.
        let other = KeyPairs::generate("s2", &nodes[1], nodes.iter().map(String::as_str)).unwrap();
        assert!(other.agree(&roster).is_err());

        // Any change to a key changes the digest.
        let mut changed = roster.clone();
        changed.nodes[2].keys.values_mut().next().unwrap()[5] ^= 0x80;
        assert_ne!(changed.digest(), roster.digest());
    }
}
