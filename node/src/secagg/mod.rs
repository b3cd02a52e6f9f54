//! The node's half of secure aggregation (the scheme is in
//! `plexus_core::secagg`): the sessions it made keys for, in memory only;
//! the checks on every roster member; the contributions it committed to,
//! on disk; and the job runner's steps.

mod commitments;
mod members;
mod sessions;
mod steps;

pub use commitments::{Commitments, COMMITMENTS_FILE};
pub use sessions::{Pending, Session, SessionStudy, Sessions, StepState, SESSION_TTL_MS};

pub use steps::HeldMask;

use plexus_proto::v1 as pb;

/// What a job asks a node to compute, without what differs between the
/// jobs of one session (id, times, the secure aggregation step): two jobs
/// with the same fingerprint ask for the same statistics.
pub(crate) fn fingerprint(job: &pb::Job) -> [u8; 32] {
    let what = pb::Job {
        study_id: job.study_id.clone(),
        purpose: job.purpose.clone(),
        query: job.query.clone(),
        min_cell_size: job.min_cell_size,
        query_hash: job.query_hash.clone(),
        iteration: job.iteration.clone(),
        privacy: job.privacy,
        audience: job.audience.clone(),
        ..Default::default()
    };
    let d = ring::digest::digest(&ring::digest::SHA256, &prost::Message::encode_to_vec(&what));
    d.as_ref().try_into().expect("32 bytes")
}

/// What a whole session computes, the same for every node and every round
/// of a fit: the study and its definition, the query and the privacy
/// terms. Every member's key bundle must name it.
pub(crate) fn binding(job: &pb::Job) -> [u8; 32] {
    let what = pb::Job {
        study_id: job.study_id.clone(),
        study_definition_hash: job.study_definition_hash.clone(),
        purpose: job.purpose.clone(),
        query: job.query.clone(),
        query_hash: job.query_hash.clone(),
        privacy: job.privacy,
        ..Default::default()
    };
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"plexus secagg session binding v1");
    ctx.update(&prost::Message::encode_to_vec(&what));
    ctx.finish().as_ref().try_into().expect("32 bytes")
}

/// Where a masked job's answer goes: the session, the step, and the
/// contribution it commits.
#[derive(Debug, Clone)]
pub(crate) struct MaskFor {
    pub session_id: String,
    pub step: u32,
    /// The key of the contribution (see [`commitments`]).
    pub contribution: String,
    /// The job's deadline. A masked answer is never sent after it: the
    /// coordinator has then counted the node as dropped.
    pub deadline_ms: i64,
    /// What the release answers, and the minimum cell size it was made
    /// with: it is checked as the coordinator checks a clear answer.
    pub analysis: plexus_core::Analysis,
    pub k: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_ignores_the_step_and_the_binding_the_round() {
        let key_job = pb::Job {
            job_id: "k".into(),
            study_id: "s".into(),
            query_hash: "q".into(),
            audience: "a".into(),
            deadline_unix_ms: 1,
            secure_aggregation: Some(pb::SecureAggregation {
                session_id: "x".into(),
                step: None,
            }),
            ..Default::default()
        };
        let mask_job = pb::Job {
            job_id: "m".into(),
            deadline_unix_ms: 2,
            issued_unix_ms: 1,
            secure_aggregation: None,
            ..key_job.clone()
        };
        assert_eq!(fingerprint(&key_job), fingerprint(&mask_job));
        let other = pb::Job {
            query_hash: "another query".into(),
            ..mask_job.clone()
        };
        assert_ne!(fingerprint(&key_job), fingerprint(&other));
        let next_round = pb::Job {
            iteration: Some(pb::Iteration {
                round: 2,
                ..Default::default()
            }),
            audience: "b".into(),
            ..mask_job.clone()
        };
        assert_eq!(binding(&next_round), binding(&key_job));
        assert_ne!(binding(&other), binding(&key_job));
    }
}
