//! Differential privacy building blocks: exact integer noise, fixed-point
//! encoding with public clamping bounds, and zCDP accounting. They know
//! nothing of queries or statistics, so the query (its cost), the node's
//! sums (fixed point) and the release ([`crate::privacy`]) all build on
//! them.

pub mod accountant;
pub mod fixed;
pub mod noise;
