//! Booleans a hospital stores as codes: a column of `0`/`1`, `Y`/`N` or
//! `yes`/`no` read as a boolean variable through the values its node.toml
//! declares true and false. Without a declaration a boolean variable needs
//! a boolean column, as before.
//!
//! A declared value is compared with the column's text exactly (case and
//! spaces count; an integer column reads as its decimal digits). Values
//! listed in `missing_values` and empty cells read as missing. Any other
//! value stops the node at start-up, as a category outside the dictionary
//! does, so that no patient is silently dropped; one that appears later
//! reads as missing.

use std::collections::BTreeSet;

use plexus_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// The values of a column that mean true, false and missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct BooleanValues {
    pub true_values: Vec<String>,
    pub false_values: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_values: Vec<String>,
}

impl BooleanValues {
    /// From the three keys of a variable's mapping; `None` when none is set.
    pub fn from_keys(
        true_values: &[String],
        false_values: &[String],
        missing_values: &[String],
    ) -> Option<Self> {
        let set = !(true_values.is_empty() && false_values.is_empty() && missing_values.is_empty());
        set.then(|| BooleanValues {
            true_values: true_values.to_vec(),
            false_values: false_values.to_vec(),
            missing_values: missing_values.to_vec(),
        })
    }

    /// Checks the lists of the mapping at `at` (e.g. `data.columns.death`).
    pub fn validate(&self, at: &str) -> Result<()> {
        for (key, list, meaning, example) in [
            ("true_values", &self.true_values, "true", r#"["1", "Y"]"#),
            ("false_values", &self.false_values, "false", r#"["0", "N"]"#),
        ] {
            if list.is_empty() {
                return Err(Error::invalid(format!(
                    "{at}.{key} is empty; list the column's values that mean {meaning}, e.g. {key} = {example}"
                )));
            }
            if list.iter().any(String::is_empty) {
                return Err(Error::invalid(format!(
                    "{at}.{key} holds an empty value; an empty cell is read as missing, so leave it out"
                )));
            }
        }
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for (key, list) in [
            ("true_values", &self.true_values),
            ("false_values", &self.false_values),
            ("missing_values", &self.missing_values),
        ] {
            for v in list {
                if let Some((other, _)) = seen.iter().find(|(_, s)| *s == v.as_str()) {
                    let what = if *other == key {
                        format!("{at}.{key} lists {v:?} twice")
                    } else {
                        format!("{v:?} is in both {at}.{other} and {at}.{key}")
                    };
                    return Err(Error::invalid(format!(
                        "{what}; a value can mean only one thing, so keep it in one list once"
                    )));
                }
                seen.push((key, v));
            }
        }
        Ok(())
    }

    /// Every value the mapping declares (true, false or missing).
    pub fn declared(&self) -> Vec<String> {
        let all: BTreeSet<&String> = self
            .true_values
            .iter()
            .chain(&self.false_values)
            .chain(&self.missing_values)
            .collect();
        all.into_iter().cloned().collect()
    }

    /// What a start-up error says the column may hold.
    pub fn described(&self) -> String {
        let list = |l: &[String]| {
            l.iter()
                .map(|v| format!("{v:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut out = format!(
            "true_values {}; false_values {}",
            list(&self.true_values),
            list(&self.false_values)
        );
        if !self.missing_values.is_empty() {
            out.push_str(&format!("; missing_values {}", list(&self.missing_values)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(t: &[&str], f: &[&str], m: &[&str]) -> BooleanValues {
        let own = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        BooleanValues {
            true_values: own(t),
            false_values: own(f),
            missing_values: own(m),
        }
    }

    #[test]
    fn lists_that_cannot_be_read_one_way_are_refused_naming_the_key() {
        values(&["1", "Y"], &["0", "N"], &["U"])
            .validate("data.columns.death")
            .unwrap();
        for (v, want) in [
            (values(&[], &["0"], &[]), "data.columns.death.true_values is empty"),
            (values(&["1"], &[], &[]), "data.columns.death.false_values is empty"),
            (values(&[], &[], &["U"]), "true_values is empty"),
            (
                values(&["1", "Y"], &["0", "Y"], &[]),
                "\"Y\" is in both data.columns.death.true_values and data.columns.death.false_values",
            ),
            (
                values(&["1"], &["0"], &["0"]),
                "\"0\" is in both data.columns.death.false_values and data.columns.death.missing_values",
            ),
            (values(&["1", "1"], &["0"], &[]), "true_values lists \"1\" twice"),
            (values(&["1", ""], &["0"], &[]), "holds an empty value"),
        ] {
            let e = v.validate("data.columns.death").unwrap_err();
            assert_eq!(e.code, plexus_core::ErrorCode::Invalid);
            assert!(e.message.contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn only_a_declaration_makes_values() {
        assert_eq!(BooleanValues::from_keys(&[], &[], &[]), None);
        let v = BooleanValues::from_keys(&["Y".into()], &["N".into()], &[]).unwrap();
        assert_eq!(v.declared(), ["N", "Y"]);
        assert_eq!(v.described(), "true_values \"Y\"; false_values \"N\"");
    }
}
