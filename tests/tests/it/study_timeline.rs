//! A study's own time logic (`[derived]` in study.toml) on the way to the
//! nodes: the definition registers and comes back with its derived
//! variables and the same hash; the coordinator sends it with each job of
//! such a study; a node reads the derived variables only from a definition
//! that hashes to the approved one, judges them as rules on the
//! definition (never on data), and a node reading patient files refuses a
//! query naming one, saying why. The computation itself, on warehouse
//! nodes holding OMOP data, is checked in `omop.rs`.

use plexus_core::{ErrorCode, Query, StudyDefinition};
use plexus_proto::v1 as pb;
use plexus_tests::jobs::{exact_job, sign};
use plexus_tests::{ask, sandbox, Sandbox, SandboxOptions};

/// The sandbox's exact study with two variables of its own over the
/// cardiovascular dictionary: a death within a year of inclusion, and the
/// days from inclusion to inclusion (a days_between).
fn timeline_study() -> StudyDefinition {
    let mut text = toml::to_string(&sandbox::exact_study()).unwrap();
    text.push_str(
        r#"
        [derived.death_within_year]
        type = "boolean"
        window = { event = "death", origin = "inclusion_date", from = 0, to = 365 }

        [derived.days_included]
        type = "integer"
        min = 0
        max = 36500
        days_between = { from = "inclusion_date", to = "inclusion_date" }
        "#,
    );
    let mut s = StudyDefinition::from_toml(&text).unwrap();
    s.variables
        .extend(["death_within_year".to_string(), "days_included".to_string()]);
    s
}

const ON_DERIVED: &str = r#"{"cohort": {"compare": {"variable": "death_within_year", "op": "=", "value": true}},
                             "analysis": {"count": {}}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_study_with_derived_variables_registers_and_file_nodes_refuse_them_saying_why() {
    let sb = Sandbox::start(SandboxOptions::new(120, 71)).await.unwrap();
    let study = timeline_study();
    sb.register_study(&study).await.unwrap();
    sb.approve(&study).unwrap();

    // As registered: the derived block and the hash hospitals pin.
    let client = sb.client(sandbox::RESEARCHER).await.unwrap();
    let listed = client
        .research()
        .list_studies(pb::ListStudiesRequest {})
        .await
        .unwrap()
        .into_inner()
        .studies
        .into_iter()
        .find(|s| s.id == study.id)
        .unwrap();
    assert_eq!(listed.definition_hash, study.definition_hash());
    let back = StudyDefinition::try_from(listed).unwrap();
    assert_eq!(back, study);
    assert!(toml::to_string(&back)
        .unwrap()
        .contains("[derived.death_within_year]"));

    // The definition travels with the study's jobs and passes each node's
    // check: a query over dictionary variables is answered everywhere.
    let r = ask(
        &sb,
        sandbox::RESEARCHER,
        &study.id,
        r#"{"analysis": {"count": {}}}"#,
    )
    .await
    .unwrap();
    assert_eq!(r.provenance.answered, 3, "{:?}", r.provenance);

    // A query over a derived variable: every node reads patient files,
    // and each refuses naming the variable and the rule.
    let e = ask(&sb, sandbox::RESEARCHER, &study.id, ON_DERIVED)
        .await
        .unwrap_err();
    assert!(
        e.message.contains("derived by the study") && e.message.contains("death_within_year"),
        "{e}"
    );

    // The coordinator refuses, before any node is asked, what the study's
    // own dictionary does not allow.
    let e = ask(
        &sb,
        sandbox::RESEARCHER,
        &study.id,
        r#"{"analysis": {"summary": {"variable": "death_within_year"}}}"#,
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::Invalid, "{e}");
    assert!(!e.message.contains("not in the data dictionary"), "{e}");
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reads_derived_variables_only_from_the_approved_definition() {
    let sb = Sandbox::prepare(SandboxOptions::new(60, 73)).await.unwrap();
    let study = timeline_study();
    sb.approve_at("hospital-a", &study).unwrap();
    let node = plexus_node::open_runner(
        sb.node_configs["hospital-a"].clone(),
        plexus_node::RunOptions::default(),
    )
    .await
    .unwrap();
    let key = plexus_tls::SigningKey::load(&sb.coordinator_config.coordinator.signing_key).unwrap();
    let query = Query::from_json(ON_DERIVED).unwrap();
    let mut next = 0u32;
    let mut refusal = |definition: Vec<u8>| {
        next += 1;
        let mut job = exact_job(
            &study,
            &query,
            &format!("{next:032x}"),
            "hospital-a",
            chrono::Utc::now().timestamp_millis(),
        );
        job.study_definition = definition;
        let signed = sign(&key, &job);
        let node = &node;
        async move {
            let Some(pb::node_message::Msg::Result(r)) = node.take(signed).await else {
                panic!("the node sent no result")
            };
            match r.outcome.unwrap() {
                pb::job_result::Outcome::Error(e) => plexus_core::Error::from(e),
                other => panic!("answered {other:?}"),
            }
        }
    };

    // A hostile coordinator sends a wider window under the approved hash.
    let mut wider = study.clone();
    wider
        .derived
        .get_mut("death_within_year")
        .unwrap()
        .window
        .as_mut()
        .unwrap()
        .to = 3650;
    let e = refusal(serde_json::to_vec(&wider).unwrap()).await;
    assert_eq!(e.code, ErrorCode::Policy, "{e}");
    assert!(e.message.contains("not to the approved"), "{e}");

    // Or leaves the definition out: the variable is then unknown.
    let e = refusal(Vec::new()).await;
    assert_eq!(e.code, ErrorCode::Invalid, "{e}");
    assert!(e.message.contains("death_within_year"), "{e}");

    // Or sends bytes that are no definition at all, under their own hash
    // (which the hospital never approved).
    let e = refusal(b"{not json".to_vec()).await;
    assert_eq!(e.code, ErrorCode::Policy, "{e}");

    // The approved definition: read, and refused by this file node as a
    // rule on the definition, naming the variable.
    let e = refusal(serde_json::to_vec(&study).unwrap()).await;
    assert_eq!(e.code, ErrorCode::Data, "{e}");
    assert!(
        e.message
            .contains("\"death_within_year\" is derived by the study"),
        "{e}"
    );
    assert!(!e.message.chars().any(|c| c.is_ascii_digit()), "{e}");

    // With the definition in hand, the node holds the study to its own
    // list of variables, whatever the coordinator lets through.
    let mut narrow = study.clone();
    narrow.variables.retain(|v| v != "sbp");
    sb.approve_at("hospital-a", &narrow).unwrap();
    let sbp = Query::from_json(r#"{"analysis": {"summary": {"variable": "sbp"}}}"#).unwrap();
    let mut job = exact_job(
        &narrow,
        &sbp,
        &format!("{:032x}", 1000),
        "hospital-a",
        chrono::Utc::now().timestamp_millis(),
    );
    job.study_definition = serde_json::to_vec(&narrow).unwrap();
    let Some(pb::node_message::Msg::Result(r)) = node.take(sign(&key, &job)).await else {
        panic!("the node sent no result")
    };
    let Some(pb::job_result::Outcome::Error(e)) = r.outcome else {
        panic!("answered {:?}", r.outcome)
    };
    let e = plexus_core::Error::from(e);
    assert_eq!(e.code, ErrorCode::Policy, "{e}");
    assert!(e.message.contains("does not allow variable \"sbp\""), "{e}");

    // Every refusal is in the node's own log.
    let log = sb.node_configs["hospital-a"]
        .node
        .state_dir
        .join("jobs.log.jsonl");
    let text = std::fs::read_to_string(log).unwrap();
    let outcomes = text
        .lines()
        .filter(|l| !l.contains(r#""outcome":"accepted""#))
        .count();
    assert_eq!(outcomes, 5, "{text}");
}
