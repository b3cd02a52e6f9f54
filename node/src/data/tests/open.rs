//! The node refuses to start when the mapping does not fit the data, with
//! errors that name the variable, the column and the file.

use plexus_core::ErrorCode;

use super::{patients, settle, write_consent, Fixture};

fn parquet() -> Fixture {
    Fixture::with_rows(&patients(30), false, &[])
}

async fn open_err(f: &Fixture) -> plexus_core::Error {
    f.open().await.expect_err("open should fail")
}

fn assert_names(e: &plexus_core::Error, parts: &[&str]) {
    for p in parts {
        assert!(e.message.contains(p), "{p:?} missing from: {e}");
    }
}

#[tokio::test]
async fn opens_both_formats_and_lists_variables() {
    for csv in [false, true] {
        let f = Fixture::with_rows(&patients(30), csv, &[]);
        let src = f.open().await.unwrap();
        assert_eq!(
            src.variables(),
            [
                "age",
                "bmi",
                "death",
                "diabetes",
                "inclusion_date",
                "sbp",
                "sex",
                "smoking"
            ]
        );
        assert_eq!(src.snapshot().unwrap(), src.snapshot().unwrap());
    }
}

#[tokio::test]
async fn missing_data_file() {
    let mut f = parquet();
    f.data.path = f.path("nowhere.parquet");
    let e = open_err(&f).await;
    assert_eq!(e.code, ErrorCode::Data);
    assert_names(&e, &["nowhere.parquet"]);
}

#[tokio::test]
async fn unreadable_data_file() {
    let f = parquet();
    std::fs::write(&f.data.path, "this is not parquet").unwrap();
    let e = open_err(&f).await;
    assert_eq!(e.code, ErrorCode::Data);
    assert_names(&e, &["patients.parquet", "parquet"]);
}

#[tokio::test]
async fn mapped_column_missing() {
    let mut f = parquet();
    f.data.columns.insert("sbp".into(), "Systolic".into());
    let e = open_err(&f).await;
    assert_eq!(e.code, ErrorCode::Data);
    assert_names(
        &e,
        &[
            "variable \"sbp\"",
            "column \"Systolic\"",
            "patients.parquet",
            "SBP mmHg",
        ],
    );
}

#[tokio::test]
async fn column_names_are_case_sensitive() {
    let mut f = parquet();
    f.data.columns.insert("age".into(), "age_years".into());
    let e = open_err(&f).await;
    assert_names(&e, &["variable \"age\"", "column \"age_years\""]);
}

#[tokio::test]
async fn wrong_column_type() {
    for (var, col, kind) in [
        ("age", "BMI", "integer"),
        ("bmi", "Sex", "float"),
        ("diabetes", "Age_Years", "boolean"),
        ("sex", "Diabetes", "categorical"),
        ("inclusion_date", "Age_Years", "date"),
    ] {
        let mut f = parquet();
        f.data.columns.insert(var.into(), col.into());
        let e = open_err(&f).await;
        assert_eq!(e.code, ErrorCode::Data);
        assert_names(
            &e,
            &[
                &format!("variable \"{var}\" ({kind})"),
                &format!("\"{col}\""),
                "patients.parquet",
            ],
        );
    }
}

#[tokio::test]
async fn category_not_in_dictionary() {
    let mut rows = patients(30);
    rows[5].smoking = Some("sometimes");
    let f = Fixture::with_rows(&rows, true, &[]);
    let e = open_err(&f).await;
    assert_eq!(e.code, ErrorCode::Data);
    assert_names(
        &e,
        &[
            "variable \"smoking\"",
            "column \"Smoking\"",
            "patients.csv",
            "\"sometimes\"",
            "never",
        ],
    );
}

#[tokio::test]
async fn a_data_file_changed_while_the_node_was_down_is_checked_again() {
    let mut rows = patients(30);
    let f = Fixture::with_rows(&rows, true, &[]);
    settle(&f.data.path);
    let cache = f.path("cache");
    // The first start checks the file and notes that it passed.
    f.open_in(&cache).await.unwrap();
    assert!(std::fs::read_dir(&cache).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("values-checked-")));
    f.open_in(&cache).await.unwrap();
    // A new export with a value outside the dictionary, even with the old
    // file's modification time, is checked again and refused.
    rows[5].smoking = Some("sometimes");
    super::write_csv(&f.data.path, &rows);
    settle(&f.data.path);
    let e = f.open_in(&cache).await.expect_err("a bad value");
    assert_names(&e, &["variable \"smoking\"", "\"sometimes\""]);
}

#[tokio::test]
async fn unknown_dictionary_variable_in_mapping() {
    let mut f = parquet();
    f.data.columns.insert("sbpp".into(), "SBP mmHg".into());
    let e = open_err(&f).await;
    assert_eq!(e.code, ErrorCode::Invalid);
    assert_names(&e, &["\"sbpp\"", "did you mean \"sbp\""]);
}

#[tokio::test]
async fn missing_patient_id_column() {
    let mut f = parquet();
    f.data.patient_id = "patient_id".into();
    let e = open_err(&f).await;
    assert_eq!(e.code, ErrorCode::Data);
    assert_names(&e, &["\"patient_id\"", "patients.parquet", "PatientID"]);
}

/// Rewrites field `col` of data line `row` (0 = first patient) of a CSV.
fn edit_csv(path: &std::path::Path, row: usize, col: usize, value: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut fields: Vec<&str> = lines[row + 1].split(',').collect();
    fields[col] = value;
    lines[row + 1] = fields.join(",");
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

#[tokio::test]
async fn text_dates_must_parse() {
    let f = Fixture::with_rows(&patients(30), true, &[]);
    // a value that is not a date turns the CSV column into text
    edit_csv(&f.data.path, 3, 7, "first of may");
    let e = open_err(&f).await;
    assert_eq!(e.code, ErrorCode::Data);
    assert_names(
        &e,
        &[
            "variable \"inclusion_date\"",
            "column \"InclDate\"",
            "not dates",
            "\"first of may\"",
        ],
    );
}

#[tokio::test]
async fn impossible_csv_date_fails_at_start() {
    let f = Fixture::with_rows(&patients(30), true, &[]);
    // looks like a date, so the column is inferred as dates, but is none
    edit_csv(&f.data.path, 3, 7, "2021-02-30");
    let e = open_err(&f).await;
    assert_eq!(e.code, ErrorCode::Data);
    assert_names(&e, &["patients.csv"]);
}

#[tokio::test]
async fn consent_file_problems() {
    let mut f = parquet();
    f.consent.path = f.path("no_consent.csv");
    let e = open_err(&f).await;
    assert_eq!(e.code, ErrorCode::Data);
    assert_names(&e, &["consent file", "no_consent.csv"]);

    let f = parquet();
    std::fs::write(
        &f.consent.path,
        "patient_id,purpose,valid_from,withdrawn_at\nP0001,GRU,2020-01-01,\n",
    )
    .unwrap();
    let e = open_err(&f).await;
    assert_names(&e, &["consent.csv", "no column \"purposes\""]);

    let mut f = parquet();
    write_consent(&f.consent.path, &[]);
    f.consent.opt_out = Some(f.path("missing_opt_out.csv"));
    let e = open_err(&f).await;
    assert_names(&e, &["opt-out file", "missing_opt_out.csv"]);

    let mut f = parquet();
    f.consent.path = f.path("consent.txt");
    let e = open_err(&f).await;
    assert_eq!(e.code, ErrorCode::Invalid);
    assert_names(&e, &["consent.txt", ".csv or .parquet"]);
}
