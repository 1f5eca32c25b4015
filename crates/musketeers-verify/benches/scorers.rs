//! Scores per second for each dataset on one core, over the parity fixture's real entries and
//! candidate spread. Prints one JSON object per dataset; `cargo xtask bench verify` sets the
//! numbers beside reasoning-gym's own scorers measured in the same run.

#![allow(clippy::print_stdout)] // a benchmark reports on stdout

use musketeers_verify::{Entry, score_answer};
use serde_json::Value;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

const FIXTURE: &str = include_str!("../tests/fixtures/reasoning_gym_scores.jsonl");

fn main() {
    let seconds: f64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let mut cases: BTreeMap<String, Vec<(Entry, Option<String>)>> = BTreeMap::new();
    for line in FIXTURE.lines() {
        let record: Value = serde_json::from_str(line).expect("fixture is JSON");
        let Some(dataset) = record.get("dataset").and_then(Value::as_str) else {
            continue;
        };
        let entry: Entry = serde_json::from_value(record["entry"].clone()).expect("entry");
        for case in record["cases"].as_array().expect("cases") {
            cases
                .entry(dataset.to_string())
                .or_default()
                .push((entry.clone(), case[0].as_str().map(str::to_string)));
        }
    }
    for (dataset, cases) in &cases {
        let budget = Duration::from_secs_f64(seconds);
        let start = Instant::now();
        let mut scored = 0u64;
        while start.elapsed() < budget {
            for (entry, answer) in cases {
                black_box(
                    score_answer(dataset, black_box(answer.as_deref()), entry)
                        .expect("known dataset"),
                );
            }
            scored += cases.len() as u64;
        }
        let rate = scored as f64 / start.elapsed().as_secs_f64();
        println!(
            "{}",
            serde_json::json!({"dataset": dataset, "scores_per_sec": rate, "cases": cases.len()})
        );
    }
}
