//! The running node's side of the review queue. A sweep, every
//! [`POLL`], turns each decision the steward wrote (and each deadline that
//! passed without one) into a signed answer and logs it; the link sends the
//! answers that are ready ([`ready`]) on whatever connection is up, so a
//! decision taken while the node was down or disconnected still goes out,
//! as long as the job's deadline has not passed.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use plexus_proto::v1 as pb;

use super::{Decision, ReviewQueue, Verdict};
use crate::error::NodeError;
use crate::job::JobRunner;

/// How often the daemon looks for decisions and answers to send.
pub const POLL: Duration = Duration::from_millis(200);

/// Who an expiry is recorded as decided by.
pub const EXPIRY_BY: &str = "plexus-node";

pub struct Desk {
    pub queue: ReviewQueue,
    pub runner: Arc<JobRunner>,
}

impl Desk {
    /// Sweeps the queue until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let desk = self.clone();
            let now = chrono::Utc::now().timestamp_millis();
            match tokio::task::spawn_blocking(move || desk.sweep(now)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(error = %e, "cannot sweep the review queue"),
                Err(e) => warn!(error = %e, "the review queue sweep failed"),
            }
        }
    }

    /// Makes the answer of every item decided by the steward, or past the
    /// moment it must be answered by. One bad item does not stop the others.
    pub fn sweep(&self, now_ms: i64) -> Result<(), NodeError> {
        for (job_id, answered) in self.queue.open_items()? {
            if answered {
                continue;
            }
            if let Err(e) = self.answer(&job_id, now_ms) {
                warn!(job_id = %job_id, error = %e, "cannot answer a reviewed result");
            }
        }
        Ok(())
    }

    fn answer(&self, job_id: &str, now_ms: i64) -> Result<(), NodeError> {
        let entry = self.queue.entry(job_id)?;
        let decision = match entry.decision {
            Some(d) => d,
            None if now_ms >= entry.held.answer_by_unix_ms() => {
                let expired = Decision {
                    verdict: Verdict::Expired,
                    reason: String::new(),
                    by: EXPIRY_BY.into(),
                    decided_unix_ms: now_ms,
                };
                // The steward may have decided in the same instant: theirs stands.
                self.queue.decide(job_id, &expired)?.0
            }
            None => return Ok(()),
        };
        let result = self.runner.answer_held(&entry.held, &decision)?;
        self.queue.save_answer(job_id, &result.encode_to_vec())?;
        info!(job_id = %job_id, study = %entry.held.study_id, decision = decision.verdict.as_str(), by = %decision.by, "reviewed result answered");
        Ok(())
    }
}

/// The answers ready to go to the coordinator. Those whose job's deadline
/// passed are closed instead: the coordinator no longer waits for them.
pub fn ready(queue: &ReviewQueue, now_ms: i64) -> Result<Vec<(String, pb::JobResult)>, NodeError> {
    let mut out = Vec::new();
    for (job_id, answered) in queue.open_items()? {
        if !answered {
            continue;
        }
        let entry = queue.entry(&job_id)?;
        if now_ms > entry.held.deadline_unix_ms {
            queue.close(
                &job_id,
                &format!(
                    "not sent: the job's deadline passed at {} before the node could send the answer",
                    rfc3339(entry.held.deadline_unix_ms)
                ),
            )?;
            continue;
        }
        let bytes = queue.answer(&job_id)?;
        match pb::JobResult::decode(bytes.as_slice()) {
            Ok(r) => out.push((job_id, r)),
            Err(e) => {
                warn!(job_id = %job_id, error = %e, "the kept answer is damaged; not sent");
                queue.close(
                    &job_id,
                    &format!("not sent: the kept answer is damaged ({e})"),
                )?;
            }
        }
    }
    Ok(out)
}

pub(crate) fn rfc3339(unix_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(unix_ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| unix_ms.to_string())
}
