//! A node on a PostgreSQL warehouse (OMOP-style tables) against a node on
//! Parquet holding the same patients: identical raw statistics for every
//! analysis, cohort and consent purpose; SQL injection through every string
//! a query or a config carries is inert; and a warehouse that goes away
//! leaves the node connected and degraded until it comes back.
//!
//! Needs PostgreSQL: set PLEXUS_TEST_DATABASE_URL (see plexus_tests::pg).

use std::str::FromStr;
use std::sync::Arc;

use chrono::NaiveDate;
use plexus_core::models::fit::Iteration;
use plexus_core::{Dictionary, ErrorCode, Purpose, Query, RawStats};
use plexus_node::data::{ConsentConfig, DataConfig, DataSource, Limits};
use plexus_sandbox::synth::{self, generate_site, node_columns, Site, SiteSpec};
use plexus_tests::pg::TestDatabase;
use sqlx::{ConnectOptions, Connection, Row};

/// The file node and the warehouse node over one synthetic site.
struct Pair {
    files: DataSource,
    pg: DataSource,
    /// Data in PostgreSQL, consent in the files.
    pg_files: DataSource,
    site: Site,
    db: TestDatabase,
    _dir: tempfile::TempDir,
}

async fn pair(purpose: &str, patients: usize) -> Option<Pair> {
    let db = TestDatabase::create(purpose).await?;
    let site = generate_site(&SiteSpec {
        name: "hospital-a".into(),
        patients,
        seed: 11,
    });
    let dir = tempfile::tempdir().unwrap();
    let paths = synth::write_site(&site, dir.path(), synth::DataFormat::Parquet).unwrap();
    synth::warehouse::load(db.url(), &site.patients, &site.consent, &site.opt_out)
        .await
        .unwrap();
    let dict = Arc::new(Dictionary::cardiovascular());
    let consent_files = ConsentConfig {
        path: paths.consent.clone(),
        opt_out: Some(paths.opt_out.clone()),
    };
    let files = DataSource::open(
        &DataConfig {
            path: paths.data,
            patient_id: "patient_id".into(),
            columns: node_columns()
                .into_iter()
                .map(|(v, c)| (v.to_string(), c.into()))
                .collect(),
            ..Default::default()
        },
        &ConsentConfig {
            path: paths.consent,
            opt_out: Some(paths.opt_out),
        },
        dict.clone(),
    )
    .await
    .unwrap();
    let pg = DataSource::open(
        &synth::warehouse::data_config(db.url()),
        &ConsentConfig::default(),
        dict.clone(),
    )
    .await
    .unwrap();
    let mut cfg = synth::warehouse::data_config(db.url());
    cfg.postgres.as_mut().unwrap().consent = None;
    let pg_files = DataSource::open(&cfg, &consent_files, dict).await.unwrap();
    Some(Pair {
        files,
        pg,
        pg_files,
        site,
        db,
        _dir: dir,
    })
}

/// Floating-point sums that PostgreSQL takes (summaries, correlations)
/// agree with the file node's to this relative tolerance; everything else
/// (counts, fixed-point sums, tables, survival counts, regression rounds)
/// exactly.
const SUM_TOLERANCE: f64 = 1e-12;

/// The file node's answer and the warehouse node's agree (see
/// [`SUM_TOLERANCE`]); errors must be the same error.
fn assert_same(f: &plexus_core::Result<RawStats>, w: &plexus_core::Result<RawStats>, what: &str) {
    match (f, w) {
        (Ok(a), Ok(b)) => assert!(
            a.agrees_with(b, SUM_TOLERANCE),
            "{what}: {a:?} against {b:?}"
        ),
        _ => assert_eq!(f, w, "{what}"),
    }
}

fn day() -> NaiveDate {
    NaiveDate::from_ymd_opt(2025, 6, 1).unwrap()
}

fn limits() -> Limits {
    Limits {
        k: 5,
        max_parameter_share: 0.33,
        private: false,
        holdout_salt: 0,
    }
}

const COHORTS: &[&str] = &[
    "null",
    r#"{"compare": {"variable": "age", "op": ">=", "value": 60}}"#,
    r#"{"and": [{"compare": {"variable": "sex", "op": "=", "value": "F"}},
                {"not": {"compare": {"variable": "diabetes", "op": "=", "value": true}}}]}"#,
    r#"{"or": [{"compare": {"variable": "bmi", "op": ">", "value": 30.5}},
               {"in": {"variable": "smoking", "values": ["former", "current"]}}]}"#,
    r#"{"not": {"or": [{"is_null": {"variable": "bmi"}},
                       {"compare": {"variable": "inclusion_date", "op": "<", "value": "2021-01-01"}}]}}"#,
    r#"{"in": {"variable": "age", "values": [50, 61.0, 70, 80]}}"#,
    r#"{"compare": {"variable": "sbp", "op": "<=", "value": 140}}"#,
    r#"{"and": [{"not_null": {"variable": "sbp"}}, {"compare": {"variable": "death", "op": "!=", "value": false}}]}"#,
];

const ANALYSES: &[&str] = &[
    r#"{"count": {}}"#,
    r#"{"summary": {"variable": "age"}}"#,
    r#"{"summary": {"variable": "bmi"}}"#,
    r#"{"summary": {"variable": "sbp"}}"#,
    r#"{"histogram": {"variable": "age", "edges": [40, 50, 60, 70, 80]}}"#,
    r#"{"histogram": {"variable": "sbp", "edges": [90, 120.5, 140, 179]}}"#,
    r#"{"quantiles": {"variable": "sbp", "edges": [80, 100, 120, 140, 160, 180, 230], "probabilities": [0.25, 0.5, 0.75]}}"#,
    r#"{"table": {"row": "sex", "column": "smoking"}}"#,
    r#"{"table": {"row": "smoking", "column": "diabetes"}}"#,
    r#"{"two_by_two": {"exposure": "diabetes", "outcome": "death"}}"#,
    r#"{"correlation": {"variables": ["age", "bmi", "sbp"], "missing": "pairwise"}}"#,
    r#"{"correlation": {"variables": ["age", "sbp", "cholesterol"], "missing": "complete_cases"}}"#,
    r#"{"kaplan_meier": {"time": "followup_days", "event": "death", "group": "smoking", "grid": {"from": 0, "to": 1826, "step": 30}}}"#,
];

const MODELS: &[&str] = &[
    r#"{"glm": {"family": "gaussian", "outcome": "sbp", "covariates": ["age", "sex", "bmi"]}}"#,
    r#"{"glm": {"family": "binomial", "outcome": "death", "covariates": ["age", "sex", "smoking", "diabetes", "sbp"]}}"#,
    r#"{"glm": {"family": "poisson", "outcome": "age", "covariates": ["sex", "diabetes"]}}"#,
    r#"{"cox": {"time": "followup_days", "event": "death", "covariates": ["age", "diabetes", "sbp"]}}"#,
];

fn query(cohort: &str, analysis: &str) -> Query {
    Query::from_json(&format!(
        r#"{{"cohort": {cohort}, "analysis": {analysis}}}"#
    ))
    .unwrap()
}

async fn both(
    p: &Pair,
    q: &Query,
    purpose: &Purpose,
    it: Option<&Iteration>,
) -> (plexus_core::Result<RawStats>, plexus_core::Result<RawStats>) {
    let f = p.files.compute(q, purpose, day(), limits(), it).await;
    let w = p.pg.compute(q, purpose, day(), limits(), it).await;
    (f, w)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_analysis_on_postgres_equals_the_parquet_node() {
    let Some(p) = pair("wh_equal", 1500).await else {
        return;
    };
    let purposes = [
        Purpose::from_parts("HMB", "", &[]).unwrap(),
        Purpose::from_parts("GRU", "", &[]).unwrap(),
        Purpose::from_parts("DS", "MONDO:0005160", &[]).unwrap(),
        Purpose::from_parts("HMB", "", &["NPU".into()]).unwrap(),
    ];
    let mut compared = 0;
    for purpose in &purposes {
        for cohort in COHORTS {
            for analysis in ANALYSES {
                let q = query(cohort, analysis);
                let (f, w) = both(&p, &q, purpose, None).await;
                assert_same(&f, &w, &format!("{purpose} {cohort} {analysis}"));
                compared += usize::from(f.is_ok());
            }
        }
    }
    // Most of them are answers, not the same refusal twice.
    assert!(
        compared > purposes.len() * COHORTS.len() * ANALYSES.len() / 2,
        "{compared}"
    );
    // Under differential privacy a correlation clamps its values to the
    // public bounds first, and a missing value stays missing.
    let private = Limits {
        private: true,
        holdout_salt: 0,
        ..limits()
    };
    for cohort in ["null", COHORTS[3], COHORTS[4]] {
        for analysis in ANALYSES
            .iter()
            .filter(|a| a.contains("correlation") || a.contains("summary"))
        {
            let q = query(cohort, analysis);
            let f = p
                .files
                .compute(&q, &purposes[0], day(), private, None)
                .await;
            let w = p.pg.compute(&q, &purposes[0], day(), private, None).await;
            assert!(f.is_ok(), "{cohort} {analysis}: {f:?}");
            assert_same(&f, &w, &format!("private: {cohort} {analysis}"));
        }
    }
    // Regression rounds: the first and two more with made-up coefficients.
    let hmb = &purposes[0];
    for cohort in ["null", COHORTS[1]] {
        for model in MODELS {
            let q = query(cohort, model);
            let (f, w) = both(
                &p,
                &q,
                hmb,
                Some(&Iteration {
                    round: 1,
                    // A GLM starts from R's starting values, a Cox model from zeros.
                    coefficients: match model.contains("cox") {
                        true => vec![
                            0.0;
                            q.analysis
                                .terms(&Dictionary::cardiovascular())
                                .unwrap()
                                .len()
                        ],
                        false => vec![],
                    },
                    null_mean: None,
                    gbdt: None,
                    ..Iteration::default()
                }),
            )
            .await;
            assert_eq!(f, w, "{cohort} {model} round 1");
            let n = match f.unwrap() {
                RawStats::Glm(g) => g.xtwz.len(),
                RawStats::Cox(c) => c.gradient.len(),
                other => panic!("{other:?}"),
            };
            for (round, scale) in [(2, 0.01), (3, -0.002)] {
                let it = Iteration {
                    round,
                    coefficients: (0..n).map(|i| scale * (i as f64 + 1.0)).collect(),
                    null_mean: Some(0.2),
                    gbdt: None,
                    ..Iteration::default()
                };
                let (f, w) = both(&p, &q, hmb, Some(&it)).await;
                assert_eq!(f, w, "{cohort} {model} round {round}");
                assert!(f.is_ok());
            }
        }
    }
    // A cohort leaving out fewer than k is refused by both.
    let q = query(
        r#"{"compare": {"variable": "age", "op": "<", "value": 41}}"#,
        r#"{"count": {}}"#,
    );
    let mut few = query(
        r#"{"compare": {"variable": "age", "op": ">", "value": 40}}"#,
        r#"{"count": {}}"#,
    );
    let (f, w) = both(&p, &q, hmb, None).await;
    assert_eq!(f, w);
    let (f, w) = both(&p, &few, hmb, None).await;
    assert_eq!(f, w);
    few.cohort = None;
    let (f, w) = both(&p, &few, hmb, None).await;
    assert_eq!(f, w);
    // "latest" picked the newest reading, not the older one or the heart rate.
    let q = query("null", r#"{"summary": {"variable": "sbp"}}"#);
    let RawStats::Summary(s) = p.pg.compute(&q, hmb, day(), limits(), None).await.unwrap() else {
        panic!()
    };
    assert!(s.moments.n > 0);
    // Consent may also stay in the files next to a warehouse.
    for purpose in &purposes {
        for cohort in [COHORTS[0], COHORTS[2], COHORTS[6]] {
            for analysis in &ANALYSES[..9] {
                let q = query(cohort, analysis);
                let f = p.files.compute(&q, purpose, day(), limits(), None).await;
                let w = p.pg_files.compute(&q, purpose, day(), limits(), None).await;
                assert_same(
                    &f,
                    &w,
                    &format!("consent files: {purpose} {cohort} {analysis}"),
                );
            }
        }
    }
    // And both count exactly the patients the reference consent rules admit.
    for purpose in &purposes {
        let want = plexus_tests::consenting(&p.site, purpose, day()).len() as u64;
        let q = query("null", r#"{"count": {}}"#);
        assert_eq!(
            p.pg.compute(&q, purpose, day(), limits(), None)
                .await
                .unwrap(),
            RawStats::Count(want),
            "{purpose}"
        );
    }
    p.db.drop_now().await;
}

/// Booleans held as codes in the warehouse: `death` as Y/N text in the
/// person table and `hypertension` as the latest 1/0 of an event table
/// (an older, opposite row must not be picked) answer every query exactly
/// as the boolean columns of the same patients; a code in none of the
/// declared lists stops the node at start-up, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boolean_codes_in_postgres_answer_as_booleans() {
    let Some(p) = pair("wh_codes", 600).await else {
        return;
    };
    let mut c = sqlx::PgConnection::connect(p.db.url()).await.unwrap();
    for sql in [
        "ALTER TABLE person ADD COLUMN died_yn text",
        "UPDATE person SET died_yn = CASE WHEN died THEN 'Y' ELSE 'N' END",
        "CREATE TABLE htn_flag (person_id text NOT NULL, noted date NOT NULL, flag integer)",
        "INSERT INTO htn_flag SELECT person_id, inclusion_date, htn::int FROM person",
        "INSERT INTO htn_flag SELECT person_id, inclusion_date - 400, 1 - htn::int FROM person",
    ] {
        sqlx::query(sql).execute(&mut c).await.unwrap();
    }
    let mut cfg = synth::warehouse::data_config(p.db.url());
    let vars = &mut cfg.postgres.as_mut().unwrap().variables;
    let death = vars.get_mut("death").unwrap();
    death.column = Some("died_yn".into());
    death.true_values = vec!["Y".into()];
    death.false_values = vec!["N".into()];
    death.missing_values = vec!["U".into()];
    let htn: plexus_node::data::warehouse::VariableSource = toml::from_str(
        r#"table = "htn_flag"
           value = "flag"
           date_column = "noted"
           true_values = ["1"]
           false_values = ["0"]"#,
    )
    .unwrap();
    vars.insert("hypertension".into(), htn);
    let dict = Arc::new(Dictionary::cardiovascular());
    let coded = DataSource::open(&cfg, &ConsentConfig::default(), dict.clone())
        .await
        .unwrap();

    let hmb = Purpose::from_parts("HMB", "", &[]).unwrap();
    let cohorts = [
        "null",
        r#"{"compare": {"variable": "death", "op": "=", "value": true}}"#,
        r#"{"and": [{"compare": {"variable": "hypertension", "op": "=", "value": true}},
                    {"in": {"variable": "death", "values": [false]}}]}"#,
        r#"{"is_null": {"variable": "death"}}"#,
    ];
    let analyses = [
        r#"{"count": {}}"#,
        r#"{"summary": {"variable": "age"}}"#,
        r#"{"table": {"row": "hypertension", "column": "death"}}"#,
        r#"{"two_by_two": {"exposure": "hypertension", "outcome": "death"}}"#,
        r#"{"kaplan_meier": {"time": "followup_days", "event": "death", "group": "hypertension", "grid": {"from": 0, "to": 1826, "step": 90}}}"#,
    ];
    for cohort in cohorts {
        for analysis in analyses {
            let q = query(cohort, analysis);
            let want = p.pg.compute(&q, &hmb, day(), limits(), None).await;
            let got = coded.compute(&q, &hmb, day(), limits(), None).await;
            assert_same(&got, &want, &format!("{cohort} {analysis}"));
        }
    }
    let deaths = plexus_tests::consenting(&p.site, &hmb, day())
        .iter()
        .filter(|patient| patient.death)
        .count() as u64;
    let q = query(cohorts[1], r#"{"count": {}}"#);
    let got = coded.compute(&q, &hmb, day(), limits(), None).await;
    assert_eq!(got.unwrap(), RawStats::Count(deaths));

    sqlx::query(
        "UPDATE person SET died_yn = 'dead' WHERE person_id = (SELECT min(person_id) FROM person)",
    )
    .execute(&mut c)
    .await
    .unwrap();
    let e = DataSource::open(&cfg, &ConsentConfig::default(), dict)
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Data, "{e}");
    for part in [
        "variable \"death\"",
        "\"dead\"",
        "data.postgres.variables.death declares true_values \"Y\"; false_values \"N\"; missing_values \"U\"",
    ] {
        assert!(e.message.contains(part), "{part}: {e}");
    }
    drop(c);
    p.db.drop_now().await;
}

const PAYLOADS: &[&str] = &[
    "'; DROP TABLE person; --",
    "\" OR 1=1 --",
    "' OR '1'='1",
    "$1",
    "$$; DELETE FROM consent; $$",
    "\\'; TRUNCATE opt_out; --",
    "a\0b",
    "\u{2019}; DROP TABLE measurement; --",
    "\u{201c}person\u{201d}",
    "person\"; DROP TABLE person; --",
    "F') OR ('x'='x",
];

/// Values a warehouse may hold that PostgreSQL's arithmetic refuses where
/// Rust's gives an infinity or zero (a huge or tiny reading, an 'infinity'
/// date): the answer is the file path's kind of answer, never a failed
/// query that would tell the querier such a patient is in the cohort.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_values_in_postgres_never_fail_a_query() {
    let Some(p) = pair("wh_extreme", 300).await else {
        return;
    };
    let mut c = sqlx::PgConnection::connect(p.db.url()).await.unwrap();
    for sql in [
        "UPDATE measurement SET value_as_number = 1e200 WHERE measurement_id = (SELECT max(measurement_id) FROM measurement WHERE measurement_concept_id = 3004249)",
        "UPDATE measurement SET value_as_number = 1e-200 WHERE measurement_id = (SELECT min(measurement_id) FROM measurement WHERE measurement_concept_id = 3004249)",
        "UPDATE measurement SET measurement_date = 'infinity' WHERE measurement_id = (SELECT min(measurement_id) + 3 FROM measurement)",
    ] {
        sqlx::query(sql).execute(&mut c).await.unwrap();
    }
    let hmb = Purpose::from_parts("HMB", "", &[]).unwrap();
    let private = Limits {
        private: true,
        holdout_salt: 0,
        ..limits()
    };
    for analysis in [
        r#"{"summary": {"variable": "sbp"}}"#,
        r#"{"correlation": {"variables": ["age", "sbp"], "missing": "pairwise"}}"#,
        r#"{"histogram": {"variable": "sbp", "edges": [90, 120, 140, 180]}}"#,
    ] {
        for l in [limits(), private] {
            let q = query("null", analysis);
            let got = p.pg.compute(&q, &hmb, day(), l, None).await;
            assert!(got.is_ok(), "{analysis}: {got:?}");
        }
    }
    let q = query("null", r#"{"summary": {"variable": "sbp"}}"#);
    let Ok(RawStats::Summary(s)) = p.pg.compute(&q, &hmb, day(), limits(), None).await else {
        panic!()
    };
    assert_eq!(s.moments.sum_squares, f64::INFINITY);
    assert_eq!(s.largest[0], 1e200);
    p.db.drop_now().await;
}

async fn row_counts(url: &str) -> Vec<i64> {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    let mut out = Vec::new();
    for t in [
        "person",
        "measurement",
        "condition_occurrence",
        "consent",
        "opt_out",
    ] {
        let n: i64 = sqlx::query(&format!("SELECT count(*) FROM {t}"))
            .fetch_one(&mut c)
            .await
            .unwrap()
            .get(0);
        out.push(n);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injection_through_queries_purposes_and_config_is_inert() {
    let Some(p) = pair("wh_inject", 300).await else {
        return;
    };
    let before = row_counts(p.db.url()).await;
    let hmb = Purpose::from_parts("HMB", "", &[]).unwrap();
    let count = query("null", r#"{"count": {}}"#);
    let RawStats::Count(all) =
        p.pg.compute(&count, &hmb, day(), limits(), None)
            .await
            .unwrap()
    else {
        panic!()
    };
    for payload in PAYLOADS {
        let s = serde_json::to_string(payload).unwrap();
        // Category labels, cohort constants, dates and variable names:
        // both nodes give the same answer or the same refusal.
        let cohorts = [
            format!(r#"{{"compare": {{"variable": "sex", "op": "=", "value": {s}}}}}"#),
            format!(r#"{{"in": {{"variable": "smoking", "values": ["never", {s}]}}}}"#),
            format!(r#"{{"compare": {{"variable": "inclusion_date", "op": ">", "value": {s}}}}}"#),
            format!(r#"{{"compare": {{"variable": {s}, "op": "=", "value": 1}}}}"#),
            format!(r#"{{"not": {{"compare": {{"variable": "sex", "op": "!=", "value": {s}}}}}}}"#),
        ];
        for c in &cohorts {
            let Ok(q) = Query::from_json(&format!(
                r#"{{"cohort": {c}, "analysis": {{"count": {{}}}}}}"#
            )) else {
                continue;
            };
            let (f, w) = both(&p, &q, &hmb, None).await;
            assert_eq!(f, w, "{c}");
        }
        for a in [
            format!(r#"{{"table": {{"row": {s}, "column": "sex"}}}}"#),
            format!(r#"{{"summary": {{"variable": {s}}}}}"#),
        ] {
            if let Ok(q) = Query::from_json(&format!(r#"{{"analysis": {a}}}"#)) {
                let (f, w) = both(&p, &q, &hmb, None).await;
                assert_eq!(f, w, "{a}");
                assert!(w.is_err());
            }
        }
        // Purpose strings (a disease, modifiers) are values too.
        if let Ok(ds) = Purpose::from_parts("DS", payload, &[]) {
            let (f, w) = both(&p, &count, &ds, None).await;
            assert_eq!(f, w, "purpose {payload:?}");
        }
        assert!(Purpose::from_parts("HMB", "", &[payload.to_string()]).is_err());
    }

    // Config identifiers: refused at start-up, naming the field.
    let dict = Arc::new(Dictionary::cardiovascular());
    let base = synth::warehouse::data_config(p.db.url());
    type Edit = fn(&mut plexus_node::data::warehouse::WarehouseConfig, &str);
    let edits: [(&str, Edit); 7] = [
        ("person.table", |c, s| c.person.table = s.into()),
        ("person.id", |c, s| c.person.id = s.into()),
        ("schema", |c, s| c.schema = s.into()),
        ("variables.age.column", |c, s| {
            c.variables.get_mut("age").unwrap().column = Some(s.into())
        }),
        ("variables.sbp.value", |c, s| {
            c.variables.get_mut("sbp").unwrap().value = Some(s.into())
        }),
        ("variables.diabetes.table", |c, s| {
            c.variables.get_mut("diabetes").unwrap().table = Some(s.into())
        }),
        ("consent.table", |c, s| {
            c.consent.as_mut().unwrap().table = s.into()
        }),
    ];
    for payload in PAYLOADS {
        for (field, edit) in &edits {
            let mut cfg = base.clone();
            edit(cfg.postgres.as_mut().unwrap(), payload);
            let e = DataSource::open(&cfg, &ConsentConfig::default(), dict.clone())
                .await
                .expect_err("a bad identifier must be refused");
            assert!(
                matches!(e.code, ErrorCode::Invalid | ErrorCode::Data),
                "{field} {payload:?}: {e}"
            );
            assert!(
                e.message.contains(field.split('.').next_back().unwrap()),
                "{field} {payload:?}: {e}"
            );
        }
    }
    // A configured snapshot query cannot write: sessions are read only.
    let mut cfg = base.clone();
    cfg.postgres.as_mut().unwrap().snapshot_query =
        Some("INSERT INTO opt_out VALUES ('x') RETURNING patient_id".into());
    let e = DataSource::open(&cfg, &ConsentConfig::default(), dict.clone())
        .await
        .expect_err("a writing snapshot query fails");
    assert!(e.message.contains("SQLSTATE 25006"), "{e}");

    // Consent purposes in the table are parsed, never pasted: a payload
    // there is a data error, and the rest of the table is untouched.
    let mut c = sqlx::PgConnection::connect(p.db.url()).await.unwrap();
    for payload in PAYLOADS.iter().filter(|s| !s.contains('\0')) {
        sqlx::query("INSERT INTO consent VALUES ('A-000001', $1, '2020-01-01', NULL)")
            .bind(payload)
            .execute(&mut c)
            .await
            .unwrap();
        let e =
            p.pg.compute(&count, &hmb, day(), limits(), None)
                .await
                .unwrap_err();
        assert_eq!(e.code, ErrorCode::Data, "{e}");
        assert!(e.message.contains("purposes"), "{e}");
        sqlx::query("DELETE FROM consent WHERE purposes = $1")
            .bind(payload)
            .execute(&mut c)
            .await
            .unwrap();
    }
    assert_eq!(
        p.pg.compute(&count, &hmb, day(), limits(), None)
            .await
            .unwrap(),
        RawStats::Count(all)
    );
    assert_eq!(row_counts(p.db.url()).await, before);
    p.db.drop_now().await;
}

/// A TCP proxy in front of PostgreSQL that a test can cut (dropping every
/// open connection and refusing new ones) and restore.
struct Proxy {
    port: u16,
    up: Arc<std::sync::atomic::AtomicBool>,
    cut: Arc<std::sync::Mutex<tokio_util::sync::CancellationToken>>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let cut = Arc::new(std::sync::Mutex::new(
            tokio_util::sync::CancellationToken::new(),
        ));
        let (u, c) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !u.load(Ordering::SeqCst) {
                    continue; // dropped: the database is "down"
                }
                let token = c.lock().unwrap().clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut out) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut out) => {}
                        _ = token.cancelled() => {}
                    }
                });
            }
        });
        Proxy { port, up, cut }
    }

    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        let mut t = self.cut.lock().unwrap();
        t.cancel();
        *t = tokio_util::sync::CancellationToken::new();
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn health(sb: &plexus_tests::Sandbox, node: &str) -> (bool, bool, String) {
    let admin = sb.client(plexus_tests::sandbox::ADMIN).await.unwrap();
    let nodes = admin
        .admin()
        .list_nodes(plexus_proto::v1::ListNodesRequest {})
        .await
        .unwrap()
        .into_inner()
        .nodes;
    let n = nodes.into_iter().find(|n| n.node_id == node).unwrap();
    (n.live, n.degraded, n.health_detail)
}

async fn wait_health(sb: &plexus_tests::Sandbox, node: &str, degraded: bool) -> String {
    for _ in 0..300 {
        let (live, d, detail) = health(sb, node).await;
        assert!(live, "the node stays connected to the coordinator");
        if d == degraded {
            return detail;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{node} never became degraded = {degraded}");
}

async fn pooled_count(
    sb: &plexus_tests::Sandbox,
    study: &str,
    cohort: &str,
) -> plexus_core::Result<plexus_core::pool::PooledResult> {
    plexus_tests::ask(
        sb,
        plexus_tests::sandbox::RESEARCHER,
        study,
        &format!(r#"{{"cohort": {cohort}, "analysis": {{"count": {{}}}}, "by_site": true}}"#),
    )
    .await
}

fn count_of(v: &plexus_core::pool::PooledValue) -> u64 {
    match v {
        plexus_core::pool::PooledValue::Count { n } => n.count.expect("count released"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_warehouse_goes_away_stays_connected_degraded_and_recovers() {
    use plexus_tests::{consenting, sandbox, today, Sandbox, SandboxOptions};
    let Some(db) = TestDatabase::create("wh_down").await else {
        return;
    };
    let mut sb = Sandbox::prepare(SandboxOptions::new(400, 3)).await.unwrap();
    let site = sb.sites[0].clone();
    synth::warehouse::load(db.url(), &site.patients, &site.consent, &site.opt_out)
        .await
        .unwrap();
    let real = sqlx::postgres::PgConnectOptions::from_str(db.url()).unwrap();
    let proxy = Proxy::start(format!("{}:{}", real.get_host(), real.get_port())).await;
    let via = real
        .host("127.0.0.1")
        .port(proxy.port)
        .to_url_lossy()
        .to_string();
    // A vocabulary in which the diabetes concept the mapping names is not
    // standard: the node says so at start-up, and `plexus nodes` shows it.
    let mut c = sqlx::PgConnection::connect(db.url()).await.unwrap();
    for sql in [
        "CREATE TABLE concept (concept_id bigint, concept_name text, domain_id text, standard_concept text)".to_string(),
        "CREATE TABLE concept_ancestor (ancestor_concept_id bigint, descendant_concept_id bigint)".to_string(),
        format!(
            "INSERT INTO concept VALUES ({}, 'Systolic blood pressure', 'Measurement', 'S'), ({}, 'Diabetes (local code)', 'Condition', NULL)",
            synth::warehouse::SBP_CONCEPT,
            synth::warehouse::DIABETES_CONCEPT
        ),
    ] {
        sqlx::query(&sql).execute(&mut c).await.unwrap();
    }
    drop(c);
    let node = site.name.clone();
    let cfg = sb.node_configs.get_mut(&node).unwrap();
    cfg.data = synth::warehouse::data_config(&via);
    cfg.consent = ConsentConfig::default();
    sb.start_all().await.unwrap();
    let study = sandbox::exact_study();
    sb.register_study(&study).await.unwrap();
    let purpose = study.purpose().unwrap();

    // End to end: the warehouse node's answers through the coordinator are
    // the consenting patients of its site, as the file nodes' are of theirs.
    let dict = Dictionary::cardiovascular();
    for cohort in ["null", COHORTS[1], COHORTS[2], COHORTS[6]] {
        let got = pooled_count(&sb, &study.id, cohort).await.unwrap();
        let q = query(cohort, r#"{"count": {}}"#);
        let mut total = 0;
        for s in &sb.sites {
            let RawStats::Count(want) =
                plexus_tests::reference(&consenting(s, &purpose, today()), &q, &dict)
            else {
                panic!()
            };
            total += want;
            let by = got.by_site.iter().find(|b| b.node == s.name).unwrap();
            assert_eq!(
                count_of(by.value.as_ref().unwrap()),
                want,
                "{} {cohort}",
                s.name
            );
        }
        assert_eq!(count_of(&got.value), total, "{cohort}");
    }
    assert_eq!(wait_health(&sb, &node, false).await, "");
    let admin = sb.client(sandbox::ADMIN).await.unwrap();
    let listed = admin
        .admin()
        .list_nodes(plexus_proto::v1::ListNodesRequest {})
        .await
        .unwrap()
        .into_inner()
        .nodes;
    for n in &listed {
        match n.node_id == node {
            true => assert!(
                n.mapping_notices.len() == 1
                    && n.mapping_notices[0].contains("variables.diabetes")
                    && n.mapping_notices[0].contains("not a standard concept"),
                "{:?}",
                n.mapping_notices
            ),
            false => assert!(n.mapping_notices.is_empty(), "{n:?}"),
        }
    }

    // The database goes away: the node stays connected and says why.
    proxy.cut();
    let detail = wait_health(&sb, &node, true).await;
    assert!(
        detail.contains(&format!("127.0.0.1:{}", proxy.port)),
        "{detail}"
    );
    assert!(detail.contains("PostgreSQL"), "{detail}");
    match pooled_count(&sb, &study.id, "null").await {
        Err(e) => assert_eq!(e.code, ErrorCode::Unavailable, "{e}"),
        Ok(r) => {
            // Answered without the node: it is reported missing.
            assert!(
                r.by_site
                    .iter()
                    .all(|b| b.node != node || b.value.is_none()),
                "{r:?}"
            );
        }
    }

    // It comes back: healthy again without a restart, and answering.
    proxy.restore();
    wait_health(&sb, &node, false).await;
    let got = pooled_count(&sb, &study.id, "null").await.unwrap();
    let want = consenting(&site, &purpose, today()).len() as u64;
    let by = got.by_site.iter().find(|b| b.node == node).unwrap();
    assert_eq!(count_of(by.value.as_ref().unwrap()), want);
    sb.shutdown().await.unwrap();
    db.drop_now().await;
}

/// A study's own windows and follow-up on the synthetic warehouse, where
/// every diabetes row is dated 100 days before inclusion: windows from a
/// person-table date (inclusion_date) and from an event's first date, and
/// days between them, each read as one join of the event rows to the
/// patients' dates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_study_s_windows_from_a_person_date_or_an_event_date_count_the_rows_in_them() {
    use plexus_node::data::StudyScope;
    let Some(p) = pair("wh_windows", 400).await else {
        return;
    };
    let mut text = toml::to_string(&plexus_sandbox::demo_study()).unwrap();
    text.push_str(
        r#"
        [derived.near]
        type = "boolean"
        window = { event = "diabetes", origin = "inclusion_date", from = -365, to = 365 }
        [derived.far]
        type = "boolean"
        window = { event = "diabetes", origin = "inclusion_date", from = -50, to = 50 }
        [derived.first_diabetes]
        type = "date"
        first_date = { event = "diabetes" }
        [derived.same_day]
        type = "boolean"
        window = { event = "diabetes", origin = "first_diabetes", from = 0, to = 0 }
        [derived.lag]
        type = "integer"
        days_between = { from = "first_diabetes", to = "inclusion_date" }
        "#,
    );
    let mut study = plexus_core::StudyDefinition::from_toml(&text).unwrap();
    study.variables.extend(study.derived.keys().cloned());
    let dict = Arc::new(Dictionary::cardiovascular());
    let scope = StudyScope::of(&study, &dict).unwrap();
    let hmb = Purpose::from_parts("HMB", "", &[]).unwrap();
    let count = |var: &str| {
        let q = query(
            &format!(r#"{{"compare": {{"variable": "{var}", "op": "=", "value": true}}}}"#),
            r#"{"count": {}}"#,
        );
        let (pg, scope, hmb) = (&p.pg, &scope, &hmb);
        async move {
            match pg.compute_in(scope, &q, hmb, day(), limits(), None).await {
                Ok(RawStats::Count(n)) => n,
                other => panic!("{other:?}"),
            }
        }
    };
    let diabetic = count("diabetes").await;
    assert!(diabetic > 20, "{diabetic}");
    assert_eq!(count("near").await, diabetic);
    assert_eq!(count("same_day").await, diabetic);
    assert_eq!(count("far").await, 0);
    let q = query("null", r#"{"summary": {"variable": "lag"}}"#);
    let Ok(RawStats::Summary(s)) =
        p.pg.compute_in(&scope, &q, &hmb, day(), limits(), None)
            .await
    else {
        panic!("lag")
    };
    assert_eq!(
        (s.moments.n, s.moments.sum),
        (diabetic, 100.0 * diabetic as f64)
    );
    p.db.drop_now().await;
}
