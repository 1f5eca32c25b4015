//! Arithmetic generators: chain_sum, basic_arithmetic, products, gcd, lcm, leg_counting,
//! base_conversion, countdown.

use super::{Draft, Generator, count, difficulty, metadata, range_option, uniform, with_digits};
use crate::error::TaskError;
use crate::options::Options;
use num_integer::Integer;
use num_rational::Ratio;
use rand::Rng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand_chacha::ChaCha8Rng;
use serde_json::{Map, Value, json};

/// The `min/max_terms` and `min/max_digits` settings of chain_sum, basic_arithmetic and
/// products, and the metadata they report.
#[derive(Debug, Clone, Copy)]
struct TermsDigits {
    terms: (usize, usize),
    digits: (u32, u32),
}

impl TermsDigits {
    fn new(
        options: &mut Options,
        terms: (usize, usize),
        digits: (u32, u32),
        max_digits: u32,
    ) -> Result<Self, TaskError> {
        let terms = range_option(options, "terms", terms)?;
        let digits = range_option(options, "digits", digits)?;
        if terms.0 < 2 || digits.0 < 1 || digits.1 > max_digits {
            return Err(options.invalid(
                "min_terms",
                format!("need at least 2 terms and 1..={max_digits} digits"),
            ));
        }
        Ok(Self { terms, digits })
    }

    /// Draw the term count and digit count of one entry.
    fn draw(&self, rng: &mut ChaCha8Rng) -> (usize, u32) {
        let num_terms = count(rng, self.terms);
        (num_terms, rng.random_range(self.digits.0..=self.digits.1))
    }

    fn metadata(
        &self,
        num_terms: usize,
        num_digits: u32,
        expression: String,
    ) -> Map<String, Value> {
        metadata(vec![
            ("expression", expression.into()),
            ("num_terms", num_terms.into()),
            ("num_digits", num_digits.into()),
            (
                "difficulty",
                difficulty(&[
                    ("num_terms", json!(self.terms)),
                    ("num_digits", json!(self.digits)),
                ]),
            ),
        ])
    }
}

/// Terms joined by `+`/`-`, evaluated left to right.
pub struct ChainSum {
    shape: TermsDigits,
}

impl ChainSum {
    pub fn new(options: &mut Options) -> Result<Self, TaskError> {
        Ok(Self {
            shape: TermsDigits::new(options, (2, 6), (1, 4), 15)?,
        })
    }
}

impl Generator for ChainSum {
    fn draft(&self, rng: &mut ChaCha8Rng) -> Result<Draft, String> {
        let (num_terms, num_digits) = self.shape.draw(rng);
        let mut total = with_digits(rng, num_digits);
        let mut expression = total.to_string();
        for _ in 1..num_terms {
            let term = with_digits(rng, num_digits);
            if rng.random_bool(0.5) {
                total += term;
                expression += &format!(" + {term}");
            } else {
                total -= term;
                expression += &format!(" - {term}");
            }
        }
        Ok(Draft {
            question: format!(
                "State the final answer to the following arithmetic problem: {expression} ="
            ),
            answer: Some(total.to_string()),
            metadata: self.shape.metadata(num_terms, num_digits, expression),
        })
    }
}

/// `+ - *` and exact `/` with integer operands and result, optionally parenthesised.
pub struct BasicArithmetic {
    shape: TermsDigits,
    allow_parentheses: bool,
}

impl BasicArithmetic {
    pub fn new(options: &mut Options) -> Result<Self, TaskError> {
        let shape = TermsDigits::new(options, (2, 6), (1, 4), 6)?;
        let allow_parentheses = options.take("allow_parentheses", true)?;
        Ok(Self {
            shape,
            allow_parentheses,
        })
    }

    /// An expression of `n` terms and its exact value.
    fn expression(
        &self,
        rng: &mut ChaCha8Rng,
        n: usize,
        digits: u32,
        top: bool,
    ) -> (String, Ratio<i128>) {
        if n == 1 {
            let v = with_digits(rng, digits);
            return (v.to_string(), Ratio::from_integer(v as i128));
        }
        let left_terms = rng.random_range(1..n as u64) as usize;
        let (left, lv) = self.expression(rng, left_terms, digits, false);
        let (right, rv) = self.expression(rng, n - left_terms, digits, false);
        let op = *[" + ", " - ", " * ", " / "]
            .choose(rng)
            .expect("non-empty operator list");
        let value = match op {
            " + " => lv + rv,
            " - " => lv - rv,
            " * " => lv * rv,
            _ if rv != Ratio::from_integer(0) => lv / rv,
            _ => lv * rv,
        };
        let op = if op == " / " && rv == Ratio::from_integer(0) {
            " * "
        } else {
            op
        };
        let text = format!("{left}{op}{right}");
        let wrap = !top && self.allow_parentheses && n > 1;
        (if wrap { format!("({text})") } else { text }, value)
    }
}

impl Generator for BasicArithmetic {
    fn draft(&self, rng: &mut ChaCha8Rng) -> Result<Draft, String> {
        let (num_terms, num_digits) = self.shape.draw(rng);
        // Redraw until the value is an integer: divisions must come out exact.
        for _ in 0..1000 {
            let (expression, value) = self.expression(rng, num_terms, num_digits, true);
            if value.is_integer() {
                return Ok(Draft {
                    question: format!("Calculate {expression}."),
                    answer: Some(value.to_integer().to_string()),
                    metadata: self.shape.metadata(num_terms, num_digits, expression),
                });
            }
        }
        Err("no expression with an integer value in 1000 draws".into())
    }
}

/// A product of `num_terms` numbers.
pub struct Products {
    shape: TermsDigits,
}

impl Products {
    pub fn new(options: &mut Options) -> Result<Self, TaskError> {
        let shape = TermsDigits::new(options, (2, 2), (1, 5), 36)?;
        if (shape.digits.1 as usize) * shape.terms.1 > 36 {
            return Err(
                options.invalid("max_digits", "a product may have at most 36 digits in all")
            );
        }
        Ok(Self { shape })
    }
}

impl Generator for Products {
    fn draft(&self, rng: &mut ChaCha8Rng) -> Result<Draft, String> {
        let (num_terms, num_digits) = self.shape.draw(rng);
        let factors: Vec<i128> = (0..num_terms)
            .map(|_| with_digits(rng, num_digits) as i128)
            .collect();
        let expression = factors
            .iter()
            .map(i128::to_string)
            .collect::<Vec<_>>()
            .join(" * ");
        let product: i128 = factors.iter().product();
        Ok(Draft {
            question: format!(
                "Solve the following multiplication: {expression}. Give only the result as your final answer."
            ),
            answer: Some(product.to_string()),
            metadata: self.shape.metadata(num_terms, num_digits, expression),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduction {
    Gcd,
    Lcm,
}

/// The greatest common divisor or least common multiple of a few numbers.
pub struct GcdLcm {
    reduction: Reduction,
    numbers: (usize, usize),
    value: (i64, i64),
}

impl GcdLcm {
    pub fn new(options: &mut Options, reduction: Reduction) -> Result<Self, TaskError> {
        let numbers = range_option(options, "numbers", (2, 2))?;
        let default_max = if reduction == Reduction::Gcd {
            1000
        } else {
            100
        };
        let value = range_option(options, "value", (1, default_max))?;
        if numbers.0 < 2 || value.0 < 1 || value.1 > 1_000_000 {
            return Err(options.invalid(
                "min_numbers",
                "need at least 2 numbers with values in 1..=1000000",
            ));
        }
        Ok(Self {
            reduction,
            numbers,
            value,
        })
    }
}

impl Generator for GcdLcm {
    fn draft(&self, rng: &mut ChaCha8Rng) -> Result<Draft, String> {
        let n = count(rng, self.numbers);
        let numbers: Vec<i64> = (0..n).map(|_| uniform(rng, self.value)).collect();
        let listed = numbers
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let (result, question) = match self.reduction {
            Reduction::Gcd => (
                numbers.iter().fold(0i128, |acc, &x| acc.gcd(&(x as i128))),
                format!(
                    "Find the Greatest Common Divisor (GCD) of these numbers: {listed}. Give only the GCD as your final answer."
                ),
            ),
            Reduction::Lcm => (
                numbers.iter().fold(1i128, |acc, &x| acc.lcm(&(x as i128))),
                format!("Find the Least Common Multiple (LCM) of these numbers: {listed}"),
            ),
        };
        Ok(Draft {
            question,
            answer: Some(result.to_string()),
            metadata: metadata(vec![
                ("numbers", json!(numbers)),
                ("result", json!(result as i64)),
                (
                    "difficulty",
                    difficulty(&[
                        ("numbers", json!(self.numbers)),
                        ("value", json!(self.value)),
                    ]),
                ),
            ]),
        })
    }
}

const ANIMALS: [(&str, &str, i64); 24] = [
    ("bird", "birds", 2),
    ("cat", "cats", 4),
    ("chicken", "chickens", 2),
    ("cow", "cows", 4),
    ("crab", "crabs", 10),
    ("deer", "deers", 4),
    ("dog", "dogs", 4),
    ("duck", "ducks", 2),
    ("elephant", "elephants", 4),
    ("fish", "fishs", 0),
    ("giraffe", "giraffes", 4),
    ("horse", "horses", 4),
    ("human", "humans", 2),
    ("insect", "insects", 6),
    ("lion", "lions", 4),
    ("snake", "snakes", 0),
    ("spider", "spiders", 8),
    ("starfish", "starfishs", 5),
    ("tiger", "tigers", 4),
    ("woodlouse", "woodlouses", 14),
    ("sheep", "sheeps", 4),
    ("shrimp", "shrimps", 10),
    ("scorpion", "scorpions", 8),
    ("grasshopper", "grasshoppers", 6),
];

/// Total legs of a list of animals.
pub struct LegCounting {
    animals: (usize, usize),
    instances: (i64, i64),
}

impl LegCounting {
    pub fn new(options: &mut Options) -> Result<Self, TaskError> {
        let animals = range_option(options, "animals", (3, 10))?;
        let instances = range_option(options, "instances", (1, 15))?;
        if animals.0 < 1 || animals.1 > ANIMALS.len() || instances.0 < 1 {
            return Err(options.invalid(
                "max_animals",
                format!("animals must be in 1..={}, instances >= 1", ANIMALS.len()),
            ));
        }
        Ok(Self { animals, instances })
    }
}

impl Generator for LegCounting {
    fn draft(&self, rng: &mut ChaCha8Rng) -> Result<Draft, String> {
        let n = count(rng, self.animals);
        let chosen: Vec<_> = ANIMALS.choose_multiple(rng, n).copied().collect();
        let mut counts = Map::new();
        let mut parts = Vec::new();
        let mut total = 0;
        for (singular, plural, legs) in chosen {
            let k = uniform(rng, self.instances);
            total += k * legs;
            counts.insert(singular.to_string(), k.into());
            parts.push(format!("{k} {}", if k == 1 { singular } else { plural }));
        }
        Ok(Draft {
            question: format!(
                "Your task is to count how many legs there are in total when given a list of animals.\n\nNow, how many legs are there in total if you have {}?\n",
                parts.join(", ")
            ),
            answer: Some(total.to_string()),
            metadata: metadata(vec![
                ("animals", Value::Object(counts)),
                ("num_animals", n.into()),
                ("total_legs", total.into()),
                (
                    "difficulty",
                    difficulty(&[
                        ("num_animals", json!(self.animals)),
                        ("num_instances", json!(self.instances)),
                    ]),
                ),
            ]),
        })
    }
}

/// Convert a number between two bases in 2..=36.
pub struct BaseConversion {
    base: (u32, u32),
    value: (i64, i64),
}

impl BaseConversion {
    pub fn new(options: &mut Options) -> Result<Self, TaskError> {
        let base = range_option(options, "base", (2, 16))?;
        let value = range_option(options, "value", (0, 1000))?;
        if base.0 < 2 || base.1 > 36 || base.0 == base.1 || value.0 < 0 {
            return Err(options.invalid(
                "min_base",
                "bases must span at least two values in 2..=36; values >= 0",
            ));
        }
        Ok(Self { base, value })
    }
}

fn to_base(mut value: i64, base: u32) -> String {
    if value == 0 {
        return "0".into();
    }
    let mut digits = Vec::new();
    while value > 0 {
        digits.push(
            std::char::from_digit((value % base as i64) as u32, base).expect("digit below base"),
        );
        value /= base as i64;
    }
    digits.iter().rev().collect()
}

fn base_name(base: u32) -> String {
    match base {
        2 => "binary".into(),
        16 => "hexadecimal".into(),
        _ => format!("base-{base}"),
    }
}

impl Generator for BaseConversion {
    fn draft(&self, rng: &mut ChaCha8Rng) -> Result<Draft, String> {
        let value = uniform(rng, self.value);
        let source = rng.random_range(self.base.0..=self.base.1);
        let mut target = rng.random_range(self.base.0..=self.base.1);
        while target == source {
            target = rng.random_range(self.base.0..=self.base.1);
        }
        let (source_repr, target_repr) = (to_base(value, source), to_base(value, target));
        let hint = if target > 10 {
            "If the target base is > 10, use lowercase letters a-z for digits above 9.\n\n"
        } else {
            ""
        };
        Ok(Draft {
            question: format!(
                "Your task is to convert a number between two different bases.\n\n{hint}Now, convert the {} number {source_repr} to {}\n",
                base_name(source),
                base_name(target)
            ),
            answer: Some(target_repr.clone()),
            metadata: metadata(vec![
                ("decimal_value", value.into()),
                ("source_base", source.into()),
                ("target_base", target.into()),
                ("source_repr", source_repr.into()),
                ("target_repr", target_repr.into()),
                (
                    "difficulty",
                    difficulty(&[("base", json!(self.base)), ("value", json!(self.value))]),
                ),
            ]),
        })
    }
}

/// Reach a target with each given number used once and `+ - * /`.
pub struct Countdown {
    numbers: (usize, usize),
    value: (i64, i64),
    target: (i64, i64),
}

impl Countdown {
    pub fn new(options: &mut Options) -> Result<Self, TaskError> {
        let numbers = range_option(options, "numbers", (4, 6))?;
        let value = range_option(options, "value", (1, 100))?;
        let target = range_option(options, "target", (100, 999))?;
        if numbers.0 < 2 || numbers.1 > 12 || value.0 < 1 {
            return Err(options.invalid("min_numbers", "numbers must be in 2..=12 and values >= 1"));
        }
        Ok(Self {
            numbers,
            value,
            target,
        })
    }
}

const COUNTDOWN_FORMAT: &str = "Final answer format instructions:\n1. Provide your solution as a arithmetic expression (no '=' sign).\n2. Do not include the target number in the expression.\n3. Use '*' for multiplication.\n4. Use '/' for division.\n5. Do not include any other text or formatting.\n";

impl Generator for Countdown {
    fn draft(&self, rng: &mut ChaCha8Rng) -> Result<Draft, String> {
        let n = count(rng, self.numbers);
        for _ in 0..10_000 {
            let numbers: Vec<i64> = (0..n).map(|_| uniform(rng, self.value)).collect();
            let mut order = numbers.clone();
            order.shuffle(rng);
            // Fold left to right: (((a op b) op c) op d), with parentheses where needed.
            let mut expression = order[0].to_string();
            let mut value = Ratio::from_integer(order[0] as i128);
            let mut last_additive = false;
            for &x in &order[1..] {
                let x_r = Ratio::from_integer(x as i128);
                match rng.random_range(0..4u32) {
                    0 => {
                        value += x_r;
                        expression = format!("{expression} + {x}");
                        last_additive = true;
                    }
                    1 => {
                        value -= x_r;
                        expression = format!("{expression} - {x}");
                        last_additive = true;
                    }
                    op => {
                        let wrapped = if last_additive {
                            format!("({expression})")
                        } else {
                            expression
                        };
                        if op == 2 {
                            value *= x_r;
                            expression = format!("{wrapped}*{x}");
                        } else {
                            value /= x_r;
                            expression = format!("{wrapped}/{x}");
                        }
                        last_additive = false;
                    }
                }
            }
            let in_range = value.is_integer()
                && (self.target.0 as i128..=self.target.1 as i128).contains(&value.to_integer());
            if in_range {
                let target = value.to_integer() as i64;
                let listed = numbers
                    .iter()
                    .map(i64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ");
                return Ok(Draft {
                    question: format!(
                        "Calculate {target} using all of these numbers: {listed}.\nEach number may be used at most once.\n\n{COUNTDOWN_FORMAT}"
                    ),
                    answer: Some(expression.clone()),
                    metadata: metadata(vec![
                        ("numbers", json!(numbers)),
                        ("target", target.into()),
                        ("expression", expression.into()),
                        (
                            "difficulty",
                            difficulty(&[
                                ("numbers", json!(self.numbers)),
                                ("target", json!(self.target)),
                                ("value", json!(self.value)),
                            ]),
                        ),
                    ]),
                });
            }
        }
        Err(format!(
            "no expression over {n} numbers in {:?} reached a target in {:?}",
            self.value, self.target
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_digits_are_lowercase() {
        assert_eq!(to_base(255, 16), "ff");
        assert_eq!(to_base(0, 2), "0");
        assert_eq!(to_base(5, 2), "101");
    }
}
