//! The log the hospitals witness, at the coordinator's end: every job
//! carries the latest signed checkpoint of the audit log and a consistency
//! proof from the checkpoint its node reported it witnessed last (hello,
//! heartbeats). The node checks both before it takes the job, keeps the
//! checkpoint, and signs it into its answer, so a log rewritten, truncated
//! or shown differently to different hospitals is caught by the nodes and
//! by `plexus audit verify` against what they witnessed.

use tracing::error;

use plexus_proto::v1 as pb;

use crate::state::State;

/// `job` with the checkpoint and proof `node` is to witness. Should the
/// log fail to give them, the job goes without: a node that witnessed a
/// checkpoint before refuses it and says why, which is louder than
/// holding the query back here.
pub async fn attach(state: &State, node: &str, mut job: pb::Job) -> pb::Job {
    let from = state.registry.witnessed_size(node);
    match state.audit_log.witness(from).await {
        Ok(shown) => {
            if shown.from_size > shown.checkpoint.head.size {
                // The node saw more of this log than the log now holds.
                error!(
                    node,
                    witnessed = shown.from_size,
                    latest = shown.checkpoint.head.size,
                    "the node witnessed a larger checkpoint of the audit log than the latest one: the log lost entries it had signed; the node refuses its jobs (witness.truncated) until the break is repaired and its operator resets"
                );
            }
            job.witness_checkpoint = Some(pb::SignedCheckpoint {
                public_key: state.signer.public_hex(),
                ..shown.checkpoint.into()
            });
            job.witness_from_size = shown.from_size;
            job.witness_proof = shown.proof;
        }
        Err(e) => {
            error!(node, error = %e, "cannot show the node a checkpoint of the audit log; the job goes without one")
        }
    }
    job
}
