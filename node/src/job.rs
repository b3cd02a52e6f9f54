//! Running one job at the hospital: the node's own checks first (the
//! study and its approved definition, deadline, a well-formed query against
//! its own dictionary, the hospital's narrowing), then the computation on
//! consenting patients, then disclosure control, then the local log.
//! Whatever happens, the answer is an aggregate or an error; for a study
//! under review, the aggregate waits for the data steward first.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, info_span, warn, Instrument};

use plexus_core::disclosure::{apply, effective_k, Rules};
use plexus_core::models::fit::Iteration;
use plexus_core::models::survival::GroupStats;
use plexus_core::privacy::release::{releasable, release_for, Release};
use plexus_core::privacy::report::Receipt;
use plexus_core::secagg;
use plexus_core::{Cell, Dictionary, Error, NodeStats, Purpose, Query};
use plexus_proto::job::{JobRequest, SecureStep};
use plexus_proto::v1 as pb;

use crate::config::NodeConfig;
use crate::data::{DataSource, Limits, StudyScope};
use crate::envelope::{self, SeenJobs};
use crate::ledger::{Answer, Kept, Ledger};
use crate::log::{JobLog, LogEntry};
use crate::policy;
use crate::record;
use crate::review::ReviewQueue;
use crate::secagg::{fingerprint, Commitments, HeldMask, MaskFor, Sessions};

pub struct JobRunner {
    pub config: Arc<NodeConfig>,
    pub dictionary: Arc<Dictionary>,
    pub data: Arc<DataSource>,
    pub log: Arc<JobLog>,
    pub ledger: Arc<Ledger>,
    /// The coordinator's pinned job-signing key.
    pub verifying_key: plexus_tls::VerifyingKey,
    /// Job ids taken so far, against replays.
    pub seen: Arc<SeenJobs>,
    /// Signs every result with the node's TLS key (the current connection's).
    pub signer: Arc<crate::credentials::ResultSigner>,
    /// Results of the studies `policy.review` names wait here for the data steward.
    pub review: ReviewQueue,
    /// Delay before each job: fault-injection tests use it to kill a node mid-job.
    #[cfg(feature = "fault-injection")]
    pub job_delay: Duration,
    /// How many more jobs wait `job_delay` (`None`: all of them).
    #[cfg(feature = "fault-injection")]
    pub slow_jobs_left: Option<std::sync::atomic::AtomicU32>,
    /// Fault injection: after the ledger debit, drop the job unanswered,
    /// as if the node died between debit and release.
    #[cfg(feature = "fault-injection")]
    pub crash_after_debit: bool,
    /// Secure aggregation sessions this node made keys for.
    pub sessions: Arc<Sessions>,
    /// The hospitals each secure aggregation contribution may be summed with.
    pub commitments: Arc<Commitments>,
    /// Fault injection: answer the key round of secure aggregation, then
    /// compute each masked job and drop it unanswered, as if the node died
    /// mid-job.
    #[cfg(feature = "fault-injection")]
    pub drop_masked_jobs: bool,
    /// Fault injection: how far this node's clock is off (see
    /// [`crate::RunOptions::clock_skew_ms`]).
    #[cfg(feature = "fault-injection")]
    pub clock_skew_ms: i64,
    pub metrics: Arc<crate::metrics::NodeMetrics>,
    /// `/readyz`: connected to the coordinator, the data source healthy
    /// (a data source that cannot read calls `readiness.set_degraded`) and
    /// the ledger and job log writable ([`STORAGE_CHECK`]).
    pub readiness: plexus_ops::Readiness,
    /// Outcomes the job log could not take when they happened (a full
    /// disk), written once it can.
    pub unlogged: std::sync::Mutex<Vec<LogEntry>>,
    /// The coordinator's audit log as this node witnessed it.
    pub witness: Arc<crate::witness::Witness>,
}

/// The readiness check for this node's clock against the coordinator's.
pub const CLOCK_CHECK: &str = "clock";
/// The readiness check the node's records own: failing while the ledger
/// or the job log cannot be written.
pub const STORAGE_CHECK: &str = "storage";

/// How this node protects one job's answer.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Protection {
    /// An exact study the hospital accepts as such.
    Exact,
    /// Differential privacy: this job spends `rho` of `budget`.
    Private { rho: f64, budget: f64 },
}

pub(crate) struct Checked {
    /// The dictionary the query is read against: the network's, with the
    /// variables the job's study derives.
    pub scope: StudyScope,
    pub query: Query,
    pub purpose: Purpose,
    pub rules: Rules,
    pub iteration: Option<Iteration>,
    pub protection: Protection,
    /// The step of secure aggregation asked, for a secure study's jobs.
    pub secure: Option<SecureStep>,
}

/// What a job's answer carries.
pub(crate) enum Reply {
    Stats(NodeStats),
    /// A refusal decided on a noised release the job paid for (in a study
    /// under differential privacy): it goes back with its receipt.
    Refused(Error),
    /// Signed public keys for a secure aggregation session.
    Keys(pb::KeyShare),
    /// The clear release of a masked job, still to be masked (after the
    /// data steward's approval, for a study under review).
    ToMask(NodeStats, MaskFor),
    /// The clear release masked for a roster: all the coordinator gets.
    Masked(pb::MaskedStats),
    /// This node's signature over a survivor list.
    Confirmed(pb::Confirmation),
    /// What unmasking the survivors' sum needs from this node.
    Unmasked(pb::Unmasked),
}

/// What a job ends in: a release with its receipt, or an error.
pub(crate) type Outcome = Result<(Reply, Option<Receipt>), Error>;

/// The receipt of a kept answer given again: nothing charged.
fn repeated(spent: f64, budget: f64, noise: plexus_core::privacy::scale::NoiseScale) -> Receipt {
    Receipt {
        charged_rho: 0.0,
        spent_rho: spent,
        budget_rho: budget,
        cached: true,
        noise,
    }
}

/// Marks a job dropped on purpose by fault injection.
#[cfg(feature = "fault-injection")]
const CRASHED: &str = "fault injection: dropped after the ledger debit";
/// Marks a masked job dropped on purpose by fault injection.
#[cfg(feature = "fault-injection")]
pub(crate) const DROPPED: &str = "fault injection: masked job dropped unanswered";

impl JobRunner {
    /// Records a measured offset of this node's clock from the
    /// coordinator's: in the metrics, and in readiness, which fails saying
    /// "clock" beyond the tolerance (jobs would be refused as expired or
    /// issued in the future while everything else looks healthy).
    pub fn measured_clock(&self, offset_ms: i64) {
        self.metrics
            .clock_offset_seconds
            .set(offset_ms as f64 / 1000.0);
        match plexus_core::clock::problem("this node's", "the coordinator's", offset_ms) {
            Some(why) => {
                if self.readiness.status().is_ok() {
                    tracing::warn!(offset_ms, "{why}");
                }
                self.readiness.set(CLOCK_CHECK, false, why);
            }
            None => self.readiness.set(CLOCK_CHECK, true, ""),
        }
    }

    /// This node's clock, in Unix milliseconds: what jobs' issue times and
    /// deadlines are checked against.
    pub fn now_ms(&self) -> i64 {
        #[cfg(feature = "fault-injection")]
        let skew = self.clock_skew_ms;
        #[cfg(not(feature = "fault-injection"))]
        let skew = 0;
        chrono::Utc::now().timestamp_millis() + skew
    }

    /// Checks a signed job (signature, audience, expiry, replay) and runs
    /// it; a refused envelope is logged here and answered with the reason.
    /// The message to send back is the answer, or a notice that the result
    /// is held for review.
    pub async fn take(&self, signed: pb::SignedJob) -> Option<pb::node_message::Msg> {
        let now = chrono::Utc::now();
        let job_hash = ring::digest::digest(&ring::digest::SHA256, &signed.job)
            .as_ref()
            .to_vec();
        let opened = envelope::open(
            &signed,
            &self.verifying_key,
            &self.config.node.id,
            self.now_ms(),
            &self.seen,
        )
        .and_then(|(job, seen)| match self.witness.check(&job) {
            Ok(()) => Ok((job, seen)),
            Err(error) => Err(envelope::Refusal {
                job_id: job.job_id.clone(),
                error,
            }),
        });
        match opened {
            Ok((job, seen)) => {
                // Nothing is taken while the records cannot be written.
                // The refusal is logged once the log can be written again.
                if let Err(e) = self.check_storage() {
                    warn!(job_id = %job.job_id, reason = %e, "job refused: the node's records cannot be written");
                    self.metrics.job(&format!("failed:{}", e.code), 0.0);
                    self.log_later(failed_before_running(&job, now, &e));
                    return Some(answer(self.result(&job.job_id, job_hash, Err(e))));
                }
                self.run(job, job_hash, seen).await
            }
            Err(refusal) => {
                warn!(job_id = %refusal.job_id, reason = %refusal.error, "job envelope refused");
                // Its id could not be recorded: the node is not ready
                // until it can (the storage probe brings it back).
                if let Some(problem) = self.seen.trouble() {
                    self.records_failing(&problem);
                }
                self.metrics
                    .job(&format!("refused:{}", refusal.error.code), 0.0);
                let entry = LogEntry {
                    at: now.to_rfc3339(),
                    job_id: refusal.job_id.clone(),
                    analysis: "unknown".into(),
                    outcome: format!("refused:{}", refusal.error.code),
                    detail: refusal.error.message.clone(),
                    ..Default::default()
                };
                if let Err(e) = self.log.append(&entry) {
                    let e = self.log_failed(&e);
                    warn!(reason = %e, "cannot write the local job log");
                    self.log_later(entry);
                }
                Some(answer(self.result(
                    &refusal.job_id,
                    job_hash,
                    Err(refusal.error),
                )))
            }
        }
    }

    /// The answer to a job this node will not finish because it is
    /// shutting down: a signed, retryable error, logged locally like any
    /// other outcome. The job's id is read from the envelope without
    /// checking it, since nothing is computed or released.
    pub(crate) fn cut_short(&self, signed: &pb::SignedJob, reason: &str) -> pb::node_message::Msg {
        let job_hash = ring::digest::digest(&ring::digest::SHA256, &signed.job)
            .as_ref()
            .to_vec();
        let job = <pb::Job as prost::Message>::decode(signed.job.as_slice()).unwrap_or_default();
        let e = Error::unavailable(reason);
        warn!(job_id = %job.job_id, study = %job.study_id, "{reason}");
        let entry = failed_before_running(&job, chrono::Utc::now(), &e);
        if let Err(err) = self.log.append(&entry) {
            warn!(error = %err, "cannot write the local job log");
        }
        self.metrics.job(&format!("failed:{}", e.code), 0.0);
        answer(self.result(&job.job_id, job_hash, Err(e)))
    }

    /// Runs one job; `None` only when fault injection drops it. `seen` is
    /// the job's id in the list of seen jobs, on its way to the disk.
    pub(crate) async fn run(
        &self,
        job: pb::Job,
        job_hash: Vec<u8>,
        seen: record::Ticket,
    ) -> Option<pb::node_message::Msg> {
        let span = info_span!("job", job_id = %job.job_id, study = %job.study_id, node = %self.config.node.id);
        async {
            let started = std::time::Instant::now();
            let analysis = job
                .query
                .as_ref()
                .and_then(|q| q.analysis.as_ref())
                .and_then(|a| plexus_core::Analysis::try_from(a.clone()).ok())
                .map(|a| a.kind().as_str())
                .unwrap_or("unknown");
            let purpose = job
                .purpose
                .as_ref()
                .and_then(|p| Purpose::try_from(p.clone()).ok())
                .map(|p| p.to_string())
                .unwrap_or_else(|| "invalid".into());
            // Write-ahead: the job is in the log before anything is
            // computed. It reaches the disk with the job's outcome (the
            // same file, so the outcome's sync covers it) or with any other
            // job's entry synced meanwhile: a crash before that loses no
            // release, since nothing goes back before the outcome is on
            // disk, and the coordinator then holds the job unanswered.
            let accepted = LogEntry {
                at: chrono::Utc::now().to_rfc3339(),
                job_id: job.job_id.clone(),
                study_id: job.study_id.clone(),
                purpose: purpose.clone(),
                query_hash: job.query_hash.clone(),
                analysis: analysis.into(),
                outcome: crate::log::ACCEPTED.into(),
                ..Default::default()
            };
            if let Err(e) = self.log.write_ahead(&accepted) {
                let e = self.log_failed(&e);
                warn!(reason = %e, "job refused: cannot write the job log");
                self.log_later(LogEntry {
                    outcome: format!("failed:{}", e.code),
                    detail: e.message.clone(),
                    ..accepted
                });
                self.metrics.job(
                    &format!("failed:{}", e.code),
                    started.elapsed().as_secs_f64(),
                );
                return Some(answer(self.result(&job.job_id, job_hash, Err(e))));
            }
            let mut outcome = self.execute(&job).await;
            // The job's id is on disk before anything about it goes back,
            // so it is refused as a replay after a restart.
            if let Err(e) = self.seen.durable(seen).await {
                if let Some(problem) = self.seen.trouble() {
                    self.records_failing(&problem);
                }
                outcome = Err(e);
            }
            if let Some(problem) = self.ledger.trouble() {
                self.records_failing(&problem);
            }
            // Under secure aggregation the steward reviews the clear
            // release that is to be masked, and it is masked on approval.
            if let Ok((Reply::ToMask(stats, mask), receipt)) = &outcome {
                if self.config.policy.reviews(&job.study_id) {
                    self.metrics.job("held", started.elapsed().as_secs_f64());
                    self.record_budget(&job.study_id);
                    let held = HeldMask::of(mask);
                    return Some(self.hold(
                        &job,
                        job_hash,
                        (stats, receipt.as_ref()),
                        analysis,
                        &purpose,
                        Some(held),
                    ));
                }
                let (stats, mask, receipt) = (stats.clone(), mask.clone(), *receipt);
                outcome = self.mask_release(&stats, &mask).map(|r| (r, receipt));
            }
            #[cfg(feature = "fault-injection")]
            if let Err(e) = &outcome {
                if e.message == CRASHED || e.message == DROPPED {
                    warn!("{}", e.message);
                    self.metrics.job("dropped", started.elapsed().as_secs_f64());
                    return None;
                }
            }
            if let Ok((Reply::Stats(stats), receipt)) = &outcome {
                if self.config.policy.reviews(&job.study_id) {
                    self.metrics.job("held", started.elapsed().as_secs_f64());
                    self.record_budget(&job.study_id);
                    return Some(self.hold(
                        &job,
                        job_hash,
                        (stats, receipt.as_ref()),
                        analysis,
                        &purpose,
                        None,
                    ));
                }
            }
            let (label, detail) = match &outcome {
                Ok((Reply::Refused(e), _)) => (format!("refused:{}", e.code), e.message.clone()),
                Ok((reply, receipt)) => ("released".to_string(), describe(reply, receipt.as_ref())),
                Err(e)
                    if matches!(
                        e.code,
                        plexus_core::ErrorCode::Policy | plexus_core::ErrorCode::Disclosure
                    ) =>
                {
                    (format!("refused:{}", e.code), e.message.clone())
                }
                Err(e) => (format!("failed:{}", e.code), e.message.clone()),
            };
            let receipt = outcome.as_ref().ok().and_then(|(_, r)| r.as_ref());
            let entry = LogEntry {
                at: chrono::Utc::now().to_rfc3339(),
                job_id: job.job_id.clone(),
                study_id: job.study_id.clone(),
                purpose,
                query_hash: job.query_hash.clone(),
                analysis: analysis.into(),
                outcome: label.clone(),
                detail,
                privacy_cost: receipt.map(|r| r.charged_rho),
                privacy_remaining: receipt.map(|r| (r.budget_rho - r.spent_rho).max(0.0)),
            };
            if let Err(e) = self.log.append_async(&entry).await {
                // Refuse to release anything we could not log; the refusal
                // is logged once the log can be written again.
                let e = self.log_failed(&e);
                warn!(reason = %e, "cannot write the local job log; refusing the job");
                self.log_later(LogEntry {
                    at: chrono::Utc::now().to_rfc3339(),
                    outcome: format!("failed:{}", e.code),
                    detail: format!("answered unavailable, with nothing released: {}", e.message),
                    privacy_cost: None,
                    privacy_remaining: None,
                    ..entry
                });
                self.metrics.job(
                    &format!("failed:{}", e.code),
                    started.elapsed().as_secs_f64(),
                );
                return Some(answer(self.result(&job.job_id, job_hash, Err(e))));
            }
            info!(outcome = %label, analysis, "job done");
            self.metrics.job(&label, started.elapsed().as_secs_f64());
            self.record_budget(&job.study_id);
            Some(answer(self.result(&job.job_id, job_hash, outcome)))
        }
        .instrument(span)
        .await
    }

    /// The study's spending by this node's own ledger, for the metrics;
    /// only studies in the hospital's policy, so the labels stay bounded.
    fn record_budget(&self, study: &str) {
        if self.config.policy.studies.contains_key(study) {
            self.metrics.budget(study, self.ledger.spent(study));
        }
    }

    async fn execute(&self, job: &pb::Job) -> Outcome {
        let checked = self.check(job)?;
        let secure = checked.secure.clone();
        if secure.is_some() {
            secagg::supported(&checked.query)?;
            secagg::vector_len(&checked.query.analysis, &checked.scope.dictionary)?;
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        let masker = match secure {
            None => None,
            Some(SecureStep::Keys {
                session_id,
                nodes,
                definition,
            }) => return self.secure_keys(job, &checked, &session_id, &nodes, &definition, now_ms),
            Some(SecureStep::Confirm {
                session_id,
                partition,
            }) => return self.secure_confirm(job, &session_id, partition, now_ms),
            Some(SecureStep::Unmask {
                session_id,
                request,
            }) => return self.secure_unmask(job, &session_id, request, now_ms),
            Some(SecureStep::Mask { roster, step }) => {
                let today = chrono::Utc::now().date_naive();
                let contribution = self.contribution_key(job, &checked, today)?;
                Some(self.secure_roster(job, &checked, &roster, step, contribution, now_ms)?)
            }
        };
        #[cfg(feature = "fault-injection")]
        if !self.job_delay.is_zero() && self.still_slow() {
            tokio::time::sleep(self.job_delay).await;
        }
        let now = chrono::Utc::now();
        let today = now.date_naive();
        // A repeated query gets its earlier answer before anything is computed.
        let key = match checked.protection {
            Protection::Exact => None,
            Protection::Private { rho, budget } => {
                let key = self.cache_key(job, &checked, today, rho)?;
                if let Some(kept) = self.ledger.cached(&key) {
                    let spent = self.ledger.spent(&job.study_id);
                    let receipt = repeated(spent, budget, kept.noise);
                    return self.reply(kept.kept, Some(receipt), masker);
                }
                self.ledger.affords(&job.study_id, budget, rho)?;
                Some(key)
            }
        };
        let remaining = job.deadline_unix_ms - self.now_ms();
        let limits = self.limits(&checked, &job.study_id);
        let remaining = Duration::from_millis(remaining.max(0) as u64);
        let late = || Error::unavailable("the job ran past its deadline at this node");
        // Under secure aggregation the computation may have started with
        // the key round.
        let started = masker.as_ref().and_then(|m| {
            self.sessions
                .take_pending(&m.session_id, &fingerprint(job), today)
        });
        let raw = match started {
            Some(task) => tokio::time::timeout(remaining, task)
                .await
                .map_err(|_| late())?
                .map_err(|e| Error::internal(format!("the node's computation stopped: {e}")))??,
            None => {
                let compute = self.data.compute_apart(
                    &checked.scope,
                    &checked.query,
                    &checked.purpose,
                    today,
                    limits,
                    checked.iteration.as_ref(),
                );
                tokio::time::timeout(remaining, compute)
                    .await
                    .map_err(|_| late())??
            }
        };
        self.metrics.rows_scanned.inc_by(crate::metrics::rows(&raw));
        self.metrics
            .data_in_memory
            .set(self.data.in_memory_bytes() as i64);
        let (Protection::Private { rho, budget }, Some(key)) = (checked.protection, key) else {
            return self.reply(Kept::Stats(apply(raw, checked.rules)), None, masker);
        };
        let (release, noise) = release_for(
            raw,
            &checked.query.analysis,
            &checked.scope.dictionary,
            checked.rules,
            rho,
            checked.iteration.as_ref(),
        )?;
        let kept = match release {
            Release::Stats(stats) => Kept::Stats(stats),
            // Decided on the noised values: kept and charged like an
            // answer, so asking again repeats it for nothing (under secure
            // aggregation the node is then a dropout of the session).
            Release::Refused(e) => Kept::Refused(e),
        };
        let answer = Answer { key, kept, noise };
        // Durable before anything leaves: a crash from here on loses the
        // release, never the debit, and the kept answer is what a repeat gets.
        let (balance, kept) = self.ledger.debit(
            &job.study_id,
            budget,
            rho,
            &job.job_id,
            &job.query_hash,
            Some(answer.clone()),
        )?;
        #[cfg(feature = "fault-injection")]
        if self.crash_after_debit {
            return Err(Error::internal(CRASHED));
        }
        match kept {
            Some(kept) => {
                let receipt = repeated(balance.spent, budget, kept.noise);
                self.reply(kept.kept, Some(receipt), masker)
            }
            None => {
                let receipt = Receipt {
                    charged_rho: rho,
                    spent_rho: balance.spent,
                    budget_rho: budget,
                    cached: false,
                    noise: answer.noise,
                };
                self.reply(answer.kept, Some(receipt), masker)
            }
        }
    }

    /// The reply carrying `kept`: as it is, or (under secure aggregation)
    /// to be masked for the session's roster. Under secure aggregation
    /// what is masked is exactly what this node would release in a plain
    /// study.
    fn reply(&self, kept: Kept, receipt: Option<Receipt>, masker: Option<MaskFor>) -> Outcome {
        let reply = match (kept, masker) {
            (Kept::Refused(e), _) => Reply::Refused(e),
            (Kept::Stats(stats), None) => Reply::Stats(stats),
            (Kept::Stats(stats), Some(m)) => Reply::ToMask(stats, m),
            (Kept::Contribution(_), _) => {
                return Err(Error::internal(
                    "a kept answer of an older node's secure aggregation, which is never sent again (it was kept under a key no query asks for)",
                ))
            }
        };
        Ok((reply, receipt))
    }

    /// What the computation of a checked job may release.
    pub(crate) fn limits(&self, checked: &Checked, study_id: &str) -> Limits {
        Limits {
            k: checked.rules.k,
            max_parameter_share: self.config.policy.max_parameter_share,
            private: matches!(checked.protection, Protection::Private { .. }),
            holdout_salt: self.holdout_salt(study_id),
        }
    }

    /// The salt of the patients a study's models hold out for validation
    /// here: a secret of this node fixed per study, so neither the
    /// coordinator nor a researcher can know or redraw which patients are
    /// held out (a salt they chose would let them difference the sums of
    /// many draws down to one patient).
    pub fn holdout_salt(&self, study_id: &str) -> u64 {
        let secret = self
            .log
            .secret(&crate::log::holdout_label(study_id))
            .unwrap_or_default();
        u64::from_le_bytes(secret[..8].try_into().expect("8 bytes"))
    }

    /// The key a released answer is kept under: the study, the query's
    /// canonical form (so rephrasings share it, and nothing about which
    /// patients it selects enters), the round of a fit with its
    /// coefficients, the data snapshot, the day, the cost and the
    /// disclosure rules. Under secure aggregation the same: what is
    /// masked is the release a plain study would get.
    pub(crate) fn cache_key(
        &self,
        job: &pb::Job,
        checked: &Checked,
        today: chrono::NaiveDate,
        rho: f64,
    ) -> Result<String, Error> {
        let canonical = checked.query.canonical_hash(&checked.scope.dictionary)?;
        let mut text = format!(
            "{}\0{canonical}\0{}\0{}\0{today}\0{rho:e}\0{}\0{}",
            job.study_id,
            round_text(checked),
            self.data.snapshot()?,
            checked.rules.k,
            checked.rules.dominance_share
        );
        // The same query over a redefined derived variable is another
        // question (and nothing is appended for a study without any, so
        // those keys stay as they were).
        if !checked.scope.fingerprint.is_empty() {
            text.push_str(&format!("\0derived {}", checked.scope.fingerprint));
        }
        Ok(plexus_core::hash::sha256_hex(text.as_bytes()))
    }

    /// The key of what a masked job contributes, which this node sums with
    /// one set of hospitals only (see `secagg::Commitments`): the study,
    /// the query's canonical form, the round of a fit with its
    /// coefficients, the data snapshot and, under differential privacy,
    /// the day. Not the cost or the disclosure rules: the same data under
    /// another k or ρ is the same contribution.
    pub(crate) fn contribution_key(
        &self,
        job: &pb::Job,
        checked: &Checked,
        today: chrono::NaiveDate,
    ) -> Result<String, Error> {
        let canonical = checked.query.canonical_hash(&checked.scope.dictionary)?;
        let day = match checked.protection {
            Protection::Exact => String::new(),
            Protection::Private { .. } => today.to_string(),
        };
        let text = format!(
            "secure aggregation contribution\0{}\0{canonical}\0{}\0{}\0{day}",
            job.study_id,
            round_text(checked),
            self.data.snapshot()?,
        );
        Ok(plexus_core::hash::sha256_hex(text.as_bytes()))
    }

    fn check(&self, job: &pb::Job) -> Result<Checked, Error> {
        let allowed = policy::pinned(&self.config, job)?;
        if job.deadline_unix_ms <= self.now_ms() {
            return Err(Error::unavailable("the job arrived after its deadline"));
        }
        let JobRequest {
            purpose,
            query,
            iteration,
            secure,
        } = JobRequest::read(job)?;
        let (scope, study) = self.scope(job)?;
        query.validate(&scope.dictionary)?;
        // With the definition in hand the node holds the study to it too:
        // its analyses and variables (the variables a derived one reads
        // are released only through it).
        if let Some(study) = &study {
            study.permits(&query)?;
        }
        policy::narrowed_through(
            &self.config.node.id,
            &job.study_id,
            allowed,
            &query,
            &scope.derived,
        )?;
        policy::model_approved(
            &self.config,
            &job.study_id,
            &query,
            iteration.as_ref(),
            &scope.dictionary,
        )?;
        let protection = self.protection(job, &query)?;
        Ok(Checked {
            scope,
            query,
            purpose,
            rules: Rules {
                k: effective_k(self.config.node.min_cell_size, job.min_cell_size),
                dominance_share: self.config.policy.dominance_share,
                max_parameter_share: self.config.policy.max_parameter_share,
            },
            iteration,
            protection,
            secure,
        })
    }

    /// The variables the job's study derives, read from the definition the
    /// job carries: only when it hashes to the job's (already approved)
    /// definition hash and is of the job's study. A job without one runs
    /// over the network dictionary alone.
    fn scope(
        &self,
        job: &pb::Job,
    ) -> Result<(StudyScope, Option<plexus_core::StudyDefinition>), Error> {
        // (A hostile coordinator may leave the definition out: the study's
        // own variables are then unknown, and refused as such.)
        if job.study_definition.is_empty() {
            return Ok((StudyScope::network(self.dictionary.clone()), None));
        }
        let (study, _) = sent_definition(job, &job.study_definition, "the job carries")?;
        // Only the definition's own serialisation (what the coordinator
        // hashed at registration): no second spelling of the same hash,
        // such as a JSON object with a key given twice.
        if serde_json::to_vec(&study).ok().as_deref() != Some(&job.study_definition[..]) {
            return Err(Error::policy(
                "the study definition the job carries is not in the form its hash was taken of; refused",
            ));
        }
        if job.secure_aggregation.is_some() {
            return Err(Error::policy(
                "a study that derives variables or brings concept sets of its own is not run under secure aggregation; refused",
            ));
        }
        Ok((StudyScope::of(&study, &self.dictionary)?, Some(study)))
    }

    /// Exact only for a study registered as exact that the hospital
    /// accepts as such; otherwise differential privacy, at no more than the
    /// policy's cost per job and budget per study.
    fn protection(&self, job: &pb::Job, query: &Query) -> Result<Protection, Error> {
        let policy = &self.config.policy;
        let terms = job.privacy.unwrap_or_default();
        if terms.exact {
            if policy.exact_studies.contains(&job.study_id) {
                return Ok(Protection::Exact);
            }
            return Err(Error::policy(format!(
                "study \"{}\" is registered for exact answers, and node {} answers it only under differential privacy; the hospital must list it in policy.exact_studies to accept that",
                job.study_id, self.config.node.id
            )));
        }
        releasable(query)?;
        if !(terms.rho.is_finite() && terms.rho > 0.0) {
            return Err(Error::invalid(
                "the job states no privacy cost for a study under differential privacy",
            ));
        }
        let rho = terms.rho.min(policy.max_query_rho);
        if rho < policy.min_query_rho {
            return Err(Error::policy(format!(
                "the job's privacy cost rho {} is below node {}'s floor policy.min_query_rho {}: ask with a larger \"rho\" (a fit spends its rho over {} rounds)",
                terms.rho,
                self.config.node.id,
                policy.min_query_rho,
                plexus_core::privacy::glm::DP_GLM_ROUNDS
            )));
        }
        let budget = if terms.budget_rho.is_finite() && terms.budget_rho > 0.0 {
            terms.budget_rho.min(policy.max_study_rho)
        } else {
            policy.max_study_rho
        };
        Ok(Protection::Private { rho, budget })
    }
}

/// The study definition `bytes` that came with `job` (`sent` says how, for
/// the messages), read only when it hashes to the approved definition
/// hash the job names and is of the job's study; with that hash.
pub(crate) fn sent_definition(
    job: &pb::Job,
    bytes: &[u8],
    sent: &str,
) -> Result<(plexus_core::StudyDefinition, String), Error> {
    let hash = plexus_core::hash::sha256_hex(bytes);
    if hash != job.study_definition_hash {
        return Err(Error::policy(format!(
            "the study definition {sent} hashes to {hash}, not to the approved {} the job names; refused",
            job.study_definition_hash
        )));
    }
    let study: plexus_core::StudyDefinition = serde_json::from_slice(bytes).map_err(|e| {
        Error::invalid(format!(
            "the study definition {sent} is not a study definition: {e}"
        ))
    })?;
    if study.id != job.study_id {
        return Err(Error::policy(format!(
            "the study definition {sent} is of study \"{}\", and the job is for \"{}\"; refused",
            study.id, job.study_id
        )));
    }
    Ok((study, hash))
}

/// The round of a fit with its coefficients, exactly, for the keys above.
fn round_text(checked: &Checked) -> String {
    checked
        .iteration
        .as_ref()
        .map(|it| {
            let bits: Vec<String> = it
                .coefficients
                .iter()
                .chain(&it.null_mean)
                .map(|b| format!("{:016x}", b.to_bits()))
                .collect();
            format!("{}:{}:{}", it.round, it.null_mean.is_some(), bits.join(","))
        })
        .unwrap_or_default()
}

impl JobRunner {
    /// The job log could not be written: the node turns not ready, and the
    /// job is answered `unavailable`, naming the file (never the data).
    pub(crate) fn log_failed(&self, e: &std::io::Error) -> Error {
        let problem = format!(
            "cannot write the job log {}: {e}",
            self.log.path().display()
        );
        self.records_failing(&problem);
        Error::unavailable(format!(
            "node {} {problem}; nothing was released, and the node takes no jobs until the hospital's IT frees space in its state folder or fixes the disk",
            self.config.node.id
        ))
    }

    /// An outcome the job log could not take now, written (in order) once
    /// it can, so the log still holds every job the node answered.
    fn log_later(&self, entry: LogEntry) {
        self.unlogged.lock().expect("unlogged lock").push(entry);
    }

    /// The node's records cannot be written: not ready, and the metric says so.
    fn records_failing(&self, problem: &str) {
        self.metrics.records_writable.set(0);
        self.readiness.set(
            STORAGE_CHECK,
            false,
            format!("{problem}; jobs are refused until it can"),
        );
    }

    /// What stops the node's records from being written, if anything.
    pub fn storage_problem(&self) -> Option<String> {
        self.ledger
            .trouble()
            .or_else(|| self.log.trouble())
            .or_else(|| self.seen.trouble())
    }

    /// Ready to take a job as far as the node's records go: when a write
    /// failed before, a probe write in the state folder must succeed first
    /// (space came back), then the failed writes' leftovers are cut off and
    /// the outcomes the log missed are written. Otherwise `unavailable`,
    /// naming the file. Also run periodically, so a node turns ready again
    /// without a job or a restart.
    pub fn check_storage(&self) -> Result<(), Error> {
        let pending = !self.unlogged.lock().expect("unlogged lock").is_empty();
        let Some(problem) = self.storage_problem().or_else(|| pending.then(String::new)) else {
            return Ok(());
        };
        let unavailable = |problem: &str| {
            self.records_failing(problem);
            Error::unavailable(format!(
                "node {} {problem}; the node takes no jobs until the hospital's IT frees space in its state folder or fixes the disk",
                self.config.node.id
            ))
        };
        let dir = &self.config.node.state_dir;
        if let Err(e) = probe(dir) {
            let problem = if problem.is_empty() {
                format!("cannot write its state folder {}: {e}", dir.display())
            } else {
                problem
            };
            return Err(unavailable(&problem));
        }
        if let Err(e) = self.ledger.recover() {
            return Err(unavailable(&format!(
                "cannot write the privacy ledger {}: {e}",
                self.ledger.path().display()
            )));
        }
        if let Err(e) = self.log.recover() {
            return Err(unavailable(&format!(
                "cannot write the job log {}: {e}",
                self.log.path().display()
            )));
        }
        if let Err(e) = self.seen.recover() {
            return Err(unavailable(&format!(
                "cannot write its list of seen jobs {}: {e}",
                self.seen.path().display()
            )));
        }
        let mut unlogged = self.unlogged.lock().expect("unlogged lock");
        while let Some(entry) = unlogged.first() {
            if let Err(e) = self.log.append(entry) {
                return Err(unavailable(&format!(
                    "cannot write the job log {}: {e}",
                    self.log.path().display()
                )));
            }
            unlogged.remove(0);
        }
        info!("the node's records can be written again; taking jobs");
        self.metrics.records_writable.set(1);
        self.readiness.set(STORAGE_CHECK, true, "");
        Ok(())
    }

    /// Logs a job the node was computing when its link to the coordinator
    /// broke: nothing was sent for it.
    pub(crate) fn dropped(&self, signed: &pb::SignedJob, reason: &str) {
        let job = <pb::Job as prost::Message>::decode(signed.job.as_slice()).unwrap_or_default();
        let Some(accepted) = self.log.accepted(&job.job_id) else {
            return;
        };
        let entry = LogEntry {
            at: chrono::Utc::now().to_rfc3339(),
            outcome: crate::log::DROPPED_LINK.into(),
            detail: format!(
                "the link to the coordinator broke with the job in hand ({reason}); nothing was sent"
            ),
            ..accepted
        };
        warn!(job_id = %job.job_id, "job dropped: the link to the coordinator broke");
        self.metrics.job("dropped", 0.0);
        if let Err(e) = self.log.append(&entry) {
            let e = self.log_failed(&e);
            warn!(reason = %e, "cannot log a dropped job; it is logged when the log can be written");
            self.log_later(entry);
        }
    }

    /// Whether this job still waits `job_delay` (fault injection), counting
    /// it against `slow_jobs_left`.
    #[cfg(feature = "fault-injection")]
    fn still_slow(&self) -> bool {
        use std::sync::atomic::Ordering;
        match &self.slow_jobs_left {
            None => true,
            Some(left) => left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok(),
        }
    }

    /// The answer to a job, with the statement the node signs about it:
    /// the job's hash, this node, the outcome, its privacy receipt and the
    /// data snapshot it was computed on.
    pub(crate) fn result(
        &self,
        job_id: &str,
        job_hash: Vec<u8>,
        outcome: Outcome,
    ) -> pb::JobResult {
        let (outcome, privacy) = match outcome {
            Ok((reply, receipt)) => (
                match reply {
                    Reply::Stats(stats) => pb::job_result::Outcome::Stats((&stats).into()),
                    Reply::Refused(e) => pb::job_result::Outcome::Error((&e).into()),
                    Reply::Keys(k) => pb::job_result::Outcome::Keys(k),
                    Reply::Masked(m) => pb::job_result::Outcome::Masked(m),
                    Reply::Confirmed(c) => pb::job_result::Outcome::Confirmed(c),
                    Reply::Unmasked(u) => pb::job_result::Outcome::Unmasked(u),
                    Reply::ToMask(..) => pb::job_result::Outcome::Error(
                        (&Error::internal("a clear release of a masked job was not masked")).into(),
                    ),
                },
                receipt.as_ref().map(pb::PrivacyReceipt::from),
            ),
            Err(e) => (pb::job_result::Outcome::Error((&e).into()), None),
        };
        let snapshot = self.data.snapshot().unwrap_or_default();
        self.signed(job_id, job_hash, outcome, privacy, snapshot, None)
    }

    pub(crate) fn signed(
        &self,
        job_id: &str,
        job_hash: Vec<u8>,
        outcome: pb::job_result::Outcome,
        privacy: Option<pb::PrivacyReceipt>,
        data_snapshot: String,
        review: Option<pb::Review>,
    ) -> pb::JobResult {
        let statement = pb::ResultStatement {
            job_id: job_id.to_string(),
            job_hash,
            node_id: self.config.node.id.clone(),
            outcome: Some(outcome.clone().into()),
            privacy,
            data_snapshot,
            signed_unix_ms: chrono::Utc::now().timestamp_millis(),
            review,
            witnessed: self.witness.signed(),
        };
        let statement = prost::Message::encode_to_vec(&statement);
        pb::JobResult {
            job_id: job_id.to_string(),
            outcome: Some(outcome),
            privacy,
            signature: self.signer.sign(&statement),
            statement,
        }
    }
}

/// Writes and syncs a small file in the state folder and removes it: does
/// the disk take writes again?
fn probe(dir: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    let path = dir.join(".plexus-write-probe");
    let written = std::fs::File::create(&path).and_then(|mut f| {
        f.write_all(&[0u8; 16 * 1024])?;
        f.sync_all()
    });
    let _ = std::fs::remove_file(&path);
    written
}

/// The job-log entry of a job failed before anything of it ran.
fn failed_before_running(job: &pb::Job, at: chrono::DateTime<chrono::Utc>, e: &Error) -> LogEntry {
    LogEntry {
        at: at.to_rfc3339(),
        job_id: job.job_id.clone(),
        study_id: job.study_id.clone(),
        query_hash: job.query_hash.clone(),
        analysis: "unknown".into(),
        outcome: format!("failed:{}", e.code),
        detail: e.message.clone(),
        ..Default::default()
    }
}

pub(crate) fn answer(result: pb::JobResult) -> pb::node_message::Msg {
    pb::node_message::Msg::Result(result)
}

/// A line for the local log about what left: the shape, how much was
/// suppressed and what it cost, never the numbers.
pub(crate) fn describe(reply: &Reply, receipt: Option<&Receipt>) -> String {
    let shape = match reply {
        Reply::Stats(stats) => shape(stats),
        Reply::Refused(e) => format!("refused ({})", e.code),
        Reply::Keys(k) => {
            return format!(
                "secure aggregation session {}: keys made and signed for the key round",
                k.session_id
            )
        }
        Reply::ToMask(stats, m) => format!(
            "secure aggregation session {} step {}: {}, to be masked",
            m.session_id,
            m.step,
            shape(stats)
        ),
        Reply::Masked(m) => format!(
            "secure aggregation session {} step {}: {} values sent masked",
            m.session_id,
            m.step,
            m.vector.len() / 16
        ),
        Reply::Confirmed(c) => {
            return format!(
                "secure aggregation session {} step {}: signed the survivor list {}",
                c.session_id,
                c.step,
                c.survivors.join(", ")
            )
        }
        Reply::Unmasked(u) => {
            return format!(
                "secure aggregation session {} step {}: revealed {} shares of survivors' self masks and {} pair seeds with dropped nodes",
                u.session_id,
                u.step,
                u.shares.len(),
                u.seeds.len()
            )
        }
    };
    match receipt {
        None => format!("{shape}; exact"),
        Some(r) if r.cached => format!(
            "{shape}; repeated a kept answer, rho 0 charged, {:.6} of {:.6} spent",
            r.spent_rho, r.budget_rho
        ),
        Some(r) => format!(
            "{shape}; rho {:.6} charged, {:.6} of {:.6} spent",
            r.charged_rho, r.spent_rho, r.budget_rho
        ),
    }
}

fn shape(stats: &NodeStats) -> String {
    let cells: Vec<Cell> = match stats {
        NodeStats::Count(c) => vec![*c],
        NodeStats::Summary(m) => vec![if m.is_some() {
            Cell::Count(0)
        } else {
            Cell::Suppressed
        }],
        NodeStats::Histogram { bins, below, above } => {
            bins.iter().chain([below, above]).copied().collect()
        }
        NodeStats::Table { cells, .. } => cells.clone(),
        NodeStats::Glm(_) | NodeStats::Cox(_) => {
            return "one model round (sums over complete cases)".into()
        }
        NodeStats::Performance(p) => {
            return format!(
                "a model validation ({} groups, pieces of predicted risk of at least k)",
                p.counts.len()
            )
        }
        NodeStats::Gbdt(g) => {
            return format!(
                "one tree round (histograms of {} tree nodes, every segment at least k)",
                g.slots.len()
            )
        }
        NodeStats::Survival(groups) => groups
            .iter()
            .map(|g| match g {
                GroupStats::Released(_) => Cell::Count(0),
                GroupStats::Suppressed => Cell::Suppressed,
            })
            .collect(),
        NodeStats::Pairs(pairs) => pairs
            .iter()
            .map(|p| {
                if p.is_some() {
                    Cell::Count(0)
                } else {
                    Cell::Suppressed
                }
            })
            .collect(),
    };
    let suppressed = cells.iter().filter(|c| **c == Cell::Suppressed).count();
    format!("{} values, {suppressed} suppressed", cells.len())
}
