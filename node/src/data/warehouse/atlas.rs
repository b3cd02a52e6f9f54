//! Concept sets exported from OHDSI ATLAS.
//!
//! Two JSON shapes are read:
//! - a concept set expression, as ATLAS exports it from a concept set's
//!   "Export" tab: `{"items": [{"concept": {"CONCEPT_ID": 192671, ...},
//!   "isExcluded": false, "includeDescendants": true, "includeMapped":
//!   false}, ...]}`;
//! - a cohort definition (Circe JSON), with `concept_set_name` naming one of
//!   its `ConceptSets` (`[{"id": 0, "name": "...", "expression": {"items":
//!   [...]}}]`).
//!
//! The subset taken is each item's concept id and its `isExcluded` and
//! `includeDescendants` flags, with ATLAS's meaning: the concepts taken in
//! (with their descendants where flagged), less those taken out (with
//! theirs). `includeMapped` (source concepts that map to the item) is
//! refused naming the concept: a standard column never holds them. Every
//! other field (names, vocabularies, the cohort's criteria) is ignored and
//! never reaches SQL; concept ids must be integers.

use std::path::Path;

use plexus_core::{Error, Result};
use serde::Deserialize;

use super::config::{ConceptItem, ConceptSet};

/// Larger files are refused: a concept set export of a whole vocabulary
/// branch is a few megabytes.
const MAX_BYTES: u64 = 32 << 20;

#[derive(Deserialize)]
struct Expression {
    items: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    concept: Concept,
    #[serde(default, rename = "isExcluded")]
    excluded: bool,
    #[serde(default, rename = "includeDescendants")]
    descendants: bool,
    #[serde(default, rename = "includeMapped")]
    mapped: bool,
}

#[derive(Deserialize)]
struct Concept {
    #[serde(rename = "CONCEPT_ID")]
    id: i64,
}

#[derive(Deserialize)]
struct Cohort {
    #[serde(rename = "ConceptSets")]
    concept_sets: Vec<Named>,
}

#[derive(Deserialize)]
struct Named {
    name: String,
    expression: Expression,
}

/// The concept set in `path` (`name` picks one of a cohort definition's).
/// `at` is the config key, for messages.
pub fn read(path: &Path, name: Option<&str>, at: &str) -> Result<ConceptSet> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| {
        Error::invalid(format!(
            "{at}.concept_set_file: cannot read {shown} ({e}); check the path (relative to node.toml) and that the node's user may read it"
        ))
    })?;
    if meta.len() > MAX_BYTES {
        return Err(Error::invalid(format!(
            "{at}.concept_set_file: {shown} is larger than {} MiB; export the concept set alone, not a whole vocabulary",
            MAX_BYTES >> 20
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::invalid(format!(
            "{at}.concept_set_file: cannot read {shown} as text ({e})"
        ))
    })?;
    parse(&text, name, &format!("{at}.concept_set_file ({shown})"))
}

/// The concept set in `text`; `at` names the key and file in messages.
pub fn parse(text: &str, name: Option<&str>, at: &str) -> Result<ConceptSet> {
    let bad = |e: serde_json::Error, what: &str| {
        Error::invalid(format!(
            "{at} is not {what} as ATLAS exports it ({e}); export the concept set expression (or the cohort definition's JSON) again"
        ))
    };
    let expression = match name {
        None => serde_json::from_str::<Expression>(text).map_err(|e| {
            bad(e, "a concept set expression ({\"items\": [...]}); for a cohort definition, also give concept_set_name,")
        })?,
        Some(n) => {
            let cohort: Cohort =
                serde_json::from_str(text).map_err(|e| bad(e, "a cohort definition with ConceptSets"))?;
            let names: Vec<String> = cohort
                .concept_sets
                .iter()
                .map(|s| format!("{:?}", s.name))
                .collect();
            cohort
                .concept_sets
                .into_iter()
                .find(|s| s.name == n)
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "{at} has no concept set named {n:?} (it has {}); set concept_set_name to one of them",
                        if names.is_empty() { "none".to_string() } else { names.join(", ") }
                    ))
                })?
                .expression
        }
    };
    if expression.items.is_empty() {
        return Err(Error::invalid(format!(
            "{at} holds an empty concept set; add its concepts in ATLAS and export it again"
        )));
    }
    let mut items = Vec::with_capacity(expression.items.len());
    for i in expression.items {
        if i.mapped {
            return Err(Error::invalid(format!(
                "{at}: concept {} has \"include mapped\" set, which Plexus does not follow (a standard concept column never holds the source concepts it would add); clear it in ATLAS, or map the source column with those concepts listed",
                i.concept.id
            )));
        }
        items.push(ConceptItem {
            id: i.concept.id,
            descendants: i.descendants,
            excluded: i.excluded,
        });
    }
    Ok(ConceptSet { items })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPRESSION: &str = r#"{"items": [
        {"concept": {"CONCEPT_ID": 1177480, "CONCEPT_NAME": "Ibuprofen", "STANDARD_CONCEPT": "S",
                     "DOMAIN_ID": "Drug", "VOCABULARY_ID": "RxNorm", "CONCEPT_CLASS_ID": "Ingredient"},
         "isExcluded": false, "includeDescendants": true, "includeMapped": false},
        {"concept": {"CONCEPT_ID": 1118084, "CONCEPT_NAME": "celecoxib'); DROP TABLE person; --"},
         "isExcluded": true, "includeDescendants": true},
        {"concept": {"CONCEPT_ID": 19019979}}
    ]}"#;

    #[test]
    fn reads_an_expression_with_each_items_flags() {
        let set = parse(EXPRESSION, None, "x").unwrap();
        assert_eq!(
            set.items,
            [
                ConceptItem {
                    id: 1177480,
                    descendants: true,
                    excluded: false
                },
                ConceptItem {
                    id: 1118084,
                    descendants: true,
                    excluded: true
                },
                ConceptItem {
                    id: 19019979,
                    descendants: false,
                    excluded: false
                },
            ]
        );
    }

    #[test]
    fn reads_a_named_set_of_a_cohort_definition() {
        let cohort = format!(
            r#"{{"ConceptSets": [{{"id": 0, "name": "NSAIDs", "expression": {EXPRESSION}}},
                                {{"id": 1, "name": "GI bleed", "expression": {{"items": [
                                    {{"concept": {{"CONCEPT_ID": 192671}}, "includeDescendants": true}}]}}}}],
                "PrimaryCriteria": {{"CriteriaList": []}}, "QualifiedLimit": {{"Type": "First"}}}}"#
        );
        let set = parse(&cohort, Some("GI bleed"), "x").unwrap();
        assert_eq!(set.listed(), [192671]);
        assert_eq!(parse(&cohort, Some("NSAIDs"), "x").unwrap().items.len(), 3);
        let e = parse(&cohort, Some("nsaids"), "x").unwrap_err();
        assert!(e.message.contains("\"NSAIDs\", \"GI bleed\""), "{e}");
    }

    #[test]
    fn refuses_what_it_cannot_follow_naming_it() {
        let cases = [
            (r#"{"items": []}"#, None, "empty concept set"),
            (
                r#"{"items": [{"concept": {"CONCEPT_ID": "192671; DROP"}}]}"#,
                None,
                "not a concept set expression",
            ),
            (
                r#"{"items": [{"concept": {"CONCEPT_ID": 1.5}}]}"#,
                None,
                "not a concept set expression",
            ),
            (
                r#"{"items": [{"concept": {"CONCEPT_ID": 44}, "includeMapped": true}]}"#,
                None,
                "concept 44 has \"include mapped\"",
            ),
            (r#"{"ConceptSets": []}"#, None, "also give concept_set_name"),
            (r#"{"items": []}"#, Some("a"), "not a cohort definition"),
            ("not json", None, "not a concept set expression"),
        ];
        for (text, name, want) in cases {
            let e = parse(text, name, "data.postgres.variables.v.concept_set_file").unwrap_err();
            assert!(
                e.message.contains(want) && e.message.contains("variables.v.concept_set_file"),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn a_missing_file_names_the_key_and_path() {
        let e = read(
            Path::new("/nonexistent/set.json"),
            None,
            "data.postgres.variables.v",
        )
        .unwrap_err();
        assert!(
            e.message.contains("variables.v.concept_set_file")
                && e.message.contains("/nonexistent/set.json"),
            "{e}"
        );
    }
}
