//! The nodes' long-lived streams: registration, heartbeats, jobs down and
//! results up. Only a certificate with role `node` may connect, and only
//! under its own name.
//!
//! One stream per node identity, and the newest wins: a second `Attach`
//! under a node's certificate replaces the first, whose stream ends with
//! [`REPLACED`] (status `aborted`) so that a legitimate node reconnects,
//! and each replacement is audited as `node.replaced` with both peers'
//! addresses. A stolen key is answered by revoking the certificate, not by
//! this rule: an impostor and the real node would keep replacing each
//! other, which the warnings and the `plexus_node_replacements` metric
//! show.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, info_span, warn, Instrument};

use plexus_core::audit::{self, Action, Outcome};
use plexus_proto::v1 as pb;
use plexus_proto::v1::node_link_server::NodeLink;
use plexus_tls::Role;

use crate::registry::{Connected, NodeState, Replaced, SignedReply};
use crate::state::State;
use crate::store::{now_ms, AuditEntry};

/// The coordinator's readiness check for its own clock against its nodes'.
const CLOCK_CHECK: &str = "clock";

/// What the node whose stream a newer connection replaced is told. Nodes
/// tell it by its code, `aborted`, which nothing else on this stream uses.
pub const REPLACED: &str = "another connection with this node's identity replaced this stream; the node reconnects by itself, and if this repeats, two daemons run with one certificate: stop one of them (or revoke the certificate if its key was copied)";

/// A connection replaced sooner than this after it connected is probably
/// one of two daemons fighting over one identity, not a reconnection.
const FLAP_WINDOW_MS: i64 = 60_000;

/// The hello's strings reach `plexus nodes` and the audit log: refused when
/// they hold a control character (see [`plexus_core::text`]).
fn check_hello(h: &pb::Hello) -> Result<(), plexus_core::Error> {
    use plexus_core::text::check;
    check("hello.node_id", &h.node_id)?;
    check("hello.version", &h.version)?;
    check("hello.dictionary_version", &h.dictionary_version)?;
    check("hello.data_snapshot", &h.data_snapshot)?;
    plexus_core::text::check_all("hello.mapping_notices", &h.mapping_notices)
}

/// At most this many mapping notices of a node are kept, each cut to
/// [`NOTICE_CHARS`]: enough for any real mapping, and a node cannot fill
/// the coordinator's memory or the admin's screen.
const NOTICES: usize = 64;
const NOTICE_CHARS: usize = 500;

pub struct NodeLinkService {
    pub state: Arc<State>,
}

type OutStream = Pin<Box<dyn Stream<Item = Result<pb::CoordinatorMessage, Status>> + Send>>;

#[tonic::async_trait]
impl NodeLink for NodeLinkService {
    type AttachStream = OutStream;

    async fn attach(
        &self,
        request: Request<Streaming<pb::NodeMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let identity = plexus_tls::require_role(&request, &[Role::Node])?;
        let peer = plexus_tls::peer(&request)?;
        let peer_addr = peer.remote_addr.to_string();
        let certificate = peer.certificate.as_ref().to_vec();
        let mut inbound = request.into_inner();

        let hello = match inbound.message().await? {
            Some(pb::NodeMessage {
                msg: Some(pb::node_message::Msg::Hello(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message on the stream must be hello",
                ))
            }
        };
        if let Err(e) = check_hello(&hello) {
            self.state
                .audit(AuditEntry {
                    node_id: identity.name.clone(),
                    detail: e.message.clone(),
                    ..AuditEntry::new(
                        identity.name.clone(),
                        audit::Role::Node,
                        Action::NodeConnect,
                        Outcome::Refused(Some(e.code)),
                    )
                })
                .await;
            return Err(plexus_proto::convert::to_status(&e));
        }
        if hello.node_id != identity.name {
            self.state
                .audit(AuditEntry {
                    node_id: hello.node_id.clone(),
                    detail: "node id does not match its certificate".into(),
                    ..AuditEntry::new(
                        identity.name.clone(),
                        audit::Role::Node,
                        Action::NodeConnect,
                        Outcome::Refused(None),
                    )
                })
                .await;
            return Err(Status::permission_denied(format!(
                "node id \"{}\" does not match the certificate's name \"{}\"; set node.id to the name the certificate was issued for",
                hello.node_id, identity.name
            )));
        }
        let node_id = identity.name.clone();
        let now = now_ms();
        let (tx, rx) = mpsc::channel(64);
        let welcome = pb::CoordinatorMessage {
            msg: Some(pb::coordinator_message::Msg::Welcome(pb::Welcome {
                coordinator_id: self.state.config.coordinator.id.clone(),
                coordinator_unix_ms: now_ms(),
                heartbeat_interval_ms: (self.state.config.coordinator.heartbeat_interval_secs
                    * 1000) as i64,
            })),
        };
        tx.send(Ok(welcome))
            .await
            .map_err(|_| Status::internal("stream closed"))?;
        if hello.dictionary_version != self.state.dictionary.fingerprint() {
            warn!(node = %node_id, node_dictionary = %hello.dictionary_version, coordinator_dictionary = %self.state.dictionary.fingerprint(), "node uses another data dictionary");
        }
        // Kept to tell the node why, should a new revocation list cut it off.
        let revoked_tx = tx.clone();
        let Connected {
            conn_id,
            closed,
            replaced,
        } = self.state.registry.connect(
            NodeState {
                node_id: node_id.clone(),
                version: hello.version.clone(),
                dictionary_version: hello.dictionary_version.clone(),
                data_snapshot: hello.data_snapshot.clone(),
                connected_at: now,
                last_heartbeat: now,
                peer_address: peer_addr.clone(),
                witnessed_size: hello.witnessed_size,
                mapping_notices: hello
                    .mapping_notices
                    .iter()
                    .take(NOTICES)
                    .map(|n| n.chars().take(NOTICE_CHARS).collect())
                    .collect(),
                ..Default::default()
            },
            tx,
        );
        info!(node = %node_id, peer = %peer_addr, version = %hello.version, "node connected");
        self.state
            .audit(AuditEntry {
                node_id: node_id.clone(),
                detail: format!("version {} from {peer_addr}", hello.version),
                ..AuditEntry::new(
                    node_id.clone(),
                    audit::Role::Node,
                    Action::NodeConnect,
                    Outcome::Ok,
                )
            })
            .await;
        if let Some(old) = replaced {
            close_replaced(&self.state, &node_id, &peer_addr, old).await;
        }

        let state = self.state.clone();
        let span = info_span!("node_stream", node = %node_id);
        let mut tls = self.state.tls.clone();
        tokio::spawn(
            async move {
                let peer_cert = plexus_tls::CertificateDer::from(certificate.clone());
                let mut refused_text = false;
                loop {
                    let msg = tokio::select! {
                        m = inbound.message() => m,
                        // A newer connection took over; `node.replaced` says so.
                        _ = closed.cancelled() => break,
                        loaded = tls.changed() => {
                            if loaded.crl.as_ref().is_some_and(|crl| crl.revokes(&peer_cert)) {
                                cut_revoked(&state, &node_id, &revoked_tx).await;
                                break;
                            }
                            continue;
                        }
                        _ = state.shutdown.cancelled() => break,
                    };
                    match msg {
                        Ok(Some(m)) => {
                            handle(
                                &state,
                                &node_id,
                                conn_id,
                                &certificate,
                                m,
                                &mut refused_text,
                            )
                            .await
                        }
                        Ok(None) => break,
                        Err(e) => {
                            // A node that stops or loses its network ends here too.
                            info!(reason = %e.message(), "node stream ended without a goodbye");
                            break;
                        }
                    }
                }
                let current = state.registry.disconnect(&node_id, conn_id);
                if closed.is_cancelled() {
                    info!(peer = %peer_addr, "replaced node stream closed");
                    return;
                }
                info!(peer = %peer_addr, "node disconnected");
                state
                    .audit(AuditEntry {
                        node_id: node_id.clone(),
                        detail: format!(
                            "stream from {peer_addr} ended{}",
                            if current {
                                ""
                            } else {
                                "; a newer connection stays"
                            }
                        ),
                        ..AuditEntry::new(
                            node_id.clone(),
                            audit::Role::Node,
                            Action::NodeDisconnect,
                            Outcome::Ok,
                        )
                    })
                    .await;
            }
            .instrument(span),
        );
        let shutdown = self.state.shutdown.clone();
        let out = ReceiverStream::new(rx).take_until(async move { shutdown.cancelled().await });
        Ok(Response::new(Box::pin(out)))
    }
}

/// Newest wins: the older stream of `node_id` ends with [`REPLACED`], and
/// the replacement is counted, logged and audited with both peers'
/// addresses. A replaced connection that had only just connected points
/// at two daemons sharing one certificate, and the warning says so.
async fn close_replaced(state: &State, node_id: &str, new_peer: &str, old: Replaced) {
    let old_peer = old.state.peer_address.clone();
    let old_age_ms = (now_ms() - old.state.connected_at).max(0);
    old.close(Status::aborted(REPLACED));
    state.metrics.node_replaced(node_id);
    if old_age_ms < FLAP_WINDOW_MS {
        warn!(%old_peer, %new_peer, old_age_ms, "a new connection with this node's identity replaced one that was under a minute old; if this repeats, two daemons run with one certificate (or its key was copied): stop one of them, or revoke the certificate");
    } else {
        warn!(%old_peer, %new_peer, old_age_ms, "a new connection with this node's identity replaced the open one (a reconnection before the old stream was seen to end, or another holder of the node's key)");
    }
    state
        .audit(AuditEntry {
            node_id: node_id.to_string(),
            detail: format!(
                "connection from {new_peer} replaced the one from {old_peer} (open {} s), whose stream was closed",
                old_age_ms / 1000
            ),
            ..AuditEntry::new(node_id.to_string(), audit::Role::Node, Action::NodeReplaced, Outcome::Ok)
        })
        .await;
}

/// A revocation list loaded while the node was connected revokes its
/// certificate: the stream ends with the reason, and the node's next
/// connection is refused at the handshake.
async fn cut_revoked(
    state: &State,
    node_id: &str,
    tx: &mpsc::Sender<Result<pb::CoordinatorMessage, Status>>,
) {
    warn!("the node's certificate was revoked by the new revocation list; closing its stream");
    let _ = tx
        .send(Err(Status::permission_denied(
            "this node's certificate has been revoked by the network's certificate revocation list; ask the network admin for a new certificate",
        )))
        .await;
    state
        .audit(AuditEntry {
            node_id: node_id.to_string(),
            detail: "certificate revoked while connected; stream closed".into(),
            ..AuditEntry::new(
                node_id.to_string(),
                audit::Role::Node,
                Action::NodeRevoked,
                Outcome::Refused(None),
            )
        })
        .await;
}

async fn handle(
    state: &State,
    node_id: &str,
    conn_id: u64,
    certificate: &[u8],
    m: pb::NodeMessage,
    refused_text: &mut bool,
) {
    match m.msg {
        Some(pb::node_message::Msg::Heartbeat(mut beat)) => {
            // Still a sign of life; only the text is refused.
            let checks = [
                plexus_core::text::check("heartbeat.data_snapshot", &beat.data_snapshot),
                plexus_core::text::check("heartbeat.health_detail", &beat.health_detail),
            ];
            if let Some(e) = checks.into_iter().find_map(Result::err) {
                if !*refused_text {
                    warn!(reason = %e.message, "heartbeat text refused; liveness and the degraded flag kept");
                    *refused_text = true;
                }
                beat.data_snapshot.clear();
                beat.health_detail = format!("refused from the node: {}", e.message);
            }
            if let Some((tx, echo)) = state.registry.heartbeat_with(node_id, conn_id, &beat) {
                // Best effort: a full stream only loses one measurement.
                let _ = tx.try_send(Ok(pb::CoordinatorMessage {
                    msg: Some(pb::coordinator_message::Msg::Clock(echo)),
                }));
            }
            match state.registry.clock_problem() {
                Some(why) => state.readiness.set(CLOCK_CHECK, false, why),
                None => state.readiness.set(CLOCK_CHECK, true, ""),
            }
        }
        Some(pb::node_message::Msg::Result(r)) => {
            state.registry.heartbeat(node_id, conn_id);
            let (reply, job_hash) = match open_result(node_id, certificate, &r) {
                Ok((reply, hash)) => (Ok(reply), Some(hash)),
                Err(e) => (Err(e), None),
            };
            if let Err(e) = state
                .registry
                .deliver(node_id, &r.job_id, job_hash.as_deref(), reply)
            {
                warn!(job_id = %r.job_id, reason = %e, "answer ignored");
            }
        }
        Some(pb::node_message::Msg::Held(h)) => {
            state.registry.heartbeat(node_id, conn_id);
            match state.registry.hold(node_id, &h.job_id) {
                Ok((study_id, query_hash)) => {
                    info!(job_id = %h.job_id, "result held for review at the node");
                    state
                        .audit(AuditEntry {
                            study_id,
                            job_id: h.job_id.clone(),
                            node_id: node_id.to_string(),
                            query_hash,
                            detail: format!(
                                "result held for review by the data steward of {node_id}"
                            ),
                            ..AuditEntry::new(
                                node_id.to_string(),
                                audit::Role::Node,
                                Action::Job,
                                Outcome::Held,
                            )
                        })
                        .await;
                }
                Err(e) => warn!(job_id = %h.job_id, reason = %e, "hold notice ignored"),
            }
        }
        Some(pb::node_message::Msg::Hello(_)) => warn!("repeated hello ignored"),
        None => warn!("empty message ignored"),
    }
}

/// Checks a node's signed statement about a job against its certificate
/// and takes the outcome from it. Returns the statement's job hash, which
/// the registry compares with the job it sent.
fn open_result(
    node_id: &str,
    certificate: &[u8],
    r: &pb::JobResult,
) -> Result<(SignedReply, Vec<u8>), String> {
    plexus_tls::verify_by_certificate(certificate, &r.statement, &r.signature)
        .map_err(|e| format!("the node's result is not signed by its certificate: {e}"))?;
    let statement = pb::ResultStatement::decode(r.statement.as_slice())
        .map_err(|e| format!("the node's signed statement is not valid: {e}"))?;
    if statement.node_id != node_id || statement.job_id != r.job_id {
        return Err(format!(
            "the node's signed statement is about job {} of node {}",
            statement.job_id, statement.node_id
        ));
    }
    let outcome = match statement.outcome {
        // The node's reason reaches the researcher and the audit log:
        // escaped here rather than refused, since the signed statement
        // (kept as it came) is evidence of the node's decision.
        Some(pb::result_statement::Outcome::Error(mut e)) => {
            e.message = plexus_core::text::escape(&e.message).into_owned();
            pb::job_result::Outcome::Error(e)
        }
        Some(signed) => signed.into(),
        None => return Err("the node's signed statement has no outcome".into()),
    };
    Ok((
        SignedReply {
            outcome,
            privacy: statement.privacy,
            statement: r.statement.clone(),
            signature: r.signature.clone(),
            certificate: certificate.to_vec(),
            review: statement.review,
        },
        statement.job_hash,
    ))
}
