//! Parity with reasoning-gym==0.1.25's `score_answer` and `extract_answer`.
//!
//! Fixtures: `tests/fixtures/reasoning_gym_scores.jsonl`, written by
//! `scripts/fixtures/make-reasoning-gym.sh` with the PyPI package. Where Python raises, the
//! fixture records `{"raises": ...}` and we expect 0.

use musketeers_verify::extract::extract_answer_tag;
use musketeers_verify::scorers::DATASETS;
use musketeers_verify::{Entry, score_answer};
use serde_json::Value;
use std::collections::BTreeMap;

const FIXTURE: &str = include_str!("../fixtures/reasoning_gym_scores.jsonl");

#[test]
fn scores_equal_python_for_every_case() {
    let mut per_dataset: BTreeMap<String, usize> = BTreeMap::new();
    let mut mismatches = Vec::new();
    for line in FIXTURE.lines() {
        let record: Value = serde_json::from_str(line).expect("fixture lines are JSON");
        let Some(dataset) = record.get("dataset").and_then(Value::as_str) else {
            continue;
        };
        let entry: Entry = serde_json::from_value(record["entry"].clone()).expect("fixture entry");
        for case in record["cases"].as_array().expect("cases array") {
            let candidate = case[0].as_str();
            let expected = case[1].as_f64().unwrap_or(0.0);
            let got = score_answer(dataset, candidate, &entry).expect("known dataset");
            *per_dataset.entry(dataset.to_string()).or_default() += 1;
            if got.to_bits() != expected.to_bits() {
                mismatches.push(format!(
                    "{dataset}: answer {candidate:?} -> {got}, python {} (oracle {:?})",
                    case[1], entry.answer
                ));
            }
        }
    }
    for name in DATASETS {
        assert!(
            per_dataset.get(name).copied().unwrap_or(0) >= 100,
            "too few fixture cases for {name}: {per_dataset:?}"
        );
    }
    let total: usize = per_dataset.values().sum();
    assert!(
        mismatches.is_empty(),
        "{} of {total} cases differ:\n{}",
        mismatches.len(),
        mismatches[..mismatches.len().min(60)].join("\n")
    );
}

#[test]
fn answer_extraction_equals_python() {
    let mut checked = 0;
    for line in FIXTURE.lines() {
        let record: Value = serde_json::from_str(line).expect("fixture lines are JSON");
        let Some(completion) = record.get("completion").and_then(Value::as_str) else {
            continue;
        };
        let expected = record["extracted"].as_str();
        assert_eq!(
            extract_answer_tag(completion).as_deref(),
            expected,
            "completion {completion:?}"
        );
        checked += 1;
    }
    assert!(
        checked >= 10,
        "only {checked} extraction cases in the fixture"
    );
}
