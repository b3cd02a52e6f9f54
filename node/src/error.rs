/// Errors that stop a node from starting or running. Job-level refusals
/// are `plexus_core::Error`s sent back to the coordinator with their code.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("config: {0}")]
    Config(String),
    #[error("{0}")]
    Core(#[from] plexus_core::Error),
    #[error("tls: {0}")]
    Tls(String),
    /// A file in the node's state folder (approvals, review queue).
    #[error("{0}")]
    State(String),
    #[error("local audit log: {0}")]
    Log(#[from] std::io::Error),
    #[error("{0}")]
    Ops(#[from] plexus_ops::OpsError),
}

pub type Result<T, E = NodeError> = std::result::Result<T, E>;
