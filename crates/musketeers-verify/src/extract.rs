//! Pulling the final answer out of a model's raw completion.

use crate::pynum::{PyDecimal, py_strip};
use regex::Regex;
use std::sync::LazyLock;

static ANSWER_TAG: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?s)<answer>\s?(.*?)\s?</answer>").expect("static regex is valid")
});
static GSM8K_HASHES: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"####\s*([^\n]*)").expect("static regex is valid"));
static NUMBER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"-?\$?[0-9][0-9,]*(?:\.[0-9]+)?").expect("static regex is valid"));

/// Reasoning Gym's convention: the content of the last `<answer>...</answer>`, stripped.
pub fn extract_answer_tag(completion: &str) -> Option<String> {
    ANSWER_TAG
        .captures_iter(completion)
        .last()
        .and_then(|c| c.get(1))
        .map(|m| py_strip(m.as_str()).to_string())
}

/// The content of the last balanced `\boxed{...}`.
pub fn extract_boxed(completion: &str) -> Option<String> {
    let start = completion.rfind("\\boxed{")? + "\\boxed{".len();
    let mut depth = 1usize;
    for (offset, c) in completion[start..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(completion[start..start + offset].to_string());
                }
            }
            _ => {}
        }
    }
    None
}

/// GSM8K conventions, in order: the last `\boxed{}`, the last `<answer>`, the last `#### N`,
/// else the last number in the text. Returns the raw extracted text.
pub fn extract_gsm8k_answer(completion: &str) -> Option<String> {
    extract_boxed(completion)
        .or_else(|| extract_answer_tag(completion))
        .or_else(|| {
            GSM8K_HASHES
                .captures_iter(completion)
                .last()
                .map(|c| c[1].trim().to_string())
        })
        .or_else(|| last_number(completion))
}

fn last_number(text: &str) -> Option<String> {
    NUMBER
        .find_iter(text)
        .last()
        .map(|m| m.as_str().to_string())
}

/// Normalise a numeric answer the way GSM8K graders do: drop `$`, thousands commas, spaces
/// and a trailing period, and take the last number if words surround it.
pub fn normalize_number(text: &str) -> Option<PyDecimal> {
    let cleaned: String = text
        .chars()
        .filter(|c| !matches!(c, '$' | ',') && !c.is_whitespace())
        .collect();
    let cleaned = cleaned.trim_end_matches('.');
    match PyDecimal::parse(cleaned) {
        Some(value @ PyDecimal::Finite { .. }) => Some(value),
        _ => {
            let inner = last_number(text)?;
            let inner: String = inner
                .chars()
                .filter(|c| !matches!(c, '$' | ',') && !c.is_whitespace())
                .collect();
            PyDecimal::parse(&inner).filter(|v| matches!(v, PyDecimal::Finite { .. }))
        }
    }
}

/// Whether two numeric answers are equal as numbers (`72`, `72.0`, `$72`, `72.` agree;
/// `1,080` and `1080` agree).
pub fn numbers_match(candidate: &str, reference: &str) -> bool {
    match (normalize_number(candidate), normalize_number(reference)) {
        (Some(a), Some(b)) => a.numerically_equal(&b),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_tag_takes_last_and_strips() {
        assert_eq!(
            extract_answer_tag("<answer>1</answer> and <answer> 2 </answer>").as_deref(),
            Some("2")
        );
        assert_eq!(extract_answer_tag("no tags"), None);
        assert_eq!(
            extract_answer_tag("<answer>\n a\nb \n</answer>").as_deref(),
            Some("a\nb")
        );
    }

    #[test]
    fn gsm8k_priority_and_normalisation() {
        assert_eq!(
            extract_gsm8k_answer("so \\boxed{\\frac{1}{2}} or <answer>3</answer>").as_deref(),
            Some("\\frac{1}{2}")
        );
        assert_eq!(
            extract_gsm8k_answer("work\n#### 1,080").as_deref(),
            Some("1,080")
        );
        assert_eq!(
            extract_gsm8k_answer("it costs $5 then 7.5 dollars.").as_deref(),
            Some("7.5")
        );
        for (a, b) in [
            ("72", "72.0"),
            ("$72", "72"),
            ("1,080", "1080"),
            ("72.", "72"),
            ("The answer is 18 eggs", "18"),
        ] {
            assert!(numbers_match(a, b), "{a} vs {b}");
        }
        assert!(!numbers_match("71", "72"));
        assert!(!numbers_match("nan", "nan"));
    }
}
