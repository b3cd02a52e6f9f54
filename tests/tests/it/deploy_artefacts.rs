//! The deployable artefacts under `deploy/` checked as far as this machine
//! allows: the systemd units' hardening and `systemd-analyze verify`, the
//! Dockerfiles, compose file and Helm charts through `deploy/check.sh`
//! (registry tools, no engine or cluster), every example config parsed and
//! validated, and the systemd-style deployment run as separate processes
//! from the units' command lines and the example configs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use plexus_core::pool::NodeStatus;
use plexus_core::{AnalysisKind, Query};
use plexus_tests::processes::{self, repo_root, Install, InstallOptions};

fn deploy() -> PathBuf {
    repo_root().join("deploy")
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skips with `why` and how to enable the check, or fails under CI=true.
fn skip(test: &str, why: &str) {
    assert!(!ci(), "{test}: {why} (CI=true: this check must run)");
    eprintln!("skipped {test}: {why}");
}

/// `key=value` lines of a unit, every value of a repeated key in order.
fn directives(path: &Path) -> BTreeMap<String, Vec<String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            out.entry(k.into()).or_default().push(v.into());
        }
    }
    out
}

const UNITS: [&str; 3] = [
    "plexus-coordinator.service",
    "plexus-node.service",
    "plexus-node@.service",
];

#[test]
fn units_carry_the_hardening_directives() {
    let required = [
        ("User", "plexus"),
        ("Group", "plexus"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("AmbientCapabilities", ""),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectClock", "yes"),
        ("RestrictNamespaces", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("UMask", "0077"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
    ];
    for unit in UNITS {
        let d = directives(&deploy().join("systemd").join(unit));
        let one = |k: &str| -> &str {
            match d.get(k).map(Vec::as_slice) {
                Some([v]) => v,
                other => panic!("{unit}: {k}= should be set once, found {other:?}"),
            }
        };
        for (k, v) in required {
            assert_eq!(one(k), v, "{unit}: {k}=");
        }
        assert_eq!(
            d["SystemCallFilter"].first().map(String::as_str),
            Some("@system-service"),
            "{unit}"
        );
        // The only writable path is the unit's own state directory.
        let state = one("StateDirectory");
        assert_eq!(one("ReadWritePaths"), format!("/var/lib/{state}"), "{unit}");
        assert!(state.starts_with("plexus-"), "{unit}: {state}");
        // Graceful shutdown takes up to 5 s (docs/src/operations/monitoring.md); systemd waits longer
        // before SIGKILL.
        let stop: u64 = one("TimeoutStopSec").parse().unwrap();
        assert!((10..=60).contains(&stop), "{unit}: TimeoutStopSec={stop}");
        assert!(one("ExecStart").starts_with("/usr/bin/plexus-"), "{unit}");
        assert!(
            d["Environment"]
                .iter()
                .any(|e| e == "PLEXUS_LOG_FORMAT=json"),
            "{unit}: JSON logs for the journal"
        );
        assert!(
            !d.contains_key("DynamicUser"),
            "{unit}: User=plexus, not DynamicUser"
        );
    }
    let template = directives(&deploy().join("systemd/plexus-node@.service"));
    assert_eq!(template["StateDirectory"], ["plexus-node/%i"]);
    assert!(template["ExecStart"][0].contains("/etc/plexus/node-%i.toml"));
}

/// The units with ExecStart= pointing at the built binaries (verify checks
/// that the command exists), the template instantiated as hospital-a.
fn units_for_verify() -> (tempfile::TempDir, Vec<PathBuf>) {
    let bins = processes::binaries().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut out = Vec::new();
    for unit in UNITS {
        let text = std::fs::read_to_string(deploy().join("systemd").join(unit))
            .unwrap()
            .replace(
                "/usr/bin/plexus-coordinator",
                bins.coordinator.to_str().unwrap(),
            )
            .replace("/usr/bin/plexus-node", bins.node.to_str().unwrap());
        let name = unit.replace("@.", "@hospital-a.");
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        out.push(path);
    }
    (dir, out)
}

fn systemd_analyze() -> Option<PathBuf> {
    let p = PathBuf::from("/usr/bin/systemd-analyze");
    if p.is_file() {
        Some(p)
    } else {
        skip(
            "systemd units",
            "systemd-analyze is not installed (apt-get install systemd)",
        );
        None
    }
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let (_dir, units) = units_for_verify();
    let out = Command::new(&analyze)
        .arg("verify")
        .args(&units)
        .output()
        .unwrap();
    let text = processes::printed(&out);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{text}"
    );
    assert_eq!(text.trim(), "", "systemd-analyze verify is not clean");
}

#[test]
fn units_score_ok_in_systemd_analyze_security() {
    let Some(analyze) = systemd_analyze() else {
        return;
    };
    let (_dir, units) = units_for_verify();
    for unit in &units {
        let out = Command::new(&analyze)
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(unit)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
        let score: f64 = line
            .split(':')
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("cannot read the score in {line}"));
        println!("{line}");
        // systemd rates 0-10, lower is better; "OK" ends at 2.0 (the
        // exposure left is network access, which a daemon that dials or
        // listens needs).
        assert!(score <= 2.0, "{line}");
    }
}

#[test]
fn check_script_passes_and_rendered_configs_parse() {
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new(deploy().join("check.sh"))
        .arg(out_dir.path())
        .output()
        .unwrap();
    let text = processes::printed(&out);
    if out.status.code() == Some(77) {
        skip("deploy/check.sh", text.trim());
        return;
    }
    assert!(out.status.success(), "deploy/check.sh failed:\n{text}");
    println!("{text}");
    let services = std::fs::read_to_string(out_dir.path().join("compose-services.txt")).unwrap();
    let mut services: Vec<&str> = services.split_whitespace().collect();
    services.sort();
    assert_eq!(
        services,
        [
            "coordinator",
            "node-a",
            "node-b",
            "node-c",
            "pki",
            "postgres",
            "register-study",
            "sample-data"
        ]
    );

    // Every config the charts render is one the daemons accept.
    let mut rendered = 0;
    for case in walk(&out_dir.path().join("helm")) {
        match case.file_name().and_then(|n| n.to_str()) {
            Some("node.toml") => {
                parse_node(&case);
                rendered += 1;
            }
            Some("coordinator.toml") => {
                parse_coordinator(&case);
                rendered += 1;
            }
            _ => {}
        }
    }
    assert_eq!(rendered, 4, "one config per rendered chart case");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// A config's text, with `metrics_listen` left out when this build does not
/// know the key (the operations endpoints are another branch's work).
fn config_text(path: &Path, section: &str, accepts: impl Fn(&str) -> Result<(), String>) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    match accepts(&text) {
        Ok(()) => text,
        Err(e) if e.contains("metrics_listen") => {
            let mut t: toml::Table = toml::from_str(&text).unwrap();
            t[section].as_table_mut().unwrap().remove("metrics_listen");
            toml::to_string(&t).unwrap()
        }
        Err(e) => panic!("{}: {e}", path.display()),
    }
}

fn parse_node(path: &Path) -> plexus_node::NodeConfig {
    let parse = |t: &str| toml::from_str::<plexus_node::NodeConfig>(t).map_err(|e| e.to_string());
    // Parsed, not validate()d: that opens the TLS files, which exist only
    // where the config is installed (the process tests run installed ones).
    let c = parse(&config_text(path, "node", |t| parse(t).map(drop)))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        c.data.columns.len(),
        12,
        "{}: [data.columns]",
        path.display()
    );
    c
}

fn parse_coordinator(path: &Path) -> plexus_coordinator::CoordinatorConfig {
    let parse = |t: &str| {
        toml::from_str::<plexus_coordinator::CoordinatorConfig>(t).map_err(|e| e.to_string())
    };
    // Parsed only: the coordinator's validate() reads the signing key,
    // which exists only where the config is installed.
    let c = parse(&config_text(path, "coordinator", |t| parse(t).map(drop)))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        c.coordinator.database_url.starts_with("postgres://")
            || c.coordinator.database_url.starts_with("sqlite://")
    );
    assert_eq!(c.coordinator.id, "coordinator", "{}", path.display());
    c
}

#[test]
fn compose_and_systemd_configs_parse() {
    let study = plexus_core::StudyDefinition::load(&deploy().join("study.toml")).unwrap();
    let hash = study.definition_hash();
    let mut nodes = Vec::new();
    for dir in ["compose", "systemd"] {
        let coordinator = parse_coordinator(&deploy().join(dir).join("coordinator.toml"));
        assert!(coordinator.tls.crl.is_some(), "{dir}: [tls] crl");
        for p in walk(&deploy().join(dir)) {
            let name = p.file_name().unwrap().to_str().unwrap();
            if name.starts_with("node") && name.ends_with(".toml") {
                let n = parse_node(&p);
                assert!(
                    n.policy.studies[&study.id]
                        .definition_hashes
                        .contains(&hash),
                    "{}: pin deploy/study.toml's hash {hash}",
                    p.display()
                );
                assert!(n.tls.cert.ends_with(format!("{}.pem", n.node.id)));
                nodes.push((dir, n.node.id));
            }
        }
    }
    let compose: Vec<&str> = nodes
        .iter()
        .filter(|(d, _)| *d == "compose")
        .map(|(_, n)| n.as_str())
        .collect();
    assert_eq!(compose, ["hospital-a", "hospital-b", "hospital-c"]);

    // The compose coordinator is on PostgreSQL; every file compose.yaml
    // mounts from the repository exists.
    let c = parse_coordinator(&deploy().join("compose/coordinator.toml"));
    assert!(c.coordinator.database_url.starts_with("postgres://"));
    let compose = std::fs::read_to_string(deploy().join("compose/compose.yaml")).unwrap();
    let mut mounts = 0;
    for line in compose.lines().map(str::trim) {
        if line.starts_with("- ./") || line.starts_with("- ../") {
            let src = line[2..].split(':').next().unwrap();
            let p = deploy().join("compose").join(src);
            assert!(
                p.exists(),
                "compose.yaml mounts {src}, which does not exist"
            );
            mounts += 1;
        }
    }
    assert!(mounts >= 6, "{mounts} bind mounts found");
}

#[test]
fn dockerfiles_build_stripped_release_binaries_as_a_non_root_user() {
    // The images ship the dist profile: release without debug information
    // or symbols (the release binaries are 535 to 600 MB).
    let manifest: toml::Table =
        toml::from_str(&std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap()).unwrap();
    let dist = &manifest["profile"]["dist"];
    assert_eq!(dist["inherits"].as_str(), Some("release"), "{dist}");
    assert_eq!(dist["strip"].as_bool(), Some(true), "{dist}");
    assert_eq!(dist["debug"].as_bool(), Some(false), "{dist}");
    for (file, package, port) in [
        ("coordinator.Dockerfile", "plexus-coordinator", "9464"),
        ("node.Dockerfile", "plexus-node", "9465"),
    ] {
        let text = std::fs::read_to_string(deploy().join("docker").join(file)).unwrap();
        assert!(
            text.contains(&format!("cargo build --profile dist --locked -p {package}")),
            "{file}"
        );
        assert!(
            !text.contains("target/release/"),
            "{file}: ships unstripped binaries"
        );
        assert!(text.contains("USER 10001:10001"), "{file}");
        assert!(text.contains("HEALTHCHECK"), "{file}");
        assert!(
            text.contains(&format!("/dev/tcp/127.0.0.1/{port}")),
            "{file}"
        );
        assert!(text.contains("VOLUME [\"/var/lib/plexus\"]"), "{file}");
        assert!(
            text.contains("--mount=type=cache"),
            "{file}: cached dependencies"
        );
        assert!(text.matches("FROM ").count() >= 2, "{file}: multi-stage");
    }
    let ignore = std::fs::read_to_string(repo_root().join(".dockerignore")).unwrap();
    for p in ["target/", ".git/", "pki/"] {
        assert!(ignore.lines().any(|l| l == p), ".dockerignore: {p}");
    }
}

/// The systemd walkthrough without systemd: the coordinator and three nodes
/// started with their units' command lines and environment from the example
/// configs (paths under a temporary root), certificates from `plexus pki`,
/// the study registered and queries answered through the `plexus` CLI, then
/// every daemon stopped with SIGTERM as `systemctl stop` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_style_deployment_answers_queries_and_stops_cleanly() {
    let install = Install::new(InstallOptions::default()).await.unwrap();
    let coordinator = install.start_coordinator().unwrap();
    let nodes = install.start_nodes().unwrap();
    let names: Vec<&str> = install.nodes.iter().map(String::as_str).collect();
    install
        .wait_live(&names, true, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\ncoordinator log:\n{}", coordinator.log()));
    install.register_study().await.unwrap();

    let listed = install.cli("admin", &["nodes"]).await.unwrap();
    for n in &names {
        assert!(listed.contains(n), "plexus nodes:\n{listed}");
    }
    let mut answered = 0;
    for kind in ["count", "summary", "histogram", "table", "kaplan_meier"] {
        let text =
            std::fs::read_to_string(deploy().join("queries").join(format!("{kind}.json"))).unwrap();
        let q = Query::from_json(&text).unwrap();
        assert_eq!(q.analysis.kind().to_string(), kind);
        assert_ne!(q.analysis.kind(), AnalysisKind::Cox);
        let r = install.query(kind, &text).await.unwrap();
        let p = &r.provenance;
        assert_eq!(p.answered, 3, "{kind}: {p:?}");
        assert!(
            p.nodes
                .iter()
                .all(|n| matches!(n.status, NodeStatus::Answered | NodeStatus::Suppressed)),
            "{kind}: {p:?}"
        );
        assert!(r.privacy.is_some(), "{kind}: the deploy study is noised");
        answered += 1;
    }
    let log = install
        .cli(
            "auditor",
            &[
                "audit",
                "log",
                "--study",
                "aaa-outcomes",
                "--output",
                "json",
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        log.matches("query.result").count(),
        answered,
        "one query.result audit entry per query:\n{log}"
    );

    // The state landed in the units' StateDirectory= and nowhere else.
    assert!(install
        .path("/var/lib/plexus-coordinator/coordinator.db")
        .is_file());
    for n in &names {
        let state = install.path(&format!("/var/lib/plexus-node/{n}"));
        assert!(
            std::fs::read_dir(&state).unwrap().count() > 0,
            "{n}: nothing in {}",
            state.display()
        );
    }

    // `systemctl stop`: SIGTERM, a clean exit well within TimeoutStopSec.
    for (name, node) in nodes {
        let status = node.terminate(Duration::from_secs(20)).await.unwrap();
        assert!(status.success(), "{name} exited with {status}");
    }
    let mut coordinator = coordinator;
    assert!(coordinator.running());
    let log = coordinator.log();
    let status = coordinator
        .terminate(Duration::from_secs(20))
        .await
        .unwrap();
    assert!(status.success(), "coordinator exited with {status}:\n{log}");
}

/// `plexus nodes --wait`, as a script starting a network uses it: started
/// before the nodes, it returns once they are live; asked for a node that
/// never comes, it fails after its timeout naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_wait_returns_once_the_nodes_are_live_and_names_those_that_are_not() {
    let install = Install::new(InstallOptions::fast()).await.unwrap();
    let coordinator = install.start_coordinator().unwrap();
    let waiting = {
        let install = &install;
        async move {
            install
                .cli(
                    "admin",
                    &["nodes", "--wait", "--count", "3", "--timeout", "60s"],
                )
                .await
        }
    };
    let started = async {
        // The coordinator may not even listen yet: the wait outlives that.
        tokio::time::sleep(Duration::from_secs(1)).await;
        install.start_nodes()
    };
    let (listed, nodes) = tokio::join!(waiting, started);
    let nodes = nodes.unwrap();
    let listed = listed.unwrap_or_else(|e| panic!("{e}\ncoordinator log:\n{}", coordinator.log()));
    for n in &install.nodes {
        let row = listed.lines().find(|l| l.contains(n.as_str()));
        assert!(
            row.is_some_and(|r| r.contains("yes")),
            "{n} not listed live:\n{listed}"
        );
    }

    let e = install
        .cli(
            "admin",
            &[
                "nodes",
                "--wait",
                "--nodes",
                "hospital-a,hospital-z",
                "--timeout",
                "2s",
            ],
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("not live after 2 s: hospital-z (live: hospital-a, hospital-b, hospital-c;"),
        "{e}"
    );

    for (_, node) in nodes {
        node.terminate(Duration::from_secs(20)).await.unwrap();
    }
    // No coordinator at all: it says so, after the timeout.
    coordinator
        .terminate(Duration::from_secs(20))
        .await
        .unwrap();
    let e = install
        .cli(
            "admin",
            &["nodes", "--wait", "--count", "1", "--timeout", "1s"],
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("the coordinator's node listing could not be read within 1 s"),
        "{e}"
    );
}
