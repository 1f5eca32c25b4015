//! `cargo xtask gpu-check`: the half of the GPU device check that runs here.
//!
//! The GPU machine has the NVIDIA driver, CUDA with nvrtc and Python, but no Rust toolchain
//! and no network, and what travels to it is at most 64 MiB. So this builds everything here
//! and packs it into one ignored folder (default `target/gpu-check`):
//! - `bin.tar.xz`: the CLI with Burn's fusion and autotune, the CLI without (`-plain`), and
//!   each crate's backend-generic test binary (`tests/backends/`, the tests written with
//!   `musketeers_testkit::backend_tests!`) as `tests/<crate>-backends`, all stripped;
//! - `models.tar.xz`: the benchmark models' config.json and tokenizer files, without weights
//!   (SmolLM2-135M alone is 98 MB): `musketeers lm randomize` gives them random weights of the
//!   same shape there, which decode exactly as fast;
//! - `grpo.toml`: `configs/smollm2-team.toml` pointed at those models;
//! - `build-root` (where the test binaries look for their fixtures) and `backend`.
//!
//! `scripts/gpu-check.sh` is the other half: run from the repository root on the GPU machine
//! (the `device` tool: command `bash scripts/gpu-check.sh`, carry `target/gpu-check`).
//! `--backend wgpu` packs the same for a dry run of that script here, on lavapipe.

use crate::util::{progress, root, run, target_dir};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What the device tool carries, at most.
const CARRY_LIMIT: u64 = 64 << 20;

/// The models whose decode speed the check measures (those fetched here).
const BENCH_MODELS: [&str; 3] = ["smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b"];

#[derive(clap::Args, Debug)]
pub struct GpuCheckArgs {
    /// The GPU backend to build for: cuda (the GPU machine) or wgpu (a dry run here).
    #[arg(long, default_value = "cuda", value_parser = ["cuda", "wgpu"])]
    backend: String,
    /// The pack folder (relative to the repository root; ignored by git).
    #[arg(long, default_value = "target/gpu-check")]
    out: PathBuf,
}

pub fn run_gpu_check(args: GpuCheckArgs) -> Result<()> {
    let out = root().join(&args.out);
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
    }
    let stage = out.join("stage");
    std::fs::create_dir_all(stage.join("tests"))?;
    let backend = args.backend.as_str();

    build_clis(&stage, backend)?;
    build_backend_tests(&stage, backend)?;
    for entry in walk(&stage)? {
        run("strip", &["--strip-all", path_str(&entry)?])?;
    }
    pack(&stage, &out.join("bin.tar.xz"))?;
    std::fs::remove_dir_all(&stage)?;

    let models = out.join("models");
    let included = model_shapes(&models)?;
    grpo_config(&out, &args.out, &included)?;
    pack(&models, &out.join("models.tar.xz"))?;
    std::fs::remove_dir_all(&models)?;

    std::fs::write(out.join("build-root"), root().display().to_string())?;
    std::fs::write(out.join("backend"), backend)?;
    let size = folder_size(&out)?;
    progress(&format!(
        "gpu-check: {} packed, {:.1} MiB (limit {} MiB)",
        out.display(),
        size as f64 / (1 << 20) as f64,
        CARRY_LIMIT >> 20
    ))?;
    if size > CARRY_LIMIT {
        bail!("the pack is over the device tool's carry limit");
    }
    progress(&format!(
        "next, on the GPU machine (device tool): command `bash scripts/gpu-check.sh`, \
         carry [\"{}\"]",
        args.out.display()
    ))?;
    Ok(())
}

/// The CLI with Burn's fusion and autotune (`musketeers`) and without (`musketeers-plain`),
/// into `stage`.
fn build_clis(stage: &Path, backend: &str) -> Result<()> {
    progress(&format!(
        "gpu-check: building the {backend} CLI with and without fusion (release)"
    ))?;
    for (feature, name) in [
        (backend.to_string(), "musketeers"),
        (format!("{backend}-plain"), "musketeers-plain"),
    ] {
        let built = cargo_executables(
            &[
                "build",
                "--release",
                "--locked",
                "-p",
                "musketeers",
                "--bin",
                "musketeers",
                "--features",
                &feature,
            ],
            |kind, target| kind == "bin" && target == "musketeers",
        )?;
        let (bin, _, _) = built.first().context("cargo built no musketeers binary")?;
        std::fs::copy(bin, stage.join(name))?;
    }
    Ok(())
}

/// Each crate's backend-generic test binary, into `stage/tests` as `<crate>-backends`.
fn build_backend_tests(stage: &Path, backend: &str) -> Result<()> {
    let crates = backend_test_crates()?;
    progress(&format!(
        "gpu-check: building the backend-generic tests on {backend}: {}",
        crates.join(", ")
    ))?;
    let features = crates
        .iter()
        .map(|c| format!("{c}/{backend}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut test_args = vec!["test", "--no-run", "--locked"];
    for krate in &crates {
        test_args.extend(["-p", krate]);
    }
    test_args.extend(["--features", &features, "--test", "backends"]);
    let wanted = |kind: &str, target: &str| kind == "test" && target == "backends";
    for (bin, name, krate) in cargo_executables(&test_args, wanted)? {
        std::fs::copy(&bin, stage.join("tests").join(format!("{krate}-{name}")))?;
    }
    Ok(())
}

/// Run cargo with `--message-format=json` and return the executables it built whose target
/// (kind, name) `keep` accepts, with their target names and their crates' folder names.
fn cargo_executables(
    args: &[&str],
    keep: impl Fn(&str, &str) -> bool,
) -> Result<Vec<(PathBuf, String, String)>> {
    let mut full = args.to_vec();
    full.push("--message-format=json-render-diagnostics");
    let output = Command::new("cargo")
        .args(&full)
        .current_dir(root())
        .stderr(Stdio::inherit())
        .output()
        .context("starting cargo")?;
    if !output.status.success() {
        bail!("`cargo {}` failed with {}", args.join(" "), output.status);
    }
    let stdout = String::from_utf8(output.stdout).context("cargo's output is not UTF-8")?;
    Ok(stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|message| {
            let executable = message["executable"].as_str()?;
            let target = message["target"]["name"].as_str()?;
            let kinds = message["target"]["kind"].as_array()?;
            let krate = Path::new(message["manifest_path"].as_str()?)
                .parent()?
                .file_name()?
                .to_str()?;
            kinds
                .iter()
                .filter_map(|k| k.as_str())
                .any(|kind| keep(kind, target))
                .then(|| {
                    (
                        PathBuf::from(executable),
                        target.to_string(),
                        krate.to_string(),
                    )
                })
        })
        .collect())
}

/// The crates with a backend-generic test binary (`tests/backends/main.rs`).
fn backend_test_crates() -> Result<Vec<String>> {
    let mut names = Vec::new();
    for krate in std::fs::read_dir(root().join("crates"))? {
        let dir = krate?.path();
        if dir.join("tests/backends/main.rs").exists() {
            names.push(
                dir.file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default()
                    .to_string(),
            );
        }
    }
    names.sort();
    if names.is_empty() {
        bail!("no crate has backend-generic tests (crates/*/tests/backends/main.rs)");
    }
    Ok(names)
}

/// Each fetched benchmark model's config and tokenizer files (no weights) in `dir/NAME`,
/// converted by the CPU CLI; returns the names included.
fn model_shapes(dir: &Path) -> Result<Vec<String>> {
    run(
        "cargo",
        &[
            "build",
            "--release",
            "--quiet",
            "--locked",
            "-p",
            "musketeers",
        ],
    )?;
    let cli = target_dir().join("release/musketeers");
    let scratch = tempfile::tempdir()?;
    let mut included = Vec::new();
    for name in BENCH_MODELS {
        let converted = scratch.path().join(name);
        let status = Command::new(&cli)
            .args([
                "lm",
                "convert",
                "--from",
                name,
                "--to",
                path_str(&converted)?,
            ])
            .current_dir(root())
            .stdout(Stdio::null())
            .status()?;
        if !status.success() {
            progress(&format!(
                "gpu-check: {name} is not fetched here; left out of the benchmark"
            ))?;
            continue;
        }
        let target = dir.join(name);
        std::fs::create_dir_all(&target)?;
        for entry in std::fs::read_dir(&converted)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "json") {
                std::fs::copy(&path, target.join(path.file_name().context("file name")?))?;
            }
        }
        std::fs::remove_dir_all(&converted)?;
        included.push(name.to_string());
    }
    Ok(included)
}

/// `configs/smollm2-team.toml` with catalog models replaced by the packed shapes (a member
/// whose model is neither is left out: the demo's specialist is not trained here), 3 steps.
fn grpo_config(out: &Path, relative_out: &Path, included: &[String]) -> Result<()> {
    let source = root().join("configs/smollm2-team.toml");
    let text = std::fs::read_to_string(&source)?;
    let mut config: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", source.display()))?;
    let packed = |model: &str| {
        included.iter().any(|n| n == model).then(|| {
            relative_out
                .join("models")
                .join(model)
                .display()
                .to_string()
        })
    };
    let policy = config
        .get_mut("policy")
        .and_then(|p| p.as_table_mut())
        .context("smollm2-team.toml has no [policy]")?;
    let model = policy
        .get("model")
        .and_then(|m| m.as_str())
        .unwrap_or_default();
    let path = packed(model).with_context(|| format!("policy model {model} is not fetched"))?;
    policy.insert("model".into(), path.into());
    if let Some(team) = config.get_mut("team").and_then(|t| t.as_array_mut()) {
        team.retain_mut(|member| {
            let Some(member) = member.as_table_mut() else {
                return false;
            };
            let model = member
                .get("model")
                .and_then(|m| m.as_str())
                .unwrap_or_default();
            match packed(model) {
                Some(path) => {
                    member.insert("model".into(), path.into());
                    true
                }
                None => {
                    // Best effort: a closed stderr must not keep the member in.
                    let _ = progress(&format!(
                        "gpu-check: team member {model} left out of the GRPO benchmark"
                    ));
                    false
                }
            }
        });
    }
    let grpo = config
        .entry("grpo")
        .or_insert_with(|| toml::Value::Table(Default::default()));
    if let Some(grpo) = grpo.as_table_mut() {
        grpo.insert("steps".into(), 3.into());
    }
    std::fs::write(out.join("grpo.toml"), toml::to_string(&config)?)?;
    Ok(())
}

/// `dir` as a tar.xz. The x86 branch filter turns relative call targets absolute, so the
/// binaries, which share most of their code (Burn, cubecl) at different offsets, compress
/// against each other in the large dictionary: 511 MB of stripped binaries to 50 MB, where
/// plain `xz -6e` gives 90 MB (measured on the wgpu pack).
fn pack(dir: &Path, archive: &Path) -> Result<()> {
    let script = format!(
        "tar -C '{}' -cf - . | xz -T1 --x86 --lzma2=preset=9e,dict=512MiB > '{}'",
        dir.display(),
        archive.display()
    );
    run("bash", &["-o", "pipefail", "-c", &script])
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(walk(&path)?);
        } else {
            files.push(path);
        }
    }
    Ok(files)
}

fn folder_size(dir: &Path) -> Result<u64> {
    walk(dir)?
        .iter()
        .map(|f| Ok(std::fs::metadata(f)?.len()))
        .sum()
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grpo_config_points_at_packed_models_and_drops_the_rest() {
        let out = tempfile::tempdir().expect("temp dir");
        let included = ["smollm2-135m".to_string(), "gemma3-270m".to_string()];
        grpo_config(out.path(), Path::new("target/gpu-check"), &included).expect("written");
        let text = std::fs::read_to_string(out.path().join("grpo.toml")).expect("read");
        let config: toml::Table = toml::from_str(&text).expect("parses");
        assert_eq!(
            config["policy"]["model"].as_str(),
            Some("target/gpu-check/models/smollm2-135m")
        );
        let team = config["team"].as_array().expect("team");
        let models: Vec<&str> = team.iter().filter_map(|m| m["model"].as_str()).collect();
        // The demo's specialist (a run-directory path) is not packed.
        assert_eq!(
            models,
            [
                "target/gpu-check/models/smollm2-135m",
                "target/gpu-check/models/gemma3-270m"
            ]
        );
        assert_eq!(config["grpo"]["steps"].as_integer(), Some(3));

        let err = grpo_config(out.path(), Path::new("x"), &[]).expect_err("no policy model");
        assert!(err.to_string().contains("smollm2-135m"), "{err}");
    }
}
