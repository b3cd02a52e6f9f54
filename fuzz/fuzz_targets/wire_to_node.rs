//! Bytes the coordinator sends a node -> prost decode of the stream message
//! and of the signed job inside -> `plexus_proto::job::JobRequest::read`,
//! the node's own reading of a job before it runs anything (the purpose,
//! the query, the iteration of a fit, the step of secure aggregation) ->
//! the query validated against the dictionary, the study definition of a
//! key request, the roster of signed key bundles.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus_core::{Dictionary, StudyDefinition};
use plexus_proto::job::{JobRequest, SecureStep};
use plexus_proto::v1 as pb;
use prost::Message;

/// The node's own reading of a job (`JobRequest::read`, as `node/src/job.rs`
/// calls it), then what the node does with each part.
fn job(job: pb::Job, dict: &Dictionary) {
    let Ok(request) = JobRequest::read(&job) else {
        return;
    };
    if request.query.validate(dict).is_ok() {
        let _ = request.query.hash();
        let _ = request.query.analysis.terms(dict);
    }
    match request.secure {
        Some(SecureStep::Keys { definition, .. }) => {
            let _ = serde_json::from_slice::<StudyDefinition>(&definition);
        }
        Some(SecureStep::Mask { roster, .. }) => {
            let _ = roster.validate();
            let _ = roster.digest();
        }
        Some(SecureStep::Confirm { .. }) | Some(SecureStep::Unmask { .. }) | None => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let dict = plexus_fuzz::dictionary();
    if let Ok(m) = pb::CoordinatorMessage::decode(data) {
        if let Some(pb::coordinator_message::Msg::SignedJob(s)) = m.msg {
            if let Ok(j) = pb::Job::decode(s.job.as_slice()) {
                job(j, dict);
            }
        }
    }
    if let Ok(j) = pb::Job::decode(data) {
        job(j, dict);
    }
});
