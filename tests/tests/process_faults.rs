//! Faults with real processes: the daemons run as separate processes the
//! way deploy/systemd starts them (see `plexus_tests::processes`), the study
//! exact so a result without a node can be checked against the per-site
//! counts. A node SIGKILLed in the middle of a job, and a node cut off from
//! the coordinator by a network partition (network namespace and veth pair):
//! the query ends with the other nodes' correct result and the lost node
//! reported missing, and the node answers again once it is back.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use plexus_core::pool::{NodeStatus, PooledResult, PooledValue};
use plexus_tests::processes::{Install, InstallOptions};

fn count(v: &PooledValue) -> u64 {
    match v {
        PooledValue::Count { n } => n.count.expect("an exact study's count is released"),
        other => panic!("not a count: {other:?}"),
    }
}

/// Each node's own count, from a `by_site` query every node answered.
fn per_site(r: &PooledResult) -> BTreeMap<String, u64> {
    assert_eq!(r.provenance.answered, 3, "{:?}", r.provenance);
    let sites: BTreeMap<String, u64> = r
        .by_site
        .iter()
        .map(|s| {
            let v = s
                .value
                .as_ref()
                .unwrap_or_else(|| panic!("{}: {:?}", s.node, s.error));
            (s.node.clone(), count(v))
        })
        .collect();
    assert_eq!(sites.len(), 3, "{sites:?}");
    assert_eq!(count(&r.value), sites.values().sum::<u64>());
    sites
}

const BY_SITE: &str = r#"{"analysis": {"count": {}}, "by_site": true}"#;
const POOLED: &str = r#"{"analysis": {"count": {}}}"#;
/// A different question after the fault (a repeat could come from a cache).
const AFTER: &str =
    r#"{"cohort": {"not_null": {"variable": "age"}}, "analysis": {"count": {}}, "by_site": true}"#;

/// hospital-c's share is missing and the pooled count is exactly the others'.
fn assert_without_c(r: &PooledResult, sites: &BTreeMap<String, u64>) {
    let c = r.provenance.node("hospital-c").expect("hospital-c listed");
    assert_eq!(c.status, NodeStatus::Missing, "{:?}", r.provenance);
    assert_eq!(r.provenance.answered, 2, "{:?}", r.provenance);
    assert_eq!(
        count(&r.value),
        sites["hospital-a"] + sites["hospital-b"],
        "the pooled count without hospital-c"
    );
}

fn fast_options() -> InstallOptions {
    InstallOptions {
        heartbeat_interval_secs: 1,
        job_timeout_secs: 15,
        max_backoff_secs: 1,
        exact: true,
        ..InstallOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_job_is_reported_missing_and_rejoins_when_restarted() {
    let install = Install::new(fast_options()).await.unwrap();
    let _coordinator = install.start_coordinator().unwrap();
    let mut nodes = install.start_nodes().unwrap();
    let all = ["hospital-a", "hospital-b", "hospital-c"];
    install
        .wait_live(&all, true, Duration::from_secs(60))
        .await
        .unwrap();
    install.register_study().await.unwrap();
    let sites = per_site(&install.query("by-site", BY_SITE).await.unwrap());

    // Freeze hospital-c so the job reaches it and stays unanswered, submit,
    // then SIGKILL it while the job is in its hands.
    let c = nodes.remove("hospital-c").unwrap();
    c.signal(Signal::SIGSTOP).unwrap();
    let submitted = {
        let install = &install;
        async move { install.query("pooled", POOLED).await }
    };
    let killer = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        c.kill().await.unwrap();
    };
    let (r, ()) = tokio::join!(submitted, killer);
    let r = r.unwrap();
    assert_without_c(&r, &sites);
    // It died holding the job, not before the job was sent.
    let detail = r.provenance.node("hospital-c").unwrap().detail.clone();
    assert!(
        detail
            .as_deref()
            .is_some_and(|d| d.contains("disconnected during the job")),
        "{detail:?}"
    );

    // Restarted, hospital-c reconnects and answers again.
    let mut c = install.start_node("hospital-c", None).unwrap();
    install
        .wait_live(&all, true, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\nhospital-c log:\n{}", c.log()));
    assert!(c.running());
    let after = install.query("after", AFTER).await.unwrap();
    let again = per_site(&after);
    assert!(again.values().all(|n| *n > 0), "{again:?}");
}

/// A network namespace with one end of a veth pair, the other end in the
/// root namespace; removed (with the pair) when dropped, also on failure.
struct Netns {
    name: String,
    root_if: String,
    ns_if: String,
    root_ip: IpAddr,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}`: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Netns {
    /// Unique names per run (the process id); 10.231.X.0/30 with X from it.
    fn create() -> Result<Self, String> {
        let id = std::process::id();
        let x = id % 250;
        let ns = Netns {
            name: format!("plexus-{id}"),
            root_if: format!("vpx{id}a"),
            ns_if: format!("vpx{id}b"),
            root_ip: IpAddr::from([10, 231, x as u8, 1]),
        };
        let ns_ip = format!("10.231.{x}.2/30");
        let root_ip = format!("{}/30", ns.root_ip);
        ip(&["netns", "add", &ns.name])?;
        ip(&[
            "link",
            "add",
            &ns.root_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns.ns_if,
        ])?;
        ip(&["link", "set", &ns.ns_if, "netns", &ns.name])?;
        ip(&["addr", "add", &root_ip, "dev", &ns.root_if])?;
        ip(&["link", "set", &ns.root_if, "up"])?;
        ip(&["-n", &ns.name, "addr", "add", &ns_ip, "dev", &ns.ns_if])?;
        ip(&["-n", &ns.name, "link", "set", &ns.ns_if, "up"])?;
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The partition: the namespace's end of the link goes down.
    fn cut(&self) {
        ip(&["-n", &self.name, "link", "set", &self.ns_if, "down"]).unwrap();
    }

    fn heal(&self) {
        ip(&["-n", &self.name, "link", "set", &self.ns_if, "up"]).unwrap();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its veth end and so the pair.
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.root_if]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node_is_reported_missing_and_rejoins_after_healing() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: building a network partition needs root (ip netns, veth pairs); run the test as root");
        return;
    }
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(e) => {
            eprintln!("skipped: network namespaces are not permitted here ({e})");
            return;
        }
    };
    // The coordinator listens on the root end of the veth pair; hospital-a
    // and -b dial it from the root namespace, hospital-c from its own.
    let install = Install::new(InstallOptions {
        listen_ip: ns.root_ip,
        ..fast_options()
    })
    .await
    .unwrap();
    let _coordinator = install.start_coordinator().unwrap();
    let _a = install.start_node("hospital-a", None).unwrap();
    let _b = install.start_node("hospital-b", None).unwrap();
    let c = install.start_node("hospital-c", Some(&ns.name)).unwrap();
    let all = ["hospital-a", "hospital-b", "hospital-c"];
    install
        .wait_live(&all, true, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\nhospital-c log:\n{}", c.log()));
    install.register_study().await.unwrap();
    let sites = per_site(&install.query("by-site", BY_SITE).await.unwrap());

    ns.cut();
    install
        .wait_live(&["hospital-c"], false, Duration::from_secs(30))
        .await
        .unwrap();
    let r = install.query("pooled", POOLED).await.unwrap();
    assert_without_c(&r, &sites);

    ns.heal();
    install
        .wait_live(&all, true, Duration::from_secs(90))
        .await
        .unwrap_or_else(|e| panic!("{e}\nhospital-c log:\n{}", c.log()));
    let again = per_site(&install.query("after", AFTER).await.unwrap());
    assert!(again.values().all(|n| *n > 0), "{again:?}");
    drop(c);
}
