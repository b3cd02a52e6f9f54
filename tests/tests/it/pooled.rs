//! A coordinator and three nodes over real mTLS: every analysis, pooled
//! across the nodes, equals the same analysis on the union of the sites'
//! consenting patients.

use plexus_core::cell::PooledCell;
use plexus_core::pool::PooledValue;
use plexus_core::{Dictionary, NodeStats, Query, RawStats};

use plexus_tests::{ask, consenting, reference, rel, sandbox, today, Sandbox, SandboxOptions};

const COHORTS: &[&str] = &[
    "null",
    r#"{"compare": {"variable": "age", "op": ">=", "value": 65}}"#,
    r#"{"and": [{"compare": {"variable": "sex", "op": "=", "value": "M"}},
               {"in": {"variable": "smoking", "values": ["former", "current"]}}]}"#,
    r#"{"or": [{"compare": {"variable": "diabetes", "op": "=", "value": true}},
              {"not": {"compare": {"variable": "bmi", "op": "<", "value": 30}}}]}"#,
    r#"{"and": [{"not_null": {"variable": "sbp"}},
               {"compare": {"variable": "inclusion_date", "op": "<", "value": "2018-01-01"}}]}"#,
    r#"{"or": [{"is_null": {"variable": "bmi"}}, {"compare": {"variable": "aaa_diameter", "op": ">", "value": 45.5}}]}"#,
];

const ANALYSES: &[&str] = &[
    r#"{"count": {}}"#,
    r#"{"summary": {"variable": "sbp"}}"#,
    r#"{"summary": {"variable": "aaa_diameter"}}"#,
    r#"{"summary": {"variable": "age"}}"#,
    r#"{"histogram": {"variable": "age", "edges": [40, 55, 65, 75, 85, 95]}}"#,
    r#"{"table": {"row": "smoking", "column": "death"}}"#,
    r#"{"table": {"row": "sex", "column": "diabetes"}}"#,
];

/// What a site releases of each count under the node's disclosure rules
/// (`None` where it suppresses): bins with below and above last, or the
/// table's cells row by row.
fn released_cells_of(r: &RawStats) -> Vec<Option<u64>> {
    let released =
        plexus_core::disclosure::apply(r.clone(), plexus_core::disclosure::Rules::new(K as u32));
    match released {
        NodeStats::Count(c) => vec![c.count()],
        NodeStats::Histogram { bins, below, above } => bins
            .iter()
            .chain([&below, &above])
            .map(|c| c.count())
            .collect(),
        NodeStats::Table { cells, .. } => cells.iter().map(|c| c.count()).collect(),
        other => panic!("not a counting analysis: {other:?}"),
    }
}

fn pooled_cells(v: &PooledValue) -> Vec<PooledCell> {
    match v {
        PooledValue::Count { n } => vec![n.clone()],
        PooledValue::Histogram {
            bins, below, above, ..
        } => bins
            .iter()
            .cloned()
            .chain([below.clone(), above.clone()])
            .collect(),
        PooledValue::Table { cells, .. } => cells.iter().flatten().cloned().collect(),
        PooledValue::Summary { .. } => vec![],
        other => panic!("not a counting analysis: {other:?}"),
    }
}

const K: u64 = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_analysis_equals_the_pooled_table() {
    let sb = Sandbox::start(SandboxOptions::new(1500, 11)).await.unwrap();
    let study = sandbox::exact_study();
    sb.register_study(&study).await.unwrap();
    let purpose = study.purpose().unwrap();
    let dict = Dictionary::cardiovascular();
    let per_site: Vec<(String, Vec<_>)> = sb
        .sites
        .iter()
        .map(|s| (s.name.clone(), consenting(s, &purpose, today())))
        .collect();
    let total: usize = per_site.iter().map(|(_, p)| p.len()).sum();
    assert!(total > 3000, "synthetic data too small: {total}");
    let mut released_cells = 0;

    for cohort in COHORTS {
        for analysis in ANALYSES {
            let json = format!(r#"{{"cohort": {cohort}, "analysis": {analysis}}}"#);
            let query = Query::from_json(&json).unwrap();
            let site_refs: Vec<(String, RawStats)> = per_site
                .iter()
                .map(|(name, rows)| (name.clone(), reference(rows, &query, &dict)))
                .collect();
            let got = ask(&sb, sandbox::RESEARCHER, &study.id, &json)
                .await
                .unwrap_or_else(|e| panic!("{json}: {e}"));
            assert_eq!(got.provenance.answered, 3, "{json}");
            if let PooledValue::Summary {
                n, mean, variance, ..
            } = &got.value
            {
                // sites with fewer than k values are left out, and named
                let mut m = plexus_core::Moments::default();
                for (name, r) in &site_refs {
                    let RawStats::Summary(s) = r else { panic!() };
                    let s = &s.moments;
                    if s.n >= K {
                        m.merge(s);
                    } else {
                        let o = got.provenance.node(name).unwrap();
                        assert_eq!(
                            o.status,
                            plexus_core::pool::NodeStatus::Suppressed,
                            "{json}"
                        );
                    }
                }
                assert_eq!(*n, m.n, "{json}");
                assert!(
                    rel(*mean, m.mean().unwrap()) < 1e-9,
                    "{json}: {mean} vs {:?}",
                    m.mean()
                );
                assert!(
                    rel(variance.unwrap(), m.variance().unwrap()) < 1e-9,
                    "{json}"
                );
                continue;
            }
            // Each pooled cell is the exact sum when every site released
            // it, and is suppressed (naming the sites) when one did not: a
            // site suppresses a cell under k, and in a table also the cells
            // secondary suppression picks so margins cannot rebuild it.
            let cells = pooled_cells(&got.value);
            let per_site_cells: Vec<(String, Vec<Option<u64>>)> = site_refs
                .iter()
                .map(|(n, r)| (n.clone(), released_cells_of(r)))
                .collect();
            assert_eq!(cells.len(), per_site_cells[0].1.len(), "{json}");
            for (i, cell) in cells.iter().enumerate() {
                let small: Vec<&str> = per_site_cells
                    .iter()
                    .filter(|(_, c)| c[i].is_none())
                    .map(|(n, _)| n.as_str())
                    .collect();
                if small.is_empty() {
                    let sum: u64 = per_site_cells.iter().filter_map(|(_, c)| c[i]).sum();
                    assert_eq!(cell.count, Some(sum), "{json} cell {i}");
                    released_cells += 1;
                } else {
                    assert_eq!(cell.count, None, "{json} cell {i}");
                    assert_eq!(cell.suppressed_at, small, "{json} cell {i}");
                    let released: u64 = per_site_cells.iter().filter_map(|(_, c)| c[i]).sum();
                    assert_eq!(
                        cell.at_least,
                        (released > 0).then_some(released),
                        "{json} cell {i}"
                    );
                }
            }
        }
    }
    assert!(
        released_cells > 50,
        "too few cells compared exactly: {released_cells}"
    );
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_under_k_is_suppressed_at_the_node_and_reported() {
    let sb = Sandbox::start(SandboxOptions::new(800, 5)).await.unwrap();
    let study = sandbox::exact_study();
    sb.register_study(&study).await.unwrap();
    // Very old current smokers with diabetes: a handful of patients at most.
    let json = r#"{"cohort": {"and": [
        {"compare": {"variable": "age", "op": ">=", "value": 92}},
        {"compare": {"variable": "smoking", "op": "=", "value": "current"}},
        {"compare": {"variable": "diabetes", "op": "=", "value": true}}]},
        "analysis": {"count": {}}}"#;
    let got = ask(&sb, sandbox::RESEARCHER, &study.id, json)
        .await
        .unwrap();
    let PooledValue::Count { n } = &got.value else {
        panic!("{got:?}")
    };
    assert_eq!(
        n.count, None,
        "a count under k must never be released: {n:?}"
    );
    assert_eq!(n.suppressed_at.len(), 3, "{n:?}");
    assert!(got
        .provenance
        .nodes
        .iter()
        .all(|o| o.status == plexus_core::pool::NodeStatus::Suppressed));

    // A table where some cells are small: each small cell is suppressed per node and marked.
    let json = r#"{"cohort": {"compare": {"variable": "age", "op": ">=", "value": 88}},
                   "analysis": {"table": {"row": "smoking", "column": "diabetes"}}}"#;
    let got = ask(&sb, sandbox::RESEARCHER, &study.id, json)
        .await
        .unwrap();
    let PooledValue::Table { cells, .. } = &got.value else {
        panic!("{got:?}")
    };
    let flat: Vec<_> = cells.iter().flatten().collect();
    assert!(flat.iter().any(|c| !c.suppressed_at.is_empty()), "{flat:?}");
    for c in flat {
        if let Some(n) = c.count {
            assert!(n >= 5, "released pooled cell under k: {c:?}");
        }
    }
    sb.shutdown().await.unwrap();
}
