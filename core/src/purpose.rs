//! Purposes of use and consent, in GA4GH Data Use Ontology (DUO) terms.
//!
//! A study declares one primary purpose (GRU, HMB or DS with its disease)
//! and the modifiers it carries. A patient's consent lists the primary
//! purposes it allows and the modifiers it imposes. Consent covers a study
//! when one of its primary purposes covers the study's (GRU covers HMB
//! covers DS; DS covers only its own disease) and the study carries every
//! modifier the consent imposes (consent NPU excludes a study not declared
//! not-for-profit).

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Primary DUO purposes, from broadest to narrowest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum DuoCode {
    /// DUO:0000042 general research use.
    Gru,
    /// DUO:0000006 health, medical or biomedical research.
    Hmb,
    /// DUO:0000007 disease-specific research, naming the disease.
    Ds(String),
}

impl DuoCode {
    /// Whether consent given for `self` covers research for `study`.
    pub fn covers(&self, study: &DuoCode) -> bool {
        match (self, study) {
            (DuoCode::Gru, _) => true,
            (DuoCode::Hmb, DuoCode::Hmb | DuoCode::Ds(_)) => true,
            (DuoCode::Ds(a), DuoCode::Ds(b)) => a.eq_ignore_ascii_case(b),
            _ => false,
        }
    }

    /// Parses `GRU`, `HMB` or `DS:<disease>` (also `DS-<disease>`).
    pub fn parse(token: &str) -> Result<Self> {
        let t = token.trim();
        let upper = t.to_ascii_uppercase();
        match upper.as_str() {
            "GRU" => Ok(DuoCode::Gru),
            "HMB" => Ok(DuoCode::Hmb),
            "DS" => Err(Error::invalid(
                "purpose DS needs the disease it is specific to, as DS:<disease> (for example DS:MONDO:0005311)",
            )),
            _ if upper.starts_with("DS:") || upper.starts_with("DS-") => {
                let disease = t[3..].trim();
                if disease.is_empty() {
                    return Err(Error::invalid("purpose DS: names no disease"));
                }
                Ok(DuoCode::Ds(disease.to_string()))
            }
            _ => Err(Error::invalid(format!(
                "\"{t}\" is not a primary DUO purpose (use GRU, HMB or DS:<disease>)"
            ))),
        }
    }
}

impl fmt::Display for DuoCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DuoCode::Gru => f.write_str("GRU"),
            DuoCode::Hmb => f.write_str("HMB"),
            DuoCode::Ds(d) => write!(f, "DS:{d}"),
        }
    }
}

/// DUO modifiers Plexus understands. A consent that imposes one of these
/// covers only studies that carry it.
pub const MODIFIERS: &[(&str, &str)] = &[
    ("NPU", "not-for-profit use only"),
    ("NCU", "non-commercial use only"),
    ("PUB", "publication required"),
    ("COL", "collaboration required"),
    ("IRB", "ethics approval required"),
    ("GS", "geographical restriction"),
    ("MOR", "publication moratorium"),
    ("TS", "time limit on use"),
    ("US", "user specific restriction"),
    ("PS", "project specific restriction"),
    ("IS", "institution specific restriction"),
    ("RTN", "return to database or resource"),
    ("NPOA", "no population origins or ancestry research"),
    ("NMDS", "no general methods research"),
    ("GSO", "genetic studies only"),
];

pub fn parse_modifier(token: &str) -> Result<String> {
    let upper = token.trim().to_ascii_uppercase();
    if MODIFIERS.iter().any(|(m, _)| *m == upper) {
        Ok(upper)
    } else {
        let known: Vec<&str> = MODIFIERS.iter().map(|(m, _)| *m).collect();
        Err(Error::invalid(format!(
            "\"{}\" is not a DUO modifier Plexus knows (known: {})",
            token.trim(),
            known.join(", ")
        )))
    }
}

/// A study's purpose of use.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Purpose {
    pub code: DuoCode,
    pub modifiers: BTreeSet<String>,
}

impl Purpose {
    pub fn new(code: DuoCode) -> Self {
        Purpose {
            code,
            modifiers: BTreeSet::new(),
        }
    }

    /// Builds a purpose from its parts as written in a study file or on the
    /// wire: `code` GRU/HMB/DS, `disease` for DS, and modifiers.
    pub fn from_parts(code: &str, disease: &str, modifiers: &[String]) -> Result<Self> {
        let code = match code.trim().to_ascii_uppercase().as_str() {
            "DS" if disease.trim().is_empty() => return Err(Error::invalid(
                "purpose DS needs a disease (set purpose.disease, for example \"MONDO:0005311\")",
            )),
            "DS" => DuoCode::Ds(disease.trim().to_string()),
            other => {
                if !disease.trim().is_empty() {
                    return Err(Error::invalid(format!(
                        "purpose {other} takes no disease; only DS is disease-specific"
                    )));
                }
                DuoCode::parse(other)?
            }
        };
        let modifiers = modifiers
            .iter()
            .map(|m| parse_modifier(m))
            .collect::<Result<BTreeSet<_>>>()?;
        Ok(Purpose { code, modifiers })
    }

    /// The code without disease: GRU, HMB or DS.
    pub fn code_str(&self) -> &'static str {
        match self.code {
            DuoCode::Gru => "GRU",
            DuoCode::Hmb => "HMB",
            DuoCode::Ds(_) => "DS",
        }
    }

    pub fn disease(&self) -> &str {
        match &self.code {
            DuoCode::Ds(d) => d,
            _ => "",
        }
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        for m in &self.modifiers {
            write!(f, "+{m}")?;
        }
        Ok(())
    }
}

/// What one patient's consent record allows.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConsentTerms {
    pub purposes: Vec<DuoCode>,
    pub modifiers: BTreeSet<String>,
}

impl ConsentTerms {
    /// Parses a consent's purposes column: DUO tokens separated by `;`, `|`
    /// or spaces, e.g. `HMB;NPU` or `DS:MONDO:0005311`.
    pub fn parse(text: &str) -> Result<Self> {
        let mut terms = ConsentTerms::default();
        for token in text
            .split(|c: char| c == ';' || c == '|' || c.is_whitespace())
            .filter(|t| !t.is_empty())
        {
            match DuoCode::parse(token) {
                Ok(code) => terms.purposes.push(code),
                Err(_) => {
                    terms.modifiers.insert(parse_modifier(token).map_err(|_| {
                        Error::invalid(format!(
                            "consent purpose \"{token}\" is neither a primary DUO purpose (GRU, HMB, DS:<disease>) nor a known modifier"
                        ))
                    })?);
                }
            }
        }
        Ok(terms)
    }

    pub fn covers(&self, study: &Purpose) -> bool {
        self.purposes.iter().any(|p| p.covers(&study.code))
            && self.modifiers.is_subset(&study.modifiers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn study(code: &str, disease: &str, mods: &[&str]) -> Purpose {
        let mods: Vec<String> = mods.iter().map(|s| s.to_string()).collect();
        Purpose::from_parts(code, disease, &mods).unwrap()
    }

    #[test]
    fn hierarchy() {
        let gru = ConsentTerms::parse("GRU").unwrap();
        let hmb = ConsentTerms::parse("HMB").unwrap();
        let ds = ConsentTerms::parse("DS:MONDO:0005311").unwrap();
        let s_hmb = study("HMB", "", &[]);
        let s_ds = study("DS", "mondo:0005311", &[]);
        let s_other = study("DS", "MONDO:0004975", &[]);
        let s_gru = study("GRU", "", &[]);
        assert!(gru.covers(&s_gru) && gru.covers(&s_hmb) && gru.covers(&s_ds));
        assert!(!hmb.covers(&s_gru) && hmb.covers(&s_hmb) && hmb.covers(&s_ds));
        assert!(!ds.covers(&s_hmb) && ds.covers(&s_ds) && !ds.covers(&s_other));
    }

    #[test]
    fn modifiers_restrict() {
        let npu = ConsentTerms::parse("HMB;NPU").unwrap();
        assert!(!npu.covers(&study("HMB", "", &[])));
        assert!(npu.covers(&study("HMB", "", &["NPU"])));
        // a study may carry more modifiers than the consent imposes
        assert!(ConsentTerms::parse("HMB")
            .unwrap()
            .covers(&study("HMB", "", &["NPU"])));
    }

    #[test]
    fn empty_consent_covers_nothing() {
        assert!(!ConsentTerms::parse("")
            .unwrap()
            .covers(&study("HMB", "", &[])));
    }

    #[test]
    fn bad_tokens_are_named() {
        let e = ConsentTerms::parse("HMB;XYZ").unwrap_err();
        assert!(e.message.contains("\"XYZ\""), "{e}");
        assert!(Purpose::from_parts("DS", "", &[]).is_err());
        assert!(Purpose::from_parts("HMB", "x", &[]).is_err());
    }
}
