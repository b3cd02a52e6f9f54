//! What a job asks a node, converted once from the wire into core's types:
//! the purpose of use, the query, the iteration of a fit, and the step of
//! secure aggregation. The node reads a job through [`JobRequest::read`]
//! after its envelope is verified (signature, audience, expiry, replay),
//! and the wire fuzz target reads the same bytes through the same call, so
//! the two cannot drift. Checks that need the node's dictionary or policy
//! (the query's variables, the study's approval, the privacy terms) are
//! the node's.

use plexus_core::models::fit::Iteration;
use plexus_core::secagg::steps::{Partition, UnmaskRequest};
use plexus_core::secagg::Roster;
use plexus_core::{Error, Purpose, Query};

use crate::v1 as pb;

/// A job's request, read from its wire form.
#[derive(Debug, Clone)]
pub struct JobRequest {
    pub purpose: Purpose,
    pub query: Query,
    /// The step of an iterative fit, for a model's rounds.
    pub iteration: Option<Iteration>,
    /// The step of secure aggregation, for a secure study's jobs.
    pub secure: Option<SecureStep>,
}

impl JobRequest {
    /// Reads `job`'s request; a missing or malformed part is an `invalid`
    /// error naming it.
    pub fn read(job: &pb::Job) -> Result<Self, Error> {
        let purpose = Purpose::try_from(
            job.purpose
                .clone()
                .ok_or_else(|| Error::invalid("the job names no purpose of use"))?,
        )?;
        let query = Query::try_from(
            job.query
                .clone()
                .ok_or_else(|| Error::invalid("the job carries no query"))?,
        )?;
        let iteration = job.iteration.clone().map(Iteration::try_from).transpose()?;
        let secure = job
            .secure_aggregation
            .as_ref()
            .map(SecureStep::read)
            .transpose()?;
        Ok(JobRequest {
            purpose,
            query,
            iteration,
            secure,
        })
    }
}

/// The step of secure aggregation a job asks for.
#[derive(Debug, Clone)]
pub enum SecureStep {
    /// Send public keys for the session's other nodes.
    Keys {
        session_id: String,
        nodes: Vec<String>,
        /// The study definition the session is bound to, as the
        /// coordinator sent it.
        definition: Vec<u8>,
    },
    /// Answer masked for the roster of key bundles.
    Mask { roster: Roster, step: u32 },
    /// Sign the survivor list.
    Confirm {
        session_id: String,
        partition: Partition,
    },
    /// Reveal shares for the survivors and seeds for the dropped.
    Unmask {
        session_id: String,
        request: UnmaskRequest,
    },
}

impl SecureStep {
    /// Reads the step of `sa`; a roster for another session is refused.
    pub fn read(sa: &pb::SecureAggregation) -> Result<Self, Error> {
        let session_id = sa.session_id.clone();
        Ok(match sa.step.clone() {
            Some(pb::secure_aggregation::Step::KeyRequest(k)) => SecureStep::Keys {
                session_id,
                nodes: k.nodes,
                definition: k.study_definition,
            },
            Some(pb::secure_aggregation::Step::Mask(m)) => {
                let roster = Roster::try_from(m.roster.ok_or_else(|| {
                    Error::invalid("the secure aggregation job carries no roster")
                })?)?;
                if roster.session_id != session_id {
                    return Err(Error::invalid(format!(
                        "the roster is for session {}, and the job for session {session_id}",
                        roster.session_id
                    )));
                }
                SecureStep::Mask {
                    roster,
                    step: m.step,
                }
            }
            Some(pb::secure_aggregation::Step::Confirm(c)) => SecureStep::Confirm {
                session_id,
                partition: Partition::try_from(c)?,
            },
            Some(pb::secure_aggregation::Step::Unmask(u)) => SecureStep::Unmask {
                session_id,
                request: UnmaskRequest::try_from(u)?,
            },
            None => {
                return Err(Error::invalid(
                    "the secure aggregation job names no step (keys, mask, confirm or unmask)",
                ))
            }
        })
    }
}
