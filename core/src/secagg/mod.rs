//! Secure aggregation: the coordinator learns only sums across hospitals,
//! never one hospital's figure, even if it does not follow the protocol.
//!
//! The scheme is the double masking of Bonawitz et al., "Practical Secure
//! Aggregation for Privacy-Preserving Machine Learning" (CCS 2017), with
//! authenticated keys, carried by the coordinator's signed jobs (see
//! `node_link.proto`). For one session over a roster of n nodes:
//!
//! 1. **Keys** ([`keys`]). Each node makes a fresh X25519 key pair for each
//!    other candidate and signs the bundle of public keys (session, study,
//!    the definition's hash, the question, its own id) with the key of its
//!    network certificate. The roster carries every member's signed bundle
//!    and certificate; each node checks every member against the network
//!    CA and CRL, its SAN, its signature, and the study definition's nodes.
//! 2. **Mask** ([`mask`], [`shares`]). Node u agrees a pair key with every
//!    other member v (salted with the roster's digest). For step s it
//!    draws a fresh self-mask seed b_u, Shamir-shares it t-of-n among the
//!    roster ([`threshold`]), encrypts each share to its holder under an
//!    AEAD key derived from the pair key (a label apart from the masks'),
//!    and sends x_u + PRG(b_u) ± PRG(s_uv) for every v (added when u comes
//!    before v, subtracted after), with the encrypted shares and a hash
//!    committing to b_u. x_u is exactly the node's clear release, encoded
//!    with a suppression indicator per cell ([`encode`]).
//! 3. **Confirm**, only when some member dropped: every survivor signs the
//!    list of survivors S. A node reveals a pairwise seed only for a list
//!    that at least t members signed, and signs one list per step; since
//!    2t − n exceeds the number of hospitals that may collude with the
//!    coordinator, no two lists can both gather t signatures.
//! 4. **Unmask** ([`unmask`]). Each survivor returns, for v in S, its share
//!    of b_v, and for v in the dropped D, its per-step pairwise seed with v;
//!    never both for one v, once per step. The coordinator rebuilds each
//!    b_v from t shares and removes every mask: the exact sum over S.
//!
//! A node also commits, on disk, to the set of hospitals its contribution
//! to one question may be summed with: it masks that contribution for one
//! roster and unmasks it for one survivor set only, so two sums over
//! different hospitals of the same question never exist.

mod encode;
pub mod keys;
pub mod mask;
pub mod shares;
pub mod steps;
mod sum;
pub mod unmask;

pub use encode::{
    decode_real, encode, encode_real, supported, vector_len, FRACTION_BITS, MAX_ELEMENTS, MAX_REAL,
};
pub use keys::{KeyBundle, KeyPairs, PublicKey, Roster, SignedBundle, KEY_LEN};
pub use mask::{add_into, PairKeys, Seed};
pub use sum::{Summed, SummedGroup};

/// Fewest nodes a secure aggregate may rest on: with two, each could
/// subtract its own figure from the sum and read the other's.
pub const MIN_NODES: usize = 3;
/// Most nodes of one roster: self-mask seeds are Shamir-shared over
/// GF(2^8), which has 255 non-zero share identifiers.
pub const MAX_NODES: usize = 255;

/// The name a securely aggregated answer goes by where a node's name
/// would stand (the pooled statistics are nobody's own).
pub const POOLED: &str = "pooled sums (secure aggregation)";

/// How many shares rebuild a self-mask seed in a roster of `n`:
/// t = n − ⌊n/3⌋. The protocol goes on with up to ⌊n/3⌋ members dropped,
/// and, since 2t − n = n − 2⌊n/3⌋ ≥ n/3, a coordinator colluding with
/// fewer than that many hospitals can neither gather t signatures on two
/// different survivor lists nor the t shares of a dropped node's seed.
pub fn threshold(n: usize) -> usize {
    n - n / 3
}

/// The fewest survivors a roster of `n` may be unmasked over: the
/// threshold, at least [`MIN_NODES`], and at least the study's `min_nodes`.
pub fn min_survivors(n: usize, min_nodes: u32) -> usize {
    threshold(n).max(MIN_NODES).max(min_nodes as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_tolerates_a_third_of_the_roster_dropping() {
        assert_eq!(
            (3..=9).map(threshold).collect::<Vec<_>>(),
            [2, 3, 4, 4, 5, 6, 6]
        );
        // Three nodes: nobody may drop; four: one.
        assert_eq!(min_survivors(3, 2), 3);
        assert_eq!(min_survivors(4, 2), 3);
        assert_eq!(min_survivors(4, 4), 4);
        for n in 3..=MAX_NODES {
            assert!(2 * threshold(n) > n, "{n}");
            assert!(n - threshold(n) == n / 3);
        }
    }
}
