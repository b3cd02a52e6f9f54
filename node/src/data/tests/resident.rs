//! The columns kept in memory give the answers the scanning path gives,
//! and follow the data and consent files: a changed data file is read
//! again at the next job, a withdrawal counts at the next job.

use std::path::Path;
use std::time::Duration;

use plexus_core::models::fit::Iteration;
use plexus_core::{Query, RawStats};

use super::compute::{ANALYSES, COHORTS};
use super::{date, patients, purpose, settle, write_consent, Fixture, TEST_LIMITS};

/// [`Fixture::with_rows`] with its data and consent files settled.
fn settled(rows: &[super::Patient], csv: bool, without: &[&str]) -> Fixture {
    let f = Fixture::with_rows(rows, csv, without);
    settle(&f.data.path);
    settle(&f.consent.path);
    settle(f.consent.opt_out.as_ref().unwrap());
    f
}

const MORE: &[&str] = &[
    r#"{"correlation": {"variables": ["age", "bmi", "sbp"]}}"#,
    r#"{"correlation": {"variables": ["age", "sbp"], "missing": "pairwise"}}"#,
];

const MODELS: &[&str] = &[
    r#"{"glm": {"family": "binomial", "outcome": "death", "covariates": ["age", "sex", "smoking"]}}"#,
    r#"{"glm": {"family": "gaussian", "outcome": "sbp", "covariates": ["age", "bmi", "diabetes"]}}"#,
];

async fn answers(f: &Fixture, csv: bool) -> Vec<(String, Result<RawStats, String>)> {
    let src = f.open().await.unwrap();
    let gru = purpose("GRU", "", &[]);
    let today = date("2024-06-01");
    let mut out = Vec::new();
    for cohort in COHORTS {
        for analysis in ANALYSES.iter().chain(MORE).chain(MODELS) {
            let json = format!(r#"{{"cohort": {cohort}, "analysis": {analysis}}}"#);
            let query = Query::from_json(&json).unwrap();
            let round = Iteration {
                round: 1,
                coefficients: vec![],
                null_mean: None,
                gbdt: None,
                ..Iteration::default()
            };
            let iteration = query.analysis.kind().is_iterative().then_some(&round);
            let got = src
                .compute(&query, &gru, today, TEST_LIMITS, iteration)
                .await
                .map_err(|e| e.message);
            out.push((format!("csv={csv} {json}"), got));
        }
    }
    out
}

async fn in_memory_equals_scanning(csv: bool) {
    let rows = patients(240);
    let mut f = settled(&rows, csv, &["P0003", "P0010", "P0100"]);
    let in_memory = answers(&f, csv).await;
    f.data.memory_mib = Some(0);
    let scanning = answers(&f, csv).await;
    let mut answered = 0;
    for ((what, a), (_, b)) in in_memory.iter().zip(&scanning) {
        // Same rows in the same order: the same sums, bit for bit.
        assert_eq!(a, b, "{what}");
        answered += usize::from(a.is_ok());
    }
    assert!(answered > in_memory.len() * 3 / 4, "{answered}");
}

#[tokio::test]
async fn parquet_in_memory_equals_scanning() {
    in_memory_equals_scanning(false).await;
}

#[tokio::test]
async fn csv_in_memory_equals_scanning() {
    in_memory_equals_scanning(true).await;
}

async fn count(src: &crate::data::DataSource, cohort: &str) -> u64 {
    count_on(src, cohort, "2024-06-01").await
}

async fn count_on(src: &crate::data::DataSource, cohort: &str, day: &str) -> u64 {
    let q = Query::from_json(&format!(
        r#"{{"cohort": {cohort}, "analysis": {{"count": {{}}}}}}"#
    ))
    .unwrap();
    match src
        .compute(&q, &purpose("GRU", "", &[]), date(day), TEST_LIMITS, None)
        .await
        .unwrap()
    {
        RawStats::Count(n) => n,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_changed_data_file_is_read_again_at_the_next_job() {
    let rows = patients(120);
    let f = settled(&rows, false, &[]);
    let src = f.open().await.unwrap();
    let older = r#"{"compare": {"variable": "age", "op": ">=", "value": 50}}"#;
    let expected = |rows: &[super::Patient]| {
        rows.iter()
            .filter(|p| p.age.is_some_and(|a| a >= 50))
            .count() as u64
    };
    assert_eq!(count(&src, "null").await, 120);
    // Twice: the second time from the cohort's rows kept in memory.
    assert_eq!(count(&src, older).await, expected(&rows));
    assert_eq!(count(&src, older).await, expected(&rows));
    // The hospital's nightly export replaces the file with fewer rows.
    super::write_parquet(&f.data.path, &super::batch(&rows[..100]));
    settle(&f.data.path);
    assert_eq!(count(&src, "null").await, 100);
    assert_eq!(count(&src, older).await, expected(&rows[..100]));
}

#[tokio::test]
async fn a_withdrawal_counts_at_the_next_job_with_the_columns_in_memory() {
    let rows = patients(60);
    let f = settled(&rows, false, &[]);
    let src = f.open().await.unwrap();
    let women = r#"{"compare": {"variable": "sex", "op": "=", "value": "F"}}"#;
    let before = count(&src, women).await;
    let first_woman = rows.iter().find(|p| p.sex == Some("F")).unwrap();
    let consent: Vec<_> = rows
        .iter()
        .map(|p| {
            let withdrawn = if p.id == first_woman.id {
                "2024-01-01"
            } else {
                ""
            };
            (p.id.as_str(), "GRU", "2019-01-01", withdrawn)
        })
        .collect();
    write_consent(&f.consent.path, &consent);
    settle(&f.consent.path);
    assert_eq!(count(&src, women).await, before - 1);
    assert_eq!(count(&src, "null").await, 59);
}

#[tokio::test]
async fn a_new_day_counts_the_consent_that_starts_or_ends_on_it() {
    let rows = patients(60);
    let consent: Vec<_> = rows
        .iter()
        .enumerate()
        .map(|(i, p)| match i {
            // Consent given as of June 2nd, and consent withdrawn as of June 3rd.
            0 => (p.id.as_str(), "GRU", "2024-06-02", ""),
            1 => (p.id.as_str(), "GRU", "2019-01-01", "2024-06-03"),
            _ => (p.id.as_str(), "GRU", "2019-01-01", ""),
        })
        .collect();
    let f = settled(&rows, false, &[]);
    write_consent(&f.consent.path, &consent);
    settle(&f.consent.path);
    // One node, its columns and consent selections in memory, day after day.
    let src = f.open().await.unwrap();
    let second = format!(
        r#"{{"in": {{"variable": "age", "values": [{}]}}}}"#,
        rows[1].age.unwrap()
    );
    assert_eq!(count_on(&src, "null", "2024-06-01").await, 59);
    assert_eq!(count_on(&src, "null", "2024-06-02").await, 60);
    let with_second = count_on(&src, &second, "2024-06-02").await;
    assert_eq!(count_on(&src, "null", "2024-06-03").await, 59);
    assert_eq!(count_on(&src, &second, "2024-06-03").await, with_second - 1);
    assert_eq!(count_on(&src, "null", "2024-06-01").await, 59);
}

/// Waits for the join a node saves off the job's path.
async fn saved_join(f: &Fixture, cache: &Path) -> crate::data::saved::SavedJoin {
    let saved = crate::data::saved::SavedJoin::in_dir(cache, &f.data.path);
    for _ in 0..500 {
        if saved.path().exists() {
            return saved;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no consent join saved in {}", cache.display());
}

fn consent_stamps(f: &Fixture) -> crate::data::selection::ConsentStamps {
    let s = |p: &Path| crate::data::files::stamp(p, "test file").unwrap();
    (s(&f.consent.path), f.consent.opt_out.as_deref().map(s))
}

/// A node started once on `rows` (settled Parquet, everyone but `without`
/// consenting) with a cache folder, that counted its patients and stopped:
/// the fixture, its cache folder and the join it saved there.
async fn started_once(
    rows: &[super::Patient],
    without: &[&str],
) -> (Fixture, std::path::PathBuf, crate::data::saved::SavedJoin) {
    let f = settled(rows, false, without);
    let cache = f.path("cache");
    let src = f.open_in(&cache).await.unwrap();
    assert_eq!(
        count(&src, "null").await,
        (rows.len() - without.len()) as u64
    );
    drop(src);
    let saved = saved_join(&f, &cache).await;
    (f, cache, saved)
}

#[tokio::test]
async fn a_node_restarted_on_the_same_files_uses_the_join_it_saved() {
    let rows = patients(60);
    let (f, cache, saved) = started_once(&rows, &[]).await;
    // What the next start loads is what was saved: a saved join without
    // the first row's consent shows as one patient fewer.
    saved.edit(consent_stamps(&f), |rows| rows.without(0));
    let src = f.open_in(&cache).await.unwrap();
    assert_eq!(count(&src, "null").await, 59);
    // A job after the consent file changed joins it again.
    write_consent(
        &f.consent.path,
        &rows
            .iter()
            .map(|p| (p.id.as_str(), "GRU", "2019-01-01", ""))
            .collect::<Vec<_>>(),
    );
    settle(&f.consent.path);
    assert_eq!(count(&src, "null").await, 60);
}

#[tokio::test]
async fn a_consent_file_restored_with_its_old_size_and_time_is_joined_again() {
    let rows = patients(60);
    let (f, cache, _) = started_once(&rows, &[]).await;
    // While the node is down, the first patient's consent becomes one that
    // does not cover the study (same length), and the file gets its old
    // modification time back, as `cp -p` or `rsync -a` would leave it.
    let before = std::fs::metadata(&f.consent.path).unwrap();
    let consent: Vec<_> = rows
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (
                p.id.as_str(),
                if i == 0 { "HMB" } else { "GRU" },
                "2019-01-01",
                "",
            )
        })
        .collect();
    write_consent(&f.consent.path, &consent);
    std::fs::File::options()
        .write(true)
        .open(&f.consent.path)
        .unwrap()
        .set_modified(before.modified().unwrap())
        .unwrap();
    let after = std::fs::metadata(&f.consent.path).unwrap();
    assert_eq!(
        (before.len(), before.modified().unwrap()),
        (after.len(), after.modified().unwrap())
    );
    let src = f.open_in(&cache).await.unwrap();
    assert_eq!(count(&src, "null").await, 59);
}

#[tokio::test]
async fn a_damaged_saved_join_is_replaced_from_the_files() {
    let rows = patients(60);
    let (f, cache, saved) = started_once(&rows, &["P0002"]).await;
    let mut bytes = std::fs::read(saved.path()).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(saved.path(), &bytes).unwrap();
    let src = f.open_in(&cache).await.unwrap();
    assert_eq!(count(&src, "null").await, 59);
}

async fn compute(src: &crate::data::DataSource, json: &str) -> RawStats {
    let q = Query::from_json(json).unwrap();
    src.compute(
        &q,
        &purpose("GRU", "", &[]),
        date("2024-06-01"),
        TEST_LIMITS,
        None,
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn columns_are_read_when_a_job_needs_them_and_kept_within_the_budget() {
    let rows = patients(200_000);
    let mut f = settled(&rows, false, &["P0003"]);
    let kept = f.open().await.unwrap();
    // At start: the consent records joined to the rows (the id column they
    // were joined by is let go).
    let at_start = kept.in_memory_bytes();
    assert!(at_start > 1024 * 1024, "{at_start}");
    // A hospital that gives the node 4 MiB: room for the ids and one or two
    // more columns (about 1.6 MiB each), not for every column a job reads.
    f.data.memory_mib = Some(4);
    let tight = f.open().await.unwrap();
    let older = r#"{"compare": {"variable": "age", "op": ">=", "value": 60}}"#;
    let jobs = [
        format!(r#"{{"cohort": {older}, "analysis": {{"summary": {{"variable": "sbp"}}}}}}"#),
        format!(r#"{{"cohort": {older}, "analysis": {{"summary": {{"variable": "bmi"}}}}}}"#),
        r#"{"cohort": null, "analysis": {"table": {"row": "sex", "column": "smoking"}}}"#.into(),
        r#"{"cohort": null, "analysis": {"correlation": {"variables": ["age", "bmi", "sbp"]}}}"#
            .into(),
        format!(r#"{{"cohort": {older}, "analysis": {{"count": {{}}}}}}"#),
    ];
    for job in &jobs {
        assert_eq!(
            compute(&kept, job).await,
            compute(&tight, job).await,
            "{job}"
        );
        // Columns are read on demand; the tight node never keeps more than
        // its budget of columns (beside the joined consent records).
        assert!(tight.in_memory_bytes() <= 4 * 1024 * 1024 + 200_000 * 16 + 4096);
    }
    assert!(kept.in_memory_bytes() > at_start + 4 * 1024 * 1024);
    assert_eq!(count(&tight, "null").await, 199_999);
    // A node whose budget does not hold even the id column reads the file
    // for every job, with the same answers.
    f.data.memory_mib = Some(1);
    let read = f.open().await.unwrap();
    assert_eq!(read.in_memory_bytes(), 0);
    for job in &jobs {
        assert_eq!(
            compute(&kept, job).await,
            compute(&read, job).await,
            "{job}"
        );
    }
}

#[tokio::test]
async fn columns_read_at_different_times_line_up_row_for_row() {
    // Many small row groups: a file DataFusion would read in several
    // partitions, whose batches may arrive in any order. Columns read by
    // separate jobs must still belong to the same patients.
    let rows = patients(60_000);
    let mut f = settled(&rows, false, &["P0003"]);
    let batch = super::batch(&rows);
    let file = std::fs::File::create(&f.data.path).unwrap();
    let props = datafusion::parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(2_000))
        .build();
    let mut w = datafusion::parquet::arrow::ArrowWriter::try_new(file, batch.schema(), Some(props))
        .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    settle(&f.data.path);
    let kept = f.open().await.unwrap();
    // The file path reads in parallel, in any order: compared on integer
    // values, whose sums do not depend on the order of the additions.
    f.data.memory_mib = Some(0);
    let read = f.open().await.unwrap();
    let older = r#"{"compare": {"variable": "age", "op": ">=", "value": 60}}"#;
    for job in [
        format!(r#"{{"cohort": {older}, "analysis": {{"summary": {{"variable": "sbp"}}}}}}"#),
        format!(r#"{{"cohort": {older}, "analysis": {{"table": {{"row": "sex", "column": "smoking"}}}}}}"#),
        r#"{"cohort": {"compare": {"variable": "sex", "op": "=", "value": "F"}}, "analysis": {"summary": {"variable": "age"}}}"#.into(),
        r#"{"cohort": null, "analysis": {"correlation": {"variables": ["age", "sbp"]}}}"#.into(),
    ] {
        assert_eq!(compute(&kept, &job).await, compute(&read, &job).await, "{job}");
    }
}
