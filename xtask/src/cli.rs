//! `cargo xtask demo` and `cargo xtask train`: the `musketeers` CLI, built in release
//! (training speed depends on it) and run from the repository root with the arguments passed
//! on. `--device cuda` or `--device wgpu` builds with that cargo feature.
//!
//! `demo` is the offline default: a tiny expert team and policy trained from scratch, then
//! every system under GRPO on an arithmetic and a logic task over three seeds, the table
//! printed and `runs/demo/report.md` written.

use crate::util::{root, target_dir};
use anyhow::{Context, Result, bail};
use std::process::Command;

/// The cargo feature a `--device` argument needs, if any.
fn device_feature(args: &[String]) -> Option<&'static str> {
    let device = args.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix("--device=")
            .map(str::to_string)
            .or_else(|| (a == "--device").then(|| args.get(i + 1).cloned().unwrap_or_default()))
    })?;
    match device.as_str() {
        "cuda" => Some("cuda"),
        "wgpu" => Some("wgpu"),
        _ => None,
    }
}

pub fn run(subcommand: &str, args: &[String]) -> Result<()> {
    let mut build = vec!["build", "--release", "--quiet", "-p", "musketeers"];
    if let Some(feature) = device_feature(args) {
        build.extend(["--features", feature]);
    }
    crate::util::run("cargo", &build)?;
    let bin = target_dir().join("release/musketeers");
    let status = Command::new(&bin)
        .arg(subcommand)
        .args(args)
        .current_dir(root())
        .status()
        .with_context(|| format!("starting {}", bin.display()))?;
    if !status.success() {
        bail!("`musketeers {subcommand}` failed with {status}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::device_feature;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_gpu_device_argument_selects_its_cargo_feature() {
        assert_eq!(device_feature(&args(&["--device", "cuda"])), Some("cuda"));
        assert_eq!(
            device_feature(&args(&["--steps", "2", "--device=wgpu"])),
            Some("wgpu")
        );
        assert_eq!(device_feature(&args(&["--device", "cpu"])), None);
        assert_eq!(device_feature(&args(&["--config", "x.toml"])), None);
    }
}
