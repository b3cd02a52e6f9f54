//! Secure aggregation: the coordinator learns only sums across hospitals,
//! never one hospital's figure.
//!
//! Each node encodes what it releases as a vector over Z/2^128
//! ([`encode`]), adds pairwise masks that cancel in the sum ([`mask`]), and
//! sends only the masked vector. The coordinator adds the masked vectors of
//! every node of a roster; the masks cancel and the sum of the plain
//! vectors is left, which it decodes into pooled statistics. A masked
//! vector on its own is indistinguishable from random bytes to anyone who
//! does not hold one of the pairwise secrets.
//!
//! The protocol around it (carried by signed jobs, see `node_link.proto`):
//!
//! 1. **Key round.** The coordinator picks a random session id and asks
//!    every candidate node for fresh X25519 public keys, one per other
//!    candidate. The node checks the job as it would any job (allowlist,
//!    query, privacy terms, budget), keeps the private keys in memory only,
//!    and answers with the public keys in its signed result statement.
//! 2. **Roster.** The nodes that answered with keys form the roster: the
//!    session id and, per node, its public key for each other node. It is
//!    sent inside every node's signed job. A node refuses a roster of fewer
//!    than [`MIN_NODES`], one without itself, one whose keys for it are not
//!    the ones it made, and one that differs from a roster it already saw
//!    in the session.
//! 3. **Masked answer.** Node i agrees a secret with every other roster
//!    node j, derives a mask stream from it with HKDF-SHA256 (salted with
//!    the roster's digest, labelled with the pair and the step), adds it
//!    when i < j and subtracts it when i > j, and sends the masked vector.
//! 4. **All or nothing.** Only when every roster node answered does the
//!    sum unmask. When one drops, refuses or fails, nothing can be
//!    unmasked; the coordinator starts again with a new session (fresh
//!    keys) over the nodes still answering, if enough remain.
//!
//! Disclosure control moves with the figures: a node cannot suppress a
//! cell without telling the coordinator which of its cells are small, so
//! under secure aggregation the node keeps its refusals (consent, budget,
//! the rules for models, the complement rule, dominated sums) and its
//! noise, while the minimum cell size and secondary suppression are
//! applied by the coordinator to the pooled sums
//! ([`Contribution::disclose`]).

mod encode;
mod mask;

pub(crate) use encode::dominated;

pub use encode::{
    add_into, decode_real, encode_real, supported, vector_len, Contribution, FRACTION_BITS,
    MAX_ELEMENTS, MAX_REAL,
};
pub use mask::{KeyPairs, Masker, PublicKey, Roster, RosterNode, KEY_LEN, MIN_NODES};

use crate::pool::{PooledCell, PooledValue};

/// The name a securely aggregated answer goes by where a node's name
/// would stand (the pooled statistics are nobody's own).
pub const POOLED: &str = "pooled sums (secure aggregation)";

/// Takes [`POOLED`] out of the lists of nodes that suppressed or merged a
/// value: under secure aggregation suppression is applied to the pooled
/// sums, so a suppressed cell reads as a plain pooled total under the
/// minimum cell size, as it does without secure aggregation.
pub fn unlabel(value: &mut PooledValue) {
    let cell = |c: &mut PooledCell| c.suppressed_at.retain(|n| n != POOLED);
    match value {
        PooledValue::Count { n } => cell(n),
        PooledValue::Histogram {
            bins, below, above, ..
        } => bins.iter_mut().chain([below, above]).for_each(cell),
        PooledValue::Table { cells, .. } => cells.iter_mut().flatten().for_each(cell),
        PooledValue::KaplanMeier(k) => {
            for c in &mut k.curves {
                c.suppressed_at.retain(|n| n != POOLED);
                c.merged_at.retain(|n| n != POOLED);
            }
        }
        PooledValue::Summary { .. }
        | PooledValue::Glm(_)
        | PooledValue::Cox(_)
        | PooledValue::Correlation(_)
        | PooledValue::Quantiles(_)
        | PooledValue::TwoByTwo(_) => {}
    }
}
