//! Whether a daemon should get traffic now (`/readyz`), as a set of named
//! checks each of which is either passing or failing with a short reason.
//! Several parts of a daemon own one check each (the coordinator's store
//! and its active/standby role, the node's link and its data source), so
//! none of them overwrites another's verdict.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Check the coordinator's lease uses: a standby is alive but not ready.
pub const ROLE: &str = "role";
/// Check the node's data source uses when it is degraded.
pub const DATA: &str = "data";
/// Check a daemon sets while it drains before exiting.
pub const SHUTDOWN: &str = "shutdown";

/// Cheap to clone; every clone sees the same checks.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    failing: Arc<Mutex<BTreeMap<&'static str, String>>>,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets one named check: passing, or failing with `reason`.
    pub fn set(&self, check: &'static str, ready: bool, reason: impl Into<String>) {
        let mut failing = self.failing.lock().expect("readiness lock");
        if ready {
            failing.remove(check);
        } else {
            failing.insert(check, reason.into());
        }
    }

    /// The coordinator's active/standby hook: a standby calls
    /// `set_ready(false, "standby: another coordinator holds the lease")`,
    /// and `set_ready(true, "")` once it takes over.
    pub fn set_ready(&self, ready: bool, reason: impl Into<String>) {
        self.set(ROLE, ready, reason);
    }

    /// The node's data source hook: the node stays connected and alive but
    /// is not ready while its data cannot be read.
    pub fn set_degraded(&self, reason: impl Into<String>) {
        self.set(DATA, false, reason);
    }

    /// The data source is healthy again.
    pub fn clear_degraded(&self) {
        self.set(DATA, true, "");
    }

    /// `Ok` when every check passes, else every failing reason, each
    /// prefixed with its check's name.
    pub fn status(&self) -> Result<(), String> {
        let failing = self.failing.lock().expect("readiness lock");
        if failing.is_empty() {
            return Ok(());
        }
        Err(failing
            .iter()
            .map(|(check, reason)| format!("{check}: {reason}"))
            .collect::<Vec<_>>()
            .join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failing_check_is_reported_until_it_passes() {
        let r = Readiness::new();
        assert_eq!(r.status(), Ok(()));
        r.set_degraded("the hospital database is unreachable");
        r.set("link", false, "not connected to the coordinator");
        assert_eq!(
            r.status(),
            Err("data: the hospital database is unreachable; link: not connected to the coordinator".into())
        );
        r.clear_degraded();
        assert_eq!(
            r.status(),
            Err("link: not connected to the coordinator".into())
        );
        r.clone().set("link", true, "");
        assert_eq!(r.status(), Ok(()));
        r.set_ready(false, "standby");
        assert_eq!(r.status(), Err("role: standby".into()));
    }
}
