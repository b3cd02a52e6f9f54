//! The HTTP/JSON API: the research and audit calls for R, Python and
//! notebooks, beside gRPC on the same port, over the same mutual TLS.
//!
//! Each handler turns its JSON request into the gRPC request, hands it to
//! the gRPC service's own method with the caller's verified certificate,
//! and turns the answer into JSON: one implementation of each call, with
//! its authorisation, auditing and errors, serves both transports. The
//! OpenAPI document is generated from the handlers' annotations
//! ([`openapi`]) and checked in as `docs/src/reference/openapi.json`.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, Query as UrlQuery};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use plexus_core::{Error, ErrorCode};
use plexus_proto::v1 as pb;
use plexus_proto::v1::audit_server::Audit;
use plexus_proto::v1::research_server::Research;
use plexus_tls::PeerInfo;

use crate::service::audit::AuditService;
use crate::service::research::ResearchService;
use crate::state::State;

mod body;
pub use body::*;

/// Largest request body accepted: a query's JSON form is a few kilobytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest one `GET /v1/queries/{id}` may wait; call again to wait longer.
pub const MAX_WAIT_MS: u32 = 60_000;

/// The services the handlers call.
#[derive(Clone)]
pub struct Api {
    research: Arc<ResearchService>,
    audit: Arc<AuditService>,
}

/// The API's routes, to merge into the gRPC server's router.
pub fn router(state: &Arc<State>) -> axum::Router {
    let api = Api {
        research: Arc::new(ResearchService {
            state: state.clone(),
        }),
        audit: Arc::new(AuditService {
            state: state.clone(),
        }),
    };
    // The routes and their document come from one router: the document
    // is written once here and served as it is.
    let (router, doc) = api_router().split_for_parts();
    let doc = doc.to_json().expect("the OpenAPI document serialises");
    router
        .route(
            "/v1/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        doc,
                    )
                }
            }),
        )
        .route("/v1/{*rest}", axum::routing::any(no_such_call))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(api)
}

/// The API's OpenAPI 3.1 document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, doc) = api_router().split_for_parts();
    doc
}

fn api_router() -> OpenApiRouter<Api> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(list_studies))
        .routes(routes!(get_study))
        .routes(routes!(get_dictionary))
        .routes(routes!(submit_query))
        .routes(routes!(get_result))
        .routes(routes!(get_budget))
        .routes(routes!(list_events))
        .routes(routes!(get_checkpoint))
        .routes(routes!(prove_inclusion))
        .routes(routes!(prove_consistency))
        .routes(routes!(query_evidence))
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Plexus coordinator HTTP/JSON API",
        description = "The research and audit calls of the Plexus coordinator, beside gRPC on the same port. \
Every call needs a Plexus client certificate (mutual TLS): the certificate's role decides what it may call, \
as over gRPC. Errors carry a stable code in the body: {\"error\": {\"code\": \"...\", \"message\": \"...\"}}. \
Guide: docs/src/reference/http-api.md.",
        license(name = "Apache-2.0"),
    ),
    tags(
        (name = "research", description = "Studies, the dictionary, queries and their results, budgets (researchers)"),
        (name = "audit", description = "The Merkle audit log, its checkpoints and proofs, the nodes' evidence (auditors)"),
    )
)]
struct ApiDoc;

/// The verified client certificate of the connection, as the gRPC
/// services see it. A request without one reaches the service without a
/// peer and is refused there, as over gRPC.
struct Caller(Option<PeerInfo>);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Caller(parts.extensions.get::<PeerInfo>().cloned()))
    }
}

impl Caller {
    /// The gRPC request the service's method takes, from this caller.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(peer) = &self.0 {
            request.extensions_mut().insert(peer.clone());
        }
        request
    }
}

/// An error as the API returns it: the HTTP status of its code, and the
/// code and message in the body.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        let error = plexus_proto::convert::from_status(&status);
        let http = if status.code() == tonic::Code::Unauthenticated {
            StatusCode::UNAUTHORIZED
        } else {
            http_status(error.code)
        };
        ApiError {
            status: http,
            body: ErrorBody::from(&error),
        }
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        ApiError {
            status: http_status(error.code),
            body: ErrorBody::from(&error),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

/// The HTTP status of each stable error code (the code itself is in the body).
pub fn http_status(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::Invalid => StatusCode::BAD_REQUEST,
        ErrorCode::Policy => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::Disclosure | ErrorCode::Data => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

type Reply<T> = Result<Json<T>, ApiError>;

/// A path under /v1 that is no call of the API.
async fn no_such_call(uri: axum::http::Uri) -> ApiError {
    Error::not_found(format!(
        "no call {} in the Plexus API (its calls are listed in GET /v1/openapi.json)",
        plexus_core::text::escape(uri.path())
    ))
    .into()
}

/// The studies the caller may see (a researcher: those it is a member of).
#[utoipa::path(get, path = "/v1/studies", tag = "research",
    responses((status = 200, body = StudyList), (status = "4XX", body = ErrorBody)))]
async fn list_studies(state: axum::extract::State<Api>, caller: Caller) -> Reply<StudyList> {
    let list = state
        .research
        .list_studies(caller.request(pb::ListStudiesRequest {}))
        .await?
        .into_inner();
    Ok(Json(StudyList {
        studies: list.studies.into_iter().map(Study::from).collect(),
    }))
}

/// One study the caller may see.
#[utoipa::path(get, path = "/v1/studies/{study_id}", tag = "research",
    params(("study_id" = String, Path, description = "The study's id")),
    responses((status = 200, body = Study), (status = "4XX", body = ErrorBody)))]
async fn get_study(
    state: axum::extract::State<Api>,
    caller: Caller,
    Path(study_id): Path<String>,
) -> Reply<Study> {
    let list = state
        .research
        .list_studies(caller.request(pb::ListStudiesRequest {}))
        .await?
        .into_inner();
    list.studies
        .into_iter()
        .find(|s| s.id == study_id)
        .map(|s| Json(Study::from(s)))
        .ok_or_else(|| {
            Error::not_found(format!(
                "no study \"{}\" that you may see (list yours with GET /v1/studies)",
                plexus_core::text::escape(&study_id)
            ))
            .into()
        })
}

/// The data dictionary: the variables a query may name, with their types
/// and categories.
#[utoipa::path(get, path = "/v1/dictionary", tag = "research",
    responses((status = 200, body = Dictionary), (status = "4XX", body = ErrorBody)))]
async fn get_dictionary(state: axum::extract::State<Api>, caller: Caller) -> Reply<Dictionary> {
    let d = state
        .research
        .get_dictionary(caller.request(pb::GetDictionaryRequest {}))
        .await?
        .into_inner();
    Ok(Json(Dictionary::from(d)))
}

/// Submits a query in a study. The body is the query's JSON form
/// (docs/src/reference/query-format.md), whose cohort (`where`) and model
/// (`formula`) may be written as text (docs/src/reference/query-syntax.md).
/// Returns at once with the query's id: fetch or wait for its result with
/// `GET /v1/queries/{query_id}`.
#[utoipa::path(post, path = "/v1/studies/{study_id}/queries", tag = "research",
    params(("study_id" = String, Path, description = "The study to ask in")),
    request_body(content = QueryRequest, content_type = "application/json"),
    responses((status = 202, body = Submitted), (status = "4XX", body = ErrorBody), (status = "5XX", body = ErrorBody)))]
async fn submit_query(
    state: axum::extract::State<Api>,
    caller: Caller,
    Path(study_id): Path<String>,
    body: String,
) -> Result<(StatusCode, Json<Submitted>), ApiError> {
    let response = state
        .research
        .submit_query(caller.request(pb::SubmitQueryRequest {
            study_id: study_id.clone(),
            query: None,
            query_json: body,
        }))
        .await?
        .into_inner();
    Ok((
        StatusCode::ACCEPTED,
        Json(Submitted {
            query_id: response.query_id,
            study_id,
            status: Status::Pending,
        }),
    ))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct WaitParams {
    /// Wait up to this long (milliseconds, at most 60000) for a pending
    /// query to finish; 0 or absent answers at once. Call again to wait
    /// longer.
    #[serde(default)]
    wait_ms: u32,
}

/// A query's status and, once it finished, its result or its error.
#[utoipa::path(get, path = "/v1/queries/{query_id}", tag = "research",
    params(("query_id" = String, Path, description = "The id submit returned"), WaitParams),
    responses((status = 200, body = QueryResult), (status = "4XX", body = ErrorBody)))]
async fn get_result(
    state: axum::extract::State<Api>,
    caller: Caller,
    Path(query_id): Path<String>,
    UrlQuery(params): UrlQuery<WaitParams>,
) -> Reply<QueryResult> {
    let result = state
        .research
        .get_result(caller.request(pb::GetResultRequest {
            query_id,
            wait_ms: params.wait_ms.min(MAX_WAIT_MS),
        }))
        .await?
        .into_inner();
    Ok(Json(QueryResult::try_from(result)?))
}

/// A study's privacy budget: its terms, what was charged, what each node
/// last reported from its own ledger.
#[utoipa::path(get, path = "/v1/studies/{study_id}/budget", tag = "research",
    params(("study_id" = String, Path, description = "The study's id")),
    responses((status = 200, body = Budget), (status = "4XX", body = ErrorBody)))]
async fn get_budget(
    state: axum::extract::State<Api>,
    caller: Caller,
    Path(study_id): Path<String>,
) -> Reply<Budget> {
    let report = state
        .research
        .get_budget(caller.request(pb::GetBudgetRequest { study_id }))
        .await?
        .into_inner();
    Ok(Json(Budget::from(report)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct EventFilter {
    /// Only this study's entries.
    study_id: Option<String>,
    /// Only entries by this party (certificate name).
    who: Option<String>,
    /// Only entries at or after this time (Unix milliseconds).
    since_unix_ms: Option<i64>,
    /// Only entries before this time (Unix milliseconds).
    until_unix_ms: Option<i64>,
    /// The newest this many (the coordinator's default when absent).
    limit: Option<u32>,
}

/// Audit log entries matching a filter, the newest `limit`, oldest first.
#[utoipa::path(get, path = "/v1/audit/events", tag = "audit",
    params(EventFilter),
    responses((status = 200, body = EventList), (status = "4XX", body = ErrorBody)))]
async fn list_events(
    state: axum::extract::State<Api>,
    caller: Caller,
    UrlQuery(filter): UrlQuery<EventFilter>,
) -> Reply<EventList> {
    let list = state
        .audit
        .list_events(caller.request(pb::ListEventsRequest {
            study_id: filter.study_id.unwrap_or_default(),
            who: filter.who.unwrap_or_default(),
            since_unix_ms: filter.since_unix_ms.unwrap_or(0),
            until_unix_ms: filter.until_unix_ms.unwrap_or(0),
            limit: filter.limit.unwrap_or(0),
        }))
        .await?
        .into_inner();
    Ok(Json(EventList {
        events: list.events.into_iter().map(AuditEvent::from).collect(),
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct CheckpointParams {
    /// Sign a checkpoint of the log as it is now, instead of returning the
    /// latest published one.
    #[serde(default)]
    fresh: bool,
}

/// The latest signed checkpoint of the audit log (or a fresh one).
#[utoipa::path(get, path = "/v1/audit/checkpoint", tag = "audit",
    params(CheckpointParams),
    responses((status = 200, body = SignedCheckpoint), (status = "4XX", body = ErrorBody)))]
async fn get_checkpoint(
    state: axum::extract::State<Api>,
    caller: Caller,
    UrlQuery(params): UrlQuery<CheckpointParams>,
) -> Reply<SignedCheckpoint> {
    let c = state
        .audit
        .get_checkpoint(caller.request(pb::GetCheckpointRequest {
            fresh: params.fresh,
        }))
        .await?
        .into_inner();
    Ok(Json(SignedCheckpoint::from(c)))
}

/// Proof that entry `seq` is in the log, against a signed checkpoint.
#[utoipa::path(get, path = "/v1/audit/inclusion/{seq}", tag = "audit",
    params(("seq" = u64, Path, description = "The entry's position in the log, from 1")),
    responses((status = 200, body = InclusionProof), (status = "4XX", body = ErrorBody)))]
async fn prove_inclusion(
    state: axum::extract::State<Api>,
    caller: Caller,
    Path(seq): Path<u64>,
) -> Reply<InclusionProof> {
    let p = state
        .audit
        .prove_inclusion(caller.request(pb::ProveInclusionRequest { seq }))
        .await?
        .into_inner();
    Ok(Json(InclusionProof::try_from(p)?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ConsistencyParams {
    /// The size of the earlier checkpoint.
    old_size: u64,
}

/// Proof that the log of an earlier checkpoint is a prefix of today's.
#[utoipa::path(get, path = "/v1/audit/consistency", tag = "audit",
    params(ConsistencyParams),
    responses((status = 200, body = ConsistencyProof), (status = "4XX", body = ErrorBody)))]
async fn prove_consistency(
    state: axum::extract::State<Api>,
    caller: Caller,
    UrlQuery(params): UrlQuery<ConsistencyParams>,
) -> Reply<ConsistencyProof> {
    let p = state
        .audit
        .prove_consistency(caller.request(pb::ProveConsistencyRequest {
            old_size: params.old_size,
        }))
        .await?
        .into_inner();
    Ok(Json(ConsistencyProof::try_from(p)?))
}

/// What each node signed for a query: its statements, signatures and the
/// certificates they were checked against (base64), for anyone to check
/// again.
#[utoipa::path(get, path = "/v1/queries/{query_id}/evidence", tag = "audit",
    params(("query_id" = String, Path, description = "The query's id")),
    responses((status = 200, body = QueryEvidence), (status = "4XX", body = ErrorBody)))]
async fn query_evidence(
    state: axum::extract::State<Api>,
    caller: Caller,
    Path(query_id): Path<String>,
) -> Reply<QueryEvidence> {
    let e = state
        .audit
        .query_evidence(caller.request(pb::QueryEvidenceRequest { query_id }))
        .await?
        .into_inner();
    Ok(Json(QueryEvidence::from(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checked-in document is what the code generates: regenerate it
    /// with `PLEXUS_UPDATE_OPENAPI=1 cargo test -p plexus-coordinator openapi`.
    #[test]
    fn openapi_document_is_checked_in() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../docs/src/reference/openapi.json");
        let generated = openapi().to_pretty_json().expect("the document serialises") + "\n";
        if std::env::var_os("PLEXUS_UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &generated).expect("write the document");
            return;
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == generated,
            "docs/src/reference/openapi.json differs from the API the code serves; \
             regenerate it with `PLEXUS_UPDATE_OPENAPI=1 cargo test -p plexus-coordinator openapi` \
             and commit it"
        );
    }

    #[test]
    fn every_code_has_a_status() {
        for code in [
            ErrorCode::Invalid,
            ErrorCode::Policy,
            ErrorCode::NotFound,
            ErrorCode::Disclosure,
            ErrorCode::Data,
            ErrorCode::Unavailable,
            ErrorCode::Internal,
        ] {
            let status = http_status(code);
            assert!(status.is_client_error() || status.is_server_error());
        }
    }
}
