//! Starting and stopping the coordinator: `run(config, listener, shutdown)`.
//! The caller binds the listener (tests use 127.0.0.1:0) and owns the
//! shutdown token.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use plexus_core::Dictionary;
use plexus_proto::v1::{
    admin_server::AdminServer, audit_server::AuditServer, node_link_server::NodeLinkServer,
    research_server::ResearchServer,
};

use crate::audit_log::AuditLog;
use crate::config::CoordinatorConfig;
use crate::error::{CoordinatorError, Result};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::service::{
    admin::AdminService, audit::AuditService, node_link::NodeLinkService, research::ResearchService,
};
use crate::state::State;
use crate::store::{AuditEntry, Store};

/// How long calls still open get to finish once queries in flight are
/// done or failed and the server stops.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What a researcher is told while the coordinator drains.
pub const SHUTTING_DOWN: &str = "the coordinator is shutting down, retry shortly";

/// The error a query still running when the shutdown grace period ends
/// is failed with (and the audit log records).
pub const SHUT_DOWN_MID_QUERY: &str =
    "the coordinator shut down before this query finished; submit it again";

/// Serves until `shutdown` is cancelled, then stops taking queries, gives
/// those in flight `coordinator.shutdown_grace_secs` to finish, fails the
/// rest with a retryable error, and closes with a final audit checkpoint.
pub async fn run(
    config: CoordinatorConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<()> {
    config.validate()?;
    let metrics_listener = match config.coordinator.metrics_listen {
        Some(addr) => Some(plexus_ops::bind(addr, "coordinator.metrics_listen").await?),
        None => None,
    };
    let dictionary = Arc::new(
        Dictionary::load_or_default(config.coordinator.dictionary.as_deref())
            .map_err(CoordinatorError::Core)?,
    );
    let tls = plexus_tls::ServerTls::watch(
        config.tls.clone(),
        Duration::from_millis(config.coordinator.tls_reload_ms),
    )
    .map_err(|e| CoordinatorError::Tls(e.to_string()))?;
    let store = Store::open(&config.coordinator.database_url).await?;
    let interrupted = store.fail_interrupted().await?;
    if interrupted > 0 {
        warn!(
            queries = interrupted,
            "queries left pending by the previous run were marked failed"
        );
    }
    let liveness = Duration::from_secs(config.coordinator.heartbeat_interval_secs * 3);
    let (finished, _) = watch::channel(0);
    let signer = Arc::new(config.signing_key()?);
    let audit_log =
        Arc::new(AuditLog::open(store.clone(), signer.clone(), &config.coordinator.id).await?);
    // Streams, waiting calls and background tasks end on `stopping`, once
    // the queries in flight are through.
    let stopping = CancellationToken::new();
    tokio::spawn(audit_log.clone().publish_every(
        Duration::from_secs(config.coordinator.audit_checkpoint_secs),
        stopping.clone(),
    ));
    let readiness = plexus_ops::Readiness::new();
    readiness.set("server", false, "starting");
    let metrics = Arc::new(Metrics::new());
    let state = Arc::new(State {
        signer,
        audit_log,
        tls,
        registry: Registry::new(liveness),
        store,
        dictionary,
        shutdown: stopping.clone(),
        draining: shutdown.clone(),
        abort_queries: CancellationToken::new(),
        queries: TaskTracker::new(),
        metrics,
        readiness,
        finished,
        config,
    });
    let ops_stop = CancellationToken::new();
    let ops = metrics_listener.map(|l| {
        let addr = l.local_addr().ok();
        info!(addr = ?addr, "metrics, health and readiness served over http");
        tokio::spawn(plexus_ops::serve(l, endpoint(&state), ops_stop.clone()))
    });
    record_budgets(&state).await;
    let addr = listener
        .local_addr()
        .map_err(|e| CoordinatorError::Server(e.to_string()))?;
    info!(%addr, dictionary = %state.dictionary.fingerprint(), "coordinator listening");
    state
        .audit(AuditEntry {
            who: state.config.coordinator.id.clone(),
            role: "coordinator".into(),
            action: "coordinator.start".into(),
            outcome: "ok".into(),
            detail: format!("listening on {addr}"),
            ..Default::default()
        })
        .await;

    // Both reflection versions: grpcurl speaks v1, older tools only v1alpha.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(plexus_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| CoordinatorError::Server(format!("reflection: {e}")))?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(plexus_proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| CoordinatorError::Server(format!("reflection: {e}")))?;

    tokio::spawn(audit_tls_reloads(state.clone()));
    let incoming = plexus_tls::incoming(listener, state.tls.clone());
    let token = stopping.clone();
    let server = tonic::transport::Server::builder()
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(NodeLinkServer::new(NodeLinkService {
            state: state.clone(),
        }))
        .add_service(ResearchServer::new(ResearchService {
            state: state.clone(),
        }))
        .add_service(AdminServer::new(AdminService {
            state: state.clone(),
        }))
        .add_service(AuditServer::new(AuditService {
            state: state.clone(),
        }))
        .serve_with_incoming_shutdown(incoming, async move { token.cancelled().await });
    state.readiness.set("server", true, "");

    let drained = async {
        drain(&state).await;
        stopping.cancel();
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        r = server => r.map_err(|e| CoordinatorError::Server(e.to_string()))?,
        _ = drained => warn!("calls still open did not finish within the grace period"),
    }
    state
        .audit(AuditEntry {
            who: state.config.coordinator.id.clone(),
            role: "coordinator".into(),
            action: "coordinator.stop".into(),
            outcome: "ok".into(),
            ..Default::default()
        })
        .await;
    // The last entries get a checkpoint before the database closes.
    if let Err(e) = state.audit_log.publish_if_grown().await {
        warn!(error = %e, "could not publish the final audit checkpoint");
    }
    state.store.close().await;
    ops_stop.cancel();
    if let Some(ops) = ops {
        let _ = ops.await;
    }
    info!("coordinator stopped");
    Ok(())
}

/// Waits for shutdown, refuses new queries from then on (`draining`),
/// lets the queries in flight finish within the grace period and fails
/// the rest.
async fn drain(state: &State) {
    state.draining.cancelled().await;
    state.readiness.set(
        plexus_ops::readiness::SHUTDOWN,
        false,
        "the coordinator is shutting down",
    );
    state.queries.close();
    let grace = Duration::from_secs(state.config.coordinator.shutdown_grace_secs);
    info!(
        queries = state.queries.len(),
        grace_secs = grace.as_secs(),
        "shutdown requested; new queries are refused while those in flight finish"
    );
    if tokio::time::timeout(grace, state.queries.wait())
        .await
        .is_err()
    {
        warn!(
            queries = state.queries.len(),
            "queries still in flight at the end of the grace period are failed"
        );
        state.abort_queries.cancel();
        // Their jobs give up at once; storing and auditing each outcome is
        // all that is left.
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, state.queries.wait()).await;
    }
}

/// What `/metrics` and `/readyz` serve.
fn endpoint(state: &Arc<State>) -> plexus_ops::Endpoint {
    let s = state.clone();
    plexus_ops::Endpoint {
        registry: state.metrics.registry.clone(),
        readiness: state.readiness.clone(),
        refresh: Some(Arc::new(move || {
            let live = s.registry.list().iter().filter(|(_, live)| *live).count();
            s.metrics.live_nodes.set(live as i64);
        })),
    }
}

/// Each study's budget spent so far, so the gauge is right from the start
/// and not only after the study's next query.
async fn record_budgets(state: &State) {
    let studies = match state.store.studies().await {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot read the studies for the budget metrics");
            return;
        }
    };
    for s in studies.iter().filter(|s| !s.definition.privacy.exact) {
        if let Ok((spent, _)) = state.store.spent(&s.definition.id).await {
            state.metrics.budget(&s.definition.id, spent);
        }
    }
}

/// Records every change of the coordinator's certificate or revocation
/// list in the audit log, so an auditor can tell which certificates were
/// accepted when.
async fn audit_tls_reloads(state: Arc<State>) {
    let mut tls = state.tls.clone();
    loop {
        let loaded = tokio::select! {
            loaded = tls.changed() => loaded,
            () = state.shutdown.cancelled() => return,
        };
        let crl = match &loaded.crl {
            Some(crl) => format!(
                "revocation list number {} ({} revoked)",
                crl.numbers(),
                crl.revoked_count()
            ),
            None => "no revocation list".into(),
        };
        state
            .audit(AuditEntry {
                who: state.config.coordinator.id.clone(),
                role: "coordinator".into(),
                action: "tls.reload".into(),
                outcome: "ok".into(),
                detail: format!("certificate serial {}, {crl}", loaded.cert_serial),
                ..Default::default()
            })
            .await;
    }
}
