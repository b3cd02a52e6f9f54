//! Starting and stopping the coordinator: `run(config, listener, shutdown)`.
//! The caller binds the listener (tests use 127.0.0.1:0) and owns the
//! shutdown token.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};
use tonic::service::Routes;
use tracing::{error, info, warn};

use plexus_core::audit::{Action, Outcome, Role};
use plexus_core::Dictionary;
use plexus_proto::v1::{
    admin_server::AdminServer, audit_server::AuditServer, node_link_server::NodeLinkServer,
    research_server::ResearchServer,
};

use crate::audit_log::AuditLog;
use crate::config::CoordinatorConfig;
use crate::error::{CoordinatorError, Result};
use crate::lease::{Attempt, Lease};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::service::{
    admin::AdminService, audit::AuditService, node_link::NodeLinkService, research::ResearchService,
};
use crate::shutdown::SHUTDOWN_GRACE;
use crate::state::State;
use crate::store::{AuditEntry, Store};

/// Serves until `shutdown` is cancelled, then stops taking queries, gives
/// those in flight `coordinator.shutdown_grace_secs` to finish, fails the
/// rest with a retryable error, and closes with a final audit checkpoint.
/// The body's numbered phases: 1 read the config, dictionary and TLS
/// files; 2 serve (metrics, and gRPC behind the standby gate); 3 wait for
/// the lease; 4 open the database and the audit log; 5 go active; 6 serve
/// until shutdown, a lost lease or a failed server; 7 close.
///
/// On PostgreSQL the coordinator first takes the lease (see
/// [`crate::lease`]): while another coordinator holds it, this one stays
/// on standby and answers every call with `unavailable` naming the active
/// one; it takes over when that lease expires. A coordinator that loses
/// its lease stops serving at once and returns
/// [`CoordinatorError::LeaseLost`].
pub async fn run(
    config: CoordinatorConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<()> {
    // 1. What start-up reads: the config, the dictionary, the TLS files.
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
    )?;
    let addr = listener.local_addr().map_err(CoordinatorError::Listener)?;
    let url = config.coordinator.database_url.clone();
    let instance = config.instance().to_string();

    // 2. Serving at once: metrics and health over HTTP, and one gRPC
    // server for the whole run whose gate answers for the standby and
    // hands calls to the services once this coordinator is active.
    let readiness = plexus_ops::Readiness::new();
    readiness.set("server", false, "starting");
    let metrics = Arc::new(Metrics::new());
    let liveness = Duration::from_secs(config.coordinator.heartbeat_interval_secs * 3);
    let registry = Arc::new(Registry::new(liveness));
    let ops_stop = CancellationToken::new();
    let _ops_guard = ops_stop.clone().drop_guard();
    let ops = metrics_listener.map(|l| {
        let addr = l.local_addr().ok();
        info!(addr = ?addr, "metrics, health and readiness served over http");
        tokio::spawn(plexus_ops::serve(
            l,
            endpoint(&metrics, &readiness, &registry),
            ops_stop.clone(),
        ))
    });
    let (gate, phase) = Gate::new();
    let serving = CancellationToken::new();
    // If this future is dropped (its task aborted: the in-process stand-in
    // for a killed process), the server and everything of the active phase
    // stop with it instead of serving on.
    let _serving_guard = serving.clone().drop_guard();
    let mut server = serve_grpc(gate, listener, tls.clone(), serving.clone());

    // 3. On PostgreSQL, standby until this coordinator holds the lease.
    let lease = lease_for(&url, &instance, &config).await?;
    let (epoch, previous) = match &lease {
        None => (None, None),
        Some(lease) => {
            let won = tokio::select! {
                won = wait_for_lease(lease, &phase, &readiness, addr) => won?,
                () = shutdown.cancelled() => None,
                r = &mut server => return server_ended(r),
            };
            match won {
                Some((epoch, previous)) => (Some(epoch), previous),
                None => {
                    serving.cancel();
                    let _ = tokio::time::timeout(SHUTDOWN_GRACE, server).await;
                    info!("coordinator stopped while on standby");
                    return Ok(());
                }
            }
        }
    };

    // 4. The database and the audit log opened and checked, and what the
    // previous run left unfinished failed and audited.
    let (store, signer, audit_log, interrupted) = match open_log(&config, &url, epoch).await {
        Ok(o) => o,
        Err(e) => {
            // Refused at start (a log that does not extend its checkpoint,
            // a damaged database): the lease is let go at once, so that
            // `audit-repair` or another coordinator need not wait it out.
            if let (Some(lease), Some(epoch)) = (&lease, epoch) {
                if let Err(e) = lease.release(epoch).await {
                    warn!(error = %e, "could not release the coordinator lease");
                }
            }
            serving.cancel();
            return Err(e);
        }
    };
    // Everything of the active phase stops with this token: once the
    // queries in flight are through after a shutdown, or at a lost lease.
    let active = CancellationToken::new();
    let _active_guard = active.clone().drop_guard();
    // Declared after the active token's guard so it is dropped first:
    // dropped with this future (its task aborted, the in-process stand-in
    // for a killed process), the store takes no more writes from tasks
    // this run spawned, as a dead process would not.
    let _store_guard = CloseOnDrop(store.clone());
    tokio::spawn(audit_log.clone().publish_every(
        Duration::from_secs(config.coordinator.audit_checkpoint_secs),
        active.clone(),
    ));
    // Enough for the queries that can finish while a waiter reads its
    // own; a waiter that lags behind reads its query again.
    let (finished, _) = tokio::sync::broadcast::channel(1024);
    let state = Arc::new(State {
        signer,
        audit_log,
        tls,
        registry,
        store,
        dictionary,
        shutdown: active.clone(),
        draining: shutdown.clone(),
        abort_queries: CancellationToken::new(),
        queries: TaskTracker::new(),
        running: tokio::sync::Semaphore::new(config.coordinator.max_running_queries as usize),
        metrics,
        readiness,
        finished,
        config,
    });

    // 5. Active: the start (and a takeover) audited, the services open.
    record_budgets(&state).await;
    info!(%addr, %instance, epoch, dictionary = %state.dictionary.fingerprint(), "coordinator listening");
    audit_start(&state, addr, epoch.zip(previous), interrupted).await;
    phase.send_replace(Phase::Active(routes(&state)?));
    state.readiness.set("server", true, "");
    tokio::spawn(audit_tls_reloads(state.clone()));

    // 6. Serving until a shutdown drains the queries in flight, the
    // lease is lost, or the server fails.
    let lost = async {
        match (&lease, epoch) {
            (Some(lease), Some(epoch)) => lease.keep(epoch).await,
            _ => std::future::pending().await,
        }
    };
    tokio::select! {
        reason = lost => {
            // Stop at once: the standby may be active already, and every
            // write of ours is refused by the database anyway.
            error!(%instance, reason = %reason, "this coordinator lost its lease and stops serving");
            state.readiness.set("server", false, format!("lost its lease: {reason}"));
            phase.send_replace(Phase::Standby(format!(
                "this coordinator ({instance}) lost its lease ({reason}); another coordinator is active"
            )));
            active.cancel();
            serving.cancel();
            server.abort();
            state.store.close().await;
            return Err(CoordinatorError::LeaseLost(reason));
        }
        () = drain(&state) => {}
        r = &mut server => return server_ended(r),
    }

    // 7. Closing: calls still open get the grace period, the stop is
    // audited under a last checkpoint, the lease is handed on.
    active.cancel();
    serving.cancel();
    match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
        Ok(r) => server_ended(r)?,
        Err(_) => {
            warn!("calls still open did not finish within the grace period");
            server.abort();
        }
    }
    state
        .audit(AuditEntry::new(
            state.config.coordinator.id.clone(),
            Role::Coordinator,
            Action::CoordinatorStop,
            Outcome::Ok,
        ))
        .await;
    // The last entries get a checkpoint before the database closes.
    if let Err(e) = state.audit_log.publish_if_grown().await {
        warn!(error = %e, "could not publish the final audit checkpoint");
    }
    if let (Some(lease), Some(epoch)) = (&lease, epoch) {
        // A standby takes over now instead of after the lease expires.
        if let Err(e) = lease.release(epoch).await {
            warn!(error = %e, "could not release the coordinator lease; a standby takes over when it expires");
        }
    }
    state.store.close().await;
    ops_stop.cancel();
    if let Some(ops) = ops {
        let _ = ops.await;
    }
    info!("coordinator stopped");
    Ok(())
}

/// The gRPC server, on the listener from the start, until `serving` is
/// cancelled; aborted when the handle is dropped. Connections that chose
/// HTTP/1.1 by ALPN (the HTTP/JSON API's clients: R's curl, Python's
/// httpx) are served by hyper's HTTP/1.1 server with the same gate and
/// services; all others are tonic's, on HTTP/2 (where the JSON API is
/// served too, for clients that prefer `h2`).
fn serve_grpc(
    gate: Gate,
    listener: TcpListener,
    tls: plexus_tls::ServerTls,
    serving: CancellationToken,
) -> AbortOnDropHandle<std::result::Result<(), tonic::transport::Error>> {
    let (http1, connections) = tokio::sync::mpsc::channel(64);
    let incoming = plexus_tls::incoming(listener, tls).filter_map(move |conn| {
        let http1 = http1.clone();
        async move {
            match conn {
                Ok(conn) if conn.alpn() == Some(plexus_tls::ALPN_HTTP1) => {
                    // Gone only when the HTTP/1.1 server stopped, as the
                    // whole server is stopping.
                    let _ = http1.send(conn).await;
                    None
                }
                other => Some(other),
            }
        }
    });
    let api = serve_http1(gate.clone(), connections, serving.clone());
    AbortOnDropHandle::new(tokio::spawn(async move {
        let _api = AbortOnDropHandle::new(tokio::spawn(api));
        tonic::transport::Server::builder()
            .serve_with_incoming_shutdown(gate, incoming, serving.cancelled())
            .await
    }))
}

/// Serves each HTTP/1.1 connection with the gate, the caller's verified
/// certificate in every request's extensions as tonic puts it there.
/// Stops taking connections when `serving` is cancelled; the connections
/// still open end with the task.
async fn serve_http1(
    gate: Gate,
    mut connections: tokio::sync::mpsc::Receiver<plexus_tls::TlsConn>,
    serving: CancellationToken,
) {
    let mut open = tokio::task::JoinSet::new();
    loop {
        let conn = tokio::select! {
            conn = connections.recv() => match conn {
                Some(conn) => conn,
                None => break,
            },
            () = serving.cancelled() => break,
        };
        let peer = conn.peer().clone();
        let gate = gate.clone();
        let service = hyper::service::service_fn(
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(peer.clone());
                let mut gate = gate.clone();
                async move { tower::Service::call(&mut gate, request.map(tonic::body::Body::new)).await }
            },
        );
        open.spawn(async move {
            let served = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(conn), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "http/1.1 connection ended with an error");
            }
        });
        while open.try_join_next().is_some() {}
    }
}

/// The lease of the active coordinator, on PostgreSQL (see
/// [`crate::lease`]); SQLite has one coordinator and no lease.
async fn lease_for(url: &str, instance: &str, config: &CoordinatorConfig) -> Result<Option<Lease>> {
    if !crate::store::is_postgres(url) {
        return Ok(None);
    }
    let unfenced = Store::open(url).await?;
    let pool = unfenced.postgres().expect("a postgres store").clone();
    Ok(Some(Lease::new(
        pool,
        instance,
        Duration::from_millis(config.coordinator.lease_ttl_ms),
    )))
}

/// Opens the store (fenced by the lease's `epoch`), checks the database,
/// opens the audit log against its seal, and fails and audits what the
/// previous run left unfinished (returning how many queries).
async fn open_log(
    config: &CoordinatorConfig,
    url: &str,
    epoch: Option<i64>,
) -> Result<(Store, Arc<plexus_tls::SigningKey>, Arc<AuditLog>, u64)> {
    let group_commit = config.coordinator.audit_group_commit;
    let store = Store::open_with(url, epoch, group_commit).await?;
    let signer = Arc::new(config.signing_key()?);
    check_database(&store, url).await?;
    let mut audit_log = AuditLog::open_sealed(
        store.clone(),
        signer.clone(),
        &config.coordinator.id,
        crate::audit_seal::Seal::for_config(config),
    )
    .await?;
    if !group_commit {
        warn!("audit group commit is off (coordinator.audit_group_commit = false): every audit entry is its own commit, as a baseline to measure against");
        audit_log = audit_log.without_group_commit();
    }
    let audit_log = Arc::new(audit_log);
    let interrupted = fail_interrupted(&store, &audit_log, &config.coordinator.id).await?;
    Ok((store, signer, audit_log, interrupted))
}

/// Audits the start, and a takeover at an epoch from the previous
/// holder of the lease (its instance and epoch).
async fn audit_start(
    state: &State,
    addr: std::net::SocketAddr,
    takeover: Option<(i64, (String, i64))>,
    interrupted: u64,
) {
    let coordinator = &state.config.coordinator.id;
    state
        .audit(AuditEntry {
            detail: format!("listening on {addr}"),
            ..AuditEntry::new(
                coordinator.clone(),
                Role::Coordinator,
                Action::CoordinatorStart,
                Outcome::Ok,
            )
        })
        .await;
    if let Some((epoch, (holder, old_epoch))) = takeover {
        let instance = state.config.instance();
        warn!(%instance, epoch, previous = %holder, previous_epoch = old_epoch, interrupted, "took over from the previous active coordinator");
        state
            .audit(AuditEntry {
                detail: format!(
                    "{instance} took the lease over at epoch {epoch} from {holder} (epoch {old_epoch}); {interrupted} interrupted queries marked failed"
                ),
                ..AuditEntry::new(
                    coordinator.clone(),
                    Role::Coordinator,
                    Action::CoordinatorTakeover,
                    Outcome::Ok,
                )
            })
            .await;
    }
}

/// Queries (and their jobs) a previous process left unfinished can never
/// finish: their node streams are gone. Their outcome is decided here, so
/// it is audited here: a `job` entry `interrupted` for every job still
/// out, a `query.result` entry `interrupted` for every query, committed
/// before the queries are marked failed. What the log already holds is not
/// audited twice (a crash between this commit and the marking, or between
/// a result's entry and its storing: such a query's entry stays the one
/// written, while the database, which lost the result, marks it failed).
/// Returns how many queries.
async fn fail_interrupted(store: &Store, log: &AuditLog, coordinator: &str) -> Result<u64> {
    let crate::store::Interrupted { queries, jobs } = store.interrupted().await?;
    if queries.is_empty() {
        return Ok(0);
    }
    let study_of = |query: &str| {
        queries
            .iter()
            .find(|q| q.query.id == query)
            .map(|q| (q.query.study_id.clone(), q.query.query_hash.clone()))
            .unwrap_or_default()
    };
    let mut entries: Vec<AuditEntry> = jobs
        .iter()
        .map(|(job, query, node)| {
            let (study_id, query_hash) = study_of(query);
            AuditEntry {
                study_id,
                query_id: query.clone(),
                job_id: job.clone(),
                node_id: node.clone(),
                query_hash,
                detail: "the coordinator stopped before the node's answer was recorded; what the node did is in its own job log".into(),
                ..AuditEntry::new(coordinator.to_string(), Role::Coordinator, Action::Job, Outcome::Interrupted)
            }
        })
        .collect();
    entries.extend(
        queries
            .iter()
            .filter(|q| !q.result_audited)
            .map(|q| AuditEntry {
                study_id: q.query.study_id.clone(),
                query_id: q.query.id.clone(),
                query_hash: q.query.query_hash.clone(),
                detail: if q.submit_audited {
                    "the coordinator stopped before this query finished (a restart, or a failover to a standby coordinator); submit it again".into()
                } else {
                    "never accepted: the coordinator stopped before the query's submission was recorded, and nothing was sent for it".into()
                },
                ..AuditEntry::new(q.query.researcher.clone(), Role::Researcher, Action::QueryResult, Outcome::Interrupted)
            }),
    );
    log.append_all(entries).await?;
    let failed = store.fail_interrupted().await?;
    warn!(
        queries = failed,
        jobs = jobs.len(),
        "queries left pending by the previous run were marked failed and their outcome audited"
    );
    Ok(failed)
}

struct CloseOnDrop(Store);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close_now();
    }
}

fn server_ended(
    r: std::result::Result<
        std::result::Result<(), tonic::transport::Error>,
        tokio::task::JoinError,
    >,
) -> Result<()> {
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.into()),
        Err(source) => Err(CoordinatorError::Task {
            task: "server",
            source,
        }),
    }
}

/// Waits on standby until this coordinator holds the lease; returns its
/// epoch and whom it took over from.
async fn wait_for_lease(
    lease: &Lease,
    phase: &watch::Sender<Phase>,
    readiness: &plexus_ops::Readiness,
    addr: std::net::SocketAddr,
) -> Result<Option<(i64, Option<(String, i64)>)>> {
    let mut seen = None;
    loop {
        match lease.try_acquire().await? {
            Attempt::Acquired { epoch, previous } => return Ok(Some((epoch, previous))),
            Attempt::HeldBy {
                holder,
                epoch,
                expires_in_ms,
            } => {
                if seen.as_ref() != Some(&(holder.clone(), epoch)) {
                    info!(instance = %lease.instance(), %addr, active = %holder, epoch, "on standby: another coordinator holds the lease");
                    let why = format!(
                        "this coordinator ({}) is on standby, the active one is {holder}",
                        lease.instance()
                    );
                    readiness.set("server", false, &why);
                    phase.send_replace(Phase::Standby(why));
                    seen = Some((holder, epoch));
                }
                let poll = (lease.ttl() / 4).min(Duration::from_millis(500));
                let wait = Duration::from_millis(expires_in_ms.max(0) as u64 + 20).min(poll);
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// The coordinator's gRPC services, and beside them the HTTP/JSON API
/// that calls the same services ([`crate::http`]).
fn routes(state: &Arc<State>) -> Result<Routes> {
    // Both reflection versions: grpcurl speaks v1, older tools only v1alpha.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(plexus_proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(plexus_proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let routes = Routes::new(reflection)
        .add_service(reflection_alpha)
        // A node's answer to a model_performance holds up to 10,000 pieces
        // for each of up to 200 groups.
        .add_service(
            NodeLinkServer::new(NodeLinkService {
                state: state.clone(),
            })
            .max_decoding_message_size(plexus_proto::convert::performance::MAX_MODEL_MESSAGE),
        )
        .add_service(ResearchServer::new(ResearchService {
            state: state.clone(),
        }))
        .add_service(
            AdminServer::new(AdminService {
                state: state.clone(),
            })
            .max_decoding_message_size(plexus_proto::convert::performance::MAX_MODEL_MESSAGE),
        )
        .add_service(AuditServer::new(AuditService {
            state: state.clone(),
        }));
    let router = routes.into_axum_router().merge(crate::http::router(state));
    Ok(Routes::from(router).prepare())
}

/// What the gate does with a call.
enum Phase {
    /// Hold it until the coordinator is active or on standby (calls made
    /// while the database opens wait, as they did for the listener).
    Starting,
    /// Refuse it as unavailable, saying why.
    Standby(String),
    /// Hand it to the services.
    Active(Routes),
}

/// The one service the server runs: refuses calls on standby, routes
/// them to the coordinator's services once active.
#[derive(Clone)]
struct Gate {
    phase: watch::Receiver<Phase>,
}

impl Gate {
    fn new() -> (Gate, watch::Sender<Phase>) {
        let (tx, rx) = watch::channel(Phase::Starting);
        (Gate { phase: rx }, tx)
    }

    /// The routes to hand a call to, or why it is refused.
    fn route(phase: &Phase) -> std::result::Result<Routes, tonic::Status> {
        match phase {
            Phase::Active(routes) => Ok(routes.clone()),
            Phase::Standby(why) => Err(tonic::Status::unavailable(why.clone())),
            Phase::Starting => Err(tonic::Status::unavailable(
                "this coordinator is starting; try again shortly",
            )),
        }
    }
}

impl tower::Service<tonic::codegen::http::Request<tonic::body::Body>> for Gate {
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future =
        futures::future::BoxFuture<'static, std::result::Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::result::Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
        let mut phase = self.phase.clone();
        Box::pin(async move {
            let routes = match phase.wait_for(|p| !matches!(p, Phase::Starting)).await {
                Ok(p) => Gate::route(&p),
                // The coordinator is gone (its run ended).
                Err(_) => Gate::route(&Phase::Starting),
            };
            match routes {
                Ok(mut routes) => routes.call(req).await.map(caller_mistakes),
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// tonic answers a request it cannot decode before any service sees it:
/// INTERNAL for a message nested past prost's recursion limit, OUT_OF_RANGE
/// for one over the size limit. Both are the caller's mistake, so they
/// leave as INVALID_ARGUMENT with the `invalid` code and a message saying
/// what to change; the services' own errors (which carry their code in the
/// metadata) pass unchanged.
fn caller_mistakes(
    response: tonic::codegen::http::Response<tonic::body::Body>,
) -> tonic::codegen::http::Response<tonic::body::Body> {
    let Some(status) = tonic::Status::from_header_map(response.headers()) else {
        return response;
    };
    if status
        .metadata()
        .contains_key(plexus_proto::convert::ERROR_CODE_KEY)
    {
        return response;
    }
    let message = match status.code() {
        tonic::Code::Internal if status.message().starts_with("failed to decode") => format!(
            "the request is not a message the coordinator can read: {} (a cohort may nest at most {} conditions deep)",
            short(status.message()),
            plexus_core::query::MAX_COHORT_DEPTH
        ),
        tonic::Code::OutOfRange => format!(
            "the request is larger than the coordinator accepts: {} (send a smaller query)",
            status.message()
        ),
        _ => return response,
    };
    plexus_proto::convert::to_status(&plexus_core::Error::invalid(message)).into_http()
}

/// The start and end of a long message (prost repeats the path of every
/// level of a too-deep message).
fn short(message: &str) -> String {
    let chars: Vec<char> = message.chars().collect();
    if chars.len() <= 200 {
        return message.to_string();
    }
    let head: String = chars[..80].iter().collect();
    let tail: String = chars[chars.len() - 80..].iter().collect();
    format!("{head} … {tail}")
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
                detail: format!("certificate serial {}, {crl}", loaded.cert_serial),
                ..AuditEntry::new(
                    state.config.coordinator.id.clone(),
                    Role::Coordinator,
                    Action::TlsReload,
                    Outcome::Ok,
                )
            })
            .await;
    }
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

/// What `/metrics` and `/readyz` serve, from the start (a standby is
/// alive but not ready).
fn endpoint(
    metrics: &Arc<Metrics>,
    readiness: &plexus_ops::Readiness,
    registry: &Arc<Registry>,
) -> plexus_ops::Endpoint {
    let (m, r) = (metrics.clone(), registry.clone());
    plexus_ops::Endpoint {
        registry: metrics.registry.clone(),
        readiness: readiness.clone(),
        refresh: Some(Arc::new(move || {
            let live = r.list().iter().filter(|(_, live)| *live).count();
            m.live_nodes.set(live as i64);
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

/// Start-up's quick integrity check of the database: a damaged SQLite file
/// is refused with its path, before anything is read from or added to it.
async fn check_database(store: &Store, url: &str) -> Result<()> {
    let damaged = |problems: &str| CoordinatorError::Damaged {
        url: url.to_string(),
        problems: problems.chars().take(800).collect(),
    };
    let checked = store
        .quick_check()
        .await
        .map_err(|e| damaged(&e.to_string()))?;
    if let Some(problems) = checked {
        return Err(damaged(&problems));
    }
    Ok(())
}
