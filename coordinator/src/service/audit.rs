//! The auditors' view of the coordinator's append-only Merkle log: entries,
//! signed checkpoints, and inclusion and consistency proofs.

use std::sync::Arc;

use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use plexus_core::audit::{self, Action, Outcome};
use plexus_core::merkle::Checkpoint;
use plexus_proto::v1 as pb;
use plexus_proto::v1::audit_server::Audit;
use plexus_tls::Role;

use crate::state::State;
use crate::store::AuditFilter;

/// Entries buffered between the database reads and the auditor's stream.
const EXPORT_BUFFER: usize = 40_000;

pub struct AuditService {
    pub state: Arc<State>,
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl AuditService {
    /// Reading the whole log or a query's evidence is itself recorded.
    async fn read_by(
        &self,
        who: &plexus_tls::Identity,
        action: Action,
        query_id: String,
        detail: String,
    ) {
        let role = match who.role {
            Role::Node => audit::Role::Node,
            Role::Researcher => audit::Role::Researcher,
            Role::Auditor => audit::Role::Auditor,
            Role::Coordinator => audit::Role::Coordinator,
            Role::Admin => audit::Role::Admin,
        };
        self.state
            .audit(crate::store::AuditEntry {
                query_id,
                detail,
                ..crate::store::AuditEntry::new(who.name.clone(), role, action, Outcome::Ok)
            })
            .await;
    }

    fn signed(&self, c: Checkpoint) -> pb::SignedCheckpoint {
        pb::SignedCheckpoint {
            public_key: self.state.signer.public_hex(),
            ..c.into()
        }
    }
}

#[tonic::async_trait]
impl Audit for AuditService {
    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        plexus_tls::require_role(&request, &[Role::Auditor, Role::Admin])?;
        let r = request.into_inner();
        let filter = AuditFilter {
            study_id: non_empty(r.study_id),
            who: non_empty(r.who),
            since: (r.since_unix_ms > 0).then_some(r.since_unix_ms),
            until: (r.until_unix_ms > 0).then_some(r.until_unix_ms),
            limit: (r.limit > 0).then_some(r.limit),
        };
        let events = self
            .state
            .store
            .audit(&filter)
            .await
            .map_err(|e| e.to_status())?
            .into_iter()
            .map(pb::AuditEvent::from)
            .collect();
        Ok(Response::new(pb::ListEventsResponse { events }))
    }

    type ExportLogStream = ReceiverStream<Result<pb::AuditEvent, Status>>;

    async fn export_log(
        &self,
        request: Request<pb::ExportLogRequest>,
    ) -> Result<Response<Self::ExportLogStream>, Status> {
        let who = plexus_tls::require_role(&request, &[Role::Auditor, Role::Admin])?;
        let after = request.into_inner().after_seq.min(i64::MAX as u64) as i64;
        self.read_by(
            &who,
            Action::AuditExport,
            String::new(),
            format!("from entry {}", after + 1),
        )
        .await;
        let mut pages = self.state.store.audit_pages(after);
        let (tx, rx) = tokio::sync::mpsc::channel(EXPORT_BUFFER);
        tokio::spawn(async move {
            while let Some(page) = pages.recv().await {
                let page = match page {
                    Ok(page) => page,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_status())).await;
                        return;
                    }
                };
                for e in page {
                    if tx.send(Ok(e.into())).await.is_err() {
                        return; // the auditor hung up
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_checkpoint(
        &self,
        request: Request<pb::GetCheckpointRequest>,
    ) -> Result<Response<pb::SignedCheckpoint>, Status> {
        plexus_tls::require_role(&request, &[Role::Auditor, Role::Admin])?;
        let log = &self.state.audit_log;
        let checkpoint = match log.latest().await {
            Some(c) if !request.get_ref().fresh => c,
            _ => log.checkpoint().await.map_err(|e| e.to_status())?,
        };
        Ok(Response::new(self.signed(checkpoint)))
    }

    async fn prove_inclusion(
        &self,
        request: Request<pb::ProveInclusionRequest>,
    ) -> Result<Response<pb::InclusionProof>, Status> {
        plexus_tls::require_role(&request, &[Role::Auditor, Role::Admin])?;
        let seq = request.into_inner().seq.min(i64::MAX as u64) as i64;
        let (entry, checkpoint, proof) = self
            .state
            .audit_log
            .prove_inclusion(seq)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(pb::InclusionProof {
            event: Some(entry.into()),
            checkpoint: Some(self.signed(checkpoint)),
            proof,
        }))
    }

    async fn prove_consistency(
        &self,
        request: Request<pb::ProveConsistencyRequest>,
    ) -> Result<Response<pb::ConsistencyProof>, Status> {
        plexus_tls::require_role(&request, &[Role::Auditor, Role::Admin])?;
        let (checkpoint, proof) = self
            .state
            .audit_log
            .prove_consistency(request.into_inner().old_size)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(pb::ConsistencyProof {
            checkpoint: Some(self.signed(checkpoint)),
            proof,
        }))
    }

    async fn query_evidence(
        &self,
        request: Request<pb::QueryEvidenceRequest>,
    ) -> Result<Response<pb::QueryEvidenceResponse>, Status> {
        let who = plexus_tls::require_role(&request, &[Role::Auditor, Role::Admin])?;
        let query_id = request.into_inner().query_id;
        // The id is written to the log below.
        plexus_core::text::check("query_id", &query_id)
            .map_err(|e| plexus_proto::convert::to_status(&e))?;
        self.read_by(&who, Action::AuditEvidence, query_id.clone(), String::new())
            .await;
        let store = &self.state.store;
        let query = store
            .query(&query_id)
            .await
            .map_err(|e| e.to_status())?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no query {query_id}; query ids are in `plexus audit log`"
                ))
            })?;
        let mut nodes = Vec::new();
        for (job_id, node_id, status) in
            store.jobs_of(&query_id).await.map_err(|e| e.to_status())?
        {
            let (statement, signature, certificate) = store
                .signature_of(&job_id)
                .await
                .map_err(|e| e.to_status())?
                .unwrap_or_default();
            nodes.push(pb::NodeEvidence {
                job_id,
                node_id,
                status,
                statement,
                signature,
                certificate,
            });
        }
        Ok(Response::new(pb::QueryEvidenceResponse {
            query_id,
            study_id: query.study_id,
            query_hash: query.query_hash,
            status: format!("{:?}", query.status).to_lowercase(),
            nodes,
        }))
    }

    async fn witnessed_checkpoints(
        &self,
        request: Request<pb::WitnessedCheckpointsRequest>,
    ) -> Result<Response<pb::WitnessedCheckpointsResponse>, Status> {
        use prost::Message;
        let who = plexus_tls::require_role(&request, &[Role::Auditor, Role::Admin])?;
        self.read_by(&who, Action::AuditWitnessed, String::new(), String::new())
            .await;
        let store = &self.state.store;
        let mut seen = std::collections::HashSet::new();
        let mut evidence = Vec::new();
        let mut after = String::new();
        loop {
            let page = store
                .signed_statements(&after, 5_000)
                .await
                .map_err(|e| e.to_status())?;
            let Some(last) = page.last() else { break };
            after = last.0.clone();
            for (job_id, node_id, statement, signature, certificate) in page {
                let Ok(s) = pb::ResultStatement::decode(statement.as_slice()) else {
                    continue;
                };
                let Some(w) = s.witnessed else { continue };
                if seen.insert((node_id.clone(), w.size, w.root)) {
                    evidence.push(pb::NodeEvidence {
                        job_id,
                        node_id,
                        status: "answered".into(),
                        statement,
                        signature,
                        certificate,
                    });
                }
            }
        }
        Ok(Response::new(pb::WitnessedCheckpointsResponse { evidence }))
    }
}
