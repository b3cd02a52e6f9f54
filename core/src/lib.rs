//! Plexus core: the query model, the network data dictionary, studies and
//! purposes of use, sufficient statistics, disclosure control and pooling.
//!
//! Nothing here talks to the network or reads patient data; the node and the
//! coordinator build on these types so both sides agree on what a query means
//! and what a node may release.
#![forbid(unsafe_code)]

pub mod audit;
pub mod cell;
pub mod clock;
pub mod dictionary;
pub mod disclosure;
pub mod dp;
pub mod error;
pub mod eval;
pub mod hash;
pub mod merkle;
pub mod models;
pub mod node_audit;
pub mod pool;
pub mod privacy;
pub mod purpose;
pub mod query;
pub mod secagg;
pub mod stats;
pub mod study;
pub mod text;
pub mod timeline;

pub use cell::Cell;
pub use dictionary::{Dictionary, VarType, Variable};
pub use error::{Error, ErrorCode, Result};
pub use purpose::{ConsentTerms, DuoCode, Purpose};
pub use query::{Analysis, AnalysisKind, Cohort, CompareOp, Query, Value};
pub use stats::{Moments, NodeStats, RawStats};
pub use study::StudyDefinition;

/// Minimum cell size used when nobody configures one.
pub const DEFAULT_MIN_CELL_SIZE: u32 = 5;

/// Largest share of a node's complete cases a regression model may use as
/// parameters when nobody configures one (DataSHIELD's nfilter.glm).
pub const DEFAULT_MAX_PARAMETER_SHARE: f64 = 0.33;
