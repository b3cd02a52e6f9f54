//! What every job of one query shares, and what comes back from the nodes.

use std::sync::Arc;

use plexus_core::pool::NodeOutcome;
use plexus_core::privacy::report::Receipt;
use plexus_core::secagg::steps::{Confirmation, MaskedAnswer, Unmasked};
use plexus_core::secagg::{SignedBundle, Summed};
use plexus_core::{NodeStats, Query, StudyDefinition};
use plexus_proto::v1 as pb;

use crate::state::State;

/// One node's answer to one job, checked ([`super::check`]).
pub(crate) enum Answer {
    Stats(NodeStats, Option<Receipt>),
    /// A node's signed key bundle for a secure aggregation session.
    Keys(SignedBundle),
    /// A node's masked answer for a roster, checked against the job.
    Masked(MaskedAnswer, Option<Receipt>),
    /// A survivor's signature over the survivor list.
    Confirmed(Confirmation),
    /// What a survivor revealed to unmask the sum.
    Unmasked(Unmasked),
    /// Anything else: missing, failed, or refused (with the receipt of what
    /// the node charged when its refusal was decided on a noised release).
    Other(NodeOutcome, Option<Receipt>),
}

impl Answer {
    /// What the node says it charged for this job, if anything.
    pub(crate) fn receipt(&self) -> Option<Receipt> {
        match self {
            Answer::Stats(_, r) | Answer::Masked(_, r) | Answer::Other(_, r) => *r,
            Answer::Keys(..) | Answer::Confirmed(..) | Answer::Unmasked(..) => None,
        }
    }
}

/// What one round of jobs brought back.
pub(crate) struct Round {
    /// Released statistics by node, or under secure aggregation the one
    /// pooled round of a fit under [`secagg::POOLED`].
    pub answers: Vec<(String, NodeStats)>,
    /// Under secure aggregation: the unmasked sum of the survivors.
    pub secure: Option<Summed>,
    /// The nodes whose data the answers rest on.
    pub contributors: Vec<String>,
    pub others: Vec<NodeOutcome>,
    pub receipts: Vec<(String, Receipt)>,
    /// What the researcher should know about how the round came about.
    pub notes: Vec<String>,
    /// The minimum cell size the answers were checked against.
    pub min_cell_size: u32,
}

impl Round {
    /// A round with nothing in it yet, checked against `min_cell_size`.
    pub fn empty(min_cell_size: u32) -> Self {
        Round {
            answers: Vec::new(),
            secure: None,
            contributors: Vec::new(),
            others: Vec::new(),
            receipts: Vec::new(),
            notes: Vec::new(),
            min_cell_size,
        }
    }
}

/// What every job of one query shares.
pub(crate) struct Plan<'a> {
    pub state: &'a Arc<State>,
    pub query_id: &'a str,
    pub study: &'a StudyDefinition,
    pub query: &'a Query,
    pub purpose: pb::Purpose,
    pub wire_query: pb::Query,
    pub query_hash: String,
    pub privacy: pb::JobPrivacy,
    /// The definition the query runs under, which each node checks
    /// against the versions its hospital approved.
    pub definition_hash: String,
    /// The definition itself (JSON, hashing to `definition_hash`) when
    /// the study derives variables, which the nodes read from it.
    pub definition: Vec<u8>,
    /// The network dictionary with the study's derived variables.
    pub dictionary: Arc<plexus_core::Dictionary>,
    /// Every node's receipts so far, summed over the query's jobs.
    pub charges: &'a std::sync::Mutex<Vec<(String, Receipt)>>,
    /// The registered model a `model_performance` scores, sent with every
    /// round.
    pub model: Option<Arc<plexus_core::models::artefact::ModelArtefact>>,
}

/// A 128-bit job id, hex: a UUIDv7 (milliseconds since 1970, then 74
/// random bits). Ids that grow with time are appended at the end of the
/// jobs table's and the audit log's indexes instead of landing on a random
/// page of each: a commit then writes a few pages, not one per job.
pub(super) fn job_id() -> String {
    hex::encode(uuid::Uuid::now_v7().as_bytes())
}

/// Adds one round's receipts to a query's running totals per node (the
/// rounds of a fit, the attempts of a secure aggregation).
pub(crate) fn add_receipts(totals: &mut Vec<(String, Receipt)>, round: &[(String, Receipt)]) {
    for (node, r) in round {
        match totals.iter_mut().find(|(n, _)| n == node) {
            Some((_, t)) => {
                t.charged_rho += r.charged_rho;
                t.spent_rho = r.spent_rho;
                t.budget_rho = r.budget_rho;
                t.cached &= r.cached;
                t.noise = r.noise;
            }
            None => totals.push((node.clone(), *r)),
        }
    }
}
