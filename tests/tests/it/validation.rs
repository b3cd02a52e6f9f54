//! Validating prediction models across three nodes (`model_performance`),
//! noise off: models trained elsewhere (scikit-learn logistic regressions
//! and LightGBM, exported to ONNX in the test) are registered with a study,
//! approved by each hospital by hash, run at every node by tract, and their
//! pooled, per-subgroup and per-site metrics equal scikit-learn's on the
//! union of the sites' rows. A model a hospital did not approve, or that
//! changed since, is refused by every node; a model with a forbidden
//! operator, too large, or with inputs the dictionary does not have is
//! refused at registration, naming what is wrong.

use std::collections::BTreeMap;
use std::path::Path;

use plexus_core::models::artefact::resolve_input;
use plexus_core::models::design::{complete_rows, Columns};
use plexus_core::models::performance::{GroupPerformance, PerformanceResult};
use plexus_core::models::registration::PlexusModel;
use plexus_core::pool::{PooledResult, PooledValue};
use plexus_core::query::AnalysisKind;
use plexus_core::{Dictionary, ErrorCode, StudyDefinition};
use plexus_proto::v1 as pb;
use plexus_sandbox::reference::model_columns;
use plexus_sandbox::synth::Patient;
use plexus_tests::tools::{model_script, MODEL_TOOLS};
use plexus_tests::{ask, consenting, sandbox, today, Sandbox, SandboxOptions};

/// The columns of the categorical-only model: few distinct predictions,
/// which the public grid separates.
const CATEGORICAL: [&str; 3] = ["sex=F", "diabetes", "smoking=current"];
/// The columns of the logistic model and LightGBM.
const CONTINUOUS: [&str; 5] = ["age", "bmi", "sbp", "diabetes", "sex=M"];
const THRESHOLDS: &str = "0.1,0.2,0.3";

fn study() -> StudyDefinition {
    let mut s = sandbox::validation_study();
    s.analyses
        .extend([AnalysisKind::ModelPerformance, AnalysisKind::Gbdt]);
    s
}

/// One site's consenting patients as model columns.
fn site_columns(sb: &Sandbox, study: &StudyDefinition) -> Vec<(String, Columns)> {
    let purpose = study.purpose().unwrap();
    sb.sites
        .iter()
        .map(|s| {
            let patients: Vec<&Patient> = consenting(s, &purpose, today());
            (s.name.clone(), model_columns(&patients))
        })
        .collect()
}

/// The complete cases of a model's inputs, the outcome and the subgroup,
/// as (input values, outcome, sex level).
fn rows_of(dict: &Dictionary, cols: &Columns, inputs: &[&str]) -> Vec<(Vec<f64>, bool, String)> {
    let features: Vec<_> = inputs
        .iter()
        .map(|i| resolve_input(dict, i).unwrap())
        .collect();
    let mut variables: Vec<&str> = features.iter().map(|f| f.variable.as_str()).collect();
    variables.extend(["death", "sex"]);
    let sexes = dict.get("sex").unwrap().levels();
    complete_rows(cols, &variables)
        .unwrap()
        .into_iter()
        .map(|r| {
            (
                features
                    .iter()
                    .map(|f| f.value(cols[&f.variable].number(r)))
                    .collect(),
                cols["death"].number(r) == 1.0,
                sexes[cols["sex"].number(r) as usize].clone(),
            )
        })
        .collect()
}

fn run_python(python: &Path, script: &str, args: &[&Path]) {
    let out = std::process::Command::new(python)
        .arg(model_script(script))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

type SiteRows = Vec<(String, Vec<(Vec<f64>, bool, String)>)>;

/// The ONNX model's predictions at each site as tract computes them (in
/// float32, the same code every node runs).
fn onnx_predictions(bytes: &[u8], sites: &SiteRows) -> Vec<Vec<f64>> {
    let width = sites[0].1[0].0.len();
    let scorer = plexus_onnx::OnnxScorer::load(bytes, width, None).unwrap();
    sites
        .iter()
        .map(|(_, rows)| {
            let x: Vec<f32> = rows
                .iter()
                .flat_map(|r| r.0.iter().map(|v| *v as f32))
                .collect();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            scorer.score(&x, rows.len(), deadline).unwrap()
        })
        .collect()
}

/// scikit-learn's metrics of the predictions at each site, per group:
/// "all", "sex=F", "sex=M" and each site's name.
fn reference(
    python: &Path,
    dir: &Path,
    name: &str,
    predictions: &[Vec<f64>],
    sites: &SiteRows,
) -> serde_json::Value {
    let mut csv = String::from("p,y,group\n");
    for ((site, rows), p) in sites.iter().zip(predictions) {
        for (p, (_, y, sex)) in p.iter().zip(rows) {
            let y = u8::from(*y);
            for g in ["all".to_string(), format!("sex={sex}"), site.clone()] {
                csv.push_str(&format!("{p:?},{y},{g}\n"));
            }
        }
    }
    let (preds, out) = (
        dir.join(format!("{name}-predictions.csv")),
        dir.join(format!("{name}-metrics.json")),
    );
    std::fs::write(&preds, csv).unwrap();
    let thresholds = std::ffi::OsString::from(THRESHOLDS);
    run_python(
        python,
        "validation_metrics.py",
        &[&preds, Path::new(&thresholds), &out],
    );
    serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap()
}

/// One group's federated metrics against scikit-learn's on the patients'
/// own predictions. Where every released piece's patients share one
/// prediction (`exact`), the AUC exactly, the Brier score and both
/// calibration fits to 1e-9; otherwise the AUC and the Brier score within
/// the bounds the result states, and the calibration fits (on the pieces'
/// mean predictions) close to scikit-learn's. The confusion counts at every
/// threshold the pieces released.
fn agrees(what: &str, got: &GroupPerformance, want: &serde_json::Value, exact: bool) {
    let f = |k: &str| want[k].as_f64().unwrap();
    assert_eq!(got.n, want["n"].as_u64().unwrap(), "{what}: n");
    assert_eq!(
        got.positives,
        want["positives"].as_u64().unwrap(),
        "{what}: events"
    );
    let auc = got.auc.unwrap().estimate;
    let bound = got.auc_error_bound.unwrap();
    if exact {
        assert_eq!(
            bound, 0.0,
            "{what}: the grid does not separate the predictions"
        );
        assert!(
            (auc - f("auc")).abs() < 1e-12,
            "{what}: AUC {auc} vs {}",
            f("auc")
        );
    } else {
        assert!(
            (auc - f("auc")).abs() <= bound + 1e-12,
            "{what}: AUC {auc} vs {} beyond the bound {bound}",
            f("auc")
        );
    }
    let tolerance = if exact { 1e-9 } else { 0.1 };
    let close = |name: &str, a: f64, b: f64| {
        assert!(
            (a - b).abs() < tolerance,
            "{what}: {name} {a} vs scikit-learn {b}"
        );
    };
    let brier_bound = got.brier_error_bound.unwrap();
    if exact {
        assert_eq!(
            brier_bound, 0.0,
            "{what}: pieces do not share one prediction"
        );
        close("Brier", got.brier.unwrap(), f("brier"));
    } else {
        assert!(
            (got.brier.unwrap() - f("brier")).abs() <= brier_bound + 1e-12,
            "{what}: Brier {} vs {} beyond the bound {brier_bound}",
            got.brier.unwrap(),
            f("brier")
        );
    }
    close("slope", got.calibration_slope.unwrap().estimate, f("slope"));
    close(
        "intercept",
        got.calibration_intercept.unwrap().estimate,
        f("intercept"),
    );
    close(
        "calibration in the large",
        got.calibration_in_the_large.unwrap().estimate,
        f("citl"),
    );
    for (t, w) in got
        .thresholds
        .iter()
        .zip(want["thresholds"].as_array().unwrap())
    {
        // Only where the segments released the threshold asked for.
        if t.threshold == t.requested {
            let c = |k: &str| w[k].as_u64().unwrap();
            assert_eq!(
                (t.tp, t.fp, t.tn, t.fn_),
                (c("tp"), c("fp"), c("tn"), c("fn")),
                "{what}: confusion at {}",
                t.threshold
            );
        }
    }
}

fn performance(r: &PooledResult) -> &PerformanceResult {
    match &r.value {
        PooledValue::Performance(p) => p,
        other => panic!("not a model_performance: {other:?}"),
    }
}

fn onnx_model(name: &str, inputs: &[&str], file: Vec<u8>) -> pb::RegisterModelRequest {
    pb::RegisterModelRequest {
        study_id: study().id,
        model: Some(pb::ModelArtefact {
            spec: Some(pb::ModelSpec {
                name: name.into(),
                format: "onnx".into(),
                inputs: inputs.iter().map(|s| s.to_string()).collect(),
                output: None,
                source: format!("{name}.onnx"),
            }),
            file,
        }),
        ..Default::default()
    }
}

fn query(model: &str, by_site: bool) -> String {
    format!(
        r#"{{"analysis": {{"model_performance": {{"model": "{model}", "outcome": "death",
            "subgroups": ["sex"], "thresholds": [{THRESHOLDS}]}}}}, "by_site": {by_site}}}"#
    )
}

/// Trains the models on the union of the sites' rows, as a developer
/// outside the network would, and returns their files by name.
fn train(python: &Path, dir: &Path, sites: &[(String, Columns)]) -> BTreeMap<String, Vec<u8>> {
    let dict = Dictionary::cardiovascular();
    let mut csv = String::from("y");
    for c in CATEGORICAL {
        csv.push_str(&format!(",c:{c}"));
    }
    for c in CONTINUOUS {
        csv.push_str(&format!(",x:{c}"));
    }
    csv.push('\n');
    let both: Vec<&str> = CATEGORICAL.iter().chain(&CONTINUOUS).copied().collect();
    for (_, cols) in sites {
        for (x, y, _) in rows_of(&dict, cols, &both) {
            csv.push_str(&u8::from(y).to_string());
            for v in x {
                csv.push_str(&format!(",{v}"));
            }
            csv.push('\n');
        }
    }
    let data = dir.join("train.csv");
    std::fs::write(&data, csv).unwrap();
    run_python(python, "validation_models.py", &[&data, dir]);
    ["logistic_cat", "logistic", "lightgbm", "forbidden"]
        .into_iter()
        .map(|m| {
            (
                m.to_string(),
                std::fs::read(dir.join(format!("{m}.onnx"))).unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_trained_elsewhere_validate_as_scikit_learn_measures_them_on_the_union() {
    let test = "models_trained_elsewhere_validate_as_scikit_learn_measures_them_on_the_union";
    let Some(python) = MODEL_TOOLS.python(test) else {
        return;
    };
    let sb = Sandbox::start(SandboxOptions::new(1500, 53)).await.unwrap();
    let study = study();
    sb.approve(&study).unwrap();
    sb.register_study(&study).await.unwrap();
    sb.wait_all_live().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sites = site_columns(&sb, &study);
    let files = train(&python, dir.path(), &sites);
    let dict = Dictionary::cardiovascular();

    for (name, inputs, exact) in [
        ("logistic_cat", &CATEGORICAL[..], true),
        ("logistic", &CONTINUOUS[..], false),
        ("lightgbm", &CONTINUOUS[..], false),
    ] {
        let file = files[name].clone();
        let m = sb
            .register_model(sandbox::ADMIN, onnx_model(name, inputs, file.clone()))
            .await
            .unwrap();
        for node in sb.node_names() {
            sb.approve_model_at(&node, &study.id, &m.hash).unwrap();
        }
        let rows: SiteRows = sites
            .iter()
            .map(|(s, cols)| (s.clone(), rows_of(&dict, cols, inputs)))
            .collect();
        let want = reference(
            &python,
            dir.path(),
            name,
            &onnx_predictions(&file, &rows),
            &rows,
        );
        let got = ask(&sb, sandbox::RESEARCHER, &study.id, &query(name, true))
            .await
            .unwrap();
        let p = performance(&got);
        // The clients' tests read one such result as their example.
        if let (Ok(path), "lightgbm") = (std::env::var("PLEXUS_WRITE_PERFORMANCE_EXAMPLE"), name) {
            std::fs::write(path, serde_json::to_string_pretty(&got).unwrap()).unwrap();
        }
        assert_eq!(p.model_hash, m.hash);
        for g in &p.groups {
            agrees(
                &format!("{name} {}", g.group.label()),
                g,
                &want[g.group.label()],
                exact,
            );
        }
        for site in &got.by_site {
            let Some(PooledValue::Performance(s)) = &site.value else {
                panic!("{name}: no result of {}: {:?}", site.node, site.error)
            };
            agrees(
                &format!("{name} at {}", site.node),
                &s.groups[0],
                &want[&site.node],
                exact,
            );
        }
        assert_eq!(got.by_site.len(), 3);
        eprintln!(
            "{name}: AUC {:.6} (bound {:.2e}), Brier {:.6}, slope {:.6}, {} rounds",
            p.groups[0].auc.unwrap().estimate,
            p.groups[0].auc_error_bound.unwrap(),
            p.groups[0].brier.unwrap(),
            p.groups[0].calibration_slope.unwrap().estimate,
            p.rounds
        );
    }

    // Models Plexus fitted, registered from their queries' results: a
    // logistic GLM and boosted trees, scored at the nodes without ONNX.
    let client = sb.client(sandbox::RESEARCHER).await.unwrap();
    for (name, fit, inputs) in [
        (
            "glm",
            r#"{"analysis": {"glm": {"family": "binomial", "outcome": "death", "covariates": ["age", "sex", "diabetes"]}}}"#,
            &["age", "sex=M", "diabetes=true"][..],
        ),
        (
            "trees",
            r#"{"analysis": {"gbdt": {"outcome": "death", "covariates": ["age", "sex", "diabetes"], "trees": 8, "depth": 2}}}"#,
            &[][..],
        ),
    ] {
        let q = plexus_core::Query::from_json(fit).unwrap();
        let r = client
            .run_query(&study.id, &q, std::time::Duration::from_secs(120))
            .await
            .unwrap();
        let fitted = plexus_client::outcome(&r).unwrap();
        let model = match &fitted.value {
            PooledValue::Glm(g) => PlexusModel::from_glm(g).unwrap(),
            PooledValue::Gbdt(g) => PlexusModel::from_gbdt(g).unwrap(),
            other => panic!("not a model: {other:?}"),
        };
        let m = sb
            .register_model(
                sandbox::RESEARCHER,
                pb::RegisterModelRequest {
                    study_id: study.id.clone(),
                    name: name.into(),
                    from_query: r.query_id.clone(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        for node in sb.node_names() {
            sb.approve_model_at(&node, &study.id, &m.hash).unwrap();
        }
        let features = model.features(&dict).unwrap();
        let names: Vec<String> = features.iter().map(|f| f.name.clone()).collect();
        if !inputs.is_empty() {
            assert_eq!(names, inputs);
        }
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let rows: SiteRows = sites
            .iter()
            .map(|(s, cols)| (s.clone(), rows_of(&dict, cols, &names)))
            .collect();
        let predictions: Vec<Vec<f64>> = rows
            .iter()
            .map(|(_, rows)| rows.iter().map(|(x, _, _)| model.predict(x)).collect())
            .collect();
        let want = reference(&python, dir.path(), name, &predictions, &rows);
        let got = ask(&sb, sandbox::RESEARCHER, &study.id, &query(name, false))
            .await
            .unwrap();
        let p = performance(&got);
        for g in &p.groups {
            agrees(
                &format!("{name} {}", g.group.label()),
                g,
                &want[g.group.label()],
                false,
            );
        }
        if name == "glm" {
            // A maximum-likelihood logistic model on its own training rows
            // is calibrated in the large and has slope 1 (here on the
            // pieces' mean predictions: close to).
            let all = &p.groups[0];
            assert!((all.calibration_slope.unwrap().estimate - 1.0).abs() < 0.05);
            assert!(all.calibration_in_the_large.unwrap().estimate.abs() < 0.05);
        }
    }
    sb.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_runs_only_when_it_is_safe_to_run_and_approved_as_it_is() {
    let test = "a_model_runs_only_when_it_is_safe_to_run_and_approved_as_it_is";
    let Some(python) = MODEL_TOOLS.python(test) else {
        return;
    };
    let sb = Sandbox::start(SandboxOptions::new(400, 59)).await.unwrap();
    let study = study();
    sb.approve(&study).unwrap();
    sb.register_study(&study).await.unwrap();
    sb.wait_all_live().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = train(&python, dir.path(), &site_columns(&sb, &study));
    let register = |name: &str, inputs: &[&str], file: Vec<u8>| {
        sb.register_model(sandbox::ADMIN, onnx_model(name, inputs, file))
    };

    // Refused at registration, naming what is wrong.
    let e = register("evil", &CONTINUOUS, files["forbidden"].clone())
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Policy, "{e}");
    assert!(e.message.contains("ReadFile"), "{e}");
    let e = register("huge", &CONTINUOUS, vec![0; 16 * 1024 * 1024 + 1])
        .await
        .unwrap_err();
    assert!(e.message.contains("over the limit"), "{e}");
    let mut unknown = CONTINUOUS.to_vec();
    unknown[1] = "weight";
    let e = register("unknown", &unknown, files["logistic"].clone())
        .await
        .unwrap_err();
    assert!(e.message.contains("model input \"weight\""), "{e}");
    let mut unlevelled = CONTINUOUS.to_vec();
    unlevelled[4] = "smoking";
    let e = register("unlevelled", &unlevelled, files["logistic"].clone())
        .await
        .unwrap_err();
    assert!(
        e.message.contains("model input \"smoking\"") && e.message.contains("\"smoking=never\""),
        "{e}"
    );
    let e = register("narrow", &CONTINUOUS[..3], files["logistic"].clone())
        .await
        .unwrap_err();
    assert!(
        e.message.contains("5 columns") && e.message.contains("maps 3 inputs"),
        "{e}"
    );
    // A Plexus-format file uploaded as such: only a fitted model's query
    // registers one.
    let e = sb
        .register_model(
            sandbox::ADMIN,
            pb::RegisterModelRequest {
                study_id: study.id.clone(),
                model: Some(pb::ModelArtefact {
                    spec: Some(pb::ModelSpec {
                        name: "forged".into(),
                        format: "plexus".into(),
                        source: "query 0193".into(),
                        ..Default::default()
                    }),
                    file: br#"{"logistic": {"terms": ["(intercept)"], "coefficients": [0.0]}}"#
                        .to_vec(),
                }),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(e.message.contains("--from-query"), "{e}");
    // A model reading the outcome is refused before any node scores it.
    let mut leaky = CONTINUOUS.to_vec();
    leaky[3] = "death";
    register("leaky", &leaky, files["logistic"].clone())
        .await
        .unwrap();
    let e = ask(&sb, sandbox::RESEARCHER, &study.id, &query("leaky", false))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Invalid, "{e}");
    assert!(e.message.contains("reads \"death\""), "{e}");
    // A researcher of another study may not register with this one.
    let e = sb
        .register_model(
            sandbox::ADMIN,
            pb::RegisterModelRequest {
                study_id: "no-such-study".into(),
                ..onnx_model("x", &CONTINUOUS, files["logistic"].clone())
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound, "{e}");

    // Registered, but approved by no hospital: every node refuses, and
    // logs the refusal with the model's hash.
    let m = register("risk", &CONTINUOUS, files["logistic"].clone())
        .await
        .unwrap();
    let e = ask(&sb, sandbox::RESEARCHER, &study.id, &query("risk", false))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Policy, "{e}");
    assert!(e.message.contains("has not been approved"), "{e}");
    for node in sb.node_names() {
        let log = sb.node_configs[&node].node.state_dir.join("jobs.log.jsonl");
        let text = std::fs::read_to_string(log).unwrap();
        assert!(
            text.contains(&m.hash) && text.contains("has not been approved"),
            "{node}: {text}"
        );
    }
    // Approved at two hospitals only: the third still refuses, and the
    // study's two-node quorum answers without it.
    for node in ["hospital-a", "hospital-b"] {
        sb.approve_model_at(node, &study.id, &m.hash).unwrap();
    }
    let got = ask(&sb, sandbox::RESEARCHER, &study.id, &query("risk", false))
        .await
        .unwrap();
    assert_eq!(got.provenance.answered, 2);
    sb.approve_model_at("hospital-c", &study.id, &m.hash)
        .unwrap();
    let got = ask(&sb, sandbox::RESEARCHER, &study.id, &query("risk", false))
        .await
        .unwrap();
    assert_eq!(got.provenance.answered, 3);

    // Registered again under its name with another file: a query pinning
    // the old hash is refused by the coordinator, and the new model by
    // every node until approved again.
    let changed = register("risk", &CONTINUOUS, files["lightgbm"].clone())
        .await
        .unwrap();
    assert_ne!(changed.hash, m.hash);
    let pinned = query("risk", false).replace(
        r#""model": "risk""#,
        &format!(r#""model": "risk", "model_hash": "{}""#, m.hash),
    );
    let e = ask(&sb, sandbox::RESEARCHER, &study.id, &pinned)
        .await
        .unwrap_err();
    assert!(e.message.contains("registered again"), "{e}");
    let e = ask(&sb, sandbox::RESEARCHER, &study.id, &query("risk", false))
        .await
        .unwrap_err();
    assert!(e.message.contains("has not been approved"), "{e}");
    for node in sb.node_names() {
        sb.approve_model_at(&node, &study.id, &changed.hash)
            .unwrap();
    }
    let got = ask(&sb, sandbox::RESEARCHER, &study.id, &query("risk", false))
        .await
        .unwrap();
    assert_eq!(performance(&got).model_hash, changed.hash);

    // The coordinator's audit log holds every registration with its hash.
    let audit: Vec<pb::AuditEvent> = sb
        .client(sandbox::AUDITOR)
        .await
        .unwrap()
        .audit()
        .list_events(pb::ListEventsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .events
        .into_iter()
        .filter(|e| e.action == "model.register")
        .collect();
    assert!(audit.iter().any(|e| e.detail.contains(&m.hash)));
    assert!(audit.iter().any(|e| e.detail.contains(&changed.hash)));
    assert!(audit.iter().any(|e| e.detail.contains("ReadFile")));
    sb.shutdown().await.unwrap();
}
