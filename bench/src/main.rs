//! `plexus-bench`: Plexus's benchmarks, one mode each, on in-process
//! networks of the sandbox. Developers' tooling, apart from the `plexus`
//! CLI researchers install. Run them on a release build:
//! `cargo run --release --locked -p plexus-bench -- MODE`.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod audit;
mod http;
mod latency;
mod peers;
mod secure;
mod throughput;
mod trees;
mod warehouse;

#[derive(Parser)]
#[command(
    name = "plexus-bench",
    version,
    about = "Plexus benchmarks on in-process networks (use --release)"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Federated against centralised latency over three nodes, then the
    /// added latency of secure aggregation.
    Latency {
        /// Patients per hospital.
        #[arg(long, default_value_t = 1_000_000)]
        patients: usize,
        /// Timed repetitions per query.
        #[arg(long, default_value_t = 7)]
        repetitions: usize,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Keep the generated files here.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Patients per hospital in the secure-aggregation comparison
        /// (its own networks of 3 and 20 hospitals).
        #[arg(long, default_value_t = 100_000)]
        secure_patients: usize,
    },
    /// Only the added latency of secure aggregation, over networks of 3
    /// and 20 hospitals.
    Secure {
        /// Patients per hospital.
        #[arg(long, default_value_t = 100_000)]
        patients: usize,
        /// Timed repetitions per network and study.
        #[arg(long, default_value_t = 7)]
        repetitions: usize,
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// The coordinator's sustained queries/second and p50/p99 latency over
    /// --nodes nodes at each --concurrency level.
    Throughput {
        /// Nodes of the network.
        #[arg(long, default_value_t = 20)]
        nodes: usize,
        /// Patients per node.
        #[arg(long, default_value_t = 2_000)]
        patients: usize,
        /// Seconds of load per concurrency level.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Concurrency levels (researchers with a query in flight), comma-separated; 1 is the baseline.
        #[arg(long, value_delimiter = ',', default_value = "1,8,32,64")]
        concurrency: Vec<usize>,
        /// Skip the baseline: by default every level also runs with the
        /// coordinator's audit group commit off (one commit per audit
        /// entry, the path before group commit), and the table shows the ratio.
        #[arg(long)]
        no_baseline: bool,
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Gradient-boosted trees over three nodes against LightGBM trained
    /// centrally on the union in the same run: training time and AUC on
    /// an unseen hospital's patients. Needs the model tools' venv
    /// (tests/models/setup.sh --install).
    Trees {
        /// Patients per hospital.
        #[arg(long, default_value_t = 1_000_000)]
        patients: usize,
        /// Patients of the unseen hospital the AUC is measured on.
        #[arg(long, default_value_t = 200_000)]
        holdout: usize,
        #[arg(long, default_value_t = 100)]
        trees: u32,
        #[arg(long, default_value_t = 4)]
        depth: u32,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// The venv's python (default: PLEXUS_MODEL_PYTHON, else
        /// ~/.cache/plexus-model-tools/bin/python).
        #[arg(long, env = "PLEXUS_MODEL_PYTHON")]
        python: Option<PathBuf>,
    },
    /// One node on PostgreSQL and one on Parquet holding the same
    /// --patients patients.
    Warehouse {
        /// Patients of each node.
        #[arg(long, default_value_t = 1_000_000)]
        patients: usize,
        /// Timed repetitions per query.
        #[arg(long, default_value_t = 7)]
        repetitions: usize,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// PostgreSQL server (a throwaway database is created on it and
        /// dropped afterwards).
        #[arg(long, env = "PLEXUS_BENCH_DATABASE_URL")]
        database_url: Option<String>,
    },
    /// The HTTP/JSON API against gRPC: the median time of a count and a
    /// logistic fit over each, on one network.
    Http {
        /// Patients per hospital.
        #[arg(long, default_value_t = 100_000)]
        patients: usize,
        /// Timed repetitions per query and transport.
        #[arg(long, default_value_t = 15)]
        repetitions: usize,
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// The federated peers' benchmark query (consenting patients aged 50
    /// or more: count, mean, sd and histograms of age and systolic
    /// pressure) with Plexus run as processes, against DuckDB holding every
    /// site's rows in one place, in the same run. Needs the daemons and the
    /// CLI built beside this binary and Python with duckdb
    /// (bench/peers/setup.sh).
    Peers {
        /// Patients per hospital, one run per size (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
        patients: Vec<usize>,
        /// Timed repetitions per phase (cold starts: at most 3).
        #[arg(long, default_value_t = 5)]
        repetitions: usize,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Keep the generated files and the daemons' logs here.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Python with the duckdb package.
        #[arg(long, env = "PLEXUS_BENCH_PYTHON")]
        python: Option<PathBuf>,
        /// The nodes' data.memory_mib (the node's default when absent).
        #[arg(long)]
        memory_mib: Option<u64>,
        /// Also measure an earlier build, in the same run on the same
        /// files: a folder holding its plexus, plexus-node and
        /// plexus-coordinator.
        #[arg(long)]
        before: Option<PathBuf>,
    },
    /// Audit log append and verify throughput.
    Audit {
        /// Entries in the log.
        #[arg(long, default_value_t = 1_000_000)]
        entries: u64,
        /// Single appends timed on top of them.
        #[arg(long, default_value_t = 2_000)]
        appends: u64,
        /// Keep the generated files here.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

/// The `--python` given, else the venv's python at `default` under $HOME.
fn python_or(python: Option<PathBuf>, default: &str) -> anyhow::Result<PathBuf> {
    match python {
        Some(p) => Ok(p),
        None => Ok(std::env::var_os("HOME")
            .map(PathBuf::from)
            .context("HOME is not set; pass --python")?
            .join(default)),
    }
}

/// The median of timed repetitions (the upper one of an even count).
fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

/// Milliseconds to one decimal.
fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// Peak resident memory (VmHWM) of a process, `"self"` or a pid, when the
/// OS tells.
fn peak_rss_mib(process: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{process}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(cli.mode).await {
        eprintln!(
            "error: {}",
            plexus::output::safe_text(&plexus_ops::error_text(e.as_ref()))
        );
        std::process::exit(1);
    }
}

async fn run(mode: Mode) -> anyhow::Result<()> {
    match mode {
        Mode::Latency {
            patients,
            repetitions,
            seed,
            dir,
            secure_patients,
        } => {
            latency::run(latency::BenchOptions {
                patients_per_site: patients,
                repetitions: repetitions.max(1),
                seed,
                dir,
                secure_patients_per_site: secure_patients,
            })
            .await
        }
        Mode::Secure {
            patients,
            repetitions,
            seed,
        } => secure::run(secure::SecureBenchOptions {
            patients_per_site: patients,
            repetitions: repetitions.max(1),
            seed,
            nodes: secure::NODES.to_vec(),
        })
        .await
        .map(|_| ()),
        Mode::Throughput {
            nodes,
            patients,
            seconds,
            concurrency,
            no_baseline,
            seed,
        } => throughput::run(throughput::ThroughputOptions {
            nodes,
            patients_per_site: patients,
            seed,
            seconds,
            concurrency,
            baseline: !no_baseline,
        })
        .await
        .map(|_| ()),
        Mode::Trees {
            patients,
            holdout,
            trees,
            depth,
            seed,
            python,
        } => {
            let python = python_or(python, ".cache/plexus-model-tools/bin/python")?;
            trees::run(trees::TreesOptions {
                patients_per_site: patients,
                holdout,
                trees,
                depth,
                seed,
                python,
            })
            .await
        }
        Mode::Warehouse {
            patients,
            repetitions,
            seed,
            database_url,
        } => {
            let url = database_url.context(
                "the warehouse benchmark needs --database-url postgres://user@host:port/db (or PLEXUS_BENCH_DATABASE_URL)",
            )?;
            warehouse::run(patients, repetitions.max(1), seed, &url).await
        }
        Mode::Http {
            patients,
            repetitions,
            seed,
        } => {
            http::run(http::HttpBenchOptions {
                patients_per_site: patients,
                repetitions: repetitions.max(1),
                seed,
            })
            .await
        }
        Mode::Peers {
            patients,
            repetitions,
            seed,
            dir,
            python,
            memory_mib,
            before,
        } => {
            let python = python_or(python, ".cache/plexus-bench-tools/python/bin/python")?;
            peers::run(peers::PeersOptions {
                sizes: patients,
                repetitions: repetitions.max(1),
                seed,
                dir,
                python,
                memory_mib,
                before,
            })
            .await
        }
        Mode::Audit {
            entries,
            appends,
            dir,
        } => {
            audit::run(audit::AuditBenchOptions {
                entries,
                appends,
                dir,
            })
            .await
        }
    }
}
