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
