//! `cargo xtask bench dp`: data parallelism on this machine. The same run (same global batch)
//! as one process with all the cores' threads, and as `mpirun -np N` ranks of one thread
//! each; seconds per step and the time per step spent in the ranks' all-reduces (which
//! includes waiting for the slowest rank).

use crate::util::{root, run as run_cmd};
use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::process::Command;

/// Mean over steps after the first (warm-up) of `key` in a run's metrics.
fn mean_after_first(run: &Path, key: &str) -> Result<f64> {
    let path = run.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    let values: Vec<f64> = text
        .lines()
        .skip(1)
        .map(|l| {
            let v: Value = serde_json::from_str(l)?;
            Ok(v[key].as_f64().unwrap_or(0.0))
        })
        .collect::<Result<_>>()?;
    if values.is_empty() {
        bail!("{}: fewer than 2 steps", path.display());
    }
    Ok(values.iter().sum::<f64>() / values.len() as f64)
}

pub fn dp(config: &str, steps: u64, ranks: usize, overrides: &[String]) -> Result<()> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    run_cmd(
        "cargo",
        &[
            "build",
            "--release",
            "-p",
            "musketeers",
            "--features",
            "mpi",
            "--locked",
        ],
    )?;
    let binary = root().join("target/release/musketeers");
    let out = root().join("target/bench-dp");
    let steps = steps.max(2).to_string();
    let mut train_args: Vec<String> = vec![
        "train".into(),
        "--progress".into(),
        "plain".into(),
        "--config".into(),
        config.into(),
        "--steps".into(),
        steps.clone(),
        "--set".into(),
        "eval.problems=0".into(),
    ];
    for o in overrides {
        train_args.extend(["--set".into(), o.clone()]);
    }
    let alone = out.join("alone");
    let shared = out.join("ranks");
    let mut stdout = std::io::stdout();
    writeln!(stdout, "one process x {threads} threads ...")?;
    let status = Command::new(&binary)
        .args(&train_args)
        .arg("--out")
        .arg(&alone)
        .env("RAYON_NUM_THREADS", threads.to_string())
        .current_dir(root())
        .status()?;
    if !status.success() {
        bail!("the single-process run failed");
    }
    writeln!(stdout, "{ranks} ranks x 1 thread (mpirun) ...")?;
    let status = Command::new("mpirun")
        .args([
            "--allow-run-as-root",
            "--oversubscribe",
            "-x",
            "RAYON_NUM_THREADS=1",
            "-np",
        ])
        .arg(ranks.to_string())
        .arg(&binary)
        .args(&train_args)
        .arg("--out")
        .arg(&shared)
        .current_dir(root())
        .status()
        .context("mpirun (Debian: apt install openmpi-bin libopenmpi-dev libclang-dev)")?;
    if !status.success() {
        bail!("the data-parallel run failed");
    }
    let (a, b) = (
        mean_after_first(&alone, "step_seconds")?,
        mean_after_first(&shared, "step_seconds")?,
    );
    let comm = mean_after_first(&shared, "communication_seconds")?;
    writeln!(
        stdout,
        "\n{config}, {steps} steps (the first left out), same global batch\n\
         | layout | s/step | all-reduce s/step | vs 1 x {threads} |\n|---|---|---|---|\n\
         | 1 process x {threads} threads | {a:.2} | - | 1.00 |\n\
         | {ranks} ranks x 1 thread | {b:.2} | {comm:.3} | {:.2} |",
        a / b
    )?;
    Ok(())
}
