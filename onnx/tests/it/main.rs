//! plexus-onnx's tests: one binary, a module per concern. Run one module
//! with `cargo test -p plexus-onnx --test it -- refusals::`.

mod exported;
mod graphs;
mod mutations;
mod refusals;
mod scoring;
