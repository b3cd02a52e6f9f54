//! Bytes a node or a researcher sends the coordinator -> prost decode ->
//! the `TryFrom` conversions and checks the coordinator applies on receipt:
//! a node's results (plain statistics checked against the query, privacy
//! receipts, secure aggregation's signed key bundles, masked answers,
//! survivor signatures and unmasking answers, its signed statement), a
//! researcher's query, an admin's study.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus_core::privacy::report::Receipt;
use plexus_core::{Dictionary, Error, NodeStats, Query, StudyDefinition};
use plexus_core::secagg::steps::{Confirmation, MaskedAnswer, Unmasked};
use plexus_core::secagg::SignedBundle;
use plexus_proto::v1 as pb;
use prost::Message;

fn stats(s: pb::NodeStats, dict: &Dictionary, queries: &[Query]) {
    if let Ok(s) = NodeStats::try_from(s) {
        for q in queries {
            let _ = s.check(&q.analysis, dict, 5);
        }
    }
}

fn outcome(
    o: Option<pb::result_statement::Outcome>,
    privacy: Option<pb::PrivacyReceipt>,
    dict: &Dictionary,
    queries: &[Query],
) {
    match o {
        Some(pb::result_statement::Outcome::Stats(s)) => stats(s, dict, queries),
        Some(pb::result_statement::Outcome::Error(e)) => {
            let _ = Error::from(e);
        }
        Some(pb::result_statement::Outcome::Keys(k)) => {
            if let Some(b) = k.bundle {
                let _ = SignedBundle::try_from(b);
            }
        }
        Some(pb::result_statement::Outcome::Masked(m)) => {
            let _ = MaskedAnswer::try_from(m);
        }
        Some(pb::result_statement::Outcome::Confirmed(c)) => {
            let _ = Confirmation::try_from(c);
        }
        Some(pb::result_statement::Outcome::Unmasked(u)) => {
            let _ = Unmasked::try_from(u);
        }
        None => {}
    }
    if let Some(p) = privacy {
        let _ = Receipt::try_from(p);
    }
}

fuzz_target!(|data: &[u8]| {
    let (dict, queries) = (plexus_fuzz::dictionary(), plexus_fuzz::queries());
    if let Ok(m) = pb::NodeMessage::decode(data) {
        if let Some(pb::node_message::Msg::Result(r)) = m.msg {
            let direct = r.outcome.map(|o| match o {
                pb::job_result::Outcome::Stats(s) => pb::result_statement::Outcome::Stats(s),
                pb::job_result::Outcome::Error(e) => pb::result_statement::Outcome::Error(e),
                pb::job_result::Outcome::Keys(k) => pb::result_statement::Outcome::Keys(k),
                pb::job_result::Outcome::Masked(m) => pb::result_statement::Outcome::Masked(m),
                pb::job_result::Outcome::Confirmed(c) => {
                    pb::result_statement::Outcome::Confirmed(c)
                }
                pb::job_result::Outcome::Unmasked(u) => pb::result_statement::Outcome::Unmasked(u),
            });
            outcome(direct, r.privacy, dict, queries);
            if let Ok(s) = pb::ResultStatement::decode(r.statement.as_slice()) {
                outcome(s.outcome, s.privacy, dict, queries);
            }
        }
    }
    if let Ok(s) = pb::ResultStatement::decode(data) {
        outcome(s.outcome, s.privacy, dict, queries);
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
