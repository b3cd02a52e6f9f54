//! Audit entries and checkpoints on the wire.

use crate::v1 as pb;

impl From<plexus_core::audit::AuditEntry> for pb::AuditEvent {
    fn from(e: plexus_core::audit::AuditEntry) -> Self {
        pb::AuditEvent {
            seq: e.seq.max(0) as u64,
            at_unix_ms: e.at,
            who: e.who,
            role: e.role.to_string(),
            action: e.action.to_string(),
            study_id: e.study_id,
            query_id: e.query_id,
            job_id: e.job_id,
            node_id: e.node_id,
            query_hash: e.query_hash,
            outcome: e.outcome.to_string(),
            detail: e.detail,
            purpose: e.purpose,
            nodes: e.nodes,
            result_size: e.result_size,
            suppressed: e.suppressed,
            privacy_cost: e.privacy_cost,
            privacy_remaining: e.privacy_remaining,
        }
    }
}

/// An event from the wire: a role, action or outcome no version of Plexus
/// writes is refused (a hostile or newer coordinator), never guessed.
impl TryFrom<pb::AuditEvent> for plexus_core::audit::AuditEntry {
    type Error = plexus_core::audit::UnknownValue;

    fn try_from(e: pb::AuditEvent) -> Result<Self, Self::Error> {
        Ok(plexus_core::audit::AuditEntry {
            seq: e.seq as i64,
            at: e.at_unix_ms,
            who: e.who,
            role: e.role.parse()?,
            action: e.action.parse()?,
            study_id: e.study_id,
            purpose: e.purpose,
            query_id: e.query_id,
            job_id: e.job_id,
            node_id: e.node_id,
            nodes: e.nodes,
            query_hash: e.query_hash,
            result_size: e.result_size,
            suppressed: e.suppressed,
            privacy_cost: e.privacy_cost,
            privacy_remaining: e.privacy_remaining,
            outcome: e.outcome.parse()?,
            detail: e.detail,
        })
    }
}

impl From<plexus_core::merkle::Checkpoint> for pb::SignedCheckpoint {
    fn from(c: plexus_core::merkle::Checkpoint) -> Self {
        pb::SignedCheckpoint {
            origin: c.origin,
            size: c.head.size,
            root: c.head.root,
            at_unix_ms: c.at_unix_ms,
            signature: c.signature,
            public_key: String::new(),
        }
    }
}

impl From<pb::SignedCheckpoint> for plexus_core::merkle::Checkpoint {
    fn from(c: pb::SignedCheckpoint) -> Self {
        plexus_core::merkle::Checkpoint {
            origin: c.origin,
            head: plexus_core::merkle::TreeHead {
                size: c.size,
                root: c.root,
            },
            at_unix_ms: c.at_unix_ms,
            signature: c.signature,
        }
    }
}
