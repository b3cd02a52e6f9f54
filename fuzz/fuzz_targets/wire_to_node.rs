//! Bytes the coordinator sends a node -> prost decode of the stream message
//! and of the signed job inside -> the `TryFrom` conversions a node applies
//! before it runs anything: the query (validated against the dictionary),
//! the purpose, the iteration of a fit, the secure-aggregation roster.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus_core::secagg::Roster;
use plexus_core::{Dictionary, Purpose, Query};
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
    if let Some(pb::secure_aggregation::Step::Mask(m)) =
        job.secure_aggregation.and_then(|s| s.step)
    {
        if let Some(r) = m.roster {
            let _ = Roster::try_from(r);
        }
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
