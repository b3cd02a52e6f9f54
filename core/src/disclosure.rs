//! Disclosure control at the node: every count a released value rests on
//! must reach the minimum cell size k, or it is replaced by `Suppressed`.
//! The node's own k is the floor; the coordinator can only raise it.

use crate::models::{correlation, survival};
use crate::stats::{Cell, NodeStats, RawStats};

/// The minimum cell size a node applies to a job: its own, or the
/// network's when that is stricter. Nothing from outside can lower it.
pub fn effective_k(node_k: u32, requested_k: u32) -> u32 {
    node_k.max(requested_k).max(1)
}

fn cell(n: u64, k: u32) -> Cell {
    if n < u64::from(k) {
        Cell::Suppressed
    } else {
        Cell::Count(n)
    }
}

/// Applies the minimum cell size to everything a node computed.
pub fn apply(raw: RawStats, k: u32) -> NodeStats {
    match raw {
        RawStats::Count(n) => NodeStats::Count(cell(n, k)),
        RawStats::Summary(m) => NodeStats::Summary((m.n >= u64::from(k)).then_some(m)),
        RawStats::Histogram { bins, below, above } => NodeStats::Histogram {
            bins: bins.into_iter().map(|n| cell(n, k)).collect(),
            below: cell(below, k),
            above: cell(above, k),
        },
        RawStats::Table {
            rows,
            columns,
            cells,
        } => NodeStats::Table {
            rows,
            columns,
            cells: cells.into_iter().map(|n| cell(n, k)).collect(),
        },
        // Regression rounds are checked before they are computed (levels,
        // parameters per case, singularity); what is left is the count.
        RawStats::Glm(g) => NodeStats::Glm(g),
        RawStats::Cox(c) => NodeStats::Cox(c),
        RawStats::Survival(groups) => NodeStats::Survival(survival::disclose(groups, k)),
        RawStats::Pairs(pairs) => NodeStats::Pairs(correlation::disclose(pairs, k)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Moments;

    #[test]
    fn small_cells_are_suppressed_never_sent() {
        assert_eq!(
            apply(RawStats::Count(4), 5),
            NodeStats::Count(Cell::Suppressed)
        );
        assert_eq!(
            apply(RawStats::Count(0), 5),
            NodeStats::Count(Cell::Suppressed)
        );
        assert_eq!(
            apply(RawStats::Count(5), 5),
            NodeStats::Count(Cell::Count(5))
        );
        let m = Moments {
            n: 3,
            sum: 9.0,
            sum_squares: 30.0,
        };
        assert_eq!(apply(RawStats::Summary(m), 5), NodeStats::Summary(None));
        let t = apply(
            RawStats::Table {
                rows: 1,
                columns: 3,
                cells: vec![10, 2, 7],
            },
            5,
        );
        assert_eq!(
            t,
            NodeStats::Table {
                rows: 1,
                columns: 3,
                cells: vec![Cell::Count(10), Cell::Suppressed, Cell::Count(7)]
            }
        );
    }

    #[test]
    fn coordinator_cannot_lower_k() {
        assert_eq!(effective_k(10, 3), 10);
        assert_eq!(effective_k(5, 11), 11);
        assert_eq!(effective_k(0, 0), 1);
    }
}
