//! The node's Prometheus metrics. Labels are bounded (outcome codes and
//! the studies in the hospital's own policy) and never carry patient data.
//!
//! `plexus_node_rows_scanned_total` counts, for every job the data source
//! computed, the patients its aggregates rest on before disclosure control:
//! the cohort's size for a count, the patients with a value for a summary,
//! everyone in a histogram's bins or a table's cells, a model round's N, the
//! at-risk patients of each survival group, the largest pair N of a
//! correlation. A cached or refused job scans nothing. It shows how much
//! work the hospital's data does for the network, never which rows.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use plexus_core::RawStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `released`, `held` (for the data steward), `refused:<code>`,
    /// `failed:<code>`, or `dropped` (fault injection).
    pub outcome: String,
}

/// A rule of the witnessed audit log (`witness.fork`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StudyLabels {
    pub study: String,
}

pub struct NodeMetrics {
    pub registry: Arc<Registry>,
    pub jobs: Family<OutcomeLabels, Counter>,
    pub job_seconds: Histogram,
    pub rows_scanned: Counter,
    pub budget_spent: Family<StudyLabels, Gauge<f64, AtomicU64>>,
    pub connected: Gauge,
    /// This node's clock minus the coordinator's, from the latest
    /// heartbeat's round trip.
    pub clock_offset_seconds: Gauge<f64, AtomicU64>,
    /// 1 while the privacy ledger and the job log can be written, else 0.
    pub records_writable: Gauge,
    /// Bytes of the data file's columns kept in memory between jobs.
    pub data_in_memory: Gauge,
    /// Jobs refused because their checkpoint of the coordinator's audit
    /// log broke a rule of the witness (see [`crate::witness`]).
    pub witness_refusals: Family<RuleLabels, Counter>,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeMetrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let jobs = Family::<OutcomeLabels, Counter>::default();
        r.register(
            "plexus_node_jobs",
            "Jobs this node took, by outcome",
            jobs.clone(),
        );
        // 5 ms to about 80 s.
        let job_seconds = Histogram::new(exponential_buckets(0.005, 2.0, 15));
        r.register_with_unit(
            "plexus_node_job_duration",
            "Time from taking a job to its answer",
            Unit::Seconds,
            job_seconds.clone(),
        );
        let rows_scanned = Counter::default();
        r.register(
            "plexus_node_rows_scanned",
            "Patients the data source aggregated over for jobs (see the module docs)",
            rows_scanned.clone(),
        );
        let budget_spent = Family::<StudyLabels, Gauge<f64, AtomicU64>>::default();
        r.register(
            "plexus_node_study_budget_spent_rho",
            "Privacy budget (zCDP rho) spent per study by this node's own ledger",
            budget_spent.clone(),
        );
        let clock_offset_seconds = Gauge::<f64, AtomicU64>::default();
        r.register_with_unit(
            "plexus_node_clock_offset",
            "This node's clock minus the coordinator's, measured from heartbeat round trips (readiness fails beyond 10 s)",
            Unit::Seconds,
            clock_offset_seconds.clone(),
        );
        let connected = Gauge::default();
        r.register(
            "plexus_node_coordinator_connected",
            "1 while the node's stream to the coordinator is up, else 0",
            connected.clone(),
        );
        let records_writable = Gauge::default();
        records_writable.set(1);
        r.register(
            "plexus_node_records_writable",
            "1 while the node can write its privacy ledger and job log, else 0 (it refuses jobs)",
            records_writable.clone(),
        );
        let data_in_memory = Gauge::default();
        r.register_with_unit(
            "plexus_node_data_in_memory",
            "Data file columns this node keeps in memory between jobs (0: every job reads the file; see data.memory_mib)",
            Unit::Bytes,
            data_in_memory.clone(),
        );
        let witness_refusals = Family::<RuleLabels, Counter>::default();
        r.register(
            "plexus_node_witness_refusals",
            "Jobs refused because the coordinator's audit checkpoint did not extend the one this node witnessed, by rule",
            witness_refusals.clone(),
        );
        NodeMetrics {
            registry: Arc::new(r),
            witness_refusals,
            jobs,
            job_seconds,
            rows_scanned,
            budget_spent,
            connected,
            clock_offset_seconds,
            records_writable,
            data_in_memory,
        }
    }

    pub fn job(&self, outcome: &str, seconds: f64) {
        self.jobs
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .inc();
        self.job_seconds.observe(seconds);
    }

    pub fn budget(&self, study: &str, spent_rho: f64) {
        self.budget_spent
            .get_or_create(&StudyLabels {
                study: study.to_string(),
            })
            .set(spent_rho);
    }
}

/// The patients a job's raw aggregates rest on (see the module docs).
pub fn rows(raw: &RawStats) -> u64 {
    match raw {
        RawStats::Count(n) => *n,
        RawStats::Summary(s) => s.moments.n,
        RawStats::Histogram { bins, below, above } => bins.iter().sum::<u64>() + below + above,
        RawStats::Table { cells, .. } => cells.iter().sum(),
        RawStats::Glm(g) => g.n,
        RawStats::Cox(c) => c.n,
        RawStats::Gbdt(g) => g.n,
        RawStats::Performance(p) => p.counts.first().map_or(0, |c| c.n),
        RawStats::Survival(groups) => groups.iter().map(|t| t.counts.at_risk).sum(),
        RawStats::Pairs(pairs) => pairs.iter().map(|p| p.n).max().unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_the_patients_the_aggregates_rest_on() {
        assert_eq!(rows(&RawStats::Count(42)), 42);
        let histogram = RawStats::Histogram {
            bins: vec![3, 4],
            below: 1,
            above: 2,
        };
        assert_eq!(rows(&histogram), 10);
        let table = RawStats::Table {
            rows: 2,
            columns: 2,
            cells: vec![5, 6, 7, 8],
        };
        assert_eq!(rows(&table), 26);
    }
}
