//! The researchers' service: submit a pooled query inside a study they are
//! members of, fetch or wait for its result, list their studies.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use plexus_core::audit::{self, Action, Outcome};
use plexus_core::privacy::report::precheck;
use plexus_core::{Error, Query};
use plexus_proto::convert::{dictionary_to_pb, study_to_pb, to_status};
use plexus_proto::v1 as pb;
use plexus_proto::v1::research_server::Research;
use plexus_tls::Role;

use crate::state::State;
use crate::store::{now_ms, AuditEntry, QueryStatus, StoredQuery};

pub struct ResearchService {
    pub state: Arc<State>,
}

/// Longest a `GetResult` call may wait.
const MAX_WAIT: Duration = Duration::from_secs(300);

impl ResearchService {
    async fn precheck(
        &self,
        study: &plexus_core::StudyDefinition,
        query: &Query,
    ) -> Result<Result<f64, Error>, Status> {
        if study.secure_aggregation {
            // What secure aggregation does not answer is refused here,
            // before any node is asked.
            let secure = plexus_core::secagg::supported(query).and_then(|_| {
                self.state
                    .dictionary_for(study)
                    .and_then(|d| plexus_core::secagg::vector_len(&query.analysis, &d))
            });
            if let Err(e) = secure {
                return Ok(Err(e));
            }
        }
        if study.privacy.exact {
            return Ok(Ok(0.0));
        }
        let store = &self.state.store;
        let (spent, _) = store.spent(&study.id).await.map_err(|e| e.to_status())?;
        let repeat = match self.state.charge_key(study, query) {
            Ok(h) => store
                .charged_before(&study.id, &h)
                .await
                .map_err(|e| e.to_status())?,
            Err(e) => return Ok(Err(e)),
        };
        Ok(precheck(study, query, spent, repeat))
    }

    /// Fills in a `model_performance`'s model as registered with the
    /// study: its approved hash and the variables it reads. A hash the
    /// researcher gave must be the registered one.
    async fn resolve_model(
        &self,
        study: &plexus_core::StudyDefinition,
        dict: &plexus_core::Dictionary,
        query: &mut plexus_core::Query,
    ) -> Result<(), Error> {
        let plexus_core::Analysis::ModelPerformance {
            model,
            model_hash,
            inputs,
            ..
        } = &mut query.analysis
        else {
            return Ok(());
        };
        plexus_core::text::check("analysis.model_performance.model", model)?;
        let stored = self
            .state
            .store
            .model(&study.id, model)
            .await
            .map_err(|e| e.to_core())?
            .ok_or_else(|| {
                Error::not_found(format!(
                    "no model \"{model}\" is registered with study \"{}\" (`plexus model list --study {}` shows them; `plexus model register` adds one)",
                    study.id, study.id
                ))
            })?;
        if !model_hash.is_empty() && *model_hash != stored.hash {
            return Err(Error::policy(format!(
                "model \"{model}\" of study \"{}\" is registered with hash {}, not the {model_hash} the query names: it was registered again since; check the new model and ask again with its hash (or none)",
                study.id, stored.hash
            )));
        }
        let features =
            plexus_core::models::registration::check(&stored.artefact, dict, &study.variables)?;
        *model_hash = stored.hash;
        *inputs = plexus_core::models::artefact::ModelArtefact::variables(&features);
        Ok(())
    }

    async fn refuse(&self, who: &str, study: &str, e: Error) -> Status {
        // Refused before it was parsed or checked: its analysis is not known.
        self.state
            .metrics
            .query("unknown", &format!("refused:{}", e.code));
        self.state
            .audit(AuditEntry {
                study_id: study.to_string(),
                detail: e.message.clone(),
                ..AuditEntry::new(
                    who,
                    audit::Role::Researcher,
                    Action::QuerySubmit,
                    Outcome::Refused(Some(e.code)),
                )
            })
            .await;
        to_status(&e)
    }
}

#[tonic::async_trait]
impl Research for ResearchService {
    async fn submit_query(
        &self,
        request: Request<pb::SubmitQueryRequest>,
    ) -> Result<Response<pb::SubmitQueryResponse>, Status> {
        let who = plexus_tls::require_role(&request, &[Role::Researcher])?;
        let req = request.into_inner();
        if let Err(e) = plexus_core::text::check("study_id", &req.study_id) {
            let shown = plexus_core::text::escape(&req.study_id).into_owned();
            return Err(self.refuse(&who.name, &shown, e).await);
        }
        if self.state.draining.is_cancelled() {
            let e = Error::unavailable(crate::shutdown::SHUTTING_DOWN);
            return Err(self.refuse(&who.name, &req.study_id, e).await);
        }
        let study = match self.state.store.study(&req.study_id).await {
            Ok(Some(s)) => s.definition,
            Ok(None) => {
                let e = Error::not_found(format!(
                    "study \"{}\" is not registered (list your studies with `plexus study list`)",
                    req.study_id
                ));
                return Err(self.refuse(&who.name, &req.study_id, e).await);
            }
            Err(e) => return Err(e.to_status()),
        };
        if !study.has_researcher(&who.name) {
            let e = Error::policy(format!(
                "researcher \"{}\" is not a member of study \"{}\"; ask the network admin to add you",
                who.name, study.id
            ));
            return Err(self.refuse(&who.name, &study.id, e).await);
        }
        let read = self
            .state
            .dictionary_for(&study)
            .and_then(|dict| read_query(req.query, &req.query_json, &dict).map(|q| (q, dict)));
        let read = match read {
            // Checked against the dictionary (first: no later message echoes
            // a control character) and the study before a model is looked
            // up, and again with the variables the model reads.
            Ok((mut q, dict)) => match q.validate(&dict).and_then(|_| study.permits(&q)) {
                Ok(()) => self.resolve_model(&study, &dict, &mut q).await,
                Err(e) => Err(e),
            }
            .and_then(|_| q.validate(&dict))
            .and_then(|_| study.permits(&q))
            .map(|_| q),
            Err(e) => Err(e),
        };
        let query = match read {
            Ok(q) => q,
            Err(e) => return Err(self.refuse(&who.name, &study.id, e).await),
        };
        // A query the study's budget cannot pay for is refused here, before
        // any node spends anything on it.
        if let Err(e) = self.precheck(&study, &query).await? {
            return Err(self.refuse(&who.name, &study.id, e).await);
        }
        // Time-ordered (UUIDv7), so that stored queries and their jobs
        // are appended to the end of their indexes.
        let id = uuid::Uuid::now_v7().to_string();
        let stored = StoredQuery {
            id: id.clone(),
            study_id: study.id.clone(),
            researcher: who.name.clone(),
            query_json: serde_json::to_string(&query).expect("query serialises"),
            query_hash: query.hash(),
            status: QueryStatus::Pending,
            result_json: None,
            error: None,
            submitted_at: now_ms(),
            finished_at: None,
        };
        self.state
            .store
            .insert_query(&stored)
            .await
            .map_err(|e| e.to_status())?;
        // Write-ahead: the query is accepted (and run) only once its
        // `query.submit` entry is durable. Not recorded, not run.
        let submitted = self
            .state
            .audit_log
            .append(AuditEntry {
                study_id: study.id.clone(),
                purpose: study.purpose().map(|p| p.to_string()).unwrap_or_default(),
                nodes: study.nodes.clone(),
                query_id: id.clone(),
                query_hash: stored.query_hash.clone(),
                detail: match &query.analysis {
                    plexus_core::Analysis::ModelPerformance {
                        model, model_hash, ..
                    } => format!(
                        "{} on {} variables, model \"{model}\" hash {model_hash}",
                        query.analysis.kind(),
                        query.variables().len()
                    ),
                    _ => format!(
                        "{} on {} variables",
                        query.analysis.kind(),
                        query.variables().len()
                    ),
                },
                ..AuditEntry::new(
                    who.name.clone(),
                    audit::Role::Researcher,
                    Action::QuerySubmit,
                    Outcome::Accepted,
                )
            })
            .await;
        match submitted {
            Ok(seq) => {
                self.state.metrics.audit_entries.set(seq);
            }
            Err(e) => {
                let e = e.to_core();
                let e = Error::new(
                    e.code,
                    format!(
                        "query {id} was not run: {} (submit it again once the coordinator's database takes writes)",
                        e.message
                    ),
                );
                tracing::error!(query_id = %id, error = %e.message, "query refused: its audit entry could not be written");
                if let Err(stored) = self.state.store.finish_query(&id, Err(&e)).await {
                    // Still pending: the next start marks it interrupted
                    // and audits that.
                    tracing::warn!(query_id = %id, error = %stored, "could not mark the refused query failed");
                }
                self.state.metrics.query(
                    query.analysis.kind().as_str(),
                    &format!("refused:{}", e.code),
                );
                return Err(to_status(&e));
            }
        }
        self.state.queries.spawn(crate::query::run(
            self.state.clone(),
            id.clone(),
            study,
            query,
            who.name,
        ));
        Ok(Response::new(pb::SubmitQueryResponse { query_id: id }))
    }

    async fn get_result(
        &self,
        request: Request<pb::GetResultRequest>,
    ) -> Result<Response<pb::QueryResult>, Status> {
        let who = plexus_tls::require_role(&request, &[Role::Researcher])?;
        let req = request.into_inner();
        let wait = Duration::from_millis(u64::from(req.wait_ms)).min(MAX_WAIT);
        let mut finished = self.state.finished.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let q = self
                .state
                .store
                .query(&req.query_id)
                .await
                .map_err(|e| e.to_status())?
                .filter(|q| q.researcher == who.name)
                .ok_or_else(|| {
                    to_status(&Error::not_found(format!(
                        "no query \"{}\" submitted by you",
                        req.query_id
                    )))
                })?;
            if q.status != QueryStatus::Pending || tokio::time::Instant::now() >= deadline {
                return Ok(Response::new(to_pb(q)));
            }
            if self.state.shutdown.is_cancelled() {
                return Err(Status::unavailable(crate::shutdown::SHUTTING_DOWN));
            }
            // A query finishing as the server stops wakes both branches:
            // either way the loop reads its final state once more.
            let ours = async {
                loop {
                    match finished.recv().await {
                        Ok(id) if id == req.query_id => return,
                        Ok(_) => {}
                        // Missed some: ours may be among them.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            return std::future::pending().await
                        }
                    }
                }
            };
            tokio::select! {
                _ = ours => {}
                _ = tokio::time::sleep_until(deadline) => {}
                _ = self.state.shutdown.cancelled() => {}
            }
        }
    }

    async fn get_budget(
        &self,
        request: Request<pb::GetBudgetRequest>,
    ) -> Result<Response<pb::BudgetReport>, Status> {
        let who =
            plexus_tls::require_role(&request, &[Role::Researcher, Role::Admin, Role::Auditor])?;
        let req = request.into_inner();
        Ok(Response::new(self.budget(&who, &req.study_id).await?))
    }

    async fn get_dictionary(
        &self,
        request: Request<pb::GetDictionaryRequest>,
    ) -> Result<Response<pb::Dictionary>, Status> {
        plexus_tls::require_role(&request, &[Role::Researcher, Role::Admin, Role::Auditor])?;
        Ok(Response::new(dictionary_to_pb(&self.state.dictionary)))
    }

    async fn list_studies(
        &self,
        request: Request<pb::ListStudiesRequest>,
    ) -> Result<Response<pb::ListStudiesResponse>, Status> {
        let who =
            plexus_tls::require_role(&request, &[Role::Researcher, Role::Admin, Role::Auditor])?;
        let studies = self
            .state
            .store
            .studies()
            .await
            .map_err(|e| e.to_status())?;
        let studies = studies
            .into_iter()
            .filter(|s| who.role != Role::Researcher || s.definition.has_researcher(&who.name))
            .map(|s| study_to_pb(&s.definition, s.registered_at))
            .collect();
        Ok(Response::new(pb::ListStudiesResponse { studies }))
    }
}

impl ResearchService {
    async fn budget(
        &self,
        who: &plexus_tls::Identity,
        study_id: &str,
    ) -> Result<pb::BudgetReport, Status> {
        let study = self
            .state
            .store
            .study(study_id)
            .await
            .map_err(|e| e.to_status())?
            .map(|s| s.definition)
            .filter(|s| who.role != Role::Researcher || s.has_researcher(&who.name))
            .ok_or_else(|| {
                to_status(&Error::not_found(format!(
                    "no study \"{study_id}\" that you may see (list yours with `plexus study list`)"
                )))
            })?;
        let store = &self.state.store;
        let (charged, queries) = store.spent(&study.id).await.map_err(|e| e.to_status())?;
        let nodes = store
            .node_budgets(&study.id)
            .await
            .map_err(|e| e.to_status())?;
        let spent = nodes.iter().map(|n| n.1).fold(charged, f64::max);
        let p = &study.privacy;
        let budget = if p.exact { 0.0 } else { p.budget_rho };
        Ok(pb::BudgetReport {
            study_id: study.id.clone(),
            exact: p.exact,
            budget_rho: budget,
            spent_rho: spent,
            remaining_rho: (budget - spent).max(0.0),
            delta: p.delta,
            epsilon_spent: p.epsilon(spent),
            epsilon_budget: p.epsilon(budget),
            queries_charged: queries,
            nodes: nodes
                .into_iter()
                .map(|(node_id, spent_rho, budget_rho, updated)| pb::NodeBudget {
                    node_id,
                    spent_rho,
                    budget_rho,
                    updated_unix_ms: updated,
                })
                .collect(),
        })
    }
}

/// The query a request carries: a tree, or its JSON form read with the
/// dictionary (which may write the cohort and the model as text).
fn read_query(
    tree: Option<pb::Query>,
    json: &str,
    dictionary: &plexus_core::Dictionary,
) -> Result<Query, Error> {
    match (tree, json.is_empty()) {
        (Some(q), true) => Query::try_from(q),
        (None, false) => Query::from_request(json, dictionary),
        (Some(_), false) => Err(Error::invalid(
            "the request carries the query twice (as a tree and as JSON); send one",
        )),
        (None, true) => Err(Error::invalid("the request carries no query")),
    }
}

fn to_pb(q: StoredQuery) -> pb::QueryResult {
    pb::QueryResult {
        query_id: q.id,
        study_id: q.study_id,
        status: match q.status {
            QueryStatus::Pending => pb::QueryStatus::Pending,
            QueryStatus::Succeeded => pb::QueryStatus::Succeeded,
            QueryStatus::Failed => pb::QueryStatus::Failed,
        } as i32,
        error: q.error.as_ref().map(pb::Error::from),
        result_json: q.result_json.unwrap_or_default(),
        submitted_unix_ms: q.submitted_at,
        finished_unix_ms: q.finished_at.unwrap_or(0),
        query_hash: q.query_hash,
    }
}
