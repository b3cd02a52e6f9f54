//! Every analysis over many cohorts equals a straightforward Rust reference
//! over the same rows, for Parquet and CSV alike.

use plexus_core::eval::{matches, Datum};
use plexus_core::stats::SummarySums;
use plexus_core::{Analysis, Dictionary, ErrorCode, Query, RawStats};

use super::super::compute::bin_code;
use super::{date, patients, purpose, Fixture, Patient};

pub(super) const COHORTS: &[&str] = &[
    r#"null"#,
    r#"{"compare": {"variable": "age", "op": ">=", "value": 60}}"#,
    r#"{"and": [{"compare": {"variable": "sex", "op": "=", "value": "F"}},
                {"not": {"compare": {"variable": "diabetes", "op": "=", "value": true}}}]}"#,
    r#"{"or": [{"compare": {"variable": "bmi", "op": ">", "value": 30.5}},
               {"in": {"variable": "smoking", "values": ["former", "current"]}}]}"#,
    r#"{"not": {"or": [{"is_null": {"variable": "bmi"}},
                       {"compare": {"variable": "inclusion_date", "op": "<", "value": "2021-01-01"}}]}}"#,
    r#"{"in": {"variable": "age", "values": [40, 50, 61.0, 80]}}"#,
    r#"{"in": {"variable": "age", "values": [39, 59, 81]}}"#,
    r#"{"compare": {"variable": "sbp", "op": "<=", "value": 140}}"#,
    r#"{"compare": {"variable": "sbp", "op": ">", "value": 139.5}}"#,
    r#"{"and": [{"compare": {"variable": "death", "op": "!=", "value": false}},
                {"not_null": {"variable": "age"}}]}"#,
    r#"{"and": [{"compare": {"variable": "inclusion_date", "op": ">=", "value": "2022-03-15"}},
                {"compare": {"variable": "age", "op": "<", "value": 55.5}}]}"#,
    r#"{"in": {"variable": "diabetes", "values": [false]}}"#,
    r#"{"is_null": {"variable": "smoking"}}"#,
    r#"{"not": {"in": {"variable": "inclusion_date", "values": ["2020-01-01", "2021-06-30"]}}}"#,
    r#"{"or": [{"not": {"compare": {"variable": "sex", "op": "!=", "value": "M"}}},
               {"and": [{"compare": {"variable": "bmi", "op": "<=", "value": 25}},
                        {"not_null": {"variable": "death"}}]}]}"#,
];

pub(super) const ANALYSES: &[&str] = &[
    r#"{"count": {}}"#,
    r#"{"summary": {"variable": "age"}}"#,
    r#"{"summary": {"variable": "bmi"}}"#,
    r#"{"summary": {"variable": "sbp"}}"#,
    r#"{"histogram": {"variable": "age", "edges": [40, 50, 60, 70, 80]}}"#,
    r#"{"histogram": {"variable": "bmi", "edges": [20, 25, 30.5, 35]}}"#,
    r#"{"histogram": {"variable": "sbp", "edges": [90, 120.5, 140, 179]}}"#,
    r#"{"table": {"row": "sex", "column": "smoking"}}"#,
    r#"{"table": {"row": "smoking", "column": "diabetes"}}"#,
    r#"{"table": {"row": "death", "column": "diabetes"}}"#,
];

fn number(d: Datum) -> Option<f64> {
    match d {
        Datum::Integer(i) => Some(i as f64),
        Datum::Float(x) => Some(x),
        _ => None,
    }
}

fn level(d: Datum) -> Option<String> {
    match d {
        Datum::Text(s) => Some(s),
        Datum::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The analysis computed row by row over the rows the reference evaluator
/// puts in the cohort.
fn reference(rows: &[&Patient], query: &Query, dict: &Dictionary) -> RawStats {
    let cohort: Vec<&Patient> = rows
        .iter()
        .copied()
        .filter(|p| match &query.cohort {
            None => true,
            Some(c) => matches(c, &|v| p.datum(v)) == Some(true),
        })
        .collect();
    match &query.analysis {
        Analysis::Count {} => RawStats::Count(cohort.len() as u64),
        Analysis::Summary { variable } => {
            let values: Vec<f64> = cohort
                .iter()
                .filter_map(|p| number(p.datum(variable)))
                .collect();
            let var = dict.get(variable).expect("variable");
            RawStats::Summary(SummarySums::of(var, variable, &values))
        }
        Analysis::Histogram { variable, edges } => {
            let mut bins = vec![0; edges.len() - 1];
            let (mut below, mut above) = (0, 0);
            let last = edges[edges.len() - 1];
            for x in cohort.iter().filter_map(|p| number(p.datum(variable))) {
                if x < edges[0] {
                    below += 1;
                } else if x > last {
                    above += 1;
                } else if x == last {
                    *bins.last_mut().unwrap() += 1;
                } else {
                    let i = (0..bins.len())
                        .find(|&i| edges[i] <= x && x < edges[i + 1])
                        .unwrap();
                    bins[i] += 1;
                }
            }
            RawStats::Histogram { bins, below, above }
        }
        Analysis::Table { row, column } => {
            let rl = dict.get(row).unwrap().levels();
            let cl = dict.get(column).unwrap().levels();
            let mut cells = vec![0; rl.len() * cl.len()];
            for p in &cohort {
                if let (Some(r), Some(c)) = (level(p.datum(row)), level(p.datum(column))) {
                    let ri = rl.iter().position(|l| *l == r).unwrap();
                    let ci = cl.iter().position(|l| *l == c).unwrap();
                    cells[ri * cl.len() + ci] += 1;
                }
            }
            RawStats::Table {
                rows: rl.len() as u32,
                columns: cl.len() as u32,
                cells,
            }
        }
        other => panic!(
            "these tests have no row-by-row reference for a {}",
            other.kind()
        ),
    }
}

fn assert_same(got: &RawStats, want: &RawStats, what: &str) {
    match (got, want) {
        (RawStats::Summary(g), RawStats::Summary(w)) => {
            // The fixed-point sums are integers and must match exactly.
            assert_eq!(g.fixed, w.fixed, "{what}");
            let (g, w) = (&g.moments, &w.moments);
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * (1.0 + b.abs());
            assert!(
                g.n == w.n && close(g.sum, w.sum) && close(g.sum_squares, w.sum_squares),
                "{what}: got {g:?}, want {w:?}"
            );
        }
        _ => assert_eq!(got, want, "{what}"),
    }
}

async fn agrees_with_reference(csv: bool) {
    let rows = patients(240);
    let without = ["P0003", "P0010", "P0011", "P0100"];
    let f = Fixture::with_rows(&rows, csv, &without);
    let src = f.open().await.unwrap();
    let dict = Dictionary::cardiovascular();
    let consenting: Vec<&Patient> = rows
        .iter()
        .filter(|p| !without.contains(&p.id.as_str()))
        .collect();
    let hmb = purpose("HMB", "", &[]);
    let mut nonzero = 0;
    for cohort in COHORTS {
        for analysis in ANALYSES {
            let json = format!(r#"{{"cohort": {cohort}, "analysis": {analysis}}}"#);
            let query = Query::from_json(&json).unwrap();
            query.validate(&dict).unwrap();
            let got = src
                .compute(&query, &hmb, date("2024-06-01"), super::TEST_LIMITS, None)
                .await
                .unwrap();
            let want = reference(&consenting, &query, &dict);
            assert_same(&got, &want, &format!("csv={csv} {json}"));
            nonzero += usize::from(got != reference(&[], &query, &dict));
        }
    }
    // the cohorts are not all empty: most answers hold some patients
    assert!(
        nonzero > COHORTS.len() * ANALYSES.len() * 3 / 4,
        "{nonzero}"
    );
}

#[tokio::test]
async fn parquet_agrees_with_reference() {
    agrees_with_reference(false).await;
}

#[tokio::test]
async fn csv_agrees_with_reference() {
    agrees_with_reference(true).await;
}

#[test]
fn bin_codes_on_boundaries() {
    let edges = [40.0, 50.0, 60.0];
    let codes: Vec<i64> = [39.9, 40.0, 49.99, 50.0, 59.9, 60.0, 60.1]
        .iter()
        .map(|x| bin_code(&edges, *x))
        .collect();
    assert_eq!(codes, [-1, 0, 0, 1, 1, 1, 2]);
}

#[test]
fn bin_codes_count_as_a_binary_search_does() {
    // Few edges are counted, many searched: the same codes either way.
    for n in [2usize, 11, 64, 65, 200] {
        let edges: Vec<f64> = (0..n).map(|i| -3.0 + 0.37 * i as f64).collect();
        let mut xs: Vec<f64> = (0..5_000).map(|i| -5.0 + 0.017 * i as f64).collect();
        xs.extend(&edges);
        xs.extend([f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0]);
        for x in xs {
            let le = edges.partition_point(|e| *e <= x) as i64;
            let bins = n as i64 - 1;
            let want = if le == 0 {
                -1
            } else if le <= bins {
                le - 1
            } else if x == edges[n - 1] {
                bins - 1
            } else {
                bins
            };
            assert_eq!(bin_code(&edges, x), want, "{n} edges, x = {x}");
        }
    }
}

#[tokio::test]
async fn histogram_boundaries_exactly() {
    // ages 39, 40, 50, 59, 60, 79, 80, 81 lead the fixture table
    let rows: Vec<Patient> = patients(8);
    let f = Fixture::with_rows(&rows, false, &[]);
    let src = f.open().await.unwrap();
    let q = Query::from_json(
        r#"{"analysis": {"histogram": {"variable": "age", "edges": [40, 50, 60, 80]}}}"#,
    )
    .unwrap();
    let got = src
        .compute(
            &q,
            &purpose("GRU", "", &[]),
            date("2024-06-01"),
            super::TEST_LIMITS,
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        got,
        RawStats::Histogram {
            bins: vec![1, 2, 3],
            below: 1,
            above: 1
        }
    );
}

#[tokio::test]
async fn unmapped_variable_is_a_data_error() {
    let rows = patients(20);
    let mut f = Fixture::with_rows(&rows, false, &[]);
    f.data.columns.remove("sbp");
    let src = f.open().await.unwrap();
    assert!(!src.variables().contains(&"sbp".to_string()));
    let q = Query::from_json(r#"{"analysis": {"summary": {"variable": "sbp"}}}"#).unwrap();
    let e = src
        .compute(
            &q,
            &purpose("GRU", "", &[]),
            date("2024-06-01"),
            super::TEST_LIMITS,
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Data);
    assert!(
        e.message.contains("\"sbp\" is not mapped at this node"),
        "{e}"
    );
}
