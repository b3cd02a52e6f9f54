//! The nodes' long-lived streams: registration, heartbeats, jobs down and
//! results up. Only a certificate with role `node` may connect, and only
//! under its own name.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, info_span, warn, Instrument};

use plexus_proto::v1 as pb;
use plexus_proto::v1::node_link_server::NodeLink;
use plexus_tls::Role;

use crate::registry::NodeState;
use crate::state::State;
use crate::store::{now_ms, AuditEntry};

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
        let peer_addr = plexus_tls::peer(&request)?.remote_addr.to_string();
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
        if hello.node_id != identity.name {
            self.state
                .audit(AuditEntry {
                    who: identity.name.clone(),
                    role: "node".into(),
                    action: "node.connect".into(),
                    node_id: hello.node_id.clone(),
                    outcome: "refused".into(),
                    detail: "node id does not match its certificate".into(),
                    ..Default::default()
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
        let conn_id = self.state.registry.connect(
            NodeState {
                node_id: node_id.clone(),
                version: hello.version.clone(),
                dictionary_version: hello.dictionary_version.clone(),
                data_snapshot: hello.data_snapshot.clone(),
                connected_at: now,
                last_heartbeat: now,
                peer_address: peer_addr.clone(),
            },
            tx,
        );
        info!(node = %node_id, peer = %peer_addr, version = %hello.version, "node connected");
        self.state
            .audit(AuditEntry {
                who: node_id.clone(),
                role: "node".into(),
                action: "node.connect".into(),
                node_id: node_id.clone(),
                outcome: "ok".into(),
                detail: format!("version {} from {peer_addr}", hello.version),
                ..Default::default()
            })
            .await;

        let state = self.state.clone();
        let span = info_span!("node_stream", node = %node_id);
        tokio::spawn(
            async move {
                loop {
                    let msg = tokio::select! {
                        m = inbound.message() => m,
                        _ = state.shutdown.cancelled() => break,
                    };
                    match msg {
                        Ok(Some(m)) => handle(&state, &node_id, conn_id, m),
                        Ok(None) => break,
                        Err(e) => {
                            // A node that stops or loses its network ends here too.
                            info!(reason = %e.message(), "node stream ended without a goodbye");
                            break;
                        }
                    }
                }
                state.registry.disconnect(&node_id, conn_id);
                info!("node disconnected");
                state
                    .audit(AuditEntry {
                        who: node_id.clone(),
                        role: "node".into(),
                        action: "node.disconnect".into(),
                        node_id: node_id.clone(),
                        outcome: "ok".into(),
                        ..Default::default()
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

fn handle(state: &State, node_id: &str, conn_id: u64, m: pb::NodeMessage) {
    match m.msg {
        Some(pb::node_message::Msg::Heartbeat(_)) => state.registry.heartbeat(node_id, conn_id),
        Some(pb::node_message::Msg::Result(r)) => {
            state.registry.heartbeat(node_id, conn_id);
            let privacy = r.privacy;
            let reply = r
                .outcome
                .map(|o| (o, privacy))
                .ok_or_else(|| "answer without an outcome".to_string());
            if let Err(e) = state.registry.deliver(node_id, &r.job_id, reply) {
                warn!(job_id = %r.job_id, reason = %e, "answer ignored");
            }
        }
        Some(pb::node_message::Msg::Hello(_)) => warn!("repeated hello ignored"),
        None => warn!("empty message ignored"),
    }
}
