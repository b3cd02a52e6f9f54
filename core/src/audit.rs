//! Audit entries: who did what, on which study and query, with what result
//! size, suppression and privacy cost, and how it ended. Never patient data.
//!
//! An entry's leaf in the Merkle log ([`crate::merkle`]) is the SHA-256 of
//! its canonical bytes, so anyone holding the entries (the coordinator's
//! database, an auditor's export) recomputes the same tree, and an entry
//! edited, removed or reordered changes the root a checkpoint signed.
//! The same module maps an entry to a FHIR R4 AuditEvent resource.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::ErrorCode;
use crate::merkle::{leaf_of, Leaf};

/// One audit entry, at the coordinator or at a node.
///
/// `role`, `action` and `outcome` are closed sets: each serialises to the
/// exact string earlier versions wrote, so the leaves of existing logs do
/// not change, and a value no version wrote is refused on reading (an
/// edited database or a hostile coordinator's export) instead of being
/// taken for a success.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the log, from 1, without gaps.
    pub seq: i64,
    pub at: i64,
    /// Certificate identity of whoever acted.
    pub who: String,
    pub role: Role,
    pub action: Action,
    pub study_id: String,
    pub purpose: String,
    pub query_id: String,
    pub job_id: String,
    pub node_id: String,
    /// The nodes a query was sent to, for entries about a whole query.
    pub nodes: Vec<String>,
    pub query_hash: String,
    /// How many values the released result holds.
    pub result_size: Option<u64>,
    /// How many of them were suppressed.
    pub suppressed: u64,
    /// What the action spent of the study's budget (zCDP ρ).
    pub privacy_cost: Option<f64>,
    /// The study's budget left after it.
    pub privacy_remaining: Option<f64>,
    pub outcome: Outcome,
    pub detail: String,
}

/// Version tag of the canonical form; a new form gets a new tag.
const CANONICAL_TAG: &str = "plexus-audit-entry-v1";

impl AuditEntry {
    /// An entry saying who, in which role, did what and how it ended; the
    /// other fields are empty until set (`AuditEntry { study_id, ..new }`).
    pub fn new(who: impl Into<String>, role: Role, action: Action, outcome: Outcome) -> Self {
        AuditEntry {
            seq: 0,
            at: 0,
            who: who.into(),
            role,
            action,
            study_id: String::new(),
            purpose: String::new(),
            query_id: String::new(),
            job_id: String::new(),
            node_id: String::new(),
            nodes: Vec::new(),
            query_hash: String::new(),
            result_size: None,
            suppressed: 0,
            privacy_cost: None,
            privacy_remaining: None,
            outcome,
            detail: String::new(),
        }
    }

    /// The bytes the entry's leaf hashes: a version tag and the entry as
    /// JSON with every field, in declaration order.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut bytes = CANONICAL_TAG.as_bytes().to_vec();
        bytes.push(b'\n');
        serde_json::to_writer(&mut bytes, self).expect("an audit entry serialises");
        bytes
    }

    pub fn leaf(&self) -> Leaf {
        leaf_of(&self.canonical_bytes())
    }

    /// Whether the action ended well: accepted, sent, answered, ok.
    pub fn succeeded(&self) -> bool {
        self.outcome.severity() == Severity::Success
    }

    /// The entry as a FHIR R4 AuditEvent resource: who → agent, what →
    /// entity (study, query, job), why → purposeOfEvent, how it ended →
    /// outcome. `observer` names the system that kept the log.
    pub fn to_fhir(&self, observer: &str) -> serde_json::Value {
        let recorded = chrono::DateTime::from_timestamp_millis(self.at)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        // FHIR outcome: 0 success, 4 minor failure (a refusal), 8 serious failure.
        let outcome = match self.outcome.severity() {
            Severity::Success => "0",
            Severity::Refusal => "4",
            Severity::Failure => "8",
        };
        // FHIR action: E execute, C create, U update, R read.
        let action = match self.action {
            Action::QuerySubmit | Action::QueryResult | Action::Job => "E",
            // Earlier versions exported an update as a creation too.
            Action::StudyRegister | Action::StudyUpdate | Action::ModelRegister => "C",
            _ => "R",
        };
        let mut entities = Vec::new();
        let plexus = "https://plexus.health/fhir";
        if !self.study_id.is_empty() {
            entities.push(json!({
                "what": {"identifier": {"system": format!("{plexus}/study"), "value": self.study_id}},
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"},
                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "13", "display": "Security Resource"},
                "name": "study",
            }));
        }
        if !self.query_hash.is_empty() || !self.query_id.is_empty() {
            entities.push(json!({
                "what": {"identifier": {"system": format!("{plexus}/query"), "value": self.query_id}},
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"},
                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24", "display": "Query"},
                "name": "query",
                "query": hex_b64(&self.query_hash),
                "detail": self.entity_detail(),
            }));
        }
        if !self.job_id.is_empty() {
            entities.push(json!({
                "what": {"identifier": {"system": format!("{plexus}/job"), "value": self.job_id}},
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"},
                "name": "job",
                "description": if self.node_id.is_empty() { String::new() } else { format!("sent to node {}", self.node_id) },
            }));
        }
        let mut agents = vec![json!({
            "who": {"identifier": {"system": format!("{plexus}/identity"), "value": self.who}},
            "type": {"coding": [{"system": format!("{plexus}/role"), "code": self.role}]},
            "requestor": matches!(self.role, Role::Researcher | Role::Admin | Role::Auditor),
        })];
        if !self.node_id.is_empty() {
            agents.push(json!({
                "who": {"identifier": {"system": format!("{plexus}/identity"), "value": format!("node/{}", self.node_id)}},
                "type": {"coding": [{"system": format!("{plexus}/role"), "code": "node"}]},
                "requestor": false,
            }));
        }
        for node in &self.nodes {
            agents.push(json!({
                "who": {"identifier": {"system": format!("{plexus}/identity"), "value": format!("node/{node}")}},
                "type": {"coding": [{"system": format!("{plexus}/role"), "code": "node"}]},
                "requestor": false,
            }));
        }
        let mut resource = json!({
            "resourceType": "AuditEvent",
            "id": format!("{}-{}", observer.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "-"), self.seq),
            "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110112", "display": "Query"},
            "subtype": [{"system": format!("{plexus}/action"), "code": self.action}],
            "action": action,
            "recorded": recorded,
            "outcome": outcome,
            "outcomeDesc": if self.detail.is_empty() { self.outcome.to_string() } else { format!("{}: {}", self.outcome, self.detail) },
            "agent": agents,
            "source": {"observer": {"display": observer}, "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}]},
            "entity": entities,
        });
        if let Some(reason) = purpose_of_use(&self.purpose) {
            resource["purposeOfEvent"] = json!([{"coding": [reason]}]);
        }
        resource
    }

    fn entity_detail(&self) -> Vec<serde_json::Value> {
        let mut d = vec![json!({"type": "query_hash", "valueString": self.query_hash})];
        if !self.purpose.is_empty() {
            d.push(json!({"type": "purpose", "valueString": self.purpose}));
        }
        if let Some(n) = self.result_size {
            d.push(json!({"type": "result_size", "valueString": n.to_string()}));
            d.push(json!({"type": "suppressed", "valueString": self.suppressed.to_string()}));
        }
        if let Some(c) = self.privacy_cost {
            d.push(json!({"type": "privacy_cost_rho", "valueString": c.to_string()}));
        }
        if let Some(r) = self.privacy_remaining {
            d.push(json!({"type": "privacy_remaining_rho", "valueString": r.to_string()}));
        }
        d
    }
}

/// A value of a closed set, read from a log or the wire, that no version of
/// Plexus writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit {field} \"{value}\" is not one Plexus records (the log was edited, or written by a newer Plexus: upgrade this tool)")]
pub struct UnknownValue {
    pub field: &'static str,
    pub value: String,
}

/// A closed set of names: an enum whose variants serialise to the given
/// strings, parse back from exactly them, and compare with them.
macro_rules! closed_set {
    ($(#[$doc:meta])* $name:ident, $field:literal { $($(#[$vdoc:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownValue;

            fn from_str(s: &str) -> Result<Self, UnknownValue> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s).ok_or_else(|| UnknownValue {
                    field: $field,
                    value: s.to_string(),
                })
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        closed_set_strings!($name);
    };
}

/// Serde as the value's string, and comparison with a string, for a type
/// with `Display` and `FromStr<Err = UnknownValue>`.
macro_rules! closed_set_strings {
    ($name:ident) => {
        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                other.parse::<$name>().is_ok_and(|o| o == *self)
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                *self == **other
            }
        }
    };
}

closed_set! {
    /// In which capacity whoever acted did it (their certificate's role).
    Role, "role" {
        Researcher = "researcher",
        Admin = "admin",
        Auditor = "auditor",
        Coordinator = "coordinator",
        Node = "node",
    }
}

closed_set! {
    /// What was done.
    Action, "action" {
        /// A researcher submitted a query.
        QuerySubmit = "query.submit",
        /// A query finished: its pooled answer or why there is none.
        QueryResult = "query.result",
        /// One node's job of a query: sent, answered, refused, missing.
        Job = "job",
        StudyRegister = "study.register",
        StudyUpdate = "study.update",
        /// A prediction model registered with a study (its hash in the
        /// detail), or registered again under its name.
        ModelRegister = "model.register",
        NodeConnect = "node.connect",
        NodeDisconnect = "node.disconnect",
        /// A second connection of a node replaced the first.
        NodeReplaced = "node.replaced",
        /// A connected node's certificate was revoked.
        NodeRevoked = "node.revoked",
        CoordinatorStart = "coordinator.start",
        CoordinatorStop = "coordinator.stop",
        /// A standby coordinator took over the lease.
        CoordinatorTakeover = "coordinator.takeover",
        TlsReload = "tls.reload",
        AuditExport = "audit.export",
        AuditEvidence = "audit.evidence",
        AuditWitnessed = "audit.witnessed",
        /// A placeholder for an entry lost before it was written.
        AuditMissing = "audit.missing",
        AuditRepair = "audit.repair",
    }
}

/// How an action ended. Refusals and failures carry the error code they
/// were given (`refused:policy`, `failed:unavailable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Ok,
    /// A query was accepted for execution.
    Accepted,
    /// A job was sent to its node.
    Sent,
    /// A node answered its job and the answer was taken.
    Answered,
    /// A node holds its answer for its data steward's review.
    Held,
    ReviewedApproved,
    ReviewedRejected,
    ReviewExpired,
    /// A job was not sent: its node was not connected.
    Skipped,
    /// A job could not be sent.
    Unsent,
    /// No answer came (deadline, disconnection).
    Missing,
    /// The node's answer was refused by the coordinator's checks.
    Invalid,
    /// Cut short by a shutdown or a crash.
    Interrupted,
    /// Refused, with the code when one was given.
    Refused(Option<ErrorCode>),
    Failed(ErrorCode),
}

/// How an outcome counts for a FHIR AuditEvent and for
/// [`AuditEntry::succeeded`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Success,
    /// Refused by a rule (FHIR minor failure).
    Refusal,
    /// Did not happen or went wrong (FHIR serious failure).
    Failure,
}

impl Outcome {
    const SIMPLE: [(Outcome, &'static str); 13] = [
        (Outcome::Ok, "ok"),
        (Outcome::Accepted, "accepted"),
        (Outcome::Sent, "sent"),
        (Outcome::Answered, "answered"),
        (Outcome::Held, "held"),
        (Outcome::ReviewedApproved, "reviewed-approved"),
        (Outcome::ReviewedRejected, "reviewed-rejected"),
        (Outcome::ReviewExpired, "review-expired"),
        (Outcome::Skipped, "skipped"),
        (Outcome::Unsent, "unsent"),
        (Outcome::Missing, "missing"),
        (Outcome::Invalid, "invalid"),
        (Outcome::Interrupted, "interrupted"),
    ];

    pub fn severity(self) -> Severity {
        match self {
            Outcome::Ok
            | Outcome::Accepted
            | Outcome::Sent
            | Outcome::Answered
            | Outcome::Held
            | Outcome::ReviewedApproved => Severity::Success,
            Outcome::Refused(_) | Outcome::ReviewedRejected | Outcome::ReviewExpired => {
                Severity::Refusal
            }
            Outcome::Skipped
            | Outcome::Unsent
            | Outcome::Missing
            | Outcome::Invalid
            | Outcome::Interrupted
            | Outcome::Failed(_) => Severity::Failure,
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Refused(None) => f.write_str("refused"),
            Outcome::Refused(Some(code)) => write!(f, "refused:{code}"),
            Outcome::Failed(code) => write!(f, "failed:{code}"),
            simple => {
                let (_, text) = Self::SIMPLE
                    .iter()
                    .find(|(o, _)| o == simple)
                    .expect("every other outcome is in SIMPLE");
                f.write_str(text)
            }
        }
    }
}

impl std::str::FromStr for Outcome {
    type Err = UnknownValue;

    fn from_str(s: &str) -> Result<Self, UnknownValue> {
        let unknown = || UnknownValue {
            field: "outcome",
            value: s.to_string(),
        };
        if let Some((o, _)) = Self::SIMPLE.iter().find(|(_, text)| *text == s) {
            return Ok(*o);
        }
        match s.split_once(':') {
            None if s == "refused" => Ok(Outcome::Refused(None)),
            Some(("refused", code)) => ErrorCode::parse(code)
                .map(|c| Outcome::Refused(Some(c)))
                .ok_or_else(unknown),
            Some(("failed", code)) => ErrorCode::parse(code)
                .map(Outcome::Failed)
                .ok_or_else(unknown),
            _ => Err(unknown()),
        }
    }
}

closed_set_strings!(Outcome);

/// FHIR AuditEvent.query is base64Binary; the query hash is hex.
fn hex_b64(h: &str) -> serde_json::Value {
    use base64::Engine;
    match hex::decode(h) {
        Ok(bytes) if !bytes.is_empty() => {
            json!(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
        _ => serde_json::Value::Null,
    }
}

/// The HL7 v3 PurposeOfUse code of a Plexus purpose (`research`,
/// `research:<topic>`, `quality`, `public_health`, ...).
fn purpose_of_use(purpose: &str) -> Option<serde_json::Value> {
    if purpose.is_empty() {
        return None;
    }
    let system = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
    let head = purpose.split([':', '(', ' ']).next().unwrap_or(purpose);
    let (code, display) = match head.to_ascii_lowercase().as_str() {
        "quality" | "quality_improvement" => ("HQUALIMP", "health quality improvement"),
        "public_health" | "publichealth" => ("PUBHLTH", "public health"),
        "clinical_trial" | "clinicaltrial" => ("CLINTRCH", "clinical trial research"),
        "operations" => ("HOPERAT", "healthcare operations"),
        _ => ("HRESCH", "healthcare research"),
    };
    Some(json!({"system": system, "code": code, "display": display}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> AuditEntry {
        AuditEntry {
            seq: 7,
            at: 1_790_000_000_000,
            study_id: "aaa-outcomes".into(),
            purpose: "research".into(),
            query_id: "q1".into(),
            query_hash: "ab".repeat(32),
            nodes: vec!["node-a".into(), "node-b".into()],
            result_size: Some(12),
            suppressed: 2,
            privacy_cost: Some(0.01),
            privacy_remaining: Some(0.98),
            ..AuditEntry::new("alice", Role::Researcher, Action::QueryResult, Outcome::Ok)
        }
    }

    #[test]
    fn every_field_changes_the_leaf() {
        let e = entry();
        let leaf = e.leaf();
        let edits: [fn(&mut AuditEntry); 8] = [
            |e| e.seq += 1,
            |e| e.at += 1,
            |e| e.who.push('x'),
            |e| {
                e.nodes.pop();
            },
            |e| e.suppressed = 0,
            |e| e.privacy_cost = Some(0.02),
            |e| e.privacy_remaining = None,
            |e| e.outcome = Outcome::Failed(ErrorCode::Internal),
        ];
        for edit in edits {
            let mut changed = e.clone();
            edit(&mut changed);
            assert_ne!(changed.leaf(), leaf);
        }
        assert_eq!(e.clone().leaf(), leaf);
    }

    #[test]
    fn fhir_audit_event_maps_who_what_why_outcome() {
        let r = entry().to_fhir("coordinator");
        assert_eq!(r["resourceType"], "AuditEvent");
        assert_eq!(r["outcome"], "0");
        assert_eq!(r["action"], "E");
        assert_eq!(r["agent"][0]["who"]["identifier"]["value"], "alice");
        assert_eq!(r["agent"][0]["requestor"], true);
        assert_eq!(r["agent"].as_array().unwrap().len(), 3);
        assert_eq!(r["purposeOfEvent"][0]["coding"][0]["code"], "HRESCH");
        assert_eq!(
            r["entity"][0]["what"]["identifier"]["value"],
            "aaa-outcomes"
        );
        assert_eq!(r["recorded"], "2026-09-21T14:13:20.000Z");
        let refused = AuditEntry {
            outcome: Outcome::Refused(Some(ErrorCode::Policy)),
            ..entry()
        };
        assert_eq!(refused.to_fhir("c")["outcome"], "4");
    }

    /// The outcomes earlier versions sorted by prefix: a rejected or
    /// expired review and an invalid or interrupted job were exported as
    /// FHIR successes.
    #[test]
    fn every_outcome_has_its_fhir_severity() {
        let fhir = |text: &str| {
            let e = AuditEntry {
                outcome: text.parse().unwrap(),
                ..entry()
            };
            (e.succeeded(), e.to_fhir("c")["outcome"].clone())
        };
        for ok in [
            "ok",
            "accepted",
            "sent",
            "answered",
            "held",
            "reviewed-approved",
        ] {
            assert_eq!(fhir(ok), (true, json!("0")), "{ok}");
        }
        for refused in [
            "refused",
            "refused:policy",
            "refused:disclosure",
            "reviewed-rejected",
            "review-expired",
        ] {
            assert_eq!(fhir(refused), (false, json!("4")), "{refused}");
        }
        for failed in [
            "failed:internal",
            "failed:unavailable",
            "missing",
            "invalid",
            "interrupted",
            "unsent",
            "skipped",
        ] {
            assert_eq!(fhir(failed), (false, json!("8")), "{failed}");
        }
    }

    /// Every value serialises to the string earlier versions wrote and
    /// parses back from it, so the leaves of existing logs are unchanged; a
    /// value no version wrote is refused.
    #[test]
    fn closed_sets_keep_their_strings() {
        let mut outcomes: Vec<Outcome> = Outcome::SIMPLE.iter().map(|(o, _)| *o).collect();
        outcomes.push(Outcome::Refused(None));
        for code in ErrorCode::ALL {
            outcomes.push(Outcome::Refused(Some(code)));
            outcomes.push(Outcome::Failed(code));
        }
        for o in outcomes {
            let text = serde_json::to_string(&o).unwrap();
            assert_eq!(serde_json::from_str::<Outcome>(&text).unwrap(), o);
            assert_eq!(text, format!("\"{o}\""));
        }
        for a in Action::ALL {
            assert_eq!(a.to_string().parse::<Action>().unwrap(), *a);
        }
        for r in Role::ALL {
            assert_eq!(r.to_string().parse::<Role>().unwrap(), *r);
        }
        assert_eq!(
            Outcome::Refused(Some(ErrorCode::Policy)).to_string(),
            "refused:policy"
        );
        assert_eq!(Outcome::ReviewExpired, "review-expired");
        assert_eq!(Action::QueryResult, "query.result");
        for bad in ["", "success", "refused:", "refused:maybe", "failed", "OK"] {
            assert!(bad.parse::<Outcome>().is_err(), "{bad}");
        }
        let e = "reader".parse::<Role>().unwrap_err();
        assert!(e.to_string().contains("audit role \"reader\""), "{e}");
    }

    /// The leaf of an entry written before the closed sets were types.
    #[test]
    fn a_leaf_written_with_strings_is_unchanged() {
        let legacy = r#"{"seq":7,"at":1790000000000,"who":"alice","role":"researcher","action":"query.result","study_id":"aaa-outcomes","purpose":"research","query_id":"q1","job_id":"","node_id":"","nodes":["node-a","node-b"],"query_hash":"abab","result_size":12,"suppressed":2,"privacy_cost":0.01,"privacy_remaining":0.98,"outcome":"refused:policy","detail":""}"#;
        let e: AuditEntry = serde_json::from_str(legacy).unwrap();
        let mut bytes = CANONICAL_TAG.as_bytes().to_vec();
        bytes.push(b'\n');
        bytes.extend_from_slice(legacy.as_bytes());
        assert_eq!(e.canonical_bytes(), bytes);
    }
}
