//! `plexus-bench warehouse`: the same synthetic patients on a node that
//! reads PostgreSQL and on one that reads Parquet; median latency of each
//! node computing the same queries (DataSource::compute, no network), side
//! by side in the same run.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use crate::{median, ms};
use anyhow::Context;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use plexus_core::models::fit::{IterativeFit, Step};
use plexus_core::models::glm::{Family, GlmFitter};
use plexus_core::{Dictionary, Purpose, Query, RawStats};
use plexus_node::data::{ConsentConfig, DataConfig, DataSource, Limits, StudyScope};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Executor};

use plexus_sandbox::synth::{self, generate_site, node_columns, SiteSpec};

const QUERIES: &[(&str, &str)] = &[
    (
        "count, cohort age >= 65 and male",
        r#"{"cohort": {"and": [{"compare": {"variable": "age", "op": ">=", "value": 65}},
                               {"compare": {"variable": "sex", "op": "=", "value": "M"}}]},
            "analysis": {"count": {}}}"#,
    ),
    (
        "summary of sbp (latest measurement), cohort smokers",
        r#"{"cohort": {"in": {"variable": "smoking", "values": ["current", "former"]}},
            "analysis": {"summary": {"variable": "sbp"}}}"#,
    ),
    (
        "table smoking x diabetes (condition)",
        r#"{"analysis": {"table": {"row": "smoking", "column": "diabetes"}}}"#,
    ),
    (
        "correlation of age, bmi, sbp (latest measurement)",
        r#"{"analysis": {"correlation": {"variables": ["age", "bmi", "sbp"], "missing": "pairwise"}}}"#,
    ),
    (
        "Kaplan-Meier of death by smoking, 61 intervals",
        r#"{"analysis": {"kaplan_meier": {"time": "followup_days", "event": "death", "group": "smoking",
                                          "grid": {"from": 0, "to": 1830, "step": 30}}}}"#,
    ),
    (
        "histogram of aaa_diameter (10 bins), cohort diabetes",
        r#"{"cohort": {"compare": {"variable": "diabetes", "op": "=", "value": true}},
            "analysis": {"histogram": {"variable": "aaa_diameter", "edges": [20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120]}}}"#,
    ),
];

/// A cohort in time, declared by the study (`[derived]`): the first
/// diabetes diagnosis as the index event, a diagnosis within a year of
/// inclusion, and the days from the index to inclusion. Only a warehouse
/// derives these (a Parquet node holds no event rows).
const TIMELINE: &str = r#"
[derived.first_diabetes]
type = "date"
first_date = { event = "diabetes" }

[derived.diabetes_near_inclusion]
type = "boolean"
window = { event = "diabetes", origin = "inclusion_date", from = -365, to = 365 }

[derived.index_to_inclusion]
type = "integer"
min = -36500
max = 36500
days_between = { from = "first_diabetes", to = "inclusion_date" }
"#;

const TIMELINE_QUERIES: &[(&str, &str)] = &[
    (
        "count, study cohort: diabetes within a year of inclusion, index before it",
        r#"{"cohort": {"and": [{"compare": {"variable": "diabetes_near_inclusion", "op": "=", "value": true}},
                               {"compare": {"variable": "index_to_inclusion", "op": ">=", "value": 0}}]},
            "analysis": {"count": {}}}"#,
    ),
    (
        "summary of days from the study's index to inclusion",
        r#"{"analysis": {"summary": {"variable": "index_to_inclusion"}}}"#,
    ),
];

const GLM: &str = r#"{"analysis": {"glm": {"family": "binomial", "outcome": "death",
    "covariates": ["age", "sex", "bmi", "smoking", "diabetes"]}}}"#;

const LIMITS: Limits = Limits {
    private: false,
    holdout_salt: 0,
    k: 5,
    max_parameter_share: 0.33,
};

/// A whole IRLS fit, each round computed by `source`.
async fn fit(
    source: &DataSource,
    query: &Query,
    purpose: &Purpose,
    today: chrono::NaiveDate,
) -> anyhow::Result<u32> {
    let dict = Dictionary::cardiovascular();
    let terms = query
        .analysis
        .terms(&dict)?
        .iter()
        .map(|t| t.name())
        .collect();
    let options = query.analysis.fit_options().expect("a model");
    let mut fitter = GlmFitter::new(Family::Binomial, "death".into(), terms, true, options);
    let mut it = fitter.start();
    loop {
        let RawStats::Glm(stats) = source
            .compute(query, purpose, today, LIMITS, Some(&it))
            .await?
        else {
            anyhow::bail!("a GLM round returned no GLM statistics");
        };
        match fitter.step(&stats)? {
            Step::Next(next) => it = next,
            Step::Done(r) => return Ok(r.iterations),
        }
    }
}

pub async fn run(patients: usize, repetitions: usize, seed: u64, url: &str) -> anyhow::Result<()> {
    println!("plexus-bench warehouse: {patients} patients on PostgreSQL and on Parquet, one node each, {repetitions} repetitions per query");
    let t = Instant::now();
    let site = generate_site(&SiteSpec {
        name: "hospital-a".into(),
        patients,
        seed,
    });
    let dir = tempfile::tempdir()?;
    let paths = synth::write_site(&site, dir.path(), synth::DataFormat::Parquet)?;
    println!(
        "generated and written to Parquet in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let admin =
        PgConnectOptions::from_str(url).context("--database-url is not a postgres:// URL")?;
    let name = format!("plexus_bench_{}", std::process::id());
    let mut conn = admin.connect().await.context("connect to --database-url")?;
    conn.execute(format!("CREATE DATABASE \"{name}\"").as_str())
        .await?;
    let db_url = admin.clone().database(&name).to_url_lossy().to_string();
    let result = async {
        let t = Instant::now();
        synth::warehouse::load(&db_url, &site.patients, &site.consent, &site.opt_out).await?;
        println!(
            "loaded into PostgreSQL (COPY, indexes, ANALYZE) in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        drop(site);
        let dict = Arc::new(Dictionary::cardiovascular());
        let files = DataSource::open(
            &DataConfig {
                path: paths.data.clone(),
                patient_id: "patient_id".into(),
                columns: node_columns()
                    .into_iter()
                    .map(|(v, c)| (v.to_string(), c.into()))
                    .collect(),
                ..Default::default()
            },
            &ConsentConfig {
                path: paths.consent.clone(),
                opt_out: Some(paths.opt_out.clone()),
            },
            dict.clone(),
        )
        .await?;
        let pg = DataSource::open(
            &synth::warehouse::data_config(&db_url),
            &ConsentConfig::default(),
            dict,
        )
        .await?;
        let purpose = Purpose::from_parts("HMB", "", &[])?;
        let today = chrono::Utc::now().date_naive();
        let mut table = Table::new();
        table.load_preset(UTF8_FULL_CONDENSED);
        table.set_header(vec![
            "query",
            "PostgreSQL median ms",
            "Parquet median ms",
            "ratio",
            "same answer",
        ]);
        for (label, json) in QUERIES {
            let q = Query::from_json(json)?;
            let (a, b) = (
                pg.compute(&q, &purpose, today, LIMITS, None).await?,
                files.compute(&q, &purpose, today, LIMITS, None).await?,
            );
            let (mut w, mut f) = (Vec::new(), Vec::new());
            for _ in 0..repetitions {
                let t = Instant::now();
                pg.compute(&q, &purpose, today, LIMITS, None).await?;
                w.push(t.elapsed());
                let t = Instant::now();
                files.compute(&q, &purpose, today, LIMITS, None).await?;
                f.push(t.elapsed());
            }
            let (w, f) = (median(w), median(f));
            table.add_row(vec![
                label.to_string(),
                ms(w),
                ms(f),
                format!("{:.2}", w.as_secs_f64() / f.as_secs_f64()),
                if a.agrees_with(&b, 1e-12) {
                    "yes"
                } else {
                    "NO"
                }
                .to_string(),
            ]);
        }
        // The GLM: the first fit reads the design (cold), later fits reuse it.
        let q = Query::from_json(GLM)?;
        let (mut w, mut f) = (Vec::new(), Vec::new());
        let mut rounds = 0;
        for _ in 0..repetitions {
            let t = Instant::now();
            rounds = fit(&pg, &q, &purpose, today).await?;
            w.push(t.elapsed());
            let t = Instant::now();
            fit(&files, &q, &purpose, today).await?;
            f.push(t.elapsed());
        }
        let (wc, fc) = (w[0], f[0]);
        let (w, f) = (median(w), median(f));
        table.add_row(vec![
            format!("logistic GLM, 5 covariates, {rounds} rounds: first fit (reads the design)"),
            ms(wc),
            ms(fc),
            format!("{:.2}", wc.as_secs_f64() / fc.as_secs_f64()),
            String::new(),
        ]);
        table.add_row(vec![
            "logistic GLM: median fit (design cached)".to_string(),
            ms(w),
            ms(f),
            format!("{:.2}", w.as_secs_f64() / f.as_secs_f64()),
            String::new(),
        ]);
        // The study's own time logic: PostgreSQL alone, beside the plain
        // count above for scale.
        let mut text = toml::to_string(&plexus_sandbox::demo_study())?;
        text.push_str(TIMELINE);
        let mut study = plexus_core::StudyDefinition::from_toml(&text)?;
        study.variables.extend(study.derived.keys().cloned());
        let scope = StudyScope::of(&study, &Arc::new(Dictionary::cardiovascular()))?;
        for (label, json) in TIMELINE_QUERIES {
            let q = Query::from_json(json)?;
            let mut w = Vec::new();
            for _ in 0..repetitions.max(1) {
                let t = Instant::now();
                pg.compute_in(&scope, &q, &purpose, today, LIMITS, None)
                    .await?;
                w.push(t.elapsed());
            }
            table.add_row(vec![
                label.to_string(),
                ms(median(w)),
                "no event rows".to_string(),
                String::new(),
                String::new(),
            ]);
        }
        println!("{table}");
        anyhow::Ok(())
    }
    .await;
    let _ = conn
        .execute(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str())
        .await;
    result
}
