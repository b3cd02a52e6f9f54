//! Clock offsets between a node and the coordinator.
//!
//! Signed jobs carry their issue time and deadline in the coordinator's
//! clock and nodes check them against their own, so a clock that drifted
//! far enough makes every job "expired" (node ahead) or "issued in the
//! future" (node behind) while everything else looks healthy. Both daemons
//! therefore measure the offset from heartbeats and say "clock" in their
//! readiness once it exceeds [`TOLERANCE_MS`], well before jobs fail.

/// Largest clock offset between a node and the coordinator that either
/// accepts as healthy. Jobs live for the coordinator's `job_timeout_secs`
/// (60 s by default) and may be issued at most 60 s ahead of a node's
/// clock, so 10 s leaves a wide margin, while NTP keeps real clocks within
/// milliseconds: an offset this large means a clock is not synchronised.
pub const TOLERANCE_MS: i64 = 10_000;

/// The node's clock minus the coordinator's, from one round trip: the node
/// sent at `sent_ms` and got the echo at `received_ms` (both its own
/// clock); the coordinator stamped `coordinator_ms` in between. The
/// midpoint is the best estimate; the error is at most half the round
/// trip.
pub fn offset_ms(sent_ms: i64, coordinator_ms: i64, received_ms: i64) -> i64 {
    let midpoint = sent_ms + (received_ms.saturating_sub(sent_ms)) / 2;
    midpoint.saturating_sub(coordinator_ms)
}

/// Whether an offset is outside [`TOLERANCE_MS`].
pub fn is_off(offset_ms: i64) -> bool {
    offset_ms.unsigned_abs() > TOLERANCE_MS.unsigned_abs()
}

/// What is wrong with `whose` clock at `offset_ms` (its clock minus the
/// other's, named `other`), and what to do; `None` within the tolerance.
/// Readiness shows it under the check named `clock`.
pub fn problem(whose: &str, other: &str, offset_ms: i64) -> Option<String> {
    if !is_off(offset_ms) {
        return None;
    }
    let (how, effect) = if offset_ms > 0 {
        ("ahead of", "jobs would be refused as expired")
    } else {
        ("behind", "jobs would be refused as issued in the future")
    };
    Some(format!(
        "{whose} clock is {:.1} s {how} {other} (more than {} s); {effect}; synchronise the clocks (NTP)",
        offset_ms.unsigned_abs() as f64 / 1000.0,
        TOLERANCE_MS / 1000
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_is_the_midpoint_of_the_round_trip() {
        // Sent at 1,000 and echoed at 1,200 by a clock that read 61,100
        // in between: the node is 60 s behind.
        assert_eq!(offset_ms(1_000, 61_100, 1_200), -60_000);
        assert_eq!(offset_ms(1_000, 1_100, 1_200), 0);
    }

    #[test]
    fn only_offsets_beyond_the_tolerance_are_problems() {
        assert_eq!(problem("this node's", "the coordinator's", 9_999), None);
        assert_eq!(problem("this node's", "the coordinator's", -10_000), None);
        let ahead = problem("this node's", "the coordinator's", 60_000).unwrap();
        assert!(ahead.starts_with("this node's clock is"), "{ahead}");
        assert!(
            ahead.contains("60.0 s ahead of") && ahead.contains("expired"),
            "{ahead}"
        );
        let behind = problem("this node's", "the coordinator's", -12_345).unwrap();
        assert!(
            behind.contains("12.3 s behind") && behind.contains("future"),
            "{behind}"
        );
    }
}
