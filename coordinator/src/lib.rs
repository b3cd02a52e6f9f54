//! Plexus coordinator: accepts the nodes' outbound streams and the
//! researchers' queries, checks studies, fans jobs out, pools sufficient
//! statistics and keeps the audit log.
#![forbid(unsafe_code)]

pub mod audit_log;
pub mod audit_repair;
pub mod audit_seal;
pub mod config;
pub mod error;
pub mod http;
pub mod lease;
pub mod metrics;
pub mod query;
pub mod registry;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod state;
pub mod store;
pub mod witness;

pub use config::CoordinatorConfig;
pub use error::{CoordinatorError, Result};
pub use server::run;
