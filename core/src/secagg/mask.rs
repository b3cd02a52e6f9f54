//! Masks that cancel in a sum, and the keys that encrypt self-mask shares.
//!
//! Node u and node v hold a pair key: HKDF-SHA256 extracted from their
//! X25519 agreement, salted with the roster's digest. From it each step s
//! of the session gets
//!
//! - a pairwise seed, expanded under [`PAIR_SEED_LABEL`] with both ids in
//!   roster order and s: the seed of the mask u adds and v subtracts (or the
//!   reverse), and what a survivor reveals when its partner dropped; being
//!   per step, revealing it gives away no other step's mask;
//! - one AEAD key per direction, expanded under [`SHARE_KEY_LABEL`] with
//!   the sender, the recipient and s: ChaCha20-Poly1305 encrypting the one
//!   share of the sender's self-mask seed the recipient holds. Each key
//!   encrypts one message, so its nonce is fixed.
//!
//! A seed becomes a mask by [`stream`]: HKDF-Expand with the seed as the
//! pseudorandom key, labelled with the mask's kind and a block counter,
//! read as little-endian 128-bit words.

use std::collections::BTreeMap;

use ring::aead::{self, LessSafeKey, UnboundKey, CHACHA20_POLY1305};
use ring::hkdf;

use crate::error::{Error, Result};

/// A 32-byte seed of a mask.
pub type Seed = [u8; 32];

const PAIR_SEED_LABEL: &[u8] = b"plexus secagg pair seed v2";
const SHARE_KEY_LABEL: &[u8] = b"plexus secagg share key v1";
const STREAM_LABEL: &[u8] = b"plexus secagg stream v2";

/// HKDF-SHA256 expands at most 255 blocks of 32 bytes per call.
const BLOCK_BYTES: usize = 255 * 32;
const WORDS_PER_BLOCK: usize = BLOCK_BYTES / 16;

/// What a mask stream masks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A node's own self mask, from its seed b_u.
    SelfMask,
    /// The mask two nodes share.
    Pair,
}

impl Kind {
    fn label(self) -> &'static [u8] {
        match self {
            Kind::SelfMask => b"self",
            Kind::Pair => b"pair",
        }
    }
}

struct Bytes(usize);

impl hkdf::KeyType for Bytes {
    fn len(&self) -> usize {
        self.0
    }
}

/// The first `len` words of the mask stream of `seed`.
pub fn stream(seed: &Seed, kind: Kind, len: usize) -> Result<Vec<u128>> {
    let prk = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, seed);
    let mut out = Vec::with_capacity(len);
    let mut block = vec![0u8; BLOCK_BYTES];
    let mut b = 0u64;
    while out.len() < len {
        let words = (len - out.len()).min(WORDS_PER_BLOCK);
        let bytes = &mut block[..words * 16];
        let counter = b.to_be_bytes();
        let info: [&[u8]; 3] = [STREAM_LABEL, kind.label(), &counter];
        prk.expand(&info, Bytes(bytes.len()))
            .and_then(|okm| okm.fill(bytes))
            .map_err(|_| Error::internal("HKDF could not expand a mask block"))?;
        out.extend(
            bytes
                .chunks_exact(16)
                .map(|c| u128::from_le_bytes(c.try_into().expect("16 bytes"))),
        );
        b += 1;
    }
    Ok(out)
}

/// Adds `v` into `acc`, element by element, modulo 2^128.
pub fn add_into(acc: &mut [u128], v: &[u128]) {
    for (a, b) in acc.iter_mut().zip(v) {
        *a = a.wrapping_add(*b);
    }
}

/// Subtracts `v` from `acc`, element by element, modulo 2^128.
pub fn sub_from(acc: &mut [u128], v: &[u128]) {
    for (a, b) in acc.iter_mut().zip(v) {
        *a = a.wrapping_sub(*b);
    }
}

/// Whether `node` adds the pair mask it shares with `peer` (it comes
/// first in the roster's node-id order) or subtracts it.
pub fn adds(node: &str, peer: &str) -> bool {
    node < peer
}

fn expand32(prk: &hkdf::Prk, info: &[&[u8]]) -> Result<Seed> {
    let mut out = [0u8; 32];
    prk.expand(info, Bytes(32))
        .and_then(|okm| okm.fill(&mut out))
        .map_err(|_| Error::internal("HKDF could not expand a key"))?;
    Ok(out)
}

fn len_prefixed(s: &str) -> Vec<u8> {
    [&(s.len() as u32).to_be_bytes()[..], s.as_bytes()].concat()
}

/// A node's pair keys with every other member of one roster.
pub struct PairKeys {
    node: String,
    session_id: String,
    digest: [u8; 32],
    pairs: BTreeMap<String, hkdf::Prk>,
}

impl std::fmt::Debug for PairKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairKeys")
            .field("node", &self.node)
            .field("session_id", &self.session_id)
            .field("digest", &hex::encode(self.digest))
            .field("peers", &self.pairs.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl PairKeys {
    pub(crate) fn new(
        node: String,
        session_id: String,
        digest: [u8; 32],
        pairs: BTreeMap<String, hkdf::Prk>,
    ) -> Self {
        PairKeys {
            node,
            session_id,
            digest,
            pairs,
        }
    }

    /// The digest of the roster the pair keys were agreed over.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    fn pair(&self, peer: &str) -> Result<&hkdf::Prk> {
        self.pairs.get(peer).ok_or_else(|| {
            Error::policy(format!(
                "{peer} is not a member of the roster of session {}",
                self.session_id
            ))
        })
    }

    /// The seed of the mask this node shares with `peer` at `step`.
    pub fn pair_seed(&self, peer: &str, step: u32) -> Result<Seed> {
        let (lo, hi) = if adds(&self.node, peer) {
            (self.node.as_str(), peer)
        } else {
            (peer, self.node.as_str())
        };
        let (lo, hi, step) = (len_prefixed(lo), len_prefixed(hi), step.to_be_bytes());
        expand32(self.pair(peer)?, &[PAIR_SEED_LABEL, &lo, &hi, &step])
    }

    fn share_key(
        &self,
        peer: &str,
        sender: &str,
        recipient: &str,
        step: u32,
    ) -> Result<LessSafeKey> {
        let (s, r, step) = (
            len_prefixed(sender),
            len_prefixed(recipient),
            step.to_be_bytes(),
        );
        let key = expand32(self.pair(peer)?, &[SHARE_KEY_LABEL, &s, &r, &step])?;
        let key = UnboundKey::new(&CHACHA20_POLY1305, &key)
            .map_err(|_| Error::internal("cannot make a share encryption key"))?;
        Ok(LessSafeKey::new(key))
    }

    fn aad(&self, sender: &str, recipient: &str, step: u32) -> Vec<u8> {
        [
            len_prefixed(&self.session_id),
            self.digest.to_vec(),
            len_prefixed(sender),
            len_prefixed(recipient),
            step.to_be_bytes().to_vec(),
        ]
        .concat()
    }

    /// `share` encrypted for `recipient`, bound to the session, roster,
    /// step and both ids.
    pub fn encrypt_share(&self, recipient: &str, step: u32, share: &[u8]) -> Result<Vec<u8>> {
        let key = self.share_key(recipient, &self.node, recipient, step)?;
        let mut out = share.to_vec();
        key.seal_in_place_append_tag(
            aead::Nonce::assume_unique_for_key([0u8; 12]),
            aead::Aad::from(self.aad(&self.node, recipient, step)),
            &mut out,
        )
        .map_err(|_| Error::internal("cannot encrypt a share"))?;
        Ok(out)
    }

    /// The share `sender` encrypted for this node at `step`, or a `policy`
    /// error when it does not decrypt (altered, or made for another
    /// roster, step or node).
    pub fn decrypt_share(&self, sender: &str, step: u32, ciphertext: &[u8]) -> Result<Vec<u8>> {
        let key = self.share_key(sender, sender, &self.node, step)?;
        let mut buf = ciphertext.to_vec();
        let plain = key
            .open_in_place(
                aead::Nonce::assume_unique_for_key([0u8; 12]),
                aead::Aad::from(self.aad(sender, &self.node, step)),
                &mut buf,
            )
            .map_err(|_| {
                Error::policy(format!(
                    "the share {sender} encrypted for this node at step {step} of session {} does not decrypt: it was altered or made for another roster; refused",
                    self.session_id
                ))
            })?;
        Ok(plain.to_vec())
    }

    /// `plain` masked at `step`: the self mask of `self_seed` added, and
    /// the pair mask with every other member added or subtracted.
    pub fn mask(&self, step: u32, plain: &[u128], self_seed: &Seed) -> Result<Vec<u128>> {
        let mut out = plain.to_vec();
        add_into(&mut out, &stream(self_seed, Kind::SelfMask, plain.len())?);
        for peer in self.pairs.keys() {
            let m = stream(&self.pair_seed(peer, step)?, Kind::Pair, plain.len())?;
            if adds(&self.node, peer) {
                add_into(&mut out, &m);
            } else {
                sub_from(&mut out, &m);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secagg::keys::tests::{names, session};

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
    fn a_masked_vector_looks_uniformly_random_and_steps_differ() {
        let nodes = names(3);
        let (mut pairs, roster) = session("s1", &nodes);
        let keys = pairs.remove(1).agree(&roster).unwrap();
        let plain: Vec<u128> = (0..4096u128).map(|i| i % 50).collect();
        let masked = keys.mask(0, &plain, &[1; 32]).unwrap();
        assert!(masked.iter().zip(&plain).all(|(m, p)| m != p));
        // 255 degrees of freedom: 330.5 is the 0.1% critical value.
        let chi = byte_chi_square(&masked);
        assert!(chi < 330.5, "masked bytes chi-square {chi}");
        assert!(byte_chi_square(&plain) > 100_000.0);
        let again = keys.mask(1, &plain, &[1; 32]).unwrap();
        assert!(again.iter().zip(&masked).all(|(a, m)| a != m));
        // A stream longer than one HKDF block is one stream.
        let long = stream(&[3; 32], Kind::Pair, WORDS_PER_BLOCK + 3).unwrap();
        assert_eq!(long[..5], stream(&[3; 32], Kind::Pair, 5).unwrap()[..]);
        assert_ne!(long[0], stream(&[3; 32], Kind::SelfMask, 1).unwrap()[0]);
    }

    #[test]
    fn pair_seeds_agree_and_shares_open_only_for_their_recipient() {
        let nodes = names(3);
        let (pairs, roster) = session("s1", &nodes);
        let keys: Vec<PairKeys> = pairs
            .into_iter()
            .map(|p| p.agree(&roster).unwrap())
            .collect();
        assert_eq!(
            keys[0].pair_seed(&nodes[2], 4).unwrap(),
            keys[2].pair_seed(&nodes[0], 4).unwrap()
        );
        assert_ne!(
            keys[0].pair_seed(&nodes[2], 4).unwrap(),
            keys[0].pair_seed(&nodes[2], 5).unwrap()
        );
        let c = keys[0].encrypt_share(&nodes[1], 4, b"share").unwrap();
        assert_eq!(keys[1].decrypt_share(&nodes[0], 4, &c).unwrap(), b"share");
        // Another step, another sender, another recipient: refused.
        assert!(keys[1].decrypt_share(&nodes[0], 5, &c).is_err());
        assert!(keys[1].decrypt_share(&nodes[2], 4, &c).is_err());
        assert!(keys[2].decrypt_share(&nodes[0], 4, &c).is_err());
        let mut altered = c.clone();
        altered[0] ^= 1;
        let e = keys[1].decrypt_share(&nodes[0], 4, &altered).unwrap_err();
        assert!(e.message.contains("does not decrypt"), "{e}");
    }
}
