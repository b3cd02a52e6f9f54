//! Statistical models and derived analyses built from sufficient statistics
//! that add across sites: regression (GLM, Cox), survival curves,
//! correlation, quantiles and two-by-two measures. Node-side functions
//! compute a site's contribution from its cohort; coordinator-side
//! functions turn pooled contributions into the researcher's result.

pub mod artefact;
pub mod correlation;
pub mod cox;
pub mod derived;
pub mod design;
pub mod fit;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod gbdt;
pub mod glm;
pub mod inference;
pub mod linalg;
pub mod performance;
pub mod registration;
pub mod rules;
pub mod survival;
pub mod trees;

#[cfg(test)]
mod tests;
