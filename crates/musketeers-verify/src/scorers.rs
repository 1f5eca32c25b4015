//! `score_answer` of reasoning-gym 0.1.25, dataset by dataset.
//!
//! Each function returns the float Python returns for the same entry and candidate. Where
//! the Python scorer raises, ours returns 0.0. Python measures lengths in code points, so
//! these do too. Known, deliberate differences are listed in the crate documentation.

use crate::arith;
use crate::entry::Entry;
use crate::proplogic::{self, Formula};
use crate::pynum::{PyDecimal, py_float, py_int, py_len, py_strip};
use num_bigint::BigInt;
use num_traits::One;
use regex::Regex;
use serde_json::Value;
use std::collections::HashSet;
use std::sync::LazyLock;

/// The Reasoning Gym datasets whose scorers are reproduced here.
pub const DATASETS: [&str; 21] = [
    "basic_arithmetic",
    "chain_sum",
    "leg_counting",
    "propositional_logic",
    "simple_equations",
    "fraction_simplification",
    "gcd",
    "lcm",
    "prime_factorization",
    "number_sorting",
    "word_sorting",
    "spell_backward",
    "letter_counting",
    "syllogism",
    "family_relationships",
    "knights_knaves",
    "countdown",
    "zebra_puzzles",
    "base_conversion",
    "decimal_arithmetic",
    "products",
];

/// A scorer: candidate answer (already extracted, `None` when absent) and entry to reward.
pub type ScoreFn = fn(Option<&str>, &Entry) -> f64;

/// The scorer of a dataset, or `None` for a name we do not know.
pub fn scorer(dataset: &str) -> Option<ScoreFn> {
    Some(match dataset {
        "basic_arithmetic" | "leg_counting" | "simple_equations" | "gcd" | "lcm"
        | "letter_counting" | "syllogism" | "base_conversion" => oracle_substring,
        "chain_sum" | "products" => decimal_reward,
        "propositional_logic" => propositional_logic,
        "fraction_simplification" => fraction_simplification,
        "prime_factorization" => prime_factorization,
        "number_sorting" => number_sorting,
        "word_sorting" => word_sorting,
        "spell_backward" => spell_backward,
        "family_relationships" => family_relationships,
        "knights_knaves" => knights_knaves,
        "countdown" => countdown,
        "zebra_puzzles" => zebra_puzzles,
        "decimal_arithmetic" => decimal_arithmetic,
        _ => return None,
    })
}

/// `ProceduralDataset.score_answer`: 1 for an exact match, `len(oracle)/len(answer)` when the
/// answer contains the oracle, else 0.
pub fn oracle_substring(answer: Option<&str>, entry: &Entry) -> f64 {
    match (answer, entry.answer.as_deref()) {
        (Some(answer), Some(oracle)) if !answer.is_empty() => substring_reward(answer, oracle),
        _ => 0.0,
    }
}

fn substring_reward(answer: &str, oracle: &str) -> f64 {
    if answer == oracle {
        1.0
    } else if answer.contains(oracle) {
        py_len(oracle) as f64 / py_len(answer) as f64
    } else {
        0.0
    }
}

/// `utils.compute_decimal_reward` with commas stripped: numeric equality, else the substring
/// ratio.
pub fn decimal_reward(answer: Option<&str>, entry: &Entry) -> f64 {
    let (Some(answer), Some(oracle)) = (answer, entry.answer.as_deref()) else {
        return 0.0;
    };
    if answer.is_empty() {
        return 0.0;
    }
    let answer = answer.replace(',', "");
    let oracle = oracle.replace(',', "");
    if answer.is_empty() {
        return 0.0; // Python divides by len("") here and raises
    }
    if let (Some(a), Some(o)) = (PyDecimal::parse(&answer), PyDecimal::parse(&oracle))
        && a.numerically_equal(&o)
    {
        return 1.0;
    }
    if answer.contains(&oracle) {
        py_len(&oracle) as f64 / py_len(&answer) as f64
    } else {
        0.0
    }
}

fn metadata_strings(entry: &Entry, key: &str) -> Option<Vec<String>> {
    entry
        .metadata
        .get(key)?
        .as_array()?
        .iter()
        .map(|v| v.as_str().map(str::to_string))
        .collect()
}

fn metadata_int(entry: &Entry, key: &str) -> Option<BigInt> {
    match entry.metadata.get(key)? {
        Value::Number(n) => n
            .as_i64()
            .map(BigInt::from)
            .or_else(|| n.as_u64().map(BigInt::from)),
        _ => None,
    }
}

pub fn propositional_logic(answer: Option<&str>, entry: &Entry) -> f64 {
    let Some(answer) = answer else { return 0.0 };
    let Some(valid) = metadata_strings(entry, "variables") else {
        return 0.0;
    };
    if answer
        .chars()
        .any(|c| c.is_ascii_uppercase() && !valid.iter().any(|v| v.len() == 1 && v.starts_with(c)))
    {
        return 0.0;
    }
    let score = || -> Result<f64, proplogic::LogicError> {
        let premises = metadata_strings(entry, "premises").unwrap_or_default();
        let premises = premises
            .iter()
            .map(|p| Formula::parse(p))
            .collect::<Result<Vec<_>, _>>()?;
        let conclusion = Formula::parse(answer)?;
        Ok(if proplogic::is_valid_conclusion(&premises, &conclusion)? {
            if proplogic::is_trivial(&conclusion)? {
                0.25
            } else {
                1.0
            }
        } else {
            0.05
        })
    };
    if entry.metadata.get("premises").is_none() {
        return 0.0;
    }
    score().unwrap_or(0.0)
}

static LATEX_FRACTION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)^\\(?:frac|dfrac)\s*\{\s*([0-9]+)\s*\}\s*\{\s*([0-9]+)\s*\}")
        .expect("static regex is valid")
});

pub fn fraction_simplification(answer: Option<&str>, entry: &Entry) -> f64 {
    let Some(answer) = answer else { return 0.01 };
    let cleaned = py_strip(py_strip(answer).trim_matches('$'));
    let parsed = if let Some(c) = LATEX_FRACTION.captures(cleaned) {
        py_int(&c[1]).zip(py_int(&c[2]))
    } else if let Some((n, d)) = cleaned.split_once('/') {
        py_int(n).zip(py_int(d))
    } else {
        None
    };
    let Some((numerator, denominator)) = parsed else {
        return 0.01;
    };
    let field = |key| metadata_int(entry, key);
    let (Some(sn), Some(sd)) = (
        field("simplified_numerator"),
        field("simplified_denominator"),
    ) else {
        return 0.01;
    };
    if numerator == sn && denominator == sd {
        return 1.0;
    }
    let (Some(n), Some(d)) = (field("numerator"), field("denominator")) else {
        return 0.01;
    };
    if numerator == n || denominator == d {
        0.1
    } else if !py_strip(answer).is_empty() {
        0.05
    } else {
        0.01
    }
}

/// Sorted factors of a `2 × 3 × 3` string; `None` where Python's `int()` raises.
fn factors(text: &str) -> Option<Vec<BigInt>> {
    if py_strip(text).is_empty() {
        return Some(Vec::new());
    }
    let mut out = text
        .split('×')
        .map(py_strip)
        .filter(|f| !f.is_empty())
        .map(py_int)
        .collect::<Option<Vec<_>>>()?;
    out.sort();
    Some(out)
}

pub fn prime_factorization(answer: Option<&str>, entry: &Entry) -> f64 {
    let Some(answer) = answer else { return 0.0 };
    let (Some(oracle), Some(candidate)) =
        (entry.answer.as_deref().and_then(factors), factors(answer))
    else {
        return 0.0;
    };
    let product = |v: &[BigInt]| v.iter().fold(BigInt::one(), |acc, f| acc * f);
    if oracle == candidate {
        1.0
    } else if product(&oracle) == product(&candidate) {
        0.5
    } else {
        0.01
    }
}

/// Python's `float(x)` on a JSON value; `None` where it raises. NaN is refused on purpose:
/// Python lets `[NaN, NaN, ...]` pass both the sort and the tolerance checks.
fn json_float(value: &Value) -> Option<f64> {
    let f = match value {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => py_float(s)?,
        Value::Bool(b) => f64::from(u8::from(*b)),
        _ => return None,
    };
    (!f.is_nan()).then_some(f)
}

pub fn number_sorting(answer: Option<&str>, entry: &Entry) -> f64 {
    let parse_list = |text: &str| -> Option<Vec<f64>> {
        let value: Value = serde_json::from_str(&text.replace('\'', "\"")).ok()?;
        value.as_array()?.iter().map(json_float).collect()
    };
    let (Some(user), Some(expected)) = (
        answer.and_then(parse_list),
        entry.answer.as_deref().and_then(parse_list),
    ) else {
        return 0.0;
    };
    if user.len() != expected.len() {
        return 0.0;
    }
    let ascending = match entry.metadata.get("direction").and_then(Value::as_str) {
        Some(direction) => direction == "ascending",
        None => return 0.0,
    };
    let sorted = user.windows(2).all(|w| {
        if ascending {
            w[0] <= w[1]
        } else {
            w[0] >= w[1]
        }
    });
    let close = user
        .iter()
        .zip(&expected)
        .all(|(u, e)| (u - e).abs() <= 1.0);
    if sorted && close { 1.0 } else { 0.0 }
}

static COMMA_SPACES: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r",[\s\x1c-\x1f]*").expect("static regex is valid"));

pub fn word_sorting(answer: Option<&str>, entry: &Entry) -> f64 {
    let Some(answer) = answer.filter(|a| !a.is_empty()) else {
        return 0.0;
    };
    let Some(oracle) = metadata_strings(entry, "sorted_words") else {
        return 0.0;
    };
    let parsed: Vec<&str> = COMMA_SPACES.split(answer).map(py_strip).collect();
    if parsed.len() == oracle.len() && parsed.iter().zip(&oracle).all(|(a, b)| a == b) {
        return 1.0;
    }
    if oracle.is_empty() {
        return 0.0;
    }
    let correct = parsed.iter().zip(&oracle).filter(|(a, b)| *a == b).count();
    let mut score = correct as f64 / oracle.len() as f64;
    let mut sorted_parsed = parsed.clone();
    sorted_parsed.sort();
    let mut sorted_oracle: Vec<&str> = oracle.iter().map(String::as_str).collect();
    sorted_oracle.sort();
    if sorted_parsed == sorted_oracle {
        score = score.max(0.2);
    }
    score
}

pub fn spell_backward(answer: Option<&str>, entry: &Entry) -> f64 {
    let (Some(answer), Some(expected)) = (answer, entry.answer.as_deref()) else {
        return 0.0;
    };
    let expected: Vec<char> = expected.to_lowercase().chars().collect();
    let answer: Vec<char> = answer.to_lowercase().chars().collect();
    if expected == answer {
        return 1.0;
    }
    // Summed one term at a time, as Python does, so the float is bit-identical.
    let mut reward = 0.0;
    for (e, a) in expected.iter().zip(&answer) {
        if e == a {
            reward += 1.0 / expected.len() as f64;
        }
    }
    if reward == 1.0 { reward - 0.2 } else { reward }
}

pub fn family_relationships(answer: Option<&str>, entry: &Entry) -> f64 {
    match (answer, entry.answer.as_deref()) {
        (Some(a), Some(o)) if py_strip(a).to_lowercase() == py_strip(o).to_lowercase() => 1.0,
        _ => 0.0,
    }
}

const KNIGHT_KNAVE_ROLES: [&str; 14] = [
    "knight", "knave", "pioneer", "laggard", "saint", "sinner", "hero", "villain", "angel",
    "devil", "altruist", "egoist", "sage", "fool",
];

fn role_assignments(answer: &str) -> HashSet<(String, String)> {
    let lowered = py_strip(&answer.to_lowercase()).replace(['.', ',', ')', '('], " ");
    let spaced = lowered.replace(" and ", " ");
    let mut assignments = HashSet::new();
    let mut current: Option<&str> = None;
    for part in spaced
        .split(crate::pynum::is_py_space)
        .filter(|p| !p.is_empty())
    {
        if matches!(part, "is" | "a" | "an") {
            continue;
        }
        if KNIGHT_KNAVE_ROLES.contains(&part) {
            if let Some(name) = current.take() {
                assignments.insert((name.to_string(), part.to_string()));
            }
        } else {
            current = Some(part);
        }
    }
    assignments
}

pub fn knights_knaves(answer: Option<&str>, entry: &Entry) -> f64 {
    let (Some(answer), Some(oracle)) = (answer.filter(|a| !a.is_empty()), entry.answer.as_deref())
    else {
        return 0.0;
    };
    let oracle = role_assignments(oracle);
    let candidate = role_assignments(answer);
    if oracle == candidate {
        return 1.0;
    }
    if oracle.len() == candidate.len() {
        let matching = oracle.intersection(&candidate).count();
        if matching > 0 {
            return 0.3 + (0.7 * matching as f64 / oracle.len() as f64);
        }
    }
    0.0
}

static INTEGER_LITERAL: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\b[0-9]+\b").expect("static regex is valid"));

pub fn countdown(answer: Option<&str>, entry: &Entry) -> f64 {
    let Some(answer) = answer.filter(|a| !py_strip(a).is_empty()) else {
        return 0.01;
    };
    let Some(value) = arith::evaluate(answer).ok().and_then(|v| v.to_f64()) else {
        return 0.01;
    };
    let mut used: Vec<BigInt> = INTEGER_LITERAL
        .find_iter(answer)
        .filter_map(|m| py_int(m.as_str()))
        .collect();
    let target_numbers: Option<Vec<BigInt>> = entry
        .metadata
        .get("numbers")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().map(|v| v.as_i64().map(BigInt::from)).collect());
    let Some(mut target_numbers) = target_numbers else {
        return 0.01;
    };
    let Some(target) = entry.metadata.get("target").and_then(Value::as_f64) else {
        return 0.01;
    };
    used.sort();
    target_numbers.sort();
    if used != target_numbers {
        return 0.05;
    }
    // numpy.isclose(value, target, atol=1e-6) with its default rtol=1e-5.
    if (value - target).abs() <= 1e-6 + 1e-5 * target.abs() {
        1.0
    } else {
        0.05
    }
}

pub fn zebra_puzzles(answer: Option<&str>, entry: &Entry) -> f64 {
    let normalize = |s: &str| s.to_lowercase().replace('\n', "");
    match (answer, entry.answer.as_deref()) {
        (Some(a), Some(o)) if normalize(a) == normalize(o) => 1.0,
        _ => 0.0,
    }
}

/// reasoning-gym's default `max_num_decimal_places`, which sets the tolerance 10^-3.
pub const DECIMAL_ARITHMETIC_PLACES: u32 = 3;

pub fn decimal_arithmetic(answer: Option<&str>, entry: &Entry) -> f64 {
    let (Some(answer), Some(oracle)) = (answer, entry.answer.as_deref()) else {
        return 0.0;
    };
    match (PyDecimal::parse(answer), PyDecimal::parse(oracle)) {
        (Some(a), Some(o)) if a.within_tolerance(&o, DECIMAL_ARITHMETIC_PLACES) => 1.0,
        _ => 0.0,
    }
}
