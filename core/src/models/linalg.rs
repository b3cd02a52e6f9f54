//! Small dense linear algebra for model fitting: symmetric matrices travel
//! packed (upper triangle, row by row) because they add across sites as
//! they are; solving and inverting go through nalgebra's Cholesky.

use nalgebra::{DMatrix, DVector};

use crate::error::{Error, Result};

/// Length of a packed symmetric `p × p` matrix.
pub fn packed_len(p: usize) -> usize {
    p * (p + 1) / 2
}

/// Index of `(i, j)` with `i <= j` in the packed upper triangle.
pub fn packed_index(p: usize, i: usize, j: usize) -> usize {
    debug_assert!(i <= j && j < p);
    i * p - i * (i + 1) / 2 + j
}

pub fn unpack(p: usize, packed: &[f64]) -> DMatrix<f64> {
    let mut m = DMatrix::zeros(p, p);
    for i in 0..p {
        for j in i..p {
            let v = packed[packed_index(p, i, j)];
            m[(i, j)] = v;
            m[(j, i)] = v;
        }
    }
    m
}

/// Adds `w · x xᵀ` to a packed upper triangle.
#[inline]
pub fn add_outer(packed: &mut [f64], x: &[f64], w: f64) {
    let p = x.len();
    let mut k = 0;
    for i in 0..p {
        let wi = w * x[i];
        for xj in &x[i..] {
            packed[k] += wi * xj;
            k += 1;
        }
    }
    debug_assert_eq!(k, packed_len(p));
}

/// The first column that is (numerically) a linear combination of the
/// columns before it, found by a Cholesky decomposition of the matrix scaled
/// to unit diagonal. `None` when the matrix is positive definite.
pub fn first_dependent_column(p: usize, packed: &[f64]) -> Option<usize> {
    const TOLERANCE: f64 = 1e-10;
    let a = unpack(p, packed);
    let scale: Vec<f64> = (0..p)
        .map(|i| {
            let d = a[(i, i)];
            if d > 0.0 && d.is_finite() {
                1.0 / d.sqrt()
            } else {
                0.0
            }
        })
        .collect();
    let mut l = DMatrix::<f64>::zeros(p, p);
    for j in 0..p {
        if scale[j] == 0.0 {
            return Some(j);
        }
        let mut d = a[(j, j)] * scale[j] * scale[j];
        for k in 0..j {
            d -= l[(j, k)] * l[(j, k)];
        }
        if d.is_nan() || d <= TOLERANCE {
            return Some(j);
        }
        let d = d.sqrt();
        l[(j, j)] = d;
        for i in j + 1..p {
            let mut s = a[(i, j)] * scale[i] * scale[j];
            for k in 0..j {
                s -= l[(i, k)] * l[(j, k)];
            }
            l[(i, j)] = s / d;
        }
    }
    None
}

/// Solves `A x = b` and returns `x` with `A⁻¹`, for a symmetric positive
/// definite `A` given packed. `what` names the matrix in the error.
pub fn solve_spd(
    p: usize,
    packed: &[f64],
    b: &[f64],
    what: &str,
) -> Result<(Vec<f64>, DMatrix<f64>)> {
    let a = unpack(p, packed);
    let chol = a.cholesky().ok_or_else(|| {
        Error::invalid(format!(
            "the pooled {what} is singular: the covariates are collinear in the pooled data (drop one of them)"
        ))
    })?;
    let x = chol.solve(&DVector::from_column_slice(b));
    let inv = chol.inverse();
    if x.iter().chain(inv.iter()).any(|v| !v.is_finite()) {
        return Err(Error::invalid(format!(
            "the pooled {what} is numerically singular (drop a collinear covariate or rescale one)"
        )));
    }
    Ok((x.iter().copied().collect(), inv))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_round_trips() {
        let p = 4;
        let mut packed = vec![0.0; packed_len(p)];
        add_outer(&mut packed, &[1.0, 2.0, 3.0, 4.0], 2.0);
        let m = unpack(p, &packed);
        for i in 0..p {
            for j in 0..p {
                assert_eq!(m[(i, j)], 2.0 * (i + 1) as f64 * (j + 1) as f64);
            }
        }
    }

    #[test]
    fn dependent_columns_are_named() {
        // Columns: 1, x, 2x.
        let mut packed = vec![0.0; packed_len(3)];
        for x in [1.0, 2.0, 3.0, 5.0] {
            add_outer(&mut packed, &[1.0, x, 2.0 * x], 1.0);
        }
        assert_eq!(first_dependent_column(3, &packed), Some(2));
        let mut ok = vec![0.0; packed_len(2)];
        for x in [1.0, 2.0, 3.0] {
            add_outer(&mut ok, &[1.0, x], 1.0);
        }
        assert_eq!(first_dependent_column(2, &ok), None);
        let (x, inv) = solve_spd(2, &ok, &[6.0, 12.0], "matrix").unwrap();
        // [[3, 6], [6, 14]] x = [6, 12] → x = [2, 0]
        assert!((x[0] - 2.0).abs() < 1e-12 && x[1].abs() < 1e-12);
        assert!((inv[(0, 0)] - 14.0 / 6.0).abs() < 1e-12);
    }
}
