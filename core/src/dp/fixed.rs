//! Fixed-point encoding for noised sums. A value is clamped to its
//! variable's public bounds and scaled to an integer, so a sum's
//! sensitivity (the most one patient can change it) is an exact integer
//! fixed by public facts, never computed in floating point from the data.

use crate::dictionary::Variable;
use crate::error::{Error, Result};

/// How one numeric variable is encoded for sums.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FixedPoint {
    /// Encoded public bounds: clamp limits, in units of 10^-digits.
    lower: i64,
    upper: i64,
    digits: u32,
}

/// Decimal digits of every noised sum: hundredths of the variable's unit,
/// far below any noise a budget buys.
pub const DP_DIGITS: u32 = 2;

/// Most decimal digits kept; more would make sums of squares overflow
/// long before any real cohort size.
pub const MAX_DIGITS: u32 = 6;

impl FixedPoint {
    /// The encoding of `var` with `digits` decimals, from its public bounds.
    pub fn new(name: &str, var: &Variable, digits: u32) -> Result<Self> {
        let (lo, hi) = var.numeric_bounds().ok_or_else(|| {
            Error::invalid(format!(
                "\"{name}\" has no public bounds in the data dictionary; noised sums need min and max"
            ))
        })?;
        if digits > MAX_DIGITS {
            return Err(Error::invalid(format!(
                "at most {MAX_DIGITS} decimal digits, got {digits}"
            )));
        }
        let scale = 10f64.powi(digits as i32);
        let (lower, upper) = ((lo * scale).floor(), (hi * scale).ceil());
        if !(lower.abs() < 1e15 && upper.abs() < 1e15) {
            return Err(Error::invalid(format!(
                "the bounds of \"{name}\" are too wide for {digits} decimal digits"
            )));
        }
        Ok(FixedPoint {
            lower: lower as i64,
            upper: upper as i64,
            digits,
        })
    }

    /// Encoded units per unit of the variable.
    pub fn scale(&self) -> f64 {
        10f64.powi(self.digits as i32)
    }

    /// The value clamped to the bounds, as an integer.
    pub fn encode(&self, x: f64) -> i64 {
        ((x * self.scale()).round() as i64).clamp(self.lower, self.upper)
    }

    /// An encoded sum back in the variable's unit.
    pub fn decode(&self, v: i128) -> f64 {
        v as f64 / self.scale()
    }

    /// An encoded sum of squares back in the variable's unit squared.
    pub fn decode_square(&self, v: i128) -> f64 {
        v as f64 / (self.scale() * self.scale())
    }

    /// The middle of the bounds, encoded. Sums are taken of values minus
    /// this centre: one patient then changes them by at most half the
    /// range, which halves (or better) the noise a sum needs.
    pub fn centre(&self) -> i64 {
        self.lower + (self.upper - self.lower) / 2
    }

    /// The most one patient changes a sum of centred values.
    pub fn centred_sensitivity(&self) -> i64 {
        (self.upper - self.centre()).max(self.centre() - self.lower)
    }

    /// The most one patient, added or removed, changes a sum.
    pub fn sum_sensitivity(&self) -> i64 {
        self.lower.abs().max(self.upper.abs())
    }

    /// The most one patient changes a sum of squares.
    pub fn square_sensitivity(&self) -> i128 {
        let m = i128::from(self.sum_sensitivity());
        m * m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Dictionary;

    #[test]
    fn values_are_clamped_and_round_trip() {
        let d = Dictionary::cardiovascular();
        let sbp = FixedPoint::new("sbp", d.get("sbp").unwrap(), 1).unwrap();
        assert_eq!(sbp.encode(123.44), 1234);
        assert_eq!(sbp.encode(999.0), 2600);
        assert_eq!(sbp.encode(-5.0), 600);
        assert_eq!(sbp.sum_sensitivity(), 2600);
        assert_eq!(sbp.square_sensitivity(), 2600 * 2600);
        assert!((sbp.decode(1234) - 123.4).abs() < 1e-12);
        assert!((sbp.decode_square(1234 * 1234) - 123.4 * 123.4).abs() < 1e-9);
        let sex = FixedPoint::new("sex", d.get("sex").unwrap(), 1).unwrap_err();
        assert!(sex.message.contains("no public bounds"), "{sex}");
        assert!(FixedPoint::new("sbp", d.get("sbp").unwrap(), 9).is_err());
        // sbp in 60..=260: centred on 160, one patient moves a centred sum by 100.
        assert_eq!(sbp.centre(), 1600);
        assert_eq!(sbp.centred_sensitivity(), 1000);
    }
}
