//! Scorers and extractors are total: no panic, bounded work, a score in [0, 1], on any text.
//! Each property runs 2,000 proptest cases per dataset (set PROPTEST_CASES to change it).

use musketeers_verify::extract::{extract_answer_tag, extract_gsm8k_answer, numbers_match};
use musketeers_verify::scorers::DATASETS;
use musketeers_verify::{Entry, score_answer, score_completion};
use proptest::prelude::*;
use serde_json::Value;

const FIXTURE: &str = include_str!("../fixtures/reasoning_gym_scores.jsonl");

/// The first fixture entry of every dataset: real entries as reasoning-gym makes them.
fn entries() -> Vec<(String, Entry)> {
    DATASETS
        .iter()
        .map(|name| {
            let line = FIXTURE
                .lines()
                .find(|l| l.contains(&format!("\"dataset\": \"{name}\"")))
                .expect("every dataset has fixture entries");
            let record: Value = serde_json::from_str(line).expect("json");
            (
                name.to_string(),
                serde_json::from_value(record["entry"].clone()).expect("entry"),
            )
        })
        .collect()
}

/// Text that looks like answers: digits, operators, brackets, tags, logic symbols, Unicode.
fn answer_like() -> impl Strategy<Value = String> {
    let atoms = prop::sample::select(vec![
        "0",
        "1",
        "7",
        "42",
        "-",
        "+",
        "*",
        "/",
        "**",
        "!",
        ".",
        ",",
        "_",
        "(",
        ")",
        "[",
        "]",
        "'",
        "\"",
        " ",
        "\n",
        "e",
        "E",
        "nan",
        "inf",
        "oo",
        "zoo",
        "∧",
        "∨",
        "¬",
        "→",
        "↔",
        "P",
        "Q",
        "p",
        "×",
        "\\frac{",
        "}",
        "{",
        "$",
        "<answer>",
        "</answer>",
        "\\boxed{",
        "####",
        "is a knight",
        "and",
        "Yes",
        "No",
        "١",
        "ß",
        "İ",
        "\u{1c}",
    ]);
    prop::collection::vec(atoms, 0..60).prop_map(|parts| parts.concat())
}

fn check_all(text: &str, entries: &[(String, Entry)]) -> Result<(), TestCaseError> {
    for (name, entry) in entries {
        let score = score_answer(name, Some(text), entry).expect("known dataset");
        prop_assert!((0.0..=1.0).contains(&score), "{name}: {score} for {text:?}");
        let score = score_completion(name, text, entry).expect("known dataset");
        prop_assert!(
            (0.0..=1.0).contains(&score),
            "{name}: {score} for completion {text:?}"
        );
    }
    let _ = extract_answer_tag(text);
    let _ = extract_gsm8k_answer(text);
    let _ = numbers_match(text, "72");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_unicode_never_panics(text in any::<String>()) {
        check_all(&text, &entries())?;
    }

    #[test]
    fn answer_like_text_never_panics(text in answer_like()) {
        check_all(&text, &entries())?;
    }
}

#[test]
fn adversarial_inputs_finish() {
    let entries = entries();
    let cases = [
        "(".repeat(50_000),
        ")".repeat(50_000),
        "¬".repeat(50_000),
        "P ∧ ".repeat(5_000) + "P",
        (0..40)
            .map(|i| format!("v{i}"))
            .collect::<Vec<_>>()
            .join(" ∨ "),
        "9**".repeat(1_000) + "9",
        "9".repeat(100_000),
        "1e999999999".to_string(),
        "<answer>".repeat(10_000),
        "\\boxed{".repeat(10_000),
        "1".repeat(5_000) + "!",
        format!("[{}]", vec!["1e400"; 1000].join(",")),
        "× ".repeat(20_000),
    ];
    for text in &cases {
        check_all(text, &entries).expect("bounded and in range");
    }
}
