//! Booleans held as codes: `death` as Y/N text and `diabetes` as 0/1
//! integers answer every query exactly as the same patients with boolean
//! columns; a code in none of the declared lists stops the node at start-up.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use plexus_core::{ErrorCode, Query};

use super::super::config::{BooleanValues, ColumnMapping};
use super::compute::{ANALYSES, COHORTS};
use super::{batch, date, patients, purpose, write_parquet, Fixture, Patient};

fn codes(column: &str, t: &[&str], f: &[&str], m: &[&str]) -> ColumnMapping {
    let own = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
    ColumnMapping {
        column: column.into(),
        booleans: Some(BooleanValues {
            true_values: own(t),
            false_values: own(f),
            missing_values: own(m),
        }),
    }
}

/// `death` as "Y"/"N" (missing as "U" or an empty cell, alternately) and
/// `diabetes` as 1/0, beside the boolean columns.
fn coded(rows: &[Patient]) -> (Vec<Option<String>>, Vec<Option<i64>>) {
    let died = rows
        .iter()
        .enumerate()
        .map(|(i, p)| match p.death {
            Some(true) => Some("Y".to_string()),
            Some(false) => Some("N".to_string()),
            None if i % 2 == 0 => Some("U".to_string()),
            None => None,
        })
        .collect();
    let dm = rows.iter().map(|p| p.diabetes.map(i64::from)).collect();
    (died, dm)
}

/// The fixture with the coded columns added to its file, and the mapping
/// reading `death` and `diabetes` from them.
fn with_codes(rows: &[Patient], csv: bool) -> Fixture {
    let mut f = Fixture::with_rows(rows, csv, &[]);
    let (died, dm) = coded(rows);
    if csv {
        let text = std::fs::read_to_string(&f.data.path).unwrap();
        let mut out = String::new();
        for (i, line) in text.lines().enumerate() {
            let extra = match i {
                0 => "Died_YN,DM01".to_string(),
                i => format!(
                    "{},{}",
                    died[i - 1].clone().unwrap_or_default(),
                    dm[i - 1].map(|v| v.to_string()).unwrap_or_default()
                ),
            };
            out.push_str(&format!("{line},{extra}\n"));
        }
        std::fs::write(&f.data.path, out).unwrap();
    } else {
        let plain = batch(rows);
        let mut fields: Vec<Field> = plain
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new("Died_YN", DataType::Utf8, true));
        fields.push(Field::new("DM01", DataType::Int64, true));
        let mut columns: Vec<ArrayRef> = plain.columns().to_vec();
        columns.push(Arc::new(StringArray::from(died)));
        columns.push(Arc::new(Int64Array::from(dm)));
        let b = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
        write_parquet(&f.data.path, &b);
    }
    f.data
        .columns
        .insert("death".into(), codes("Died_YN", &["Y"], &["N"], &["U"]));
    f.data
        .columns
        .insert("diabetes".into(), codes("DM01", &["1"], &["0"], &[]));
    f
}

async fn codes_answer_as_booleans(csv: bool) {
    let rows = patients(200);
    let booleans = Fixture::with_rows(&rows, csv, &[]);
    let plain = booleans.open().await.unwrap();
    let f = with_codes(&rows, csv);
    f.data.validate().unwrap();
    let coded = f.open().await.unwrap();
    let gru = purpose("GRU", "", &[]);
    let day = date("2024-06-01");
    let mut analyses: Vec<&str> = ANALYSES.to_vec();
    analyses.push(r#"{"two_by_two": {"exposure": "diabetes", "outcome": "death"}}"#);
    let mut with_booleans = 0;
    for cohort in COHORTS
        .iter()
        .chain([&r#"{"compare": {"variable": "death", "op": "=", "value": true}}"#])
        .chain([&r#"{"is_null": {"variable": "death"}}"#])
    {
        for analysis in &analyses {
            let json = format!(r#"{{"cohort": {cohort}, "analysis": {analysis}}}"#);
            let q = Query::from_json(&json).unwrap();
            let want = plain.compute(&q, &gru, day, super::TEST_LIMITS, None).await;
            let got = coded.compute(&q, &gru, day, super::TEST_LIMITS, None).await;
            assert_eq!(got, want, "csv={csv} {json}");
            with_booleans += usize::from(json.contains("death") || json.contains("diabetes"));
        }
    }
    assert!(with_booleans > 20, "{with_booleans}");

    // The count of a boolean cohort is the count of true codes.
    let deaths = rows.iter().filter(|p| p.death == Some(true)).count() as u64;
    let q = Query::from_json(
        r#"{"cohort": {"compare": {"variable": "death", "op": "=", "value": true}},
            "analysis": {"count": {}}}"#,
    )
    .unwrap();
    let got = coded.compute(&q, &gru, day, super::TEST_LIMITS, None).await;
    assert_eq!(got.unwrap(), plexus_core::RawStats::Count(deaths));
}

#[tokio::test]
async fn parquet_codes_answer_as_booleans() {
    codes_answer_as_booleans(false).await;
}

#[tokio::test]
async fn csv_codes_answer_as_booleans() {
    codes_answer_as_booleans(true).await;
}

#[tokio::test]
async fn a_code_in_no_list_stops_the_node_naming_it() {
    for csv in [false, true] {
        let rows = patients(40);
        let mut f = with_codes(&rows, csv);
        // Without missing_values, the "U" of an unknown death is in no list.
        f.data
            .columns
            .insert("death".into(), codes("Died_YN", &["Y"], &["N"], &[]));
        let e = f.open().await.expect_err("U is in no list");
        assert_eq!(e.code, ErrorCode::Data, "{e}");
        for part in [
            "variable \"death\"",
            "column \"Died_YN\"",
            "\"U\"",
            "true_values \"Y\"; false_values \"N\"",
            "missing_values for unknowns",
        ] {
            assert!(e.message.contains(part), "csv={csv} {part}: {e}");
        }
    }
}

#[tokio::test]
async fn codes_need_a_text_or_integer_column_of_a_boolean_variable() {
    let rows = patients(30);
    let mut f = with_codes(&rows, false);
    f.data
        .columns
        .insert("death".into(), codes("BMI", &["1"], &["0"], &[]));
    let e = f.open().await.expect_err("a float column");
    assert!(e.message.contains("text or integer column"), "{e}");

    let mut f = with_codes(&rows, false);
    f.data
        .columns
        .insert("age".into(), codes("Age_Years", &["1"], &["0"], &[]));
    let e = f.open().await.expect_err("age is no boolean");
    assert_eq!(e.code, ErrorCode::Invalid);
    assert!(
        e.message.contains("only a boolean variable takes them"),
        "{e}"
    );

    // Without codes, a boolean variable on a text column says how to declare them.
    let mut f = with_codes(&rows, false);
    f.data.columns.insert("death".into(), "Died_YN".into());
    let e = f.open().await.expect_err("a text column");
    assert!(e.message.contains("true_values = [\"1\"]"), "{e}");
}
