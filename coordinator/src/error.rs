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
    /// A database error with the database it came from: the file of a
    /// SQLite database, the server and database of a PostgreSQL one (never
    /// its password), so an operator knows which volume or server to look at.
    #[error("database {database}: {source}{}", hint(source))]
    Db {
        database: String,
        source: sqlx::Error,
    },
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Core(#[from] Error),
    #[error("tls: {0}")]
    Tls(#[from] plexus_tls::TlsError),
    /// The gRPC server failed while serving.
    #[error("server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A task of the coordinator's ended by a panic or a cancellation.
    #[error("the {task} task ended: {source}")]
    Task {
        task: &'static str,
        source: tokio::task::JoinError,
    },
    /// The gRPC reflection service could not read the embedded descriptors.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The listening socket's address could not be read.
    #[error("listening socket: {0}")]
    Listener(std::io::Error),
    /// Start-up's integrity check found the database damaged.
    #[error("the database {url} failed its integrity check (PRAGMA quick_check): {problems}; stop here and restore it from backup (or copy out what `sqlite3 FILE .recover` saves)")]
    Damaged { url: String, problems: String },
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
            CoordinatorError::Db { source, .. } | CoordinatorError::Database(source)
                if is_unavailable(source) =>
            {
                Error::new(ErrorCode::Unavailable, self.to_string())
            }
            other => Error::new(ErrorCode::Internal, other.to_string()),
        }
    }

    pub fn to_status(&self) -> tonic::Status {
        plexus_proto::convert::to_status(&self.to_core())
    }
}

/// Whether a database error is the database being out of reach for now
/// (a full volume, an I/O error, a lost connection, a fenced write) rather
/// than a fault in the statement: a retry later can succeed.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // SQLite reports its (extended) result code as a number,
            // PostgreSQL a five-character SQLSTATE.
            match code.parse::<i32>() {
                // FULL, IOERR, BUSY, LOCKED, READONLY, CANTOPEN, NOMEM.
                Ok(n) if code.len() < 5 => matches!(n & 0xff, 13 | 10 | 5 | 6 | 8 | 14 | 7),
                _ => {
                    code.starts_with("53")
                        || code.starts_with("08")
                        || code.starts_with("57P")
                        || code == crate::store::FENCED_SQLSTATE
                }
            }
        }
        _ => false,
    }
}

/// Whether a database error says the volume or the server's disk is full.
pub fn is_full(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(io) => io.raw_os_error() == Some(28),
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            match code.parse::<i32>() {
                Ok(n) if code.len() < 5 => n & 0xff == 13,
                _ => code == "53100",
            }
        }
        _ => false,
    }
}

/// Whether a database error is SQLite finding its file damaged
/// (SQLITE_CORRUPT and its extended codes).
pub fn is_corrupt(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            matches!(code.parse::<i32>(), Ok(n) if code.len() < 5 && n & 0xff == 11)
        }
        _ => false,
    }
}

/// What the operator should do about a database error, when that is clear.
fn hint(e: &sqlx::Error) -> &'static str {
    if is_full(e) {
        " (the volume holding the database is full: free space there; the coordinator writes again as soon as there is room, without a restart)"
    } else if is_corrupt(e) {
        // Start-up checks the file (PRAGMA quick_check), but a damaged page
        // can be read before that check runs.
        " (the database file is damaged: check it with PRAGMA quick_check, stop here and restore it from backup, or copy out what `sqlite3 FILE .recover` saves)"
    } else {
        ""
    }
}
