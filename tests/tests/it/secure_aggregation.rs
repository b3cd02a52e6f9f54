//! Secure aggregation end to end: the pooled results equal the plain
//! path's; a cell a node suppresses is suppressed in the pool as in the
//! clear, counted but never named; the coordinator keeps masked vectors
//! that look random and give away no node's figures; a node dropping
//! after the key round still yields the survivors' exact sum from one
//! session, with no re-run; a study under release review is answered once
//! the steward approves. `secure_aggregation/harness.rs` plays a hostile
//! coordinator against real node runners.

#[path = "secure_aggregation/harness.rs"]
mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use prost::Message;
use serde_json::Value;

use plexus_coordinator::store::Store;
use plexus_core::disclosure::{apply, Rules};
use plexus_core::pool::{NodeStatus, PooledValue};
use plexus_core::secagg::{add_into, encode};
use plexus_core::{Dictionary, ErrorCode, NodeStats, Query, RawStats};
use plexus_node::RunOptions;
use plexus_proto::convert::vector_from_bytes;
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
/// another order than the plain path's floating point) and that where the
/// plain pool names the nodes that suppressed or merged a value, secure
/// aggregation says how many: `suppressed_at` and `merged_at` are compared
/// by length with `suppressed_by` and `merged_by`.
pub fn assert_close(a: &Value, b: &Value, at: &str) {
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
            for (named, counted) in [
                ("suppressed_at", "suppressed_by"),
                ("merged_at", "merged_by"),
            ] {
                let names = x.get(named).and_then(Value::as_array).map_or(0, Vec::len);
                let count = y.get(counted).and_then(Value::as_u64).unwrap_or(0) as usize;
                assert_eq!(names, count, "{at}.{named}");
                assert!(
                    y.get(named).is_none(),
                    "{at}: secure aggregation names nodes"
                );
            }
            let skip = ["suppressed_at", "suppressed_by", "merged_at", "merged_by"];
            let kx: BTreeSet<_> = x.keys().filter(|k| !skip.contains(&k.as_str())).collect();
            let ky: BTreeSet<_> = y.keys().filter(|k| !skip.contains(&k.as_str())).collect();
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
async fn a_cell_a_node_suppresses_is_suppressed_in_the_pool_as_in_the_clear() {
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
        // What the nodes released and what they suppressed is the same in
        // both: no pooled count, the released parts as a lower bound. The
        // plain pool says who suppressed; secure aggregation how many.
        let small = counts.iter().filter(|n| **n < 5).count();
        assert_eq!(pn.count, None, "{counts:?}: {pn:?}");
        assert_eq!(sn.count, None, "{counts:?}: {sn:?}");
        assert_eq!(sn.at_least, pn.at_least, "{counts:?}");
        assert_eq!(pn.suppressed_at.len(), small);
        assert_eq!(sn.suppressed_by as usize, small);
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
    assert_eq!(n.suppressed_by, 3, "{n:?}");
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
    // A histogram of 100 one-year bins: 102 small counts per node, and as
    // many suppression indicators.
    let edges: Vec<String> = (18..=118).map(|e| e.to_string()).collect();
    let json = format!(
        r#"{{"analysis": {{"histogram": {{"variable": "age", "edges": [{}]}}}}}}"#,
        edges.join(", ")
    );
    let client = sb.client(sandbox::RESEARCHER).await.unwrap();
    let query = Query::from_json(&json).unwrap();
    let r = client
        .run_query(&study.id, &query, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(r.status, pb::QueryStatus::Succeeded as i32, "{r:?}");

    // What each node would release in the clear, encoded as it is masked.
    let dict = Dictionary::cardiovascular();
    let figures: BTreeMap<String, Vec<u128>> = per_site(&sb, &json)
        .into_iter()
        .map(|(node, raw)| {
            let clear: NodeStats = apply(raw, Rules::new(5));
            (node, encode(&clear, &query.analysis, &dict).unwrap())
        })
        .collect();
    let store = Store::open(&sb.coordinator_config.coordinator.database_url)
        .await
        .unwrap();
    let jobs = stored(&sb, &r.query_id).await;
    assert_eq!(jobs.len(), 9, "keys, masks and unmasking: {jobs:?}");
    let mut all_bytes = Vec::new();
    let mut sum = vec![0u128; 204];
    for (job_id, node, answer) in &jobs {
        let sa = &answer["secure_aggregation"];
        assert!(sa.is_object(), "{node}: the jobs table holds {answer}");
        let (statement, _, _) = store.signature_of(job_id).await.unwrap().unwrap();
        let statement = pb::ResultStatement::decode(statement.as_slice()).unwrap();
        if let Some(keys) = sa.get("public_keys") {
            assert_eq!(keys.as_object().unwrap().len(), 2, "{answer}");
            assert!(matches!(
                statement.outcome,
                Some(pb::result_statement::Outcome::Keys(_))
            ));
            continue;
        }
        if sa.get("revealed_shares").is_some() {
            // No dropout: each survivor revealed its shares of the three
            // self masks, and no pair seed.
            assert_eq!(sa["revealed_shares"], 3, "{answer}");
            assert_eq!(sa["revealed_seeds"], 0, "{answer}");
            continue;
        }
        let bytes = hex::decode(sa["masked"].as_str().unwrap()).unwrap();
        let Some(pb::result_statement::Outcome::Masked(m)) = statement.outcome else {
            panic!("{node}: {statement:?}")
        };
        assert_eq!(m.vector, bytes);
        assert_eq!(m.shares.len(), 2, "a share for each other node");
        let masked = vector_from_bytes(&bytes).unwrap();
        let plain = &figures[node];
        assert_eq!(masked.len(), plain.len());
        // No element is the node's figure, or any small count at all.
        assert!(
            masked.iter().all(|w| *w > u128::from(u64::MAX)),
            "{node}: a masked element looks like a count"
        );
        add_into(&mut sum, &masked);
        all_bytes.extend(bytes);
    }
    // 3 × 204 elements of 16 bytes; 330.5 is the 0.1% critical value.
    let chi = byte_chi_square(&all_bytes);
    assert!(
        chi < 330.5,
        "masked payloads do not look random: chi-square {chi}"
    );
    // Even their sum is no figure: the self masks stay on it until the
    // survivors reveal their shares.
    let mut want = vec![0u128; 204];
    figures.values().for_each(|v| add_into(&mut want, v));
    assert!(sum.iter().zip(&want).all(|(s, w)| s != w));
    // The result is the plain pool of the clear releases.
    let pooled = plexus_client::outcome(&r).unwrap();
    let named: Vec<(String, NodeStats)> = per_site(&sb, &json)
        .into_iter()
        .map(|(n, raw)| (n, apply(raw, Rules::new(5))))
        .collect();
    let plain = plexus_core::pool::pool_value(&query.analysis, &dict, &named, 5).unwrap();
    assert_close(
        &serde_json::to_value(&plain).unwrap(),
        &serde_json::to_value(&pooled.value).unwrap(),
        &json,
    );
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
async fn a_node_dropping_after_the_key_round_leaves_the_exact_sum_of_the_others_with_no_rerun() {
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

    // Exact: one session, a, b and c's exact pooled count.
    let client = sb.client(sandbox::RESEARCHER).await.unwrap();
    let submitted = client
        .run_query(
            &secure.id,
            &Query::from_json(count).unwrap(),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let r = plexus_client::outcome(&submitted).unwrap();
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
            .contains("dropped from the secure aggregation after the key round"),
        "{d:?}"
    );
    assert!(
        r.provenance
            .notes
            .iter()
            .any(|n| n.contains("hospital-d dropped") && n.contains("no re-run")),
        "{:?}",
        r.provenance.notes
    );
    // One session: 4 key answers, 3 masked answers (d's never came), 3
    // signatures on the survivor list, 3 unmasking answers, of which each
    // revealed the pair seed it shares with d.
    let jobs = stored(&sb, &submitted.query_id).await;
    let sessions: BTreeSet<&str> = jobs
        .iter()
        .filter_map(|(_, _, a)| a["secure_aggregation"]["session_id"].as_str())
        .collect();
    assert_eq!(sessions.len(), 1, "{jobs:?}");
    let kinds = |key: &str| {
        jobs.iter()
            .filter(|(_, _, a)| a["secure_aggregation"].get(key).is_some())
            .count()
    };
    assert_eq!(
        [
            kinds("public_keys"),
            kinds("masked"),
            kinds("signed_survivors"),
            kinds("revealed_seeds")
        ],
        [4, 3, 3, 3],
        "{jobs:?}"
    );
    assert!(jobs
        .iter()
        .filter(|(_, _, a)| a["secure_aggregation"].get("revealed_seeds").is_some())
        .all(|(_, _, a)| a["secure_aggregation"]["revealed_seeds"] == 1));

    // A fit whose first round loses d rests on a, b and c: the same model
    // as the plain fit over them.
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

    // Under differential privacy: a, b and c are charged once and their
    // three noises are in the pooled count.
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
    let sd = report.count_noise_sd.unwrap();
    assert!((sd - (3.0f64 / 0.02).sqrt()).abs() < 1e-9, "{sd}");
    let PooledValue::Count { n: noised } = &r.value else {
        panic!("{r:?}")
    };
    let PooledValue::Count { n } = &want.value else {
        panic!()
    };
    let error = noised.count.unwrap() as f64 - n.count.unwrap() as f64;
    assert!(error.abs() < 6.0 * sd, "{error} off with sd {sd}");
    // The same question again, over all four now that d answers its keys:
    // a, b and c contributed it to a sum over themselves, and a sum over
    // four would give away d's figure by difference. They refuse.
    let e = ask(&sb, sandbox::RESEARCHER, &private.id, count)
        .await
        .unwrap_err();
    assert!(
        e.message
            .contains("already contributed this question's answer to a secure sum over hospital-a, hospital-b, hospital-c"),
        "{e}"
    );

    // With c gone too, too few would survive: a clear failure, and nothing
    // unmasked.
    sb.stop_node("hospital-c").await.unwrap();
    sb.wait_not_live("hospital-c", Duration::from_secs(10))
        .await
        .unwrap();
    let other = r#"{"cohort": {"compare": {"variable": "age", "op": ">=", "value": 70}}, "analysis": {"count": {}}}"#;
    let e = ask(&sb, sandbox::RESEARCHER, &secure.id, other)
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable, "{e}");
    for needle in ["hospital-c", "hospital-d", "no node's answer was unmasked"] {
        assert!(e.message.contains(needle), "{needle}: {e}");
    }
    sb.shutdown().await.unwrap();
}

/// A hospital that reviews a study's results before they leave holds the
/// clear release of a masked job for its data steward, and masks it only
/// on approval: the pooled answer then equals the plain path's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewing_hospital_masks_its_release_only_after_the_steward_approves_it() {
    use plexus_node::review::{Status, Verdict};
    let mut opts = SandboxOptions::new(200, 103);
    opts.job_timeout_secs = 60;
    let mut sb = Sandbox::prepare(opts).await.unwrap();
    sb.node_configs
        .get_mut("hospital-c")
        .unwrap()
        .policy
        .review
        .insert(sandbox::SECURE_STUDY.to_string());
    sb.start_all().await.unwrap();
    let study = sandbox::secure_study();
    let plain = sandbox::exact_study();
    sb.register_study(&study).await.unwrap();
    sb.register_study(&plain).await.unwrap();
    let queue = sb.review_queue("hospital-c").unwrap();
    let client = sb.client(sandbox::RESEARCHER).await.unwrap();
    let count = r#"{"analysis": {"count": {}}}"#;
    let query = Query::from_json(count).unwrap();
    let id = study.id.clone();
    let running =
        tokio::spawn(async move { client.run_query(&id, &query, Duration::from_secs(90)).await });
    // The steward sees the clear release that is to be masked.
    let held = loop {
        let pending: Vec<_> = queue
            .entries()
            .unwrap()
            .into_iter()
            .filter(|e| e.status() == Status::Pending)
            .collect();
        if let Some(e) = pending.into_iter().next() {
            break e;
        }
        if running.is_finished() {
            panic!(
                "the query ended before hospital-c held its result: {:?}",
                running.await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(held.held.secure_aggregation.is_some(), "{held:?}");
    let shown = plexus_node::review::cli::show_json(&held).unwrap();
    let RawStats::Count(mine) = per_site(&sb, count)[2].1 else {
        panic!()
    };
    assert_eq!(
        serde_json::from_value::<NodeStats>(shown["stats"].clone()).unwrap(),
        NodeStats::Count(plexus_core::Cell::Count(mine))
    );
    plexus_node::review::cli::decide(
        &queue,
        &held.held.job_id,
        Verdict::Approved,
        "",
        "steward",
        chrono::Utc::now().timestamp_millis(),
    )
    .unwrap();
    let r = running.await.unwrap().unwrap();
    let pooled = plexus_client::outcome(&r).unwrap();
    let want = ask(&sb, sandbox::RESEARCHER, &plain.id, count)
        .await
        .unwrap();
    assert_eq!(pooled.value, want.value);
    assert_eq!(pooled.provenance.answered, 3);
    let log = plexus_node::log::JobLog::read_outcomes(
        &sb.node_configs["hospital-c"]
            .node
            .state_dir
            .join("jobs.log.jsonl"),
    )
    .unwrap();
    let outcomes: Vec<&str> = log
        .iter()
        .filter(|l| l.job_id == held.held.job_id)
        .map(|l| l.outcome.as_str())
        .collect();
    assert_eq!(outcomes, ["held", "reviewed-approved"], "{log:#?}");
    assert!(log
        .iter()
        .any(|l| l.outcome == "reviewed-approved" && l.detail.contains("sent masked")));
    sb.shutdown().await.unwrap();
}
