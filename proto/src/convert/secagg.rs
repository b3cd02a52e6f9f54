//! Secure aggregation on the wire: rosters, public keys and masked
//! vectors. A roster or a key list from a peer is checked here for its
//! shape (32-byte keys, each peer once, vectors of whole 16-byte words
//! within the size limit); what it means is checked by the node
//! ([`plexus_core::secagg::KeyPairs::agree`]) and the coordinator.

use std::collections::BTreeMap;

use plexus_core::error::{Error, Result};
use plexus_core::secagg::{PublicKey, Roster, RosterNode, KEY_LEN, MAX_ELEMENTS};

use crate::v1 as pb;

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
    if keys.len() > super::MAX_REPEATED {
        return Err(Error::invalid("too many public keys"));
    }
    let mut out = BTreeMap::new();
    for k in keys {
        let key: PublicKey = k.public_key.as_slice().try_into().map_err(|_| {
            Error::invalid(format!(
                "the public key for \"{}\" has {} bytes, not the {KEY_LEN} of an X25519 key",
                k.peer,
                k.public_key.len()
            ))
        })?;
        if out.insert(k.peer.clone(), key).is_some() {
            return Err(Error::invalid(format!(
                "two public keys are given for \"{}\"",
                k.peer
            )));
        }
    }
    Ok(out)
}

impl From<&Roster> for pb::Roster {
    fn from(r: &Roster) -> Self {
        pb::Roster {
            session_id: r.session_id.clone(),
            nodes: r
                .nodes
                .iter()
                .map(|n| pb::RosterNode {
                    node_id: n.node.clone(),
                    keys: keys_to_pb(&n.keys),
                })
                .collect(),
        }
    }
}

impl TryFrom<pb::Roster> for Roster {
    type Error = Error;
    fn try_from(r: pb::Roster) -> Result<Self> {
        if r.nodes.len() > 1000 {
            return Err(Error::invalid("the roster names more than 1000 nodes"));
        }
        Ok(Roster {
            session_id: r.session_id,
            nodes: r
                .nodes
                .into_iter()
                .map(|n| {
                    Ok(RosterNode {
                        node: n.node_id,
                        keys: keys_from_pb(n.keys)?,
                    })
                })
                .collect::<Result<_>>()?,
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

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_core::secagg::KeyPairs;

    #[test]
    fn rosters_and_vectors_round_trip_and_junk_is_refused() {
        let nodes = ["a", "b", "c"];
        let keys = nodes
            .iter()
            .map(|n| {
                let kp = KeyPairs::generate("s", n, nodes).unwrap();
                (n.to_string(), kp.public_keys().clone())
            })
            .collect();
        let roster = Roster::new("s", keys);
        let wire = pb::Roster::from(&roster);
        assert_eq!(Roster::try_from(wire.clone()).unwrap(), roster);

        let mut short = wire.clone();
        short.nodes[0].keys[0].public_key.pop();
        let e = Roster::try_from(short).unwrap_err();
        assert!(e.message.contains("not the 32"), "{e}");
        let mut twice = wire;
        let k = twice.nodes[1].keys[0].clone();
        twice.nodes[1].keys.push(k);
        assert!(Roster::try_from(twice).is_err());

        let v = vec![0u128, 1, u128::MAX, 1 << 100];
        assert_eq!(vector_from_bytes(&vector_to_bytes(&v)).unwrap(), v);
        assert!(vector_from_bytes(&[0u8; 17]).is_err());
        assert!(vector_from_bytes(&vec![0u8; 16 * (MAX_ELEMENTS + 1)]).is_err());
    }
}
