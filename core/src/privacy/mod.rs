//! Differential privacy at release: what a node noises and sends for a
//! study that is not exact, the decisions it takes on noised values, and
//! what the researcher is told about a result's cost and noise. The
//! building blocks (noise, fixed point, zCDP accounting) are in
//! [`crate::dp`]. The coordinator only ever sees noised sums.

pub mod decisions;
pub mod glm;
pub mod release;
pub mod report;
pub mod scale;
pub mod survival;
