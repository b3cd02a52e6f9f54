//! Network administration: register studies, see which nodes are live
//! (researchers see the names and liveness of their studies' nodes only).

use std::collections::BTreeSet;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use plexus_core::audit::{self, Action, Outcome};
use plexus_core::models::artefact::{ModelArtefact, ModelFormat, ModelSpec};
use plexus_core::models::registration::{self, PlexusModel};
use plexus_core::pool::{PooledResult, PooledValue};
use plexus_core::{Error, StudyDefinition};
use plexus_proto::convert::performance::{artefact_from_pb, spec_to_pb};
use plexus_proto::convert::{study_to_pb, to_status};
use plexus_proto::v1 as pb;
use plexus_proto::v1::admin_server::Admin;
use plexus_tls::{Identity, Role};

use crate::state::State;
use crate::store::{AuditEntry, StoredModel};

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

    async fn register_model(
        &self,
        request: Request<pb::RegisterModelRequest>,
    ) -> Result<Response<pb::Model>, Status> {
        let who = plexus_tls::require_role(&request, &[Role::Admin, Role::Researcher])?;
        let req = request.into_inner();
        let study_id = req.study_id.clone();
        let registered = match self.check_model(&who, req).await {
            Ok(m) => m,
            Err(e) => {
                self.state
                    .audit(AuditEntry {
                        study_id,
                        detail: e.message.clone(),
                        ..AuditEntry::new(
                            who.name.clone(),
                            audit_role(who.role),
                            Action::ModelRegister,
                            Outcome::Refused(Some(e.code)),
                        )
                    })
                    .await;
                return Err(to_status(&e));
            }
        };
        let (artefact, variables, operators, producer) = registered;
        let replaced = self
            .state
            .store
            .upsert_model(&study_id, &artefact, &who.name)
            .await
            .map_err(|e| e.to_status())?;
        self.state
            .audit(AuditEntry {
                study_id: study_id.clone(),
                detail: format!(
                    "model \"{}\" ({}) hash {} file sha256 {}{}",
                    artefact.spec.name,
                    artefact.spec.format.as_str(),
                    artefact.hash(),
                    artefact.file_sha256(),
                    if replaced {
                        ", replacing the model of that name"
                    } else {
                        ""
                    }
                ),
                ..AuditEntry::new(
                    who.name.clone(),
                    audit_role(who.role),
                    Action::ModelRegister,
                    Outcome::Ok,
                )
            })
            .await;
        let stored = self
            .state
            .store
            .model(&study_id, &artefact.spec.name)
            .await
            .map_err(|e| e.to_status())?
            .ok_or_else(|| Status::internal("model vanished after registration"))?;
        Ok(Response::new(model_to_pb(
            &stored, variables, operators, producer,
        )))
    }

    async fn list_models(
        &self,
        request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let who =
            plexus_tls::require_role(&request, &[Role::Admin, Role::Auditor, Role::Researcher])?;
        let req = request.into_inner();
        let study = self
            .study_for(&who, &req.study_id)
            .await
            .map_err(|e| to_status(&e))?;
        let dict = study
            .dictionary(&self.state.dictionary)
            .map_err(|e| to_status(&e))?;
        let models = self
            .state
            .store
            .models(&req.study_id)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(pb::ListModelsResponse {
            models: models
                .iter()
                .map(|m| {
                    let variables = registration::check(&m.artefact, &dict, &study.variables)
                        .map(|f| ModelArtefact::variables(&f))
                        .unwrap_or_default();
                    let (operators, producer) = match m.artefact.spec.format {
                        ModelFormat::Onnx => plexus_onnx::inspect(&m.artefact.bytes)
                            .map(|i| (i.operators, i.producer))
                            .unwrap_or_default(),
                        ModelFormat::Plexus => (Vec::new(), "plexus".into()),
                    };
                    model_to_pb(m, variables, operators, producer)
                })
                .collect(),
        }))
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

/// A registered model as the wire shows it.
fn model_to_pb(
    m: &StoredModel,
    variables: Vec<String>,
    operators: Vec<String>,
    producer: String,
) -> pb::Model {
    pb::Model {
        study_id: m.study_id.clone(),
        spec: Some(spec_to_pb(&m.artefact.spec)),
        hash: m.hash.clone(),
        file_sha256: m.artefact.file_sha256(),
        size: m.artefact.bytes.len() as u64,
        variables,
        operators,
        producer,
        registered_by: m.registered_by.clone(),
        registered_unix_ms: m.registered_at,
    }
}

fn audit_role(role: Role) -> audit::Role {
    match role {
        Role::Admin => audit::Role::Admin,
        Role::Auditor => audit::Role::Auditor,
        _ => audit::Role::Researcher,
    }
}

/// A model checked for registration: the artefact, the variables it
/// reads, and (ONNX) its operators and producer.
type Registered = (ModelArtefact, Vec<String>, Vec<String>, String);

impl AdminService {
    /// The study `id`, if `who` may see it: an admin or auditor any, a
    /// researcher only their own.
    async fn study_for(&self, who: &Identity, id: &str) -> Result<StudyDefinition, Error> {
        let study = self
            .state
            .store
            .study(id)
            .await
            .map_err(|e| e.to_core())?
            .map(|s| s.definition);
        match study {
            Some(s) if who.role != Role::Researcher || s.has_researcher(&who.name) => Ok(s),
            // The same answer for a study that does not exist and one the
            // researcher is not a member of.
            _ => Err(Error::not_found(format!(
                "no study \"{id}\" of yours (`plexus study list` shows them)"
            ))),
        }
    }

    /// Checks a registration: the study, the model (a file with its spec,
    /// or a fitted model from a query of the study), its inputs against
    /// the study's dictionary and variables, and an ONNX file's operators,
    /// size, input width and output.
    async fn check_model(
        &self,
        who: &Identity,
        req: pb::RegisterModelRequest,
    ) -> Result<Registered, Error> {
        let study = self.study_for(who, &req.study_id).await?;
        let artefact = match (req.model, req.from_query.is_empty()) {
            (Some(m), true) => {
                let m = artefact_from_pb(m)?;
                // A Plexus model is registered from the query that fitted
                // it, with its source set here: an uploaded one could carry
                // any coefficients or trees under a source it names itself.
                if m.spec.format == ModelFormat::Plexus {
                    return Err(Error::invalid(format!(
                        "model \"{}\" is in Plexus's own format: register a model Plexus fitted from its query (from_query, `plexus model register --from-query ID`), or an ONNX file",
                        m.spec.name
                    )));
                }
                m
            }
            (None, false) => self.fitted_model(&study, &req.from_query, &req.name).await?,
            _ => {
                return Err(Error::invalid(
                    "register either a model file with its spec or a fitted model from a query (from_query and name), not both or neither",
                ))
            }
        };
        let dict = study.dictionary(&self.state.dictionary)?;
        let features = registration::check(&artefact, &dict, &study.variables)?;
        let (operators, producer) = match artefact.spec.format {
            ModelFormat::Onnx => {
                let info = plexus_onnx::inspect(&artefact.bytes)?;
                if let Some(width) = info.width.filter(|w| *w != features.len()) {
                    return Err(Error::invalid(format!(
                        "model \"{}\": its input \"{}\" has {width} columns and the registration maps {} inputs ({}); map exactly one dictionary variable or level to each column, in order",
                        artefact.spec.name,
                        info.input,
                        features.len(),
                        artefact.spec.inputs.join(", ")
                    )));
                }
                // Load it once as a node would, so a model that cannot run
                // is refused here and not at every hospital.
                plexus_onnx::OnnxScorer::load(
                    &artefact.bytes,
                    features.len(),
                    artefact.spec.output.as_deref(),
                )?;
                (info.operators, info.producer)
            }
            ModelFormat::Plexus => (Vec::new(), "plexus".into()),
        };
        Ok((
            artefact,
            ModelArtefact::variables(&features),
            operators,
            producer,
        ))
    }

    /// A model Plexus fitted in a finished query of the study.
    async fn fitted_model(
        &self,
        study: &StudyDefinition,
        query_id: &str,
        name: &str,
    ) -> Result<ModelArtefact, Error> {
        let q = self
            .state
            .store
            .query(query_id)
            .await
            .map_err(|e| e.to_core())?
            .filter(|q| q.study_id == study.id)
            .ok_or_else(|| {
                Error::not_found(format!("no query \"{query_id}\" in study \"{}\"", study.id))
            })?;
        let json = q.result_json.ok_or_else(|| {
            Error::invalid(format!(
                "query \"{query_id}\" has no result (yet); register its model once it finished"
            ))
        })?;
        let result: PooledResult = serde_json::from_str(&json)
            .map_err(|e| Error::internal(format!("stored result is unreadable: {e}")))?;
        let model = match &result.value {
            PooledValue::Glm(g) => PlexusModel::from_glm(g)?,
            PooledValue::Gbdt(g) => PlexusModel::from_gbdt(g)?,
            _ => {
                return Err(Error::invalid(format!(
                    "query \"{query_id}\" fitted no model Plexus can register (a binomial glm or a logistic gbdt)"
                )))
            }
        };
        Ok(ModelArtefact {
            spec: ModelSpec {
                name: name.to_string(),
                format: ModelFormat::Plexus,
                inputs: Vec::new(),
                output: None,
                source: format!("query {query_id}"),
            },
            bytes: serde_json::to_vec(&model).expect("model serialises"),
        })
    }

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
