//! `plexus-bench throughput`: the coordinator's sustained query rate with
//! many nodes. Researchers at concurrency C each submit a query of the load
//! mix ([`plexus_sandbox::load::MIX`]), wait for its answer and submit the
//! next, for N seconds per level; concurrency 1 is the baseline measured in the same
//! run, so the table shows what concurrency buys.
//!
//! With `baseline`, every level runs twice in the same network: first
//! with the coordinator's audit group commit off
//! (`coordinator.audit_group_commit = false`: one commit per audit entry
//! behind one lock, the path before group commit), then with it on, and
//! the table shows both and their ratio.
//!
//! The coordinator runs on threads of its own, so the table splits each
//! query's CPU between it and the rest of the process (the nodes and the
//! researchers), and the last line says how many queries/s the coordinator
//! alone could answer on this machine's cores.

use std::time::{Duration, Instant};

use anyhow::Context;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};

use plexus_sandbox::load::{self, Figures};
use plexus_sandbox::synth::DataFormat;
use plexus_sandbox::{self as sandbox, Sandbox, SandboxOptions};

pub struct ThroughputOptions {
    pub nodes: usize,
    pub patients_per_site: usize,
    pub seed: u64,
    /// Seconds of load per concurrency level.
    pub seconds: u64,
    /// Concurrency levels, in order; 1 is added first when missing, as the
    /// baseline.
    pub concurrency: Vec<usize>,
    /// Also measure every level with audit group commit off, in the same
    /// run, and show the ratio.
    pub baseline: bool,
}

/// One level's figures and where its CPU went.
type Level = (usize, Figures, Option<Cpu>);

/// The threads of the coordinator: its own runtime's, and SQLite's worker
/// threads (only the coordinator has a SQLite database in the sandbox).
const COORDINATOR: &[&str] = &[sandbox::COORDINATOR_THREADS, "sqlx-sqlite-wor"];

/// CPU time of one level: how many cores the network kept busy, and the
/// milliseconds of CPU per answered query spent by the coordinator and by
/// everything else in the process (twenty nodes and the researchers).
#[derive(Debug, Clone, Copy)]
struct Cpu {
    busy: f64,
    coordinator_ms: f64,
    others_ms: f64,
}

impl Cpu {
    /// Queries per second the coordinator could sustain on `cores` if
    /// nothing else ran on them: an upper bound, hand-offs and contention
    /// left out.
    fn coordinator_ceiling(&self, cores: usize) -> f64 {
        cores as f64 * 1000.0 / self.coordinator_ms
    }
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// Starts the network, runs each level and prints the table.
pub async fn run(opts: ThroughputOptions) -> anyhow::Result<Vec<(usize, Figures)>> {
    let mut levels = opts.concurrency.clone();
    levels.retain(|c| *c > 0);
    if !levels.contains(&1) {
        levels.insert(0, 1);
    }
    let t = Instant::now();
    let mut sb_opts = SandboxOptions::with_nodes(opts.nodes, opts.patients_per_site, opts.seed);
    sb_opts.formats = vec![DataFormat::Parquet];
    sb_opts.keep_rows = false;
    sb_opts.job_timeout_secs = 600;
    // Nodes count as gone after three missed heartbeats: at 1 s, a node
    // whose heartbeat waits behind its jobs on a saturated machine drops
    // out of a fit; at 5 s only a real outage does.
    sb_opts.heartbeat_secs = 5;
    // The coordinator on threads of its own, so that its CPU is told
    // apart from the nodes' in the table.
    sb_opts.coordinator_threads = Some(cores());
    let mut sb = Sandbox::prepare(sb_opts)
        .await
        .with_context(|| format!("cannot prepare a sandbox of {} nodes", opts.nodes))?;
    // The baseline runs first, on the coordinator the network starts with.
    sb.coordinator_config.coordinator.audit_group_commit = !opts.baseline;
    sb.start_all()
        .await
        .with_context(|| format!("cannot start a sandbox of {} nodes", opts.nodes))?;
    println!(
        "plexus-bench throughput: {} nodes x {} patients (Parquet), loopback mTLS, started in {:.1} s",
        opts.nodes,
        opts.patients_per_site,
        t.elapsed().as_secs_f64()
    );
    // The exact study: every query is computed at every node (a study
    // under differential privacy would answer repeats from the nodes' caches).
    let study = sb.over_all_nodes(sandbox::exact_study());
    sb.approve(&study)?;
    sb.register_study(&study).await?;
    let alice = sb.client(sandbox::RESEARCHER).await?;
    let mix = load::mix()?;
    // Warm-up: each query once, which also checks that all nodes answer.
    for (label, q) in &mix {
        let r = alice
            .run_query(&study.id, q, Duration::from_secs(600))
            .await?;
        let pooled = plexus_client::outcome(&r).map_err(|e| anyhow::anyhow!("{label}: {e}"))?;
        if pooled.provenance.answered as usize != opts.nodes {
            anyhow::bail!(
                "{label}: {} of {} nodes answered the warm-up",
                pooled.provenance.answered,
                opts.nodes
            );
        }
    }
    let queries: Vec<_> = mix.into_iter().map(|(_, q)| q).collect();
    println!(
        "query mix: {} ({} kinds, round-robin), {} s per concurrency level",
        load::MIX
            .iter()
            .map(|(l, _)| *l)
            .collect::<Vec<_>>()
            .join("; "),
        queries.len(),
        opts.seconds
    );
    let mut baseline_levels = None;
    if opts.baseline {
        println!(
            "audit group commit off (the baseline: one commit per audit entry behind one lock)"
        );
        baseline_levels =
            Some(levels_run(&alice, &study.id, &queries, &levels, opts.seconds).await?);
        // The same network, the coordinator restarted with group commit.
        sb.stop_coordinator().await?;
        sb.coordinator_config.coordinator.audit_group_commit = true;
        sb.start_coordinator().await?;
        sb.wait_all_live().await?;
        println!("audit group commit on");
    }
    let alice = sb.client(sandbox::RESEARCHER).await?;
    let results = levels_run(&alice, &study.id, &queries, &levels, opts.seconds).await?;
    print_table(&results, baseline_levels.as_deref());
    println!(
        "the machine has {} cores; CPU cores busy below that while queries/s stop growing means the queries wait on something other than CPU",
        cores()
    );
    if let Some((c, cpu)) = results
        .iter()
        .filter_map(|(c, _, cpu)| cpu.map(|cpu| (c, cpu)))
        .min_by(|a, b| a.1.coordinator_ms.total_cmp(&b.1.coordinator_ms))
    {
        println!(
            "the coordinator (its threads and SQLite's) spent {:.1} ms of CPU per query at {c} in flight: alone on these {} cores it could answer at most about {:.0} queries/s; the nodes and researchers sharing them spent {:.1} ms",
            cpu.coordinator_ms,
            cores(),
            cpu.coordinator_ceiling(cores()),
            cpu.others_ms
        );
    }
    sb.shutdown().await?;
    Ok(results.into_iter().map(|(c, f, _)| (c, f)).collect())
}

/// Runs every concurrency level in turn.
async fn levels_run(
    alice: &plexus_client::Client,
    study: &str,
    queries: &[plexus_core::Query],
    levels: &[usize],
    seconds: u64,
) -> anyhow::Result<Vec<Level>> {
    let mut results = Vec::new();
    for &c in levels {
        let before = load::process_cpu_time().zip(load::threads_cpu_time(COORDINATOR));
        let (figures, error) =
            load::closed_loop(alice, study, queries, c, Duration::from_secs(seconds)).await;
        if let Some(e) = error {
            anyhow::bail!(
                "{} of the queries at concurrency {c} failed; the first: {e}",
                figures.failed
            );
        }
        let after = load::process_cpu_time().zip(load::threads_cpu_time(COORDINATOR));
        println!(
            "concurrency {c}: {} queries in {:.1} s",
            figures.completed(),
            figures.elapsed.as_secs_f64()
        );
        // CPU seconds per wall second: how many cores the whole network
        // (coordinator, nodes, researchers, all in this process) kept busy.
        let cpu = before.zip(after).map(|((all0, co0), (all1, co1))| {
            let all = all1.saturating_sub(all0).as_secs_f64() * 1000.0;
            let coordinator = co1.saturating_sub(co0).as_secs_f64() * 1000.0;
            let n = figures.completed().max(1) as f64;
            Cpu {
                busy: all / 1000.0 / figures.elapsed.as_secs_f64(),
                coordinator_ms: coordinator / n,
                others_ms: (all - coordinator).max(0.0) / n,
            }
        });
        results.push((c, figures, cpu));
    }
    Ok(results)
}

/// The table: each level with group commit, and beside it the baseline
/// and the ratio when it was measured.
fn print_table(results: &[Level], baseline: Option<&[Level]>) {
    let one = results
        .iter()
        .find(|(c, _, _)| *c == 1)
        .map(|(_, f, _)| f.per_second())
        .unwrap_or(f64::NAN);
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    let mut header = vec![
        "concurrency",
        "queries",
        "queries/s",
        "x concurrency 1",
        "p50 ms",
        "p99 ms",
        "CPU cores busy",
        "coordinator CPU ms/query",
        "nodes+researchers CPU ms/query",
    ];
    if baseline.is_some() {
        header.extend([
            "baseline queries/s",
            "baseline p50 ms",
            "baseline p99 ms",
            "x baseline",
        ]);
    }
    table.set_header(header);
    for (c, f, busy) in results {
        let mut row = vec![
            c.to_string(),
            f.completed().to_string(),
            format!("{:.1}", f.per_second()),
            format!("{:.2}", f.per_second() / one),
            ms(f.percentile(0.5)),
            ms(f.percentile(0.99)),
        ];
        row.extend(match busy {
            Some(cpu) => [
                format!("{:.2}", cpu.busy),
                format!("{:.1}", cpu.coordinator_ms),
                format!("{:.1}", cpu.others_ms),
            ],
            None => ["-".into(), "-".into(), "-".into()],
        });
        if let Some(base) = baseline {
            match base.iter().find(|(bc, _, _)| bc == c) {
                Some((_, b, _)) => row.extend([
                    format!("{:.1}", b.per_second()),
                    ms(b.percentile(0.5)),
                    ms(b.percentile(0.99)),
                    format!("{:.2}", f.per_second() / b.per_second()),
                ]),
                None => row.extend(["-".into(), "-".into(), "-".into(), "-".into()]),
            }
        }
        table.add_row(row);
    }
    println!("{table}");
}
