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

use crate::merkle::{leaf_of, Leaf};

/// One audit entry, at the coordinator or at a node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the log, from 1, without gaps.
    pub seq: i64,
    pub at: i64,
    /// Certificate identity of whoever acted.
    pub who: String,
    pub role: String,
    pub action: String,
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
    pub outcome: String,
    pub detail: String,
}

/// Version tag of the canonical form; a new form gets a new tag.
const CANONICAL_TAG: &str = "plexus-audit-entry-v1";

impl AuditEntry {
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

    /// Whether the action ended well: accepted, sent, released, ok.
    pub fn succeeded(&self) -> bool {
        !(self.outcome.starts_with("refused")
            || self.outcome.starts_with("failed")
            || self.outcome.starts_with("missing")
            || self.outcome.starts_with("rejected")
            || self.outcome.starts_with("interrupted")
            || self.outcome.starts_with("unsent"))
    }

    /// The entry as a FHIR R4 AuditEvent resource: who → agent, what →
    /// entity (study, query, job), why → purposeOfEvent, how it ended →
    /// outcome. `observer` names the system that kept the log.
    pub fn to_fhir(&self, observer: &str) -> serde_json::Value {
        let recorded = chrono::DateTime::from_timestamp_millis(self.at)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        // FHIR outcome: 0 success, 4 minor failure (a refusal), 8 serious failure.
        let outcome = if self.succeeded() {
            "0"
        } else if self.outcome.starts_with("refused") || self.outcome.starts_with("rejected") {
            "4"
        } else {
            "8"
        };
        let action = match self.action.as_str() {
            a if a.starts_with("query") || a == "job" => "E",
            a if a.starts_with("study") => "C",
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
            "requestor": self.role == "researcher" || self.role == "admin" || self.role == "auditor",
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
            "outcomeDesc": if self.detail.is_empty() { self.outcome.clone() } else { format!("{}: {}", self.outcome, self.detail) },
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
            who: "alice".into(),
            role: "researcher".into(),
            action: "query.result".into(),
            study_id: "aaa-outcomes".into(),
            purpose: "research".into(),
            query_id: "q1".into(),
            query_hash: "ab".repeat(32),
            nodes: vec!["node-a".into(), "node-b".into()],
            result_size: Some(12),
            suppressed: 2,
            privacy_cost: Some(0.01),
            privacy_remaining: Some(0.98),
            outcome: "ok".into(),
            ..Default::default()
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
            |e| e.outcome = "failed".into(),
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
            outcome: "refused:policy".into(),
            ..entry()
        };
        assert_eq!(refused.to_fhir("c")["outcome"], "4");
    }
}
