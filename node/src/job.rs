//! Running one job at the hospital: the node's own checks first (allowlist,
//! deadline, a well-formed query against its own dictionary), then the
//! computation on consenting patients, then disclosure control, then the
//! local log. Whatever happens, the answer is an aggregate or an error.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, info_span, warn, Instrument};

use plexus_core::disclosure::{apply, effective_k};
use plexus_core::models::glm::Iteration;
use plexus_core::models::survival::GroupStats;
use plexus_core::{Cell, Dictionary, Error, NodeStats, Purpose, Query};
use plexus_proto::v1 as pb;

use crate::config::NodeConfig;
use crate::data::{DataSource, Limits};
use crate::log::{JobLog, LogEntry};

pub struct JobRunner {
    pub config: Arc<NodeConfig>,
    pub dictionary: Arc<Dictionary>,
    pub data: Arc<DataSource>,
    pub log: Arc<JobLog>,
    /// Delay before each job: fault-injection tests use it to kill a node mid-job.
    pub job_delay: Duration,
}

struct Checked {
    query: Query,
    purpose: Purpose,
    k: u32,
    iteration: Option<Iteration>,
}

impl JobRunner {
    pub async fn run(&self, job: pb::Job) -> pb::JobResult {
        let span = info_span!("job", job_id = %job.job_id, study = %job.study_id, node = %self.config.node.id);
        async {
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
            let outcome = self.execute(&job).await;
            let (label, detail) = match &outcome {
                Ok(stats) => ("released".to_string(), describe(stats)),
                Err(e) if matches!(e.code, plexus_core::ErrorCode::Policy | plexus_core::ErrorCode::Disclosure) => {
                    (format!("refused:{}", e.code), e.message.clone())
                }
                Err(e) => (format!("failed:{}", e.code), e.message.clone()),
            };
            let entry = LogEntry {
                at: chrono::Utc::now().to_rfc3339(),
                job_id: job.job_id.clone(),
                study_id: job.study_id.clone(),
                purpose,
                query_hash: job.query_hash.clone(),
                analysis: analysis.into(),
                outcome: label.clone(),
                detail,
            };
            if let Err(e) = self.log.append(&entry) {
                // Refuse to release anything we could not log.
                warn!(error = %e, "cannot write the local job log; refusing the job");
                return result(&job.job_id, Err(Error::internal(
                    "the node could not write its local job log; ask the hospital's IT to check the node's state folder",
                )));
            }
            info!(outcome = %label, analysis, "job done");
            result(&job.job_id, outcome)
        }
        .instrument(span)
        .await
    }

    async fn execute(&self, job: &pb::Job) -> Result<NodeStats, Error> {
        let checked = self.check(job)?;
        if !self.job_delay.is_zero() {
            tokio::time::sleep(self.job_delay).await;
        }
        let now = chrono::Utc::now();
        let remaining = job.deadline_unix_ms - now.timestamp_millis();
        let limits = Limits {
            k: checked.k,
            max_parameter_share: self.config.policy.max_parameter_share,
        };
        let compute = self.data.compute(
            &checked.query,
            &checked.purpose,
            now.date_naive(),
            limits,
            checked.iteration.as_ref(),
        );
        let raw = tokio::time::timeout(Duration::from_millis(remaining.max(0) as u64), compute)
            .await
            .map_err(|_| Error::unavailable("the job ran past its deadline at this node"))??;
        Ok(apply(raw, checked.k))
    }

    fn check(&self, job: &pb::Job) -> Result<Checked, Error> {
        if !self.config.policy.allowed_studies.contains(&job.study_id) {
            return Err(Error::policy(format!(
                "study \"{}\" is not on node {}'s allowlist; the hospital must approve it in policy.allowed_studies",
                job.study_id, self.config.node.id
            )));
        }
        if job.deadline_unix_ms <= chrono::Utc::now().timestamp_millis() {
            return Err(Error::unavailable("the job arrived after its deadline"));
        }
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
        query.validate(&self.dictionary)?;
        let iteration = job.iteration.clone().map(Iteration::try_from).transpose()?;
        Ok(Checked {
            query,
            purpose,
            k: effective_k(self.config.node.min_cell_size, job.min_cell_size),
            iteration,
        })
    }
}

fn result(job_id: &str, outcome: Result<NodeStats, Error>) -> pb::JobResult {
    pb::JobResult {
        job_id: job_id.to_string(),
        outcome: Some(match outcome {
            Ok(stats) => pb::job_result::Outcome::Stats((&stats).into()),
            Err(e) => pb::job_result::Outcome::Error((&e).into()),
        }),
    }
}

/// A line for the local log about what left: the shape and how much was
/// suppressed, never the numbers.
fn describe(stats: &NodeStats) -> String {
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
