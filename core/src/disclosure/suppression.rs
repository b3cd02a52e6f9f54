//! Suppression rules beyond the minimum cell size.
//!
//! Secondary suppression of contingency tables. A researcher can always
//! learn a table's margins (a count of each row level, of each column
//! level), so a row or column holding exactly one suppressed cell gives it
//! away: margin minus the released cells. After primary suppression, each
//! row and column therefore holds no suppressed cell or at least two; the
//! extra cells chosen are the smallest released ones, which loses the least
//! information.
//!
//! The dominance rule withholds a sum when one or two patients make up most
//! of it.

use crate::cell::Cell;

/// Suppresses further cells of a row-major `rows × columns` table until no
/// row or column holds exactly one suppressed cell. Returns how many cells
/// it suppressed.
pub fn secondary(cells: &mut [Cell], rows: usize, columns: usize) -> usize {
    assert_eq!(cells.len(), rows * columns, "table shape");
    let mut added = 0;
    loop {
        let mut changed = false;
        let lines = (0..rows)
            .map(|r| (0..columns).map(|c| r * columns + c).collect::<Vec<_>>())
            .chain((0..columns).map(|c| (0..rows).map(|r| r * columns + c).collect()));
        for line in lines.collect::<Vec<Vec<usize>>>() {
            let suppressed = line
                .iter()
                .filter(|&&i| cells[i] == Cell::Suppressed)
                .count();
            if suppressed != 1 {
                continue;
            }
            // The smallest released cell of the line; a line of one cell
            // cannot be protected by another and gives nothing away beyond
            // its margin.
            let smallest = line
                .iter()
                .filter_map(|&i| cells[i].count().map(|n| (n, i)))
                .min();
            if let Some((_, i)) = smallest {
                cells[i] = Cell::Suppressed;
                added += 1;
                changed = true;
            }
        }
        if !changed {
            return added;
        }
    }
}

/// Share of a sum that one or two patients may hold before the sum (and
/// a mean from it) is withheld, when nobody configures one.
pub const DEFAULT_DOMINANCE_SHARE: f64 = 0.85;

/// The (n, k) dominance rule with n = 2: a sum is withheld when its two
/// largest contributions make up more than `share` of it, since the
/// largest contributor could then estimate the other closely. Values are
/// taken by magnitude; `largest` holds the two largest and `total` the sum
/// of all magnitudes.
pub fn dominated(largest: [f64; 2], total: f64, share: f64) -> bool {
    // NaN or nothing to dominate: not dominated.
    total > 0.0 && (largest[0].abs() + largest[1].abs()) > share * total
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::stats::two_largest;

    fn table(counts: &[u64], k: u64) -> Vec<Cell> {
        counts
            .iter()
            .map(|&n| {
                if n < k {
                    Cell::Suppressed
                } else {
                    Cell::Count(n)
                }
            })
            .collect()
    }

    #[test]
    fn margins_cannot_rebuild_a_suppressed_cell() {
        // smoking × death; "current, died" = 3 is under k = 5. With only
        // primary suppression, the "current" row margin minus 40 gives it.
        let mut cells = table(&[120, 30, 80, 25, 40, 3], 5);
        // Row "current" then hides 40 too; column "died" hides its smallest
        // other cell (25); column "alive" then needs a second one (80).
        assert_eq!(secondary(&mut cells, 3, 2), 3);
        assert_eq!(
            cells,
            [
                Cell::Count(120),
                Cell::Count(30),
                Cell::Suppressed,
                Cell::Suppressed,
                Cell::Suppressed,
                Cell::Suppressed
            ]
        );
    }

    #[test]
    fn sums_dominated_by_two_patients_are_withheld() {
        // Length of stay: one patient of 900 days among short stays.
        let (top, total) = two_largest([900.0, 40.0, 3.0, 2.0, 4.0, 5.0, 1.0]);
        assert_eq!(top, [900.0, 40.0]);
        assert!(dominated(top, total, DEFAULT_DOMINANCE_SHARE));
        let (top, total) = two_largest([10.0, 12.0, 11.0, 9.0, 13.0, 10.0]);
        assert!(!dominated(top, total, DEFAULT_DOMINANCE_SHARE));
        assert!(!dominated([0.0, 0.0], 0.0, DEFAULT_DOMINANCE_SHARE));
    }

    #[test]
    fn a_table_with_nothing_suppressed_is_left_alone() {
        let mut cells = table(&[10, 20, 30, 40], 5);
        assert_eq!(secondary(&mut cells, 2, 2), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Afterwards no row or column of at least two cells holds exactly
        /// one suppressed cell, and no released cell was changed.
        #[test]
        fn no_line_holds_a_single_suppressed_cell(
            (rows, columns, counts) in (1usize..5, 1usize..5).prop_flat_map(|(r, c)| {
                (Just(r), Just(c), prop::collection::vec(0u64..12, r * c))
            }),
        ) {
            let before = table(&counts, 5);
            let mut cells = before.clone();
            secondary(&mut cells, rows, columns);
            for (b, a) in before.iter().zip(&cells) {
                if *a != Cell::Suppressed {
                    prop_assert_eq!(a, b);
                }
                if *b == Cell::Suppressed {
                    prop_assert_eq!(*a, Cell::Suppressed);
                }
            }
            for r in 0..rows {
                let n = (0..columns).filter(|c| cells[r * columns + c] == Cell::Suppressed).count();
                prop_assert!(columns < 2 || n != 1, "row {} of {:?}", r, cells);
            }
            for c in 0..columns {
                let n = (0..rows).filter(|r| cells[r * columns + c] == Cell::Suppressed).count();
                prop_assert!(rows < 2 || n != 1, "column {} of {:?}", c, cells);
            }
        }
    }
}
