//! `plexus-bench http`: what the HTTP/JSON API adds to a query over gRPC,
//! on one network in one run. Each repetition asks the same question over
//! both transports, alternating which goes first, and times it from submit
//! to result as a client sees it (the HTTP side polls with bounded waits,
//! as the R and Python clients do).

use std::time::{Duration, Instant};

use plexus_client::http::HttpClient;
use plexus_core::Query;
use plexus_sandbox::{self as sandbox, Sandbox, SandboxOptions};

pub struct HttpBenchOptions {
    pub patients_per_site: usize,
    pub repetitions: usize,
    pub seed: u64,
}

const QUERIES: [(&str, &str); 2] = [
    ("count", r#"{"analysis": {"count": {}}}"#),
    (
        "logistic fit",
        r#"{"analysis": {"glm": {"family": "binomial", "outcome": "death",
              "covariates": ["age", "sex", "smoking", "diabetes"]}}}"#,
    ),
];

pub async fn run(opts: HttpBenchOptions) -> anyhow::Result<()> {
    println!(
        "HTTP/JSON against gRPC: 3 hospitals x {} patients, exact study, {} repetitions per query and transport",
        opts.patients_per_site, opts.repetitions
    );
    let sb = Sandbox::start(SandboxOptions::new(opts.patients_per_site, opts.seed)).await?;
    let study = sandbox::exact_study();
    sb.register_study(&study).await?;
    let grpc = sb.client(sandbox::RESEARCHER).await?;
    let http = HttpClient::new(&sb.pki, sandbox::RESEARCHER, sb.address)?;
    let queries_path = format!("/v1/studies/{}/queries", study.id);

    let over_grpc = |json: &'static str| {
        let grpc = &grpc;
        let study = &study.id;
        async move {
            let query = Query::from_json(json)?;
            let t = Instant::now();
            grpc.run_query(study, &query, Duration::from_secs(120))
                .await?;
            anyhow::Ok(t.elapsed())
        }
    };
    let over_http = |json: &'static str| {
        let http = &http;
        let path = &queries_path;
        async move {
            let t = Instant::now();
            let submitted = http.post(path, json).await?;
            anyhow::ensure!(submitted.status == 202, "submit: {:?}", submitted.body);
            let id = submitted.body["query_id"].as_str().unwrap_or_default();
            loop {
                let answer = http.get(&format!("/v1/queries/{id}?wait_ms=30000")).await?;
                anyhow::ensure!(answer.status == 200, "result: {:?}", answer.body);
                match answer.body["status"].as_str() {
                    Some("pending") => continue,
                    Some("succeeded") => return anyhow::Ok(t.elapsed()),
                    _ => anyhow::bail!("query failed: {:?}", answer.body["error"]),
                }
            }
        }
    };

    let mut table = comfy_table::Table::new();
    table.set_header([
        "query",
        "gRPC median ms",
        "HTTP/JSON median ms",
        "HTTP overhead ms",
        "overhead %",
    ]);
    for (name, json) in QUERIES {
        // Warm both paths (connections, the nodes' file caches).
        over_grpc(json).await?;
        over_http(json).await?;
        let (mut g, mut h) = (Vec::new(), Vec::new());
        for i in 0..opts.repetitions {
            if i % 2 == 0 {
                g.push(over_grpc(json).await?);
                h.push(over_http(json).await?);
            } else {
                h.push(over_http(json).await?);
                g.push(over_grpc(json).await?);
            }
        }
        let (g, h) = (median_ms(&mut g), median_ms(&mut h));
        table.add_row([
            name.to_string(),
            format!("{g:.1}"),
            format!("{h:.1}"),
            format!("{:+.1}", h - g),
            format!("{:+.1}", 100.0 * (h - g) / g),
        ]);
    }
    println!("{table}");
    println!(
        "(each transport on one connection kept open, as the CLI, R and Python clients do; HTTP polls with bounded waits)"
    );
    sb.shutdown().await
}

fn median_ms(times: &mut [Duration]) -> f64 {
    times.sort();
    times[times.len() / 2].as_secs_f64() * 1000.0
}
