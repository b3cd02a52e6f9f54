//! Independent reference implementations of the standard methods, written
//! plainly on rows in one place (no sufficient statistics, no federation),
//! and checked against published textbook values in their own tests. The
//! federated results are compared with these on the union of all sites.

pub mod cox;
pub mod glm;
pub mod survival;

/// Asserts `actual` is within `tol` of a published `expected` value.
#[cfg(test)]
fn assert_close(actual: f64, expected: f64, tol: f64, what: &str) {
    assert!(
        (actual - expected).abs() <= tol,
        "{what}: got {actual}, expected {expected} +/- {tol}"
    );
}

/// R survival's `aml` data (Miller 1981): (weeks, relapse) per group.
#[cfg(test)]
pub(crate) const MAINTAINED: [(f64, bool); 11] = [
    (9.0, true),
    (13.0, true),
    (13.0, false),
    (18.0, true),
    (23.0, true),
    (28.0, false),
    (31.0, true),
    (34.0, true),
    (45.0, false),
    (48.0, true),
    (161.0, false),
];

#[cfg(test)]
pub(crate) const NONMAINTAINED: [(f64, bool); 12] = [
    (5.0, true),
    (5.0, true),
    (8.0, true),
    (8.0, true),
    (12.0, true),
    (16.0, false),
    (23.0, true),
    (27.0, true),
    (30.0, true),
    (33.0, true),
    (43.0, true),
    (45.0, true),
];
