//! A whole Plexus network in one process: a throwaway CA, a coordinator on
//! 127.0.0.1 with its SQLite file, and N hospital nodes on synthetic data,
//! all over real mTLS on loopback. `plexus demo` and the integration tests
//! are built on it; nodes and the coordinator can be stopped, killed and
//! restarted to exercise faults.
//!
//! [`synth`] makes the hospitals' synthetic patients, [`load`] drives a
//! query load against a sandbox. A crate of its own, apart from the
//! researcher's CLI, because it links both daemons.
#![forbid(unsafe_code)]

pub mod load;
pub mod reference;
pub mod synth;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use plexus_coordinator::config::{CoordinatorConfig, CoordinatorSection};
use plexus_core::StudyDefinition;
use plexus_node::config::{CoordinatorSection as NodeCoordinator, NodeConfig, NodeSection, Policy};
use plexus_node::data::{ConsentConfig, DataConfig};
use plexus_proto::v1 as pb;
use plexus_tls::{CaDir, DevCa, Role, TlsFiles};

use plexus_client::Client;
use synth::{DataFormat, Site, SiteSpec};

/// Researchers, admins and auditors the sandbox issues certificates for.
pub const RESEARCHER: &str = "alice";
pub const OUTSIDER: &str = "bob";
pub const ADMIN: &str = "admin";
pub const AUDITOR: &str = "auditor";

#[derive(Debug, Clone)]
pub struct SandboxOptions {
    pub sites: Vec<SiteSpec>,
    /// Data format per site, cycled: the default mixes Parquet and CSV.
    pub formats: Vec<DataFormat>,
    pub node_min_cell_size: u32,
    pub job_timeout_secs: u64,
    pub heartbeat_secs: u64,
    /// Keep files here instead of a temporary folder.
    pub dir: Option<PathBuf>,
    /// Keep every site's rows in memory (`Sandbox::sites`) for reference
    /// computations. Benchmarks turn it off to measure the nodes alone.
    pub keep_rows: bool,
    /// Serve `/metrics`, `/healthz` and `/readyz` on a free loopback port
    /// per daemon (in the configs' `metrics_listen`).
    pub metrics: bool,
    /// The coordinator's database: its own SQLite file in the sandbox
    /// folder when absent, else this URL (e.g. a PostgreSQL database).
    pub database_url: Option<String>,
    /// Run the coordinator on a runtime of its own with this many worker
    /// threads, all named [`COORDINATOR_THREADS`], so that a benchmark can
    /// tell the coordinator's CPU from the nodes' sharing its process. By
    /// default everything runs on the caller's runtime.
    pub coordinator_threads: Option<usize>,
}

/// The name of the coordinator's threads (workers and blocking pool) when
/// [`SandboxOptions::coordinator_threads`] gives it a runtime of its own.
pub const COORDINATOR_THREADS: &str = "plexus-coord";

impl SandboxOptions {
    pub fn new(patients_per_site: usize, seed: u64) -> Self {
        Self::with_nodes(3, patients_per_site, seed)
    }

    /// A network of `nodes` hospitals: hospital-a, hospital-b, … (then
    /// hospital-27, hospital-28, … past the alphabet). The first three
    /// are those of [`SandboxOptions::new`].
    pub fn with_nodes(nodes: usize, patients_per_site: usize, seed: u64) -> Self {
        let sites = (0..nodes)
            .map(|i| SiteSpec {
                name: node_name(i),
                patients: patients_per_site,
                seed: seed.wrapping_add(i as u64 * 7919),
            })
            .collect();
        SandboxOptions {
            sites,
            formats: vec![DataFormat::Parquet, DataFormat::Parquet, DataFormat::Csv],
            node_min_cell_size: plexus_core::DEFAULT_MIN_CELL_SIZE,
            job_timeout_secs: 30,
            heartbeat_secs: 1,
            dir: None,
            keep_rows: true,
            metrics: false,
            database_url: None,
            coordinator_threads: None,
        }
    }
}

/// A loopback address with a port free right now, for a listener the
/// sandbox's config names before the daemon binds it.
fn free_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// The name of the sandbox's `i`-th hospital (from 0).
pub fn node_name(i: usize) -> String {
    match u8::try_from(i).ok().filter(|i| *i < 26) {
        Some(i) => format!("hospital-{}", char::from(b'a' + i)),
        None => format!("hospital-{}", i + 1),
    }
}

struct Running {
    token: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

/// The coordinator's own runtime ([`SandboxOptions::coordinator_threads`]).
/// A runtime may not be dropped on an async worker, so it is let go in the
/// background.
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl OwnRuntime {
    fn new(workers: usize) -> std::io::Result<Self> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers.max(1))
            .thread_name(COORDINATOR_THREADS)
            // Blocking threads that come and go would take their CPU time
            // out of /proc with them.
            .thread_keep_alive(Duration::from_secs(3600))
            .enable_all()
            .build()
            .map(|rt| OwnRuntime(Some(rt)))
    }

    fn handle(&self) -> Option<&tokio::runtime::Handle> {
        self.0.as_ref().map(|rt| rt.handle())
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Running {
    async fn stop(self) -> anyhow::Result<()> {
        self.token.cancel();
        self.task.await.context("task panicked")?
    }
}

pub struct Sandbox {
    _temp: Option<tempfile::TempDir>,
    pub dir: PathBuf,
    pub pki: PathBuf,
    /// The network's CA and its folder (`pki`): issue, revoke, refresh the CRL.
    pub ca: CaDir,
    pub address: SocketAddr,
    pub coordinator_config: CoordinatorConfig,
    pub node_configs: BTreeMap<String, NodeConfig>,
    pub sites: Vec<Site>,
    coordinator: Option<Running>,
    coordinator_runtime: Option<OwnRuntime>,
    /// More coordinators' URLs (active/standby on one PostgreSQL database),
    /// started by the test itself: nodes and clients try them after ours.
    other_coordinators: Vec<String>,
    nodes: BTreeMap<String, Running>,
    node_options: BTreeMap<String, plexus_node::RunOptions>,
}

impl Sandbox {
    /// Writes the CA, certificates and site data, then starts the
    /// coordinator and every node and waits until all nodes are live.
    pub async fn start(opts: SandboxOptions) -> anyhow::Result<Self> {
        let mut sb = Self::prepare(opts).await?;
        sb.start_all().await?;
        Ok(sb)
    }

    /// Starts the coordinator and every node of a prepared sandbox (after a
    /// test has adjusted their configs) and waits until all nodes are live.
    pub async fn start_all(&mut self) -> anyhow::Result<()> {
        self.start_coordinator().await?;
        for n in self.node_names() {
            self.start_node(&n).await?;
        }
        self.wait_all_live().await
    }

    pub fn node_names(&self) -> Vec<String> {
        self.node_configs.keys().cloned().collect()
    }

    /// Waits until every node of the sandbox is live at the coordinator.
    pub async fn wait_all_live(&self) -> anyhow::Result<()> {
        self.wait_live(&self.node_names(), Duration::from_secs(30))
            .await
    }

    /// Everything but starting the servers.
    pub async fn prepare(opts: SandboxOptions) -> anyhow::Result<Self> {
        let (temp, dir) = match &opts.dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                (None, d.clone())
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("plexus-sandbox-")
                    .tempdir()?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let pki = dir.join("pki");
        std::fs::create_dir_all(&pki)?;
        // As `plexus pki init` lays it out: ca.pem, ca.key, index.json and
        // an empty crl.pem, which every party below loads as tls.crl.
        let ca = CaDir::create(
            &pki,
            DevCa::generate("Plexus sandbox CA")?,
            plexus_tls::CRL_VALIDITY_DAYS,
        )?;
        let (_, signing_key, verifying_key) =
            plexus_tls::SigningKey::generate_into(&pki, "coordinator")?;
        let localhost = vec!["localhost".to_string()];
        let loopback = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
        ca.issue(Role::Coordinator, "coordinator", &localhost, &loopback)?;
        for (role, name) in [
            (Role::Researcher, RESEARCHER),
            (Role::Researcher, OUTSIDER),
            (Role::Admin, ADMIN),
            (Role::Auditor, AUDITOR),
        ] {
            ca.issue(role, name, &[], &[])?;
        }

        // Reserve a port for the coordinator; restarts reuse it so nodes reconnect.
        let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
        let address = probe.local_addr()?;
        drop(probe);

        let coordinator_config = CoordinatorConfig {
            coordinator: CoordinatorSection {
                id: "coordinator".into(),
                listen: address,
                database_url: opts.database_url.clone().unwrap_or_else(|| {
                    format!("sqlite://{}", dir.join("coordinator.db").display())
                }),
                instance: None,
                lease_ttl_ms: 5000,
                dictionary: None,
                min_cell_size: plexus_core::DEFAULT_MIN_CELL_SIZE,
                job_timeout_secs: opts.job_timeout_secs,
                heartbeat_interval_secs: opts.heartbeat_secs,
                audit_checkpoint_secs: 60,
                signing_key,
                // Rotation and revocation tests should not wait seconds.
                tls_reload_ms: 200,
                metrics_listen: opts.metrics.then(free_port).transpose()?,
                shutdown_grace_secs: 20,
                audit_group_commit: true,
                max_running_queries: 16,
                // On PostgreSQL, the seal in the sandbox folder (named for
                // the instance, so coordinators sharing the database may
                // share the folder); beside the SQLite file otherwise.
                audit_seal_dir: opts
                    .database_url
                    .as_deref()
                    .filter(|u| plexus_coordinator::store::is_postgres(u))
                    .map(|_| dir.clone()),
            },
            tls: TlsFiles::in_dir(&pki, "coordinator"),
        };

        let mut sites = Vec::new();
        let mut node_configs = BTreeMap::new();
        for (i, spec) in opts.sites.iter().enumerate() {
            let format = opts.formats[i % opts.formats.len().max(1)];
            let site_dir = dir.join("sites").join(&spec.name);
            let paths = if opts.keep_rows {
                let site = synth::generate_site(spec);
                let paths = synth::write_site(&site, &site_dir, format)?;
                sites.push(site);
                paths
            } else {
                synth::write_generated_site(spec, &site_dir, format)?
            };
            ca.issue(Role::Node, &spec.name, &[], &[])?;
            let columns = synth::node_columns()
                .into_iter()
                .map(|(var, col)| (var.to_string(), col.into()))
                .collect();
            let config = NodeConfig {
                node: NodeSection {
                    id: spec.name.clone(),
                    min_cell_size: opts.node_min_cell_size,
                    state_dir: site_dir.join("state"),
                    dictionary: None,
                    audit_checkpoint_secs: 60,
                    metrics_listen: opts.metrics.then(free_port).transpose()?,
                    shutdown_grace_secs: 20,
                },
                coordinator: NodeCoordinator {
                    address: format!("https://{address}"),
                    addresses: Vec::new(),
                    server_name: Some("localhost".into()),
                    proxy: None,
                    max_backoff_secs: 1,
                    signing_key: verifying_key.clone(),
                },
                tls: TlsFiles::in_dir(&pki, &spec.name),
                data: DataConfig {
                    path: paths.data,
                    format: None,
                    patient_id: "patient_id".into(),
                    columns,
                    ..Default::default()
                },
                consent: ConsentConfig {
                    path: paths.consent,
                    opt_out: Some(paths.opt_out),
                },
                policy: Policy {
                    // A test network: it also accepts exact answers for the
                    // validation study and for the demo study when a test
                    // registers it as exact.
                    exact_studies: [DEMO_STUDY, VALIDATION_STUDY, SECURE_STUDY]
                        .map(String::from)
                        .into_iter()
                        .collect(),
                    ..Policy::approving(&approved_studies())
                },
            };
            node_configs.insert(spec.name.clone(), config);
        }
        Ok(Sandbox {
            _temp: temp,
            dir,
            pki,
            ca,
            address,
            coordinator_config,
            node_configs,
            sites,
            coordinator: None,
            coordinator_runtime: opts
                .coordinator_threads
                .map(OwnRuntime::new)
                .transpose()
                .context("cannot start the coordinator's runtime")?,
            other_coordinators: Vec::new(),
            nodes: BTreeMap::new(),
            node_options: BTreeMap::new(),
        })
    }

    pub fn coordinator_url(&self) -> String {
        format!("https://{}", self.address)
    }

    pub async fn start_coordinator(&mut self) -> anyhow::Result<()> {
        if self.coordinator.is_some() {
            bail!("the coordinator is already running");
        }
        let mut listener = None;
        for _ in 0..50 {
            match tokio::net::TcpListener::bind(self.address).await {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let listener = listener.with_context(|| format!("cannot bind {}", self.address))?;
        let token = CancellationToken::new();
        let config = self.coordinator_config.clone();
        let t = token.clone();
        // The coordinator may run on a runtime of its own, which takes the
        // listener over as a std socket.
        let listener = listener.into_std()?;
        let run = async move {
            let listener = tokio::net::TcpListener::from_std(listener)?;
            Ok(plexus_coordinator::run(config, listener, t).await?)
        };
        let task = match self
            .coordinator_runtime
            .as_ref()
            .and_then(OwnRuntime::handle)
        {
            Some(rt) => rt.spawn(run),
            None => tokio::spawn(run),
        };
        self.coordinator = Some(Running { token, task });
        Ok(())
    }

    /// Adds another coordinator (a standby on the same PostgreSQL
    /// database, run by the test) that nodes and clients try after the
    /// sandbox's own; call before the nodes start.
    pub fn add_coordinator(&mut self, url: &str) {
        self.other_coordinators.push(url.to_string());
        for config in self.node_configs.values_mut() {
            config.coordinator.addresses.push(url.to_string());
        }
    }

    /// Every coordinator URL, the sandbox's own first.
    pub fn coordinator_urls(&self) -> Vec<String> {
        std::iter::once(self.coordinator_url())
            .chain(self.other_coordinators.iter().cloned())
            .collect()
    }

    /// Kills the coordinator the hard way: its task is aborted
    /// mid-whatever (a lease it held is not released and must expire).
    pub async fn kill_coordinator(&mut self) {
        if let Some(r) = self.coordinator.take() {
            r.task.abort();
            let _ = r.task.await;
        }
    }

    /// Graceful stop: drains calls, closes the database.
    pub async fn stop_coordinator(&mut self) -> anyhow::Result<()> {
        match self.coordinator.take() {
            Some(r) => r.stop().await,
            None => Ok(()),
        }
    }

    pub fn set_node_options(&mut self, node: &str, options: plexus_node::RunOptions) {
        self.node_options.insert(node.to_string(), options);
    }

    pub async fn start_node(&mut self, name: &str) -> anyhow::Result<()> {
        let config = self
            .node_configs
            .get(name)
            .with_context(|| format!("no node {name} in the sandbox"))?
            .clone();
        if self.nodes.contains_key(name) {
            bail!("node {name} is already running");
        }
        let token = CancellationToken::new();
        let t = token.clone();
        let options = self.node_options.get(name).cloned().unwrap_or_default();
        let task =
            tokio::spawn(async move { Ok(plexus_node::run_with(config, t, options).await?) });
        self.nodes.insert(name.to_string(), Running { token, task });
        Ok(())
    }

    pub async fn stop_node(&mut self, name: &str) -> anyhow::Result<()> {
        match self.nodes.remove(name) {
            Some(r) => r.stop().await,
            None => Ok(()),
        }
    }

    /// Kills a node the hard way: its task is aborted mid-whatever.
    pub async fn kill_node(&mut self, name: &str) {
        if let Some(r) = self.nodes.remove(name) {
            r.task.abort();
            let _ = r.task.await;
        }
    }

    /// A client of the active coordinator as `name`.
    pub async fn client(&self, name: &str) -> anyhow::Result<Client> {
        Client::connect_any(
            &self.coordinator_urls(),
            &TlsFiles::in_dir(&self.pki, name),
            Some("localhost".into()),
        )
        .await
    }

    /// Waits until every named node is live at the coordinator.
    pub async fn wait_live(&self, nodes: &[String], timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(client) = self.client(ADMIN).await {
                if let Ok(r) = client.admin().list_nodes(pb::ListNodesRequest {}).await {
                    let live: Vec<String> = r
                        .into_inner()
                        .nodes
                        .into_iter()
                        .filter(|n| n.live)
                        .map(|n| n.node_id)
                        .collect();
                    if nodes.iter().all(|n| live.contains(n)) {
                        return Ok(());
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("nodes {nodes:?} did not all connect within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the coordinator no longer lists `node` as live.
    pub async fn wait_not_live(&self, node: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let client = self.client(ADMIN).await?;
            let r = client.admin().list_nodes(pb::ListNodesRequest {}).await?;
            if !r
                .into_inner()
                .nodes
                .iter()
                .any(|n| n.node_id == node && n.live)
            {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("node {node} still live after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `study` over every node of the sandbox (for networks of other than
    /// the three default hospitals).
    pub fn over_all_nodes(&self, mut study: StudyDefinition) -> StudyDefinition {
        study.nodes = self.node_names();
        study
    }

    pub async fn register_study(&self, study: &StudyDefinition) -> anyhow::Result<()> {
        let client = self.client(ADMIN).await?;
        client
            .admin()
            .register_study(pb::RegisterStudyRequest {
                study: Some(plexus_proto::convert::study_to_pb(study, 0)),
            })
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        Ok(())
    }

    /// Approves `study`'s current definition at every node, as each
    /// hospital's steward would with `plexus-node approve`; running nodes
    /// take it from their next job.
    pub fn approve(&self, study: &StudyDefinition) -> anyhow::Result<()> {
        for name in self.node_names() {
            self.approve_at(&name, study)?;
        }
        Ok(())
    }

    /// Approves `study`'s current definition at one node.
    pub fn approve_at(&self, node: &str, study: &StudyDefinition) -> anyhow::Result<()> {
        let config = self
            .node_configs
            .get(node)
            .with_context(|| format!("no node {node} in the sandbox"))?;
        plexus_node::policy::approve(config, &study.id, &study.definition_hash(), "sandbox", "")?;
        Ok(())
    }

    /// Registers a prediction model with a study as `who` (the admin or a
    /// researcher of the study); the coordinator's refusal comes back as
    /// its error.
    pub async fn register_model(
        &self,
        who: &str,
        request: pb::RegisterModelRequest,
    ) -> Result<pb::Model, plexus_core::Error> {
        let client = self
            .client(who)
            .await
            .map_err(|e| plexus_core::Error::internal(e.to_string()))?;
        client
            .admin()
            .register_model(request)
            .await
            .map(|r| r.into_inner())
            .map_err(|s| plexus_proto::convert::from_status(&s))
    }

    /// Approves a study's model by its hash at one node, as the hospital's
    /// steward would with `plexus-node approve --model`.
    pub fn approve_model_at(&self, node: &str, study: &str, hash: &str) -> anyhow::Result<()> {
        let config = self
            .node_configs
            .get(node)
            .with_context(|| format!("no node {node} in the sandbox"))?;
        plexus_node::policy::approve_model(config, study, hash, "sandbox", "")?;
        Ok(())
    }

    /// A node's review queue, where the results its policy holds wait.
    pub fn review_queue(&self, node: &str) -> anyhow::Result<plexus_node::review::ReviewQueue> {
        let config = self
            .node_configs
            .get(node)
            .with_context(|| format!("no node {node} in the sandbox"))?;
        Ok(plexus_node::review::ReviewQueue::open(
            &config.node.state_dir,
        )?)
    }

    /// Stops everything, coordinator last.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for n in names {
            self.stop_node(&n).await?;
        }
        self.stop_coordinator().await
    }
}

/// The study definitions every sandbox node approves in its config: the
/// demo study, its exact twin (the same id), the validation study and the
/// two secure-aggregation studies. A
/// test that changes a definition approves it with [`Sandbox::approve`].
pub fn approved_studies() -> [StudyDefinition; 5] {
    [
        demo_study(),
        exact_study(),
        validation_study(),
        secure_study(),
        secure_private_study(),
    ]
}

/// The study the sandbox's nodes approve by default.
pub const DEMO_STUDY: &str = "aaa-outcomes";
/// A validation study with exact answers, which the sandbox's nodes accept.
pub const VALIDATION_STUDY: &str = "aaa-validation";

/// An abdominal aortic aneurysm outcomes study over the three hospitals,
/// under differential privacy with the default budget.
pub fn demo_study() -> StudyDefinition {
    StudyDefinition::from_toml(DEMO_STUDY_TOML).expect("demo study is valid")
}

/// The demo study registered for exact answers (the sandbox's nodes accept
/// that), for tests that compare results with the union of the sites' rows.
pub fn exact_study() -> StudyDefinition {
    let mut s = demo_study();
    s.privacy.exact = true;
    s
}

/// The exact study with secure aggregation, which the sandbox's nodes
/// accept: the same questions as [`exact_study`] with the coordinator
/// reading only sums across the hospitals.
pub const SECURE_STUDY: &str = "aaa-secure";
/// The demo study under differential privacy with secure aggregation.
pub const SECURE_PRIVATE_STUDY: &str = "aaa-secure-dp";

/// [`exact_study`] under secure aggregation, as [`SECURE_STUDY`].
pub fn secure_study() -> StudyDefinition {
    let mut s = exact_study();
    s.id = SECURE_STUDY.into();
    s.title = "Abdominal aortic aneurysm: exact answers under secure aggregation".into();
    s.secure_aggregation = true;
    s
}

/// [`demo_study`] (differential privacy) under secure aggregation, as
/// [`SECURE_PRIVATE_STUDY`].
pub fn secure_private_study() -> StudyDefinition {
    let mut s = demo_study();
    s.id = SECURE_PRIVATE_STUDY.into();
    s.title = "Abdominal aortic aneurysm: differential privacy under secure aggregation".into();
    s.secure_aggregation = true;
    s
}

/// The exact validation study the demo runs its regressions in.
pub fn validation_study() -> StudyDefinition {
    let mut s = exact_study();
    s.id = VALIDATION_STUDY.into();
    s.title = "Abdominal aortic aneurysm: exact validation of the models".into();
    s
}

pub const DEMO_STUDY_TOML: &str = r#"id = "aaa-outcomes"
title = "Abdominal aortic aneurysm: risk factors and survival"
variables = ["age", "sex", "bmi", "sbp", "smoking", "diabetes", "hypertension", "cholesterol", "aaa_diameter", "inclusion_date", "followup_days", "death"]
analyses = ["count", "summary", "histogram", "table", "glm", "cox", "kaplan_meier", "correlation", "quantiles", "two_by_two"]
researchers = ["alice"]
nodes = ["hospital-a", "hospital-b", "hospital-c"]
min_nodes = 2

[purpose]
# disease-specific research on abdominal aortic aneurysm, not for profit
code = "DS"
disease = "MONDO:0005160"
modifiers = ["NPU"]

[privacy]
# Differential privacy under a zCDP budget at each hospital: rho 1.0 is
# epsilon 8.4 at delta 1e-6 over the study's whole life; a query costs
# rho 0.01 unless it says otherwise ("rho" in the query).
budget_rho = 1.0
query_rho = 0.01
"#;
