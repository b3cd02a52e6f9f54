//! What an auditor's `plexus audit` receives from the (honest but curious)
//! coordinator -> prost decode -> domain types -> the checks it runs:
//! checkpoint signatures, inclusion proofs of an entry, consistency proofs
//! between two checkpoints. A forged proof must be refused, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus_core::audit::AuditEntry;
use plexus_core::merkle::{verify_consistency, verify_inclusion, Checkpoint};
use plexus_proto::v1 as pb;
use prost::Message;

fn checkpoint(c: pb::SignedCheckpoint) -> Checkpoint {
    let key = hex::decode(&c.public_key).unwrap_or_default();
    let c = Checkpoint::from(c);
    let _ = c.verify(&key);
    c
}

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = pb::InclusionProof::decode(data) {
        if let (Some(e), Some(c)) = (p.event, p.checkpoint) {
            let c = checkpoint(c);
            // An event with a role, action or outcome Plexus never writes
            // is refused before its leaf is computed.
            let Ok(entry) = AuditEntry::try_from(e) else {
                return;
            };
            let leaf = entry.leaf();
            let index = (entry.seq as u64).wrapping_sub(1);
            let _ = verify_inclusion(&c.head, &leaf, index, &p.proof);
        }
    }
    if let Ok(p) = pb::ConsistencyProof::decode(data) {
        if let Some(c) = p.checkpoint {
            let new = checkpoint(c);
            // Against an older head made of the same bytes, as a client
            // keeping its last checkpoint would hold.
            let old = plexus_core::merkle::TreeHead {
                size: new.head.size / 2,
                root: new.head.root.chars().rev().collect(),
            };
            let _ = verify_consistency(&old, &new.head, &p.proof);
            let _ = verify_consistency(&new.head, &old, &p.proof);
        }
    }
    if let Ok(r) = pb::ListEventsResponse::decode(data) {
        for e in r.events {
            if let Ok(entry) = AuditEntry::try_from(e) {
                let _ = entry.leaf();
            }
        }
    }
});
