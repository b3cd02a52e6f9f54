//! `plexus-bench trees`: gradient-boosted trees over three nodes on
//! loopback with mTLS, against LightGBM trained centrally on the union of
//! the same consenting complete cases with the same features and settings,
//! in the same run: training time, and AUC on held-out patients of a
//! fourth, unseen hospital (both scored by scikit-learn's `roc_auc_score`).
//!
//! LightGBM runs in the model tools' venv (tests/models/setup.sh
//! --install), given by `--python` or `PLEXUS_MODEL_PYTHON`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};

use plexus_core::models::gbdt::GbdtModel;
use plexus_core::pool::PooledValue;
use plexus_core::query::AnalysisKind;
use plexus_core::Query;
use plexus_sandbox::reference::{consenting, model_columns};
use plexus_sandbox::synth::{generate_site, DataFormat, SiteSpec};
use plexus_sandbox::{self as sandbox, Sandbox, SandboxOptions};

pub struct TreesOptions {
    pub patients_per_site: usize,
    pub holdout: usize,
    pub trees: u32,
    pub depth: u32,
    pub seed: u64,
    pub python: PathBuf,
}

/// Nine covariates, eleven features (smoking as three indicators, sex as
/// two): every dictionary variable but the dates, the outcome and the
/// follow-up time.
const COVARIATES: &str = r#"["age", "sex", "bmi", "sbp", "smoking", "diabetes", "hypertension", "cholesterol", "aaa_diameter"]"#;

fn query(o: &TreesOptions) -> String {
    format!(
        r#"{{"analysis": {{"gbdt": {{"outcome": "death", "covariates": {COVARIATES},
            "trees": {}, "depth": {}, "learning_rate": 0.1, "lambda": 1, "min_child_weight": 1, "bins": 32}}}}}}"#,
        o.trees, o.depth
    )
}

/// Rows of (features..., outcome) as little-endian f64, for numpy.
fn write_matrix(path: &Path, rows: &[Vec<f64>], y: &[f64]) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for (r, v) in rows.iter().zip(y) {
        for x in r.iter().chain(std::iter::once(v)) {
            out.write_all(&x.to_le_bytes())?;
        }
    }
    out.flush()?;
    Ok(())
}

/// The complete cases' features and outcome of `patients` for `model`.
fn matrix(
    model: &GbdtModel,
    patients: &[&plexus_sandbox::synth::Patient],
) -> anyhow::Result<(Vec<Vec<f64>>, Vec<f64>)> {
    let cols = model_columns(patients);
    let death = &cols["death"];
    // death is never missing, so the complete cases of the features are
    // the model's.
    let keep: Vec<usize> = (0..patients.len())
        .filter(|&r| {
            model
                .features
                .iter()
                .all(|f| !cols[&f.variable].is_missing(r))
        })
        .collect();
    let rows = model.feature_rows(&cols)?;
    anyhow::ensure!(rows.len() == keep.len(), "complete cases differ");
    Ok((rows, keep.iter().map(|&r| death.number(r)).collect()))
}

pub async fn run(o: TreesOptions) -> anyhow::Result<()> {
    println!(
        "plexus-bench trees: 3 nodes x {} patients (Parquet), loopback mTLS; {} trees of depth {}; LightGBM on the union in the same run; AUC on {} patients of an unseen hospital",
        o.patients_per_site, o.trees, o.depth, o.holdout
    );
    let t = Instant::now();
    let mut sb_opts = SandboxOptions::new(o.patients_per_site, o.seed);
    sb_opts.formats = vec![DataFormat::Parquet];
    sb_opts.job_timeout_secs = 600;
    let sb = Sandbox::start(sb_opts).await?;
    let mut study = sandbox::validation_study();
    study.analyses.push(AnalysisKind::Gbdt);
    sb.approve(&study)?;
    sb.register_study(&study).await?;
    sb.wait_all_live().await?;
    let purpose = study.purpose()?;
    let today = chrono::Utc::now().date_naive();
    println!(
        "data generated and nodes started in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let alice = sb.client(sandbox::RESEARCHER).await?;
    let q = Query::from_json(&query(&o))?;
    let t = Instant::now();
    let r = alice
        .run_query(&study.id, &q, Duration::from_secs(3600))
        .await?;
    let federated = t.elapsed();
    let pooled = plexus_client::outcome(&r).map_err(|e| anyhow::anyhow!("gbdt: {e}"))?;
    let PooledValue::Gbdt(g) = &pooled.value else {
        anyhow::bail!("the gbdt query returned no model");
    };
    let rounds = pooled.provenance.round_ms.len();
    let mean_round = pooled.provenance.round_ms.iter().sum::<u64>() as f64 / rounds.max(1) as f64;

    // The union the nodes trained on, and a hospital none of them holds.
    let dir = tempfile::tempdir()?;
    let mut union = Vec::new();
    for s in &sb.sites {
        union.extend(consenting(s, &purpose, today));
    }
    let (x, y) = matrix(&g.model, &union)?;
    anyhow::ensure!(
        x.len() as u64 == g.n,
        "the union has {} complete cases, the model {}",
        x.len(),
        g.n
    );
    let unseen = generate_site(&SiteSpec {
        name: "hospital-z".into(),
        patients: o.holdout,
        seed: o.seed + 1000,
    });
    let held: Vec<&plexus_sandbox::synth::Patient> = unseen.patients.iter().collect();
    let (hx, hy) = matrix(&g.model, &held)?;
    let plexus: Vec<f64> = hx.iter().map(|r| g.model.predict(r)).collect();
    write_matrix(&dir.path().join("train.bin"), &x, &y)?;
    write_matrix(&dir.path().join("holdout.bin"), &hx, &hy)?;
    let mut p = std::io::BufWriter::new(std::fs::File::create(dir.path().join("plexus.bin"))?);
    for v in &plexus {
        p.write_all(&v.to_le_bytes())?;
    }
    p.flush()?;
    drop(p);

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("gbdt_central.py");
    let out = std::process::Command::new(&o.python)
        .arg(&script)
        .arg(dir.path())
        .args([
            g.model.features.len().to_string(),
            o.trees.to_string(),
            o.depth.to_string(),
        ])
        .output()
        .with_context(|| format!("cannot run {}", o.python.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "the centralised LightGBM failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let central: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let fit_s = central["fit_seconds"].as_f64().unwrap_or(f64::NAN);
    let lgb_auc = central["auc_lightgbm"].as_f64().unwrap_or(f64::NAN);
    let plexus_auc = central["auc_plexus"].as_f64().unwrap_or(f64::NAN);

    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(vec![
        "",
        "Plexus, federated",
        "LightGBM, centralised",
        "ratio / gap",
    ]);
    table.add_row(vec![
        "training time, s".to_string(),
        format!("{:.2}", federated.as_secs_f64()),
        format!("{fit_s:.2}"),
        format!("{:.2}x", federated.as_secs_f64() / fit_s),
    ]);
    table.add_row(vec![
        format!("AUC, {} unseen patients", hy.len()),
        format!("{plexus_auc:.4}"),
        format!("{lgb_auc:.4}"),
        format!("{:+.4}", plexus_auc - lgb_auc),
    ]);
    println!("{table}");
    println!(
        "patients trained on: {} (complete cases); trees: {}; rounds of jobs: {rounds}, mean {mean_round:.1} ms; LightGBM {}",
        g.n,
        g.model.trees.len(),
        central["lightgbm"].as_str().unwrap_or("?")
    );
    println!("targets: federated time <= 3x centralised; AUC within 0.005 of it");
    sb.shutdown().await?;
    Ok(())
}
