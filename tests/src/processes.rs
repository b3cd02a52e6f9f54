//! Plexus run the way a systemd install runs it: the real `plexus-coordinator`
//! and `plexus-node` binaries as separate processes, started with the
//! `ExecStart=` and `Environment=` of the units in `deploy/systemd/`, reading
//! the example configs of `deploy/systemd/` with their absolute paths
//! (`/etc/plexus`, `/var/lib`, `/var/cache`, `/srv/plexus`) moved under a temporary root,
//! certificates from `plexus pki` and queries through the `plexus` CLI.
//!
//! The binaries are built by `cargo build` the first time a test asks for
//! them (a test crate cannot name another package's binaries), into the same
//! target folder as the running test.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use plexus_client::Client;
use plexus_core::pool::PooledResult;
use plexus_core::StudyDefinition;
use plexus_proto::v1 as pb;
use plexus_sandbox::synth::{self, DataFormat};
use plexus_tls::TlsFiles;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The three daemons' and the CLI's executables.
#[derive(Debug)]
pub struct Binaries {
    pub plexus: PathBuf,
    pub coordinator: PathBuf,
    pub node: PathBuf,
}

/// Builds (once per test binary; a no-op when up to date) and locates the
/// binaries next to the running test: `target/<profile>/deps/test-…` lives
/// beside `target/<profile>/plexus`.
pub fn binaries() -> Result<&'static Binaries> {
    static BINARIES: OnceLock<std::result::Result<Binaries, String>> = OnceLock::new();
    BINARIES
        .get_or_init(|| build_binaries().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("{e}"))
}

fn build_binaries() -> Result<Binaries> {
    let exe = std::env::current_exe()?;
    let deps = exe.parent().context("test executable has no folder")?;
    let profile_dir = if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().context("deps/ has no parent")?
    } else {
        deps
    };
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let target_dir = profile_dir.parent().context("no target folder")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(repo_root())
        // The workspace's binaries with the dependency features of
        // `cargo test --workspace` (selecting examples, of which there are
        // none, turns the dev-dependencies on): the dependencies built for
        // the tests are reused instead of compiled again with other features.
        .args(["build", "--locked", "--quiet"])
        .args(["--workspace", "--bins", "--examples"])
        .arg("--target-dir")
        .arg(target_dir);
    // What cargo sets for the running test describes the tests crate, not
    // the build: ring's build script tracks CARGO_MANIFEST_DIR, so with
    // the test's value inherited, ring and everything above it (rustls,
    // sqlx, the workspace) were compiled a second time, and the next
    // top-level build compiled them back.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || key.starts_with("CARGO_BIN_")
            || key.starts_with("CARGO_CRATE_")
            || key == "CARGO_TARGET_TMPDIR"
            || key == "CARGO_PRIMARY_PACKAGE"
        {
            cmd.env_remove(key.as_ref());
        }
    }
    if release {
        cmd.arg("--release");
    }
    let out = cmd.output().context("cannot run cargo build")?;
    if !out.status.success() {
        bail!(
            "cargo build of the daemons failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let bin = |name: &str| -> Result<PathBuf> {
        let p = profile_dir.join(name);
        if !p.is_file() {
            bail!("{} is missing after cargo build", p.display());
        }
        Ok(p)
    };
    Ok(Binaries {
        plexus: bin("plexus")?,
        coordinator: bin("plexus-coordinator")?,
        node: bin("plexus-node")?,
    })
}

/// What a test needs from a unit file: the command line, the environment and
/// the state directories systemd would create before starting it.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    pub exec_start: Vec<String>,
    pub environment: Vec<(String, String)>,
    pub state_directories: Vec<String>,
}

/// Reads the `[Service]` keys a test runs a unit with, `%i` replaced by
/// `instance`. Quoting in `ExecStart=` is not supported (the units need none).
pub fn read_unit(path: &Path, instance: Option<&str>) -> Result<Unit> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut unit = Unit {
        exec_start: Vec::new(),
        environment: Vec::new(),
        state_directories: Vec::new(),
    };
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = match instance {
            Some(i) => value.replace("%i", i),
            None => value.to_string(),
        };
        match key {
            "ExecStart" => unit.exec_start = value.split_whitespace().map(String::from).collect(),
            "Environment" => {
                let (k, v) = value
                    .split_once('=')
                    .with_context(|| format!("{}: Environment={value}", path.display()))?;
                unit.environment.push((k.into(), v.into()));
            }
            "StateDirectory" => unit
                .state_directories
                .extend(value.split_whitespace().map(String::from)),
            _ => {}
        }
    }
    if unit.exec_start.is_empty() {
        bail!("{} has no ExecStart=", path.display());
    }
    Ok(unit)
}

/// One daemon process; killed when dropped.
pub struct Daemon {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    /// Starts `argv` with stdout and stderr appended to `log`.
    pub fn spawn(
        name: &str,
        argv: &[String],
        env: &[(String, String)],
        log: &Path,
    ) -> Result<Self> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {name}: {argv:?}"))?;
        Ok(Daemon {
            name: name.into(),
            child,
            log: log.into(),
        })
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, signal: Signal) -> Result<()> {
        kill(self.pid(), signal).with_context(|| format!("cannot send {signal} to {}", self.name))
    }

    /// What the daemon has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Still running?
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to end by itself.
    pub async fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{} did not exit within {timeout:?}; its log:\n{}",
                    self.name,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, as `systemctl stop` sends it, then waits up to `timeout`
    /// (the units' TimeoutStopSec is 20 s) for a clean exit.
    pub async fn terminate(mut self, timeout: Duration) -> Result<ExitStatus> {
        self.signal(Signal::SIGTERM)?;
        self.wait(timeout).await
    }

    /// SIGKILL: the process dies without a chance to say goodbye.
    pub async fn kill(mut self) -> Result<ExitStatus> {
        self.signal(Signal::SIGKILL)?;
        self.wait(Duration::from_secs(10)).await
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// How to lay out a test install.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// The address the coordinator listens on (port chosen free) and its
    /// certificate carries with `--ip`.
    pub listen_ip: IpAddr,
    pub patients_per_site: usize,
    pub seed: u64,
    pub heartbeat_interval_secs: u64,
    pub job_timeout_secs: u64,
    pub max_backoff_secs: u64,
    /// Register deploy/study.toml without noise (`[privacy] exact = true`)
    /// and have the nodes accept that, so results can be compared exactly.
    pub exact: bool,
}

impl InstallOptions {
    /// What the fault tests run with: heartbeats each second, jobs timed
    /// out after 15 s, nodes reconnecting within a second, and the study
    /// exact so results can be compared exactly.
    pub fn fast() -> Self {
        InstallOptions {
            heartbeat_interval_secs: 1,
            job_timeout_secs: 15,
            max_backoff_secs: 1,
            exact: true,
            ..InstallOptions::default()
        }
    }
}

impl Default for InstallOptions {
    fn default() -> Self {
        InstallOptions {
            listen_ip: IpAddr::from([127, 0, 0, 1]),
            patients_per_site: 400,
            seed: 29,
            heartbeat_interval_secs: 5,
            job_timeout_secs: 60,
            max_backoff_secs: 30,
            exact: false,
        }
    }
}

/// A coordinator and the demo's three hospitals installed under a temporary
/// root as `deploy/systemd/` describes.
pub struct Install {
    _temp: tempfile::TempDir,
    pub root: PathBuf,
    pub bins: &'static Binaries,
    pub listen: SocketAddr,
    pub url: String,
    pub nodes: Vec<String>,
    pub study: StudyDefinition,
    /// The study file registered (deploy/study.toml, made exact if asked).
    pub study_file: PathBuf,
}

/// The node names and data formats of the demo (`plexus demo --keep`).
const SITES: [(&str, DataFormat); 3] = [
    ("hospital-a", DataFormat::Parquet),
    ("hospital-b", DataFormat::Parquet),
    ("hospital-c", DataFormat::Csv),
];

impl Install {
    pub async fn new(opts: InstallOptions) -> Result<Self> {
        let bins = binaries()?;
        let temp = tempfile::Builder::new()
            .prefix("plexus-install-")
            .tempdir()?;
        let root = temp.path().to_path_buf();
        for d in ["etc/plexus", "var/lib", "srv/plexus", "log"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        let listen = {
            let l = std::net::TcpListener::bind((opts.listen_ip, 0))
                .with_context(|| format!("cannot bind {}", opts.listen_ip))?;
            l.local_addr()?
        };
        let mut install = Install {
            _temp: temp,
            root,
            bins,
            listen,
            url: format!("https://{listen}"),
            nodes: SITES.iter().map(|(n, _)| n.to_string()).collect(),
            study: StudyDefinition::load(&repo_root().join("deploy/study.toml"))?,
            study_file: PathBuf::new(),
        };

        // The hospitals' data, where the example node.toml expects it.
        for (spec, (name, format)) in synth::demo_specs(opts.patients_per_site, opts.seed)
            .iter()
            .zip(SITES)
        {
            assert_eq!(spec.name, name);
            synth::write_generated_site(spec, &install.path("/srv/plexus").join(name), format)?;
        }

        // The dev CA, with the `plexus pki` commands the walkthrough gives (docs/src/walkthrough.md).
        let pki = install.path("/etc/plexus/pki");
        let pki = pki.to_str().context("non-UTF-8 temp path")?.to_string();
        let ip = opts.listen_ip.to_string();
        install.cli_offline(&["pki", "init", "--dir", &pki]).await?;
        let coordinator = [
            "pki",
            "issue",
            "--dir",
            &pki,
            "--role",
            "coordinator",
            "--name",
            "coordinator",
            "--dns",
            "localhost",
            "--ip",
            &ip,
        ];
        install.cli_offline(&coordinator).await?;
        for (role, name) in [
            ("node", "hospital-a"),
            ("node", "hospital-b"),
            ("node", "hospital-c"),
            ("admin", "admin"),
            ("researcher", "alice"),
            ("auditor", "auditor"),
        ] {
            install
                .cli_offline(&[
                    "pki", "issue", "--dir", &pki, "--role", role, "--name", name,
                ])
                .await?;
        }

        // The study, exact if asked.
        let mut study_text = std::fs::read_to_string(repo_root().join("deploy/study.toml"))?;
        if opts.exact {
            study_text = study_text.replacen("[privacy]\n", "[privacy]\nexact = true\n", 1);
            install.study = StudyDefinition::from_toml(&study_text)?;
            assert!(install.study.privacy.exact);
        }
        install.study_file = install.path("/etc/plexus/study.toml");
        std::fs::write(&install.study_file, &study_text)?;

        // The example configs, moved under the root.
        let mut c = install.config_from("deploy/systemd/coordinator.toml", &[])?;
        let s = table(&mut c, "coordinator")?;
        s.insert("listen".into(), listen.to_string().into());
        s.insert(
            "heartbeat_interval_secs".into(),
            (opts.heartbeat_interval_secs as i64).into(),
        );
        s.insert(
            "job_timeout_secs".into(),
            (opts.job_timeout_secs as i64).into(),
        );
        let path = install.path("/etc/plexus/coordinator.toml");
        write_config(&path, c, "coordinator", |p| {
            plexus_coordinator::CoordinatorConfig::load(p)
                .map(drop)
                .map_err(|e| e.to_string())
        })?;

        for (id, format) in SITES {
            let ext = format.extension();
            let mut n = install.config_from(
                "deploy/systemd/node.toml",
                &[
                    ("hospital-a", id),
                    ("patients.parquet", &format!("patients.{ext}")),
                ],
            )?;
            let s = table(&mut n, "node")?;
            let state = install.path(&format!("/var/lib/plexus-node/{id}"));
            s.insert("state_dir".into(), state.display().to_string().into());
            // As plexus-node@.service's CacheDirectory=plexus-node/%i.
            let cache = install.path(&format!("/var/cache/plexus-node/{id}"));
            table(&mut n, "data")?.insert("cache_dir".into(), cache.display().to_string().into());
            let s = table(&mut n, "coordinator")?;
            s.insert("address".into(), install.url.clone().into());
            s.insert("server_name".into(), "localhost".into());
            s.insert(
                "max_backoff_secs".into(),
                (opts.max_backoff_secs as i64).into(),
            );
            if opts.exact {
                let policy = table(&mut n, "policy")?;
                policy.insert(
                    "exact_studies".into(),
                    vec![install.study.id.clone()].into(),
                );
                let pin = policy
                    .get_mut("studies")
                    .and_then(|s| s.as_table_mut())
                    .and_then(|s| s.get_mut(&install.study.id))
                    .and_then(|s| s.as_table_mut())
                    .context("node.toml approves no aaa-outcomes")?;
                pin.insert(
                    "definition_hashes".into(),
                    vec![install.study.definition_hash()].into(),
                );
            }
            let path = install.path(&format!("/etc/plexus/node-{id}.toml"));
            write_config(&path, n, "node", |p| {
                plexus_node::NodeConfig::load(p)
                    .map(drop)
                    .map_err(|e| e.to_string())
            })?;
        }
        Ok(install)
    }

    /// Where absolute path `abs` of the real install lives under the root.
    pub fn path(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    /// A deploy/ example config with its absolute paths under the root and
    /// `replace` applied to its text.
    fn config_from(&self, rel: &str, replace: &[(&str, &str)]) -> Result<toml::Table> {
        let mut text = std::fs::read_to_string(repo_root().join(rel))?;
        for (from, to) in replace {
            text = text.replace(from, to);
        }
        for prefix in ["/etc/plexus", "/var/lib/", "/var/cache/", "/srv/plexus"] {
            text = text.replace(
                &format!("\"{prefix}"),
                &format!("\"{}", self.path(prefix).display()),
            );
        }
        text = text.replace(
            "sqlite:///var/lib/",
            &format!("sqlite://{}/", self.path("/var/lib").display()),
        );
        toml::from_str(&text).with_context(|| format!("{rel} is not TOML"))
    }

    /// The command line and environment of `deploy/systemd/<unit>`, with the
    /// binaries and paths of this install; creates its StateDirectory= as
    /// systemd does (mode 0700).
    pub fn unit_command(&self, unit: &str, instance: Option<&str>) -> Result<Unit> {
        let mut u = read_unit(&repo_root().join("deploy/systemd").join(unit), instance)?;
        for arg in &mut u.exec_start {
            *arg = match arg.as_str() {
                "/usr/bin/plexus-coordinator" => self.bins.coordinator.display().to_string(),
                "/usr/bin/plexus-node" => self.bins.node.display().to_string(),
                a if a.starts_with('/') => self.path(a).display().to_string(),
                a => a.to_string(),
            };
        }
        for d in &u.state_directories {
            let dir = self.path("/var/lib").join(d);
            std::fs::create_dir_all(&dir)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(u)
    }

    /// `systemctl start plexus-coordinator`.
    pub fn start_coordinator(&self) -> Result<Daemon> {
        let u = self.unit_command("plexus-coordinator.service", None)?;
        Daemon::spawn(
            "coordinator",
            &u.exec_start,
            &u.environment,
            &self.root.join("log/coordinator.log"),
        )
    }

    /// `systemctl start plexus-node@ID`, inside network namespace `netns` if given.
    pub fn start_node(&self, id: &str, netns: Option<&str>) -> Result<Daemon> {
        let u = self.unit_command("plexus-node@.service", Some(id))?;
        let mut argv = u.exec_start;
        if let Some(ns) = netns {
            let mut wrapped: Vec<String> = ["ip", "netns", "exec", ns].map(String::from).to_vec();
            wrapped.append(&mut argv);
            argv = wrapped;
        }
        // Appended to across restarts, so the log tells the whole story.
        let log = self.root.join(format!("log/{id}.log"));
        Daemon::spawn(id, &argv, &u.environment, &log)
    }

    pub fn start_nodes(&self) -> Result<BTreeMap<String, Daemon>> {
        self.nodes
            .iter()
            .map(|n| Ok((n.clone(), self.start_node(n, None)?)))
            .collect()
    }

    /// Starts the coordinator and every node, and waits until every node
    /// is live (see [`Install::wait_all_live`]).
    pub async fn start_all(&self) -> Result<(Daemon, BTreeMap<String, Daemon>)> {
        let coordinator = self.start_coordinator()?;
        let nodes = self.start_nodes()?;
        self.wait_all_live(&coordinator).await?;
        Ok((coordinator, nodes))
    }

    /// Starts the coordinator (again: after a kill, say) with the nodes
    /// running, and waits until every node is live on it.
    pub async fn restart_coordinator(&self) -> Result<Daemon> {
        let coordinator = self.start_coordinator()?;
        self.wait_all_live(&coordinator).await?;
        Ok(coordinator)
    }

    /// Waits up to a minute until every node is live; the error holds the
    /// log of `started`, the daemon the test (re)started.
    pub async fn wait_all_live(&self, started: &Daemon) -> Result<()> {
        let all: Vec<&str> = self.nodes.iter().map(String::as_str).collect();
        self.wait_live(&all, true, Duration::from_secs(60))
            .await
            .map_err(|e| anyhow!("{e}\n{} log:\n{}", started.name, started.log()))
    }

    fn pki(&self) -> PathBuf {
        self.path("/etc/plexus/pki")
    }

    /// `plexus ARGS` with no coordinator involved.
    async fn cli_offline(&self, args: &[&str]) -> Result<String> {
        run(&self.bins.plexus, args).await
    }

    /// `plexus --coordinator URL --pki PKI --as WHO ARGS`.
    pub async fn cli(&self, who: &str, args: &[&str]) -> Result<String> {
        let pki = self.pki().display().to_string();
        let mut all = vec!["--coordinator", &self.url, "--pki", &pki, "--as", who];
        all.extend_from_slice(args);
        run(&self.bins.plexus, &all).await
    }

    /// `plexus --as admin study register --file study.toml`.
    pub async fn register_study(&self) -> Result<()> {
        let file = self.study_file.display().to_string();
        self.cli("admin", &["study", "register", "--file", &file])
            .await
            .map(drop)
    }

    /// `plexus --as alice query --study ID --file q.json --output json`:
    /// the pooled result, or the CLI's error message.
    pub async fn query(&self, name: &str, query_json: &str) -> Result<PooledResult> {
        let file = self.root.join(format!("{name}.json"));
        std::fs::write(&file, query_json)?;
        let file = file.display().to_string();
        let out = self
            .cli(
                "alice",
                &[
                    "query",
                    "--study",
                    &self.study.id,
                    "--file",
                    &file,
                    "--output",
                    "json",
                    "--wait-secs",
                    "120",
                ],
            )
            .await?;
        serde_json::from_str(&out).with_context(|| format!("query {name} printed {out}"))
    }

    pub fn tls(&self, name: &str) -> TlsFiles {
        let pki = self.pki();
        TlsFiles {
            ca: pki.join("ca.pem"),
            cert: pki.join(format!("{name}.pem")),
            key: pki.join(format!("{name}.key")),
            crl: Some(pki.join("crl.pem")),
        }
    }

    /// A gRPC client of the coordinator with `name`'s certificate.
    pub async fn client(&self, name: &str) -> Result<Client> {
        Client::connect_with(&self.url, &self.tls(name), Some("localhost".into())).await
    }

    /// The coordinator's whole audit log, as its auditor reads it.
    pub async fn audit_log(&self) -> Result<Vec<plexus_core::audit::AuditEntry>> {
        let auditor = self.client("auditor").await?;
        let mut entries = Vec::new();
        plexus::audit::stream_log(&auditor, |e| {
            entries.push(e);
            Ok(())
        })
        .await?;
        Ok(entries)
    }

    /// The nodes the coordinator lists as live (empty while it is down).
    pub async fn live_nodes(&self) -> Vec<String> {
        let Ok(admin) = self.client("admin").await else {
            return Vec::new();
        };
        match admin.admin().list_nodes(pb::ListNodesRequest {}).await {
            Ok(r) => r
                .into_inner()
                .nodes
                .into_iter()
                .filter(|n| n.live)
                .map(|n| n.node_id)
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Waits until every node in `nodes` is live (`live`) or none is (`!live`).
    pub async fn wait_live(&self, nodes: &[&str], live: bool, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let listed = self.live_nodes().await;
            if nodes.iter().all(|n| listed.iter().any(|l| l == n) == live) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "nodes {nodes:?} did not become {} within {timeout:?} (live: {listed:?}); logs under {}",
                    if live { "live" } else { "not live" },
                    self.root.join("log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A small tmpfs mounted over a folder, to fill up: a full disk for the
/// daemon whose state folder it is. Unmounted when dropped.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Whether this test may mount a tmpfs (it runs as root); when not, says
    /// the test is skipped, `what` naming the folder.
    pub fn permitted(what: &str) -> bool {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        eprintln!("skipped: a small tmpfs for {what} needs root (mount); run the test as root");
        false
    }

    /// Mounts a tmpfs of `size` (`mount` syntax: "4m") at `dir`, made if
    /// missing; `None` after saying the test is skipped when mounting is not
    /// permitted here, `what` naming the folder.
    pub fn mount(dir: &Path, size: &str, what: &str) -> Option<Self> {
        match Self::try_mount(dir, size) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("skipped: cannot mount a tmpfs for {what} ({e})");
                None
            }
        }
    }

    fn try_mount(dir: &Path, size: &str) -> std::result::Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn table<'a>(t: &'a mut toml::Table, key: &str) -> Result<&'a mut toml::Table> {
    t.get_mut(key)
        .and_then(|v| v.as_table_mut())
        .with_context(|| format!("no [{key}] section"))
}

/// Writes a config. `metrics_listen` (the operations endpoint) is set to a
/// free port when this build's config knows the key and left out when it
/// does not, so the test runs the daemons either way.
fn write_config(
    path: &Path,
    mut config: toml::Table,
    section: &str,
    load: impl Fn(&Path) -> std::result::Result<(), String>,
) -> Result<()> {
    let s = table(&mut config, section)?;
    if s.contains_key("metrics_listen") {
        s.insert("metrics_listen".into(), "127.0.0.1:0".into());
    }
    std::fs::write(path, toml::to_string(&config)?)?;
    if let Err(e) = load(path) {
        if !e.contains("metrics_listen") {
            bail!("{}: {e}", path.display());
        }
        table(&mut config, section)?.remove("metrics_listen");
        std::fs::write(path, toml::to_string(&config)?)?;
        load(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// All a finished process printed: its stdout, then its stderr.
pub fn printed(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `program args`, returning stdout, or its stderr as the error.
pub async fn run(program: &Path, args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("cannot run {}", program.display()))?;
    if !out.status.success() {
        bail!(
            "`{} {}` failed ({}): {}",
            program.file_name().unwrap_or_default().to_string_lossy(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}
