//! Network administration: register studies, see which nodes are live
//! (researchers see the names and liveness of their studies' nodes only).

use std::collections::BTreeSet;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use plexus_core::audit::{self, Action, Outcome};
use plexus_core::{Error, StudyDefinition};
use plexus_proto::convert::{study_to_pb, to_status};
use plexus_proto::v1 as pb;
use plexus_proto::v1::admin_server::Admin;
use plexus_tls::Role;

use crate::state::State;
use crate::store::AuditEntry;

pub struct AdminService {
    pub state: Arc<State>,
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn register_study(
        &self,
        request: Request<pb::RegisterStudyRequest>,
    ) -> Result<Response<pb::Study>, Status> {
        let who = plexus_tls::require_role(&request, &[Role::Admin])?;
        let req = request.into_inner();
        let checked = req
            .study
            .ok_or_else(|| Error::invalid("the request carries no study"))
            .and_then(StudyDefinition::try_from)
            .and_then(|s| s.validate(&self.state.dictionary).map(|_| s));
        let def = match checked {
            Ok(d) => d,
            Err(e) => {
                self.state
                    .audit(AuditEntry {
                        detail: e.message.clone(),
                        ..AuditEntry::new(
                            who.name.clone(),
                            audit::Role::Admin,
                            Action::StudyRegister,
                            Outcome::Refused(Some(e.code)),
                        )
                    })
                    .await;
                return Err(to_status(&e));
            }
        };
        let existed = self
            .state
            .store
            .upsert_study(&def, &who.name)
            .await
            .map_err(|e| e.to_status())?;
        self.state
            .audit(AuditEntry {
                study_id: def.id.clone(),
                detail: format!("definition {}", &def.definition_hash()[..16]),
                ..AuditEntry::new(
                    who.name.clone(),
                    audit::Role::Admin,
                    if existed {
                        Action::StudyUpdate
                    } else {
                        Action::StudyRegister
                    },
                    Outcome::Ok,
                )
            })
            .await;
        let stored = self
            .state
            .store
            .study(&def.id)
            .await
            .map_err(|e| e.to_status())?
            .ok_or_else(|| Status::internal("study vanished after registration"))?;
        Ok(Response::new(study_to_pb(
            &stored.definition,
            stored.registered_at,
        )))
    }

    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let who =
            plexus_tls::require_role(&request, &[Role::Admin, Role::Auditor, Role::Researcher])?;
        if who.role == Role::Researcher {
            return Ok(Response::new(self.liveness_view(&who.name).await?));
        }
        let nodes = self
            .state
            .registry
            .list()
            .into_iter()
            .map(|(s, live)| pb::NodeInfo {
                node_id: s.node_id,
                live,
                version: s.version,
                dictionary_version: s.dictionary_version,
                data_snapshot: s.data_snapshot,
                connected_unix_ms: s.connected_at,
                last_heartbeat_unix_ms: s.last_heartbeat,
                peer_address: s.peer_address,
                degraded: s.degraded,
                health_detail: s.health_detail,
                clock_offset_ms: s.clock_offset_ms,
                mapping_notices: s.mapping_notices,
            })
            .collect();
        Ok(Response::new(pb::ListNodesResponse {
            nodes,
            liveness_only: false,
        }))
    }
}

impl AdminService {
    /// What a researcher sees: the nodes of the studies they are a member
    /// of (named in the study definitions they can already read), each
    /// with whether it is live, and nothing else. Withheld, because each
    /// tells a researcher more than whether their query can be answered:
    /// the address (a hospital's network layout), the software and
    /// dictionary versions (which flaws a node has), the data snapshot
    /// (it changes when data or consent change, which helps differencing
    /// attacks), connection and heartbeat times (answers count as
    /// heartbeats, so they show when other queries ran, and restarts), and
    /// the health detail (a hospital's database outages and host names).
    async fn liveness_view(&self, researcher: &str) -> Result<pb::ListNodesResponse, Status> {
        let studies = self
            .state
            .store
            .studies()
            .await
            .map_err(|e| e.to_status())?;
        let names: BTreeSet<String> = studies
            .into_iter()
            .filter(|s| s.definition.has_researcher(researcher))
            .flat_map(|s| s.definition.nodes)
            .collect();
        let registry = &self.state.registry;
        Ok(pb::ListNodesResponse {
            nodes: names
                .into_iter()
                .map(|node_id| pb::NodeInfo {
                    live: registry.is_live(&node_id),
                    node_id,
                    ..Default::default()
                })
                .collect(),
            liveness_only: true,
        })
    }
}
