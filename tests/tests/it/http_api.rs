//! The HTTP/JSON API beside gRPC: the same answers, the same
//! authorisation, the same audit, and errors with a stable code in the body.

use std::time::Duration;

use plexus_client::http::{Answer, HttpClient};
use plexus_proto::v1 as pb;
use plexus_tests::{sandbox, Sandbox, SandboxOptions};

fn client(sb: &Sandbox, name: &str) -> HttpClient {
    HttpClient::new(&sb.pki, name, sb.address).unwrap()
}

/// Submits over HTTP and waits for the result, as the R and Python
/// clients do: bounded waits, called again while pending.
async fn ask_http(http: &HttpClient, study: &str, body: &str) -> Answer {
    let submitted = http
        .post(&format!("/v1/studies/{study}/queries"), body)
        .await
        .unwrap();
    if submitted.status != 202 {
        return submitted;
    }
    assert_eq!(submitted.body["status"], "pending");
    let id = submitted.body["query_id"].as_str().unwrap().to_string();
    for _ in 0..60 {
        let answer = http
            .get(&format!("/v1/queries/{id}?wait_ms=1000"))
            .await
            .unwrap();
        if answer.status != 200 || answer.body["status"] != "pending" {
            return answer;
        }
    }
    panic!("query {id} still pending after a minute");
}

/// What differs between two runs of one query: its id and its times.
fn strip_run(mut v: serde_json::Value) -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                for key in RUN_FIELDS {
                    map.remove(*key);
                }
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut v);
    v
}

/// A request refused: method, path, body, HTTP status, code, message part.
type ErrorCase = (
    &'static str,
    &'static str,
    Option<&'static str>,
    u16,
    &'static str,
    &'static str,
);

const RUN_FIELDS: &[&str] = &[
    "query_id",
    "job_id",
    "jobs",
    "elapsed_ms",
    "round_ms",
    "submitted_unix_ms",
    "finished_unix_ms",
    "computed_at",
    "cached",
    "signatures",
    "statements",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_grpc_give_the_same_answers_and_errors() {
    let sb = Sandbox::start(SandboxOptions::new(400, 16)).await.unwrap();
    let study = sandbox::exact_study();
    sb.register_study(&study).await.unwrap();
    let alice_grpc = sb.client(sandbox::RESEARCHER).await.unwrap();
    let alice = client(&sb, sandbox::RESEARCHER);

    // Studies and the dictionary.
    let studies = alice.get("/v1/studies").await.unwrap();
    assert_eq!(studies.status, 200, "{:?}", studies.body);
    let listed: Vec<&str> = studies.body["studies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert!(listed.contains(&study.id.as_str()), "{listed:?}");
    let one = alice
        .get(&format!("/v1/studies/{}", study.id))
        .await
        .unwrap();
    assert_eq!(one.status, 200);
    assert_eq!(one.body["privacy"]["exact"], true);
    let dictionary = alice.get("/v1/dictionary").await.unwrap();
    assert_eq!(dictionary.status, 200);
    let smoking = dictionary.body["variables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "smoking")
        .unwrap()
        .clone();
    assert_eq!(smoking["type"], "categorical");
    assert_eq!(
        smoking["categories"],
        serde_json::json!(["never", "former", "current"])
    );

    // The same queries over both transports: the same numbers, to the last
    // digit, and the same provenance apart from the run's own ids and times.
    // Where a query has a text form too, it is read into the same tree:
    // the same hash, the same answer as the tree form over gRPC.
    for (query, text) in [
        (r#"{"analysis": {"count": {}}}"#, None),
        (
            r#"{"cohort": {"compare": {"variable": "age", "op": ">=", "value": 65}},
            "analysis": {"glm": {"family": "binomial", "outcome": "death",
                                 "covariates": ["age", "smoking", "diabetes"]}}}"#,
            Some(
                r#"{"where": "age >= 65",
            "analysis": {"glm": {"formula": "death ~ age + smoking + diabetes", "family": "binomial"}}}"#,
            ),
        ),
        (
            r#"{"analysis": {"kaplan_meier": {"time": "followup_days", "event": "death",
              "group": "smoking", "grid": {"from": 0, "to": 1830, "step": 30.5}}}}"#,
            None,
        ),
    ] {
        let over_grpc = alice_grpc
            .run_query(
                &study.id,
                &plexus_core::Query::from_json(query).unwrap(),
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        let grpc_result: serde_json::Value = serde_json::from_str(&over_grpc.result_json).unwrap();
        for body in std::iter::once(query).chain(text) {
            let over_http = ask_http(&alice, &study.id, body).await;
            assert_eq!(over_http.status, 200, "{:?}", over_http.body);
            assert_eq!(
                over_http.body["status"], "succeeded",
                "{:?}",
                over_http.body
            );
            assert_eq!(
                over_http.body["query_hash"].as_str().unwrap(),
                over_grpc.query_hash
            );
            assert_eq!(
                strip_run(over_http.body["result"].clone()),
                strip_run(grpc_result.clone()),
                "{body}"
            );
        }
    }

    // The budget, as gRPC reports it.
    let budget = alice
        .get(&format!("/v1/studies/{}/budget", study.id))
        .await
        .unwrap();
    assert_eq!(budget.status, 200);
    assert_eq!(budget.body["exact"], true);

    // Errors: a stable code in the body and the HTTP status of that code.
    // (method, path, body, HTTP status, code, a part of the message)
    let cases: &[ErrorCase] = &[
        (
            "POST",
            "/v1/studies/aaa-validation-exact/queries",
            Some(r#"{"analysis": {"summary": {"variable": "systolic"}}}"#),
            400,
            "invalid",
            "not in the data dictionary",
        ),
        (
            "POST",
            "/v1/studies/aaa-validation-exact/queries",
            Some(r#"{"analysis": {"count": {}"#),
            400,
            "invalid",
            "not valid JSON",
        ),
        (
            "POST",
            "/v1/studies/aaa-validation-exact/queries",
            Some(
                r#"{"analysis": {"glm": {"formula": "death ~ agee + smoking", "family": "binomial"}}}"#,
            ),
            400,
            "invalid",
            "did you mean \"age\"",
        ),
        (
            "POST",
            "/v1/studies/aaa-validation-exact/queries",
            Some(r#"{"where": "(age >= 65", "analysis": {"count": {}}}"#),
            400,
            "invalid",
            "column",
        ),
        (
            "POST",
            "/v1/studies/no-such-study/queries",
            Some(r#"{"analysis": {"count": {}}}"#),
            404,
            "not_found",
            "not registered",
        ),
        (
            "GET",
            "/v1/queries/no-such-query",
            None,
            404,
            "not_found",
            "no query",
        ),
        (
            "GET",
            "/v1/audit/events",
            None,
            403,
            "policy",
            "may not call",
        ),
        (
            "GET",
            "/v1/no-such-call",
            None,
            404,
            "not_found",
            "no call /v1/no-such-call",
        ),
    ];
    let study_path = format!("/v1/studies/{}/queries", study.id);
    for (method, path, body, status, code, text) in cases {
        let path = path.replace("/v1/studies/aaa-validation-exact/queries", &study_path);
        let answer = alice.request(method, &path, *body).await.unwrap();
        assert_eq!(answer.status, *status, "{method} {path}: {:?}", answer.body);
        assert_eq!(answer.body["error"]["code"], *code, "{:?}", answer.body);
        let message = answer.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(text), "{method} {path}: {message}");
    }
    let bob = client(&sb, sandbox::OUTSIDER);
    let outsider = bob
        .post(&study_path, r#"{"analysis": {"count": {}}}"#)
        .await
        .unwrap();
    assert_eq!(outsider.status, 403, "{:?}", outsider.body);
    assert_eq!(outsider.body["error"]["code"], "policy");
    assert!(outsider.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("is not a member of study"));

    // Refusals over HTTP are audited as over gRPC; the auditor reads them
    // over HTTP, and the checkpoint and proofs are gRPC's.
    let auditor = client(&sb, sandbox::AUDITOR);
    let events = auditor
        .get(&format!(
            "/v1/audit/events?study_id={}&limit=1000",
            study.id
        ))
        .await
        .unwrap();
    assert_eq!(events.status, 200, "{:?}", events.body);
    let events = events.body["events"].as_array().unwrap().clone();
    assert!(events.iter().any(|e| e["who"] == sandbox::OUTSIDER
        && e["action"] == "query.submit"
        && e["outcome"].as_str().unwrap().starts_with("refused")));
    let seq = events[0]["seq"].as_u64().unwrap();
    let proof = auditor
        .get(&format!("/v1/audit/inclusion/{seq}"))
        .await
        .unwrap();
    assert_eq!(proof.status, 200, "{:?}", proof.body);
    let grpc_proof = sb
        .client(sandbox::AUDITOR)
        .await
        .unwrap()
        .audit()
        .prove_inclusion(pb::ProveInclusionRequest { seq })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(proof.body["event"]["seq"], seq);
    let size = proof.body["checkpoint"]["size"].as_u64().unwrap();
    assert!(size >= grpc_proof.checkpoint.unwrap().size.min(size));
    let checkpoint = auditor.get("/v1/audit/checkpoint").await.unwrap();
    assert_eq!(checkpoint.status, 200);
    assert_eq!(checkpoint.body["root"].as_str().unwrap().len(), 64);

    // The document the coordinator serves is the one checked in.
    let served = alice.get("/v1/openapi.json").await.unwrap();
    assert_eq!(served.status, 200);
    assert_eq!(
        served.body,
        serde_json::to_value(plexus_coordinator::http::openapi()).unwrap()
    );

    sb.shutdown().await.unwrap();
}
