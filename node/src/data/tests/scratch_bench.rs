use super::{date, patients, purpose, Fixture};
use plexus_core::Query;
use std::time::Instant;

#[tokio::test]
#[ignore]
async fn scratch_bench() {
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let csv = std::env::var("BENCH_CSV").is_ok();
    let rows = patients(n);
    let t = Instant::now();
    let f = Fixture::with_rows(&rows, csv, &["P0003"]);
    drop(rows);
    eprintln!("fixture written in {:?}", t.elapsed());
    for p in [&f.consent.path, &f.path("opt_out.csv"), &f.data.path] {
        let file = std::fs::OpenOptions::new().write(true).open(p).unwrap();
        file.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(100))
            .unwrap();
    }
    let t = Instant::now();
    let src = f.open().await.unwrap();
    eprintln!("open in {:?}", t.elapsed());
    let hmb = purpose("HMB", "", &[]);
    for q in [
        r#"{"analysis": {"count": {}}}"#,
        r#"{"analysis": {"count": {}}}"#,
        r#"{"cohort": {"compare": {"variable": "age", "op": ">=", "value": 60}}, "analysis": {"summary": {"variable": "bmi"}}}"#,
        r#"{"analysis": {"histogram": {"variable": "bmi", "edges": [20, 25, 30.5, 35]}}}"#,
        r#"{"cohort": {"in": {"variable": "smoking", "values": ["former", "current"]}}, "analysis": {"table": {"row": "sex", "column": "diabetes"}}}"#,
    ] {
        let q = Query::from_json(q).unwrap();
        let t = Instant::now();
        let r = src.compute(&q, &hmb, date("2024-06-01")).await.unwrap();
        eprintln!(
            "{:?} in {:?}: {:?}",
            q.analysis.kind(),
            t.elapsed(),
            match r {
                plexus_core::RawStats::Count(n) => format!("{n}"),
                _ => String::new(),
            }
        );
    }
}
