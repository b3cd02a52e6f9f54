//! `plexus-bench secure`, also the second part of `plexus-bench latency`:
//! the latency of the same summary query in an exact study with and
//! without secure aggregation, over 3 nodes and over 20, on loopback with
//! mTLS. Both studies run on the
//! same sandbox, interleaved repetition by repetition, so what differs is
//! the key round, the roster, masking and unmasking.

use std::time::{Duration, Instant};

use crate::{median, ms};
use anyhow::Context;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};

use plexus_core::Query;

use plexus_sandbox::synth::DataFormat;
use plexus_sandbox::{self as sandbox, Sandbox, SandboxOptions};

/// The query timed: a summary, whose answer is three numbers per node, so
/// the comparison shows the protocol's cost rather than the vector's size.
const SUMMARY: &str = r#"{"cohort": {"in": {"variable": "smoking", "values": ["current", "former"]}},
    "analysis": {"summary": {"variable": "sbp"}}}"#;

/// The network sizes measured: 3 hospitals and 20.
pub const NODES: [usize; 2] = [3, 20];

/// The added latency at 3 nodes the benchmark is held to, in percent.
pub const TARGET_OVERHEAD_PCT: f64 = 20.0;

pub struct SecureBenchOptions {
    pub patients_per_site: usize,
    pub repetitions: usize,
    pub seed: u64,
    /// Network sizes to measure.
    pub nodes: Vec<usize>,
}

/// One network size's medians.
pub struct Measured {
    pub nodes: usize,
    pub plain: Duration,
    pub secure: Duration,
}

impl Measured {
    pub fn overhead_pct(&self) -> f64 {
        (self.secure.as_secs_f64() / self.plain.as_secs_f64() - 1.0) * 100.0
    }
}

/// Measures one network size: a sandbox of `nodes` hospitals, the exact
/// study and the secure study over all of them.
async fn measure(opts: &SecureBenchOptions, nodes: usize) -> anyhow::Result<Measured> {
    let t = Instant::now();
    let mut sb_opts = SandboxOptions::with_nodes(nodes, opts.patients_per_site, opts.seed);
    sb_opts.formats = vec![DataFormat::Parquet];
    sb_opts.keep_rows = false;
    sb_opts.job_timeout_secs = 600;
    let sb = Sandbox::start(sb_opts)
        .await
        .with_context(|| format!("cannot start a sandbox of {nodes} nodes"))?;
    println!(
        "{nodes} nodes x {} patients started in {:.1} s",
        opts.patients_per_site,
        t.elapsed().as_secs_f64()
    );
    let plain = sb.over_all_nodes(sandbox::exact_study());
    let secure = sb.over_all_nodes(sandbox::secure_study());
    // Over every node they are new definitions: the hospitals approve them.
    sb.approve(&plain)?;
    sb.approve(&secure)?;
    sb.register_study(&plain).await?;
    sb.register_study(&secure).await?;
    let alice = sb.client(sandbox::RESEARCHER).await?;
    let query = Query::from_json(SUMMARY)?;
    let run = |study: String| {
        let alice = &alice;
        let query = &query;
        async move {
            let t = Instant::now();
            let r = alice
                .run_query(&study, query, Duration::from_secs(600))
                .await?;
            let elapsed = t.elapsed();
            let pooled = plexus_client::outcome(&r)
                .map_err(|e| anyhow::anyhow!("summary in {study}: {e}"))?;
            anyhow::Ok((elapsed, pooled))
        }
    };
    // Warm-up, and a check that both paths agree.
    let (_, p) = run(plain.id.clone()).await?;
    let (_, s) = run(secure.id.clone()).await?;
    if p.n() != s.n() {
        anyhow::bail!(
            "with and without secure aggregation the summary rests on {:?} and {:?} patients",
            s.n(),
            p.n()
        );
    }
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for _ in 0..opts.repetitions {
        without.push(run(plain.id.clone()).await?.0);
        with.push(run(secure.id.clone()).await?.0);
    }
    sb.shutdown().await?;
    Ok(Measured {
        nodes,
        plain: median(without),
        secure: median(with),
    })
}

/// Runs the comparison and prints it.
pub async fn run(opts: SecureBenchOptions) -> anyhow::Result<Vec<Measured>> {
    println!(
        "secure aggregation: a summary of sbp in an exact study with and without secure aggregation, {} patients per node, {} repetitions each",
        opts.patients_per_site, opts.repetitions
    );
    let mut results = Vec::new();
    for n in &opts.nodes {
        results.push(measure(&opts, *n).await?);
    }
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(vec![
        "nodes",
        "without secure aggregation, median ms",
        "with secure aggregation, median ms",
        "added latency",
    ]);
    for m in &results {
        table.add_row(vec![
            m.nodes.to_string(),
            ms(m.plain),
            ms(m.secure),
            format!("{:+.1} %", m.overhead_pct()),
        ]);
    }
    println!("{table}");
    if let Some(m) = results.iter().find(|m| m.nodes == 3) {
        println!(
            "secure aggregation adds {:.1} % at 3 nodes (target under {TARGET_OVERHEAD_PCT:.0} %)",
            m.overhead_pct()
        );
    }
    Ok(results)
}
