//! Python's text-to-number rules, as the reasoning-gym scorers rely on them.
//!
//! Parity with `reasoning-gym` means accepting exactly what `Decimal(s)`, `float(s)` and
//! `int(s)` accept, and comparing as they compare. No crate mirrors CPython's grammar
//! (underscores, `Infinity`, `sNaN`, its whitespace set), so it is written here, small.
//! Unicode digits other than ASCII are not accepted (CPython accepts them); see the crate docs.

use num_bigint::{BigInt, Sign};
use num_traits::{Signed, Zero};
use std::cmp::Ordering;

/// `str.isspace()` in Python: Rust's Unicode whitespace plus the four ASCII separators.
pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// `str.strip()` with no argument.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// `len(s)` in Python: code points, not bytes.
pub fn py_len(s: &str) -> usize {
    s.chars().count()
}

/// A value of Python's `decimal.Decimal`, exact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PyDecimal {
    /// `coefficient * 10^exponent`, kept exact.
    Finite {
        coefficient: BigInt,
        exponent: i64,
    },
    Infinite {
        negative: bool,
    },
    NaN,
}

/// Largest exponent magnitude we keep exactly; beyond it the value is far outside anything a
/// scorer compares and we refuse to allocate digits for it.
const MAX_EXPONENT: i64 = 100_000;

impl PyDecimal {
    /// `Decimal(s)`: strip Python whitespace, drop every underscore, then the Decimal grammar.
    pub fn parse(text: &str) -> Option<Self> {
        let cleaned: String = py_strip(text).chars().filter(|&c| c != '_').collect();
        let (negative, body) = split_sign(&cleaned);
        let lower = body.to_ascii_lowercase();
        if lower == "inf" || lower == "infinity" {
            return Some(Self::Infinite { negative });
        }
        for prefix in ["snan", "nan"] {
            if let Some(payload) = lower.strip_prefix(prefix) {
                return payload
                    .bytes()
                    .all(|b| b.is_ascii_digit())
                    .then_some(Self::NaN);
            }
        }
        let (mantissa, exponent_text) = match body.find(['e', 'E']) {
            Some(at) => (&body[..at], Some(&body[at + 1..])),
            None => (body, None),
        };
        let (int_part, frac_part) = match mantissa.split_once('.') {
            Some((i, f)) => (i, f),
            None => (mantissa, ""),
        };
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if (int_part.is_empty() && frac_part.is_empty())
            || !all_digits(int_part)
            || !all_digits(frac_part)
        {
            return None;
        }
        let mut exponent: i64 = match exponent_text {
            Some(e) => {
                let (neg, digits) = split_sign(e);
                if digits.is_empty() || !all_digits(digits) {
                    return None;
                }
                let magnitude: i64 = digits.parse().ok().filter(|m| *m <= MAX_EXPONENT)?;
                if neg { -magnitude } else { magnitude }
            }
            None => 0,
        };
        exponent -= frac_part.len() as i64;
        let digits = format!("{int_part}{frac_part}");
        let mut coefficient: BigInt = digits.parse().ok()?;
        if negative {
            coefficient = -coefficient;
        }
        Some(Self::Finite {
            coefficient,
            exponent,
        })
    }

    fn finite_parts(&self) -> Option<(&BigInt, i64)> {
        match self {
            Self::Finite {
                coefficient,
                exponent,
            } => Some((coefficient, *exponent)),
            _ => None,
        }
    }

    /// `a == b` as Decimal compares: exact value, NaN equal to nothing.
    pub fn numerically_equal(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Infinite { negative: a }, Self::Infinite { negative: b }) => a == b,
            _ => match (self.finite_parts(), other.finite_parts()) {
                (Some(a), Some(b)) => compare_scaled(a, b) == Ordering::Equal,
                _ => false,
            },
        }
    }

    /// `abs(a - b) <= 10^-places` in the default decimal context (28 significant digits,
    /// ROUND_HALF_EVEN for the subtraction). Non-finite operands never pass: Python either
    /// raises (NaN) or compares an infinite difference.
    pub fn within_tolerance(&self, other: &Self, places: u32) -> bool {
        let (Some((ca, ea)), Some((cb, eb))) = (self.finite_parts(), other.finite_parts()) else {
            return false;
        };
        let exponent = ea.min(eb);
        let difference = rescale(ca, ea - exponent) - rescale(cb, eb - exponent);
        let (rounded, rounded_exponent) = round_half_even(difference.abs(), exponent, 28);
        let tolerance = (BigInt::from(1), -(places as i64));
        compare_scaled((&rounded, rounded_exponent), (&tolerance.0, tolerance.1))
            != Ordering::Greater
    }
}

fn split_sign(text: &str) -> (bool, &str) {
    match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    }
}

fn rescale(coefficient: &BigInt, shift: i64) -> BigInt {
    coefficient * BigInt::from(10u32).pow(shift as u32)
}

fn compare_scaled((ca, ea): (&BigInt, i64), (cb, eb): (&BigInt, i64)) -> Ordering {
    let exponent = ea.min(eb);
    rescale(ca, ea - exponent).cmp(&rescale(cb, eb - exponent))
}

/// Round a non-negative coefficient to `precision` significant digits, ties to even.
fn round_half_even(value: BigInt, exponent: i64, precision: usize) -> (BigInt, i64) {
    let digits = value.to_string().len();
    if value.is_zero() || digits <= precision {
        return (value, exponent);
    }
    let drop = (digits - precision) as u32;
    let divisor = BigInt::from(10u32).pow(drop);
    let (quotient, remainder) = (&value / &divisor, &value % &divisor);
    let twice: BigInt = remainder * 2u32;
    let round_up = match twice.cmp(&divisor) {
        Ordering::Greater => true,
        Ordering::Equal => quotient.sign() != Sign::NoSign && (&quotient % 2u32) == BigInt::from(1),
        Ordering::Less => false,
    };
    let quotient = if round_up { quotient + 1 } else { quotient };
    (quotient, exponent + drop as i64)
}

/// `int(s)`: optional sign, ASCII digits with single underscores between them, whitespace around.
pub fn py_int(text: &str) -> Option<BigInt> {
    let (negative, body) = split_sign(py_strip(text));
    let digits = strip_digit_underscores(body)?;
    let magnitude: BigInt = digits.parse().ok()?;
    Some(if negative { -magnitude } else { magnitude })
}

/// `float(s)`: Python's float grammar (underscores only between digits, `inf`, `nan`).
pub fn py_float(text: &str) -> Option<f64> {
    let trimmed = text.trim();
    let (negative, body) = split_sign(trimmed);
    let lower = body.to_ascii_lowercase();
    let magnitude = match lower.as_str() {
        "inf" | "infinity" => f64::INFINITY,
        "nan" => f64::NAN,
        _ => {
            let (mantissa, exponent) = match body.find(['e', 'E']) {
                Some(at) => (&body[..at], Some(&body[at + 1..])),
                None => (body, None),
            };
            let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
            if int_part.is_empty() && frac_part.is_empty() {
                return None;
            }
            let int_digits = if int_part.is_empty() {
                String::new()
            } else {
                strip_digit_underscores(int_part)?
            };
            let frac_digits = if frac_part.is_empty() {
                String::new()
            } else {
                strip_digit_underscores(frac_part)?
            };
            let mut normalized = format!("{int_digits}.{frac_digits}");
            if let Some(e) = exponent {
                let (neg, digits) = split_sign(e);
                let digits = strip_digit_underscores(digits)?;
                normalized.push('e');
                if neg {
                    normalized.push('-');
                }
                normalized.push_str(&digits);
            }
            if normalized.starts_with('.') {
                normalized.insert(0, '0');
            }
            normalized.parse::<f64>().ok()?
        }
    };
    Some(if negative { -magnitude } else { magnitude })
}

/// ASCII digits where each underscore sits between two digits (PEP 515); returns the digits.
fn strip_digit_underscores(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    if bytes.is_empty() || !bytes[0].is_ascii_digit() || !bytes[bytes.len() - 1].is_ascii_digit() {
        return None;
    }
    let mut out = String::with_capacity(bytes.len());
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'0'..=b'9' => out.push(b as char),
            b'_' if bytes[i + 1].is_ascii_digit() => {}
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_grammar_matches_python() {
        for ok in [
            "1_000",
            "1__0",
            "_1",
            " 1 ",
            "\u{1c}1",
            "1e5",
            ".5",
            "5.",
            "inf",
            "-Infinity",
            "NaN12",
            "sNaN",
        ] {
            assert!(PyDecimal::parse(ok).is_some(), "{ok:?} should parse");
        }
        for bad in ["1e", "+-1", "1,0", "", ".", "e5", "1.2.3"] {
            assert!(PyDecimal::parse(bad).is_none(), "{bad:?} should not parse");
        }
        let a = PyDecimal::parse("+01000.00").unwrap();
        assert!(a.numerically_equal(&PyDecimal::parse("1e3").unwrap()));
        assert!(
            !PyDecimal::parse("nan")
                .unwrap()
                .numerically_equal(&PyDecimal::parse("nan").unwrap())
        );
        assert!(
            PyDecimal::parse("-0")
                .unwrap()
                .numerically_equal(&PyDecimal::parse("0.000").unwrap())
        );
    }

    #[test]
    fn float_and_int_grammar_matches_python() {
        assert_eq!(py_float("1_000.5"), Some(1000.5));
        assert_eq!(py_float(" -.5 "), Some(-0.5));
        assert_eq!(py_float("1__0"), None);
        assert_eq!(py_float("_1"), None);
        assert_eq!(py_int(" 12_3 "), Some(BigInt::from(123)));
        assert_eq!(py_int("1.0"), None);
        assert_eq!(py_int("-7"), Some(BigInt::from(-7)));
    }

    #[test]
    fn tolerance_rounds_difference_to_28_digits() {
        let d = |s| PyDecimal::parse(s).unwrap();
        assert!(d("1.0005").within_tolerance(&d("1.0"), 3));
        assert!(!d("1.0011").within_tolerance(&d("1.0"), 3));
        assert!(d("0.0010000000000000000000000000001").within_tolerance(&d("0"), 3));
        assert!(!d("nan").within_tolerance(&d("0"), 3));
        assert!(!d("inf").within_tolerance(&d("0"), 3));
    }
}
