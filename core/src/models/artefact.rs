//! Prediction models as artefacts a study registers and each hospital
//! approves by hash, like a study definition: an ONNX file that another
//! tool trained, or a model Plexus fitted itself (a logistic GLM or a
//! boosted-tree ensemble) taken from its result.
//!
//! A model reads dictionary variables only, through its declared inputs:
//! a numeric variable as it is, a boolean as 0/1, one level of a
//! categorical variable as its indicator (`"smoking=current"`). The
//! registration checks them against the dictionary and the study
//! ([`super::registration::check`]); every node checks them again before
//! it scores a patient.

use serde::{Deserialize, Serialize};

use crate::dictionary::{Dictionary, VarType};
use crate::error::{Error, Result};
use crate::models::trees::Feature;

/// Largest model a study may register, in bytes (the ONNX runtime's own
/// limit is the same).
pub const MAX_MODEL_BYTES: usize = 16 * 1024 * 1024;

/// The kind of file a registered model is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelFormat {
    /// An ONNX file, run at the node by a pure-Rust runtime without file or
    /// network access.
    Onnx,
    /// A [`PlexusModel`] as JSON, scored by Plexus itself.
    Plexus,
}

impl ModelFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelFormat::Onnx => "onnx",
            ModelFormat::Plexus => "plexus",
        }
    }
}

/// What a study registers besides the file: its name, format and how its
/// inputs read the dictionary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    pub name: String,
    pub format: ModelFormat,
    /// ONNX: the columns of the model's one input, in order, each a
    /// dictionary variable (`"age"`, `"diabetes"`) or one level of a
    /// categorical variable (`"smoking=current"`). Empty for a Plexus
    /// model, whose inputs are its own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<String>,
    /// ONNX: the output holding the predicted probability (by default the
    /// first float output of one or two columns; of two, the second).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Where the model comes from, for the people approving it: a file
    /// name and its producer, or the query whose result it is.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
}

/// A registered model: its spec and its file.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelArtefact {
    pub spec: ModelSpec,
    pub bytes: Vec<u8>,
}

impl ModelArtefact {
    /// SHA-256 of the file alone, as `sha256sum` prints it.
    pub fn file_sha256(&self) -> String {
        crate::hash::sha256_hex(&self.bytes)
    }

    /// The hash a hospital approves: of the spec and the file together, so
    /// that neither a changed file nor a changed mapping of its inputs runs
    /// without a new approval.
    pub fn hash(&self) -> String {
        let text = serde_json::json!({
            "spec": self.spec,
            "file_sha256": self.file_sha256(),
        });
        crate::hash::sha256_hex(text.to_string().as_bytes())
    }

    /// The dictionary variables the model reads, sorted, without repeats.
    pub fn variables(features: &[Feature]) -> Vec<String> {
        let mut out: Vec<String> = features.iter().map(|f| f.variable.clone()).collect();
        out.sort();
        out.dedup();
        out
    }
}

/// One input column (`"age"`, `"smoking=current"`) as a feature, checked
/// against the dictionary.
pub fn resolve_input(dict: &Dictionary, input: &str) -> Result<Feature> {
    let (variable, level) = match input.split_once('=') {
        Some((v, l)) => (v.trim(), Some(l.trim())),
        None => (input.trim(), None),
    };
    let v = dict.get(variable).map_err(|e| {
        Error::invalid(format!(
            "model input \"{input}\": {} (map each input to a dictionary variable)",
            e.message
        ))
    })?;
    let level = match (v.kind, level) {
        (VarType::Integer | VarType::Float, None) => None,
        (VarType::Boolean, None) => None,
        (VarType::Integer | VarType::Float, Some(_)) => {
            return Err(Error::invalid(format!(
                "model input \"{input}\": \"{variable}\" is numeric and is read as it is; write \"{variable}\" without a level"
            )))
        }
        (VarType::Categorical, None) => {
            return Err(Error::invalid(format!(
                "model input \"{input}\": \"{variable}\" is categorical; map one input to each level the model reads, as \"{variable}={}\"",
                v.categories.first().map(String::as_str).unwrap_or("LEVEL")
            )))
        }
        (VarType::Boolean | VarType::Categorical, Some(l)) => {
            let levels = v.levels();
            let index = levels.iter().position(|x| x == l).ok_or_else(|| {
                Error::invalid(format!(
                    "model input \"{input}\": \"{l}\" is not a level of \"{variable}\" (levels: {})",
                    levels.join(", ")
                ))
            })?;
            Some(index as u32)
        }
        (VarType::Date, _) => {
            return Err(Error::invalid(format!(
                "model input \"{input}\": \"{variable}\" is a date, which a model cannot read; use a numeric variable derived from it"
            )))
        }
    };
    Ok(Feature {
        name: input.trim().to_string(),
        variable: variable.to_string(),
        level,
        thresholds: Vec::new(),
    })
}
