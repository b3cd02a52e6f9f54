//! What operators see of a running daemon, shared by the coordinator and
//! the node: the Prometheus `/metrics` page, `/healthz` and `/readyz`, and
//! the log format (text or JSON lines), how a command's error is printed,
//! and who is running a command.
//!
//! A crate of its own because both daemons need exactly the same HTTP
//! surface and log set-up, neither daemon may depend on the other, and
//! `plexus-core` stays free of networking.
#![forbid(unsafe_code)]

pub mod account;
pub mod errors;
pub mod http;
pub mod logging;
pub mod readiness;

pub use account::local_user;
pub use errors::error_text;
pub use http::{bind, serve, Endpoint};
pub use logging::{LogFormat, LOG_FORMAT_ENV};
pub use prometheus_client;
pub use readiness::Readiness;

/// What can go wrong setting up the operations endpoint or the logs.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("cannot listen for metrics on {addr} ({source}): check that no other process uses the port and that {key} is right")]
    Bind {
        addr: std::net::SocketAddr,
        key: &'static str,
        source: std::io::Error,
    },
    #[error("the metrics endpoint stopped: {0}")]
    Serve(std::io::Error),
    #[error("log format \"{0}\" is not known; use text or json")]
    LogFormat(String),
}
