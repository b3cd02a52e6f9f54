//! Models scikit-learn and LightGBM export, scored by tract against their
//! own `predict_proba`. Needs the model test tools
//! (`tests/models/setup.sh --install`): without them the test says it was
//! skipped and how to install them, and under `CI=true` it fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use plexus_onnx::{inspect, OnnxScorer};

const FEATURES: usize = 4;

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/models")
}

/// The model tools' python: `PLEXUS_MODEL_PYTHON` when set (`.ci/run`
/// sets it), else the last line `tests/models/setup.sh` prints when the
/// venv is complete.
fn model_python(test: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PLEXUS_MODEL_PYTHON").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let setup = models_dir().join("setup.sh");
    let out = Command::new("bash").arg(&setup).output().ok();
    if let Some(out) = out.filter(|o| o.status.success()) {
        let stdout = String::from_utf8_lossy(&out.stdout);
        if let Some(line) = stdout.lines().last().filter(|l| !l.is_empty()) {
            return Some(PathBuf::from(line));
        }
    }
    let how = "run tests/models/setup.sh --install (or set PLEXUS_MODEL_PYTHON)";
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: the model test tools are not installed but CI=true; {how}");
    }
    eprintln!("skipped {test}: it needs the model test tools (skl2onnx, onnxmltools); {how}");
    None
}

fn read_csv(path: &Path) -> Vec<Vec<f64>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_path(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    reader
        .records()
        .map(|r| {
            r.expect("a record")
                .iter()
                .map(|v| v.parse().expect("a number"))
                .collect()
        })
        .collect()
}

#[test]
fn sklearn_and_lightgbm_exports_score_like_predict_proba() {
    let test = "exported::sklearn_and_lightgbm_exports_score_like_predict_proba";
    let Some(python) = model_python(test) else {
        return;
    };
    let out = std::env::temp_dir().join(format!("plexus-onnx-exported-{}", std::process::id()));
    let status = Command::new(&python)
        .arg(models_dir().join("export_models.py"))
        .arg(&out)
        .status()
        .expect("python runs");
    assert!(status.success(), "export_models.py failed");

    let rows: Vec<f32> = read_csv(&out.join("rows.csv"))
        .into_iter()
        .flat_map(|r| {
            assert_eq!(r.len(), FEATURES);
            r.into_iter().map(|v| v as f32)
        })
        .collect();
    let n = rows.len() / FEATURES;
    for (name, operator) in [
        ("logistic", "ai.onnx.ml:LinearClassifier"),
        ("lightgbm", "ai.onnx.ml:TreeEnsembleClassifier"),
    ] {
        let bytes = std::fs::read(out.join(format!("{name}.onnx"))).expect("the model");
        let info = inspect(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(info.width, Some(FEATURES), "{name}");
        assert!(
            info.operators.iter().any(|o| o == operator),
            "{name}: {info:?}"
        );
        let scorer =
            OnnxScorer::load(&bytes, FEATURES, None).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(scorer.output(), "probabilities", "{name}");
        let deadline = Instant::now() + Duration::from_secs(60);
        let got = scorer.score(&rows, n, deadline).unwrap();
        let want: Vec<f64> = read_csv(&out.join(format!("{name}.csv")))
            .into_iter()
            .map(|r| r[0])
            .collect();
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5,
                "{name}, row {i}: tract gives {g}, predict_proba {w}"
            );
        }
    }
    std::fs::remove_dir_all(&out).ok();
}
