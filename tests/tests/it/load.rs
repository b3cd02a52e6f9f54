//! Load: 20 nodes and 200 researcher queries in flight at once. No query
//! is lost, nothing deadlocks (the whole burst runs under a deadline that
//! names what was still outstanding), and every answer equals the same
//! query answered alone, whose counts equal the synthetic rows'. The test
//! prints throughput and latency; it asserts correctness, never timing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plexus_core::pool::PooledValue;
use plexus_core::{Dictionary, Query, RawStats};
use plexus_proto::v1 as pb;
use plexus_sandbox::load::percentile;
use plexus_tests::{consenting, reference, sandbox, today, Sandbox, SandboxOptions};

const NODES: usize = 20;
const PATIENTS_PER_SITE: usize = 150;
const QUERIES: usize = 200;
/// Generous for a debug build on two shared cores; reaching it means a
/// query was lost or the coordinator deadlocked, and the failure says which.
const BURST_LIMIT: Duration = Duration::from_secs(240);

struct Finished {
    index: usize,
    query_id: String,
    latency: Duration,
    result: pb::QueryResult,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_queries_on_twenty_nodes_all_finish_with_the_right_answer() {
    // PLEXUS_TEST_LOG=warn (an env filter) shows what the daemons log.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("PLEXUS_TEST_LOG"))
        .with_test_writer()
        .try_init();
    let sb = Sandbox::start(SandboxOptions::with_nodes(NODES, PATIENTS_PER_SITE, 61))
        .await
        .unwrap();
    let study = sb.over_all_nodes(sandbox::exact_study());
    sb.approve(&study).unwrap();
    sb.register_study(&study).await.unwrap();
    let alice = sb.client(sandbox::RESEARCHER).await.unwrap();
    let mix = plexus_sandbox::load::mix().unwrap();

    // Each query of the mix alone first: what every concurrent copy must equal.
    let mut alone = Vec::new();
    for (label, q) in &mix {
        let r = alice
            .run_query(&study.id, q, Duration::from_secs(120))
            .await
            .unwrap();
        let pooled = plexus_client::outcome(&r).unwrap_or_else(|e| panic!("{label}, alone: {e}"));
        assert_eq!(
            pooled.provenance.answered as usize, NODES,
            "{label}: {pooled:?}"
        );
        alone.push(pooled.value);
    }
    // The counts alone equal the union of the sites' consenting rows.
    let purpose = study.purpose().unwrap();
    let dict = Dictionary::cardiovascular();
    for (i, (label, q)) in mix.iter().enumerate() {
        if !matches!(q.analysis, plexus_core::Analysis::Count {}) {
            continue;
        }
        let expected: u64 = sb
            .sites
            .iter()
            .map(
                |s| match reference(&consenting(s, &purpose, today()), q, &dict) {
                    RawStats::Count(n) => {
                        assert!(n >= 5, "{label}: a site counts {n}, under k");
                        n
                    }
                    other => panic!("{other:?}"),
                },
            )
            .sum();
        let PooledValue::Count { n } = &alone[i] else {
            panic!("{label}: {:?}", alone[i])
        };
        assert_eq!(n.count, Some(expected), "{label}");
    }

    // The burst: every query submitted at once, each waited for.
    let outstanding: Arc<Mutex<BTreeMap<usize, String>>> = Arc::new(Mutex::new(
        (0..QUERIES)
            .map(|i| {
                (
                    i,
                    format!("#{i} {}: not yet submitted", mix[i % mix.len()].0),
                )
            })
            .collect(),
    ));
    let started = Instant::now();
    let cpu_before = plexus_sandbox::load::process_cpu_time();
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..QUERIES {
        let (label, query) = mix[index % mix.len()].clone();
        let (client, outstanding, study_id) =
            (alice.clone(), outstanding.clone(), study.id.clone());
        tasks.spawn(async move { one(client, outstanding, study_id, index, label, query).await });
    }
    let burst = async {
        let mut done = Vec::new();
        while let Some(r) = tasks.join_next().await {
            done.push(r.expect("a query task panicked"));
        }
        done
    };
    let finished = match tokio::time::timeout(BURST_LIMIT, burst).await {
        Ok(f) => f,
        Err(_) => {
            let left = outstanding.lock().unwrap();
            panic!(
                "after {BURST_LIMIT:?}, {} of {QUERIES} queries had not finished (lost or deadlocked): {:#?}",
                left.len(),
                left.values().collect::<Vec<_>>()
            );
        }
    };
    let elapsed = started.elapsed();
    let cpu = plexus_sandbox::load::process_cpu_time()
        .zip(cpu_before)
        .map(|(after, before)| after.saturating_sub(before));
    assert_eq!(finished.len(), QUERIES);
    assert!(outstanding.lock().unwrap().is_empty());

    // Every answer is right.
    for f in &finished {
        let label = mix[f.index % mix.len()].0;
        let pooled = plexus_client::outcome(&f.result)
            .unwrap_or_else(|e| panic!("#{} {label} ({}): {e}", f.index, f.query_id));
        assert_eq!(
            pooled.provenance.answered as usize, NODES,
            "#{} {label}: {:?}",
            f.index, pooled.provenance
        );
        assert_eq!(
            pooled.value,
            alone[f.index % mix.len()],
            "#{} {label} under load differs from the same query alone",
            f.index
        );
    }
    // No query lost: each id is stored as finished and audited once with its result.
    let mut research = alice.research();
    for f in &finished {
        let again = research
            .get_result(pb::GetResultRequest {
                query_id: f.query_id.clone(),
                wait_ms: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            again.status,
            pb::QueryStatus::Succeeded as i32,
            "{}",
            f.query_id
        );
    }
    let events = sb
        .client(sandbox::AUDITOR)
        .await
        .unwrap()
        .audit()
        .list_events(pb::ListEventsRequest {
            who: sandbox::RESEARCHER.into(),
            limit: 100_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    for f in &finished {
        let results: Vec<&str> = events
            .iter()
            .filter(|e| e.query_id == f.query_id && e.action == "query.result")
            .map(|e| e.outcome.as_str())
            .collect();
        assert_eq!(results, ["ok"], "audit of query {}", f.query_id);
    }

    let latencies: Vec<Duration> = finished.iter().map(|f| f.latency).collect();
    println!(
        "load: {QUERIES} concurrent queries on {NODES} nodes x {PATIENTS_PER_SITE} patients in {:.2} s: {:.1} queries/s, latency p50 {:.0} ms, p99 {:.0} ms; {} of CPU for the whole network in this process (a debug build unless run with --release)",
        elapsed.as_secs_f64(),
        QUERIES as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.5).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
        cpu.map(|c| format!("{:.1} s", c.as_secs_f64()))
            .unwrap_or_else(|| "unknown".into()),
    );
    sb.shutdown().await.unwrap();
}

/// Submits one query and waits for its final state, keeping `outstanding`
/// up to date so a deadline can say what never finished.
async fn one(
    client: plexus_client::Client,
    outstanding: Arc<Mutex<BTreeMap<usize, String>>>,
    study_id: String,
    index: usize,
    label: &'static str,
    query: Query,
) -> Finished {
    let mut research = client.research();
    let t = Instant::now();
    let query_id = research
        .submit_query(pb::SubmitQueryRequest {
            study_id,
            query: Some((&query).into()),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("#{index} {label} refused: {}", s.message()))
        .into_inner()
        .query_id;
    outstanding
        .lock()
        .unwrap()
        .insert(index, format!("#{index} {label}: query {query_id} pending"));
    loop {
        let result = research
            .get_result(pb::GetResultRequest {
                query_id: query_id.clone(),
                wait_ms: 10_000,
            })
            .await
            .unwrap_or_else(|s| panic!("#{index} {label} ({query_id}): {}", s.message()))
            .into_inner();
        if result.status != pb::QueryStatus::Pending as i32 {
            let latency = t.elapsed();
            outstanding.lock().unwrap().remove(&index);
            return Finished {
                index,
                query_id,
                latency,
                result,
            };
        }
    }
}
