//! The operations HTTP endpoint: `/metrics` (Prometheus text, OpenMetrics
//! flavour), `/healthz` (200 while the process serves at all) and `/readyz`
//! (200 when every readiness check passes, else 503 with the reasons).
//! Plain HTTP without TLS: bind it to localhost or a monitoring network.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{OpsError, Readiness};

/// The content type of the OpenMetrics text `prometheus-client` writes.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the endpoint serves.
#[derive(Clone)]
pub struct Endpoint {
    pub registry: Arc<Registry>,
    pub readiness: Readiness,
    /// Runs before each scrape, to set gauges that are cheaper read on
    /// demand than kept up to date (live nodes, the audit log's size).
    pub refresh: Option<Arc<dyn Fn() + Send + Sync>>,
}

/// Binds the metrics listener; `key` names the config field in the error.
pub async fn bind(addr: SocketAddr, key: &'static str) -> Result<TcpListener, OpsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| OpsError::Bind { addr, key, source })
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    endpoint: Endpoint,
    shutdown: CancellationToken,
) -> Result<(), OpsError> {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(endpoint);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(OpsError::Serve)
}

async fn metrics(axum::extract::State(e): axum::extract::State<Endpoint>) -> impl IntoResponse {
    if let Some(refresh) = &e.refresh {
        refresh();
    }
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &e.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
            body,
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "the metrics could not be encoded\n".to_string(),
        ),
    }
}

async fn ready(axum::extract::State(e): axum::extract::State<Endpoint>) -> impl IntoResponse {
    match e.readiness.status() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}
