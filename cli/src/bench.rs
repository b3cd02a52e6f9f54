//! `plexus bench`: end-to-end latency of pooled queries over three nodes on
//! loopback with mTLS, against the same computation done centrally by
//! DataFusion over all three sites' rows at once, in the same run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use datafusion::prelude::{ParquetReadOptions, SessionContext};

use plexus_core::{Dictionary, Query};
use plexus_node::data::{ConsentConfig, DataConfig, DataSource, Limits};

use crate::sandbox::{self, Sandbox, SandboxOptions};
use crate::synth::DataFormat;

pub struct BenchOptions {
    pub patients_per_site: usize,
    pub repetitions: usize,
    pub seed: u64,
    pub dir: Option<PathBuf>,
}

const QUERIES: &[(&str, &str)] = &[
    (
        "count, cohort age >= 65 and male",
        r#"{"cohort": {"and": [{"compare": {"variable": "age", "op": ">=", "value": 65}},
                               {"compare": {"variable": "sex", "op": "=", "value": "M"}}]},
            "analysis": {"count": {}}}"#,
    ),
    (
        "summary of sbp, cohort smokers",
        r#"{"cohort": {"in": {"variable": "smoking", "values": ["current", "former"]}},
            "analysis": {"summary": {"variable": "sbp"}}}"#,
    ),
    (
        "histogram of aaa_diameter (10 bins), cohort diabetes",
        r#"{"cohort": {"compare": {"variable": "diabetes", "op": "=", "value": true}},
            "analysis": {"histogram": {"variable": "aaa_diameter", "edges": [20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120]}}}"#,
    ),
];

/// The centralised baseline applies no disclosure control of its own.
const LIMITS: Limits = Limits {
    k: 1,
    max_parameter_share: 1.0,
};

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// Peak resident memory of this process (VmHWM), when the OS tells.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Concatenates CSV files that share a header.
fn concat_csv(files: &[PathBuf], out: &Path) -> anyhow::Result<()> {
    let mut text = String::new();
    for (i, f) in files.iter().enumerate() {
        let t =
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        let mut lines = t.lines();
        let header = lines.next().unwrap_or_default();
        if i == 0 {
            text.push_str(header);
            text.push('\n');
        }
        for l in lines {
            text.push_str(l);
            text.push('\n');
        }
    }
    std::fs::write(out, text)?;
    Ok(())
}

pub async fn run(opts: BenchOptions) -> anyhow::Result<()> {
    println!(
        "plexus bench: 3 nodes x {} patients (Parquet), loopback mTLS, {} repetitions per query",
        opts.patients_per_site, opts.repetitions
    );
    let t = Instant::now();
    let mut sb_opts = SandboxOptions::new(opts.patients_per_site, opts.seed);
    sb_opts.formats = vec![DataFormat::Parquet];
    sb_opts.keep_rows = false;
    sb_opts.dir = opts.dir.clone();
    sb_opts.job_timeout_secs = 600;
    let sb = Sandbox::start(sb_opts).await?;
    println!(
        "data generated and nodes started in {:.1} s ({})",
        t.elapsed().as_secs_f64(),
        sb.dir.display()
    );
    let study = sandbox::demo_study();
    sb.register_study(&study).await?;
    let purpose = study.purpose()?;

    // The centralised baseline: all three sites' rows in one table, the
    // same consent rules, the same computation, no network.
    let union_dir = sb.dir.join("centralised");
    std::fs::create_dir_all(&union_dir)?;
    let ctx = SessionContext::new();
    let paths: Vec<String> = sb
        .node_configs
        .values()
        .map(|c| c.data.path.display().to_string())
        .collect();
    let union_path = union_dir.join("patients.parquet");
    ctx.read_parquet(paths, ParquetReadOptions::default())
        .await?
        .write_parquet(&union_path.display().to_string(), Default::default(), None)
        .await?;
    let consents: Vec<PathBuf> = sb
        .node_configs
        .values()
        .map(|c| c.consent.path.clone())
        .collect();
    let opt_outs: Vec<PathBuf> = sb
        .node_configs
        .values()
        .filter_map(|c| c.consent.opt_out.clone())
        .collect();
    concat_csv(&consents, &union_dir.join("consent.csv"))?;
    concat_csv(&opt_outs, &union_dir.join("opt_out.csv"))?;
    let any = sb.node_configs.values().next().expect("nodes");
    let central = DataSource::open(
        &DataConfig {
            path: union_path,
            format: None,
            patient_id: any.data.patient_id.clone(),
            columns: any.data.columns.clone(),
        },
        &ConsentConfig {
            path: union_dir.join("consent.csv"),
            opt_out: Some(union_dir.join("opt_out.csv")),
        },
        Arc::new(Dictionary::cardiovascular()),
    )
    .await?;

    let alice = sb.client(sandbox::RESEARCHER).await?;
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(vec![
        "query",
        "federated median ms",
        "centralised median ms",
        "ratio",
    ]);
    let today = chrono::Utc::now().date_naive();
    let mut worst: f64 = 0.0;
    for (name, json) in QUERIES {
        let query = Query::from_json(json)?;
        // warm-up, and a check that both paths agree
        let fed = alice
            .run_query(&study.id, &query, Duration::from_secs(600))
            .await?;
        crate::client::outcome(&fed).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        central
            .compute(&query, &purpose, today, LIMITS, None)
            .await?;
        let mut f = Vec::new();
        let mut c = Vec::new();
        for _ in 0..opts.repetitions {
            let t = Instant::now();
            let r = alice
                .run_query(&study.id, &query, Duration::from_secs(600))
                .await?;
            f.push(t.elapsed());
            crate::client::outcome(&r).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            let t = Instant::now();
            central
                .compute(&query, &purpose, today, LIMITS, None)
                .await?;
            c.push(t.elapsed());
        }
        let (fm, cm) = (median(f), median(c));
        let ratio = fm.as_secs_f64() / cm.as_secs_f64();
        worst = worst.max(ratio);
        table.add_row(vec![
            name.to_string(),
            ms(fm),
            ms(cm),
            format!("{ratio:.2}"),
        ]);
    }
    println!("{table}");
    println!("worst federated / centralised ratio: {worst:.2} (target <= 1.5)");
    if let Some(peak) = peak_rss_mib() {
        println!(
            "peak memory of this whole process (coordinator + 3 nodes + centralised baseline): {peak:.0} MiB (target per node < 1024 MiB)"
        );
    }
    sb.shutdown().await?;
    Ok(())
}
