//! Gradient-boosted trees over three nodes, noise off: the ensemble that
//! comes back through signed jobs, the coordinator's checks and pooling is
//! the one the protocol trains from the union of the sites' consenting
//! complete cases (itself equal to a centralised histogram GBDT, proved in
//! `plexus_core::models::gbdt`'s tests), and a study that cannot offer it
//! refuses it naming the rule.

use plexus_core::models::fit::{fit_locally, RoundStats};
use plexus_core::models::gbdt::{GbdtData, GbdtModel, GbdtStats, GbdtTrainer, Loss, Slot};
use plexus_core::pool::PooledValue;
use plexus_core::query::AnalysisKind;
use plexus_core::{Dictionary, ErrorCode, Query, StudyDefinition};
use plexus_sandbox::reference::model_columns;
use plexus_sandbox::synth::Patient;
use plexus_tests::tools::{model_script, MODEL_TOOLS};
use plexus_tests::{ask, consenting, sandbox, today, Sandbox, SandboxOptions};

const QUERY: &str = r#"{"cohort": {"compare": {"variable": "hypertension", "op": "=", "value": true}},
    "analysis": {"gbdt": {"outcome": "death",
        "covariates": ["age", "sex", "smoking", "diabetes", "bmi", "aaa_diameter"],
        "trees": 12, "depth": 3, "learning_rate": 0.3, "bins": 16, "validation": true}}}"#;

/// The exact validation study, allowing boosted trees.
fn trees_study() -> StudyDefinition {
    let mut s = sandbox::validation_study();
    s.analyses.push(AnalysisKind::Gbdt);
    s
}

/// ONNX Runtime's scores of the exported model equal Plexus's own: the
/// probability (or a squared loss's prediction) to 1e-6, in float32.
fn onnx_agrees(model: &GbdtModel, rows: &[Vec<f64>], test: &str) {
    let Some(python) = MODEL_TOOLS.python(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (onnx, features, out) = (
        dir.path().join("model.onnx"),
        dir.path().join("features.csv"),
        dir.path().join("scores.csv"),
    );
    std::fs::write(&onnx, plexus_proto::onnx::gbdt_to_onnx(model)).unwrap();
    let csv: Vec<String> = rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    std::fs::write(&features, csv.join("\n")).unwrap();
    let run = std::process::Command::new(python)
        .arg(model_script("score_onnx.py"))
        .args([&onnx, &features, &out])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let scored = std::fs::read_to_string(&out).unwrap();
    let mut worst = 0.0f64;
    for (line, r) in scored.lines().zip(rows) {
        let got: Vec<f64> = line.split(',').map(|v| v.parse().unwrap()).collect();
        let want = model.predict(r);
        let column = if model.loss == Loss::Logistic { 1 } else { 0 };
        // A squared loss's prediction is on the outcome's scale: relative.
        let scale = if column == 1 {
            1.0
        } else {
            want.abs().max(1.0)
        };
        worst = worst.max((got[column] - want).abs() / scale);
    }
    assert_eq!(scored.lines().count(), rows.len());
    assert!(worst <= 1e-6, "{test}: ONNX Runtime differs by {worst}");
    eprintln!(
        "{test}: ONNX Runtime within {worst:e} of Plexus over {} patients",
        rows.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boosted_trees_through_the_network_equal_the_protocol_on_the_union() {
    let sb = Sandbox::start(SandboxOptions::new(700, 41)).await.unwrap();
    let study = trees_study();
    sb.approve(&study).unwrap();
    sb.register_study(&study).await.unwrap();
    sb.wait_all_live().await.unwrap();

    let got = ask(&sb, sandbox::RESEARCHER, &study.id, QUERY)
        .await
        .unwrap();
    let PooledValue::Gbdt(g) = &got.value else {
        panic!("not trees: {got:?}")
    };

    // The same protocol in-process on each site's consenting complete cases.
    let dict = Dictionary::cardiovascular();
    let query = Query::from_json(QUERY).unwrap();
    let options = query.analysis.gbdt_options().unwrap();
    let features = query.analysis.gbdt_features(&dict).unwrap();
    let purpose = study.purpose().unwrap();
    let variables = [
        "age",
        "sex",
        "smoking",
        "diabetes",
        "bmi",
        "aaa_diameter",
        "death",
    ];
    let mut sites = Vec::new();
    let mut n = 0;
    for s in &sb.sites {
        let patients: Vec<&Patient> = consenting(s, &purpose, today())
            .into_iter()
            .filter(|p| p.hypertension)
            .collect();
        let cols = model_columns(&patients);
        let rows = plexus_core::models::design::complete_rows(&cols, &variables).unwrap();
        n += rows.len();
        sites.push(
            GbdtData::new(
                &options,
                features.clone(),
                &cols,
                &rows,
                "death",
                plexus_node::log::holdout_salt(&sb.node_configs[&s.name].node.state_dir, &study.id)
                    .unwrap(),
                5,
            )
            .unwrap(),
        );
    }
    let k = u64::from(plexus_core::DEFAULT_MIN_CELL_SIZE);
    let want = fit_locally(GbdtTrainer::new(options, features), |it| {
        let mut total = GbdtStats::zero(0);
        for s in &sites {
            total.merge(&s.round(it.gbdt.as_ref().unwrap(), k)?);
        }
        Ok(total)
    })
    .unwrap();

    // A fifth of each site's patients held out: they never train, and
    // their loss is measured before every tree.
    assert_eq!((g.n + g.validation_n) as usize, n);
    assert_eq!(g.n, want.n);
    assert_eq!(g.validation_loss.len(), 12);
    for (a, b) in g.validation_loss.iter().zip(&want.validation_loss) {
        assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    }
    assert_eq!(g.rounds, want.rounds);
    assert_eq!(g.model.trees.len(), 12, "{:?}", g.stopped);
    assert!((g.model.base_score - want.model.base_score).abs() < 1e-12);
    for (t, (a, b)) in g.model.trees.iter().zip(&want.model.trees).enumerate() {
        for (s, (x, y)) in a.slots.iter().zip(&b.slots).enumerate() {
            match (x, y) {
                (Slot::Leaf { value: u }, Slot::Leaf { value: v }) => {
                    assert!((u - v).abs() < 1e-9, "tree {t} leaf {s}: {u} vs {v}")
                }
                _ => assert_eq!(x, y, "tree {t} slot {s}"),
            }
        }
    }
    assert!(
        g.training_loss.windows(2).all(|w| w[1] < w[0]),
        "{:?}",
        g.training_loss
    );
    assert!(
        g.importance.iter().any(|i| i.feature == "age"),
        "{:?}",
        g.importance
    );
    assert_eq!(got.provenance.answered, 3);
    // The model is the researcher's to keep: its JSON scores as trained.
    let json = serde_json::to_string(&g.model).unwrap();
    let back: plexus_core::models::gbdt::GbdtModel = serde_json::from_str(&json).unwrap();
    assert_eq!(back, g.model);

    // Exported as ONNX, ONNX Runtime scores every patient as Plexus does.
    let rows: Vec<Vec<f64>> = sb
        .sites
        .iter()
        .flat_map(|s| {
            let patients: Vec<&Patient> = consenting(s, &purpose, today())
                .into_iter()
                .filter(|p| p.hypertension)
                .collect();
            g.model.feature_rows(&model_columns(&patients)).unwrap()
        })
        .collect();
    onnx_agrees(&g.model, &rows, "boosted_trees_through_the_network");

    // A squared loss, on a numeric outcome, the same way.
    let squared = ask(
        &sb,
        sandbox::RESEARCHER,
        &study.id,
        r#"{"analysis": {"gbdt": {"loss": "squared", "outcome": "age",
            "covariates": ["sex", "smoking", "diabetes", "death"], "trees": 5, "depth": 2}}}"#,
    )
    .await
    .unwrap();
    let PooledValue::Gbdt(s) = &squared.value else {
        panic!("not trees: {squared:?}")
    };
    assert_eq!(s.model.trees.len(), 5, "{:?}", s.stopped);
    let rows: Vec<Vec<f64>> = sb
        .sites
        .iter()
        .flat_map(|site| {
            let patients: Vec<&Patient> = consenting(site, &purpose, today()).into_iter().collect();
            s.model.feature_rows(&model_columns(&patients)).unwrap()
        })
        .collect();
    onnx_agrees(
        &s.model,
        &rows,
        "boosted_trees_through_the_network (squared)",
    );

    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boosted_trees_are_refused_where_they_are_not_offered_yet() {
    let sb = Sandbox::start(SandboxOptions::new(200, 43)).await.unwrap();
    // Under differential privacy.
    let mut private = sandbox::demo_study();
    private.analyses.push(AnalysisKind::Gbdt);
    // Under secure aggregation.
    let mut secure = sandbox::secure_study();
    secure.analyses.push(AnalysisKind::Gbdt);
    for study in [&private, &secure] {
        sb.approve(study).unwrap();
        sb.register_study(study).await.unwrap();
    }
    sb.register_study(&sandbox::validation_study())
        .await
        .unwrap();
    sb.wait_all_live().await.unwrap();
    let e = ask(&sb, sandbox::RESEARCHER, &private.id, QUERY)
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Policy, "{e}");
    assert!(e.message.contains("differential privacy"), "{e}");
    let e = ask(&sb, sandbox::RESEARCHER, &secure.id, QUERY)
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Policy, "{e}");
    assert!(e.message.contains("secure aggregation"), "{e}");
    // A study that does not list gbdt refuses it, as any analysis.
    let e = ask(&sb, sandbox::RESEARCHER, sandbox::VALIDATION_STUDY, QUERY)
        .await
        .unwrap_err();
    assert!(e.message.contains("gbdt"), "{e}");
    // Settings out of range are refused before any job, naming the setting.
    let bad = QUERY.replace(r#""depth": 3"#, r#""depth": 9"#);
    let e = ask(&sb, sandbox::RESEARCHER, &secure.id, &bad)
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Invalid, "{e}");
    assert!(e.message.contains("\"depth\""), "{e}");
    sb.shutdown().await.unwrap();
}

/// A hostile coordinator, signing jobs itself, sends a tree that splits
/// between two thresholds the hospital released (to tell apart fewer than
/// k patients): the node refuses with the tree rule, names no count, and
/// logs the refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_a_tree_split_where_it_released_no_threshold() {
    use plexus_core::models::fit::Iteration;
    use plexus_core::models::gbdt::{GbdtRound, Tree};
    use plexus_core::NodeStats;
    use plexus_proto::v1 as pb;
    use plexus_tests::jobs::{exact_job, sign};

    let sb = Sandbox::prepare(SandboxOptions::new(300, 47))
        .await
        .unwrap();
    let study = trees_study();
    sb.approve_at("hospital-a", &study).unwrap();
    let node = plexus_node::open_runner(
        sb.node_configs["hospital-a"].clone(),
        plexus_node::RunOptions::default(),
    )
    .await
    .unwrap();
    let key = plexus_tls::SigningKey::load(&sb.coordinator_config.coordinator.signing_key).unwrap();
    let query = Query::from_json(QUERY).unwrap();
    let mut next = 0u32;
    let mut send = |growing: Tree| {
        next += 1;
        let mut job = exact_job(
            &study,
            &query,
            &format!("{next:032x}"),
            "hospital-a",
            chrono::Utc::now().timestamp_millis(),
        );
        job.iteration = Some(pb::Iteration::from(&Iteration {
            round: 2,
            gbdt: Some(GbdtRound {
                base_score: Some(-1.0),
                trees: vec![],
                growing: Some(growing),
            }),
            ..Iteration::default()
        }));
        let signed = sign(&key, &job);
        let node = &node;
        async move {
            let Some(pb::node_message::Msg::Result(r)) = node.take(signed).await else {
                panic!("the node sent no result")
            };
            r.outcome.unwrap()
        }
    };

    // An honest root round: the node's segments of bmi (feature 5 of the
    // query's: age, sex=F, sex=M, smoking x3, diabetes, bmi...).
    let dict = Dictionary::cardiovascular();
    let features = query.analysis.gbdt_features(&dict).unwrap();
    let bmi = features.iter().position(|f| f.name == "bmi").unwrap();
    let root = Tree::open_root(3);
    let pb::job_result::Outcome::Stats(stats) = send(root.clone()).await else {
        panic!("the honest round was refused")
    };
    let NodeStats::Gbdt(g) = NodeStats::try_from(stats).unwrap() else {
        panic!("not tree statistics")
    };
    let ends = &g.slots[0].features[bmi].ends;
    let inside = (0..features[bmi].thresholds.len() as u32)
        .find(|t| !ends.contains(t))
        .expect("at 300 patients some bmi bins are merged");
    let released = ends[0];

    // A split at a released end is answered; one inside a segment is not.
    let mut split = root.clone();
    split.slots[0] = Slot::Split {
        feature: bmi as u32,
        threshold: released,
    };
    split.slots[1] = Slot::Open;
    split.slots[2] = Slot::Open;
    assert!(matches!(
        send(split.clone()).await,
        pb::job_result::Outcome::Stats(_)
    ));
    split.slots[0] = Slot::Split {
        feature: bmi as u32,
        threshold: inside,
    };
    let pb::job_result::Outcome::Error(e) = send(split).await else {
        panic!("a split inside a segment was answered")
    };
    let e = plexus_core::Error::from(e);
    assert_eq!(e.code, ErrorCode::Disclosure, "{e}");
    assert!(e.message.starts_with("tree rule:"), "{e}");
    assert!(!e.message.contains(" 300"), "{e}");

    let log = sb.node_configs["hospital-a"]
        .node
        .state_dir
        .join("jobs.log.jsonl");
    let text = std::fs::read_to_string(log).unwrap();
    assert!(text.contains("tree rule"), "{text}");
}
