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

#[tokio::test]
#[ignore]
async fn scratch_explain() {
    use datafusion::functions_aggregate::count::count_all;
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let rows = patients(n);
    let f = Fixture::with_rows(&rows, false, &["P0003"]);
    drop(rows);
    for p in [&f.consent.path, &f.path("opt_out.csv"), &f.data.path] {
        let file = std::fs::OpenOptions::new().write(true).open(p).unwrap();
        file.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(100))
            .unwrap();
    }
    let src = f.open().await.unwrap();
    let hmb = purpose("HMB", "", &[]);
    let t = Instant::now();
    let _ = src
        .consent
        .admitted(&hmb, date("2024-06-01"), &src.id_type)
        .await
        .unwrap();
    eprintln!("sets in {:?}", t.elapsed());
    for _ in 0..2 {
        let t = Instant::now();
        let df = src.consenting(&hmb, date("2024-06-01")).await.unwrap();
        let df = df.aggregate(vec![], vec![count_all()]).unwrap();
        let out = df.explain(false, true).unwrap().collect().await.unwrap();
        eprintln!(
            "{}",
            datafusion::arrow::util::pretty::pretty_format_batches(&out).unwrap()
        );
        eprintln!("in {:?}", t.elapsed());
    }
}

#[tokio::test]
#[ignore]
async fn scratch_loop() {
    let dir = std::path::PathBuf::from("/tmp/plexus_scratch");
    let f = if dir.join("done").exists() {
        let mut f = Fixture::new("patients.parquet");
        f.data.path = dir.join("patients.parquet");
        f.consent.path = dir.join("consent.csv");
        f.consent.opt_out = Some(dir.join("opt_out.csv"));
        f
    } else {
        let rows = patients(1_000_000);
        let f = Fixture::with_rows(&rows, false, &["P0003"]);
        std::fs::create_dir_all(&dir).unwrap();
        for n in ["patients.parquet", "consent.csv", "opt_out.csv"] {
            std::fs::copy(f.path(n), dir.join(n)).unwrap();
        }
        std::fs::write(dir.join("done"), "").unwrap();
        return;
    };
    let src = f.open().await.unwrap();
    let hmb = purpose("HMB", "", &[]);
    let q = Query::from_json(r#"{"analysis": {"count": {}}}"#).unwrap();
    let t = Instant::now();
    src.compute(&q, &hmb, date("2024-06-01")).await.unwrap();
    eprintln!("first {:?}", t.elapsed());
    let t = Instant::now();
    for _ in 0..0 {
        src.compute(&q, &hmb, date("2024-06-01")).await.unwrap();
    }
    eprintln!("cached x10 {:?}", t.elapsed());
    use datafusion::functions_aggregate::count::count_all;
    let df = src.consenting(&hmb, date("2024-06-01")).await.unwrap();
    let df = match std::env::var("WHICH").as_deref() {
        Ok("table") => {
            let (r, c) = (src.lookup("sex").unwrap().value(), src.lookup("diabetes").unwrap().value());
            df.filter(r.clone().is_not_null().and(c.clone().is_not_null())).unwrap()
                .aggregate(vec![datafusion::prelude::cast(r, datafusion::arrow::datatypes::DataType::Utf8).alias("r"), datafusion::prelude::cast(c, datafusion::arrow::datatypes::DataType::Utf8).alias("c")], vec![count_all()]).unwrap()
        }
        Ok("summary") => {
            let x = src.lookup("bmi").unwrap().as_f64();
            use datafusion::functions_aggregate::expr_fn::{count, sum};
            df.aggregate(vec![], vec![count(x.clone()), sum(x.clone()), sum(x.clone() * x)]).unwrap()
        }
        _ => df.aggregate(vec![], vec![count_all()]).unwrap(),
    };
    let out = df.explain(false, true).unwrap().collect().await.unwrap();
    eprintln!(
        "{}",
        datafusion::arrow::util::pretty::pretty_format_batches(&out).unwrap()
    );
}

#[test]
#[ignore]
fn scratch_micro() {
    use super::super::ids::IdSet;
    use datafusion::arrow::array::{ArrayRef, StringViewArray};
    use datafusion::arrow::datatypes::DataType;
    let ids: Vec<String> = (0..1_000_000).map(|i| format!("P{i:06}")).collect();
    let t = Instant::now();
    let mut set = IdSet::for_type(&DataType::Utf8View);
    ids.iter().for_each(|i| set.insert(i));
    eprintln!("build {:?}", t.elapsed());
    let arr: ArrayRef = std::sync::Arc::new(StringViewArray::from_iter_values(ids.iter()));
    let t = Instant::now();
    let m = set.mask(&arr);
    eprintln!("mask {:?} {}", t.elapsed(), m.true_count());
}
