//! Waiting for the disk without holding up the node's async workers.

use tokio::runtime::{Handle, RuntimeFlavor};

/// Runs `f`, which waits for the disk (a write and its fsync), so that the
/// async worker it is called on is not held: the worker's other tasks (the
/// coordinator link, heartbeats, other jobs) move to another worker
/// meanwhile. Without it, a burst of jobs held the workers in fsyncs and
/// left the CPU idle. On a current-thread runtime, or outside one, `f`
/// just runs.
pub(crate) fn wait<T>(f: impl FnOnce() -> T) -> T {
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}
