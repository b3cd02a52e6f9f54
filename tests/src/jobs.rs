//! Jobs built and signed the way the coordinator sends them, for tests that
//! drive a node's job runner directly, standing in for the coordinator.

use prost::Message;

use plexus_core::{Query, StudyDefinition};
use plexus_proto::v1 as pb;
use plexus_tls::SigningKey;

/// Job `id` for node `audience`: `query` under exact `study` (no noise),
/// issued at `issued_unix_ms` and due a minute later. A test that needs
/// more (a witness checkpoint, say) sets it with struct update syntax:
/// `pb::Job { witness_proof, ..exact_job(…) }`.
pub fn exact_job(
    study: &StudyDefinition,
    query: &Query,
    id: &str,
    audience: &str,
    issued_unix_ms: i64,
) -> pb::Job {
    pb::Job {
        job_id: id.to_string(),
        study_id: study.id.clone(),
        purpose: Some((&study.purpose().unwrap()).into()),
        query_hash: query.hash(),
        query: Some(pb::Query::from(query)),
        min_cell_size: 5,
        deadline_unix_ms: issued_unix_ms + 60_000,
        issued_unix_ms,
        audience: audience.into(),
        privacy: Some(pb::JobPrivacy {
            exact: true,
            ..Default::default()
        }),
        study_definition_hash: study.definition_hash(),
        ..Default::default()
    }
}

/// `job` as sent: its bytes, signed with `key` (the coordinator's, or one
/// a node does not pin).
pub fn sign(key: &SigningKey, job: &pb::Job) -> pb::SignedJob {
    let bytes = job.encode_to_vec();
    pb::SignedJob {
        signature: key.sign(&bytes),
        job: bytes,
    }
}
