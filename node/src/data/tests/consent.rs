//! Consent decides who is counted: validity period, withdrawal, DUO
//! purposes and modifiers, opt-out; changes are seen on the next query.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use datafusion::arrow::array::{ArrayRef, Int32Array, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use plexus_core::{ErrorCode, Moments, Purpose, Query, RawStats};

use super::{
    date, patients, purpose, write_consent, write_opt_out, write_parquet, Fixture, Patient,
};

/// Twelve patients whose ages are distinct powers of two, so the sum of
/// ages says exactly who was counted.
fn twelve() -> Vec<Patient> {
    let mut rows = patients(12);
    for (i, p) in rows.iter_mut().enumerate() {
        p.age = Some(1 << i);
    }
    rows
}

const TODAY: &str = "2024-06-01";

fn cases() -> Vec<(&'static str, &'static str, &'static str, &'static str)> {
    vec![
        ("P0000", "GRU", "2020-01-01", ""),           // in
        ("P0001", "HMB", "2024-06-01", ""),           // in: valid from today
        ("P0002", "HMB", "2020-01-01", "2024-06-01"), // out: withdrawn today
        ("P0003", "HMB", "2020-01-01", "2024-06-02"), // in: withdrawn after today
        ("P0004", "HMB", "2024-06-02", ""),           // out: not yet valid
        // P0005 has no record: out
        ("P0006", "GRU", "2020-01-01", ""), // out: opted out
        ("P0007", "DS:MONDO:0005311", "2020-01-01", ""), // only for that disease
        ("P0008", "HMB;NPU", "2020-01-01", ""), // only for not-for-profit studies
        ("P0009", "HMB", "2019-01-01", "2023-01-01"), // withdrawn, then consented again
        ("P0009", "HMB", "2023-06-01", ""),
        ("P0010", "HMB", "2020-01-01", "2022-01-01"), // out: withdrawn before today
        ("P0011", "", "2020-01-01", ""),              // out: no purpose
    ]
}

fn ages(ids: &[usize]) -> f64 {
    ids.iter().map(|i| (1u64 << i) as f64).sum()
}

async fn counted(src: &super::DataSource, p: &Purpose, today: &str) -> Moments {
    let q = Query::from_json(r#"{"analysis": {"summary": {"variable": "age"}}}"#).unwrap();
    match src
        .compute(&q, p, date(today), super::TEST_LIMITS, None)
        .await
        .unwrap()
    {
        RawStats::Summary(m) => m.moments,
        other => panic!("{other:?}"),
    }
}

fn consent_fixture() -> Fixture {
    let f = Fixture::with_rows(&twelve(), false, &[]);
    write_consent(&f.consent.path, &cases());
    write_opt_out(&f.path("opt_out.csv"), &["P0006", "P9999"]);
    f
}

#[tokio::test]
async fn consent_decides_who_is_counted() {
    let f = consent_fixture();
    let src = f.open().await.unwrap();
    let m = counted(&src, &purpose("HMB", "", &[]), TODAY).await;
    assert_eq!((m.n, m.sum), (4, ages(&[0, 1, 3, 9])));
    let m = counted(&src, &purpose("HMB", "", &["NPU"]), TODAY).await;
    assert_eq!(m.sum, ages(&[0, 1, 3, 8, 9]));
    let m = counted(&src, &purpose("DS", "mondo:0005311", &[]), TODAY).await;
    assert_eq!(m.sum, ages(&[0, 1, 3, 7, 9]));
    let m = counted(&src, &purpose("DS", "MONDO:0004975", &[]), TODAY).await;
    assert_eq!(m.sum, ages(&[0, 1, 3, 9]));
    let m = counted(&src, &purpose("GRU", "", &[]), TODAY).await;
    assert_eq!(m.sum, ages(&[0]));
    // the day after, P0001 stays in, P0003 has withdrawn, P0004 is valid
    let m = counted(&src, &purpose("HMB", "", &[]), "2024-06-02").await;
    assert_eq!(m.sum, ages(&[0, 1, 4, 9]));
}

#[tokio::test]
async fn everyone_excluded_gives_empty_answers() {
    let f = consent_fixture();
    write_consent(
        &f.consent.path,
        &[("P0000", "HMB", "2020-01-01", "2021-01-01")],
    );
    let src = f.open().await.unwrap();
    let m = counted(&src, &purpose("HMB", "", &[]), TODAY).await;
    assert_eq!(m, Moments::default());
    let q =
        Query::from_json(r#"{"analysis": {"table": {"row": "sex", "column": "death"}}}"#).unwrap();
    let t = src
        .compute(
            &q,
            &purpose("HMB", "", &[]),
            date(TODAY),
            super::TEST_LIMITS,
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        t,
        RawStats::Table {
            rows: 2,
            columns: 2,
            cells: vec![0; 4]
        }
    );
}

fn set_old_mtime(path: &std::path::Path, age_s: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(age_s))
        .unwrap();
}

#[tokio::test]
async fn changes_are_seen_on_the_next_query() {
    let f = consent_fixture();
    let src = f.open().await.unwrap();
    let hmb = purpose("HMB", "", &[]);
    let before = src.snapshot().unwrap();
    assert_eq!(counted(&src, &hmb, TODAY).await.sum, ages(&[0, 1, 3, 9]));

    // fresh file, written right after the previous one
    let mut rows = cases();
    rows[0].3 = "2024-05-31";
    write_consent(&f.consent.path, &rows);
    assert_eq!(counted(&src, &hmb, TODAY).await.sum, ages(&[1, 3, 9]));
    assert_ne!(src.snapshot().unwrap(), before);

    // settled files are cached, and a later change still shows
    set_old_mtime(&f.consent.path, 3600);
    set_old_mtime(&f.path("opt_out.csv"), 3600);
    assert_eq!(counted(&src, &hmb, TODAY).await.sum, ages(&[1, 3, 9]));
    assert_eq!(counted(&src, &hmb, TODAY).await.sum, ages(&[1, 3, 9]));
    write_opt_out(&f.path("opt_out.csv"), &["P0006", "P0003"]);
    set_old_mtime(&f.path("opt_out.csv"), 60);
    assert_eq!(counted(&src, &hmb, TODAY).await.sum, ages(&[1, 9]));
}

#[tokio::test]
async fn bad_row_names_file_and_line_not_the_patient() {
    let f = consent_fixture();
    let src = f.open().await.unwrap();
    let hmb = purpose("HMB", "", &[]);
    let q = Query::from_json(r#"{"analysis": {"count": {}}}"#).unwrap();
    for (bad, problem) in [
        (("P0004", "HMB", "2020-13-01", ""), "valid_from"),
        (("P0004", "HMB;XYZ", "2020-01-01", ""), "XYZ"),
        (("P0004", "HMB", "2020-01-01", "someday"), "withdrawn_at"),
        (("P0004", "HMB", "", ""), "valid_from"),
    ] {
        let mut rows = cases();
        rows[4] = bad;
        write_consent(&f.consent.path, &rows);
        let e = src
            .compute(&q, &hmb, date(TODAY), super::TEST_LIMITS, None)
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Data);
        assert!(e.message.contains("consent.csv line 6"), "{e}");
        assert!(e.message.contains(problem), "{e}");
        assert!(!e.message.contains("P0004"), "{e}");
    }
}

#[tokio::test]
async fn integer_ids_match_text_ids_in_consent() {
    let f = Fixture::new("patients.parquet");
    let schema = Schema::new(vec![
        Field::new("PatientID", DataType::Int64, false),
        Field::new("Age_Years", DataType::Int32, true),
    ]);
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![7, 8, 9, 10])),
        Arc::new(Int32Array::from(vec![1, 2, 4, 8])),
    ];
    write_parquet(
        &f.data.path,
        &RecordBatch::try_new(Arc::new(schema), cols).unwrap(),
    );
    let mut f = f;
    f.data.columns.retain(|v, _| v == "age");
    write_consent(
        &f.consent.path,
        &[
            ("007", "GRU", "2020-01-01", ""),
            ("8", "GRU", "2020-01-01", ""),
            ("x9", "GRU", "2020-01-01", ""),
            ("10", "GRU", "2020-01-01", ""),
        ],
    );
    write_opt_out(&f.path("opt_out.csv"), &["0010"]);
    let src = f.open().await.unwrap();
    let m = counted(&src, &purpose("HMB", "", &[]), TODAY).await;
    assert_eq!((m.n, m.sum), (2, 3.0));
}

fn write_consent_parquet(path: &std::path::Path, rows: &[(&str, &str, &str, &str)]) {
    use datafusion::arrow::array::{Date32Array, StringArray};
    let day = |s: &str| (!s.is_empty()).then(|| super::days(date(s)));
    let schema = Schema::new(vec![
        Field::new("patient_id", DataType::Utf8, false),
        Field::new("purposes", DataType::Utf8, true),
        Field::new("valid_from", DataType::Date32, true),
        Field::new("withdrawn_at", DataType::Date32, true),
        Field::new("note", DataType::Utf8, true),
    ]);
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| Some(r.1)))),
        Arc::new(Date32Array::from_iter(rows.iter().map(|r| day(r.2)))),
        Arc::new(Date32Array::from_iter(rows.iter().map(|r| day(r.3)))),
        Arc::new(StringArray::from_iter(rows.iter().map(|_| None::<&str>))),
    ];
    write_parquet(path, &RecordBatch::try_new(Arc::new(schema), cols).unwrap());
}

#[tokio::test]
async fn consent_in_parquet() {
    let mut f = consent_fixture();
    f.consent.path = f.path("consent.parquet");
    write_consent_parquet(&f.consent.path, &cases());
    let src = f.open().await.unwrap();
    let hmb = purpose("HMB", "", &[]);
    assert_eq!(counted(&src, &hmb, TODAY).await.sum, ages(&[0, 1, 3, 9]));
    let mut rows = cases();
    rows[4].2 = "";
    write_consent_parquet(&f.consent.path, &rows);
    let q = Query::from_json(r#"{"analysis": {"count": {}}}"#).unwrap();
    let e = src
        .compute(&q, &hmb, date(TODAY), super::TEST_LIMITS, None)
        .await
        .unwrap_err();
    assert!(
        e.message
            .contains("consent.parquet row 5: valid_from is empty"),
        "{e}"
    );
}
