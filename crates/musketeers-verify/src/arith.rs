//! A safe evaluator for countdown answers: numbers, `+ - * / **`, postfix `!`, parentheses,
//! evaluated in exact rationals.
//!
//! reasoning-gym hands the model's text to `sympy.parse_expr`, which executes it as Python.
//! We never evaluate text as code; instead this small grammar reproduces what sympy computes
//! for the arithmetic a countdown answer can contain, including sympy's special values
//! (`1/0` is complex infinity, which `float()` rejects; `0/0` is NaN, which it accepts).
//! Anything outside the grammar is an error, scored as Python scores an exception.

use num_bigint::BigInt;
use num_rational::BigRational;
use num_traits::{One, Signed, ToPrimitive, Zero};

/// The value of an expression as sympy would hold it.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Exact(BigRational),
    /// `oo` / `-oo`.
    Infinite {
        negative: bool,
    },
    /// `zoo`: `float()` of it raises.
    ComplexInfinity,
    NaN,
}

/// Why an expression was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArithError {
    #[error("unexpected {found:?} at character {position}")]
    Unexpected { found: String, position: usize },
    #[error("expression nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("power or factorial too large to evaluate exactly")]
    TooLarge,
}

const MAX_DEPTH: usize = 200;
const MAX_POWER: u32 = 256;
const MAX_FACTORIAL: u32 = 1000;
const MAX_OPERAND_BITS: u64 = 4096;

impl Value {
    /// Python's `float(value)`; `None` where it raises.
    pub fn to_f64(&self) -> Option<f64> {
        match self {
            Value::Exact(r) => Some(r.to_f64().unwrap_or(f64::NAN)),
            Value::Infinite { negative } => Some(if *negative {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            }),
            Value::ComplexInfinity => None,
            Value::NaN => Some(f64::NAN),
        }
    }
}

/// Evaluate `text`.
pub fn evaluate(text: &str) -> Result<Value, ArithError> {
    let tokens = tokenize(text)?;
    let mut parser = Parser {
        tokens,
        at: 0,
        depth: 0,
    };
    let value = parser.sum()?;
    match parser.tokens.get(parser.at) {
        None => Ok(value),
        Some((token, position)) => Err(ArithError::Unexpected {
            found: format!("{token:?}"),
            position: *position,
        }),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Number(BigRational),
    Name(String),
    Plus,
    Minus,
    Star,
    Power,
    Slash,
    Bang,
    Open,
    Close,
}

fn tokenize(text: &str) -> Result<Vec<(Token, usize)>, ArithError> {
    let chars: Vec<char> = text.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        let token = match c {
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '0'..='9' | '.' => {
                let (value, end) = number(&chars, i).ok_or_else(|| unexpected(&chars, i))?;
                i = end;
                tokens.push((Token::Number(value), start));
                continue;
            }
            'a'..='z' | 'A'..='Z' | '_' => {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                tokens.push((Token::Name(chars[start..i].iter().collect()), start));
                continue;
            }
            '*' if chars.get(i + 1) == Some(&'*') => {
                i += 1;
                Token::Power
            }
            '+' => Token::Plus,
            '-' => Token::Minus,
            '*' => Token::Star,
            '/' => Token::Slash,
            '!' => Token::Bang,
            '(' => Token::Open,
            ')' => Token::Close,
            _ => return Err(unexpected(&chars, i)),
        };
        i += 1;
        tokens.push((token, start));
    }
    Ok(tokens)
}

fn unexpected(chars: &[char], at: usize) -> ArithError {
    ArithError::Unexpected {
        found: chars[at].to_string(),
        position: at,
    }
}

/// A Python numeric literal (`12`, `1.5`, `41.`, `.5`, `1e3`) as an exact rational.
fn number(chars: &[char], start: usize) -> Option<(BigRational, usize)> {
    let mut i = start;
    let digits = |i: &mut usize| {
        let from = *i;
        // Python allows one underscore between digits (`1_000`).
        while *i < chars.len()
            && (chars[*i].is_ascii_digit()
                || (chars[*i] == '_'
                    && *i > from
                    && chars.get(*i + 1).is_some_and(char::is_ascii_digit)))
        {
            *i += 1;
        }
        chars[from..*i]
            .iter()
            .filter(|c| **c != '_')
            .collect::<String>()
    };
    let int_part = digits(&mut i);
    let mut frac_part = String::new();
    let mut is_float = false;
    if chars.get(i) == Some(&'.') {
        i += 1;
        is_float = true;
        frac_part = digits(&mut i);
    }
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    // Python rejects `05`; a float literal may have leading zeros.
    if !is_float
        && int_part.len() > 1
        && int_part.starts_with('0')
        && int_part.bytes().any(|b| b != b'0')
    {
        return None;
    }
    let mut exponent: i64 = 0;
    if matches!(chars.get(i), Some('e' | 'E')) {
        let mut j = i + 1;
        let negative = match chars.get(j) {
            Some('-') => {
                j += 1;
                true
            }
            Some('+') => {
                j += 1;
                false
            }
            _ => false,
        };
        let exp_digits = digits(&mut j);
        if !exp_digits.is_empty() {
            let magnitude: i64 = exp_digits.parse().ok().filter(|m: &i64| *m <= 400)?;
            exponent = if negative { -magnitude } else { magnitude };
            i = j;
        }
    }
    let mantissa: BigInt = format!("0{int_part}{frac_part}").parse().ok()?;
    let scale = exponent - frac_part.len() as i64;
    let ten = BigInt::from(10u32);
    let value = if scale >= 0 {
        BigRational::from_integer(mantissa * ten.pow(scale as u32))
    } else {
        BigRational::new(mantissa, ten.pow((-scale) as u32))
    };
    Some((value, i))
}

struct Parser {
    tokens: Vec<(Token, usize)>,
    at: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at).map(|(t, _)| t)
    }

    fn error(&self) -> ArithError {
        match self.tokens.get(self.at) {
            Some((token, position)) => ArithError::Unexpected {
                found: format!("{token:?}"),
                position: *position,
            },
            None => ArithError::Unexpected {
                found: "end of input".into(),
                position: usize::MAX,
            },
        }
    }

    fn sum(&mut self) -> Result<Value, ArithError> {
        let mut value = self.product()?;
        while let Some(op @ (Token::Plus | Token::Minus)) = self.peek().cloned() {
            self.at += 1;
            let rhs = self.product()?;
            value = if op == Token::Plus {
                add(value, rhs)
            } else {
                add(value, negate(rhs))
            };
        }
        Ok(value)
    }

    fn product(&mut self) -> Result<Value, ArithError> {
        let mut value = self.unary()?;
        while let Some(op @ (Token::Star | Token::Slash)) = self.peek().cloned() {
            self.at += 1;
            let rhs = self.unary()?;
            value = if op == Token::Star {
                multiply(value, rhs)
            } else {
                divide(value, rhs)
            };
        }
        Ok(value)
    }

    fn unary(&mut self) -> Result<Value, ArithError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(ArithError::TooDeep);
        }
        let value = match self.peek() {
            Some(Token::Minus) => {
                self.at += 1;
                self.unary().map(negate)
            }
            Some(Token::Plus) => {
                self.at += 1;
                self.unary()
            }
            _ => self.power(),
        };
        self.depth -= 1;
        value
    }

    // Python: `-2**2` is `-(2**2)`, and `**` binds right to left with a unary right operand.
    fn power(&mut self) -> Result<Value, ArithError> {
        let base = self.postfix()?;
        if self.peek() == Some(&Token::Power) {
            self.at += 1;
            let exponent = self.unary()?;
            return power(base, exponent);
        }
        Ok(base)
    }

    fn postfix(&mut self) -> Result<Value, ArithError> {
        let mut value = self.atom()?;
        while self.peek() == Some(&Token::Bang) {
            self.at += 1;
            value = factorial(value)?;
        }
        Ok(value)
    }

    fn atom(&mut self) -> Result<Value, ArithError> {
        let token = self.peek().cloned().ok_or_else(|| self.error())?;
        let value = match token {
            Token::Number(n) => Value::Exact(n),
            Token::Name(name) if name == "nan" => Value::NaN,
            Token::Name(name) if name == "oo" => Value::Infinite { negative: false },
            Token::Name(name) if name == "zoo" => Value::ComplexInfinity,
            Token::Open => {
                self.at += 1;
                self.depth += 1;
                if self.depth > MAX_DEPTH {
                    return Err(ArithError::TooDeep);
                }
                let inner = self.sum()?;
                self.depth -= 1;
                if self.peek() != Some(&Token::Close) {
                    return Err(self.error());
                }
                inner
            }
            _ => return Err(self.error()),
        };
        self.at += 1;
        Ok(value)
    }
}

fn negate(value: Value) -> Value {
    match value {
        Value::Exact(r) => Value::Exact(-r),
        Value::Infinite { negative } => Value::Infinite {
            negative: !negative,
        },
        other => other,
    }
}

fn add(a: Value, b: Value) -> Value {
    use Value::*;
    match (a, b) {
        (NaN, _) | (_, NaN) | (ComplexInfinity, ComplexInfinity) => NaN,
        (ComplexInfinity, Infinite { .. }) | (Infinite { .. }, ComplexInfinity) => NaN,
        (ComplexInfinity, _) | (_, ComplexInfinity) => ComplexInfinity,
        (Infinite { negative: x }, Infinite { negative: y }) => {
            if x == y {
                Infinite { negative: x }
            } else {
                NaN
            }
        }
        (inf @ Infinite { .. }, Exact(_)) | (Exact(_), inf @ Infinite { .. }) => inf,
        (Exact(x), Exact(y)) => Exact(x + y),
    }
}

fn sign_of(value: &Value) -> Option<bool> {
    match value {
        Value::Exact(r) if r.is_zero() => None,
        Value::Exact(r) => Some(r.is_negative()),
        Value::Infinite { negative } => Some(*negative),
        _ => None,
    }
}

fn multiply(a: Value, b: Value) -> Value {
    use Value::*;
    let is_zero = |v: &Value| matches!(v, Exact(r) if r.is_zero());
    match (a, b) {
        (NaN, _) | (_, NaN) => NaN,
        (ComplexInfinity, other) | (other, ComplexInfinity) => {
            if is_zero(&other) {
                NaN
            } else {
                ComplexInfinity
            }
        }
        (x @ Infinite { .. }, y) | (y, x @ Infinite { .. }) => match (sign_of(&x), sign_of(&y)) {
            (Some(sx), Some(sy)) => Infinite { negative: sx != sy },
            _ => NaN,
        },
        (Exact(x), Exact(y)) => Exact(x * y),
    }
}

fn divide(a: Value, b: Value) -> Value {
    use Value::*;
    match (a, b) {
        (NaN, _) | (_, NaN) => NaN,
        (Exact(x), Exact(y)) if y.is_zero() => {
            if x.is_zero() {
                NaN
            } else {
                ComplexInfinity
            }
        }
        (Exact(x), Exact(y)) => Exact(x / y),
        (Exact(_), ComplexInfinity | Infinite { .. }) => Exact(BigRational::zero()),
        (ComplexInfinity | Infinite { .. }, ComplexInfinity | Infinite { .. }) => NaN,
        (ComplexInfinity, Exact(_)) => ComplexInfinity,
        (Infinite { .. }, Exact(y)) if y.is_zero() => ComplexInfinity,
        (Infinite { negative }, Exact(y)) => Infinite {
            negative: negative != y.is_negative(),
        },
    }
}

fn exact_integer(value: &Value) -> Option<BigInt> {
    match value {
        Value::Exact(r) if r.is_integer() => Some(r.to_integer()),
        _ => None,
    }
}

fn power(base: Value, exponent: Value) -> Result<Value, ArithError> {
    let (Value::Exact(b), Some(e)) = (&base, exact_integer(&exponent)) else {
        return Err(ArithError::TooLarge);
    };
    let magnitude = e
        .abs()
        .to_u32()
        .filter(|m| *m <= MAX_POWER)
        .ok_or(ArithError::TooLarge)?;
    if b.numer().bits() * u64::from(magnitude) > MAX_OPERAND_BITS * 4
        || b.denom().bits() * u64::from(magnitude) > MAX_OPERAND_BITS * 4
    {
        return Err(ArithError::TooLarge);
    }
    if b.is_zero() && e.is_negative() {
        return Ok(Value::ComplexInfinity);
    }
    let raised = num_traits::pow(b.clone(), magnitude as usize);
    Ok(Value::Exact(if e.is_negative() {
        raised.recip()
    } else {
        raised
    }))
}

fn factorial(value: Value) -> Result<Value, ArithError> {
    let n = exact_integer(&value).ok_or(ArithError::TooLarge)?;
    if n.is_negative() {
        return Ok(Value::ComplexInfinity);
    }
    let n = n
        .to_u32()
        .filter(|n| *n <= MAX_FACTORIAL)
        .ok_or(ArithError::TooLarge)?;
    let product = (1..=n).fold(BigInt::one(), |acc, k| acc * k);
    Ok(Value::Exact(BigRational::from_integer(product)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval_f64(text: &str) -> Option<f64> {
        evaluate(text).ok().and_then(|v| v.to_f64())
    }

    #[test]
    fn evaluates_python_precedence() {
        assert_eq!(eval_f64("94*4 - 61 - 6"), Some(309.0));
        assert_eq!(eval_f64("-2**2"), Some(-4.0));
        assert_eq!(eval_f64("2**3**2"), Some(512.0));
        assert_eq!(eval_f64("(1 + 2) / 4"), Some(0.75));
        assert_eq!(eval_f64("--3 + 41."), Some(44.0));
        assert_eq!(eval_f64("3!"), Some(6.0));
        assert_eq!(eval_f64("1_000 + 1"), Some(1001.0));
    }

    #[test]
    fn division_by_zero_follows_sympy() {
        assert_eq!(evaluate("5 / 0"), Ok(Value::ComplexInfinity));
        assert_eq!(eval_f64("5 / 0"), None);
        assert!(eval_f64("0/0").is_some_and(f64::is_nan));
        assert!(eval_f64("(1/0) * 0").is_some_and(f64::is_nan));
        assert_eq!(eval_f64("7 / (1/0)"), Some(0.0));
    }

    #[test]
    fn rejects_what_is_not_arithmetic() {
        for text in [
            "2(3)",
            "x + 1",
            "1 +",
            "(1",
            "05",
            "__import__('os')",
            "1 = 1",
            "",
        ] {
            assert!(evaluate(text).is_err(), "{text:?}");
        }
        assert_eq!(evaluate(&"(".repeat(10_000)), Err(ArithError::TooDeep));
        assert_eq!(evaluate("9**9**9"), Err(ArithError::TooLarge));
    }
}
