/// Errors that stop a node from starting or running. Job-level refusals
/// are `plexus_core::Error`s sent back to the coordinator with their code.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("config: {0}")]
    Config(String),
    #[error("{0}")]
    Core(#[from] plexus_core::Error),
    #[error("tls: {0}")]
    Tls(#[from] plexus_tls::TlsError),
    #[error("tls: {} holds no certificate", .0.display())]
    NoCertificate(std::path::PathBuf),
    #[error("tls.key does not belong to the certificate in {} (a rotation half done?); check that tls.cert and tls.key belong together", .0.display())]
    KeyMismatch(std::path::PathBuf),
    /// A file in the node's state folder (approvals, review queue).
    #[error("{0}")]
    State(String),
    /// The node's own job log could not be read or written.
    #[error("local audit log {}: {source}", path.display())]
    Log {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Ops(#[from] plexus_ops::OpsError),
}

pub type Result<T, E = NodeError> = std::result::Result<T, E>;

impl NodeError {
    /// A failure of the node's job log at `path`.
    pub fn log(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> NodeError + '_ {
        move |source| NodeError::Log {
            path: path.to_path_buf(),
            source,
        }
    }
}
