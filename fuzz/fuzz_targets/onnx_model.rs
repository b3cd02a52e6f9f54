//! A model file a study registers -> the checks of the coordinator and of
//! every node (plexus-onnx's inspect, then loading into tract and scoring
//! a few rows). A hostile model must be refused with an error, never
//! panic, loop or write out of bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(info) = plexus_onnx::inspect(data) else {
        return;
    };
    let width = info.width.unwrap_or(3);
    if let Ok(scorer) = plexus_onnx::OnnxScorer::load(data, width, None) {
        let rows = vec![0.5f32; 2 * width];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        let _ = scorer.score(&rows, 2, deadline);
    }
});
