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
    #[inline]
    pub fn scale(&self) -> f64 {
        // Powers of ten up to MAX_DIGITS are exact in f64: the same values
        // `10f64.powi` gives, without its call on every value encoded.
        const POWERS: [f64; MAX_DIGITS as usize + 1] = [1.0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6];
        POWERS[self.digits as usize]
    }

    /// The encoded clamp limits (lower, upper), for a node that encodes
    /// inside its database.
    pub fn limits(&self) -> (i64, i64) {
        (self.lower, self.upper)
    }

    /// The value clamped to the bounds, as an integer.
    #[inline]
    pub fn encode(&self, x: f64) -> i64 {
        round_to_i64(x * self.scale()).clamp(self.lower, self.upper)
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

/// `v.round() as i64` (halves away from zero, saturating), without the C
/// library's `round`: the cast truncates, and the fraction it drops is
/// exact below 2^52, above which every double is a whole number already.
/// A summary encodes every value of the cohort: `round` and `powi` calls
/// were 30% of a node's CPU in a warm profile at a million patients.
#[inline]
pub fn round_to_i64(v: f64) -> i64 {
    // Whole already, or not finite (NaN casts to 0 as `round` then would).
    if v.is_nan() || v.abs() >= 4_503_599_627_370_496.0 {
        return v as i64;
    }
    let t = v as i64;
    let frac = v - t as f64;
    if frac >= 0.5 {
        t + 1
    } else if frac <= -0.5 {
        t - 1
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Dictionary;

    #[test]
    fn rounding_equals_the_library_round() {
        let mut cases = vec![
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.5,
            -1.5,
            2.5,
            -2.5,
            0.49999999999999994,
            -0.49999999999999994,
            4503599627370495.5,
            -4503599627370495.5,
            4503599627370496.0,
            9007199254740993.0,
            1e300,
            -1e300,
            f64::MAX,
            f64::MIN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            9.223_372_036_854_776e18,
            -9.223_372_036_854_776e18,
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let x = f64::from_bits(state);
            if x.is_finite() {
                cases.push(x);
            }
            // Values as a summary meets them: a measurement times 10^digits.
            cases.push((state % 4_000_000) as f64 / 8.0 - 250_000.0);
            cases.push(((state >> 20) % 30_000) as f64 * 0.01 * 100.0);
        }
        for x in cases {
            assert_eq!(round_to_i64(x), x.round() as i64, "{x:e}");
        }
        for d in 0..=MAX_DIGITS {
            let fp = FixedPoint {
                lower: 0,
                upper: 1,
                digits: d,
            };
            assert_eq!(fp.scale().to_bits(), 10f64.powi(d as i32).to_bits());
        }
    }

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
