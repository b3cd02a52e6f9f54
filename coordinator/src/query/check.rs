//! Each node's reply checked before it is used: a refusal or failure
//! becomes the node's outcome; released statistics must parse and pass
//! the disclosure rules for the analysis asked; a secure aggregation step
//! must answer the step, roster and session asked. Nothing a node sends is
//! trusted for being signed.

use plexus_core::audit::Outcome;
use plexus_core::pool::{NodeOutcome, NodeStatus};
use plexus_core::privacy::report::Receipt;

use plexus_core::secagg;
use plexus_core::{Error, ErrorCode, Query};
use plexus_proto::reply::NodeReply;
use plexus_proto::v1 as pb;
use tracing::warn;

use crate::registry::JobReply;
use crate::state::State;

use super::plan::Answer;

/// The audit outcome of a job whose result the node held for its data
/// steward: says who decided what, on top of what the coordinator made of
/// the answer.
pub(super) fn reviewed(
    status: Outcome,
    detail: String,
    node: &str,
    review: Option<&pb::Review>,
) -> (Outcome, String) {
    let Some(r) = review else {
        return (status, detail);
    };
    match (r.decision.as_str(), status) {
        ("approved", Outcome::Answered) => (
            Outcome::ReviewedApproved,
            format!("released after review by the data steward of {node}"),
        ),
        ("rejected", _) => (Outcome::ReviewedRejected, detail),
        ("expired", _) => (Outcome::ReviewExpired, detail),
        _ => (status, detail),
    }
}

/// Checks a node's answer to one step of a secure aggregation session
/// against the job sent: a key bundle for the session, signed with the
/// key of a certificate for that node, with a key for every other node
/// asked; a masked answer for the roster, step and analysis, with a share
/// for every other member; a signature over the survivor list asked; or
/// shares and seeds for the survivors and dropped asked. Returns the answer
/// and what the jobs table keeps of it (never a figure of the node's own:
/// the node's signed statement kept beside it holds the whole message).
fn secure_answer(
    job: &pb::Job,
    outcome: NodeReply,
    receipt: Option<pb::PrivacyReceipt>,
    query: &Query,
    dict: &plexus_core::Dictionary,
) -> Result<(Answer, String), Error> {
    use pb::secure_aggregation::Step;
    let wrong = || {
        Error::invalid("the node answered another step of secure aggregation than the one asked")
    };
    let sa = job.secure_aggregation.as_ref().ok_or_else(|| {
        Error::invalid("the node answered a plain job with a secure aggregation step")
    })?;
    let sid = &sa.session_id;
    let stored = |v: serde_json::Value| serde_json::json!({ "secure_aggregation": v }).to_string();
    match (outcome, &sa.step) {
        (
            NodeReply::Keys {
                session_id,
                bundle: signed,
            },
            Some(Step::KeyRequest(request)),
        ) => {
            let b = &signed.bundle;
            if session_id != *sid || b.session_id != *sid || b.node != job.audience {
                return Err(wrong());
            }
            let expected: std::collections::BTreeSet<&str> = request
                .nodes
                .iter()
                .map(String::as_str)
                .filter(|n| *n != job.audience)
                .collect();
            if !b.keys.keys().map(String::as_str).eq(expected) {
                return Err(Error::invalid(
                    "the node's public keys are not one for each other node of the session",
                ));
            }
            plexus_tls::verify_by_certificate(
                &signed.certificate,
                &secagg::keys::bundle_message(&signed.bytes),
                &signed.signature,
            )
            .map_err(|e| Error::invalid(format!("the node's key bundle: {e}")))?;
            let public: std::collections::BTreeMap<&String, String> =
                b.keys.iter().map(|(p, k)| (p, hex::encode(k))).collect();
            let json = stored(serde_json::json!({
                "session_id": sid,
                "public_keys": public,
            }));
            Ok((Answer::Keys(signed), json))
        }
        (NodeReply::Masked(m), Some(Step::Mask(request))) => {
            let roster = plexus_core::secagg::Roster::try_from(
                request
                    .roster
                    .clone()
                    .ok_or_else(|| Error::internal("a mask job without a roster"))?,
            )?;
            if m.session_id != *sid || m.step != request.step || m.roster_digest != roster.digest()
            {
                return Err(Error::invalid(
                    "the node masked for another session, step or roster than the one sent",
                ));
            }
            let len = secagg::vector_len(&query.analysis, dict)?;
            if m.vector.len() != len {
                return Err(Error::invalid(format!(
                    "the node's masked vector has {} values where this {} has {len}",
                    m.vector.len(),
                    query.analysis.kind()
                )));
            }
            let others: Vec<String> = roster
                .node_ids()
                .into_iter()
                .filter(|n| *n != job.audience)
                .collect();
            if !m.shares.keys().eq(others.iter()) {
                return Err(Error::invalid(
                    "the node's masked answer does not carry one share for each other roster member",
                ));
            }
            let receipt = receipt.map(Receipt::try_from).transpose()?;
            let json = stored(serde_json::json!({
                "session_id": m.session_id,
                "step": m.step,
                "roster_digest": hex::encode(m.roster_digest),
                "masked": hex::encode(plexus_proto::convert::vector_to_bytes(&m.vector)),
            }));
            Ok((Answer::Masked(m, receipt), json))
        }
        (NodeReply::Confirmed(c), Some(Step::Confirm(request))) => {
            let mut asked = request.survivors.clone();
            asked.sort();
            if c.session_id != *sid || c.step != request.step || c.survivors != asked {
                return Err(wrong());
            }
            let json = stored(serde_json::json!({
                "session_id": sid,
                "step": c.step,
                "signed_survivors": c.survivors,
            }));
            Ok((Answer::Confirmed(c), json))
        }
        (NodeReply::Unmasked(u), Some(Step::Unmask(request))) => {
            if u.session_id != *sid
                || u.step != request.step
                || !u
                    .revealed
                    .shares
                    .keys()
                    .all(|o| request.survivors.contains(o))
                || !u.revealed.seeds.keys().all(|p| request.dropped.contains(p))
            {
                return Err(Error::invalid(
                    "the node revealed for other nodes or another step than the ones asked",
                ));
            }
            let json = stored(serde_json::json!({
                "session_id": sid,
                "step": u.step,
                "revealed_shares": u.revealed.shares.len(),
                "revealed_seeds": u.revealed.seeds.len(),
            }));
            Ok((Answer::Unmasked(u), json))
        }
        _ => Err(wrong()),
    }
}

/// A reply checked: the answer to use, and what the jobs table and the
/// audit log keep of it.
pub(super) struct Checked {
    pub answer: Answer,
    /// The job's status in the jobs table and the metrics, and its audit
    /// outcome unless a data steward reviewed it ([`reviewed`]).
    pub status: Outcome,
    /// What the jobs table keeps of the answer (never a secure aggregation
    /// node's own figures).
    pub stored: Option<String>,
    /// Why the node's answer is not used, if it is not.
    pub error: Option<Error>,
    /// The node's signed statement, its signature and certificate, kept
    /// with the job for later checks.
    pub signed: Option<(Vec<u8>, Vec<u8>, Vec<u8>)>,
    /// The hospital data steward's decision, when the node held the result.
    pub review: Option<pb::Review>,
}

/// Checks `node`'s reply to `job` (or why there is none) before it is used.
pub(super) fn reply(
    state: &State,
    node: &str,
    job: &pb::Job,
    (query, dict): (&Query, &plexus_core::Dictionary),
    reply: JobReply,
) -> Checked {
    let checked = |answer, status, stored, error| Checked {
        answer,
        status,
        stored,
        error,
        signed: None,
        review: None,
    };
    let reply = match reply {
        Ok(reply) => reply,
        Err(detail) => {
            let outcome = NodeOutcome {
                node: node.to_string(),
                status: NodeStatus::Missing,
                detail: Some(detail),
                code: None,
            };
            return checked(Answer::Other(outcome, None), Outcome::Missing, None, None);
        }
    };
    // An answer the coordinator does not take: the node failed the job.
    let invalid = |e: Error| {
        warn!(node = %node, error = %e, "node answer refused");
        let outcome = NodeOutcome {
            node: node.to_string(),
            status: NodeStatus::Failed,
            detail: Some(format!("answer refused by the coordinator: {}", e.message)),
            code: Some(e.code),
        };
        checked(
            Answer::Other(outcome, None),
            Outcome::Invalid,
            None,
            Some(e),
        )
    };
    if job.secure_aggregation.is_some()
        && matches!(reply.outcome, pb::job_result::Outcome::Stats(_))
    {
        // A node's own figures where only a masked vector was asked for:
        // neither read, used nor kept (its signed statement holds them).
        return Checked {
            review: reply.review,
            ..invalid(Error::invalid(
                "the node answered a secure aggregation job with plain statistics; they were discarded unread (is the node's plexus-node older than its study?)",
            ))
        };
    }
    let signed = Some((reply.statement, reply.signature, reply.certificate));
    let receipt = reply.privacy;
    let mut result = match NodeReply::read(reply.outcome) {
        Err(e) => invalid(e),
        Ok(NodeReply::Refused(e)) => {
            // A refusal decided on a noised release carries what it
            // charged; a receipt that does not parse is dropped (the
            // node's ledger stays the authority).
            let receipt = receipt.and_then(|r| Receipt::try_from(r).ok());
            let status = match e.code {
                ErrorCode::Policy | ErrorCode::Disclosure => NodeStatus::Refused,
                _ => NodeStatus::Failed,
            };
            let outcome = NodeOutcome {
                node: node.to_string(),
                status,
                detail: Some(format!("{}: {}", e.code, e.message)),
                code: Some(e.code),
            };
            checked(
                Answer::Other(outcome, receipt),
                Outcome::Refused(None),
                None,
                Some(e),
            )
        }
        Ok(NodeReply::Stats(s)) => {
            let checked_stats = receipt.map(Receipt::try_from).transpose().and_then(|r| {
                s.check(
                    &query.analysis,
                    dict,
                    state.config.coordinator.min_cell_size,
                )
                .map(|_| r)
            });
            match checked_stats {
                Ok(receipt) => {
                    let json = serde_json::to_string(&s).ok();
                    checked(Answer::Stats(s, receipt), Outcome::Answered, json, None)
                }
                Err(e) => invalid(e),
            }
        }
        Ok(secure) => match secure_answer(job, secure, receipt, query, dict) {
            Ok((answer, stored)) => checked(answer, Outcome::Answered, Some(stored), None),
            Err(e) => invalid(e),
        },
    };
    result.signed = signed;
    result.review = reply.review;
    result
}
