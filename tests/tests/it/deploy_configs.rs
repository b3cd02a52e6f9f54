//! The example files under `deploy/` are the book's walkthrough (docs/src/walkthrough.md). They must
//! parse and validate, point at the certificates `plexus pki` writes and at
//! the data `plexus synth --out deploy/demo` (and `plexus demo --keep
//! deploy/demo`) writes, and answer every example query when a coordinator
//! and the three nodes run from them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use plexus_client::{outcome, Client};
use plexus_coordinator::CoordinatorConfig;
use plexus_core::pool::NodeStatus;
use plexus_core::{AnalysisKind, Dictionary, Query, StudyDefinition};
use plexus_node::NodeConfig;
use plexus_proto::v1 as pb;
use plexus_sandbox::synth;
use plexus_sandbox::{self as sandbox, Sandbox, SandboxOptions};
use plexus_tls::{CaDir, DevCa, Role, TlsFiles};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Files directly in `dir` whose extension is `ext`, sorted.
fn files(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == ext))
        .collect();
    out.sort();
    out
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .expect("file name")
        .to_string_lossy()
        .into_owned()
}

fn is_node_config(p: &Path) -> bool {
    file_name(p).starts_with("node")
}

fn study() -> StudyDefinition {
    let path = deploy_dir().join("study.toml");
    StudyDefinition::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// The OMOP kit's example study, with its own time logic, is valid on the
/// kit's dictionary and keeps its derived block through the wire.
#[test]
fn the_omop_example_study_validates_on_the_kit_dictionary() {
    let dict = plexus_core::Dictionary::load(&deploy_dir().join("omop/dictionary.toml")).unwrap();
    let study = StudyDefinition::load(&deploy_dir().join("omop/study.toml")).unwrap();
    study.validate(&dict).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((study.derived.len(), study.concept_sets.len()), (6, 1));
    let back = StudyDefinition::try_from(plexus_proto::convert::study_to_pb(&study, 0)).unwrap();
    assert_eq!(back.definition_hash(), study.definition_hash());
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[test]
fn every_toml_in_deploy_is_checked_here() {
    let names: Vec<String> = files(&deploy_dir(), "toml")
        .iter()
        .map(|p| file_name(p))
        .collect();
    for n in &names {
        assert!(
            n == "coordinator.toml" || n == "study.toml" || n.starts_with("node"),
            "deploy/{n} is checked by no test; add a check for it to tests/tests/it/deploy_configs.rs"
        );
    }
    assert!(
        names.iter().any(|n| n == "coordinator.toml"),
        "deploy/coordinator.toml is missing"
    );
    assert!(
        names.iter().filter(|n| n.starts_with("node")).count() >= 3,
        "{names:?}"
    );
    assert!(
        deploy_dir().join("state").is_dir(),
        "deploy/state/ must exist: the coordinator's SQLite file is created there, not its folder"
    );
}

#[test]
fn study_is_valid_and_is_the_demo_study() {
    let s = study();
    let purpose = s.validate(&Dictionary::cardiovascular()).unwrap();
    assert_eq!(purpose.to_string(), "DS:MONDO:0005160+NPU");
    assert_eq!(
        s,
        sandbox::demo_study(),
        "deploy/study.toml and DEMO_STUDY_TOML in sandbox/src/lib.rs differ"
    );
}

#[test]
fn queries_validate_and_cover_every_analysis() {
    let dict = Dictionary::cardiovascular();
    let s = study();
    let mut kinds = BTreeSet::new();
    let paths = files(&deploy_dir().join("queries"), "json");
    assert!(!paths.is_empty(), "no queries in deploy/queries");
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap();
        let q = Query::from_json(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        q.validate(&dict)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // The demo study runs under differential privacy and lists every
        // analysis released under it; gbdt is not yet (it is refused
        // there), so its example runs in an exact study that lists it.
        let mut exact = s.clone();
        if matches!(
            q.analysis.kind(),
            AnalysisKind::Gbdt | AnalysisKind::ModelPerformance
        ) {
            assert!(!s.analyses.contains(&q.analysis.kind()));
            exact.privacy.exact = true;
            exact.analyses.push(q.analysis.kind());
        }
        exact
            .permits(&q)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            file_name(&path),
            format!("{}.json", q.analysis.kind()),
            "deploy/queries/<analysis>.json should hold a query of that analysis"
        );
        kinds.insert(q.analysis.kind());
    }
    assert_eq!(kinds, AnalysisKind::ALL.into_iter().collect());
}

/// The walkthrough's layout in a temporary folder: `deploy/` (copied configs),
/// `deploy/demo/` (what `plexus demo --keep deploy/demo` writes) and
/// `pki/` (what `plexus pki init` and `plexus pki issue` write).
struct Layout {
    _temp: tempfile::TempDir,
    root: PathBuf,
    sandbox: Sandbox,
}

impl Layout {
    async fn new() -> Result<Self> {
        let temp = tempfile::Builder::new()
            .prefix("plexus-deploy-")
            .tempdir()?;
        let root = temp.path().to_path_buf();
        let deploy = root.join("deploy");
        std::fs::create_dir_all(deploy.join("state"))?;
        for p in files(&deploy_dir(), "toml") {
            std::fs::copy(&p, deploy.join(file_name(&p)))?;
        }

        let mut opts = SandboxOptions::new(3000, 17);
        opts.dir = Some(deploy.join("demo"));
        let sandbox = Sandbox::prepare(opts).await?;

        // What `plexus pki init` and `plexus pki issue` write.
        let pki = root.join("pki");
        let ca = CaDir::create(
            &pki,
            DevCa::generate("deploy test CA")?,
            plexus_tls::CRL_VALIDITY_DAYS,
        )?;
        plexus_tls::SigningKey::generate_into(&pki, "coordinator")?;
        ca.issue(
            Role::Coordinator,
            "coordinator",
            &["localhost".into()],
            &["127.0.0.1".parse()?],
        )?;
        for node in &study().nodes {
            ca.issue(Role::Node, node, &[], &[])?;
        }
        for (role, name) in [
            (Role::Admin, "admin"),
            (Role::Researcher, "alice"),
            (Role::Auditor, "auditor"),
        ] {
            ca.issue(role, name, &[], &[])?;
        }
        Ok(Layout {
            _temp: temp,
            root,
            sandbox,
        })
    }

    fn deploy(&self) -> PathBuf {
        self.root.join("deploy")
    }

    fn tls(&self, name: &str) -> TlsFiles {
        let pki = self.root.join("pki");
        TlsFiles {
            ca: pki.join("ca.pem"),
            cert: pki.join(format!("{name}.pem")),
            key: pki.join(format!("{name}.key")),
            crl: Some(pki.join("crl.pem")),
        }
    }

    fn coordinator_config(&self) -> CoordinatorConfig {
        CoordinatorConfig::load(&self.deploy().join("coordinator.toml"))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Every node config, loaded (parsed, paths resolved, validated) and
    /// checked against the study, the certificates and the demo's files.
    fn node_configs(&self) -> Vec<NodeConfig> {
        let s = study();
        let listen = self.coordinator_config().coordinator.listen;
        let mut ids = BTreeSet::new();
        let mut out = Vec::new();
        for path in files(&self.deploy(), "toml")
            .into_iter()
            .filter(|p| is_node_config(p))
        {
            let what = file_name(&path);
            let cfg = NodeConfig::load(&path).unwrap_or_else(|e| panic!("{what}: {e}"));
            let id = cfg.node.id.clone();
            assert!(ids.insert(id.clone()), "{what}: node id {id} used twice");
            assert!(
                s.nodes.contains(&id),
                "{what}: {id} is not a node of the study"
            );
            let hash = s.definition_hash();
            assert!(
                cfg.policy
                    .studies
                    .get(&s.id)
                    .is_some_and(|p| p.definition_hashes.contains(&hash)),
                "{what}: does not approve deploy/study.toml; pin its hash {hash} in policy.studies.{}.definition_hashes",
                s.id
            );
            assert_eq!(
                cfg.coordinator.address,
                format!("https://{listen}"),
                "{what}"
            );
            assert_eq!(
                cfg.coordinator.server_name.as_deref(),
                Some("localhost"),
                "{what}"
            );
            let tls = self.tls(&id);
            let (Some(crl), Some(want_crl)) = (&cfg.tls.crl, &tls.crl) else {
                panic!("{what}: [tls] crl must name ../pki/crl.pem");
            };
            for (got, want) in [
                (&cfg.tls.ca, &tls.ca),
                (&cfg.tls.cert, &tls.cert),
                (&cfg.tls.key, &tls.key),
                (crl, want_crl),
            ] {
                assert!(
                    same_file(got, want),
                    "{what}: {} is not {}",
                    got.display(),
                    want.display()
                );
            }
            let columns: Vec<(String, String)> = cfg
                .data
                .columns
                .iter()
                .map(|(v, c)| (v.clone(), c.column.clone()))
                .collect();
            let mut expected: Vec<(String, String)> = synth::node_columns()
                .into_iter()
                .map(|(v, c)| (v.to_string(), c.to_string()))
                .collect();
            expected.sort();
            assert_eq!(
                columns, expected,
                "{what}: [data.columns] differs from synth::node_columns()"
            );
            let demo = &self.sandbox.node_configs[&id];
            assert_eq!(cfg.data.patient_id, demo.data.patient_id, "{what}");
            assert!(
                same_file(&cfg.data.path, &demo.data.path),
                "{what}: data.path {}",
                cfg.data.path.display()
            );
            assert!(
                same_file(&cfg.consent.path, &demo.consent.path),
                "{what}: consent.path"
            );
            match (&cfg.consent.opt_out, &demo.consent.opt_out) {
                (Some(a), Some(b)) => assert!(same_file(a, b), "{what}: consent.opt_out"),
                other => panic!("{what}: consent.opt_out {other:?}"),
            }
            out.push(cfg);
        }
        let expected: BTreeSet<String> = s.nodes.iter().cloned().collect();
        assert_eq!(
            ids, expected,
            "every node of the study needs a deploy/node-*.toml"
        );
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_config_loads() {
    let layout = Layout::new().await.unwrap();
    let cfg = layout.coordinator_config();
    let c = &cfg.coordinator;
    assert_eq!(c.listen.to_string(), "127.0.0.1:7443");
    assert_eq!(
        c.database_url,
        format!(
            "sqlite://{}",
            layout.deploy().join("state/coordinator.db").display()
        )
    );
    assert_eq!(c.min_cell_size, plexus_core::DEFAULT_MIN_CELL_SIZE);
    assert_eq!(c.tls_reload_ms, 2000);
    let tls = layout.tls("coordinator");
    assert!(same_file(&cfg.tls.cert, &tls.cert));
    assert!(same_file(
        cfg.tls.crl.as_deref().expect("[tls] crl"),
        tls.crl.as_deref().unwrap()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_configs_open_the_demo_data() {
    let layout = Layout::new().await.unwrap();
    let dict = std::sync::Arc::new(Dictionary::cardiovascular());
    for cfg in layout.node_configs() {
        let source = plexus_node::data::DataSource::open(&cfg.data, &cfg.consent, dict.clone())
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", cfg.node.id));
        assert_eq!(
            source.variables().len(),
            dict.variables.len(),
            "{}",
            cfg.node.id
        );
    }
}

struct Running {
    token: CancellationToken,
    task: JoinHandle<Result<()>>,
}

impl Running {
    async fn stop(self) -> Result<()> {
        self.token.cancel();
        self.task.await?
    }
}

async fn wait_live(admin: &Client, nodes: &[String]) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let listed = admin
            .admin()
            .list_nodes(pb::ListNodesRequest {})
            .await?
            .into_inner()
            .nodes;
        if nodes
            .iter()
            .all(|n| listed.iter().any(|l| l.live && &l.node_id == n))
        {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("nodes {nodes:?} did not connect within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The walkthrough (docs/src/walkthrough.md), with the coordinator on a free port instead of 7443.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walkthrough_runs_from_the_deploy_files() {
    let layout = Layout::new().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());

    let token = CancellationToken::new();
    let config = layout.coordinator_config();
    let t = token.clone();
    let coordinator = Running {
        token,
        task: tokio::spawn(async move { Ok(plexus_coordinator::run(config, listener, t).await?) }),
    };
    let mut nodes = Vec::new();
    let mut names = Vec::new();
    for mut cfg in layout.node_configs() {
        cfg.coordinator.address = url.clone();
        names.push(cfg.node.id.clone());
        let token = CancellationToken::new();
        let t = token.clone();
        let task = tokio::spawn(async move { Ok(plexus_node::run(cfg, t).await?) });
        nodes.push(Running { token, task });
    }

    let result = async {
        let localhost = Some("localhost".to_string());
        let admin = Client::connect_with(&url, &layout.tls("admin"), localhost.clone()).await?;
        wait_live(&admin, &names).await?;
        let def = StudyDefinition::load(&layout.deploy().join("study.toml"))?;
        admin
            .admin()
            .register_study(pb::RegisterStudyRequest {
                study: Some(plexus_proto::convert::study_to_pb(&def, 0)),
            })
            .await?;

        let alice = Client::connect_with(&url, &layout.tls("alice"), localhost.clone()).await?;
        let mut answered = 0;
        for path in files(&deploy_dir().join("queries"), "json") {
            let query = Query::from_json(&std::fs::read_to_string(&path)?)?;
            // The deploy study is under differential privacy, which does
            // not release Cox models yet: refused at submission, saying so.
            if query.analysis.kind() == AnalysisKind::Cox {
                let e = alice
                    .run_query(&def.id, &query, Duration::from_secs(60))
                    .await
                    .unwrap_err();
                assert_eq!(e.code, plexus_core::ErrorCode::Policy, "{}", path.display());
                assert!(e.message.contains("differential privacy"), "{e}");
                continue;
            }
            // Nor boosted trees or model validation, which the deploy
            // study does not list.
            let kind = query.analysis.kind();
            if matches!(kind, AnalysisKind::Gbdt | AnalysisKind::ModelPerformance) {
                let e = alice
                    .run_query(&def.id, &query, Duration::from_secs(60))
                    .await
                    .unwrap_err();
                assert_eq!(e.code, plexus_core::ErrorCode::Policy, "{}", path.display());
                assert!(e.message.contains(kind.as_str()), "{e}");
                continue;
            }
            answered += 1;
            let r = alice
                .run_query(&def.id, &query, Duration::from_secs(60))
                .await?;
            let pooled = outcome(&r).with_context(|| format!("{}", path.display()))?;
            let p = &pooled.provenance;
            assert_eq!(
                p.answered as usize,
                names.len(),
                "{}: {p:?}",
                path.display()
            );
            assert!(
                p.nodes
                    .iter()
                    .all(|n| matches!(n.status, NodeStatus::Answered | NodeStatus::Suppressed)),
                "{}: {p:?}",
                path.display()
            );
            assert_eq!(p.min_nodes, def.min_nodes);
        }

        let auditor = Client::connect_with(&url, &layout.tls("auditor"), localhost).await?;
        let events = auditor
            .audit()
            .list_events(pb::ListEventsRequest::default())
            .await?
            .into_inner()
            .events;
        let results = events
            .iter()
            .filter(|e| e.action == "query.result" && e.outcome == "ok")
            .count();
        assert_eq!(results, answered);
        anyhow::Ok(())
    }
    .await;

    for n in nodes {
        n.stop().await.unwrap();
    }
    coordinator.stop().await.unwrap();
    result.unwrap();
}

/// `plexus synth --out deploy/demo` writes the files the example node
/// configs read, with the patients `plexus demo --keep deploy/demo` writes
/// for the same `--patients` and `--seed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synth_writes_the_data_the_node_configs_read() {
    let demo = SandboxOptions::new(300, 23);
    assert_eq!(plexus::synth_command::specs(3, 300, 23), demo.sites);
    for i in 0..5 {
        assert_eq!(
            plexus::synth_command::format_of(None, i),
            demo.formats[i % demo.formats.len()],
            "site {i}"
        );
        assert_eq!(plexus::synth_command::site_name(i), sandbox::node_name(i));
    }
    assert_eq!(plexus::synth_command::site_name(30), sandbox::node_name(30));

    let temp = tempfile::tempdir().unwrap();
    let deploy = temp.path().join("deploy");
    std::fs::create_dir_all(&deploy).unwrap();
    for p in files(&deploy_dir(), "toml") {
        std::fs::copy(&p, deploy.join(file_name(&p))).unwrap();
    }
    let opts = plexus::synth_command::SynthOptions {
        out: deploy.join("demo"),
        sites: 3,
        patients: 300,
        format: None,
        seed: 23,
    };
    plexus::synth_command::write(&opts).unwrap();
    let dict = std::sync::Arc::new(Dictionary::cardiovascular());
    for path in files(&deploy, "toml")
        .into_iter()
        .filter(|p| is_node_config(p))
    {
        let mut cfg: NodeConfig = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        cfg.resolve(&deploy);
        let source = plexus_node::data::DataSource::open(&cfg.data, &cfg.consent, dict.clone())
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", file_name(&path)));
        assert_eq!(source.variables().len(), dict.variables.len());
    }
}
