//! The tamper-evident shape of an audit log: an append-only Merkle tree as
//! in Certificate Transparency (RFC 6962 / RFC 9162: leaves hashed with a
//! 0x00 prefix, interior nodes with 0x01, SHA-256), with signed checkpoints
//! (size, root, time) and the two proofs an auditor needs:
//!
//! - inclusion: entry i is in the tree a checkpoint names;
//! - consistency: the tree of an earlier checkpoint is a prefix of a later
//!   one's, so nothing recorded then was edited or removed since.
//!
//! The tree and the proofs come from the `ct-merkle` crate. A leaf is the
//! SHA-256 of an entry's canonical bytes, so the tree holds 32 bytes an
//! entry whatever the entries hold. Checkpoints are signed with Ed25519
//! (ring).

use ct_merkle::mem_backed_tree::MemoryBackedTree;
use ct_merkle::{ConsistencyProof, InclusionProof, RootHash};
use ring::signature::{Ed25519KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// One entry's leaf: the SHA-256 of its canonical bytes.
pub type Leaf = [u8; 32];

/// The leaf of an entry's canonical bytes.
pub fn leaf_of(entry: &[u8]) -> Leaf {
    Sha256::digest(entry).into()
}

fn unhex(s: &str, what: &str) -> Result<Vec<u8>> {
    hex::decode(s).map_err(|_| Error::invalid(format!("{what} is not hexadecimal")))
}

/// An append-only log's Merkle tree.
#[derive(Default)]
pub struct MerkleLog {
    tree: MemoryBackedTree<Sha256, Leaf>,
}

/// The tree's size and root: what a checkpoint commits to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeHead {
    pub size: u64,
    /// Lowercase hex SHA-256.
    pub root: String,
}

impl MerkleLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// A tree over `leaves`, in order.
    pub fn from_leaves(leaves: impl IntoIterator<Item = Leaf>) -> Self {
        let mut log = Self::new();
        leaves.into_iter().for_each(|l| {
            log.push(l);
        });
        log
    }

    /// Appends a leaf; returns its index.
    pub fn push(&mut self, leaf: Leaf) -> u64 {
        self.tree.push(leaf);
        self.tree.len() - 1
    }

    pub fn len(&self) -> u64 {
        self.tree.len()
    }

    /// Every leaf, in order.
    pub fn leaves(&self) -> &[Leaf] {
        self.tree.items()
    }

    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    pub fn head(&self) -> TreeHead {
        let root = self.tree.root();
        TreeHead {
            size: root.num_leaves(),
            root: hex::encode(root.as_bytes()),
        }
    }

    /// Proof that leaf `index` is in the current tree (hex, 32 bytes a step).
    pub fn prove_inclusion(&self, index: u64) -> Result<String> {
        if index >= self.len() {
            return Err(Error::not_found(format!(
                "entry {index} is not in a log of {} entries",
                self.len()
            )));
        }
        Ok(hex::encode(
            self.tree.prove_inclusion(index as usize).as_bytes(),
        ))
    }

    /// Proof that the tree of the first `old_size` leaves is a prefix of
    /// the current tree.
    pub fn prove_consistency(&self, old_size: u64) -> Result<String> {
        if old_size == 0 || old_size > self.len() {
            return Err(Error::invalid(format!(
                "a consistency proof needs an earlier size between 1 and {}, got {old_size}",
                self.len()
            )));
        }
        if old_size == self.len() {
            return Ok(String::new());
        }
        Ok(hex::encode(
            self.tree
                .prove_consistency((self.len() - old_size) as usize)
                .as_bytes(),
        ))
    }
}

fn root_hash(head: &TreeHead) -> Result<RootHash<Sha256>> {
    let bytes = unhex(&head.root, "a tree root")?;
    let digest = sha2::digest::Output::<Sha256>::try_from(bytes.as_slice())
        .map_err(|_| Error::invalid("a tree root must be 32 bytes"))?;
    Ok(RootHash::new(digest, head.size))
}

/// Checks that `leaf` is entry `index` of the tree `head` names.
pub fn verify_inclusion(head: &TreeHead, leaf: &Leaf, index: u64, proof: &str) -> Result<()> {
    let proof = InclusionProof::<Sha256>::try_from_bytes(unhex(proof, "an inclusion proof")?)
        .map_err(|e| Error::invalid(format!("the inclusion proof is malformed: {e:?}")))?;
    root_hash(head)?
        .verify_inclusion(leaf, index, &proof)
        .map_err(|e| {
            Error::invalid(format!(
                "entry {index} is not in the tree of size {} with root {}: {e:?}",
                head.size, head.root
            ))
        })
}

/// Checks that the tree `old` names is a prefix of the tree `new` names.
pub fn verify_consistency(old: &TreeHead, new: &TreeHead, proof: &str) -> Result<()> {
    if old.size == new.size {
        return if old.root == new.root {
            Ok(())
        } else {
            Err(split_view(old, new))
        };
    }
    let proof = ConsistencyProof::<Sha256>::try_from_bytes(unhex(proof, "a consistency proof")?)
        .map_err(|e| Error::invalid(format!("the consistency proof is malformed: {e:?}")))?;
    root_hash(new)?
        .verify_consistency(&root_hash(old)?, &proof)
        .map_err(|e| {
            Error::invalid(format!(
                "the log of {} entries (root {}) is not an extension of the one of {} entries (root {}): entries were changed or removed ({e:?})",
                new.size, new.root, old.size, old.root
            ))
        })
}

fn split_view(a: &TreeHead, b: &TreeHead) -> Error {
    Error::invalid(format!(
        "split view: two checkpoints of {} entries have different roots ({} and {}); the log shown to one party is not the log shown to the other",
        a.size, a.root, b.root
    ))
}

/// A signed statement of the log's size and root at a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Who keeps the log (the coordinator's or a node's id).
    pub origin: String,
    pub head: TreeHead,
    pub at_unix_ms: i64,
    /// Ed25519 over [`Checkpoint::signed_bytes`], hex.
    pub signature: String,
}

impl Checkpoint {
    /// The bytes a checkpoint's signature covers.
    pub fn signed_bytes(origin: &str, head: &TreeHead, at_unix_ms: i64) -> Vec<u8> {
        format!(
            "plexus audit checkpoint v1\n{origin}\n{}\n{}\n{at_unix_ms}\n",
            head.size, head.root
        )
        .into_bytes()
    }

    pub fn sign(key: &Ed25519KeyPair, origin: &str, head: TreeHead, at_unix_ms: i64) -> Self {
        Self::sign_with(|m| key.sign(m).as_ref().to_vec(), origin, head, at_unix_ms)
    }

    /// Signs with whatever holds the log keeper's Ed25519 key.
    pub fn sign_with(
        sign: impl FnOnce(&[u8]) -> Vec<u8>,
        origin: &str,
        head: TreeHead,
        at_unix_ms: i64,
    ) -> Self {
        let signature = hex::encode(sign(&Self::signed_bytes(origin, &head, at_unix_ms)));
        Checkpoint {
            origin: origin.to_string(),
            head,
            at_unix_ms,
            signature,
        }
    }

    /// Checks the signature against the log keeper's public key.
    pub fn verify(&self, public_key: &[u8]) -> Result<()> {
        let signature = unhex(&self.signature, "a checkpoint signature")?;
        UnparsedPublicKey::new(&ED25519, public_key)
            .verify(
                &Self::signed_bytes(&self.origin, &self.head, self.at_unix_ms),
                &signature,
            )
            .map_err(|_| {
                Error::invalid(format!(
                    "the checkpoint of {} at {} entries does not carry a valid signature by its key",
                    self.origin, self.head.size
                ))
            })
    }
}

/// Checks a whole log against a checkpoint: the entries, in order, must
/// make exactly the tree the checkpoint signed. An entry edited, removed,
/// added or moved changes the root or the size. The checkpoint may be older
/// than the log: its size names the prefix it covers. Returns how many
/// entries the log holds.
pub fn verify_log(leaves: impl IntoIterator<Item = Leaf>, checkpoint: &TreeHead) -> Result<u64> {
    verify_log_heads(leaves, std::slice::from_ref(checkpoint))
}

/// [`verify_log`] against many checkpoints in one pass over the log (a
/// node's checkpoint file, say). Two checkpoints of the same size with
/// different roots are a split view.
pub fn verify_log_heads(
    leaves: impl IntoIterator<Item = Leaf>,
    checkpoints: &[TreeHead],
) -> Result<u64> {
    let mut sorted: Vec<&TreeHead> = checkpoints.iter().collect();
    sorted.sort_by_key(|h| h.size);
    for pair in sorted.windows(2) {
        if pair[0].size == pair[1].size && pair[0].root != pair[1].root {
            return Err(split_view(pair[0], pair[1]));
        }
    }
    let largest = sorted.last().map_or(0, |h| h.size);
    type Pending<'a> = std::iter::Peekable<std::vec::IntoIter<&'a TreeHead>>;
    fn check(log: &MerkleLog, pending: &mut Pending<'_>) -> Result<()> {
        while let Some(head) = pending.next_if(|h| h.size == log.len()) {
            if log.head() != *head {
                return Err(Error::invalid(format!(
                    "the first {} entries of the log do not make the root the checkpoint signed ({}): an entry was edited, removed or reordered",
                    head.size, head.root
                )));
            }
        }
        Ok(())
    }
    let mut pending = sorted.into_iter().peekable();
    let mut log = MerkleLog::new();
    check(&log, &mut pending)?;
    let mut total = 0u64;
    for leaf in leaves {
        total += 1;
        if total <= largest {
            log.push(leaf);
            check(&log, &mut pending)?;
        }
    }
    if total < largest {
        return Err(Error::invalid(format!(
            "the log holds {total} entries but a checkpoint signed {largest}: entries were removed or the log was truncated"
        )));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use ring::rand::SystemRandom;
    use ring::signature::KeyPair;

    fn leaves(n: u64) -> Vec<Leaf> {
        (0..n)
            .map(|i| leaf_of(format!("entry {i}").as_bytes()))
            .collect()
    }

    #[test]
    fn known_roots_follow_rfc_6962() {
        // The empty tree's root is SHA-256 of nothing; one leaf's is
        // SHA-256(0x00 || leaf).
        assert_eq!(
            MerkleLog::new().head().root,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let leaf = leaf_of(b"x");
        let mut prefixed = vec![0u8];
        prefixed.extend(leaf);
        assert_eq!(
            MerkleLog::from_leaves([leaf]).head().root,
            hex::encode(Sha256::digest(&prefixed))
        );
    }

    #[test]
    fn every_entry_of_a_10000_entry_log_has_a_verifying_inclusion_proof() {
        let all = leaves(10_000);
        let log = MerkleLog::from_leaves(all.iter().copied());
        let head = log.head();
        for (i, leaf) in all.iter().enumerate() {
            let proof = log.prove_inclusion(i as u64).unwrap();
            verify_inclusion(&head, leaf, i as u64, &proof).unwrap();
        }
        // A proof does not carry over to another entry.
        let proof = log.prove_inclusion(7).unwrap();
        assert!(verify_inclusion(&head, &all[8], 7, &proof).is_err());
    }

    #[test]
    fn edits_removals_and_truncation_fail_verification_and_split_views_are_named() {
        let all = leaves(100);
        let head = MerkleLog::from_leaves(all.iter().copied()).head();
        verify_log(all.iter().copied(), &head).unwrap();
        let mut edited = all.clone();
        edited[42] = leaf_of(b"edited");
        assert!(verify_log(edited.iter().copied(), &head).is_err());
        let mut removed = all.clone();
        removed.remove(10);
        assert!(verify_log(removed.iter().copied(), &head).is_err());
        let e = verify_log(all[..60].iter().copied(), &head).unwrap_err();
        assert!(e.message.contains("truncated"), "{e}");
        // Later entries do not disturb an earlier checkpoint.
        let mut longer = all.clone();
        longer.extend(leaves(120)[100..].iter().copied());
        verify_log(longer.iter().copied(), &head).unwrap();

        let other = MerkleLog::from_leaves(edited.iter().copied()).head();
        let e = verify_consistency(&head, &other, "").unwrap_err();
        assert!(e.message.contains("split view"), "{e}");
    }

    #[test]
    fn checkpoints_are_signed_and_checked() {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let head = MerkleLog::from_leaves(leaves(5)).head();
        let c = Checkpoint::sign(&key, "coordinator", head, 1_700_000_000_000);
        c.verify(key.public_key().as_ref()).unwrap();
        let mut forged = c.clone();
        forged.head.size = 4;
        assert!(forged.verify(key.public_key().as_ref()).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn inclusion_and_consistency_proofs_verify_for_any_sizes(
            n in 1u64..600,
            picks in proptest::collection::vec((0u64..600, 1u64..600), 4),
        ) {
            let all = leaves(n);
            let log = MerkleLog::from_leaves(all.iter().copied());
            let head = log.head();
            for (i, m) in picks {
                let i = i % n;
                let proof = log.prove_inclusion(i).unwrap();
                prop_assert!(verify_inclusion(&head, &all[i as usize], i, &proof).is_ok());
                let m = 1 + (m - 1) % n;
                let old = MerkleLog::from_leaves(all[..m as usize].iter().copied()).head();
                let proof = log.prove_consistency(m).unwrap();
                prop_assert!(verify_consistency(&old, &head, &proof).is_ok());
                // A different old tree of the same size does not verify.
                if m < n {
                    let mut other = all[..m as usize].to_vec();
                    other[0] = leaf_of(b"forged");
                    let forged = MerkleLog::from_leaves(other).head();
                    prop_assert!(verify_consistency(&forged, &head, &proof).is_err());
                }
            }
        }
    }

    #[test]
    fn one_pass_checks_every_checkpoint_and_reports_a_split_view() {
        let all = leaves(40);
        let heads: Vec<TreeHead> = [0u64, 7, 7, 23, 40]
            .iter()
            .map(|&n| MerkleLog::from_leaves(all[..n as usize].iter().copied()).head())
            .collect();
        assert_eq!(verify_log_heads(all.iter().copied(), &heads).unwrap(), 40);
        let mut forked = heads.clone();
        forked[2].root = "11".repeat(32);
        let e = verify_log_heads(all.iter().copied(), &forked).unwrap_err();
        assert!(e.message.contains("split view"), "{}", e.message);
        let mut edited = all.clone();
        edited[20] = leaf_of(b"edited");
        assert!(verify_log_heads(edited.iter().copied(), &heads).is_err());
        let e = verify_log_heads(all[..30].iter().copied(), &heads).unwrap_err();
        assert!(e.message.contains("truncated"), "{}", e.message);
    }
}
