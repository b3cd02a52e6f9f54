//! Registering a model: a model Plexus fitted ([`PlexusModel`]), and the
//! checks every registration and every node run on a model
//! ([`check`]), which need the fitted models' types and so sit above
//! [`super::artefact`].

use serde::{Deserialize, Serialize};

use crate::dictionary::{check_identifier, Dictionary};
use crate::error::{Error, Result};
use crate::models::artefact::{resolve_input, ModelArtefact, ModelFormat, MAX_MODEL_BYTES};
use crate::models::gbdt::{GbdtModel, GbdtResult, Loss, MAX_DEPTH, MAX_TREES};
use crate::models::glm::{Family, GlmResult};
use crate::models::trees::Feature;

/// A model Plexus fitted, as registered: scored at the node without any
/// runtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PlexusModel {
    /// A logistic regression: the linear predictor's coefficients by term
    /// name, as a `glm` result names them (`"(intercept)"`, `"age"`,
    /// `"sex=M"`).
    Logistic {
        terms: Vec<String>,
        coefficients: Vec<f64>,
    },
    /// A boosted-tree ensemble with a logistic loss, as `gbdt` returns it.
    Gbdt(GbdtModel),
}

/// The name of the intercept among a logistic model's terms.
pub const INTERCEPT: &str = "(intercept)";

/// The Plexus model in a registered file.
pub fn plexus(artefact: &ModelArtefact) -> Result<PlexusModel> {
    serde_json::from_slice(&artefact.bytes).map_err(|e| {
        Error::invalid(format!(
            "model \"{}\" is registered as a Plexus model and its file is not one: {e}",
            artefact.spec.name
        ))
    })
}

/// Checks everything that does not need the ONNX runtime: the name,
/// the size, a Plexus model's content, and that every input reads a
/// variable of the dictionary the study allows, with an encoding its
/// type admits. Returns the inputs as features (for a Plexus model,
/// the variables it reads). Every refusal names the input.
pub fn check(
    artefact: &ModelArtefact,
    dict: &Dictionary,
    allowed: &[String],
) -> Result<Vec<Feature>> {
    check_identifier("model name", &artefact.spec.name)?;
    if artefact.bytes.is_empty() {
        return Err(Error::invalid(format!(
            "model \"{}\" has an empty file",
            artefact.spec.name
        )));
    }
    if artefact.bytes.len() > MAX_MODEL_BYTES {
        return Err(Error::invalid(format!(
            "model \"{}\" is {} bytes, over the limit of {MAX_MODEL_BYTES}; register a smaller model",
            artefact.spec.name,
            artefact.bytes.len()
        )));
    }
    crate::text::check("model source", &artefact.spec.source)?;
    let features = match artefact.spec.format {
        ModelFormat::Onnx => {
            if artefact.spec.inputs.is_empty() {
                return Err(Error::invalid(format!(
                    "ONNX model \"{}\" declares no inputs: list the columns of its input in order, each a dictionary variable or \"variable=level\"",
                    artefact.spec.name
                )));
            }
            artefact
                .spec
                .inputs
                .iter()
                .map(|input| resolve_input(dict, input))
                .collect::<Result<Vec<_>>>()?
        }
        ModelFormat::Plexus => {
            if !artefact.spec.inputs.is_empty() || artefact.spec.output.is_some() {
                return Err(Error::invalid(format!(
                    "model \"{}\" is a Plexus model, whose inputs and output are its own: leave inputs and output out",
                    artefact.spec.name
                )));
            }
            plexus(artefact)?.features(dict)?
        }
    };
    if let Some(f) = features.iter().find(|f| !allowed.contains(&f.variable)) {
        return Err(Error::policy(format!(
            "input \"{}\" of model \"{}\" reads \"{}\", which the study does not allow (allowed: {})",
            f.name,
            artefact.spec.name,
            f.variable,
            allowed.join(", ")
        )));
    }
    Ok(features)
}

impl PlexusModel {
    /// The model's inputs as features, checked against the dictionary.
    pub fn features(&self, dict: &Dictionary) -> Result<Vec<Feature>> {
        match self {
            PlexusModel::Logistic {
                terms,
                coefficients,
            } => {
                if terms.len() != coefficients.len() || terms.is_empty() {
                    return Err(Error::invalid(format!(
                        "a logistic model needs one coefficient per term, and has {} terms and {} coefficients",
                        terms.len(),
                        coefficients.len()
                    )));
                }
                if let Some(c) = coefficients.iter().find(|c| !c.is_finite()) {
                    return Err(Error::invalid(format!(
                        "a logistic model's coefficient is {c}; coefficients must be finite"
                    )));
                }
                terms
                    .iter()
                    .filter(|t| *t != INTERCEPT)
                    .map(|t| resolve_input(dict, t))
                    .collect()
            }
            PlexusModel::Gbdt(model) => {
                if model.loss != Loss::Logistic {
                    return Err(Error::invalid(
                        "a boosted-tree model with a squared loss predicts a number, not a probability; only a logistic one can be validated",
                    ));
                }
                if model.trees.len() > MAX_TREES as usize {
                    return Err(Error::invalid(format!(
                        "the model has {} trees, over the limit of {MAX_TREES}",
                        model.trees.len()
                    )));
                }
                for f in &model.features {
                    if !f.thresholds.iter().all(|t| t.is_finite())
                        || !f.thresholds.windows(2).all(|w| w[0] < w[1])
                    {
                        return Err(Error::invalid(format!(
                            "feature \"{}\" of the model has thresholds that are not finite and increasing",
                            f.name
                        )));
                    }
                }
                for tree in &model.trees {
                    let slots = tree.slots.len() + 1;
                    if !slots.is_power_of_two() || slots < 2 {
                        return Err(Error::invalid(format!(
                            "a tree of the model has {} slots, which is no tree's",
                            tree.slots.len()
                        )));
                    }
                    let depth = slots.ilog2() - 1;
                    if depth > MAX_DEPTH {
                        return Err(Error::invalid(format!(
                            "a tree of the model is {depth} levels deep, over the limit of {MAX_DEPTH}"
                        )));
                    }
                    tree.check(&model.features, depth, true)?;
                }
                for f in &model.features {
                    let resolved = match f.level {
                        Some(l) => {
                            let levels = dict.get(&f.variable)?.levels();
                            let level = levels.get(l as usize).ok_or_else(|| {
                                Error::invalid(format!(
                                    "feature \"{}\" of the model reads a level \"{}\" does not have",
                                    f.name, f.variable
                                ))
                            })?;
                            resolve_input(dict, &format!("{}={level}", f.variable))?
                        }
                        None => resolve_input(dict, &f.variable)?,
                    };
                    if resolved.level != f.level {
                        return Err(Error::invalid(format!(
                            "feature \"{}\" of the model does not read \"{}\" as the dictionary types it",
                            f.name, f.variable
                        )));
                    }
                }
                if !(model.base_score.is_finite() && model.learning_rate.is_finite()) {
                    return Err(Error::invalid("the model's base score is not finite"));
                }
                Ok(model.features.clone())
            }
        }
    }

    /// The predicted probability of one patient, from the values of the
    /// model's features (as [`Feature::value`] gives them).
    pub fn predict(&self, values: &[f64]) -> f64 {
        match self {
            PlexusModel::Logistic {
                terms,
                coefficients,
            } => {
                let mut eta = 0.0;
                let mut x = values.iter();
                for (t, b) in terms.iter().zip(coefficients) {
                    eta += b * if t == INTERCEPT {
                        1.0
                    } else {
                        *x.next().unwrap_or(&0.0)
                    };
                }
                Loss::Logistic.response(eta)
            }
            PlexusModel::Gbdt(model) => model.predict(values),
        }
    }
}

impl PlexusModel {
    /// The model a logistic GLM's result holds: its coefficients.
    pub fn from_glm(g: &GlmResult) -> Result<PlexusModel> {
        if g.family != Family::Binomial {
            return Err(Error::invalid(format!(
                "the result is a {} GLM, which predicts no probability; register a binomial (logistic) one",
                g.family.as_str()
            )));
        }
        Ok(PlexusModel::Logistic {
            terms: g.coefficients.iter().map(|c| c.term.clone()).collect(),
            coefficients: g.coefficients.iter().map(|c| c.estimate).collect(),
        })
    }

    /// The ensemble a `gbdt` result holds, if it predicts a probability.
    pub fn from_gbdt(g: &GbdtResult) -> Result<PlexusModel> {
        if g.model.loss != Loss::Logistic {
            return Err(Error::invalid(
                "the result is a gbdt with a squared loss, which predicts no probability; register one with a logistic loss",
            ));
        }
        Ok(PlexusModel::Gbdt(g.model.clone()))
    }
}
