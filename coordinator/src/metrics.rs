//! The coordinator's Prometheus metrics. Labels are bounded: analysis
//! kinds, outcome codes, registered node ids and study ids; never a value
//! from the data, a query's content or a researcher's name.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabels {
    pub analysis: String,
    /// `ok`, `failed:<code>` for a query that ran, `refused:<code>` for
    /// one refused at submission.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnalysisLabels {
    pub analysis: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub node: String,
    /// As the job table records it: `answered`, `refused`, `missing`,
    /// `invalid`, or `skipped` for a node that was not connected.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StudyLabels {
    pub study: String,
}

fn latency() -> Histogram {
    // 5 ms to about 80 s.
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

pub struct Metrics {
    pub registry: Arc<Registry>,
    pub queries: Family<QueryLabels, Counter>,
    pub query_seconds: Family<AnalysisLabels, Histogram>,
    pub jobs: Family<JobLabels, Counter>,
    pub job_seconds: Family<NodeLabels, Histogram>,
    pub live_nodes: Gauge,
    /// Connections closed because a newer one with the same node identity
    /// replaced them: a steady rise means two daemons share a certificate.
    pub node_replacements: Family<NodeLabels, Counter>,
    pub budget_spent: Family<StudyLabels, Gauge<f64, AtomicU64>>,
    pub audit_entries: Gauge,
    /// Accepted queries waiting for their turn to run
    /// (`coordinator.max_running_queries`).
    pub queries_waiting: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let queries = Family::<QueryLabels, Counter>::default();
        r.register(
            "plexus_queries",
            "Researcher queries by analysis and outcome",
            queries.clone(),
        );
        let query_seconds =
            Family::<AnalysisLabels, Histogram>::new_with_constructor(latency as fn() -> Histogram);
        r.register_with_unit(
            "plexus_query_duration",
            "Time from a query's acceptance to its stored outcome",
            Unit::Seconds,
            query_seconds.clone(),
        );
        let jobs = Family::<JobLabels, Counter>::default();
        r.register(
            "plexus_jobs",
            "Jobs sent to nodes, by node and outcome",
            jobs.clone(),
        );
        let job_seconds =
            Family::<NodeLabels, Histogram>::new_with_constructor(latency as fn() -> Histogram);
        r.register_with_unit(
            "plexus_job_duration",
            "Time from sending a job to a node to its answer (or giving up)",
            Unit::Seconds,
            job_seconds.clone(),
        );
        let live_nodes = Gauge::default();
        r.register(
            "plexus_live_nodes",
            "Nodes connected with a recent heartbeat",
            live_nodes.clone(),
        );
        let node_replacements = Family::<NodeLabels, Counter>::default();
        r.register(
            "plexus_node_replacements",
            "Node connections replaced by a newer connection with the same node identity",
            node_replacements.clone(),
        );
        let budget_spent = Family::<StudyLabels, Gauge<f64, AtomicU64>>::default();
        r.register(
            "plexus_study_budget_spent_rho",
            "Privacy budget (zCDP rho) charged to each study at the coordinator",
            budget_spent.clone(),
        );
        let audit_entries = Gauge::default();
        r.register(
            "plexus_audit_log_entries",
            "Entries in the coordinator's audit log",
            audit_entries.clone(),
        );
        let queries_waiting = Gauge::default();
        r.register(
            "plexus_queries_waiting",
            "Accepted queries waiting for their turn to run (coordinator.max_running_queries)",
            queries_waiting.clone(),
        );
        Metrics {
            registry: Arc::new(r),
            queries,
            query_seconds,
            jobs,
            job_seconds,
            live_nodes,
            node_replacements,
            budget_spent,
            audit_entries,
            queries_waiting,
        }
    }

    pub fn query(&self, analysis: &str, outcome: &str) {
        self.queries
            .get_or_create(&QueryLabels {
                analysis: analysis.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    pub fn job(&self, node: &str, outcome: &str, seconds: Option<f64>) {
        self.jobs
            .get_or_create(&JobLabels {
                node: node.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
        if let Some(s) = seconds {
            self.job_seconds
                .get_or_create(&NodeLabels {
                    node: node.to_string(),
                })
                .observe(s);
        }
    }

    pub fn node_replaced(&self, node: &str) {
        self.node_replacements
            .get_or_create(&NodeLabels {
                node: node.to_string(),
            })
            .inc();
    }

    pub fn budget(&self, study: &str, spent_rho: f64) {
        self.budget_spent
            .get_or_create(&StudyLabels {
                study: study.to_string(),
            })
            .set(spent_rho);
    }
}
