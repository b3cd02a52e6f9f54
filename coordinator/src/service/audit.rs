//! The auditors' view of the coordinator's append-only log.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use plexus_proto::v1 as pb;
use plexus_proto::v1::audit_server::Audit;
use plexus_tls::Role;

use crate::state::State;
use crate::store::AuditFilter;

pub struct AuditService {
    pub state: Arc<State>,
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
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
            .map(|e| pb::AuditEvent {
                seq: e.seq as u64,
                at_unix_ms: e.at,
                who: e.who,
                role: e.role,
                action: e.action,
                study_id: e.study_id,
                query_id: e.query_id,
                job_id: e.job_id,
                node_id: e.node_id,
                query_hash: e.query_hash,
                outcome: e.outcome,
                detail: e.detail,
            })
            .collect();
        Ok(Response::new(pb::ListEventsResponse { events }))
    }
}
