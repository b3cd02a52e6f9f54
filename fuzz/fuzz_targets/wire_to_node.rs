//! Bytes the coordinator sends a node -> prost decode of the stream message
//! and of the signed job inside -> the `TryFrom` conversions a node applies
//! before it runs anything: the query (validated against the dictionary),
//! the purpose, the iteration of a fit, each step of secure aggregation
//! (the study definition of a key request, the roster of signed key
//! bundles, the survivor lists, the unmask request).
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus_core::secagg::steps::{Partition, UnmaskRequest};
use plexus_core::secagg::Roster;
use plexus_core::{Dictionary, Purpose, Query, StudyDefinition};
use plexus_proto::v1 as pb;
use prost::Message;

fn job(job: pb::Job, dict: &Dictionary) {
    if let Some(Ok(q)) = job.query.map(Query::try_from) {
        if q.validate(dict).is_ok() {
            let _ = q.hash();
            let _ = q.analysis.terms(dict);
        }
    }
    if let Some(p) = job.purpose {
        let _ = Purpose::try_from(p);
    }
    if let Some(it) = job.iteration {
        let _ = plexus_core::models::fit::Iteration::try_from(it);
    }
    match job.secure_aggregation.and_then(|s| s.step) {
        Some(pb::secure_aggregation::Step::KeyRequest(k)) => {
            let _ = serde_json::from_slice::<StudyDefinition>(&k.study_definition);
        }
        Some(pb::secure_aggregation::Step::Mask(m)) => {
            if let Some(r) = m.roster {
                if let Ok(r) = Roster::try_from(r) {
                    let _ = r.validate();
                    let _ = r.digest();
                }
            }
        }
        Some(pb::secure_aggregation::Step::Confirm(c)) => {
            let _ = Partition::try_from(c);
        }
        Some(pb::secure_aggregation::Step::Unmask(u)) => {
            let _ = UnmaskRequest::try_from(u);
        }
        None => {}
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
