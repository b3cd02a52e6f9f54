//! gRPC services of the coordinator.

pub mod admin;
pub mod audit;
pub mod node_link;
pub mod research;
