//! Starting and stopping the coordinator: `run(config, listener, shutdown)`.
//! The caller binds the listener (tests use 127.0.0.1:0) and owns the
//! shutdown token.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use plexus_core::Dictionary;
use plexus_proto::v1::{
    admin_server::AdminServer, audit_server::AuditServer, node_link_server::NodeLinkServer,
    research_server::ResearchServer,
};

use crate::audit_log::AuditLog;
use crate::config::CoordinatorConfig;
use crate::error::{CoordinatorError, Result};
use crate::registry::Registry;
use crate::service::{
    admin::AdminService, audit::AuditService, node_link::NodeLinkService, research::ResearchService,
};
use crate::state::State;
use crate::store::{AuditEntry, Store};

/// How long in-flight calls get to finish after shutdown is asked for.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves until `shutdown` is cancelled, then drains for a grace period.
pub async fn run(
    config: CoordinatorConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<()> {
    config.validate()?;
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
    tokio::spawn(audit_log.clone().publish_every(
        Duration::from_secs(config.coordinator.audit_checkpoint_secs),
        shutdown.clone(),
    ));
    let state = Arc::new(State {
        signer,
        audit_log,
        tls,
        registry: Registry::new(liveness),
        store,
        dictionary,
        shutdown: shutdown.clone(),
        finished,
        config,
    });
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
    let token = shutdown.clone();
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

    let drained = async {
        shutdown.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        r = server => r.map_err(|e| CoordinatorError::Server(e.to_string()))?,
        _ = drained => warn!("in-flight calls did not finish within the grace period"),
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
    info!("coordinator stopped");
    Ok(())
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
