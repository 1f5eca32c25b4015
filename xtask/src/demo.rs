//! `cargo xtask demo`: the n-Musketeers training demo, offline, from a clean clone.
//!
//! Builds the CLI in release (training speed depends on it) and runs `musketeers demo`: a tiny
//! expert team and policy trained from scratch, then fused vs single GRPO on an arithmetic and
//! a logic task over three seeds, with the results table printed and `runs/demo/report.md`.

use crate::util::{root, target_dir};
use anyhow::{Context, Result, bail};
use std::process::Command;

pub fn run(args: &[String]) -> Result<()> {
    crate::util::run(
        "cargo",
        &["build", "--release", "--quiet", "-p", "musketeers"],
    )?;
    let bin = target_dir().join("release/musketeers");
    let status = Command::new(&bin)
        .arg("demo")
        .args(args)
        .current_dir(root())
        .status()
        .with_context(|| format!("starting {}", bin.display()))?;
    if !status.success() {
        bail!("`musketeers demo` failed with {status}");
    }
    Ok(())
}
