//! Scores of small models against hand-computed values.

use std::sync::Arc;
use std::time::{Duration, Instant};

use plexus_onnx::{file_sha256, inspect, OnnxOutput, OnnxScorer, BATCH};

use crate::graphs::{self, encode, LOGISTIC_B, LOGISTIC_W, SOFTMAX_B, SOFTMAX_W};

fn later() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

/// Deterministic rows in [-2, 2).
fn rows(n: usize, width: usize) -> Vec<f32> {
    (0..n * width)
        .map(|i| ((i * 7919 % 1000) as f32) / 250.0 - 2.0)
        .collect()
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

fn logistic_expected(row: &[f32]) -> f64 {
    let z: f64 = row
        .iter()
        .zip(LOGISTIC_W)
        .map(|(&x, w)| f64::from(x) * f64::from(w))
        .sum::<f64>()
        + f64::from(LOGISTIC_B);
    sigmoid(z)
}

fn assert_close(got: &[f64], want: &[f64], tolerance: f64) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tolerance, "row {i}: got {g}, want {w}");
    }
}

#[test]
fn a_logistic_model_scores_sigmoid_of_the_linear_predictor() {
    let scorer = OnnxScorer::load(&encode(&graphs::logistic()), 3, None).unwrap();
    assert_eq!(scorer.width(), 3);
    assert_eq!(scorer.output(), "score");
    let x = [0.0, 0.0, 0.0, 1.0, 2.0, -1.0, -0.5, 0.25, 1.5];
    let got = scorer.score(&x, 3, later()).unwrap();
    // sigmoid(0.25), sigmoid(0.5 - 2.5 - 2 + 0.25), sigmoid(-0.25 - 0.3125 + 3 + 0.25)
    let want = [sigmoid(0.25), sigmoid(-3.75), sigmoid(2.6875)];
    assert_close(&got, &want, 1e-6);
}

#[test]
fn rows_past_one_batch_score_like_rows_in_one() {
    let scorer = OnnxScorer::load(&encode(&graphs::logistic()), 3, None).unwrap();
    let n = 2 * BATCH + 17;
    let x = rows(n, 3);
    let got = scorer.score(&x, n, later()).unwrap();
    let want: Vec<f64> = x.chunks(3).map(logistic_expected).collect();
    assert_close(&got, &want, 1e-6);
    assert!(scorer.score(&[], 0, later()).unwrap().is_empty());
}

#[test]
fn a_softmax_classifier_scores_the_second_column_and_skips_the_int_label() {
    let bytes = encode(&graphs::softmax());
    let scorer = OnnxScorer::load(&bytes, 2, None).unwrap();
    assert_eq!(scorer.output(), "probabilities");
    let x = [0.0, 0.0, 1.0, 2.0, -3.0, 0.5];
    let got = scorer.score(&x, 3, later()).unwrap();
    let want: Vec<f64> = x
        .chunks(2)
        .map(|r| {
            let (x0, x1) = (f64::from(r[0]), f64::from(r[1]));
            let w = SOFTMAX_W.map(f64::from);
            let z0 = x0 * w[0] + x1 * w[2] + f64::from(SOFTMAX_B[0]);
            let z1 = x0 * w[1] + x1 * w[3] + f64::from(SOFTMAX_B[1]);
            z1.exp() / (z0.exp() + z1.exp())
        })
        .collect();
    assert_close(&got, &want, 1e-6);
    let named = OnnxScorer::load(&bytes, 2, Some("probabilities")).unwrap();
    assert_eq!(named.score(&x, 3, later()).unwrap(), got);
}

#[test]
fn a_binary_tree_ensemble_scores_its_leaf_as_the_positive_probability() {
    let scorer = OnnxScorer::load(&encode(&graphs::tree()), 2, None).unwrap();
    let got = scorer
        .score(&[0.0, 9.0, 0.5, 9.0, 0.75, -9.0, f32::NAN, 0.0], 4, later())
        .unwrap();
    // NaN goes the false way (nodes_missing_value_tracks_true is unset).
    assert_close(&got, &[0.2, 0.2, 0.9, 0.9], 1e-7);
}

#[test]
fn inspect_describes_the_model() {
    let info = inspect(&encode(&graphs::softmax())).unwrap();
    assert_eq!(info.input, "x");
    assert_eq!(info.width, Some(2));
    assert_eq!(
        info.outputs,
        vec![
            OnnxOutput {
                name: "label".into(),
                float: false,
                width: Some(1)
            },
            OnnxOutput {
                name: "probabilities".into(),
                float: true,
                width: Some(2)
            },
        ]
    );
    assert_eq!(
        info.operators,
        [
            "ai.onnx:Add",
            "ai.onnx:ArgMax",
            "ai.onnx:MatMul",
            "ai.onnx:Softmax"
        ]
    );
    assert_eq!(info.producer, "plexus-onnx-tests 1");
}

#[test]
fn a_loaded_model_scores_from_many_threads() {
    let scorer = Arc::new(OnnxScorer::load(&encode(&graphs::logistic()), 3, None).unwrap());
    let x = rows(100, 3);
    let want: Vec<f64> = x.chunks(3).map(logistic_expected).collect();
    std::thread::scope(|s| {
        for _ in 0..4 {
            let (scorer, x, want) = (scorer.clone(), &x, &want);
            s.spawn(move || assert_close(&scorer.score(x, 100, later()).unwrap(), want, 1e-6));
        }
    });
}

#[test]
fn the_file_hash_is_sha256_hex() {
    assert_eq!(
        file_sha256(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}
