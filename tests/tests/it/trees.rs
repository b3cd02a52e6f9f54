//! Gradient-boosted trees over three nodes, noise off: the ensemble that
//! comes back through signed jobs, the coordinator's checks and pooling is
//! the one the protocol trains from the union of the sites' consenting
//! complete cases (itself equal to a centralised histogram GBDT, proved in
//! `plexus_core::models::gbdt`'s tests), and a study that cannot offer it
//! refuses it naming the rule.

use plexus_core::models::design::{ColumnData, Columns};
use plexus_core::models::fit::{fit_locally, RoundStats};
use plexus_core::models::gbdt::{GbdtData, GbdtStats, GbdtTrainer, Slot};
use plexus_core::pool::PooledValue;
use plexus_core::query::AnalysisKind;
use plexus_core::{Dictionary, ErrorCode, Query, StudyDefinition};
use plexus_sandbox::synth::Patient;
use plexus_tests::{ask, consenting, sandbox, today, Sandbox, SandboxOptions};

const QUERY: &str = r#"{"cohort": {"compare": {"variable": "hypertension", "op": "=", "value": true}},
    "analysis": {"gbdt": {"outcome": "death",
        "covariates": ["age", "sex", "smoking", "diabetes", "bmi", "aaa_diameter"],
        "trees": 12, "depth": 3, "learning_rate": 0.3, "bins": 16}}}"#;

/// The exact validation study, allowing boosted trees.
fn trees_study() -> StudyDefinition {
    let mut s = sandbox::validation_study();
    s.analyses.push(AnalysisKind::Gbdt);
    s
}

/// One site's columns for the query's variables, built from the patients
/// independently of the node's code: levels in the dictionary's order,
/// missing values as NaN.
fn columns(patients: &[&Patient]) -> Columns {
    let num = |f: &dyn Fn(&Patient) -> Option<f64>| {
        ColumnData::Numeric(patients.iter().map(|p| f(p).unwrap_or(f64::NAN)).collect())
    };
    let lev =
        |f: &dyn Fn(&Patient) -> u32| ColumnData::Levels(patients.iter().map(|p| f(p)).collect());
    let mut c = Columns::new();
    c.insert("age".into(), num(&|p| Some(p.age as f64)));
    c.insert("bmi".into(), num(&|p| p.bmi));
    c.insert("aaa_diameter".into(), num(&|p| p.aaa_diameter));
    c.insert("sex".into(), lev(&|p| u32::from(p.sex == "M")));
    c.insert(
        "smoking".into(),
        lev(&|p| match p.smoking.as_str() {
            "never" => 0,
            "former" => 1,
            _ => 2,
        }),
    );
    c.insert("diabetes".into(), lev(&|p| u32::from(p.diabetes)));
    c.insert("death".into(), lev(&|p| u32::from(p.death)));
    c
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
        let cols = columns(&patients);
        let rows = plexus_core::models::design::complete_rows(&cols, &variables).unwrap();
        n += rows.len();
        sites.push(
            GbdtData::new(
                options.loss,
                options.depth,
                features.clone(),
                &cols,
                &rows,
                "death",
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

    assert_eq!(g.n as usize, n);
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
