//! Operations: the daemons' `/metrics` count what happened, `/healthz` and
//! `/readyz` say whether to send them traffic, JSON logs carry each job's
//! ids, and a shutdown finishes or cleanly fails the work in flight without
//! losing anything stored.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use plexus::audit;
use plexus_core::pool::NodeStatus;
use plexus_core::{ErrorCode, Query};
use plexus_node::RunOptions;
use plexus_proto::v1 as pb;
use plexus_tests::{ask, sandbox, Sandbox, SandboxOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every log line this test binary writes, as the daemons format it with
/// `--log-format json`.
fn json_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = buf.clone();
        let subscriber = plexus_ops::logging::subscriber(
            plexus_ops::LogFormat::Json,
            tracing_subscriber::EnvFilter::new("info"),
            move || Capture(sink.clone()),
        );
        tracing::subscriber::set_global_default(subscriber).expect("first subscriber");
        buf
    })
    .clone()
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A bare HTTP/1.1 GET: status and body. Test-only; the three endpoints
/// answer small plain bodies, so a client crate would add nothing.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// The samples of a Prometheus text page: series (name and sorted labels)
/// to value.
fn parse(page: &str) -> BTreeMap<(String, BTreeMap<String, String>), f64> {
    let mut out = BTreeMap::new();
    for line in page
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split(',')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (k.to_string(), v.trim_matches('"').to_string())
            })
            .collect();
        out.insert((name.to_string(), labels), value.parse().unwrap());
    }
    out
}

/// The sum of every series of `name` whose labels include `labels`.
fn sample(page: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    parse(page)
        .iter()
        .filter(|((n, l), _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(v))
        })
        .map(|(_, v)| v)
        .sum()
}

fn coordinator_ops(sb: &Sandbox) -> SocketAddr {
    sb.coordinator_config.coordinator.metrics_listen.unwrap()
}

fn node_ops(sb: &Sandbox, node: &str) -> SocketAddr {
    sb.node_configs[node].node.metrics_listen.unwrap()
}

fn with_metrics(patients: usize, seed: u64) -> SandboxOptions {
    let mut opts = SandboxOptions::new(patients, seed);
    opts.metrics = true;
    opts
}

/// Polls `path` until it answers `status` (the daemons get there on their
/// own schedule; the assertions are on what they then say).
async fn wait_for(addr: SocketAddr, path: &str, status: u16) -> String {
    for _ in 0..300 {
        let (s, body) = get(addr, path).await;
        if s == status {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{addr}{path} never answered {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_queries_jobs_rows_budget_and_live_nodes() {
    let logs = json_logs();
    let sb = Sandbox::start(with_metrics(200, 601)).await.unwrap();
    let exact = sandbox::exact_study();
    sb.register_study(&exact).await.unwrap();
    for _ in 0..3 {
        ask(
            &sb,
            sandbox::RESEARCHER,
            &exact.id,
            r#"{"analysis": {"count": {}}}"#,
        )
        .await
        .unwrap();
    }
    // A query the study does not allow is refused at submission.
    let refused = ask(
        &sb,
        sandbox::RESEARCHER,
        &exact.id,
        r#"{"analysis": {"summary": {"variable": "no_such_variable"}}}"#,
    )
    .await
    .unwrap_err();

    let (status, page) = get(coordinator_ops(&sb), "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        sample(
            &page,
            "plexus_queries_total",
            &[("analysis", "count"), ("outcome", "ok")]
        ),
        3.0
    );
    assert_eq!(
        sample(
            &page,
            "plexus_queries_total",
            &[("outcome", &format!("refused:{}", refused.code))]
        ),
        1.0
    );
    assert_eq!(sample(&page, "plexus_live_nodes", &[]), 3.0);
    for node in sb.node_names() {
        assert_eq!(
            sample(
                &page,
                "plexus_jobs_total",
                &[("node", &node), ("outcome", "answered")]
            ),
            3.0,
            "{node}"
        );
        assert_eq!(
            sample(
                &page,
                "plexus_job_duration_seconds_count",
                &[("node", &node)]
            ),
            3.0
        );
    }
    assert_eq!(
        sample(
            &page,
            "plexus_query_duration_seconds_count",
            &[("analysis", "count")]
        ),
        3.0
    );
    // The gauge is the log's size when it was last appended to: every
    // entry an auditor can list, less the listing's own entry.
    let events = sb
        .client(sandbox::AUDITOR)
        .await
        .unwrap()
        .audit()
        .list_events(pb::ListEventsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .events;
    let audited = sample(&page, "plexus_audit_log_entries", &[]);
    assert!(
        audited as usize == events.len() || audited as usize + 1 == events.len(),
        "{audited} vs {}",
        events.len()
    );

    // Each node: jobs by outcome, and the patients its counts rest on.
    let today = plexus_tests::today();
    let purpose = exact.purpose().unwrap();
    for (i, node) in sb.node_names().iter().enumerate() {
        let (status, page) = get(node_ops(&sb, node), "/metrics").await;
        assert_eq!(status, 200);
        assert_eq!(
            sample(&page, "plexus_node_jobs_total", &[("outcome", "released")]),
            3.0
        );
        let population = plexus_tests::consenting(&sb.sites[i], &purpose, today).len();
        assert_eq!(
            sample(&page, "plexus_node_rows_scanned_total", &[]),
            3.0 * population as f64,
            "{node}"
        );
        assert_eq!(sample(&page, "plexus_node_coordinator_connected", &[]), 1.0);
        assert_eq!(
            sample(&page, "plexus_node_job_duration_seconds_count", &[]),
            3.0
        );
    }

    // Under differential privacy: both sides' budget gauges follow their ledgers.
    let private = sandbox::demo_study();
    sb.register_study(&private).await.unwrap();
    ask(
        &sb,
        sandbox::RESEARCHER,
        &private.id,
        r#"{"analysis": {"count": {}}}"#,
    )
    .await
    .unwrap();
    let budget = sb
        .client(sandbox::RESEARCHER)
        .await
        .unwrap()
        .research()
        .get_budget(pb::GetBudgetRequest {
            study_id: private.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(budget.spent_rho > 0.0);
    let (_, page) = get(coordinator_ops(&sb), "/metrics").await;
    assert_eq!(
        sample(
            &page,
            "plexus_study_budget_spent_rho",
            &[("study", &private.id)]
        ),
        budget.spent_rho
    );
    for nb in &budget.nodes {
        let (_, page) = get(node_ops(&sb, &nb.node_id), "/metrics").await;
        assert_eq!(
            sample(
                &page,
                "plexus_node_study_budget_spent_rho",
                &[("study", &private.id)]
            ),
            nb.spent_rho,
            "{}",
            nb.node_id
        );
    }

    // The same run, as JSON log lines: each parses, and the nodes' job
    // lines carry the job's span with its ids.
    let text = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines
        .iter()
        .all(|l| l["level"].is_string() && l["fields"].is_object()));
    let done: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "job done")
        .collect();
    assert!(done.len() >= 9, "{} job lines", done.len());
    for l in &done {
        assert_eq!(l["level"], "INFO");
        assert_eq!(l["span"]["name"], "job");
        assert_eq!(l["span"]["job_id"].as_str().unwrap().len(), 32, "{l}");
        assert!(sb
            .node_names()
            .contains(&l["span"]["node"].as_str().unwrap().to_string()));
        assert!(l["span"]["study"] == exact.id.as_str());
        assert!(l["fields"]["outcome"].is_string(), "{l}");
    }
    assert!(lines
        .iter()
        .any(|l| l["fields"]["message"] == "query finished" && l["span"]["query_id"].is_string()));
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_coordinator_link() {
    let mut sb = Sandbox::start(with_metrics(60, 602)).await.unwrap();
    let node = "hospital-a";
    for addr in [coordinator_ops(&sb), node_ops(&sb, node)] {
        assert_eq!(get(addr, "/healthz").await, (200, "ok\n".into()));
        // The coordinator counts a node live on its hello; the node marks
        // itself ready once the coordinator's welcome is in, a moment later.
        assert_eq!(wait_for(addr, "/readyz", 200).await, "ready\n");
    }

    sb.stop_coordinator().await.unwrap();
    let reason = wait_for(node_ops(&sb, node), "/readyz", 503).await;
    assert!(
        reason.starts_with("not ready: coordinator: not connected to the coordinator"),
        "{reason}"
    );
    // Alive all the same, and saying so in its metrics.
    assert_eq!(get(node_ops(&sb, node), "/healthz").await.0, 200);
    let (_, page) = get(node_ops(&sb, node), "/metrics").await;
    assert_eq!(sample(&page, "plexus_node_coordinator_connected", &[]), 0.0);

    sb.start_coordinator().await.unwrap();
    sb.wait_all_live().await.unwrap();
    assert_eq!(
        wait_for(node_ops(&sb, node), "/readyz", 200).await,
        "ready\n"
    );
    assert_eq!(get(coordinator_ops(&sb), "/readyz").await.0, 200);
    sb.shutdown().await.unwrap();
}

/// A sandbox whose nodes (or one node) take `delay` over every job.
async fn slow(seed: u64, nodes: &[&str], delay: Duration) -> Sandbox {
    let mut sb = Sandbox::prepare(with_metrics(60, seed)).await.unwrap();
    for n in nodes {
        sb.set_node_options(
            n,
            RunOptions {
                job_delay: delay,
                ..Default::default()
            },
        );
    }
    sb
}

/// Submits a count in the exact study and waits until every node of
/// `nodes` has been sent its job.
async fn submit_in_flight(sb: &Sandbox, nodes: &[&str]) -> String {
    let alice = sb.client(sandbox::RESEARCHER).await.unwrap();
    let query = Query::from_json(r#"{"analysis": {"count": {}}}"#).unwrap();
    let id = alice
        .research()
        .submit_query(pb::SubmitQueryRequest {
            study_id: sandbox::exact_study().id,
            query: Some((&query).into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .query_id;
    let auditor = sb.client(sandbox::AUDITOR).await.unwrap();
    for _ in 0..300 {
        let events = auditor
            .audit()
            .list_events(pb::ListEventsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .events;
        let sent = |n: &str| {
            events
                .iter()
                .any(|e| e.query_id == id && e.node_id == n && e.outcome == "sent")
        };
        if nodes.iter().all(|n| sent(n)) {
            return id;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the jobs of query {id} were never sent");
}

async fn wait_result(sb: &Sandbox, id: &str) -> pb::QueryResult {
    sb.client(sandbox::RESEARCHER)
        .await
        .unwrap()
        .research()
        .get_result(pb::GetResultRequest {
            query_id: id.to_string(),
            wait_ms: 60_000,
        })
        .await
        .unwrap()
        .into_inner()
}

/// Waits until `node` has taken in a job (its id is in the node's list of
/// seen jobs): the coordinator audits a job as sent before it leaves, so a
/// node stopped right after that may never see it, which a loaded machine
/// showed once.
async fn received(sb: &Sandbox, node: &str) {
    let seen = sb.node_configs[node].node.state_dir.join("seen_jobs.jsonl");
    for _ in 0..300 {
        if std::fs::read_to_string(&seen).is_ok_and(|t| !t.trim().is_empty()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{node} never took in its job ({})", seen.display());
}

/// Restarts the coordinator and returns the query's stored row, once the
/// whole audit log verified against a fresh signed checkpoint.
async fn check_stored(sb: &mut Sandbox, id: &str) -> pb::QueryResult {
    sb.start_coordinator().await.unwrap();
    sb.wait_all_live().await.unwrap();
    let stored = wait_result(sb, id).await;
    let auditor = sb.client(sandbox::AUDITOR).await.unwrap();
    let key = audit::load_key(&sb.pki.join("coordinator-signing.pub")).unwrap();
    let report = audit::verify(&auditor, &key, None, true).await.unwrap();
    assert!(report.entries > 0);
    stored
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_coordinator_finishes_queries_in_flight_within_its_grace() {
    let nodes = ["hospital-a", "hospital-b", "hospital-c"];
    let mut sb = slow(603, &nodes, Duration::from_secs(3)).await;
    sb.start_all().await.unwrap();
    sb.register_study(&sandbox::exact_study()).await.unwrap();
    let alice = sb.client(sandbox::RESEARCHER).await.unwrap();
    let id = submit_in_flight(&sb, &nodes).await;

    let ops = coordinator_ops(&sb);
    let waiting = tokio::spawn({
        let alice = sb.client(sandbox::RESEARCHER).await.unwrap();
        let id = id.clone();
        async move {
            alice
                .research()
                .get_result(pb::GetResultRequest {
                    query_id: id,
                    wait_ms: 60_000,
                })
                .await
        }
    });
    let late = async {
        // Once the coordinator drains, a new query is turned away.
        let reason = wait_for(ops, "/readyz", 503).await;
        assert_eq!(
            reason,
            "not ready: shutdown: the coordinator is shutting down\n"
        );
        let q = Query::from_json(r#"{"analysis": {"count": {}}}"#).unwrap();
        alice
            .run_query(&sandbox::exact_study().id, &q, Duration::from_secs(5))
            .await
    };
    let (stopped, late) = tokio::join!(sb.stop_coordinator(), late);
    stopped.unwrap();
    let late = late.unwrap_err();
    assert_eq!(late.code, ErrorCode::Unavailable);
    assert_eq!(
        late.message,
        "the coordinator is shutting down, retry shortly"
    );

    // The researcher waiting on the query got its answer during the drain.
    let answer = waiting.await.unwrap().unwrap().into_inner();
    let pooled = plexus_client::outcome(&answer).unwrap();
    assert_eq!(pooled.provenance.answered, 3);

    let stored = check_stored(&mut sb, &id).await;
    assert_eq!(plexus_client::outcome(&stored).unwrap(), pooled);
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_coordinator_fails_what_outlasts_its_grace_with_a_retryable_error() {
    let nodes = ["hospital-a", "hospital-b", "hospital-c"];
    let mut sb = slow(604, &nodes, Duration::from_secs(6)).await;
    sb.coordinator_config.coordinator.shutdown_grace_secs = 1;
    sb.start_all().await.unwrap();
    sb.register_study(&sandbox::exact_study()).await.unwrap();
    let id = submit_in_flight(&sb, &nodes).await;
    let waiting = tokio::spawn({
        let alice = sb.client(sandbox::RESEARCHER).await.unwrap();
        let id = id.clone();
        async move {
            alice
                .research()
                .get_result(pb::GetResultRequest {
                    query_id: id,
                    wait_ms: 60_000,
                })
                .await
        }
    });
    sb.stop_coordinator().await.unwrap();
    let answer = waiting.await.unwrap().unwrap().into_inner();
    let e = plexus_client::outcome(&answer).unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable);
    assert_eq!(
        e.message,
        "the coordinator shut down before this query finished; submit it again"
    );

    // Stored as failed, each job closed, the failure audited, the log whole.
    let stored = check_stored(&mut sb, &id).await;
    assert_eq!(stored.status, pb::QueryStatus::Failed as i32);
    let events = sb
        .client(sandbox::AUDITOR)
        .await
        .unwrap()
        .audit()
        .list_events(pb::ListEventsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .events;
    let of_query: Vec<_> = events.iter().filter(|e| e.query_id == id).collect();
    assert!(of_query
        .iter()
        .any(|e| e.action == "query.result" && e.outcome == "failed:unavailable"));
    for n in nodes {
        assert!(
            of_query
                .iter()
                .any(|e| e.action == "job" && e.node_id == n && e.outcome == "missing"),
            "{n}"
        );
    }
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_node_finishes_its_job_within_its_grace() {
    let mut sb = slow(605, &["hospital-a"], Duration::from_secs(2)).await;
    sb.start_all().await.unwrap();
    sb.register_study(&sandbox::exact_study()).await.unwrap();
    let id = submit_in_flight(&sb, &["hospital-a"]).await;
    received(&sb, "hospital-a").await;
    sb.stop_node("hospital-a").await.unwrap();
    let pooled = plexus_client::outcome(&wait_result(&sb, &id).await).unwrap();
    assert_eq!(pooled.provenance.answered, 3);
    assert!(pooled
        .provenance
        .nodes
        .iter()
        .all(|o| o.status == NodeStatus::Answered));
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_node_answers_what_outlasts_its_grace_with_a_retryable_error() {
    let mut sb = slow(606, &["hospital-a"], Duration::from_secs(30)).await;
    sb.node_configs
        .get_mut("hospital-a")
        .unwrap()
        .node
        .shutdown_grace_secs = 1;
    sb.start_all().await.unwrap();
    sb.register_study(&sandbox::exact_study()).await.unwrap();
    let id = submit_in_flight(&sb, &["hospital-a"]).await;
    received(&sb, "hospital-a").await;
    sb.stop_node("hospital-a").await.unwrap();
    let pooled = plexus_client::outcome(&wait_result(&sb, &id).await).unwrap();
    assert_eq!(pooled.provenance.answered, 2);
    let a = pooled
        .provenance
        .nodes
        .iter()
        .find(|o| o.node == "hospital-a")
        .unwrap();
    assert_eq!(a.status, NodeStatus::Failed);
    assert_eq!(a.code, Some(ErrorCode::Unavailable));
    assert_eq!(
        a.detail.as_deref(),
        Some("unavailable: node hospital-a shut down before this job finished; submit the query again")
    );
    // The node's own log recorded it, and the restarted node answers again.
    let log = std::fs::read_to_string(
        sb.node_configs["hospital-a"]
            .node
            .state_dir
            .join(plexus_node::log::JOB_LOG_FILE),
    )
    .unwrap();
    assert!(log.contains("failed:unavailable"), "{log}");
    sb.set_node_options("hospital-a", RunOptions::default());
    sb.start_node("hospital-a").await.unwrap();
    sb.wait_all_live().await.unwrap();
    let again = ask(
        &sb,
        sandbox::RESEARCHER,
        &sandbox::exact_study().id,
        r#"{"analysis": {"count": {}}}"#,
    )
    .await
    .unwrap();
    assert_eq!(again.provenance.answered, 3);
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_settings_are_checked_and_name_the_field() {
    let sb = Sandbox::prepare(with_metrics(10, 607)).await.unwrap();
    let mut coordinator = sb.coordinator_config.clone();
    coordinator.coordinator.shutdown_grace_secs = 4000;
    assert_eq!(
        coordinator.validate().unwrap_err().to_string(),
        "config: coordinator.shutdown_grace_secs must be at most 3600 (20 is the default), got 4000"
    );
    let mut coordinator = sb.coordinator_config.clone();
    coordinator.coordinator.metrics_listen = Some(coordinator.coordinator.listen);
    assert_eq!(
        coordinator.validate().unwrap_err().to_string(),
        "config: coordinator.metrics_listen must differ from coordinator.listen"
    );
    let mut node = sb.node_configs["hospital-a"].clone();
    node.node.shutdown_grace_secs = 4000;
    assert_eq!(
        node.validate().unwrap_err().to_string(),
        "config: node.shutdown_grace_secs must be at most 3600 (20 is the default), got 4000"
    );

    // A metrics port already taken stops the node before it opens anything.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let mut node = sb.node_configs["hospital-a"].clone();
    node.node.metrics_listen = Some(addr);
    let e = plexus_node::run(node, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!("cannot listen for metrics on {addr} (")),
        "{e}"
    );
    assert!(
        e.ends_with(
            "check that no other process uses the port and that node.metrics_listen is right"
        ),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_clock_is_a_minute_ahead_is_not_ready_and_says_clock() {
    let mut sb = Sandbox::prepare(with_metrics(60, 605)).await.unwrap();
    sb.set_node_options(
        "hospital-a",
        RunOptions {
            clock_skew_ms: 60_000,
            ..Default::default()
        },
    );
    sb.start_all().await.unwrap();
    sb.register_study(&sandbox::exact_study()).await.unwrap();

    // The node says what is wrong instead of looking healthy while it
    // refuses every job as expired.
    let reason = wait_for(node_ops(&sb, "hospital-a"), "/readyz", 503).await;
    assert!(
        reason.starts_with("not ready: clock: this node's clock is")
            && reason.contains("ahead of the coordinator's"),
        "{reason}"
    );
    let (_, page) = get(node_ops(&sb, "hospital-a"), "/metrics").await;
    let offset = sample(&page, "plexus_node_clock_offset_seconds", &[]);
    assert!((59.0..61.0).contains(&offset), "{offset}");
    assert_eq!(get(node_ops(&sb, "hospital-b"), "/readyz").await.0, 200);
    // One node off is that node's problem: the coordinator stays ready.
    assert_eq!(get(coordinator_ops(&sb), "/readyz").await.0, 200);

    // The admins' view shows it too.
    let admin = sb.client(sandbox::ADMIN).await.unwrap();
    let nodes = admin
        .admin()
        .list_nodes(pb::ListNodesRequest {})
        .await
        .unwrap()
        .into_inner();
    let offsets: BTreeMap<String, i64> = nodes
        .nodes
        .iter()
        .map(|n| (n.node_id.clone(), n.clock_offset_ms))
        .collect();
    assert!(
        (59_000..61_000).contains(&offsets["hospital-a"]),
        "{offsets:?}"
    );
    assert!(offsets["hospital-b"].abs() < 2_000, "{offsets:?}");
    let table = plexus::commands::nodes_table(&nodes);
    assert!(table.contains("(off: synchronise)"), "{table}");

    // And it is why its jobs fail.
    let r = ask(
        &sb,
        sandbox::RESEARCHER,
        &sandbox::exact_study().id,
        r#"{"analysis": {"count": {}}, "by_site": true}"#,
    )
    .await
    .unwrap();
    let a = r.provenance.node("hospital-a").expect("hospital-a listed");
    assert_ne!(a.status, NodeStatus::Answered, "{:?}", r.provenance);
    sb.shutdown().await.unwrap();
}
