//! ONNX prediction models a study registers, checked and run inside a
//! hospital's node.
//!
//! A model file comes from a researcher, whom the node does not fully
//! trust, so [`inspect`] reads it as hostile before anything runs it: one
//! float32 `[N, F]` input, only the pure-computation operators of
//! [`ALLOWED_OPERATORS`], no subgraphs, no model-local functions and no
//! weights kept outside the file. Nothing a model may use reads a file, the
//! network or a clock. [`OnnxScorer`] then runs it with tract, a pure-Rust
//! engine, in batches of [`BATCH`] rows against the node's time limit.

#![forbid(unsafe_code)]

mod inspect;
mod operators;
mod scorer;
mod tensors;
mod trees;

pub use inspect::{inspect, OnnxInfo, OnnxOutput};
pub use operators::ALLOWED_OPERATORS;
pub use scorer::{OnnxScorer, BATCH};

use sha2::{Digest, Sha256};

/// Largest model file a study may register (bytes).
pub const MAX_MODEL_BYTES: usize = 16 * 1024 * 1024;

/// SHA-256 of a model file, lowercase hex: what a study's registration and
/// a node's cache name the model by.
pub fn file_sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
