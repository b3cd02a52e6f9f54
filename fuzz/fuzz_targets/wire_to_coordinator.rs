//! Bytes a node or a researcher sends the coordinator -> prost decode ->
//! the conversions and checks the coordinator applies on receipt: a node's
//! answer read by `plexus_proto::reply::NodeReply::read` (plain statistics
//! then checked against the query, secure aggregation's signed key
//! bundles, masked answers, survivor signatures and unmasking answers), its
//! privacy receipt and signed statement; a researcher's query, an admin's
//! study.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus_core::privacy::report::Receipt;
use plexus_core::{Dictionary, Query, StudyDefinition};
use plexus_proto::reply::NodeReply;
use plexus_proto::v1 as pb;
use prost::Message;

/// The coordinator's reading of a node's answer (`NodeReply::read`, as
/// `coordinator/src/query/check.rs` calls it), then its checks.
fn outcome(
    o: Option<pb::job_result::Outcome>,
    privacy: Option<pb::PrivacyReceipt>,
    dict: &Dictionary,
    queries: &[Query],
) {
    if let Some(Ok(NodeReply::Stats(s))) = o.map(NodeReply::read) {
        for q in queries {
            let _ = s.check(&q.analysis, dict, 5);
        }
    }
    if let Some(p) = privacy {
        let _ = Receipt::try_from(p);
    }
}

fuzz_target!(|data: &[u8]| {
    let (dict, queries) = (plexus_fuzz::dictionary(), plexus_fuzz::queries());
    if let Ok(m) = pb::NodeMessage::decode(data) {
        if let Some(pb::node_message::Msg::Result(r)) = m.msg {
            outcome(r.outcome, r.privacy, dict, queries);
            if let Ok(s) = pb::ResultStatement::decode(r.statement.as_slice()) {
                outcome(s.outcome.map(Into::into), s.privacy, dict, queries);
            }
        }
    }
    if let Ok(s) = pb::ResultStatement::decode(data) {
        outcome(s.outcome.map(Into::into), s.privacy, dict, queries);
    }
    if let Ok(r) = pb::SubmitQueryRequest::decode(data) {
        if let Some(Ok(q)) = r.query.map(Query::try_from) {
            if q.validate(dict).is_ok() {
                let _ = q.hash();
                let _ = q.analysis.terms(dict);
            }
        }
    }
    if let Ok(r) = pb::RegisterStudyRequest::decode(data) {
        if let Some(Ok(s)) = r.study.map(StudyDefinition::try_from) {
            let _ = s.validate(dict);
            let _ = s.definition_hash();
        }
    }
});
