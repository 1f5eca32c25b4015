//! `cargo xtask bench ...`: throughput benchmarks reported against a reference measured in the
//! same run on the same machine.

use crate::util::{output, root, run as run_cmd};
use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

#[derive(Subcommand, Debug)]
pub enum Bench {
    /// Scores per second per dataset on one core, beside reasoning-gym's scorers.
    Verify {
        /// Seconds of scoring per dataset and side.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
        /// Skip the Python reference (no virtual environment is created).
        #[arg(long)]
        no_python: bool,
    },
}

pub fn run(bench: Bench) -> Result<()> {
    match bench {
        Bench::Verify { seconds, no_python } => verify(seconds, no_python),
    }
}

fn rates(text: &str) -> Result<BTreeMap<String, f64>> {
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).with_context(|| format!("bench line {l:?}"))?;
            Ok((
                v["dataset"].as_str().unwrap_or("?").to_string(),
                v["scores_per_sec"].as_f64().unwrap_or(0.0),
            ))
        })
        .collect()
}

/// A throwaway venv with the pinned reasoning-gym, kept under target/ between runs.
fn python_reference(fixture: &Path, seconds: f64) -> Result<BTreeMap<String, f64>> {
    let venv = root().join("target/bench-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        run_cmd("python3", &["-m", "venv", &venv.to_string_lossy()])?;
        run_cmd(
            &venv.join("bin/pip").to_string_lossy(),
            &["install", "--quiet", "reasoning-gym==0.1.25"],
        )?;
    }
    let script = root().join("scripts/bench/reasoning_gym_scores.py");
    rates(&output(
        &python.to_string_lossy(),
        &[
            &script.to_string_lossy(),
            &fixture.to_string_lossy(),
            &seconds.to_string(),
        ],
        None,
    )?)
}

fn verify(seconds: f64, no_python: bool) -> Result<()> {
    let fixture = root().join("crates/musketeers-verify/tests/fixtures/reasoning_gym_scores.jsonl");
    run_cmd(
        "cargo",
        &[
            "build",
            "--quiet",
            "--release",
            "-p",
            "musketeers-verify",
            "--bench",
            "scorers",
        ],
    )?;
    // `cargo bench` runs the harness-free binary; one thread, as the bench never spawns any.
    let ours = rates(
        &std::process::Command::new("cargo")
            .args([
                "bench",
                "--quiet",
                "-p",
                "musketeers-verify",
                "--bench",
                "scorers",
            ])
            .env("BENCH_SECONDS", seconds.to_string())
            .current_dir(root())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())?,
    )?;
    let reference = if no_python {
        BTreeMap::new()
    } else {
        python_reference(&fixture, seconds)?
    };
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:<26} {:>14} {:>16} {:>8}",
        "dataset", "ours scores/s", "python scores/s", "ratio"
    )?;
    for (dataset, rate) in &ours {
        match reference.get(dataset) {
            Some(py) => writeln!(
                out,
                "{dataset:<26} {rate:>14.0} {py:>16.0} {:>7.1}x",
                rate / py
            )?,
            None => writeln!(out, "{dataset:<26} {rate:>14.0} {:>16} {:>8}", "-", "-")?,
        }
    }
    Ok(())
}
