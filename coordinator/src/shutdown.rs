//! What the coordinator says and waits for while it shuts down: read by
//! the server that drains, the research service that stops taking queries
//! and the queries cut short.

use std::time::Duration;

/// How long calls still open get to finish once queries in flight are
/// done or failed and the server stops.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What a researcher is told while the coordinator drains.
pub const SHUTTING_DOWN: &str = "the coordinator is shutting down, retry shortly";

/// The error a query still running when the shutdown grace period ends
/// is failed with (and the audit log records).
pub const SHUT_DOWN_MID_QUERY: &str =
    "the coordinator shut down before this query finished; submit it again";
