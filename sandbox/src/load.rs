//! Many researcher queries at once: the query mix and the closed-loop
//! driver shared by `plexus-bench throughput` and the load test
//! (tests/tests/it/load.rs), so the benchmark measures what the test checks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plexus_core::Query;

use plexus_client::{outcome, Client};

/// The mix: counts, summaries, a table, a histogram, a Kaplan-Meier curve
/// and a gaussian GLM (iterative: several rounds of jobs). Counts differ in
/// their cohort so repeated queries are not the same query. Each one
/// passes the nodes' disclosure control on a few hundred patients a site.
pub const MIX: &[(&str, &str)] = &[
    (
        "count, age >= 70",
        r#"{"cohort": {"compare": {"variable": "age", "op": ">=", "value": 70}}, "analysis": {"count": {}}}"#,
    ),
    (
        "count, age >= 65 and male",
        r#"{"cohort": {"and": [{"compare": {"variable": "age", "op": ">=", "value": 65}},
                               {"compare": {"variable": "sex", "op": "=", "value": "M"}}]},
            "analysis": {"count": {}}}"#,
    ),
    (
        "summary of sbp, smokers",
        r#"{"cohort": {"in": {"variable": "smoking", "values": ["current", "former"]}},
            "analysis": {"summary": {"variable": "sbp"}}}"#,
    ),
    (
        "summary of age",
        r#"{"analysis": {"summary": {"variable": "age"}}}"#,
    ),
    (
        "table sex x death",
        r#"{"analysis": {"table": {"row": "sex", "column": "death"}}}"#,
    ),
    (
        "histogram of age",
        r#"{"analysis": {"histogram": {"variable": "age", "edges": [40, 55, 65, 75, 85, 95]}}}"#,
    ),
    (
        "kaplan-meier by sex, quarterly grid",
        r#"{"analysis": {"kaplan_meier": {"time": "followup_days", "event": "death",
            "group": "sex", "grid": {"from": 0, "to": 1825, "step": 91}}}}"#,
    ),
    (
        "gaussian glm sbp ~ age + sex",
        r#"{"analysis": {"glm": {"family": "gaussian", "outcome": "sbp", "covariates": ["age", "sex"]}}}"#,
    ),
];

/// The mix parsed, with its labels.
pub fn mix() -> anyhow::Result<Vec<(&'static str, Query)>> {
    MIX.iter()
        .map(|(label, json)| {
            Query::from_json(json)
                .map(|q| (*label, q))
                .map_err(|e| anyhow::anyhow!("query \"{label}\" of the load mix: {e}"))
        })
        .collect()
}

/// Latencies of finished queries and how long the run took.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub latencies: Vec<Duration>,
    pub failed: usize,
    pub elapsed: Duration,
}

impl Figures {
    pub fn completed(&self) -> usize {
        self.latencies.len()
    }

    /// Queries answered per second of wall time.
    pub fn per_second(&self) -> f64 {
        self.completed() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Nearest-rank percentile (`p` in 0..=1) of the latencies.
    pub fn percentile(&self, p: f64) -> Duration {
        percentile(&self.latencies, p)
    }
}

/// Nearest-rank percentile (`p` in 0..=1); zero for no samples.
pub fn percentile(samples: &[Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut xs = samples.to_vec();
    xs.sort();
    let rank = (p.clamp(0.0, 1.0) * xs.len() as f64).ceil() as usize;
    xs[rank.clamp(1, xs.len()) - 1]
}

/// CPU time this process has used (user + system), from /proc/self/stat
/// at Linux's usual 100 ticks a second; `None` where there is no /proc.
/// Beside wall time it tells a slow machine from a slow program: on a
/// machine shared with other work, wall time alone says little.
pub fn process_cpu_time() -> Option<Duration> {
    stat_cpu_time(&std::fs::read_to_string("/proc/self/stat").ok()?).map(|(_, t)| t)
}

/// CPU time used so far by this process's threads whose name starts with
/// one of `prefixes` (`None` where there is no /proc). Only threads alive
/// now count: keep the threads measured alive across the measurement.
pub fn threads_cpu_time(prefixes: &[&str]) -> Option<Duration> {
    let mut total = Duration::ZERO;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        if let Some((name, t)) = stat_cpu_time(&stat) {
            if prefixes.iter().any(|p| name.starts_with(p)) {
                total += t;
            }
        }
    }
    Some(total)
}

/// The command name and user + system time of a /proc `stat` line, at
/// Linux's usual 100 ticks a second.
fn stat_cpu_time(stat: &str) -> Option<(&str, Duration)> {
    // The command name is in parentheses and may hold spaces.
    let name = &stat[stat.find('(')? + 1..stat.rfind(')')?];
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((name, Duration::from_millis(ticks * 10)))
}

/// `concurrency` researchers each submit a query, wait for its answer and
/// submit the next, round-robin over `queries`, until `duration` has
/// passed; queries in flight then finish and count. Any failed query is
/// counted in [`Figures::failed`] and its first error returned beside.
pub async fn closed_loop(
    client: &Client,
    study: &str,
    queries: &[Query],
    concurrency: usize,
    duration: Duration,
) -> (Figures, Option<String>) {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let stop_at = started + duration;
    let workers = (0..concurrency.max(1)).map(|_| {
        let (client, next) = (client.clone(), next.clone());
        let study = study.to_string();
        let queries = queries.to_vec();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failed = 0;
            let mut first_error = None;
            while Instant::now() < stop_at {
                let i = next.fetch_add(1, Ordering::Relaxed) % queries.len();
                let t = Instant::now();
                let r = client
                    .run_query(&study, &queries[i], Duration::from_secs(600))
                    .await
                    .and_then(|r| outcome(&r));
                match r {
                    Ok(_) => latencies.push(t.elapsed()),
                    Err(e) => {
                        failed += 1;
                        first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            (latencies, failed, first_error)
        })
    });
    let mut figures = Figures::default();
    let mut first_error = None;
    let handles: Vec<_> = workers.collect();
    for h in handles {
        match h.await {
            Ok((latencies, failed, e)) => {
                figures.latencies.extend(latencies);
                figures.failed += failed;
                if first_error.is_none() {
                    first_error = e;
                }
            }
            Err(e) => {
                figures.failed += 1;
                first_error.get_or_insert_with(|| format!("a load worker panicked: {e}"));
            }
        }
    }
    figures.elapsed = started.elapsed();
    (figures, first_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_parses() {
        assert_eq!(mix().unwrap().len(), MIX.len());
    }

    #[test]
    fn cpu_time_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            let spin: u64 = (0..2_000_000u64).map(|i| i ^ (i >> 3)).sum();
            assert!(spin > 0);
            assert!(process_cpu_time().is_some());
            let own = std::thread::current()
                .name()
                .map(|n| n.chars().take(15).collect::<String>());
            // The test thread's name is its test's: it counts itself, not
            // threads of other names.
            if let Some(own) = own {
                let mine = threads_cpu_time(&[&own]).unwrap();
                assert!(mine <= process_cpu_time().unwrap());
            }
            assert_eq!(
                threads_cpu_time(&["no thread is named this"]),
                Some(Duration::ZERO)
            );
        }
    }

    #[test]
    fn a_stat_line_gives_the_thread_name_and_its_cpu_time() {
        let line = "4242 (plexus coord) S 1 2 3 4 5 6 7 8 9 10 150 50 0 0 20 0 1";
        assert_eq!(
            stat_cpu_time(line),
            Some(("plexus coord", Duration::from_millis(2000)))
        );
        assert_eq!(stat_cpu_time("4242 no parentheses"), None);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let xs: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&xs, 0.5), Duration::from_millis(50));
        assert_eq!(percentile(&xs, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&xs, 1.0), Duration::from_millis(100));
        assert_eq!(percentile(&xs[..1], 0.99), Duration::from_millis(1));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }
}
