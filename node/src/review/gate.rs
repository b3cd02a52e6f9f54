//! Holding a released result for the data steward, and answering it once
//! decided: the [`JobRunner`]'s side of the release gate.

use tracing::{info, warn};

use plexus_core::privacy::report::Receipt;
use plexus_core::{Error, NodeStats, Query};
use plexus_proto::v1 as pb;

use super::{Decision, HeldResult, Verdict};
use crate::error::NodeError;
use crate::job::{answer, describe, JobRunner, Reply};
use crate::log::LogEntry;

impl JobRunner {
    /// Puts a released result in the review queue instead of sending it,
    /// logs that, and says so to the coordinator. If it cannot be queued
    /// or logged, nothing is released and the job fails.
    pub(crate) fn hold(
        &self,
        job: &pb::Job,
        job_hash: Vec<u8>,
        (stats, receipt): (&NodeStats, Option<&Receipt>),
        analysis: &str,
        purpose: &str,
        secure: Option<crate::secagg::HeldMask>,
    ) -> pb::node_message::Msg {
        let now = chrono::Utc::now();
        let summary = describe(&Reply::Stats(stats.clone()), receipt);
        let query = job
            .query
            .clone()
            .and_then(|q| Query::try_from(q).ok())
            .and_then(|q| serde_json::to_value(q).ok())
            .unwrap_or_default();
        let held = HeldResult {
            job_id: job.job_id.clone(),
            node_id: self.config.node.id.clone(),
            study_id: job.study_id.clone(),
            study_definition_hash: job.study_definition_hash.clone(),
            purpose: purpose.to_string(),
            analysis: analysis.to_string(),
            query_hash: job.query_hash.clone(),
            query,
            job_hash: hex::encode(&job_hash),
            held_unix_ms: now.timestamp_millis(),
            deadline_unix_ms: job.deadline_unix_ms,
            stats: hex::encode(prost::Message::encode_to_vec(&pb::NodeStats::from(stats))),
            privacy: receipt
                .map(|r| hex::encode(prost::Message::encode_to_vec(&pb::PrivacyReceipt::from(r)))),
            data_snapshot: self.data.snapshot().unwrap_or_default(),
            summary: summary.clone(),
            secure_aggregation: secure,
        };
        let entry = LogEntry {
            at: now.to_rfc3339(),
            job_id: job.job_id.clone(),
            study_id: job.study_id.clone(),
            purpose: purpose.to_string(),
            query_hash: job.query_hash.clone(),
            analysis: analysis.to_string(),
            outcome: "held".into(),
            detail: format!(
                "{summary}; held for review by the data steward until {}{}",
                crate::review::desk::rfc3339(held.answer_by_unix_ms()),
                if held.secure_aggregation.is_some() {
                    " (on approval it leaves masked, under secure aggregation)"
                } else {
                    ""
                }
            ),
            ..Default::default()
        };
        let queued = self.review.hold(&held).and_then(|_| {
            self.log
                .append(&entry)
                .map_err(NodeError::log(self.log.path()))
        });
        if let Err(e) = queued {
            warn!(error = %e, "cannot hold the result for review; refusing the job");
            return answer(self.result(&job.job_id, job_hash, Err(Error::internal(
                "the node could not put the result in its review queue or log it; nothing was released; ask the hospital's IT to check the node's state folder",
            ))));
        }
        info!(analysis, "result held for review");
        pb::node_message::Msg::Held(pb::Held {
            job_id: job.job_id.clone(),
            held_unix_ms: held.held_unix_ms,
        })
    }

    /// The signed answer to a held job once the data steward decided (or
    /// its deadline passed), logged. Approved sends the held aggregate
    /// unchanged, or under secure aggregation masked with the session's
    /// keys (when they are gone, a refusal: the node is a dropout);
    /// rejected and expired send a refusal and nothing else.
    pub fn answer_held(
        &self,
        held: &HeldResult,
        decision: &Decision,
    ) -> Result<pb::JobResult, NodeError> {
        let node = &self.config.node.id;
        let damaged = |what: &str, e: &dyn std::fmt::Display| {
            NodeError::State(format!(
                "the held {what} of job {} is damaged ({e}); it cannot be released",
                held.job_id
            ))
        };
        let job_hash = hex::decode(&held.job_hash).map_err(|e| damaged("job hash", &e))?;
        let (outcome, privacy, detail) = match decision.verdict {
            Verdict::Approved => {
                let bytes = hex::decode(&held.stats).map_err(|e| damaged("result", &e))?;
                let stats = <pb::NodeStats as prost::Message>::decode(bytes.as_slice())
                    .map_err(|e| damaged("result", &e))?;
                let privacy = held
                    .privacy
                    .as_ref()
                    .map(|p| {
                        let bytes = hex::decode(p).map_err(|e| damaged("privacy receipt", &e))?;
                        <pb::PrivacyReceipt as prost::Message>::decode(bytes.as_slice())
                            .map_err(|e| damaged("privacy receipt", &e))
                    })
                    .transpose()?;
                let detail = format!("approved by {}: {}", decision.by, held.summary);
                match &held.secure_aggregation {
                    None => (pb::job_result::Outcome::Stats(stats), privacy, detail),
                    Some(secure) => match self.mask_held(held, secure, stats) {
                        Ok(masked) => (
                            pb::job_result::Outcome::Masked(masked),
                            privacy,
                            format!("{detail}; sent masked for session {}", secure.session_id),
                        ),
                        Err(e) => {
                            let detail = format!("{detail}; not sent: {}", e.message);
                            (pb::job_result::Outcome::Error((&e).into()), None, detail)
                        }
                    },
                }
            }
            Verdict::Rejected => {
                let e = Error::policy(format!(
                    "the data steward of {node} rejected the result after review: {}",
                    decision.reason
                ));
                let detail = format!("rejected by {}: {}", decision.by, decision.reason);
                (pb::job_result::Outcome::Error((&e).into()), None, detail)
            }
            Verdict::Expired => {
                let e = Error::unavailable(format!(
                    "the result was held for review by the data steward of {node}, who did not decide before the job's deadline; nothing was released"
                ));
                let detail =
                    "no decision before the job's deadline; nothing was released".to_string();
                (pb::job_result::Outcome::Error((&e).into()), None, detail)
            }
        };
        let entry = LogEntry {
            at: chrono::Utc::now().to_rfc3339(),
            job_id: held.job_id.clone(),
            study_id: held.study_id.clone(),
            purpose: held.purpose.clone(),
            query_hash: held.query_hash.clone(),
            analysis: held.analysis.clone(),
            outcome: decision.verdict.outcome().into(),
            detail,
            ..Default::default()
        };
        self.log
            .append(&entry)
            .map_err(NodeError::log(self.log.path()))?;
        let review = pb::Review {
            decision: decision.verdict.as_str().into(),
            reason: decision.reason.clone(),
            held_unix_ms: held.held_unix_ms,
            decided_unix_ms: decision.decided_unix_ms,
        };
        Ok(self.signed(
            &held.job_id,
            job_hash,
            outcome,
            privacy,
            held.data_snapshot.clone(),
            Some(review),
        ))
    }

    /// The approved clear release of a held masked job, masked.
    fn mask_held(
        &self,
        held: &HeldResult,
        secure: &crate::secagg::HeldMask,
        stats: pb::NodeStats,
    ) -> Result<pb::MaskedStats, Error> {
        let stats = NodeStats::try_from(stats)?;
        let query: Query = serde_json::from_value(held.query.clone())
            .map_err(|e| Error::internal(format!("the held query is damaged: {e}")))?;
        let mask = secure.mask_for(query.analysis, held.deadline_unix_ms);
        match self.mask_release(&stats, &mask)? {
            Reply::Masked(m) => Ok(m),
            _ => Err(Error::internal("masking gave no masked answer")),
        }
    }
}
