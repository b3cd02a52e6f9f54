//! The job runner's side of each step of a session: make and sign keys,
//! check the roster and mask the clear release, sign the survivor list,
//! reveal what unmasking the survivors' sum needs and nothing more.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use plexus_core::secagg::keys::{bundle_message, survivors_message};
use plexus_core::secagg::shares::{commitment, new_seed, split, SHARE_LEN};
use plexus_core::secagg::steps::{MaskedAnswer, Partition, UnmaskRequest, Unmasked};
use plexus_core::secagg::unmask::Revealed;
use plexus_core::secagg::{encode, min_survivors, threshold, KeyBundle, Roster};
use plexus_core::{Analysis, Error, NodeStats, Result};
use plexus_proto::v1 as pb;

use super::sessions::{accept_roster, Pending, Session, SessionStudy};
use super::{binding, fingerprint, MaskFor};
use crate::job::{Checked, JobRunner, Outcome, Reply};

/// What a held result needs to be masked once the data steward approves
/// it: the session and step (whose keys the running node holds in memory),
/// the contribution it commits, the analysis and the minimum cell size
/// its release was checked against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldMask {
    pub session_id: String,
    pub step: u32,
    pub contribution: String,
    pub min_cell_size: u32,
}

impl HeldMask {
    pub(crate) fn of(m: &MaskFor) -> Self {
        HeldMask {
            session_id: m.session_id.clone(),
            step: m.step,
            contribution: m.contribution.clone(),
            min_cell_size: m.k,
        }
    }

    pub(crate) fn mask_for(&self, analysis: Analysis, deadline_ms: i64) -> MaskFor {
        MaskFor {
            session_id: self.session_id.clone(),
            step: self.step,
            contribution: self.contribution.clone(),
            deadline_ms,
            analysis,
            k: self.min_cell_size,
        }
    }
}

fn locked(session: &std::sync::Mutex<Session>) -> std::sync::MutexGuard<'_, Session> {
    session.lock().expect("session lock")
}

impl JobRunner {
    /// The key round: after the job's own checks (done) and the budget's,
    /// the study's definition as the job sends it (it must hash to the
    /// approved definition the job names), fresh key pairs for every other
    /// node named, and the bundle of their public halves signed with the
    /// node's certificate key. The computation starts now, so that it
    /// overlaps the key round; only a masked job of the session asking the
    /// same uses it.
    pub(crate) fn secure_keys(
        &self,
        job: &pb::Job,
        checked: &Checked,
        session_id: &str,
        nodes: &[String],
        definition: &[u8],
        now_ms: i64,
    ) -> Outcome {
        let me = &self.config.node.id;
        let (definition, hash) = crate::job::sent_definition(
            job,
            definition,
            &format!("sent with the key request of session {session_id}"),
        )?;
        let study = SessionStudy {
            study_id: definition.id,
            definition_hash: hash,
            nodes: definition.nodes.into_iter().collect(),
            min_nodes: definition.min_nodes,
        };
        let today = chrono::Utc::now().date_naive();
        let mut cached = false;
        if let crate::job::Protection::Private { rho, budget } = checked.protection {
            let key = self.cache_key(job, checked, today, rho)?;
            cached = self.ledger.cached(&key).is_some();
            if !cached {
                self.ledger.affords(&job.study_id, budget, rho)?;
            }
        }
        let bind = binding(job);
        let public = self
            .sessions
            .make_keys(session_id, me, nodes, study.clone(), bind, now_ms)?;
        let bundle = KeyBundle {
            session_id: session_id.to_string(),
            study_id: study.study_id,
            definition_hash: study.definition_hash,
            binding: bind,
            node: me.clone(),
            keys: public,
        };
        let bytes = prost::Message::encode_to_vec(&pb::KeyBundle::from(&bundle));
        let (signature, certificate) = self.signer.sign_with_certificate(&bundle_message(&bytes));
        let session = self.sessions.get(session_id, now_ms)?;
        locked(&session).own_bundle = bytes.clone();
        if !cached {
            let (data, query, purpose, scope) = (
                self.data.clone(),
                checked.query.clone(),
                checked.purpose.clone(),
                checked.scope.clone(),
            );
            let (limits, iteration) = (
                self.limits(checked, &job.study_id),
                checked.iteration.clone(),
            );
            let task = tokio::spawn(async move {
                data.compute_apart(&scope, &query, &purpose, today, limits, iteration.as_ref())
                    .await
            });
            let pending = Pending {
                fingerprint: fingerprint(job),
                today,
                task: tokio_util::task::AbortOnDropHandle::new(task),
            };
            self.sessions.set_pending(session_id, pending);
        }
        Ok((
            Reply::Keys(pb::KeyShare {
                session_id: session_id.to_string(),
                bundle: Some(pb::SignedKeyBundle {
                    bundle: bytes,
                    signature,
                    certificate,
                }),
            }),
            None,
        ))
    }

    /// A masked job's roster: every member checked (see `members`) before
    /// keys are agreed, the step taken once, and the contribution refused
    /// when it is committed to other hospitals than this roster's.
    pub(crate) fn secure_roster(
        &self,
        job: &pb::Job,
        checked: &Checked,
        roster: &Roster,
        step: u32,
        contribution: String,
        now_ms: i64,
    ) -> Result<MaskFor> {
        let sid = &roster.session_id;
        let session = self.sessions.get(sid, now_ms)?;
        let mut s = locked(&session);
        same_question(job, &s, sid)?;
        let me = self.config.node.id.clone();
        let trust = self.signer.trust();
        accept_roster(&mut s, roster, |s, r| {
            super::members::check(&me, s, r, &trust, now_ms)
        })?;
        let state = s.steps.entry(step).or_default();
        if state.taken {
            return Err(Error::policy(format!(
                "this node already masked step {step} of secure aggregation session {sid}; masking again would give away the difference of two answers, so it is refused"
            )));
        }
        self.committed_to(&contribution, &roster.node_ids(), sid)?;
        state.taken = true;
        Ok(MaskFor {
            session_id: sid.clone(),
            step,
            contribution,
            deadline_ms: job.deadline_unix_ms,
            analysis: checked.query.analysis.clone(),
            k: checked.rules.k,
        })
    }

    /// Refuses when the contribution under `key` is committed to other
    /// hospitals than `members`.
    fn committed_to(&self, key: &str, members: &[String], sid: &str) -> Result<()> {
        match self.commitments.get(key) {
            Some(set) if set != members => Err(Error::policy(format!(
                "this node already contributed this question's answer to a secure sum over {}; a sum over other hospitals ({}, session {sid}) would let the two be differenced, so it is refused",
                set.join(", "),
                members.join(", ")
            ))),
            _ => Ok(()),
        }
    }

    /// The clear release `stats` masked for the session: checked as the
    /// coordinator checks a clear answer, encoded, committed on disk to the
    /// roster's hospitals, its fresh self-mask seed shared t-of-n with each
    /// share encrypted to its holder, then masked. Never after the job's
    /// deadline.
    pub(crate) fn mask_release(&self, stats: &NodeStats, m: &MaskFor) -> Result<Reply> {
        #[cfg(feature = "fault-injection")]
        if self.drop_masked_jobs {
            return Err(Error::internal(crate::job::DROPPED));
        }
        stats.check(&m.analysis, &self.dictionary, m.k)?;
        let plain = encode(stats, &m.analysis, &self.dictionary)?;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let session = self.sessions.get(&m.session_id, now_ms)?;
        let mut s = locked(&session);
        let (keys, roster) = match (s.pair_keys(), s.roster.clone()) {
            (Some(k), Some(r)) => (k, r),
            _ => {
                return Err(Error::internal(
                    "a masked job without an accepted roster (checked)",
                ))
            }
        };
        let me = &self.config.node.id;
        let members = roster.node_ids();
        self.committed_to(&m.contribution, &members, &m.session_id)?;
        self.commitments
            .commit(&m.contribution, &members, &m.session_id)?;
        let n = members.len();
        let seed = new_seed()?;
        let mut shares = BTreeMap::new();
        let mut own = Vec::new();
        for (holder, share) in members.iter().zip(split(&seed, threshold(n), n)?) {
            if holder == me {
                own = share;
            } else {
                shares.insert(holder.clone(), keys.encrypt_share(holder, m.step, &share)?);
            }
        }
        let answer = MaskedAnswer {
            session_id: m.session_id.clone(),
            roster_digest: keys.digest(),
            step: m.step,
            vector: keys.mask(m.step, &plain, &seed)?,
            shares,
            commitment: commitment(&m.session_id, m.step, me, &seed),
        };
        if chrono::Utc::now().timestamp_millis() >= m.deadline_ms {
            return Err(Error::unavailable(
                "the job's deadline passed before the masked answer was ready, so it is not sent: the coordinator has counted this node as dropped",
            ));
        }
        s.steps.entry(m.step).or_default().masked = Some((own, m.contribution.clone()));
        Ok(Reply::Masked(pb::MaskedStats::from(&answer)))
    }

    /// Signs the survivor list of a step this node masked, once: the
    /// contribution is then committed to the survivors alone.
    pub(crate) fn secure_confirm(
        &self,
        job: &pb::Job,
        sid: &str,
        p: Partition,
        now_ms: i64,
    ) -> Outcome {
        let session = self.sessions.get(sid, now_ms)?;
        let mut s = locked(&session);
        same_question(job, &s, sid)?;
        let roster = self.partition_fits(&s, sid, &p)?;
        let step = p.step;
        let state = s.steps.entry(step).or_default();
        let Some((_, key)) = state.masked.clone() else {
            return Err(not_masked(step, sid));
        };
        if state.unmasked {
            return Err(Error::policy(format!(
                "this node already answered the unmask request of step {step} of session {sid}; refused"
            )));
        }
        if let Some(signed) = &state.confirmed {
            if *signed != p.survivors {
                return Err(signed_another(step, sid, signed));
            }
        }
        match self.commitments.get(&key) {
            Some(set) if set == roster.node_ids() || set == p.survivors => {}
            Some(set) => {
                return Err(Error::policy(format!(
                    "this node's answer to step {step} is committed to a sum over {}, and the survivor list {} is another; refused",
                    set.join(", "),
                    p.survivors.join(", ")
                )))
            }
            None => return Err(Error::internal("a masked step without a commitment")),
        }
        self.commitments.commit(&key, &p.survivors, sid)?;
        state.confirmed = Some(p.survivors.clone());
        let message = survivors_message(sid, &roster.digest(), step, &p.survivors);
        let (signature, _) = self.signer.sign_with_certificate(&message);
        Ok((
            Reply::Confirmed(pb::Confirmation {
                session_id: sid.to_string(),
                step,
                survivors: p.survivors,
                signature,
            }),
            None,
        ))
    }

    /// Answers one unmask request per step: for each survivor its share of
    /// that survivor's self-mask seed, for each dropped member the pair seed
    /// of this step; never both for one node. With dropped members, only
    /// for a survivor list that at least t survivors signed.
    pub(crate) fn secure_unmask(
        &self,
        job: &pb::Job,
        sid: &str,
        request: UnmaskRequest,
        now_ms: i64,
    ) -> Outcome {
        let session = self.sessions.get(sid, now_ms)?;
        let mut s = locked(&session);
        same_question(job, &s, sid)?;
        let me = self.config.node.id.clone();
        let p = &request.partition;
        let step = p.step;
        let keys = s.pair_keys().ok_or_else(|| not_masked(step, sid))?;
        {
            let state = s.steps.entry(step).or_default();
            if state.masked.is_none() {
                return Err(not_masked(step, sid));
            }
            if state.unmasked {
                return Err(Error::policy(format!(
                    "this node already answered an unmask request for step {step} of session {sid}; a second one (another survivor list) could unmask a node, so it is refused"
                )));
            }
            // One request per step, whatever becomes of it.
            state.unmasked = true;
        }
        let roster = self.partition_fits(&s, sid, p)?;
        let state = s.steps.get(&step).cloned().unwrap_or_default();
        let Some((own, key)) = state.masked else {
            return Err(not_masked(step, sid));
        };
        if let Some(signed) = &state.confirmed {
            if *signed != p.survivors {
                return Err(signed_another(step, sid, signed));
            }
        }
        let members = roster.node_ids();
        let committed = self.commitments.get(&key);
        if p.dropped.is_empty() {
            if committed.as_deref() != Some(members.as_slice()) {
                return Err(Error::policy(format!(
                    "this node's answer to step {step} of session {sid} is committed to a sum over {}, not over the whole roster; refused",
                    committed.unwrap_or_default().join(", ")
                )));
            }
        } else {
            let n = members.len();
            let t = threshold(n);
            let message = survivors_message(sid, &roster.digest(), step, &p.survivors);
            let valid = request
                .confirmations
                .iter()
                .filter(|(signer, signature)| {
                    p.survivors.contains(*signer)
                        && roster.member(signer).is_some_and(|m| {
                            plexus_tls::verify_by_certificate(&m.certificate, &message, signature)
                                .is_ok()
                        })
                })
                .count();
            if valid < t {
                return Err(Error::policy(format!(
                    "only {valid} survivors signed the survivor list of step {step} of session {sid}, and revealing the masks shared with dropped nodes needs {t} of the {n}; refused"
                )));
            }
            match &committed {
                Some(set) if *set == members || *set == p.survivors => {}
                _ => {
                    return Err(Error::policy(format!(
                        "this node's answer to step {step} of session {sid} is committed to a sum over {}, and the survivor list {} is another; refused",
                        committed.unwrap_or_default().join(", "),
                        p.survivors.join(", ")
                    )))
                }
            }
            self.commitments.commit(&key, &p.survivors, sid)?;
        }
        let mine = roster.holder_id(&me);
        let mut revealed = Revealed::default();
        for v in &p.survivors {
            if *v == me {
                revealed.shares.insert(me.clone(), own.clone());
                continue;
            }
            let Some(c) = request.shares.get(v) else {
                continue;
            };
            let share = keys.decrypt_share(v, step, c)?;
            if share.len() != SHARE_LEN || share.first().copied() != mine {
                return Err(Error::policy(format!(
                    "the share {v} encrypted for this node at step {step} is not this node's share; refused"
                )));
            }
            revealed.shares.insert(v.clone(), share);
        }
        for v in &p.dropped {
            revealed.seeds.insert(v.clone(), keys.pair_seed(v, step)?);
        }
        let answer = Unmasked {
            session_id: sid.to_string(),
            step,
            revealed,
        };
        Ok((Reply::Unmasked(pb::Unmasked::from(&answer)), None))
    }

    /// The session's roster, when `p` splits exactly its members, names
    /// this node a survivor, and leaves enough survivors.
    fn partition_fits(
        &self,
        s: &Session,
        sid: &str,
        p: &Partition,
    ) -> Result<std::sync::Arc<Roster>> {
        let me = &self.config.node.id;
        let roster = s.roster.clone().ok_or_else(|| not_masked(p.step, sid))?;
        let members = roster.node_ids();
        let mut named: Vec<String> = p.survivors.iter().chain(&p.dropped).cloned().collect();
        named.sort();
        if named != members {
            return Err(Error::policy(format!(
                "the survivors and the dropped of step {} are not the members of session {sid}'s roster ({}); refused",
                p.step,
                members.join(", ")
            )));
        }
        if !p.survivors.contains(me) {
            return Err(Error::policy(format!(
                "step {} of session {sid} names this node ({me}) as dropped; refused",
                p.step
            )));
        }
        let need = min_survivors(members.len(), s.study.min_nodes);
        if p.survivors.len() < need {
            return Err(Error::policy(format!(
                "step {} of session {sid} has {} survivors of {} and needs at least {need} (the threshold, 3, and the study's min_nodes); refused",
                p.step,
                p.survivors.len(),
                members.len()
            )));
        }
        Ok(roster)
    }
}

/// Refuses a job of the session that asks another question than the one
/// its keys were made for.
fn same_question(job: &pb::Job, s: &Session, sid: &str) -> Result<()> {
    if binding(job) != s.binding || job.study_definition_hash != s.study.definition_hash {
        return Err(Error::policy(format!(
            "this job asks another question or study definition than the one secure aggregation session {sid} was opened for; refused"
        )));
    }
    Ok(())
}

fn not_masked(step: u32, sid: &str) -> Error {
    Error::policy(format!(
        "this node did not mask step {step} of secure aggregation session {sid}; refused"
    ))
}

fn signed_another(step: u32, sid: &str, signed: &[String]) -> Error {
    Error::policy(format!(
        "this node already signed another survivor list for step {step} of session {sid} ({}); refused",
        signed.join(", ")
    ))
}
