//! `plexus-bench latency`: end-to-end latency of pooled queries over three
//! nodes on loopback with mTLS, against the same computation done centrally
//! by DataFusion over all three sites' rows at once, in the same run; then
//! the secure-aggregation comparison ([`crate::secure`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{median, ms};
use anyhow::Context;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use datafusion::prelude::{ParquetReadOptions, SessionContext};

use plexus_core::models::fit::{IterativeFit, Step};
use plexus_core::models::glm::GlmFitter;
use plexus_core::models::survival;
use plexus_core::pool::PooledValue;
use plexus_core::{Dictionary, Purpose, Query, RawStats, StudyDefinition};
use plexus_node::data::{ConsentConfig, DataConfig, DataSource, Limits};

use plexus_client::Client;
use plexus_sandbox::synth::DataFormat;
use plexus_sandbox::{self as sandbox, Sandbox, SandboxOptions};

pub struct BenchOptions {
    pub patients_per_site: usize,
    pub repetitions: usize,
    pub seed: u64,
    pub dir: Option<PathBuf>,
    /// Patients per node of the secure-aggregation comparison (its own
    /// networks of 3 and 20 nodes).
    pub secure_patients_per_site: usize,
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
    private: false,
    holdout_salt: 0,
    k: 1,
    max_parameter_share: 1.0,
};

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
    federated(&opts).await?;
    crate::secure::run(crate::secure::SecureBenchOptions {
        patients_per_site: opts.secure_patients_per_site,
        repetitions: opts.repetitions,
        seed: opts.seed,
        nodes: crate::secure::NODES.to_vec(),
    })
    .await?;
    Ok(())
}

/// Federated against centralised, over three nodes.
async fn federated(opts: &BenchOptions) -> anyhow::Result<()> {
    println!(
        "plexus-bench latency: 3 nodes x {} patients (Parquet), loopback mTLS, {} repetitions per query",
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
    // The exact study: the benchmark times the computation, which a
    // differentially private study would answer from its cache after the
    // first repetition.
    let study = sandbox::exact_study();
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
            ..Default::default()
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
        plexus_client::outcome(&fed).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
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
            plexus_client::outcome(&r).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
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
    models(&alice, &central, &study, &purpose, today, opts.repetitions).await?;
    if let Some(peak) = crate::peak_rss_mib("self") {
        println!(
            "peak memory of this whole process (coordinator + 3 nodes + centralised baseline): {peak:.0} MiB (target per node < 1024 MiB)"
        );
    }
    sb.shutdown().await?;
    Ok(())
}

/// Logistic regression with ten covariates (IRLS rounds).
const LOGISTIC: &str = r#"{"analysis": {"glm": {"family": "binomial", "outcome": "death",
    "covariates": ["age", "sex", "bmi", "sbp", "smoking", "diabetes", "hypertension",
                   "cholesterol", "aaa_diameter"]}}}"#;

/// Kaplan-Meier on a daily grid over five years.
const KAPLAN_MEIER: &str = r#"{"analysis": {"kaplan_meier": {"time": "followup_days",
    "event": "death", "group": "sex", "grid": {"from": 0, "to": 1826, "step": 1}}}}"#;

/// One centralised logistic fit: the same IRLS over the union table, each
/// round computed by the same node code on all rows in one place.
async fn central_fit(
    central: &DataSource,
    query: &Query,
    purpose: &Purpose,
    today: chrono::NaiveDate,
) -> anyhow::Result<(u32, Vec<Duration>)> {
    let dict = Dictionary::cardiovascular();
    let terms: Vec<String> = query
        .analysis
        .terms(&dict)?
        .iter()
        .map(|t| t.name())
        .collect();
    let options = query.analysis.fit_options().expect("a model");
    let mut fitter = GlmFitter::new(
        plexus_core::models::glm::Family::Binomial,
        "death".into(),
        terms,
        true,
        options,
    );
    let mut it = fitter.start();
    let mut rounds = Vec::new();
    loop {
        let t = Instant::now();
        let RawStats::Glm(stats) = central
            .compute(query, purpose, today, LIMITS, Some(&it))
            .await?
        else {
            anyhow::bail!("the centralised round returned no GLM statistics");
        };
        let step = fitter.step(&stats)?;
        rounds.push(t.elapsed());
        match step {
            Step::Next(next) => it = next,
            Step::Done(r) => return Ok((r.iterations, rounds)),
        }
    }
}

/// The regression and survival benchmark: a 10-covariate logistic
/// regression and a daily Kaplan-Meier, federated against centralised.
async fn models(
    alice: &Client,
    central: &DataSource,
    study: &StudyDefinition,
    purpose: &Purpose,
    today: chrono::NaiveDate,
    repetitions: usize,
) -> anyhow::Result<()> {
    let logistic = Query::from_json(LOGISTIC)?;
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(vec![
        "analysis",
        "run",
        "federated ms",
        "centralised ms",
        "ratio",
        "rounds",
        "median round ms (fed / central)",
    ]);
    let mut worst: f64 = 0.0;
    let mut fed_runs = Vec::new();
    let mut central_runs = Vec::new();
    for rep in 0..=repetitions {
        let t = Instant::now();
        let r = alice
            .run_query(&study.id, &logistic, Duration::from_secs(600))
            .await?;
        let fed = t.elapsed();
        let pooled = plexus_client::outcome(&r).map_err(|e| anyhow::anyhow!("logistic: {e}"))?;
        let PooledValue::Glm(g) = &pooled.value else {
            anyhow::bail!("the logistic query returned no model");
        };
        let t = Instant::now();
        let (iterations, central_rounds) = central_fit(central, &logistic, purpose, today).await?;
        let cent = t.elapsed();
        if iterations != g.iterations {
            anyhow::bail!(
                "federated and centralised fits took {} and {iterations} iterations",
                g.iterations
            );
        }
        let fed_rounds: Vec<Duration> = pooled
            .provenance
            .round_ms
            .iter()
            .map(|ms| Duration::from_millis(*ms))
            .collect();
        let label = if rep == 0 {
            "cold (reads the data)".to_string()
        } else {
            format!("warm {rep}")
        };
        let ratio = fed.as_secs_f64() / cent.as_secs_f64();
        if rep > 0 {
            fed_runs.push(fed);
            central_runs.push(cent);
        }
        table.add_row(vec![
            format!("logistic, {} parameters", g.coefficients.len()),
            label,
            ms(fed),
            ms(cent),
            format!("{ratio:.2}"),
            fed_rounds.len().to_string(),
            format!(
                "{} / {}",
                ms(median(fed_rounds)),
                ms(median(central_rounds))
            ),
        ]);
    }
    if repetitions > 0 {
        let ratio = median(fed_runs).as_secs_f64() / median(central_runs).as_secs_f64();
        worst = worst.max(ratio);
    }

    let km = Query::from_json(KAPLAN_MEIER)?;
    let dict = Dictionary::cardiovascular();
    let mut fed_runs = Vec::new();
    let mut central_runs = Vec::new();
    for rep in 0..=repetitions {
        let t = Instant::now();
        let r = alice
            .run_query(&study.id, &km, Duration::from_secs(600))
            .await?;
        let fed = t.elapsed();
        plexus_client::outcome(&r).map_err(|e| anyhow::anyhow!("kaplan-meier: {e}"))?;
        let t = Instant::now();
        let raw = central.compute(&km, purpose, today, LIMITS, None).await?;
        let RawStats::Survival(groups) = raw else {
            anyhow::bail!("the centralised Kaplan-Meier returned no counts");
        };
        let plexus_core::Analysis::KaplanMeier { grid, .. } = &km.analysis else {
            unreachable!("a Kaplan-Meier query")
        };
        let labels = km.analysis.survival_groups(&dict)?;
        survival::pool(
            &grid.points()?,
            &labels,
            &[("central".into(), survival::disclose(groups, 1))],
            ("followup_days", "death", Some("sex")),
        )?;
        let cent = t.elapsed();
        let label = if rep == 0 {
            "cold".to_string()
        } else {
            format!("warm {rep}")
        };
        if rep > 0 {
            fed_runs.push(fed);
            central_runs.push(cent);
        }
        table.add_row(vec![
            "Kaplan-Meier by sex, 1826 daily intervals".to_string(),
            label,
            ms(fed),
            ms(cent),
            format!("{:.2}", fed.as_secs_f64() / cent.as_secs_f64()),
            "1".into(),
            "-".into(),
        ]);
    }
    if repetitions > 0 {
        let ratio = median(fed_runs).as_secs_f64() / median(central_runs).as_secs_f64();
        worst = worst.max(ratio);
    }
    println!("{table}");
    println!(
        "worst federated / centralised ratio of the warm medians for models and survival: {worst:.2} (target <= 2)"
    );
    Ok(())
}
