//! A node's answer to one job, converted once from the wire into core's
//! types: released statistics, a refusal, or a step of secure aggregation.
//! The coordinator reads every answer through [`NodeReply::read`] before
//! checking it against the job it sent (the analysis, the session, the
//! roster), and the wire fuzz target reads the same bytes through the same
//! call.

use plexus_core::secagg::steps::{Confirmation, MaskedAnswer, Unmasked};
use plexus_core::secagg::SignedBundle;
use plexus_core::{Error, NodeStats};

use crate::v1 as pb;

/// What a node answered.
#[derive(Debug, Clone)]
pub enum NodeReply {
    /// Released statistics (not yet checked against the analysis asked).
    Stats(NodeStats),
    /// The node refused or failed the job, and why.
    Refused(Error),
    /// A signed key bundle for a secure aggregation session.
    Keys {
        session_id: String,
        bundle: SignedBundle,
    },
    /// A masked answer for a roster.
    Masked(MaskedAnswer),
    /// A signature over the survivor list.
    Confirmed(Confirmation),
    /// What a survivor revealed to unmask the sum.
    Unmasked(Unmasked),
}

impl NodeReply {
    /// Reads an answer; a malformed one is an `invalid` error.
    pub fn read(outcome: pb::job_result::Outcome) -> Result<Self, Error> {
        use pb::job_result::Outcome;
        Ok(match outcome {
            Outcome::Stats(s) => NodeReply::Stats(NodeStats::try_from(s)?),
            Outcome::Error(e) => NodeReply::Refused(e.into()),
            Outcome::Keys(k) => NodeReply::Keys {
                session_id: k.session_id,
                bundle: SignedBundle::try_from(
                    k.bundle
                        .ok_or_else(|| Error::invalid("the node's key answer carries no bundle"))?,
                )?,
            },
            Outcome::Masked(m) => NodeReply::Masked(MaskedAnswer::try_from(m)?),
            Outcome::Confirmed(c) => NodeReply::Confirmed(Confirmation::try_from(c)?),
            Outcome::Unmasked(u) => NodeReply::Unmasked(Unmasked::try_from(u)?),
        })
    }
}

/// A node's signed statement carries the same outcome as its result.
impl From<pb::result_statement::Outcome> for pb::job_result::Outcome {
    fn from(o: pb::result_statement::Outcome) -> Self {
        use pb::result_statement::Outcome as Signed;
        match o {
            Signed::Stats(s) => pb::job_result::Outcome::Stats(s),
            Signed::Error(e) => pb::job_result::Outcome::Error(e),
            Signed::Keys(k) => pb::job_result::Outcome::Keys(k),
            Signed::Masked(m) => pb::job_result::Outcome::Masked(m),
            Signed::Confirmed(c) => pb::job_result::Outcome::Confirmed(c),
            Signed::Unmasked(u) => pb::job_result::Outcome::Unmasked(u),
        }
    }
}

/// What a node signs is the outcome it sends.
impl From<pb::job_result::Outcome> for pb::result_statement::Outcome {
    fn from(o: pb::job_result::Outcome) -> Self {
        use pb::job_result::Outcome as Sent;
        match o {
            Sent::Stats(s) => pb::result_statement::Outcome::Stats(s),
            Sent::Error(e) => pb::result_statement::Outcome::Error(e),
            Sent::Keys(k) => pb::result_statement::Outcome::Keys(k),
            Sent::Masked(m) => pb::result_statement::Outcome::Masked(m),
            Sent::Confirmed(c) => pb::result_statement::Outcome::Confirmed(c),
            Sent::Unmasked(u) => pb::result_statement::Outcome::Unmasked(u),
        }
    }
}
