use plexus_core::{Error, ErrorCode};

/// Errors of the coordinator library. Query-level failures are
/// `plexus_core::Error` (with a stable code); this adds what can go wrong
/// in running the service itself.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("config: {0}")]
    Config(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Core(#[from] Error),
    #[error("tls: {0}")]
    Tls(String),
    #[error("server: {0}")]
    Server(String),
    #[error("{0}")]
    Ops(#[from] plexus_ops::OpsError),
    #[error("this coordinator lost its lease and stopped: {0}")]
    LeaseLost(String),
}

pub type Result<T, E = CoordinatorError> = std::result::Result<T, E>;

impl CoordinatorError {
    pub fn to_core(&self) -> Error {
        match self {
            CoordinatorError::Core(e) => e.clone(),
            // The coordinator is stopping (or its database is overloaded):
            // the caller should come back, not report a bug.
            CoordinatorError::Database(sqlx::Error::PoolClosed | sqlx::Error::PoolTimedOut) => {
                Error::unavailable(format!(
                    "{self}: the coordinator is stopping or busy; try again shortly"
                ))
            }
            other => Error::new(ErrorCode::Internal, other.to_string()),
        }
    }

    pub fn to_status(&self) -> tonic::Status {
        plexus_proto::convert::to_status(&self.to_core())
    }
}
