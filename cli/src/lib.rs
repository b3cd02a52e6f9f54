//! The `plexus` command line as a library: output rendering, the audit
//! checks, the in-process sandbox network used by `plexus demo` and the
//! integration tests, and the synthetic data generator. The client that
//! reaches the coordinator is the `plexus-client` crate.
#![forbid(unsafe_code)]

pub mod audit;
pub mod audit_witness;
pub mod commands;
pub mod demo;
pub mod output;
pub mod pki;
pub mod plot;
pub mod synth_command;
pub mod wait;
