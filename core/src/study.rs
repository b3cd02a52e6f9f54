//! Studies: the unit of approval. A study names its purpose of use, the
//! variables and analyses it may use, its researchers, its participating
//! nodes and how many of them must answer for a result to stand.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::dictionary::{check_identifier, Dictionary};
use crate::error::{Error, Result};
use crate::purpose::Purpose;
use crate::query::{AnalysisKind, Query};
use crate::text;
use crate::timeline::{self, Derived, StudyConceptSet};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurposeSpec {
    /// GRU, HMB or DS.
    pub code: String,
    /// The disease, for DS only.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub disease: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modifiers: Vec<String>,
}

/// How a study's answers are protected: differential privacy under a zCDP
/// budget (the default), or exact answers for a validation network whose
/// every node has accepted that in its own policy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacySettings {
    /// Exact answers, no noise and no budget. Off by default; each node
    /// must list the study in `policy.exact_studies` or it refuses.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub exact: bool,
    /// The study's whole budget at each node, in zCDP ρ.
    #[serde(default = "default_budget_rho")]
    pub budget_rho: f64,
    /// What a query costs when it does not say (`"rho"` in the query).
    #[serde(default = "default_query_rho")]
    pub query_rho: f64,
    /// The δ of the (ε, δ) equivalent shown next to every budget.
    #[serde(default = "default_delta")]
    pub delta: f64,
}

/// A study's budget when its definition names none: ε ≈ 8.4 at δ = 1e-6.
pub const DEFAULT_BUDGET_RHO: f64 = 1.0;
/// A query's cost when neither it nor its study names one: a hundred
/// queries per budget, and a count noised with σ ≈ 7.
pub const DEFAULT_QUERY_RHO: f64 = 0.01;
pub const DEFAULT_DELTA: f64 = 1e-6;

fn default_budget_rho() -> f64 {
    DEFAULT_BUDGET_RHO
}
fn default_query_rho() -> f64 {
    DEFAULT_QUERY_RHO
}
fn default_delta() -> f64 {
    DEFAULT_DELTA
}

impl Default for PrivacySettings {
    fn default() -> Self {
        PrivacySettings {
            exact: false,
            budget_rho: DEFAULT_BUDGET_RHO,
            query_rho: DEFAULT_QUERY_RHO,
            delta: DEFAULT_DELTA,
        }
    }
}

impl PrivacySettings {
    /// The (ε, δ)-DP guarantee of spending `rho`.
    pub fn epsilon(&self, rho: f64) -> f64 {
        crate::dp::accountant::epsilon(rho, self.delta)
    }

    fn validate(&self, study: &str) -> Result<()> {
        use crate::dp::accountant::check_rho;
        check_rho(
            &format!("study \"{study}\": [privacy] budget_rho"),
            self.budget_rho,
        )?;
        check_rho(
            &format!("study \"{study}\": [privacy] query_rho"),
            self.query_rho,
        )?;
        if self.query_rho > self.budget_rho {
            return Err(Error::invalid(format!(
                "study \"{study}\": [privacy] query_rho {} is larger than the whole budget_rho {}",
                self.query_rho, self.budget_rho
            )));
        }
        if !(self.delta > 0.0 && self.delta < 1e-3) {
            return Err(Error::invalid(format!(
                "study \"{study}\": [privacy] delta must be between 0 and 0.001, got {}",
                self.delta
            )));
        }
        Ok(())
    }
}

/// A study as registered by the network admin (`study.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyDefinition {
    pub id: String,
    pub title: String,
    pub variables: Vec<String>,
    pub analyses: Vec<AnalysisKind>,
    pub researchers: Vec<String>,
    pub nodes: Vec<String>,
    #[serde(default = "default_min_nodes")]
    pub min_nodes: u32,
    /// Whether an iterative fit (GLM, Cox) that loses a node between rounds
    /// may start again without it, as long as `min_nodes` remain. Off by
    /// default: the fit fails naming the node and the round.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continue_without_lost_nodes: bool,
    /// Whether the nodes' answers are pooled by secure aggregation: each
    /// node sends its statistics masked so that only the sum across the
    /// nodes can be read (see [`crate::secagg`]). Off by default, and left
    /// out of the serialised definition when off, so definitions (and
    /// their hashes) without it stay as they were. Needs at least
    /// [`crate::secagg::MIN_NODES`] nodes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub secure_aggregation: bool,
    pub purpose: PurposeSpec,
    #[serde(default)]
    pub privacy: PrivacySettings,
    /// The study's time logic: variables it derives from the dictionary's
    /// dates and dated events (`[derived.NAME]`, see [`crate::timeline`]).
    /// A query may use one when `variables` lists it; the dictionary
    /// variables it reads need not be listed, and are never released but
    /// through it. Left out of the serialised definition when empty, so
    /// definitions (and their hashes) without it stay as they were.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub derived: BTreeMap<String, Derived>,
    /// OMOP concept sets the study brings (`[concept_sets.NAME]`, see
    /// [`crate::timeline::StudyConceptSet`]): booleans to its queries, and
    /// dated events its derived variables read. Left out when empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub concept_sets: BTreeMap<String, StudyConceptSet>,
}

fn default_min_nodes() -> u32 {
    1
}

/// Whether `s` can name a certificate holder (researcher or node).
pub fn is_principal_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'))
}

impl StudyDefinition {
    pub fn from_toml(text: &str) -> Result<Self> {
        toml::from_str(text)
            .map_err(|e| Error::invalid(format!("study definition is not valid: {e}")))
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::invalid(format!("cannot read study file {}: {e}", path.display()))
        })?;
        Self::from_toml(&text)
            .map_err(|e| Error::invalid(format!("{} (in {})", e.message, path.display())))
    }

    /// Checks the definition against the dictionary and returns its purpose.
    pub fn validate(&self, dict: &Dictionary) -> Result<Purpose> {
        // First, so that no later error echoes a control character.
        self.check_text()?;
        check_identifier("study id", &self.id)?;
        if self.title.trim().is_empty() {
            return Err(Error::invalid(format!(
                "study \"{}\" has no title",
                self.id
            )));
        }
        if self.variables.is_empty() {
            return Err(Error::invalid(format!(
                "study \"{}\" allows no variables",
                self.id
            )));
        }
        let dict = &self.dictionary(dict)?;
        for v in &self.variables {
            dict.get(v)?;
        }
        if self.analyses.is_empty() {
            return Err(Error::invalid(format!(
                "study \"{}\" allows no analyses",
                self.id
            )));
        }
        for (what, names) in [("researchers", &self.researchers), ("nodes", &self.nodes)] {
            if names.is_empty() {
                return Err(Error::invalid(format!(
                    "study \"{}\" lists no {what}",
                    self.id
                )));
            }
            if let Some(bad) = names.iter().find(|n| !is_principal_name(n)) {
                return Err(Error::invalid(format!(
                    "\"{bad}\" in {what} of study \"{}\" is not a valid certificate name (letters, digits, '.', '_', '-', '@')",
                    self.id
                )));
            }
            let unique: BTreeSet<_> = names.iter().collect();
            if unique.len() != names.len() {
                return Err(Error::invalid(format!(
                    "study \"{}\" lists one of its {what} twice",
                    self.id
                )));
            }
        }
        if self.min_nodes == 0 || self.min_nodes as usize > self.nodes.len() {
            return Err(Error::invalid(format!(
                "study \"{}\" needs min_nodes between 1 and its {} nodes, got {}",
                self.id,
                self.nodes.len(),
                self.min_nodes
            )));
        }
        if self.secure_aggregation && self.nodes.len() < crate::secagg::MIN_NODES {
            return Err(Error::invalid(format!(
                "study \"{}\" uses secure_aggregation, which needs at least {} nodes (a sum over two would give each of them the other's figure), and it lists {}",
                self.id,
                crate::secagg::MIN_NODES,
                self.nodes.len()
            )));
        }
        if self.secure_aggregation && !(self.derived.is_empty() && self.concept_sets.is_empty()) {
            return Err(Error::invalid(format!(
                "study \"{}\" uses secure_aggregation and derives variables or concept sets of its own ([derived], [concept_sets]); the two do not work together yet: register them in a study without secure aggregation",
                self.id
            )));
        }
        self.privacy.validate(&self.id)?;
        Purpose::from_parts(
            &self.purpose.code,
            &self.purpose.disease,
            &self.purpose.modifiers,
        )
    }

    /// Every string of the definition against [`text::check`], named by
    /// its path in `study.toml`.
    fn check_text(&self) -> Result<()> {
        text::check("study.id", &self.id)?;
        text::check("study.title", &self.title)?;
        text::check_all("study.variables", &self.variables)?;
        text::check_all("study.researchers", &self.researchers)?;
        text::check_all("study.nodes", &self.nodes)?;
        text::check("study.purpose.code", &self.purpose.code)?;
        text::check("study.purpose.disease", &self.purpose.disease)?;
        text::check_all("study.purpose.modifiers", &self.purpose.modifiers)
    }

    pub fn purpose(&self) -> Result<Purpose> {
        Purpose::from_parts(
            &self.purpose.code,
            &self.purpose.disease,
            &self.purpose.modifiers,
        )
    }

    /// Refuses, with a policy error, a query using an analysis or a variable
    /// the study does not allow.
    pub fn permits(&self, query: &Query) -> Result<()> {
        let kind = query.analysis.kind();
        if !self.analyses.contains(&kind) {
            return Err(Error::policy(format!(
                "study \"{}\" does not allow {kind} analyses (allowed: {})",
                self.id,
                self.analyses
                    .iter()
                    .map(|a| a.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        for v in query.variables() {
            if !self.variables.contains(&v) {
                // Say where the variable is used: in a formula or a "where"
                // text, the researcher never wrote a field name for it.
                let used = match query.analysis.role_of(&v) {
                    Some(role) => format!("the {kind}'s {role}"),
                    None => "a condition of the cohort".into(),
                };
                return Err(Error::policy(format!(
                    "study \"{}\" does not allow variable \"{v}\", used as {used} (allowed: {})",
                    self.id,
                    self.variables.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// The network dictionary with the study's derived variables added:
    /// what its queries are read, checked and pooled against.
    pub fn dictionary(&self, base: &Dictionary) -> Result<Dictionary> {
        timeline::extend(base, &self.derived, &self.concept_sets)
    }

    /// The dictionary variables a query's `names` rest on (a derived
    /// variable's inputs in its place), for a hospital's narrowing.
    pub fn inputs(&self, names: &[String]) -> Vec<String> {
        timeline::inputs(&self.derived, names)
    }

    pub fn has_researcher(&self, name: &str) -> bool {
        self.researchers.iter().any(|r| r == name)
    }

    /// Hash of the definition, so a node can pin what it approved.
    pub fn definition_hash(&self) -> String {
        let bytes = serde_json::to_vec(self).expect("study serialises");
        crate::hash::sha256_hex(&bytes)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const EXAMPLE: &str = r#"
id = "aaa-outcomes"
title = "Abdominal aortic aneurysm outcomes"
variables = ["age", "sex", "aaa_diameter", "smoking"]
analyses = ["count", "summary"]
researchers = ["alice"]
nodes = ["hospital-a", "hospital-b"]
min_nodes = 2

[purpose]
code = "DS"
disease = "MONDO:0005160"
"#;

    #[test]
    fn example_validates_and_permits() {
        let s = StudyDefinition::from_toml(EXAMPLE).unwrap();
        let d = Dictionary::cardiovascular();
        let p = s.validate(&d).unwrap();
        assert_eq!(p.to_string(), "DS:MONDO:0005160");
        let ok = Query::from_json(r#"{"analysis": {"summary": {"variable": "age"}}}"#).unwrap();
        s.permits(&ok).unwrap();
        let bad = Query::from_json(r#"{"analysis": {"summary": {"variable": "sbp"}}}"#).unwrap();
        assert_eq!(s.permits(&bad).unwrap_err().code, crate::ErrorCode::Policy);
        let hist = Query::from_json(
            r#"{"analysis": {"histogram": {"variable": "age", "edges": [1, 2]}}}"#,
        )
        .unwrap();
        assert!(s.permits(&hist).unwrap_err().message.contains("histogram"));
    }

    #[test]
    fn secure_aggregation_leaves_the_hash_of_other_definitions_alone() {
        let s = StudyDefinition::from_toml(EXAMPLE).unwrap();
        assert!(!s.secure_aggregation);
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("secure_aggregation"), "{json}");
        // The hash of a definition without the option, as before it existed.
        assert_eq!(
            s.definition_hash(),
            crate::hash::sha256_hex(json.as_bytes())
        );
        let on =
            StudyDefinition::from_toml(&format!("secure_aggregation = true\n{EXAMPLE}")).unwrap();
        assert!(on.secure_aggregation);
        assert_ne!(on.definition_hash(), s.definition_hash());
        // Two nodes cannot aggregate securely.
        let e = on.validate(&Dictionary::cardiovascular()).unwrap_err();
        assert!(e.message.contains("at least 3 nodes"), "{e}");
        let mut three = on.clone();
        three.nodes.push("hospital-c".into());
        three.validate(&Dictionary::cardiovascular()).unwrap();
    }

    #[test]
    fn control_characters_are_refused_naming_the_field() {
        let d = Dictionary::cardiovascular();
        type Edit = fn(&mut StudyDefinition);
        let edits: [(Edit, &str); 5] = [
            (
                |s| s.id.push('\u{1b}'),
                "study.id holds the control character U+001B",
            ),
            (
                |s| s.title = "AAA\n2026-01-01 admin study.register ok".into(),
                "study.title holds the control character U+000A",
            ),
            (
                |s| s.variables[2] = "aaa\u{202e}diameter".into(),
                "study.variables[2] holds the control character U+202E",
            ),
            (
                |s| s.purpose.disease = "MONDO:0005160\u{2066}".into(),
                "study.purpose.disease holds the control character U+2066",
            ),
            (
                |s| s.nodes.push("hospital-\u{9b}c".into()),
                "study.nodes[2] holds the control character U+009B",
            ),
        ];
        for (edit, expected) in edits {
            let mut s = StudyDefinition::from_toml(EXAMPLE).unwrap();
            edit(&mut s);
            let e = s.validate(&d).unwrap_err();
            assert_eq!(e.code, crate::ErrorCode::Invalid);
            assert!(e.message.starts_with(expected), "{e}");
            assert!(!e.message.chars().any(text::is_unsafe), "{e:?}");
        }
    }

    #[test]
    fn invalid_min_nodes() {
        let mut s = StudyDefinition::from_toml(EXAMPLE).unwrap();
        s.min_nodes = 3;
        assert!(s
            .validate(&Dictionary::cardiovascular())
            .unwrap_err()
            .message
            .contains("min_nodes"));
    }
}
