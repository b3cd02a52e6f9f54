//! The API's JSON bodies and how each is read from its gRPC message. Field
//! names are the protobuf fields' names; enumerations are lowercase
//! words; Unix times are milliseconds; bytes are base64 (standard, padded).

use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use plexus_core::Error;
use plexus_proto::v1 as pb;

/// The body of every error: a stable code and a message for a human.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// One of invalid, policy, not_found, disclosure, data, unavailable,
    /// internal: what clients branch on. Never parse the message.
    #[schema(example = "disclosure")]
    pub code: String,
    pub message: String,
}

impl From<&Error> for ErrorBody {
    fn from(e: &Error) -> Self {
        ErrorBody {
            error: ErrorDetail::from(e),
        }
    }
}

impl From<&Error> for ErrorDetail {
    fn from(e: &Error) -> Self {
        ErrorDetail {
            code: e.code.as_str().to_string(),
            message: e.message.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StudyList {
    pub studies: Vec<Study>,
}

/// A registered study: what it may ask, of whom, for what purpose, under
/// which protection.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Study {
    pub id: String,
    pub title: String,
    pub purpose: Purpose,
    pub variables: Vec<String>,
    pub analyses: Vec<String>,
    pub researchers: Vec<String>,
    pub nodes: Vec<String>,
    pub min_nodes: u32,
    pub registered_unix_ms: i64,
    pub continue_without_lost_nodes: bool,
    pub privacy: StudyPrivacy,
    /// SHA-256 (hex) of the definition as registered, which hospitals pin.
    pub definition_hash: String,
    /// Answers are pooled by secure aggregation.
    pub secure_aggregation: bool,
    /// The variables the study derives itself (`[derived.NAME]` in
    /// study.toml), by name: each one's type, public bounds and its one
    /// derivation (`first_date`, `time_to_event`, `window` or
    /// `days_between`) over dictionary variables and the study's concept
    /// sets.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    #[schema(value_type = Object)]
    pub derived: serde_json::Map<String, serde_json::Value>,
    /// The OMOP concept sets the study brings (`[concept_sets.NAME]`), by
    /// name: each one's domain, concept ids, whether descendants count,
    /// and the ids excluded.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    #[schema(value_type = Object)]
    pub concept_sets: serde_json::Map<String, serde_json::Value>,
}

/// Purpose of use in GA4GH Data Use Ontology terms.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct Purpose {
    /// GRU, HMB or DS.
    pub code: String,
    /// The disease for DS.
    pub disease: String,
    pub modifiers: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct StudyPrivacy {
    /// Exact answers (no noise, no budget).
    pub exact: bool,
    /// The study's budget at each node (zCDP rho).
    pub budget_rho: f64,
    /// A query's cost when it names none.
    pub query_rho: f64,
    pub delta: f64,
}

impl From<pb::Study> for Study {
    fn from(s: pb::Study) -> Self {
        let purpose = s.purpose.unwrap_or_default();
        let privacy = s.privacy.unwrap_or_default();
        Study {
            id: s.id,
            title: s.title,
            purpose: Purpose {
                code: purpose.code,
                disease: purpose.disease,
                modifiers: purpose.modifiers,
            },
            variables: s.variables,
            analyses: s.analyses,
            researchers: s.researchers,
            nodes: s.nodes,
            min_nodes: s.min_nodes,
            registered_unix_ms: s.registered_unix_ms,
            continue_without_lost_nodes: s.continue_without_lost_nodes,
            privacy: StudyPrivacy {
                exact: privacy.exact,
                budget_rho: privacy.budget_rho,
                query_rho: privacy.query_rho,
                delta: privacy.delta,
            },
            definition_hash: s.definition_hash,
            secure_aggregation: s.secure_aggregation,
            // Written by the coordinator from the registered definition;
            // anything else reads as none.
            derived: serde_json::from_str(&s.derived_json).unwrap_or_default(),
            concept_sets: serde_json::from_str(&s.concept_sets_json).unwrap_or_default(),
        }
    }
}

/// The data dictionary: the variables queries may name.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Dictionary {
    pub name: String,
    pub version: String,
    /// SHA-256 (hex) of the dictionary, as the nodes compare it.
    pub fingerprint: String,
    pub variables: Vec<DictionaryVariable>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DictionaryVariable {
    pub name: String,
    /// integer, float, boolean, categorical or date.
    #[serde(rename = "type")]
    pub kind: String,
    pub unit: Option<String>,
    /// A categorical variable's levels, in the dictionary's order; the
    /// first is the reference level of a model.
    pub categories: Vec<String>,
    pub description: String,
    /// Public lower bound as the dictionary writes it (a number or an ISO date).
    pub min: Option<String>,
    pub max: Option<String>,
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

impl From<pb::Dictionary> for Dictionary {
    fn from(d: pb::Dictionary) -> Self {
        Dictionary {
            name: d.name,
            version: d.version,
            fingerprint: d.fingerprint,
            variables: d
                .variables
                .into_iter()
                .map(|v| DictionaryVariable {
                    name: v.name,
                    kind: v.r#type,
                    unit: non_empty(v.unit),
                    categories: v.categories,
                    description: v.description,
                    min: non_empty(v.min),
                    max: non_empty(v.max),
                })
                .collect(),
        }
    }
}

/// A query's JSON form (docs/src/reference/query-format.md): a cohort and
/// one analysis. The cohort may be written as an R-style expression in
/// `where`, and a model as an R formula in `formula`
/// (docs/src/reference/query-syntax.md).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "where": "age >= 65 & smoking %in% c(\"former\", \"current\")",
    "analysis": {"glm": {"formula": "death ~ age + sex + diabetes", "family": "binomial"}}
}))]
pub struct QueryRequest {
    /// The cohort as a tree (the query format's `cohort`); absent for the
    /// whole study population. Not with `where`.
    #[schema(value_type = Option<Object>)]
    pub cohort: Option<serde_json::Value>,
    /// The cohort as text, e.g. `age >= 65 & sex == "M" & !is.na(bmi)`.
    /// Not with `cohort`.
    #[serde(rename = "where")]
    pub where_: Option<String>,
    /// One analysis, keyed by its name: count, summary, histogram, table,
    /// glm, cox, kaplan_meier, correlation, quantiles, two_by_two. glm, cox
    /// and kaplan_meier take `formula` in place of their variables.
    #[schema(value_type = Object)]
    pub analysis: serde_json::Value,
    /// Also answer for each site on its own.
    #[serde(default)]
    pub by_site: bool,
    /// What the query may spend of the study's budget (zCDP rho).
    pub rho: Option<f64>,
}

/// The state of a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Succeeded,
    Failed,
}

/// A query accepted: fetch its result with `GET /v1/queries/{query_id}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Submitted {
    pub query_id: String,
    pub study_id: String,
    pub status: Status,
}

/// A query's state and, once finished, its result (with provenance) or
/// its error.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueryResult {
    pub query_id: String,
    pub study_id: String,
    pub status: Status,
    /// SHA-256 (hex) of the query as run.
    pub query_hash: String,
    pub submitted_unix_ms: i64,
    pub finished_unix_ms: Option<i64>,
    /// Why the query failed (status failed).
    pub error: Option<ErrorDetail>,
    /// The pooled result with its provenance (status succeeded), as
    /// docs/src/reference/results.md describes it: the stored JSON itself,
    /// passed on unread, so every number is the one gRPC returns.
    #[schema(value_type = Option<Object>)]
    pub result: Option<Box<serde_json::value::RawValue>>,
}

impl TryFrom<pb::QueryResult> for QueryResult {
    type Error = Error;

    fn try_from(r: pb::QueryResult) -> Result<Self, Error> {
        let status = match pb::QueryStatus::try_from(r.status) {
            Ok(pb::QueryStatus::Succeeded) => Status::Succeeded,
            Ok(pb::QueryStatus::Failed) => Status::Failed,
            _ => Status::Pending,
        };
        let result = if r.result_json.is_empty() {
            None
        } else {
            Some(
                serde_json::value::RawValue::from_string(r.result_json).map_err(|e| {
                    Error::internal(format!(
                        "the stored result of query {} is not JSON: {e}",
                        r.query_id
                    ))
                })?,
            )
        };
        Ok(QueryResult {
            query_id: r.query_id,
            study_id: r.study_id,
            status,
            query_hash: r.query_hash,
            submitted_unix_ms: r.submitted_unix_ms,
            finished_unix_ms: (r.finished_unix_ms != 0).then_some(r.finished_unix_ms),
            error: r.error.map(|e| ErrorDetail::from(&Error::from(e))),
            result,
        })
    }
}

/// A study's privacy budget: its terms, what the coordinator charged, and
/// what each node last reported from its own ledger.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Budget {
    pub study_id: String,
    pub exact: bool,
    pub budget_rho: f64,
    pub spent_rho: f64,
    pub remaining_rho: f64,
    pub delta: f64,
    pub epsilon_spent: f64,
    pub epsilon_budget: f64,
    pub queries_charged: u32,
    pub nodes: Vec<NodeBudget>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeBudget {
    pub node_id: String,
    pub spent_rho: f64,
    pub budget_rho: f64,
    pub updated_unix_ms: i64,
}

impl From<pb::BudgetReport> for Budget {
    fn from(b: pb::BudgetReport) -> Self {
        Budget {
            study_id: b.study_id,
            exact: b.exact,
            budget_rho: b.budget_rho,
            spent_rho: b.spent_rho,
            remaining_rho: b.remaining_rho,
            delta: b.delta,
            epsilon_spent: b.epsilon_spent,
            epsilon_budget: b.epsilon_budget,
            queries_charged: b.queries_charged,
            nodes: b
                .nodes
                .into_iter()
                .map(|n| NodeBudget {
                    node_id: n.node_id,
                    spent_rho: n.spent_rho,
                    budget_rho: n.budget_rho,
                    updated_unix_ms: n.updated_unix_ms,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventList {
    pub events: Vec<AuditEvent>,
}

/// One entry of the audit log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditEvent {
    /// Position in the log, from 1, without gaps.
    pub seq: u64,
    pub at_unix_ms: i64,
    pub who: String,
    pub role: String,
    pub action: String,
    pub study_id: String,
    pub query_id: String,
    pub job_id: String,
    pub node_id: String,
    pub query_hash: String,
    pub outcome: String,
    pub detail: String,
    pub purpose: String,
    pub nodes: Vec<String>,
    pub result_size: Option<u64>,
    pub suppressed: u64,
    pub privacy_cost: Option<f64>,
    pub privacy_remaining: Option<f64>,
}

impl From<pb::AuditEvent> for AuditEvent {
    fn from(e: pb::AuditEvent) -> Self {
        AuditEvent {
            seq: e.seq,
            at_unix_ms: e.at_unix_ms,
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
            purpose: e.purpose,
            nodes: e.nodes,
            result_size: e.result_size,
            suppressed: e.suppressed,
            privacy_cost: e.privacy_cost,
            privacy_remaining: e.privacy_remaining,
        }
    }
}

/// A signed checkpoint of the audit log (RFC 6962 tree).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SignedCheckpoint {
    /// Who keeps the log.
    pub origin: String,
    pub size: u64,
    /// Lowercase hex SHA-256 root.
    pub root: String,
    pub at_unix_ms: i64,
    /// Ed25519, hex.
    pub signature: String,
    /// The coordinator's public key, hex: compare it with the one you
    /// pinned; never trust it on its own.
    pub public_key: String,
}

impl From<pb::SignedCheckpoint> for SignedCheckpoint {
    fn from(c: pb::SignedCheckpoint) -> Self {
        SignedCheckpoint {
            origin: c.origin,
            size: c.size,
            root: c.root,
            at_unix_ms: c.at_unix_ms,
            signature: c.signature,
            public_key: c.public_key,
        }
    }
}

fn missing(what: &str) -> Error {
    Error::internal(format!("the coordinator's answer carries no {what}"))
}

/// Proof that one entry is in the log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InclusionProof {
    pub event: AuditEvent,
    pub checkpoint: SignedCheckpoint,
    /// Hex, 32 bytes a step.
    pub proof: String,
}

impl TryFrom<pb::InclusionProof> for InclusionProof {
    type Error = Error;

    fn try_from(p: pb::InclusionProof) -> Result<Self, Error> {
        Ok(InclusionProof {
            event: p.event.ok_or_else(|| missing("event"))?.into(),
            checkpoint: p.checkpoint.ok_or_else(|| missing("checkpoint"))?.into(),
            proof: p.proof,
        })
    }
}

/// Proof that an earlier checkpoint's log is a prefix of today's.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConsistencyProof {
    pub checkpoint: SignedCheckpoint,
    /// Hex, 32 bytes a step.
    pub proof: String,
}

impl TryFrom<pb::ConsistencyProof> for ConsistencyProof {
    type Error = Error;

    fn try_from(p: pb::ConsistencyProof) -> Result<Self, Error> {
        Ok(ConsistencyProof {
            checkpoint: p.checkpoint.ok_or_else(|| missing("checkpoint"))?.into(),
            proof: p.proof,
        })
    }
}

/// What each node signed for a query.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueryEvidence {
    pub query_id: String,
    pub study_id: String,
    pub query_hash: String,
    pub status: String,
    pub nodes: Vec<NodeEvidence>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NodeEvidence {
    pub job_id: String,
    pub node_id: String,
    /// answered, refused, missing or invalid.
    pub status: String,
    /// The encoded ResultStatement exactly as the node signed it (base64;
    /// empty when the node never answered).
    pub statement: String,
    /// The node's Ed25519 signature over `statement` (base64).
    pub signature: String,
    /// DER certificate of the node's connection (base64).
    pub certificate: String,
}

impl From<pb::QueryEvidenceResponse> for QueryEvidence {
    fn from(e: pb::QueryEvidenceResponse) -> Self {
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        QueryEvidence {
            query_id: e.query_id,
            study_id: e.study_id,
            query_hash: e.query_hash,
            status: e.status,
            nodes: e
                .nodes
                .into_iter()
                .map(|n| NodeEvidence {
                    job_id: n.job_id,
                    node_id: n.node_id,
                    status: n.status,
                    statement: b64(&n.statement),
                    signature: b64(&n.signature),
                    certificate: b64(&n.certificate),
                })
                .collect(),
        }
    }
}
