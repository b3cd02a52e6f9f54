//! Cells: counts held against the minimum cell size, as one node releases
//! one ([`Cell`]) and as the pool adds the nodes' parts up ([`PooledCell`]).
//! Statistics, disclosure control, pooling and the results derived from
//! pooled counts all speak of cells, so cells sit below all of them.

use serde::{Deserialize, Serialize};

/// A released count, or the mark that it fell under the minimum cell size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cell {
    Count(u64),
    Suppressed,
}

impl Cell {
    pub fn count(self) -> Option<u64> {
        match self {
            Cell::Count(n) => Some(n),
            Cell::Suppressed => None,
        }
    }
}

/// A pooled count. `count` is present only when every answering node
/// released its part; otherwise `suppressed_at` names the nodes that
/// suppressed theirs and `at_least` sums the parts that were released.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PooledCell {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_least: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suppressed_at: Vec<String>,
    /// Under secure aggregation: how many nodes suppressed their part,
    /// which nobody can tell (`suppressed_at` is then empty).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub suppressed_by: u32,
}

/// Serde's test for leaving out a count of nodes that is 0.
pub(crate) fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl PooledCell {
    pub fn is_suppressed(&self) -> bool {
        self.count.is_none()
    }
}
