//! Secure aggregation at the coordinator (a study option; the scheme is in
//! `plexus_core::secagg`): a key round, a roster of the nodes that sent
//! keys, a masked round, and the sum. The coordinator sees masked vectors
//! and their sum only; it stores and logs nothing else of a node's answer.
//!
//! All or nothing: when a roster node does not answer the masked round
//! (drops, refuses, fails), the others' masked vectors cannot be unmasked
//! and are dropped. The round starts again with a new session (fresh keys)
//! over the nodes that did answer, while at least 3 remain and the study's
//! `min_nodes` allows; otherwise it fails naming the nodes. A node's second
//! answer to the same query comes from its privacy ledger's cache, so a
//! re-run costs no budget twice.

use plexus_core::models::fit::Iteration;
use plexus_core::pool::{pool_value, quorum, quorum_error, NodeOutcome, NodeStatus, PooledResult};
use plexus_core::secagg::{self, add_into, Contribution, Roster, MIN_NODES, POOLED};
use plexus_core::{Error, NodeStats};
use plexus_proto::v1 as pb;
use tracing::{info, warn};

use crate::query::{add_receipts, Answer, Plan, Round};

/// An open secure aggregation session: its roster, the largest minimum
/// cell size the roster's nodes asked for, and the next step to mask.
pub(crate) struct Session {
    roster: Roster,
    min_cell_size: u32,
    next_step: u32,
}

fn session_id() -> String {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the system's random source works");
    hex::encode(bytes)
}

impl Plan<'_> {
    /// The fewest nodes a secure aggregate of this study may rest on.
    fn secure_quorum(&self) -> usize {
        (self.study.min_nodes as usize).max(MIN_NODES)
    }

    /// Why a secure round cannot go on: too few nodes left, naming the
    /// others and why.
    fn too_few(&self, answered: usize, others: &[NodeOutcome]) -> Error {
        let e = quorum_error(answered as u32, others, self.secure_quorum() as u32);
        Error::new(
            e.code,
            format!(
                "{}; secure aggregation needs every roster node's answer and at least {MIN_NODES} nodes, so no node's answer was unmasked",
                e.message
            ),
        )
    }

    /// The key round of a new session over `nodes`: its roster is the
    /// nodes that answered with keys; the others come back with why. The
    /// key request carries the round's `iteration` too, so that a node can
    /// start computing while the roster is being built.
    async fn open_session(
        &self,
        nodes: &[String],
        iteration: Option<&Iteration>,
    ) -> Result<(Session, Vec<NodeOutcome>), Vec<NodeOutcome>> {
        let session_id = session_id();
        let request = pb::SecureAggregation {
            session_id: session_id.clone(),
            step: Some(pb::secure_aggregation::Step::KeyRequest(pb::KeyRequest {
                nodes: nodes.to_vec(),
            })),
        };
        let mut keys = std::collections::BTreeMap::new();
        let mut others = Vec::new();
        let mut k = self.state.config.coordinator.min_cell_size;
        for (node, answer) in self.send(nodes, iteration, Some(request)).await {
            match answer {
                Answer::Keys(public, node_k) => {
                    k = k.max(node_k);
                    keys.insert(node, public);
                }
                Answer::Other(o, _) => others.push(o),
                Answer::Stats(..) | Answer::Masked(..) => {
                    unreachable!("ask refuses answers of another step")
                }
            }
        }
        // A node that sent keys has them for every node asked; the roster
        // keeps only the keys for the nodes that sent theirs.
        let members: Vec<String> = keys.keys().cloned().collect();
        for public in keys.values_mut() {
            public.retain(|peer, _| members.contains(peer));
        }
        if members.len() < self.secure_quorum() {
            return Err(others);
        }
        let roster = Roster::new(&session_id, keys);
        roster.validate().map_err(|e| {
            warn!(error = %e, "the roster built from the key round is not valid");
            others.clone()
        })?;
        info!(session = %session_id, nodes = members.len(), "secure aggregation roster ready");
        Ok((
            Session {
                roster,
                min_cell_size: k,
                next_step: 1,
            },
            others,
        ))
    }

    /// One securely aggregated round over `nodes`: the key round when no
    /// session is open, then the masked round over the session's roster.
    /// Every roster node answered: the answers are the one pooled answer,
    /// with disclosure control applied to the pooled sums. One did not:
    /// with `rerun` the round starts again with a new session over the
    /// nodes still answering; without, it comes back with no answers, the
    /// lost nodes among the others, and the session closed.
    pub(crate) async fn secure_round(
        &self,
        session: &mut Option<Session>,
        nodes: &[String],
        iteration: Option<&Iteration>,
        rerun: bool,
    ) -> Result<Round, Error> {
        let dict = &self.state.dictionary;
        let len = secagg::vector_len(&self.query.analysis, dict)?;
        let mut candidates = nodes.to_vec();
        let mut round = Round::empty(self.state.config.coordinator.min_cell_size);
        for attempt in 1.. {
            if candidates.len() < self.secure_quorum() {
                return Err(self.too_few(candidates.len(), &round.others));
            }
            if session.is_none() {
                match self.open_session(&candidates, iteration).await {
                    Ok((opened, refused)) => {
                        round.others.extend(refused);
                        *session = Some(opened);
                    }
                    Err(refused) => {
                        let answered = candidates.len() - refused.len();
                        round.others.extend(refused);
                        return Err(self.too_few(answered, &round.others));
                    }
                }
            }
            let open = session.as_mut().expect("opened above");
            let step = open.next_step;
            open.next_step += 1;
            let roster = open.roster.node_ids();
            let request = pb::SecureAggregation {
                session_id: open.roster.session_id.clone(),
                step: Some(pb::secure_aggregation::Step::Mask(pb::MaskRequest {
                    roster: Some(pb::Roster::from(&open.roster)),
                    step,
                })),
            };
            let mut sum = vec![0u128; len];
            let mut answered = Vec::new();
            let mut lost = Vec::new();
            for (node, answer) in self.send(&roster, iteration, Some(request)).await {
                match answer {
                    Answer::Masked(vector, receipt) => {
                        add_into(&mut sum, &vector);
                        if let Some(r) = receipt {
                            // Per node over the attempts: what a dropped
                            // attempt charged counts, once.
                            add_receipts(&mut round.receipts, &[(node.clone(), r)]);
                        }
                        answered.push(node);
                    }
                    Answer::Other(o, _) => lost.push(o),
                    Answer::Stats(..) | Answer::Keys(..) => {
                        unreachable!("ask refuses answers of another step")
                    }
                }
            }
            if lost.is_empty() {
                let k = open.min_cell_size;
                let pooled = Contribution::decode(&self.query.analysis, dict, &sum)?.disclose(k)?;
                round.notes.push(format!(
                    "secure aggregation: the coordinator added the masked answers of {} nodes ({}) and read only their sum, never a node's own figures; the minimum cell size {k} and secondary suppression were applied to the pooled sums",
                    roster.len(),
                    roster.join(", ")
                ));
                round.answers.push((POOLED.to_string(), pooled));
                round.contributors = roster;
                round.min_cell_size = k;
                return Ok(round);
            }
            // Nothing can be unmasked: the session's masks no longer cancel.
            *session = None;
            let names: Vec<String> = lost
                .iter()
                .map(|o| match &o.detail {
                    Some(d) => format!("{} ({d})", o.node),
                    None => o.node.clone(),
                })
                .collect();
            warn!(attempt, lost = %names.join(", "), "secure aggregation incomplete; nothing unmasked");
            if !rerun {
                round.contributors = answered;
                round.others.extend(lost);
                return Ok(round);
            }
            round.notes.push(format!(
                "secure aggregation attempt {attempt}: {} did not answer, so no node's answer was unmasked; it ran again with fresh keys over {}",
                names.join(", "),
                answered.join(", ")
            ));
            round.others.extend(lost.into_iter().map(|mut o| {
                o.detail = Some(format!(
                    "{}; left out of secure aggregation after attempt {attempt}",
                    o.detail.as_deref().unwrap_or("no answer")
                ));
                o
            }));
            candidates = answered;
        }
        unreachable!("the loop returns")
    }
}

/// The pooled result of a one-shot analysis from a complete secure round:
/// every roster node is shown as answered, with no figure of its own.
pub(crate) fn pool_secure(plan: &Plan<'_>, round: Round) -> Result<PooledResult, Error> {
    let dict = &plan.state.dictionary;
    let k = round.min_cell_size;
    if let [(_, NodeStats::Summary(None))] = round.answers.as_slice() {
        let plexus_core::Analysis::Summary { variable } = &plan.query.analysis else {
            return Err(Error::internal("a summary for another analysis"));
        };
        return Err(Error::disclosure(format!(
            "the pooled summary of \"{variable}\" rests on fewer than {k} patients with a value (the minimum cell size), so it is suppressed"
        )));
    }
    let statuses: Vec<(String, NodeStatus)> = round
        .contributors
        .iter()
        .map(|n| (n.clone(), NodeStatus::Answered))
        .collect();
    let mut provenance = quorum(&statuses, round.others, plan.study.min_nodes, k)?;
    provenance.notes = round.notes;
    let mut value = pool_value(&plan.query.analysis, dict, &round.answers, k)?;
    secagg::unlabel(&mut value);
    Ok(PooledResult {
        value,
        provenance,
        by_site: Vec::new(),
        privacy: None,
    })
}
