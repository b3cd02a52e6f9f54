//! Secure aggregation at the coordinator (a study option; the scheme is in
//! `plexus_core::secagg`): a key round whose signed bundles make the
//! roster, then per aggregate a masked round, a confirm round when members
//! dropped, and an unmask round. The coordinator sees masked vectors,
//! encrypted shares, and what the survivors reveal to remove the masks from
//! their sum; it stores and logs nothing else of a node's answer, and
//! learns the survivors' sum only.
//!
//! A member that drops, refuses or fails after the key round is a dropout:
//! as long as enough survivors remain (the threshold t = n − ⌊n/3⌋, at
//! least 3, at least the study's `min_nodes`), the survivors' exact sum is
//! unmasked without it, with no re-run. With fewer, nothing is unmasked and
//! the query fails naming the nodes.

use std::collections::BTreeMap;

use plexus_core::models::fit::Iteration;
use plexus_core::pool::{quorum, quorum_error, NodeOutcome, NodeStatus, PooledResult};
use plexus_core::secagg::steps::{MaskedAnswer, Partition, UnmaskRequest};
use plexus_core::secagg::unmask::{unmask, Masked, Revealed};
use plexus_core::secagg::{
    self, min_survivors, threshold, Roster, SignedBundle, Summed, MIN_NODES, POOLED,
};
use plexus_core::Error;
use plexus_proto::v1 as pb;
use tracing::{info, warn};

use super::plan::{add_receipts, Answer, Plan, Round};

/// An open secure aggregation session: its roster and the next step.
pub(crate) struct Session {
    roster: Roster,
    next_step: u32,
}

fn session_id() -> String {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the system's random source works");
    hex::encode(bytes)
}

fn step_of(session_id: &str, step: pb::secure_aggregation::Step) -> Option<pb::SecureAggregation> {
    Some(pb::SecureAggregation {
        session_id: session_id.to_string(),
        step: Some(step),
    })
}

impl Plan<'_> {
    /// The fewest nodes a secure aggregate of this study may rest on.
    fn secure_quorum(&self) -> usize {
        (self.study.min_nodes as usize).max(MIN_NODES)
    }

    /// Why a secure round cannot go on: too few nodes left, naming the
    /// others and why.
    fn too_few(&self, answered: usize, need: usize, others: &[NodeOutcome]) -> Error {
        let e = quorum_error(answered as u32, others, need as u32);
        Error::new(
            e.code,
            format!(
                "{}; secure aggregation needs at least {need} of the roster's nodes to unmask their sum, so no node's answer was unmasked",
                e.message
            ),
        )
    }

    /// The key round of a new session over `nodes`: its roster is the
    /// nodes that answered with a signed key bundle; the others come back
    /// with why. The key request carries the study's definition (the nodes
    /// read its members from it) and the round's `iteration`, so that a
    /// node can start computing while the roster is being built.
    async fn open_session(
        &self,
        nodes: &[String],
        iteration: Option<&Iteration>,
    ) -> Result<(Session, Vec<NodeOutcome>), Vec<NodeOutcome>> {
        let sid = session_id();
        let definition = serde_json::to_vec(self.study).expect("a study serialises");
        let request = pb::secure_aggregation::Step::KeyRequest(pb::KeyRequest {
            nodes: nodes.to_vec(),
            study_definition: definition,
        });
        let mut members: BTreeMap<String, SignedBundle> = BTreeMap::new();
        let mut others = Vec::new();
        for (node, answer) in self.send(nodes, iteration, step_of(&sid, request)).await {
            match answer {
                Answer::Keys(bundle) => {
                    members.insert(node, bundle);
                }
                Answer::Other(o, _) => others.push(o),
                _ => unreachable!("ask refuses answers of another step"),
            }
        }
        if members.len() < self.secure_quorum() {
            return Err(others);
        }
        let roster = Roster {
            session_id: sid.clone(),
            members: members.into_values().collect(),
        };
        if let Err(e) = roster.validate() {
            warn!(error = %e, "the roster built from the key round is not valid");
            return Err(others);
        }
        info!(session = %sid, nodes = roster.members.len(), "secure aggregation roster ready");
        Ok((
            Session {
                roster,
                next_step: 1,
            },
            others,
        ))
    }

    /// One securely aggregated round over `nodes`: the key round when no
    /// session is open, then the masked round over the session's roster,
    /// and the unmasking of the survivors' sum. With `recover`, members
    /// lost after the key round are dropouts whose masks are removed with
    /// the survivors' help; without, a lost member ends the round with
    /// nothing unmasked (the lost come back among the others). After a
    /// dropout the session is closed: the next round opens one over the
    /// survivors.
    pub(crate) async fn secure_round(
        &self,
        session: &mut Option<Session>,
        nodes: &[String],
        iteration: Option<&Iteration>,
        recover: bool,
    ) -> Result<Round, Error> {
        let dict = &self.dictionary;
        let len = secagg::vector_len(&self.query.analysis, dict)?;
        let mut round = Round::empty(self.state.config.coordinator.min_cell_size);
        if session.is_none() {
            if nodes.len() < self.secure_quorum() {
                return Err(self.too_few(nodes.len(), self.secure_quorum(), &[]));
            }
            match self.open_session(nodes, iteration).await {
                Ok((opened, refused)) => {
                    round.others.extend(refused);
                    *session = Some(opened);
                }
                Err(refused) => {
                    let answered = nodes.len() - refused.len();
                    return Err(self.too_few(answered, self.secure_quorum(), &refused));
                }
            }
        }
        let open = session.as_mut().expect("opened above");
        let step = open.next_step;
        open.next_step += 1;
        let roster = open.roster.clone();
        let sid = roster.session_id.clone();
        let members = roster.node_ids();
        let n = members.len();

        // Masked round.
        let request = pb::secure_aggregation::Step::Mask(pb::MaskRequest {
            roster: Some(pb::Roster::from(&roster)),
            step,
        });
        let mut masked: BTreeMap<String, MaskedAnswer> = BTreeMap::new();
        let mut lost = Vec::new();
        for (node, answer) in self.send(&members, iteration, step_of(&sid, request)).await {
            match answer {
                Answer::Masked(m, receipt) => {
                    if let Some(r) = receipt {
                        add_receipts(&mut round.receipts, &[(node.clone(), r)]);
                    }
                    masked.insert(node, m);
                }
                Answer::Other(o, receipt) => {
                    // A refusal decided on the node's noised release was
                    // charged: it counts, and the node is a dropout.
                    if let Some(r) = receipt {
                        add_receipts(&mut round.receipts, &[(node.clone(), r)]);
                    }
                    lost.push(o)
                }
                _ => unreachable!("ask refuses answers of another step"),
            }
        }
        let survivors: Vec<String> = masked.keys().cloned().collect();
        let dropped: Vec<String> = lost.iter().map(|o| o.node.clone()).collect();
        let need = min_survivors(n, self.study.min_nodes);
        if !lost.is_empty() && (!recover || survivors.len() < need) {
            *session = None;
            warn!(session = %sid, lost = %dropped.join(", "), "secure aggregation incomplete; nothing unmasked");
            if !recover {
                round.contributors = survivors;
                round.others.extend(lost);
                return Ok(round);
            }
            round.others.extend(lost);
            return Err(self.too_few(survivors.len(), need, &round.others));
        }

        // Confirm round, only with dropouts: the survivors sign the list.
        let partition = Partition::new(step, survivors.clone(), dropped.clone())?;
        let mut confirmations = BTreeMap::new();
        if !dropped.is_empty() {
            let request =
                pb::secure_aggregation::Step::Confirm(pb::ConfirmRequest::from(&partition));
            for (node, answer) in self
                .send(&survivors, iteration, step_of(&sid, request))
                .await
            {
                match answer {
                    Answer::Confirmed(c) => {
                        confirmations.insert(node, c.signature);
                    }
                    Answer::Other(o, _) => {
                        warn!(node = %o.node, detail = ?o.detail, "a survivor did not sign the survivor list")
                    }
                    _ => unreachable!("ask refuses answers of another step"),
                }
            }
            let t = threshold(n);
            if confirmations.len() < t {
                *session = None;
                round.others.extend(lost);
                return Err(Error::unavailable(format!(
                    "only {} of the {} survivors of the secure aggregation signed the survivor list and unmasking without {} needs {t}; no node's answer was unmasked",
                    confirmations.len(),
                    survivors.len(),
                    dropped.join(", ")
                )));
            }
        }

        // Unmask round: each survivor gets the shares addressed to it.
        let requests: BTreeMap<String, pb::SecureAggregation> = survivors
            .iter()
            .map(|w| {
                let request = UnmaskRequest {
                    partition: partition.clone(),
                    confirmations: confirmations.clone(),
                    shares: masked
                        .iter()
                        .filter_map(|(u, m)| Some((u.clone(), m.shares.get(w)?.clone())))
                        .collect(),
                };
                let step = pb::secure_aggregation::Step::Unmask(pb::UnmaskRequest::from(&request));
                (w.clone(), step_of(&sid, step).expect("a step"))
            })
            .collect();
        let mut revealed: BTreeMap<String, Revealed> = BTreeMap::new();
        for (node, answer) in self
            .send_each(&survivors, iteration, |w| requests.get(w).cloned())
            .await
        {
            match answer {
                Answer::Unmasked(u) => {
                    revealed.insert(node, u.revealed);
                }
                Answer::Other(o, _) => {
                    warn!(node = %o.node, detail = ?o.detail, "a survivor did not answer the unmask step")
                }
                _ => unreachable!("ask refuses answers of another step"),
            }
        }
        let vectors: BTreeMap<String, Masked> = masked
            .into_iter()
            .map(|(node, m)| {
                (
                    node,
                    Masked {
                        vector: m.vector,
                        commitment: m.commitment,
                    },
                )
            })
            .collect();
        let sum = match unmask(&roster, step, &vectors, &revealed, len) {
            Ok(sum) => sum,
            Err(e) => {
                *session = None;
                round.others.extend(lost);
                return Err(Error::new(
                    e.code,
                    format!("{}; no node's answer was unmasked", e.message),
                ));
            }
        };
        let summed = Summed::decode(&self.query.analysis, dict, &sum, survivors.len())?;
        let k = round.min_cell_size;
        if let Some(model) = summed.model(k)? {
            round.answers.push((POOLED.to_string(), model));
        }
        round.notes.push(format!(
            "secure aggregation: the coordinator unmasked only the sum of the masked answers of {} nodes ({}), never a node's own figures",
            survivors.len(),
            survivors.join(", ")
        ));
        if !dropped.is_empty() {
            round.notes.push(format!(
                "secure aggregation: {} dropped after the key round; the survivors signed the list of survivors and removed the dropped nodes' masks, so the sum of the survivors is exact, with no re-run",
                dropped.join(", ")
            ));
            round.others.extend(lost.into_iter().map(|mut o| {
                o.detail = Some(format!(
                    "{}; dropped from the secure aggregation after the key round",
                    o.detail.as_deref().unwrap_or("no answer")
                ));
                o
            }));
            *session = None;
        }
        let withheld = summed.withheld_whole();
        if withheld > 0 {
            round.notes.push(format!(
                "{withheld} of the {} nodes withheld their whole answer under their disclosure control; under secure aggregation nobody can tell which",
                survivors.len()
            ));
        }
        round.secure = Some(summed);
        round.contributors = survivors;
        Ok(round)
    }
}

/// The pooled result of a one-shot analysis from a complete secure round:
/// every survivor is shown as answered, with no figure of its own.
pub(crate) fn pool_secure(plan: &Plan<'_>, round: Round) -> Result<PooledResult, Error> {
    let dict = &plan.dictionary;
    let k = round.min_cell_size;
    let summed = round
        .secure
        .ok_or_else(|| Error::internal("a secure round without a sum"))?;
    let statuses: Vec<(String, NodeStatus)> = round
        .contributors
        .iter()
        .map(|n| (n.clone(), NodeStatus::Answered))
        .collect();
    let mut provenance = quorum(&statuses, round.others, plan.study.min_nodes, k)?;
    provenance.notes = round.notes;
    let value = summed.pooled(&plan.query.analysis, dict, k)?;
    Ok(PooledResult {
        value,
        provenance,
        by_site: Vec::new(),
        privacy: None,
    })
}
