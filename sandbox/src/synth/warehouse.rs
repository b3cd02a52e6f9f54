//! A synthetic site as an OMOP-style PostgreSQL warehouse, for the
//! warehouse tests and `plexus-bench warehouse`: a `person` table with
//! most variables as columns, systolic blood pressure as `measurement` rows
//! (an older reading, the latest one, and a heart rate of another concept
//! that must not be picked), diabetes as `condition_occurrence` rows (plus
//! rows of another concept), and `consent` and `opt_out` tables holding the
//! consent files' records. Rows go in with COPY.

use anyhow::{Context, Result};
use chrono::Duration;
use plexus_node::data::DataConfig;
use sqlx::postgres::PgConnection;
use sqlx::{Connection, Executor};

use super::{ConsentRecord, Patient};

/// OMOP concept of systolic blood pressure.
pub const SBP_CONCEPT: i64 = 3004249;
/// OMOP concept of heart rate (a decoy measurement).
pub const HEART_RATE_CONCEPT: i64 = 3027018;
/// OMOP concept of type 2 diabetes mellitus.
pub const DIABETES_CONCEPT: i64 = 201826;
/// OMOP concept of essential hypertension (a decoy condition).
pub const HYPERTENSION_CONCEPT: i64 = 320128;

const SCHEMA: &str = "
CREATE TABLE person (
    person_id text PRIMARY KEY, age_years bigint NOT NULL, sex text, bmi double precision,
    smoking_status text, aaa_max_diameter_mm double precision, htn boolean,
    chol_total_mmol double precision, inclusion_date date, followup_days bigint, died boolean);
CREATE TABLE measurement (
    measurement_id bigserial PRIMARY KEY, person_id text NOT NULL,
    measurement_concept_id bigint NOT NULL, measurement_date date NOT NULL,
    value_as_number double precision);
CREATE TABLE condition_occurrence (
    condition_occurrence_id bigserial PRIMARY KEY, person_id text NOT NULL,
    condition_concept_id bigint NOT NULL, condition_start_date date NOT NULL);
CREATE TABLE consent (
    patient_id text NOT NULL, purposes text, valid_from date NOT NULL, withdrawn_at date);
CREATE TABLE opt_out (patient_id text PRIMARY KEY);
";

const INDEXES: &str = "
CREATE INDEX ON measurement (person_id, measurement_concept_id, measurement_date);
CREATE INDEX ON condition_occurrence (person_id, condition_concept_id);
CREATE INDEX ON consent (patient_id);
ANALYZE;
";

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

fn float(v: Option<f64>) -> String {
    // `{:?}` is the shortest text that reads back as the same f64.
    v.map(|x| format!("{x:?}")).unwrap_or_default()
}

async fn copy(conn: &mut PgConnection, table: &str, columns: &str, rows: &str) -> Result<()> {
    let mut copy = conn
        .copy_in_raw(&format!("COPY {table} ({columns}) FROM STDIN (FORMAT csv)"))
        .await
        .with_context(|| format!("start COPY into {table}"))?;
    for chunk in rows.as_bytes().chunks(1 << 20) {
        copy.send(chunk).await?;
    }
    copy.finish()
        .await
        .with_context(|| format!("COPY into {table}"))?;
    Ok(())
}

/// Creates the tables in the database at `url` (which must not have them)
/// and loads `patients`, `consent` and `opt_out` into them.
pub async fn load(
    url: &str,
    patients: &[Patient],
    consent: &[ConsentRecord],
    opt_out: &[String],
) -> Result<()> {
    let mut conn = PgConnection::connect(url)
        .await
        .context("connect to the warehouse")?;
    conn.execute(SCHEMA)
        .await
        .context("create the warehouse tables")?;
    for chunk in patients.chunks(100_000) {
        let (mut person, mut meas, mut cond) = (String::new(), String::new(), String::new());
        for p in chunk {
            person.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{},{}\n",
                p.patient_id,
                p.age,
                p.sex,
                float(p.bmi),
                p.smoking,
                float(p.aaa_diameter),
                p.hypertension,
                float(p.cholesterol),
                p.inclusion_date,
                p.followup_days,
                p.death
            ));
            if let Some(sbp) = p.sbp {
                let d = p.inclusion_date;
                meas.push_str(&format!(
                    "{id},{SBP_CONCEPT},{},{:?}\n{id},{SBP_CONCEPT},{d},{sbp:?}\n{id},{HEART_RATE_CONCEPT},{},72.0\n",
                    d - Duration::days(30),
                    sbp + 17.0,
                    d + Duration::days(1),
                    id = p.patient_id,
                ));
            }
            let d = p.inclusion_date - Duration::days(100);
            if p.diabetes {
                cond.push_str(&format!("{},{DIABETES_CONCEPT},{d}\n", p.patient_id));
            }
            if p.hypertension {
                cond.push_str(&format!("{},{HYPERTENSION_CONCEPT},{d}\n", p.patient_id));
            }
        }
        copy(
            &mut conn,
            "person",
            "person_id, age_years, sex, bmi, smoking_status, aaa_max_diameter_mm, htn, chol_total_mmol, inclusion_date, followup_days, died",
            &person,
        )
        .await?;
        copy(
            &mut conn,
            "measurement",
            "person_id, measurement_concept_id, measurement_date, value_as_number",
            &meas,
        )
        .await?;
        copy(
            &mut conn,
            "condition_occurrence",
            "person_id, condition_concept_id, condition_start_date",
            &cond,
        )
        .await?;
    }
    let mut rows = String::new();
    for c in consent {
        // Quoted: purposes hold ';' and a test may hold anything.
        rows.push_str(&format!(
            "{},\"{}\",{},{}\n",
            c.patient_id,
            c.purposes.replace('"', "\"\""),
            c.valid_from,
            opt(c.withdrawn_at)
        ));
    }
    copy(
        &mut conn,
        "consent",
        "patient_id, purposes, valid_from, withdrawn_at",
        &rows,
    )
    .await?;
    let rows: String = opt_out.iter().map(|id| format!("{id}\n")).collect();
    copy(&mut conn, "opt_out", "patient_id", &rows).await?;
    conn.execute(INDEXES)
        .await
        .context("index the warehouse tables")?;
    conn.close().await?;
    Ok(())
}

/// The `[data]` section of a node on the warehouse [`load`] wrote.
pub fn data_config(url: &str) -> DataConfig {
    let text = format!(
        r#"
source = "postgres"
[postgres]
url = {url:?}
statement_timeout_ms = 600000
connect_timeout_ms = 2000
[postgres.person]
table = "person"
[postgres.consent]
table = "consent"
opt_out_table = "opt_out"
[postgres.variables]
age = {{ column = "age_years" }}
sex = {{ column = "sex" }}
bmi = {{ column = "bmi" }}
smoking = {{ column = "smoking_status" }}
aaa_diameter = {{ column = "aaa_max_diameter_mm" }}
hypertension = {{ column = "htn" }}
cholesterol = {{ column = "chol_total_mmol" }}
inclusion_date = {{ column = "inclusion_date" }}
followup_days = {{ column = "followup_days" }}
death = {{ column = "died" }}
sbp = {{ table = "measurement", concept_column = "measurement_concept_id", concept_id = {SBP_CONCEPT}, value = "value_as_number", date_column = "measurement_date", pick = "latest" }}
diabetes = {{ table = "condition_occurrence", concept_column = "condition_concept_id", concept_id = {DIABETES_CONCEPT}, date_column = "condition_start_date" }}
"#
    );
    toml::from_str(&text).expect("the synthetic warehouse mapping parses")
}
