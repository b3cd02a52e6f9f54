//! Secure aggregation end to end: the pooled results equal the plain
//! path's; the coordinator keeps masked vectors that look random and give
//! away no node's figures; a node dropping mid-job leads to a re-run with
//! fresh keys (at no second privacy charge) or to a clear failure, never to
//! an unmasked figure; and a node refuses rosters under 3 nodes, changed
//! rosters and rosters that are not its own.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use prost::Message;
use serde_json::Value;

use plexus_coordinator::store::Store;
use plexus_core::pool::{NodeStatus, PooledValue};
use plexus_core::secagg::{add_into, KeyPairs, Roster};
use plexus_core::{Dictionary, ErrorCode, Query, RawStats};
use plexus_node::RunOptions;
use plexus_proto::convert::{keys_from_pb, vector_from_bytes};
use plexus_proto::v1 as pb;
use plexus_tests::{ask, consenting, reference, sandbox, today, Sandbox, SandboxOptions};

/// One query of every analysis, on cohorts and grids where no node has a
/// cell under the minimum cell size (so the plain path suppresses nothing
/// and the two paths must agree to the last count).
const QUERIES: &[&str] = &[
    r#"{"cohort": {"compare": {"variable": "age", "op": ">=", "value": 65}}, "analysis": {"count": {}}}"#,
    r#"{"analysis": {"summary": {"variable": "sbp"}}}"#,
    r#"{"analysis": {"histogram": {"variable": "age", "edges": [18, 65, 70, 75, 80, 110]}}}"#,
    r#"{"analysis": {"table": {"row": "sex", "column": "smoking"}}}"#,
    r#"{"analysis": {"quantiles": {"variable": "age", "edges": [18, 65, 70, 75, 80, 110], "probabilities": [0.25, 0.5, 0.75]}}}"#,
    r#"{"analysis": {"two_by_two": {"exposure": "diabetes", "outcome": "hypertension"}}}"#,
    r#"{"analysis": {"kaplan_meier": {"time": "followup_days", "event": "death", "group": "sex",
        "grid": [0, 365, 730, 1095, 1460, 1825, 9000]}}}"#,
    r#"{"analysis": {"correlation": {"variables": ["age", "sbp", "bmi"]}}}"#,
    r#"{"analysis": {"glm": {"family": "gaussian", "outcome": "sbp", "covariates": ["age", "sex"]}}}"#,
    r#"{"analysis": {"glm": {"family": "binomial", "outcome": "death", "covariates": ["age", "diabetes"]}}}"#,
    r#"{"analysis": {"cox": {"time": "followup_days", "event": "death", "covariates": ["age"]}}}"#,
];

/// Equal, except that numbers need only agree to a relative 1e-9 (secure
/// aggregation carries sums in fixed point, 2^-32, and adds them in
/// another order than the plain path's floating point) and that the nodes
/// a cell was suppressed at are not compared: a plain cell empty at every
/// node (ages above the dictionary's bounds) names them all, while under
/// secure aggregation suppression is of the pooled sum and names none.
fn assert_close(a: &Value, b: &Value, at: &str) {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            let scale = x.abs().max(y.abs()).max(1.0);
            assert!((x - y).abs() <= 1e-9 * scale, "{at}: {x} vs {y}");
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{at}: lengths");
            for (i, (x, y)) in x.iter().zip(y).enumerate() {
                assert_close(x, y, &format!("{at}[{i}]"));
            }
        }
        (Value::Object(x), Value::Object(y)) => {
            let kx: BTreeSet<_> = x.keys().filter(|k| *k != "suppressed_at").collect();
            let ky: BTreeSet<_> = y.keys().filter(|k| *k != "suppressed_at").collect();
            assert_eq!(kx, ky, "{at}: fields");
            for k in kx {
                assert_close(&x[k], &y[k], &format!("{at}.{k}"));
            }
        }
        _ => assert_eq!(a, b, "{at}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_results_equal_the_plain_path() {
    let sb = Sandbox::start(SandboxOptions::new(400, 71)).await.unwrap();
    let plain = sandbox::exact_study();
    let secure = sandbox::secure_study();
    sb.register_study(&plain).await.unwrap();
    sb.register_study(&secure).await.unwrap();
    for json in QUERIES {
        let p = ask(&sb, sandbox::RESEARCHER, &plain.id, json)
            .await
            .unwrap();
        let s = ask(&sb, sandbox::RESEARCHER, &secure.id, json)
            .await
            .unwrap();
        let (pv, sv) = (
            serde_json::to_value(&p.value).unwrap(),
            serde_json::to_value(&s.value).unwrap(),
        );
        assert_close(&pv, &sv, json);
        assert!(!sv.to_string().contains("suppressed_at"), "{json}: {sv}");
        // Every node answered, and none is shown with a figure of its own.
        assert_eq!(s.provenance.answered, 3, "{json}");
        for n in &s.provenance.nodes {
            assert_eq!(n.status, NodeStatus::Answered, "{json}: {n:?}");
            assert!(n.detail.is_none(), "{json}: {n:?}");
        }
        assert!(
            s.provenance
                .notes
                .iter()
                .any(|n| n.contains("secure aggregation") && n.contains("never a node's own")),
            "{json}: {:?}",
            s.provenance.notes
        );
    }

    // A result per site would show each hospital's figures: refused at
    // submission, naming it.
    let e = ask(
        &sb,
        sandbox::RESEARCHER,
        &secure.id,
        r#"{"analysis": {"count": {}}, "by_site": true}"#,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::Policy, "{e}");
    assert!(
        e.message.contains("by_site") && e.message.contains("secure aggregation"),
        "{e}"
    );
    sb.shutdown().await.unwrap();
}

/// Each site's exact figure for `json` on its consenting patients.
fn per_site(sb: &Sandbox, json: &str) -> Vec<(String, RawStats)> {
    let dict = Dictionary::cardiovascular();
    let purpose = sandbox::secure_study().purpose().unwrap();
    let query = Query::from_json(json).unwrap();
    sb.sites
        .iter()
        .map(|site| {
            let patients = consenting(site, &purpose, today());
            (site.name.clone(), reference(&patients, &query, &dict))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_cells_are_suppressed_on_the_pooled_sums_not_at_each_node() {
    let sb = Sandbox::start(SandboxOptions::new(400, 83)).await.unwrap();
    let plain = sandbox::exact_study();
    let secure = sandbox::secure_study();
    sb.register_study(&plain).await.unwrap();
    sb.register_study(&secure).await.unwrap();
    // The oldest patients: a cohort where some node holds 1 to 4 of them
    // and all together hold at least 5.
    let mut found = false;
    for age in (80..=105).rev() {
        let json = format!(
            r#"{{"cohort": {{"compare": {{"variable": "age", "op": ">=", "value": {age}}}}}, "analysis": {{"count": {{}}}}}}"#
        );
        let counts: Vec<u64> = per_site(&sb, &json)
            .into_iter()
            .map(|(_, r)| match r {
                RawStats::Count(n) => n,
                other => panic!("{other:?}"),
            })
            .collect();
        let total: u64 = counts.iter().sum();
        if !(counts.iter().any(|n| (1..5).contains(n)) && total >= 5) {
            continue;
        }
        found = true;
        let p = ask(&sb, sandbox::RESEARCHER, &plain.id, &json)
            .await
            .unwrap();
        let s = ask(&sb, sandbox::RESEARCHER, &secure.id, &json)
            .await
            .unwrap();
        let (PooledValue::Count { n: pn }, PooledValue::Count { n: sn }) = (&p.value, &s.value)
        else {
            panic!("{p:?} {s:?}")
        };
        // Plain: the small node suppressed its part. Secure: the pooled
        // sum is at least k and released whole, naming no node.
        assert_eq!(pn.count, None, "{counts:?}: {pn:?}");
        assert!(!pn.suppressed_at.is_empty());
        assert_eq!(sn.count, Some(total), "{counts:?}");
        assert!(sn.suppressed_at.is_empty());
        break;
    }
    assert!(
        found,
        "no cohort of old patients with a small cell at one node"
    );

    // A pooled count under k is suppressed, as a plain pooled total is.
    let s = ask(
        &sb,
        sandbox::RESEARCHER,
        &secure.id,
        r#"{"cohort": {"compare": {"variable": "age", "op": ">", "value": 200}}, "analysis": {"count": {}}}"#,
    )
    .await
    .unwrap();
    let PooledValue::Count { n } = &s.value else {
        panic!("{s:?}")
    };
    assert_eq!((n.count, n.at_least), (None, None), "{n:?}");
    assert!(n.suppressed_at.is_empty(), "{n:?}");
    sb.shutdown().await.unwrap();
}

/// Pearson's chi-square of byte frequencies against uniform (255 df).
fn byte_chi_square(bytes: &[u8]) -> f64 {
    let mut counts = [0u64; 256];
    bytes.iter().for_each(|b| counts[*b as usize] += 1);
    let expected = bytes.len() as f64 / 256.0;
    counts
        .iter()
        .map(|c| (*c as f64 - expected).powi(2) / expected)
        .sum()
}

/// Every job of a query with what the jobs table keeps of its answer.
async fn stored(sb: &Sandbox, query_id: &str) -> Vec<(String, String, Value)> {
    let store = Store::open(&sb.coordinator_config.coordinator.database_url)
        .await
        .unwrap();
    let mut out = Vec::new();
    for (job_id, node, _) in store.jobs_of(query_id).await.unwrap() {
        let answer = store
            .job_answer(&job_id)
            .await
            .unwrap()
            .map(|t| serde_json::from_str(&t).unwrap())
            .unwrap_or(Value::Null);
        out.push((job_id, node, answer));
    }
    store.close().await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_keeps_only_masked_vectors_that_look_random() {
    let sb = Sandbox::start(SandboxOptions::new(400, 89)).await.unwrap();
    let study = sandbox::secure_study();
    sb.register_study(&study).await.unwrap();
    // A histogram of 100 one-year bins: 102 small counts per node.
    let edges: Vec<String> = (18..=118).map(|e| e.to_string()).collect();
    let json = format!(
        r#"{{"analysis": {{"histogram": {{"variable": "age", "edges": [{}]}}}}}}"#,
        edges.join(", ")
    );
    let client = sb.client(sandbox::RESEARCHER).await.unwrap();
    let r = client
        .run_query(
            &study.id,
            &Query::from_json(&json).unwrap(),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(r.status, pb::QueryStatus::Succeeded as i32, "{r:?}");

    let figures: BTreeMap<String, Vec<u128>> = per_site(&sb, &json)
        .into_iter()
        .map(|(node, raw)| match raw {
            RawStats::Histogram { bins, below, above } => {
                let mut v: Vec<u128> = bins.into_iter().map(u128::from).collect();
                v.extend([u128::from(below), u128::from(above)]);
                (node, v)
            }
            other => panic!("{other:?}"),
        })
        .collect();
    let store = Store::open(&sb.coordinator_config.coordinator.database_url)
        .await
        .unwrap();
    let jobs = stored(&sb, &r.query_id).await;
    assert_eq!(jobs.len(), 6, "a key round and a masked round: {jobs:?}");
    let mut all_bytes = Vec::new();
    let mut sum = vec![0u128; 102];
    for (job_id, node, answer) in &jobs {
        let sa = &answer["secure_aggregation"];
        assert!(sa.is_object(), "{node}: the jobs table holds {answer}");
        // The signed statement kept with the job holds no more than the table.
        let (statement, _, _) = store.signature_of(job_id).await.unwrap().unwrap();
        let statement = pb::ResultStatement::decode(statement.as_slice()).unwrap();
        if let Some(keys) = sa.get("public_keys") {
            assert_eq!(keys.as_object().unwrap().len(), 2, "{answer}");
            let Some(pb::result_statement::Outcome::Keys(k)) = statement.outcome else {
                panic!("{node}: {statement:?}")
            };
            assert_eq!(keys_from_pb(k.keys).unwrap().len(), 2);
            continue;
        }
        let bytes = hex::decode(sa["masked"].as_str().unwrap()).unwrap();
        let Some(pb::result_statement::Outcome::Masked(m)) = statement.outcome else {
            panic!("{node}: {statement:?}")
        };
        assert_eq!(m.vector, bytes);
        let masked = vector_from_bytes(&bytes).unwrap();
        let plain = &figures[node];
        assert_eq!(masked.len(), plain.len());
        // No element is the node's figure, or any small count at all.
        assert!(
            masked.iter().all(|w| *w > u128::from(u64::MAX)),
            "{node}: a masked element looks like a count"
        );
        assert!(masked.iter().zip(plain).all(|(m, p)| m != p));
        add_into(&mut sum, &masked);
        all_bytes.extend(bytes);
    }
    // 3 × 102 elements of 16 bytes; 330.5 is the 0.1% critical value.
    let chi = byte_chi_square(&all_bytes);
    assert!(
        chi < 330.5,
        "masked payloads do not look random: chi-square {chi}"
    );
    // Only their sum means anything: the pooled histogram.
    let mut want = vec![0u128; 102];
    figures.values().for_each(|v| add_into(&mut want, v));
    assert_eq!(sum, want);
    store.close().await;
    sb.shutdown().await.unwrap();
}

/// Debits of `study` in a node's privacy ledger.
fn debits(sb: &Sandbox, node: &str, study: &str) -> usize {
    let path = sb.node_configs[node]
        .node
        .state_dir
        .join("privacy.ledger.jsonl");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| serde_json::from_str::<Value>(l).unwrap()["study_id"].as_str() == Some(study))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_dropping_mid_job_leads_to_a_rerun_without_it_or_a_clear_failure() {
    let mut opts = SandboxOptions::with_nodes(4, 300, 97);
    opts.job_timeout_secs = 4;
    let mut sb = Sandbox::prepare(opts).await.unwrap();
    // hospital-d sends its keys, then dies with every masked job.
    sb.set_node_options(
        "hospital-d",
        RunOptions {
            drop_masked_jobs: true,
            ..Default::default()
        },
    );
    sb.start_all().await.unwrap();
    let exact = sandbox::exact_study(); // hospitals a, b and c
    let secure = sb.over_all_nodes(sandbox::secure_study());
    let private = sb.over_all_nodes(sandbox::secure_private_study());
    for s in [&exact, &secure, &private] {
        // Over every node is a new definition: the hospitals approve it.
        sb.approve(s).unwrap();
        sb.register_study(s).await.unwrap();
    }
    let count = r#"{"cohort": {"compare": {"variable": "age", "op": ">=", "value": 60}}, "analysis": {"count": {}}}"#;

    // Exact: the re-run over a, b and c gives their exact pooled count.
    let client = sb.client(sandbox::RESEARCHER).await.unwrap();
    let submitted = client
        .run_query(
            &secure.id,
            &Query::from_json(count).unwrap(),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let r = plexus::client::outcome(&submitted).unwrap();
    let want = ask(&sb, sandbox::RESEARCHER, &exact.id, count)
        .await
        .unwrap();
    assert_eq!(r.value, want.value);
    assert_eq!(r.provenance.answered, 3);
    let d = r.provenance.node("hospital-d").unwrap();
    assert_eq!(d.status, NodeStatus::Missing, "{d:?}");
    assert!(
        d.detail
            .as_deref()
            .unwrap()
            .contains("left out of secure aggregation after attempt 1"),
        "{d:?}"
    );
    assert!(
        r.provenance
            .notes
            .iter()
            .any(|n| n.contains("attempt 1: hospital-d") && n.contains("fresh keys")),
        "{:?}",
        r.provenance.notes
    );
    // Never an unmasked figure: the first attempt's masked vectors of a,
    // b and c, without d's, sum to noise, not to a count.
    let jobs = stored(&sb, &submitted.query_id).await;
    let mut sessions: BTreeMap<String, (usize, Vec<u128>)> = BTreeMap::new();
    for (_, _, answer) in &jobs {
        let sa = &answer["secure_aggregation"];
        if let Some(masked) = sa.get("masked") {
            let v = vector_from_bytes(&hex::decode(masked.as_str().unwrap()).unwrap()).unwrap();
            let entry = sessions
                .entry(sa["session_id"].as_str().unwrap().to_string())
                .or_insert((0, vec![0u128; 1]));
            entry.0 += 1;
            add_into(&mut entry.1, &v);
        }
    }
    assert_eq!(sessions.len(), 2, "{jobs:?}");
    let PooledValue::Count { n } = &want.value else {
        panic!()
    };
    let total = u128::from(n.count.unwrap());
    let sums: Vec<u128> = sessions.values().map(|(_, v)| v[0]).collect();
    assert!(
        sums.contains(&total),
        "the complete session sums to the count"
    );
    assert!(
        sums.iter()
            .any(|s| *s != total && *s > u128::from(u64::MAX)),
        "the incomplete session's sum is no figure: {sums:?}"
    );

    // A fit whose first round loses d starts again without it, round by
    // round over one session: the same model as the plain fit over a, b, c.
    let glm = r#"{"analysis": {"glm": {"family": "gaussian", "outcome": "sbp", "covariates": ["age", "sex"]}}}"#;
    let fitted = ask(&sb, sandbox::RESEARCHER, &secure.id, glm)
        .await
        .unwrap();
    let plain = ask(&sb, sandbox::RESEARCHER, &exact.id, glm).await.unwrap();
    assert_close(
        &serde_json::to_value(&plain.value).unwrap(),
        &serde_json::to_value(&fitted.value).unwrap(),
        glm,
    );
    assert_eq!(
        fitted.provenance.node("hospital-d").unwrap().status,
        NodeStatus::Missing
    );

    // Under differential privacy the re-run costs nothing twice: a, b and
    // c answer it from their ledgers' caches.
    let r = ask(&sb, sandbox::RESEARCHER, &private.id, count)
        .await
        .unwrap();
    let report = r.privacy.clone().unwrap();
    assert!((report.charged_rho - 0.01).abs() < 1e-12, "{report:?}");
    for node in ["hospital-a", "hospital-b", "hospital-c"] {
        let charge = report.nodes.iter().find(|c| c.node == node).unwrap();
        assert!((charge.charged_rho - 0.01).abs() < 1e-12, "{charge:?}");
        assert_eq!(debits(&sb, node, &private.id), 1, "{node}");
    }
    // Three nodes' noise in the pooled count, not four, around the count.
    let sd = report.count_noise_sd.unwrap();
    assert!((sd - (3.0f64 / 0.02).sqrt()).abs() < 1e-9, "{sd}");
    let PooledValue::Count { n: noised } = &r.value else {
        panic!("{r:?}")
    };
    let error = noised.count.unwrap() as f64 - total as f64;
    assert!(error.abs() < 6.0 * sd, "{error} off with sd {sd}");
    // A noised summary states its noise, from every roster node's receipt.
    let r = ask(
        &sb,
        sandbox::RESEARCHER,
        &private.id,
        r#"{"analysis": {"summary": {"variable": "sbp"}}}"#,
    )
    .await
    .unwrap();
    let PooledValue::Summary { noise_sd, ci, .. } = &r.value else {
        panic!("{r:?}")
    };
    assert!(noise_sd.unwrap() > 0.0 && ci.is_some(), "{r:?}");
    assert_eq!(r.privacy.unwrap().nodes.len(), 3);

    // With c gone too, only a and b would remain: a clear failure naming
    // both, and nothing unmasked.
    sb.stop_node("hospital-c").await.unwrap();
    sb.wait_not_live("hospital-c", Duration::from_secs(10))
        .await
        .unwrap();
    let e = ask(&sb, sandbox::RESEARCHER, &secure.id, count)
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable, "{e}");
    for needle in ["hospital-c", "hospital-d", "no node's answer was unmasked"] {
        assert!(e.message.contains(needle), "{needle}: {e}");
    }
    sb.shutdown().await.unwrap();
}

/// A node's job runner driven directly, with jobs signed by the sandbox's
/// coordinator key: what a coordinator could send, honest or not.
struct Node {
    runner: plexus_node::job::JobRunner,
    key: plexus_tls::SigningKey,
    study: plexus_core::StudyDefinition,
}

impl Node {
    fn job(&self, query: &str, secure: pb::SecureAggregation) -> pb::SignedJob {
        let query = Query::from_json(query).unwrap();
        let now = chrono::Utc::now().timestamp_millis();
        let mut id = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id).unwrap();
        let job = pb::Job {
            job_id: hex::encode(id),
            study_id: self.study.id.clone(),
            purpose: Some((&self.study.purpose().unwrap()).into()),
            query_hash: query.hash(),
            query: Some(pb::Query::from(&query)),
            min_cell_size: 5,
            deadline_unix_ms: now + 60_000,
            issued_unix_ms: now,
            audience: "hospital-a".into(),
            privacy: Some(pb::JobPrivacy {
                exact: true,
                ..Default::default()
            }),
            secure_aggregation: Some(secure),
            study_definition_hash: self.study.definition_hash(),
            ..Default::default()
        };
        let bytes = job.encode_to_vec();
        pb::SignedJob {
            signature: self.key.sign(&bytes),
            job: bytes,
        }
    }

    async fn send(&self, query: &str, secure: pb::SecureAggregation) -> pb::job_result::Outcome {
        let signed = self.job(query, secure);
        match self.runner.take(signed).await.unwrap() {
            pb::node_message::Msg::Result(r) => r.outcome.unwrap(),
            other => panic!("expected a result, got {other:?}"),
        }
    }

    async fn keys(&self, session: &str, nodes: &[&str]) -> pb::job_result::Outcome {
        let request = pb::SecureAggregation {
            session_id: session.into(),
            step: Some(pb::secure_aggregation::Step::KeyRequest(pb::KeyRequest {
                nodes: nodes.iter().map(|n| n.to_string()).collect(),
            })),
        };
        self.send(COUNT, request).await
    }

    async fn mask(&self, roster: &Roster, step: u32) -> pb::job_result::Outcome {
        let request = pb::SecureAggregation {
            session_id: roster.session_id.clone(),
            step: Some(pb::secure_aggregation::Step::Mask(pb::MaskRequest {
                roster: Some(pb::Roster::from(roster)),
                step,
            })),
        };
        self.send(COUNT, request).await
    }

    /// hospital-a's keys for a new session over a, b and c, and the
    /// others' key pairs made here.
    async fn session(&self, session: &str) -> (Roster, BTreeMap<String, KeyPairs>) {
        let nodes = ["hospital-a", "hospital-b", "hospital-c"];
        let pb::job_result::Outcome::Keys(k) = self.keys(session, &nodes).await else {
            panic!("no keys")
        };
        assert_eq!(k.min_cell_size, 5);
        let mut public = BTreeMap::new();
        public.insert("hospital-a".to_string(), keys_from_pb(k.keys).unwrap());
        let mut others = BTreeMap::new();
        for n in &nodes[1..] {
            let kp = KeyPairs::generate(session, n, nodes).unwrap();
            public.insert(n.to_string(), kp.public_keys().clone());
            others.insert(n.to_string(), kp);
        }
        (Roster::new(session, public), others)
    }
}

const COUNT: &str = r#"{"analysis": {"count": {}}}"#;

fn refused(outcome: pb::job_result::Outcome, needle: &str) {
    let pb::job_result::Outcome::Error(e) = outcome else {
        panic!("not refused: {outcome:?}")
    };
    assert_eq!(
        plexus_proto::convert::code_from_i32(e.code),
        ErrorCode::Policy,
        "{e:?}"
    );
    assert!(e.message.contains(needle), "{needle}: {}", e.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_small_changed_and_foreign_rosters() {
    let sb = Sandbox::prepare(SandboxOptions::new(200, 101))
        .await
        .unwrap();
    let config = sb.node_configs["hospital-a"].clone();
    let node = Node {
        runner: plexus_node::open_runner(config.clone(), RunOptions::default())
            .await
            .unwrap(),
        key: plexus_tls::SigningKey::load(&sb.coordinator_config.coordinator.signing_key).unwrap(),
        study: sandbox::secure_study(),
    };

    // An honest session: hospital-a masks its count; with b and c adding
    // masked zeros, the sum is a's count.
    let s1 = "11111111111111111111111111111111";
    let (roster, others) = node.session(s1).await;
    let pb::job_result::Outcome::Masked(m) = node.mask(&roster, 1).await else {
        panic!("no masked answer")
    };
    assert_eq!(m.roster_digest, roster.digest());
    let mut sum = vector_from_bytes(&m.vector).unwrap();
    for (_, kp) in others {
        let masker = kp.agree(&roster).unwrap();
        add_into(&mut sum, &masker.mask(1, &[0]).unwrap());
    }
    let RawStats::Count(want) = per_site(&sb, COUNT)[0].1 else {
        panic!()
    };
    assert_eq!(sum, vec![u128::from(want)]);

    // The same session with one key changed: refused.
    let mut changed = roster.clone();
    changed.nodes[1].keys.values_mut().next().unwrap()[0] ^= 1;
    refused(node.mask(&changed, 2).await, "differs from the roster");
    // The same step twice: refused.
    refused(node.mask(&roster, 1).await, "already masked step 1");

    // A session of two nodes: no keys are made.
    refused(
        node.keys(
            "22222222222222222222222222222222",
            &["hospital-a", "hospital-b"],
        )
        .await,
        "at least 3",
    );
    // A roster of two in a session asked of three: refused.
    let s3 = "33333333333333333333333333333333";
    let (roster, _) = node.session(s3).await;
    let mut two = roster.clone();
    two.nodes.retain(|n| n.node != "hospital-c");
    two.nodes
        .iter_mut()
        .for_each(|n| n.keys.retain(|p, _| p != "hospital-c"));
    refused(node.mask(&two, 1).await, "at least 3");

    // A roster without this node, or with keys for it it did not make.
    let s4 = "44444444444444444444444444444444";
    let (roster, _) = node.session(s4).await;
    let mut foreign = roster.clone();
    foreign.nodes[0].node = "hospital-z".into();
    foreign.nodes.rotate_left(1);
    for n in &mut foreign.nodes {
        if let Some(k) = n.keys.remove("hospital-a") {
            n.keys.insert("hospital-z".into(), k);
        }
    }
    refused(node.mask(&foreign, 1).await, "does not name this node");
    let s5 = "55555555555555555555555555555555";
    let (roster, _) = node.session(s5).await;
    let mut forged = roster.clone();
    forged.nodes[0].keys.values_mut().next().unwrap()[7] ^= 0x40;
    refused(node.mask(&forged, 1).await, "not the one this node made");
    // A session it never made keys for.
    let (mut stranger, _) = node.session("66666666666666666666666666666666").await;
    stranger.session_id = "77777777777777777777777777777777".into();
    refused(node.mask(&stranger, 1).await, "holds no keys");

    // Every refusal is in the node's own log.
    let log =
        plexus_node::log::JobLog::read_all(&config.node.state_dir.join("jobs.log.jsonl")).unwrap();
    let refusals = log.iter().filter(|e| e.outcome == "refused:policy").count();
    assert_eq!(refusals, 7, "{log:#?}");
    assert!(log
        .iter()
        .any(|e| e.detail.contains("values sent masked") && e.outcome == "released"));
}

/// A hospital that reviews a study's results before they leave refuses
/// that study's secure-aggregation jobs: its data steward could see only a
/// masked vector. With two nodes left the query fails, naming the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reviewing_a_study_refuses_its_secure_aggregation_jobs() {
    let mut sb = Sandbox::prepare(SandboxOptions::new(200, 103))
        .await
        .unwrap();
    sb.node_configs
        .get_mut("hospital-c")
        .unwrap()
        .policy
        .review
        .insert(sandbox::SECURE_STUDY.to_string());
    sb.start_all().await.unwrap();
    let study = sandbox::secure_study();
    sb.register_study(&study).await.unwrap();
    let e = ask(
        &sb,
        sandbox::RESEARCHER,
        &study.id,
        r#"{"analysis": {"count": {}}}"#,
    )
    .await
    .unwrap_err();
    assert!(e.message.contains("hospital-c"), "{e:?}");
    assert!(e.message.contains("policy.review"), "{e:?}");
    let log = plexus_node::log::JobLog::read_all(
        &sb.node_configs["hospital-c"]
            .node
            .state_dir
            .join("jobs.log.jsonl"),
    )
    .unwrap();
    assert!(log
        .iter()
        .any(|l| l.outcome == "refused:policy" && l.detail.contains("masked vector")));
    sb.shutdown().await.unwrap();
}
