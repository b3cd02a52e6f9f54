//! Disclosure control at the node: every count a released value rests on
//! must reach the minimum cell size k, or it is replaced by `Suppressed`;
//! tables get secondary suppression so their margins cannot rebuild a
//! suppressed cell; a sum that one or two patients dominate is withheld.
//! The node's own k is the floor; the coordinator can only raise it.
//!
//! This is the whole of disclosure control in exact studies. In studies
//! under differential privacy the same rules run on the noised values
//! (see [`crate::privacy::release`]).

pub mod suppression;

use self::suppression::{dominated, secondary};
use crate::cell::Cell;
use crate::models::{correlation, survival};
use crate::stats::{NodeStats, RawStats, SummarySums};

/// The node's disclosure rules for one job.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    /// Minimum cell size.
    pub k: u32,
    /// Share of a sum that one or two patients may hold (dominance rule).
    pub dominance_share: f64,
    /// Largest share of a node's complete cases that a model's parameters
    /// may make up (DataSHIELD's nfilter.glm).
    pub max_parameter_share: f64,
}

/// The share of complete cases a model's parameters may make up when
/// nobody configures one.
pub const DEFAULT_PARAMETER_SHARE: f64 = 0.33;

impl Rules {
    pub fn new(k: u32) -> Self {
        Rules {
            k,
            dominance_share: suppression::DEFAULT_DOMINANCE_SHARE,
            max_parameter_share: DEFAULT_PARAMETER_SHARE,
        }
    }
}

/// The minimum cell size a node applies to a job: its own, or the
/// network's when that is stricter. Nothing from outside can lower it.
pub fn effective_k(node_k: u32, requested_k: u32) -> u32 {
    node_k.max(requested_k).max(1)
}

/// The complement rule of an exact study: a cohort that leaves out 1 to
/// k − 1 of the study's patients at a node is refused there, since its
/// answer next to the whole population's would single those patients out.
///
/// Studies under differential privacy do not run it. On exact counts it
/// is an oracle (asked about `not (quasi-identifiers and P)` for a series
/// of P it spells out a patient's record for no budget), and on a noisy
/// count it cannot tell a cohort that leaves out nobody from one that
/// leaves out a few at any cost a node allows: it would refuse both alike,
/// at random. The noise on the two answers is what hides the difference.
pub fn complement(population: u64, cohort: u64, k: u32) -> crate::error::Result<()> {
    let left_out = population.saturating_sub(cohort);
    if left_out > 0 && left_out < u64::from(k) {
        return Err(crate::error::Error::disclosure(format!(
            "complement rule: the cohort leaves out fewer than {k} of the study's patients at this node, so its answer would single them out next to the whole population's (drop the condition or make it exclude more patients)"
        )));
    }
    Ok(())
}

pub(crate) fn cell(n: u64, k: u32) -> Cell {
    if n < u64::from(k) {
        Cell::Suppressed
    } else {
        Cell::Count(n)
    }
}

/// Whether a summary's sum is dominated by one or two patients: checked on
/// variables that cannot be negative (magnitudes), whose skewed sums are
/// the ones a large contributor could unpick.
pub(crate) fn summary_dominated(s: &SummarySums, share: f64) -> bool {
    s.non_negative && dominated(s.largest, s.total_abs, share)
}

/// Primary then secondary suppression of a row-major table.
pub(crate) fn suppress_table(counts: Vec<u64>, rows: u32, columns: u32, k: u32) -> Vec<Cell> {
    let mut cells: Vec<Cell> = counts.into_iter().map(|n| cell(n, k)).collect();
    secondary(&mut cells, rows as usize, columns as usize);
    cells
}

/// Applies the disclosure rules to everything a node computed (exact
/// studies).
pub fn apply(raw: RawStats, rules: Rules) -> NodeStats {
    let k = rules.k;
    match raw {
        RawStats::Count(n) => NodeStats::Count(cell(n, k)),
        RawStats::Summary(s) => NodeStats::Summary(
            (s.moments.n >= u64::from(k) && !summary_dominated(&s, rules.dominance_share))
                .then_some(s.moments),
        ),
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
            cells: suppress_table(cells, rows, columns, k),
        },
        // Regression rounds are checked before they are computed (levels,
        // parameters per case, singularity); what is left is the count.
        RawStats::Glm(g) => NodeStats::Glm(g),
        RawStats::Cox(c) => NodeStats::Cox(c),
        // Segments and tree nodes are held to k as they are computed.
        RawStats::Gbdt(g) => NodeStats::Gbdt(g),
        RawStats::Performance(p) => NodeStats::Performance(p),
        RawStats::Survival(groups) => NodeStats::Survival(survival::disclose(groups, k)),
        RawStats::Pairs(pairs) => NodeStats::Pairs(correlation::disclose(pairs, k)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Dictionary;

    #[test]
    fn small_cells_are_suppressed_never_sent() {
        assert_eq!(
            apply(RawStats::Count(4), Rules::new(5)),
            NodeStats::Count(Cell::Suppressed)
        );
        assert_eq!(
            apply(RawStats::Count(0), Rules::new(5)),
            NodeStats::Count(Cell::Suppressed)
        );
        assert_eq!(
            apply(RawStats::Count(5), Rules::new(5)),
            NodeStats::Count(Cell::Count(5))
        );
        let age = Dictionary::cardiovascular();
        let age = age.get("age").unwrap();
        let few = SummarySums::of(age, "age", &[60.0, 70.0, 80.0]);
        assert_eq!(
            apply(RawStats::Summary(few), Rules::new(5)),
            NodeStats::Summary(None)
        );
        let t = apply(
            RawStats::Table {
                rows: 1,
                columns: 3,
                cells: vec![10, 2, 7],
            },
            Rules::new(5),
        );
        assert_eq!(
            t,
            NodeStats::Table {
                rows: 1,
                columns: 3,
                // 7 goes too: the row's total minus 10 and 7 would give the 2.
                cells: vec![Cell::Count(10), Cell::Suppressed, Cell::Suppressed]
            }
        );
    }

    #[test]
    fn tables_are_secondarily_suppressed_and_dominated_sums_withheld() {
        // Row 0 holds one small cell: its row margin minus 10 would give it
        // away, so the smallest other cell of the row goes too, and then
        // the columns need a second cell each.
        let t = apply(
            RawStats::Table {
                rows: 2,
                columns: 2,
                cells: vec![10, 2, 30, 40],
            },
            Rules::new(5),
        );
        let NodeStats::Table { cells, .. } = t else {
            panic!()
        };
        assert!(cells.iter().all(|c| *c == Cell::Suppressed), "{cells:?}");
        let d = Dictionary::cardiovascular();
        let diameter = d.get("aaa_diameter").unwrap();
        let mut values = vec![10.0; 8];
        values.extend([120.0, 120.0]);
        // 240 of 320: 75 %, released at the default 85 %, withheld at 70 %.
        let s = SummarySums::of(diameter, "aaa_diameter", &values);
        assert!(matches!(
            apply(RawStats::Summary(s.clone()), Rules::new(5)),
            NodeStats::Summary(Some(_))
        ));
        let strict = Rules {
            dominance_share: 0.7,
            ..Rules::new(5)
        };
        assert_eq!(
            apply(RawStats::Summary(s), strict),
            NodeStats::Summary(None)
        );
    }

    #[test]
    fn coordinator_cannot_lower_k() {
        assert_eq!(effective_k(10, 3), 10);
        assert_eq!(effective_k(5, 11), 11);
        assert_eq!(effective_k(0, 0), 1);
    }
}
