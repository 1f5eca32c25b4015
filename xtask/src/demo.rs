//! `cargo xtask demo`: what runs today, offline, from a clean clone.
//!
//! The training demo of n-Musketeers (a tiny expert team, fused vs single GRPO) is not built
//! yet; this demo drives the verifiers every training run will score against, through the
//! CLI a user would call.

use crate::util::{musketeers_binary, output, root};
use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::io::Write;

const TASKS: [(&str, &[&str]); 5] = [
    (
        "chain_sum",
        &["min_terms=2", "max_terms=3", "min_digits=1", "max_digits=2"],
    ),
    ("countdown", &["min_numbers=3", "max_numbers=4"]),
    ("propositional_logic", &[]),
    ("syllogism", &[]),
    ("letter_counting", &[]),
];

pub fn run() -> Result<()> {
    let bin = musketeers_binary()?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "musketeers demo: seeded tasks, scored by reasoning-gym-parity verifiers\n"
    )?;
    let mut lines = Vec::new();
    let mut labels = Vec::new();
    for (task, settings) in TASKS {
        let mut args = vec![
            "verify", "sample", "--task", task, "--n", "2", "--seed", "2026",
        ];
        for s in settings {
            args.extend(["--config", s]);
        }
        for entry_line in output(&bin, &args, None)?.lines() {
            let entry: Value = serde_json::from_str(entry_line).context("sample output is JSON")?;
            let oracle = entry["answer"]
                .as_str()
                .or(entry["metadata"]["example_answer"].as_str())
                .unwrap_or("")
                .to_string();
            let question = entry["question"]
                .as_str()
                .unwrap_or("")
                .lines()
                .last()
                .unwrap_or("")
                .to_string();
            let candidates = [
                (
                    "oracle",
                    format!("Let me think.\n<answer>{oracle}</answer>"),
                ),
                (
                    "padded+cased",
                    format!("<answer>  {}  </answer>", oracle.to_uppercase()),
                ),
                ("wrong", "<answer>12345</answer>".to_string()),
                ("no tag", oracle.clone()),
            ];
            for (kind, completion) in candidates {
                lines.push(
                    json!({"dataset": task, "entry": entry, "completion": completion}).to_string(),
                );
                labels.push((task, kind, question.clone(), oracle.clone()));
            }
        }
    }
    let gsm8k = root().join("../shared/data/gsm8k/test.jsonl");
    if let Ok(text) = std::fs::read_to_string(&gsm8k) {
        for row in text.lines().take(2) {
            let row: Value = serde_json::from_str(row)?;
            let solution = row["answer"].as_str().unwrap_or("").to_string();
            let final_answer = solution
                .rsplit("####")
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            let question: String = row["question"]
                .as_str()
                .unwrap_or("")
                .chars()
                .take(70)
                .collect();
            for (kind, completion) in [
                ("reference", solution.clone()),
                ("boxed", format!("so \\boxed{{{final_answer}}}")),
                ("wrong", "#### 0".into()),
            ] {
                lines.push(
                    json!({"dataset": "gsm8k", "entry": row, "completion": completion}).to_string(),
                );
                labels.push(("gsm8k", kind, question.clone(), final_answer.clone()));
            }
        }
    }
    let scores = output(
        &bin,
        &["verify", "score", "--input", "-"],
        Some(&(lines.join("\n") + "\n")),
    )?;
    writeln!(
        out,
        "{:<20} {:<13} {:>6}  {:<28} question",
        "task", "completion", "score", "oracle"
    )?;
    for ((task, kind, question, oracle), score) in labels.iter().zip(scores.lines()) {
        let score: Value = serde_json::from_str(score)?;
        let shown = score["score"]
            .as_f64()
            .map(|s| format!("{s:.3}"))
            .unwrap_or_else(|| score.to_string());
        let oracle: String = oracle.chars().take(28).collect();
        let skip = question.chars().count().saturating_sub(60);
        let question: String = question.chars().skip(skip).collect();
        writeln!(
            out,
            "{task:<20} {kind:<13} {shown:>6}  {oracle:<28} {question}"
        )?;
    }
    writeln!(
        out,
        "\nScoring is exact to reasoning-gym 0.1.25 (see crates/musketeers-verify/tests). The n-Musketeers \
         training demo (expert team + latent interface + GRPO) is not built yet; it will replace this run."
    )?;
    Ok(())
}
