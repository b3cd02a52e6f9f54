//! Differential privacy building blocks: exact integer noise, fixed-point
//! encoding with public clamping bounds, and zCDP accounting. The node
//! noises what it releases with these; the coordinator only ever sees
//! noised sums.

pub mod accountant;
pub mod decisions;
pub mod fixed;
pub mod glm;
pub mod noise;
pub mod release;
pub mod report;
pub mod survival;
