//! `plexus-bench peers`: the federated peers' benchmark query, run as a
//! user runs Plexus, against DuckDB holding every site's rows in one place,
//! in the same run.
//!
//! The query (the one NVIDIA FLARE's and Flower's federated statistics are
//! measured with): patients whose consent covers the study's purpose today
//! and who have not opted out, aged 50 or more; count, sum, mean and
//! standard deviation of age and systolic pressure, and their histograms.
//!
//! Plexus runs as processes: `plexus-coordinator` and three `plexus-node`
//! daemons on the sandbox's synthetic hospitals (Parquet), and four
//! `plexus query` calls (summary and histogram of each variable) in an
//! exact study. Measured: warm sequential (the four calls one after
//! another, daemons up), warm parallel (the four at once), cold (start the
//! daemons, wait for the nodes, the four answers), the daemons' peak
//! resident memory together, and the CPU seconds of the daemons and the
//! CLI processes. DuckDB (Python's `duckdb`, a child process) answers the
//! same query in one statement over the same Parquet files, with the
//! consent records converted to Parquet beforehand; the floor is DuckDB
//! over the same columns already in memory. The answers must agree (counts
//! and bins exactly, means and standard deviations to 1e-12) or the run
//! fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Deserialize;

use crate::median;
use plexus_core::pool::{PooledResult, PooledValue};
use plexus_core::ConsentTerms;
use plexus_sandbox::synth::DataFormat;
use plexus_sandbox::{self as sandbox, Sandbox, SandboxOptions};

/// The DuckDB side, written next to the data and run with `--python`.
const SCRIPT: &str = include_str!("../peers/duckdb_peers.py");

pub struct PeersOptions {
    /// Patients per site, one run per size.
    pub sizes: Vec<usize>,
    pub repetitions: usize,
    pub seed: u64,
    /// Keep the generated files (and the daemons' logs) here.
    pub dir: Option<PathBuf>,
    /// A Python with the `duckdb` package.
    pub python: PathBuf,
    /// The nodes' `data.memory_mib` (their default when absent).
    pub memory_mib: Option<u64>,
    /// A folder with an earlier build's `plexus`, `plexus-node` and
    /// `plexus-coordinator`, measured in the same run on the same files.
    pub before: Option<PathBuf>,
}

fn age_edges() -> Vec<f64> {
    (0..=10).map(|i| 50.0 + 5.0 * f64::from(i)).collect()
}

fn sbp_edges() -> Vec<f64> {
    (0..=16).map(|i| 80.0 + 10.0 * f64::from(i)).collect()
}

/// The four calls: (file name, query in the text form).
fn queries() -> Vec<(&'static str, String)> {
    let edges = |e: Vec<f64>| {
        e.iter()
            .map(|x| format!("{x}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let summary = |v: &str| {
        format!(r#"{{"where": "age >= 50", "analysis": {{"summary": {{"variable": "{v}"}}}}}}"#)
    };
    let histogram = |v: &str, e: Vec<f64>| {
        format!(
            r#"{{"where": "age >= 50", "analysis": {{"histogram": {{"variable": "{v}", "edges": [{}]}}}}}}"#,
            edges(e)
        )
    };
    vec![
        ("summary-age.json", summary("age")),
        ("summary-sbp.json", summary("sbp")),
        ("histogram-age.json", histogram("age", age_edges())),
        ("histogram-sbp.json", histogram("sbp", sbp_edges())),
    ]
}

pub async fn run(opts: PeersOptions) -> anyhow::Result<()> {
    let mut bins = Vec::new();
    if let Some(dir) = &opts.before {
        bins.push((
            format!("before ({})", dir.display()),
            Binaries::in_dir(dir)?,
        ));
    }
    bins.push(("".to_string(), Binaries::beside_this()?));
    check_python(&opts.python)?;
    let temp;
    let base = match &opts.dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::Builder::new().prefix("plexus-peers-").tempdir()?;
            temp.path().to_path_buf()
        }
    };
    println!(
        "Peers' benchmark query: consenting patients aged 50 or more, count, sum, mean, sd and\n\
         histograms of age and systolic pressure; Plexus as processes (coordinator, 3 nodes,\n\
         4 `plexus query` calls, exact study) against DuckDB with all rows in one place.\n\
         {} repetitions; medians.",
        opts.repetitions
    );
    for &patients in &opts.sizes {
        let figures = measure(&opts, &bins, &base.join(format!("{patients}")), patients).await?;
        figures.print(patients);
    }
    Ok(())
}

/// The executables this benchmark drives, beside its own.
struct Binaries {
    plexus: PathBuf,
    coordinator: PathBuf,
    node: PathBuf,
}

impl Binaries {
    fn beside_this() -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let dir = exe
            .parent()
            .context("the benchmark's executable has no folder")?;
        Self::find(dir, "build the daemons and the CLI with the benchmark: \
             cargo build --release --locked -p plexus -p plexus-node -p plexus-coordinator -p plexus-bench")
    }

    /// An earlier build's executables, for `--before`.
    fn in_dir(dir: &Path) -> anyhow::Result<Self> {
        Self::find(
            dir,
            "--before names a folder holding an earlier build's plexus, \
             plexus-node and plexus-coordinator (copy them from its target/release)",
        )
    }

    fn find(dir: &Path, hint: &str) -> anyhow::Result<Self> {
        let find = |name: &str| {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                bail!("{} is not there; {hint}", p.display())
            }
        };
        Ok(Binaries {
            plexus: find("plexus")?,
            coordinator: find("plexus-coordinator")?,
            node: find("plexus-node")?,
        })
    }
}

fn check_python(python: &Path) -> anyhow::Result<()> {
    let out = Command::new(python)
        .args(["-c", "import duckdb; print(duckdb.__version__)"])
        .output();
    match out {
        Ok(o) if o.status.success() => Ok(()),
        _ => bail!(
            "{} cannot import duckdb; run bench/peers/setup.sh (a virtual environment with \
             DuckDB in ~/.cache/plexus-bench-tools) or pass --python with one that has it",
            python.display()
        ),
    }
}

#[derive(Deserialize)]
struct DuckMoments {
    n: u64,
    sum: f64,
    mean: f64,
    sd: f64,
    bins: BTreeMap<i64, u64>,
}

#[derive(Deserialize)]
struct DuckFigures {
    version: String,
    threads: u32,
    age: DuckMoments,
    sbp: DuckMoments,
    first_s: f64,
    runs_s: Vec<f64>,
    runs_cpu_s: Vec<f64>,
    peak_mib: f64,
    floor_s: Vec<f64>,
    floor_cpu_s: Vec<f64>,
}

impl DuckFigures {
    /// DuckDB's figures of one of the two variables.
    fn moments(&self, variable: &str) -> anyhow::Result<&DuckMoments> {
        match variable {
            "age" => Ok(&self.age),
            "sbp" => Ok(&self.sbp),
            other => bail!("DuckDB's side has no figures of {other}"),
        }
    }
}

/// One timed phase of Plexus: median wall time of the four answers,
/// CPU seconds per repetition (daemons and CLI), as measured.
struct Phase {
    wall: Duration,
    cpu_s: f64,
}

/// One build of Plexus, measured.
struct PlexusFigures {
    /// "" for this build, "before (DIR)" for `--before`.
    label: String,
    sequential: Phase,
    parallel: Phase,
    /// Start on files the nodes have not seen, and four answers.
    first: Phase,
    /// The daemons' peak resident memory (VmHWM, MiB) over that start.
    first_peak_mib: Vec<(String, f64)>,
    /// Restart on the same files, and four answers.
    cold: Phase,
    /// The daemons' peak resident memory (VmHWM, MiB) over the last
    /// restart and the warm calls.
    peak_mib: Vec<(String, f64)>,
}

struct Figures {
    duck: DuckFigures,
    plexus: Vec<PlexusFigures>,
    /// How the answers compared with DuckDB's.
    checked: String,
}

fn median_f(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

impl Figures {
    fn print(&self, patients: usize) {
        let duck = median_f(self.duck.runs_s.clone());
        let floor = median_f(self.duck.floor_s.clone());
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
            "3 sites",
            "wall ms",
            "× DuckDB",
            "CPU s",
            "peak MiB",
        ]);
        let ms = |s: f64| format!("{:.1}", s * 1000.0);
        let ratio = |s: f64| format!("{:.2}", s / duck);
        t.add_row(vec![
            "DuckDB, Parquet files (baseline)".to_string(),
            ms(duck),
            "1.00".into(),
            format!("{:.3}", median_f(self.duck.runs_cpu_s.clone())),
            format!("{:.0}", self.duck.peak_mib),
        ]);
        t.add_row(vec![
            "DuckDB, columns in memory (floor)".to_string(),
            ms(floor),
            ratio(floor),
            format!("{:.3}", median_f(self.duck.floor_cpu_s.clone())),
            "".into(),
        ]);
        t.add_row(vec![
            "DuckDB, new connection's first query".to_string(),
            ms(self.duck.first_s),
            ratio(self.duck.first_s),
            "".into(),
            "".into(),
        ]);
        let total =
            |peaks: &[(String, f64)]| format!("{:.0}", peaks.iter().map(|(_, m)| m).sum::<f64>());
        for p in &self.plexus {
            let who = if p.label.is_empty() {
                "Plexus".to_string()
            } else {
                format!("Plexus {}", p.label)
            };
            // Peak memory is over a start and what followed it: the
            // restart's covers the warm calls.
            for (name, phase, mib) in [
                ("warm, 4 calls in sequence", &p.sequential, String::new()),
                ("warm, 4 calls at once", &p.parallel, String::new()),
                (
                    "cold: first start, 4 answers",
                    &p.first,
                    total(&p.first_peak_mib),
                ),
                ("cold: restart, 4 answers", &p.cold, total(&p.peak_mib)),
            ] {
                let s = phase.wall.as_secs_f64();
                t.add_row(vec![
                    format!("{who} {name}"),
                    ms(s),
                    ratio(s),
                    format!("{:.3}", phase.cpu_s),
                    mib,
                ]);
            }
        }
        println!(
            "\n{} patients per site (DuckDB {}, {} threads)\n{t}",
            patients, self.duck.version, self.duck.threads
        );
        let each = |peaks: &[(String, f64)]| {
            peaks
                .iter()
                .map(|(n, m)| format!("{n} {m:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for p in &self.plexus {
            let who = if p.label.is_empty() {
                "Plexus"
            } else {
                &p.label
            };
            println!(
                "{who}: peak MiB per process, first start: {}; restart: {}",
                each(&p.first_peak_mib),
                each(&p.peak_mib)
            );
        }
        println!("{}", self.checked);
    }
}

async fn measure(
    opts: &PeersOptions,
    builds: &[(String, Binaries)],
    dir: &Path,
    patients: usize,
) -> anyhow::Result<Figures> {
    let _ = std::fs::remove_dir_all(dir);
    let mut sb_opts = SandboxOptions::new(patients, opts.seed);
    sb_opts.formats = vec![DataFormat::Parquet];
    sb_opts.keep_rows = false;
    sb_opts.dir = Some(dir.to_path_buf());
    eprintln!("generating 3 × {patients} patients in {}", dir.display());
    let mut sb = Sandbox::prepare(sb_opts).await?;
    for config in sb.node_configs.values_mut() {
        if opts.memory_mib.is_some() {
            config.data.memory_mib = opts.memory_mib;
        }
    }
    // A hospital's files were written hours ago; a file written in the
    // last two seconds is read again by every job until it has settled.
    for config in sb.node_configs.values() {
        let files = [Some(&config.data.path), Some(&config.consent.path)];
        for p in files
            .into_iter()
            .chain([config.consent.opt_out.as_ref()])
            .flatten()
        {
            std::fs::File::options()
                .write(true)
                .open(p)?
                .set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))?;
        }
    }
    let configs = write_configs(&sb, dir)?;
    let study = sandbox::exact_study();
    let today = chrono::Utc::now().date_naive();

    // Set-up start: the study is registered once (by the oldest build, so
    // the newer one reads what it wrote, as after an upgrade), kept in the
    // coordinator's database for the timed starts.
    {
        let (_, first) = &builds[0];
        let cli = Cli::new(first, &sb, dir)?;
        let mut daemons = Daemons::start(first, &configs, dir)?;
        cli.wait_nodes(3)?;
        sb.register_study(&study).await?;
        daemons.stop()?;
    }

    let mut plexus = Vec::new();
    let mut answers: Option<Answers> = None;
    for (label, bins) in builds {
        let (figures, a) = measure_plexus(opts, bins, &configs, &sb, dir)?;
        match &answers {
            Some(first) if *first != a => {
                bail!("{label}: the answers differ from the other build's")
            }
            _ => answers = Some(a),
        }
        plexus.push(PlexusFigures {
            label: label.clone(),
            ..figures
        });
    }
    let answers = answers.expect("at least one build");

    // DuckDB, after Plexus has stopped, so each has the machine to itself.
    let duck = duckdb(opts, &sb, dir, today, opts.repetitions)?;
    let checked = compare(&answers, &duck)?;
    Ok(Figures {
        duck,
        plexus,
        checked,
    })
}

/// Cold starts, then warm calls in sequence and at once, of one build.
fn measure_plexus(
    opts: &PeersOptions,
    bins: &Binaries,
    configs: &Configs,
    sb: &Sandbox,
    dir: &Path,
) -> anyhow::Result<(PlexusFigures, Answers)> {
    let runs = opts.repetitions;
    let cli = Cli::new(bins, sb, dir)?;

    // Cold: start the daemons, wait until the nodes are live, four answers.
    // First on files the nodes have not seen (nothing in their cache
    // folders), then restarts on the same files.
    let cold_start = || -> anyhow::Result<(Daemons, Duration, f64, Answers)> {
        let c0 = children_cpu_s()?;
        let t0 = Instant::now();
        let d = Daemons::start(bins, configs, dir)?;
        cli.wait_nodes(3)?;
        let a = cli.sequential()?;
        let wall = t0.elapsed();
        let cpu = d.cpu_s()? + children_cpu_s()? - c0;
        Ok((d, wall, cpu, a))
    };
    for cache in &configs.caches {
        match std::fs::remove_dir_all(cache) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e)?,
            _ => {}
        }
    }
    let (mut d, wall, cpu, answers) = cold_start()?;
    let first = Phase { wall, cpu_s: cpu };
    let first_peak_mib = d.peak_mib()?;
    d.stop()?;
    let mut cold = Vec::new();
    let mut cold_cpu = Vec::new();
    let mut daemons: Option<Daemons> = None;
    for _ in 0..runs.clamp(1, 3) {
        if let Some(mut d) = daemons.take() {
            d.stop()?;
        }
        let (d, wall, cpu, a) = cold_start()?;
        if a != answers {
            bail!("a restart's answer differs from the first start's");
        }
        cold.push(wall);
        cold_cpu.push(cpu);
        daemons = Some(d);
    }
    let mut daemons = daemons.expect("the last cold start's daemons");

    // Warm: the daemons stay up.
    let phase = |parallel: bool| -> anyhow::Result<Phase> {
        let (d0, c0) = (daemons.cpu_s()?, children_cpu_s()?);
        let mut walls = Vec::new();
        for _ in 0..runs {
            let t0 = Instant::now();
            let a = if parallel {
                cli.parallel()?
            } else {
                cli.sequential()?
            };
            walls.push(t0.elapsed());
            if a != answers {
                bail!("a warm answer differs from the cold one");
            }
        }
        let cpu = daemons.cpu_s()? - d0 + children_cpu_s()? - c0;
        Ok(Phase {
            wall: median(walls),
            cpu_s: cpu / runs as f64,
        })
    };
    let sequential = phase(false)?;
    let parallel = phase(true)?;
    let peak_mib = daemons.peak_mib()?;
    daemons.stop()?;
    let figures = PlexusFigures {
        label: String::new(),
        sequential,
        parallel,
        first,
        first_peak_mib,
        cold: Phase {
            wall: median(cold),
            cpu_s: median_f(cold_cpu),
        },
        peak_mib,
    };
    Ok((figures, answers))
}

struct Configs {
    coordinator: PathBuf,
    nodes: Vec<(String, PathBuf)>,
    /// The nodes' `data.cache_dir`: the default, beside their configs
    /// (left unset, so an earlier build without it reads the configs).
    caches: Vec<PathBuf>,
}

fn write_configs(sb: &Sandbox, dir: &Path) -> anyhow::Result<Configs> {
    let coordinator = dir.join("coordinator.toml");
    std::fs::write(&coordinator, toml::to_string(&sb.coordinator_config)?)?;
    let mut nodes = Vec::new();
    for (name, config) in &sb.node_configs {
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, toml::to_string(config)?)?;
        nodes.push((name.clone(), path));
    }
    Ok(Configs {
        coordinator,
        nodes,
        caches: vec![dir.join(plexus_node::data::config::DEFAULT_CACHE_DIR)],
    })
}

/// The coordinator and the nodes as child processes, logging to files.
struct Daemons {
    children: Vec<(String, Child)>,
}

impl Daemons {
    fn start(bins: &Binaries, configs: &Configs, dir: &Path) -> anyhow::Result<Self> {
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let spawn = |exe: &Path, config: &Path, name: &str| -> anyhow::Result<Child> {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(logs.join(format!("{name}.log")))?;
            Command::new(exe)
                .arg("--config")
                .arg(config)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("cannot start {}", exe.display()))
        };
        let mut children = vec![(
            "coordinator".to_string(),
            spawn(&bins.coordinator, &configs.coordinator, "coordinator")?,
        )];
        for (name, config) in &configs.nodes {
            children.push((name.clone(), spawn(&bins.node, config, name)?));
        }
        Ok(Daemons { children })
    }

    /// CPU seconds the daemons have used so far.
    fn cpu_s(&self) -> anyhow::Result<f64> {
        let mut total = 0.0;
        for (_, c) in &self.children {
            total += proc_cpu_s(&format!("/proc/{}/stat", c.id()), 13)?;
        }
        Ok(total)
    }

    fn peak_mib(&self) -> anyhow::Result<Vec<(String, f64)>> {
        self.children
            .iter()
            .map(|(n, c)| {
                let mib = crate::peak_rss_mib(&c.id().to_string())
                    .with_context(|| format!("no peak memory of {n} in /proc"))?;
                Ok((n.clone(), mib))
            })
            .collect()
    }

    /// SIGTERM, nodes first, and wait for each.
    fn stop(&mut self) -> anyhow::Result<()> {
        for (name, c) in self.children.iter_mut().rev() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            let status = c.wait()?;
            if !status.success() && status.code().is_some() {
                eprintln!("{name} exited with {status}");
            }
        }
        self.children.clear();
        Ok(())
    }
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// User plus system CPU seconds from a `/proc/.../stat` file, the fields
/// from `first` (0-based after the command name: 13 utime, 14 stime; 15
/// and 16 for waited-for children).
fn proc_cpu_s(path: &str, first: usize) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(path)?;
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("unreadable /proc stat")?;
    // Fields after ")" start at field 3 (state); field n is index n - 3.
    let fields: Vec<&str> = after.split_whitespace().collect();
    let get = |i: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(i - 2)
            .context("short /proc stat")?
            .parse::<f64>()?)
    };
    // Clock ticks: 100 per second on Linux for these fields.
    Ok((get(first)? + get(first + 1)?) / 100.0)
}

/// CPU seconds of this process's finished children (the CLI calls, and
/// daemons once stopped).
fn children_cpu_s() -> anyhow::Result<f64> {
    proc_cpu_s("/proc/self/stat", 15)
}

/// The `plexus` CLI as the researcher runs it.
struct Cli {
    exe: PathBuf,
    common: Vec<String>,
    files: Vec<PathBuf>,
}

type Answers = Vec<PooledResult>;

impl Cli {
    fn new(bins: &Binaries, sb: &Sandbox, dir: &Path) -> anyhow::Result<Self> {
        let qdir = dir.join("queries");
        std::fs::create_dir_all(&qdir)?;
        let mut files = Vec::new();
        for (name, text) in queries() {
            let p = qdir.join(name);
            std::fs::write(&p, text)?;
            files.push(p);
        }
        let common = vec![
            "--coordinator".into(),
            sb.coordinator_url(),
            "--pki".into(),
            sb.pki.display().to_string(),
            "--server-name".into(),
            "localhost".into(),
        ];
        Ok(Cli {
            exe: bins.plexus.clone(),
            common,
            files,
        })
    }

    /// The CLI as `who`.
    fn command(&self, who: &str) -> Command {
        let mut c = Command::new(&self.exe);
        c.args(&self.common)
            .args(["--as", who])
            .stdin(Stdio::null());
        c
    }

    /// Waits (also while the coordinator starts) until `count` nodes are
    /// live, as the network's admin, who sees every node.
    fn wait_nodes(&self, count: usize) -> anyhow::Result<()> {
        let out = self
            .command(sandbox::ADMIN)
            .args([
                "nodes",
                "--wait",
                "--count",
                &count.to_string(),
                "--timeout",
                "120s",
            ])
            .output()?;
        if !out.status.success() {
            bail!(
                "plexus nodes --wait failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn query(&self, file: &Path) -> Command {
        let mut c = self.command(sandbox::RESEARCHER);
        c.args([
            "query",
            "--study",
            sandbox::DEMO_STUDY,
            "--output",
            "json",
            "--file",
        ])
        .arg(file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        c
    }

    fn read(out: std::process::Output, file: &Path) -> anyhow::Result<PooledResult> {
        if !out.status.success() {
            bail!(
                "plexus query --file {} failed: {}",
                file.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("unreadable answer to {}", file.display()))
    }

    fn sequential(&self) -> anyhow::Result<Answers> {
        self.files
            .iter()
            .map(|f| Self::read(self.query(f).output()?, f))
            .collect()
    }

    fn parallel(&self) -> anyhow::Result<Answers> {
        let children = self
            .files
            .iter()
            .map(|f| Ok((f, self.query(f).spawn()?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        children
            .into_iter()
            .map(|(f, c)| Self::read(c.wait_with_output()?, f))
            .collect()
    }
}

fn duckdb(
    opts: &PeersOptions,
    sb: &Sandbox,
    dir: &Path,
    today: chrono::NaiveDate,
    runs: usize,
) -> anyhow::Result<DuckFigures> {
    let work = dir.join("duckdb");
    std::fs::create_dir_all(&work)?;
    let script = work.join("duckdb_peers.py");
    std::fs::write(&script, SCRIPT)?;
    let purpose = sandbox::exact_study().purpose()?;
    // The consent terms the synthetic sites hold that cover the purpose,
    // decided by Plexus's own reading of them.
    let covering: Vec<&str> = [
        "HMB",
        "GRU",
        "DS:MONDO:0005160",
        "HMB;NPU",
        "DS:MONDO:0004995",
    ]
    .into_iter()
    .filter(|t| ConsentTerms::parse(t).is_ok_and(|c| c.covers(&purpose)))
    .collect();
    let sites: Vec<serde_json::Value> = sb
        .node_configs
        .values()
        .map(|c| {
            serde_json::json!({
                "data": c.data.path,
                "consent": c.consent.path,
                "opt_out": c.consent.opt_out,
            })
        })
        .collect();
    let args = serde_json::json!({
        "work": work,
        "sites": sites,
        "covering_terms": covering,
        "today": today.to_string(),
        "age_edges": age_edges(),
        "sbp_edges": sbp_edges(),
        "repetitions": runs,
    });
    let out = Command::new(&opts.python)
        .arg(&script)
        .arg(args.to_string())
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!(
            "DuckDB's side failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("unreadable output of DuckDB's side")
}

/// Plexus's four answers against DuckDB's; an error names what differs.
fn compare(answers: &Answers, duck: &DuckFigures) -> anyhow::Result<String> {
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs().max(1.0);
    let mut bins_checked = 0usize;
    let mut worst = 0.0f64;
    for a in answers {
        match &a.value {
            PooledValue::Summary {
                variable,
                n,
                mean,
                sd,
                ..
            } => {
                let d = duck.moments(variable)?;
                let sd = sd.context("an exact summary has no sd")?;
                if *n != d.n || !close(*mean, d.mean) || !close(sd, d.sd) {
                    bail!(
                        "{variable}: Plexus n {n} mean {mean} sd {sd}, DuckDB n {} mean {} sd {}",
                        d.n,
                        d.mean,
                        d.sd
                    );
                }
                if !close(*mean * *n as f64, d.sum) {
                    bail!("{variable}: sums differ");
                }
                worst = worst
                    .max((mean - d.mean).abs() / d.mean.abs())
                    .max((sd - d.sd).abs() / d.sd.abs());
            }
            PooledValue::Histogram {
                variable,
                bins,
                below,
                above,
                ..
            } => {
                let d = duck.moments(variable)?;
                let last = bins.len() as i64;
                let cells = bins
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (i as i64, c))
                    .chain([(-1, below), (last, above)]);
                for (code, cell) in cells {
                    let Some(v) = cell.count else { continue };
                    let want = d.bins.get(&code).copied().unwrap_or(0);
                    if v != want {
                        bail!("{variable}: bin {code} is {v} at Plexus, {want} at DuckDB");
                    }
                    bins_checked += 1;
                }
            }
            other => bail!("unexpected answer {other:?}"),
        }
    }
    Ok(format!(
        "Answers equal DuckDB's: counts and {bins_checked} histogram cells exactly, \
         means and sds to {worst:.1e} (relative)."
    ))
}
