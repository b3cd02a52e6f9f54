//! Secure aggregation on the wire: signed key bundles, rosters, masked
//! vectors with their encrypted shares, survivor lists and what a survivor
//! reveals. Everything from a peer is checked here for its shape (32-byte
//! keys and seeds, each node once and with a valid name, vectors of whole
//! 16-byte words within the size limit); what it means (who signed, which
//! study, which roster) is checked by the node and the coordinator.

use std::collections::BTreeMap;

use prost::Message;

use plexus_core::error::{Error, Result};
use plexus_core::secagg::steps::{
    seed_from, Confirmation, MaskedAnswer, Partition, UnmaskRequest, Unmasked,
};
use plexus_core::secagg::unmask::Revealed;
use plexus_core::secagg::{
    KeyBundle, PublicKey, Roster, SignedBundle, KEY_LEN, MAX_ELEMENTS, MAX_NODES,
};
use plexus_core::study::is_principal_name;

use crate::v1 as pb;

/// Largest certificate or signature accepted from a peer.
const MAX_BLOB: usize = 16 * 1024;

fn name(n: String, what: &str) -> Result<String> {
    if is_principal_name(&n) {
        Ok(n)
    } else {
        Err(Error::invalid(format!(
            "{what} \"{}\" is not a valid node name",
            n.chars().take(64).collect::<String>()
        )))
    }
}

fn names(list: Vec<String>, what: &str) -> Result<Vec<String>> {
    if list.len() > MAX_NODES {
        return Err(Error::invalid(format!(
            "{} {what}s are more than secure aggregation takes ({MAX_NODES})",
            list.len()
        )));
    }
    list.into_iter().map(|n| name(n, what)).collect()
}

fn blob(b: Vec<u8>, what: &str) -> Result<Vec<u8>> {
    if b.len() > MAX_BLOB {
        return Err(Error::invalid(format!(
            "{what} is larger than {MAX_BLOB} bytes"
        )));
    }
    Ok(b)
}

fn digest(b: &[u8], what: &str) -> Result<[u8; 32]> {
    b.try_into()
        .map_err(|_| Error::invalid(format!("{what} has {} bytes, not 32", b.len())))
}

/// Public keys by peer, on the wire.
pub fn keys_to_pb(keys: &BTreeMap<String, PublicKey>) -> Vec<pb::PeerKey> {
    keys.iter()
        .map(|(peer, key)| pb::PeerKey {
            peer: peer.clone(),
            public_key: key.to_vec(),
        })
        .collect()
}

/// Public keys by peer from the wire: 32 bytes each, each peer once.
pub fn keys_from_pb(keys: Vec<pb::PeerKey>) -> Result<BTreeMap<String, PublicKey>> {
    if keys.len() > MAX_NODES {
        return Err(Error::invalid("too many public keys"));
    }
    let mut out = BTreeMap::new();
    for k in keys {
        let peer = name(k.peer, "the peer of a public key")?;
        let key: PublicKey = k.public_key.as_slice().try_into().map_err(|_| {
            Error::invalid(format!(
                "the public key for \"{peer}\" has {} bytes, not the {KEY_LEN} of an X25519 key",
                k.public_key.len()
            ))
        })?;
        if out.insert(peer.clone(), key).is_some() {
            return Err(Error::invalid(format!(
                "two public keys are given for \"{peer}\""
            )));
        }
    }
    Ok(out)
}

impl From<&KeyBundle> for pb::KeyBundle {
    fn from(b: &KeyBundle) -> Self {
        pb::KeyBundle {
            session_id: b.session_id.clone(),
            study_id: b.study_id.clone(),
            study_definition_hash: b.definition_hash.clone(),
            query_binding: b.binding.to_vec(),
            node_id: b.node.clone(),
            keys: keys_to_pb(&b.keys),
        }
    }
}

impl TryFrom<pb::KeyBundle> for KeyBundle {
    type Error = Error;
    fn try_from(b: pb::KeyBundle) -> Result<Self> {
        Ok(KeyBundle {
            session_id: b.session_id,
            study_id: b.study_id,
            definition_hash: b.study_definition_hash,
            binding: digest(&b.query_binding, "a key bundle's query binding")?,
            node: name(b.node_id, "the node of a key bundle")?,
            keys: keys_from_pb(b.keys)?,
        })
    }
}

impl From<&SignedBundle> for pb::SignedKeyBundle {
    fn from(s: &SignedBundle) -> Self {
        pb::SignedKeyBundle {
            bundle: s.bytes.clone(),
            signature: s.signature.clone(),
            certificate: s.certificate.clone(),
        }
    }
}

impl TryFrom<pb::SignedKeyBundle> for SignedBundle {
    type Error = Error;
    fn try_from(s: pb::SignedKeyBundle) -> Result<Self> {
        let decoded = pb::KeyBundle::decode(s.bundle.as_slice())
            .map_err(|e| Error::invalid(format!("a signed key bundle does not decode: {e}")))?;
        Ok(SignedBundle {
            bundle: KeyBundle::try_from(decoded)?,
            bytes: s.bundle,
            signature: blob(s.signature, "a key bundle's signature")?,
            certificate: blob(s.certificate, "a key bundle's certificate")?,
        })
    }
}

impl From<&Roster> for pb::Roster {
    fn from(r: &Roster) -> Self {
        pb::Roster {
            session_id: r.session_id.clone(),
            nodes: r
                .members
                .iter()
                .map(|m| pb::RosterNode {
                    node_id: m.bundle.node.clone(),
                    bundle: Some(m.into()),
                })
                .collect(),
        }
    }
}

impl TryFrom<pb::Roster> for Roster {
    type Error = Error;
    fn try_from(r: pb::Roster) -> Result<Self> {
        if r.nodes.len() > MAX_NODES {
            return Err(Error::invalid(format!(
                "the roster names more than {MAX_NODES} nodes"
            )));
        }
        let members = r
            .nodes
            .into_iter()
            .map(|n| {
                let signed = SignedBundle::try_from(
                    n.bundle
                        .ok_or_else(|| super::missing("a roster member's key bundle"))?,
                )?;
                if signed.bundle.node != n.node_id {
                    return Err(Error::invalid(format!(
                        "the roster lists \"{}\" with the key bundle of \"{}\"",
                        n.node_id.chars().take(64).collect::<String>(),
                        signed.bundle.node
                    )));
                }
                Ok(signed)
            })
            .collect::<Result<_>>()?;
        Ok(Roster {
            session_id: r.session_id,
            members,
        })
    }
}

/// A vector over Z/2^128 as bytes: 16 per element, little-endian.
pub fn vector_to_bytes(v: &[u128]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A vector from bytes, refused unless made of whole 16-byte elements
/// within the size limit.
pub fn vector_from_bytes(bytes: &[u8]) -> Result<Vec<u128>> {
    if !bytes.chunks_exact(16).remainder().is_empty() {
        return Err(Error::invalid(format!(
            "a masked vector of {} bytes is not made of 16-byte elements",
            bytes.len()
        )));
    }
    if bytes.len() / 16 > MAX_ELEMENTS {
        return Err(Error::invalid(format!(
            "a masked vector of {} elements is longer than the {MAX_ELEMENTS} allowed",
            bytes.len() / 16
        )));
    }
    Ok(bytes
        .chunks_exact(16)
        .map(|c| u128::from_le_bytes(c.try_into().expect("16 bytes")))
        .collect())
}

/// Encrypted shares by the node named on the other end (`by_sender`:
/// the sender; otherwise the recipient), each node once.
fn shares_from(
    shares: Vec<pb::EncryptedShare>,
    by_sender: bool,
) -> Result<BTreeMap<String, Vec<u8>>> {
    if shares.len() > MAX_NODES {
        return Err(Error::invalid("too many encrypted shares"));
    }
    let mut out = BTreeMap::new();
    for s in shares {
        let who = if by_sender { s.sender } else { s.recipient };
        let who = name(who, "the node of an encrypted share")?;
        if s.ciphertext.len() > 256 {
            return Err(Error::invalid(
                "an encrypted share is larger than 256 bytes",
            ));
        }
        if out.insert(who.clone(), s.ciphertext).is_some() {
            return Err(Error::invalid(format!(
                "two encrypted shares are given for \"{who}\""
            )));
        }
    }
    Ok(out)
}

impl From<&MaskedAnswer> for pb::MaskedStats {
    fn from(m: &MaskedAnswer) -> Self {
        pb::MaskedStats {
            session_id: m.session_id.clone(),
            roster_digest: m.roster_digest.to_vec(),
            step: m.step,
            vector: vector_to_bytes(&m.vector),
            shares: m
                .shares
                .iter()
                .map(|(recipient, c)| pb::EncryptedShare {
                    sender: String::new(),
                    recipient: recipient.clone(),
                    ciphertext: c.clone(),
                })
                .collect(),
            self_mask_commitment: m.commitment.to_vec(),
        }
    }
}

impl TryFrom<pb::MaskedStats> for MaskedAnswer {
    type Error = Error;
    fn try_from(m: pb::MaskedStats) -> Result<Self> {
        Ok(MaskedAnswer {
            session_id: m.session_id,
            roster_digest: digest(&m.roster_digest, "a roster digest")?,
            step: m.step,
            vector: vector_from_bytes(&m.vector)?,
            shares: shares_from(m.shares, false)?,
            commitment: digest(&m.self_mask_commitment, "a self-mask commitment")?,
        })
    }
}

impl TryFrom<pb::ConfirmRequest> for Partition {
    type Error = Error;
    fn try_from(c: pb::ConfirmRequest) -> Result<Self> {
        Partition::new(
            c.step,
            names(c.survivors, "survivor")?,
            names(c.dropped, "dropped node")?,
        )
    }
}

impl From<&Partition> for pb::ConfirmRequest {
    fn from(p: &Partition) -> Self {
        pb::ConfirmRequest {
            step: p.step,
            survivors: p.survivors.clone(),
            dropped: p.dropped.clone(),
        }
    }
}

impl TryFrom<pb::UnmaskRequest> for UnmaskRequest {
    type Error = Error;
    fn try_from(u: pb::UnmaskRequest) -> Result<Self> {
        if u.confirmations.len() > MAX_NODES {
            return Err(Error::invalid("too many survivor signatures"));
        }
        let mut confirmations = BTreeMap::new();
        for c in u.confirmations {
            let signer = name(c.node_id, "the signer of a survivor list")?;
            let sig = blob(c.signature, "a survivor list's signature")?;
            if confirmations.insert(signer.clone(), sig).is_some() {
                return Err(Error::invalid(format!(
                    "two signatures of \"{signer}\" are given for the survivor list"
                )));
            }
        }
        Ok(UnmaskRequest {
            partition: Partition::new(
                u.step,
                names(u.survivors, "survivor")?,
                names(u.dropped, "dropped node")?,
            )?,
            confirmations,
            shares: shares_from(u.shares, true)?,
        })
    }
}

impl From<&UnmaskRequest> for pb::UnmaskRequest {
    fn from(u: &UnmaskRequest) -> Self {
        pb::UnmaskRequest {
            step: u.partition.step,
            survivors: u.partition.survivors.clone(),
            dropped: u.partition.dropped.clone(),
            confirmations: u
                .confirmations
                .iter()
                .map(|(node_id, signature)| pb::SurvivorSignature {
                    node_id: node_id.clone(),
                    signature: signature.clone(),
                })
                .collect(),
            shares: u
                .shares
                .iter()
                .map(|(sender, c)| pb::EncryptedShare {
                    sender: sender.clone(),
                    recipient: String::new(),
                    ciphertext: c.clone(),
                })
                .collect(),
        }
    }
}

impl From<&Confirmation> for pb::Confirmation {
    fn from(c: &Confirmation) -> Self {
        pb::Confirmation {
            session_id: c.session_id.clone(),
            step: c.step,
            survivors: c.survivors.clone(),
            signature: c.signature.clone(),
        }
    }
}

impl TryFrom<pb::Confirmation> for Confirmation {
    type Error = Error;
    fn try_from(c: pb::Confirmation) -> Result<Self> {
        Ok(Confirmation {
            session_id: c.session_id,
            step: c.step,
            survivors: names(c.survivors, "survivor")?,
            signature: blob(c.signature, "a survivor list's signature")?,
        })
    }
}

impl From<&Unmasked> for pb::Unmasked {
    fn from(u: &Unmasked) -> Self {
        pb::Unmasked {
            session_id: u.session_id.clone(),
            step: u.step,
            shares: u
                .revealed
                .shares
                .iter()
                .map(|(owner, share)| pb::RevealedShare {
                    owner: owner.clone(),
                    share: share.clone(),
                })
                .collect(),
            seeds: u
                .revealed
                .seeds
                .iter()
                .map(|(peer, seed)| pb::RevealedSeed {
                    peer: peer.clone(),
                    seed: seed.to_vec(),
                })
                .collect(),
        }
    }
}

impl TryFrom<pb::Unmasked> for Unmasked {
    type Error = Error;
    fn try_from(u: pb::Unmasked) -> Result<Self> {
        if u.shares.len() > MAX_NODES || u.seeds.len() > MAX_NODES {
            return Err(Error::invalid("too many revealed shares or seeds"));
        }
        let mut revealed = Revealed::default();
        for s in u.shares {
            let owner = name(s.owner, "the owner of a revealed share")?;
            if s.share.len() != plexus_core::secagg::shares::SHARE_LEN {
                return Err(Error::invalid(format!(
                    "the revealed share of \"{owner}\" has {} bytes",
                    s.share.len()
                )));
            }
            if revealed.shares.insert(owner.clone(), s.share).is_some() {
                return Err(Error::invalid(format!(
                    "two shares of \"{owner}\" are revealed"
                )));
            }
        }
        for s in u.seeds {
            let peer = name(s.peer, "the peer of a revealed seed")?;
            let seed = seed_from(&s.seed, "a revealed seed")?;
            if revealed.seeds.insert(peer.clone(), seed).is_some() {
                return Err(Error::invalid(format!(
                    "two seeds with \"{peer}\" are revealed"
                )));
            }
        }
        // Never both for one node: that would unmask it.
        if let Some(both) = revealed
            .shares
            .keys()
            .find(|o| revealed.seeds.contains_key(*o))
        {
            return Err(Error::invalid(format!(
                "the answer reveals both a share of {both}'s self mask and a seed shared with {both}"
            )));
        }
        Ok(Unmasked {
            session_id: u.session_id,
            step: u.step,
            revealed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(node: &str) -> SignedBundle {
        let b = KeyBundle {
            session_id: "s".into(),
            study_id: "study".into(),
            definition_hash: "d".into(),
            binding: [1; 32],
            node: node.into(),
            keys: ["a", "b", "c"]
                .iter()
                .filter(|p| **p != node)
                .map(|p| (p.to_string(), [2u8; 32]))
                .collect(),
        };
        SignedBundle {
            bytes: pb::KeyBundle::from(&b).encode_to_vec(),
            signature: vec![9; 64],
            certificate: vec![8; 300],
            bundle: b,
        }
    }

    #[test]
    fn rosters_and_vectors_round_trip_and_junk_is_refused() {
        let roster = Roster {
            session_id: "s".into(),
            members: ["a", "b", "c"].into_iter().map(bundle).collect(),
        };
        let wire = pb::Roster::from(&roster);
        assert_eq!(Roster::try_from(wire.clone()).unwrap(), roster);

        let mut short = wire.clone();
        let mut b =
            pb::KeyBundle::decode(short.nodes[0].bundle.as_ref().unwrap().bundle.as_slice())
                .unwrap();
        b.keys[0].public_key.pop();
        short.nodes[0].bundle.as_mut().unwrap().bundle = b.encode_to_vec();
        let e = Roster::try_from(short).unwrap_err();
        assert!(e.message.contains("not the 32"), "{e}");
        let mut swapped = wire.clone();
        swapped.nodes[1].node_id = "c".into();
        assert!(Roster::try_from(swapped).is_err());
        let mut garbage = wire;
        garbage.nodes[2].bundle.as_mut().unwrap().bundle = vec![0xff; 10];
        assert!(Roster::try_from(garbage).is_err());

        let v = vec![0u128, 1, u128::MAX, 1 << 100];
        assert_eq!(vector_from_bytes(&vector_to_bytes(&v)).unwrap(), v);
        assert!(vector_from_bytes(&[0u8; 17]).is_err());
        assert!(vector_from_bytes(&vec![0u8; 16 * (MAX_ELEMENTS + 1)]).is_err());
    }

    #[test]
    fn a_node_is_never_both_survivor_and_dropped() {
        let request = pb::UnmaskRequest {
            step: 1,
            survivors: vec!["a".into(), "b".into(), "c".into()],
            dropped: vec!["c".into()],
            ..Default::default()
        };
        let e = UnmaskRequest::try_from(request).unwrap_err();
        assert_eq!(e.code, plexus_core::ErrorCode::Policy);
        assert!(e.message.contains("c twice"), "{e}");
        let answer = pb::Unmasked {
            shares: vec![pb::RevealedShare {
                owner: "d".into(),
                share: vec![1; 33],
            }],
            seeds: vec![pb::RevealedSeed {
                peer: "d".into(),
                seed: vec![1; 32],
            }],
            ..Default::default()
        };
        assert!(Unmasked::try_from(answer).is_err());
    }
}
