//! The `plexus` command line as a library: the researchers', auditors'
//! and admins' commands, output rendering and the audit checks. The client
//! that reaches the coordinator is the `plexus-client` crate. `plexus demo`
//! and `plexus synth` need the in-process sandbox (`plexus-sandbox`, which
//! links both daemons) and come only with the `demo` feature.
#![forbid(unsafe_code)]

pub mod audit;
pub mod audit_witness;
pub mod commands;
#[cfg(feature = "demo")]
pub mod demo;
pub mod output;
pub mod pki;
pub mod plot;
#[cfg(feature = "demo")]
pub mod synth_command;
pub mod verbs;
pub mod wait;
