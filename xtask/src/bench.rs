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
    /// Prefill/decode tokens/s of a SmolLM2-135M-shaped model at batch 1, 8, 32 (CPU), beside
    /// the matmul rate and transformers (eager PyTorch) measured in the same run.
    Lm {
        #[arg(long, default_value = "1,8,32")]
        batches: String,
        #[arg(long, default_value_t = 64)]
        new_tokens: usize,
        /// Skip the transformers reference (no virtual environment is created).
        #[arg(long)]
        no_python: bool,
        /// A real model instead of random weights: a fetched name (smollm2-135m), a .gguf file
        /// or a Hugging Face directory; both sides run it dequantized to f32.
        #[arg(long)]
        model: Option<String>,
        /// How our side stores the weight matrices: f32 (as transformers), f16 or bf16
        /// (products in that dtype, the rest f32; see README, Compact frozen weights).
        #[arg(long, default_value = "f32")]
        weights: String,
        /// Also run llama.cpp (llama-cpp-python, built from source into a throwaway venv on
        /// first use) at batch 1 on the same GGUF, rewritten with `--weights`' precision.
        #[arg(long, requires = "model")]
        llama_cpp: bool,
        /// Ours with mimalloc as the allocator (the `mimalloc` feature; README, Benchmarks).
        #[arg(long)]
        mimalloc: bool,
    },
    /// Seconds per GRPO step on SmolLM2-135M-Instruct (4 prompts x 8 generations x 64 new
    /// tokens, LoRA rank 8, beta 0.04, f32, CPU), beside TRL's GRPOTrainer on the same
    /// configuration in the same run. Needs `cargo xtask models fetch smollm2-135m`.
    Grpo {
        /// Steps per side; the first is reported but left out of the mean (warm-up).
        #[arg(long, default_value_t = 3)]
        steps: u64,
        /// Skip the TRL reference (no virtual environment is created).
        #[arg(long)]
        no_python: bool,
        /// The policy: a fetched catalog model (e.g. qwen2.5-coder-0.5b).
        #[arg(long, default_value = "smollm2-135m")]
        model: String,
        /// Real completion lengths: sums of three two-digit numbers, a prompt that asks for
        /// the working, and up to 128 new tokens on both sides (the default: one-digit sums
        /// answered in a few tokens, mostly prefill).
        #[arg(long)]
        long: bool,
        /// Ours with mimalloc as the allocator (the `mimalloc` feature; README, Benchmarks).
        #[arg(long)]
        mimalloc: bool,
    },
    /// Data parallelism: the same run as one process with every core's threads and as
    /// `mpirun -np N` ranks of one thread each (same global batch), seconds per step and the
    /// all-reduce time per step. Needs Open MPI (`openmpi-bin libopenmpi-dev libclang-dev`).
    Dp {
        /// The run config (its models must be fetched).
        #[arg(long, default_value = "configs/smollm2-single.toml")]
        config: String,
        #[arg(long, default_value_t = 4)]
        steps: u64,
        #[arg(long, default_value_t = 2)]
        ranks: usize,
        /// Override a config key, as `musketeers train --set`.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// A load test of `musketeers serve` on 127.0.0.1: one client against C concurrent
    /// clients (half streaming), failures, p50/p99 latency, completion tokens/s.
    Serve {
        /// What to serve: a fetched model name (the policy alone).
        #[arg(long, default_value = "smollm2-135m")]
        model: String,
        #[arg(long, default_value_t = 32)]
        clients: usize,
        #[arg(long, default_value_t = 500)]
        requests: usize,
        #[arg(long, default_value_t = 32)]
        max_tokens: usize,
    },
}

/// One virtual environment for the PyTorch references (transformers, TRL).
const TORCH_PACKAGES: [&str; 6] = [
    "torch",
    "transformers",
    "safetensors",
    "gguf",
    "trl==1.16.0",
    "peft",
];

pub fn run(bench: Bench) -> Result<()> {
    match bench {
        Bench::Verify { seconds, no_python } => verify(seconds, no_python),
        Bench::Lm {
            batches,
            new_tokens,
            no_python,
            model,
            weights,
            llama_cpp,
            mimalloc,
        } => lm(
            &batches,
            new_tokens,
            no_python,
            model.as_deref(),
            &weights,
            llama_cpp,
            allocator(mimalloc),
        ),
        Bench::Grpo {
            steps,
            no_python,
            model,
            long,
            mimalloc,
        } => grpo(
            steps,
            no_python,
            &model,
            if long { &GRPO_LONG } else { &GRPO_SHORT },
            allocator(mimalloc),
        ),
        Bench::Dp {
            config,
            steps,
            ranks,
            overrides,
        } => crate::bench_dp::dp(&config, steps, ranks, &overrides),
        Bench::Serve {
            model,
            clients,
            requests,
            max_tokens,
        } => crate::bench_serve::serve(&model, clients, requests, max_tokens),
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

/// A throwaway venv under target/ with `packages`, kept between runs; returns its python.
fn venv(name: &str, packages: &[&str]) -> Result<String> {
    let venv = root().join("target").join(name);
    let python = venv.join("bin/python");
    if !python.exists() {
        run_cmd("python3", &["-m", "venv", &venv.to_string_lossy()])?;
    }
    // Install again whenever the wanted package list changes.
    let marker = venv.join("musketeers-packages.txt");
    let wanted = packages.join("\n");
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(wanted.as_str()) {
        let mut args = vec!["install", "--quiet"];
        args.extend(packages);
        run_cmd(&venv.join("bin/pip").to_string_lossy(), &args)?;
        std::fs::write(&marker, &wanted)?;
    }
    Ok(python.to_string_lossy().into_owned())
}

/// reasoning-gym's own scorers on the same fixture.
fn python_reference(fixture: &Path, seconds: f64) -> Result<BTreeMap<String, f64>> {
    let python = venv("bench-venv", &["reasoning-gym==0.1.25"])?;
    let script = root().join("scripts/bench/reasoning_gym_scores.py");
    rates(&output(
        &python,
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

fn lm(
    batches: &str,
    new_tokens: usize,
    no_python: bool,
    model: Option<&str>,
    weights: &str,
    llama_cpp: bool,
    allocator: Allocator,
) -> Result<()> {
    let model = model
        .map(|m| musketeers_catalog::resolve(m).map_err(anyhow::Error::from))
        .transpose()?;
    let model_arg = model
        .as_ref()
        .map_or(String::new(), |p| p.to_string_lossy().into_owned());
    if llama_cpp {
        // Before our side runs, so a wrong flag costs no minutes.
        check_llama_cpp_inputs(&model_arg, weights)?;
    }
    let lines = generation_bench(batches, new_tokens, &model_arg, weights, allocator)?;
    let rates = MachineRates::from_lines(&lines)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let reference: Vec<Value> = if no_python {
        Vec::new()
    } else {
        transformers_reference(batches, new_tokens, threads, &model_arg)?
    };
    let MachineRates { gflops, bandwidth } = rates;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}, ours with {weights} weight matrices (transformers f32) and the {} allocator, CPU ({threads} threads), {new_tokens} sampled tokens; matmul 1024^3: {gflops:.0} GFLOP/s; memory read: {bandwidth:.1} GB/s",
        model
            .as_ref()
            .map_or("SmolLM2-135M shape, random weights".to_string(), |p| p
                .display()
                .to_string()),
        allocator.name()
    )?;
    let bytes_per_weight = if weights == "f32" { 4.0 } else { 2.0 };
    write_lm_table(&mut out, &lines, &reference, &rates, bytes_per_weight)?;
    if llama_cpp {
        let line = llama_cpp_reference(&model_arg, weights, new_tokens, threads)?;
        write_llama_cpp_line(&mut out, &lines, &line, weights)?;
    }
    write_peak_rss(
        &mut out,
        (&lines, "peak_rss_bytes"),
        (&reference, "peak_rss_bytes"),
        "transformers",
    )
}

/// The allocator our side runs with: the system's (the default build) or mimalloc.
#[derive(Clone, Copy)]
enum Allocator {
    System,
    Mimalloc,
}

fn allocator(mimalloc: bool) -> Allocator {
    if mimalloc {
        Allocator::Mimalloc
    } else {
        Allocator::System
    }
}

impl Allocator {
    fn name(self) -> &'static str {
        match self {
            Allocator::System => "system",
            Allocator::Mimalloc => "mimalloc",
        }
    }

    /// The cargo arguments that build with it (`feature`: the crate's `mimalloc` feature).
    fn cargo_features(self, feature: &str) -> Vec<&str> {
        match self {
            Allocator::System => Vec::new(),
            Allocator::Mimalloc => vec!["--features", feature],
        }
    }
}

/// A side's lines and the key its peak resident memory is reported under.
type PeakSource<'a> = (&'a [Value], &'a str);

/// Each side's peak resident memory, as its own process measured it: the highest value of
/// its key over its lines (a training run reports its peak so far at every step).
fn write_peak_rss(
    out: &mut impl Write,
    ours: PeakSource<'_>,
    reference: PeakSource<'_>,
    reference_name: &str,
) -> Result<()> {
    let peak = |(lines, key): PeakSource<'_>| {
        lines
            .iter()
            .filter_map(|l| l[key].as_f64())
            .reduce(f64::max)
            .map_or("-".to_string(), |b| format!("{:.2} GB", b / 1e9))
    };
    writeln!(
        out,
        "peak RSS: ours {}, {reference_name} {}",
        peak(ours),
        peak(reference)
    )?;
    Ok(())
}

/// The lines of JSON in `text`, skipping the rest.
fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Our generation bench (`cargo bench`); its lines of JSON.
fn generation_bench(
    batches: &str,
    new_tokens: usize,
    model_arg: &str,
    weights: &str,
    allocator: Allocator,
) -> Result<Vec<Value>> {
    let text = std::process::Command::new("cargo")
        .args([
            "bench",
            "--quiet",
            "-p",
            "musketeers-lm",
            "--bench",
            "generation",
        ])
        .args(allocator.cargo_features("musketeers-lm/mimalloc"))
        .env("BENCH_BATCHES", batches)
        .env("BENCH_NEW_TOKENS", new_tokens.to_string())
        .env("BENCH_MODEL", model_arg)
        .env("BENCH_WEIGHTS", weights)
        .current_dir(root())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())?;
    Ok(json_lines(&text))
}

/// The machine's matmul and memory read rates, as the generation bench measured them.
struct MachineRates {
    gflops: f64,
    bandwidth: f64,
}

impl MachineRates {
    fn from_lines(lines: &[Value]) -> Result<Self> {
        let gflops = lines
            .iter()
            .find_map(|l| l["matmul_gflops_1024"].as_f64())
            .context("the bench printed no matmul rate")?;
        let bandwidth = lines
            .iter()
            .find_map(|l| l["memory_read_gbs"].as_f64())
            .context("the bench printed no memory rate")?;
        Ok(Self { gflops, bandwidth })
    }

    /// Decode tokens/s at `batch` on the roofline.
    fn decode_roofline(&self, batch: f64, bytes_per_weight: f64) -> f64 {
        // Decode roofline per step: stream every weight once (tied head included) or do
        // 2 flops per weight per sequence, whichever takes longer.
        let params = 134.5e6;
        let step = (params * bytes_per_weight / (self.bandwidth * 1e9))
            .max(2.0 * params * batch / (self.gflops * 1e9));
        batch / step
    }
}

/// transformers' generation on the same batches; its lines of JSON.
fn transformers_reference(
    batches: &str,
    new_tokens: usize,
    threads: usize,
    model_arg: &str,
) -> Result<Vec<Value>> {
    let python = venv("bench-venv-lm", &TORCH_PACKAGES)?;
    let script = root().join("scripts/bench/transformers_generate.py");
    Ok(json_lines(&output(
        &python,
        &[
            &script.to_string_lossy(),
            batches,
            &new_tokens.to_string(),
            &threads.to_string(),
            model_arg,
        ],
        None,
    )?))
}

/// What `--llama-cpp` can run: a GGUF file, f32 or f16 weights.
fn check_llama_cpp_inputs(gguf: &str, weights: &str) -> Result<()> {
    anyhow::ensure!(
        gguf.ends_with(".gguf"),
        "--llama-cpp needs a GGUF model (got {gguf})"
    );
    anyhow::ensure!(
        matches!(weights, "f32" | "f16"),
        "--llama-cpp runs f32 or f16 weights (got {weights})"
    );
    Ok(())
}

/// llama.cpp at batch 1 on `gguf` rewritten with `weights`' precision; its line of JSON.
fn llama_cpp_reference(
    gguf: &str,
    weights: &str,
    new_tokens: usize,
    threads: usize,
) -> Result<Value> {
    let python = venv("bench-venv-llamacpp", &["llama-cpp-python"])?;
    let script = root().join("scripts/bench/llama_cpp_generate.py");
    let converted = root().join("target/bench-llamacpp");
    json_lines(&output(
        &python,
        &[
            &script.to_string_lossy(),
            gguf,
            weights,
            &new_tokens.to_string(),
            &threads.to_string(),
            &converted.to_string_lossy(),
        ],
        None,
    )?)
    .into_iter()
    .next()
    .context("the llama.cpp script printed no result")
}

/// Batch-1 decode beside llama.cpp's, as the ratio of time per token.
fn write_llama_cpp_line(
    out: &mut impl Write,
    ours: &[Value],
    llama_cpp: &Value,
    weights: &str,
) -> Result<()> {
    let rate = |v: &Value, key: &str| v[key].as_f64().unwrap_or(f64::NAN);
    let ours_decode = ours
        .iter()
        .find(|l| l["batch"].as_u64() == Some(1))
        .map_or(f64::NAN, |l| rate(l, "decode_tokens_per_sec"));
    let theirs = rate(llama_cpp, "decode_tokens_per_sec");
    writeln!(
        out,
        "llama.cpp, {weights} weights, batch 1: prefill {:.1} tok/s, decode {theirs:.1} tok/s \
         (ours {ours_decode:.1}): ours takes {:.2}x llama.cpp's time per token; its peak RSS {:.2} GB",
        rate(llama_cpp, "prefill_tokens_per_sec"),
        theirs / ours_decode,
        rate(llama_cpp, "peak_rss_bytes") / 1e9
    )?;
    Ok(())
}

/// A row per batch: our prefill and decode rates beside transformers' and the roofline.
fn write_lm_table(
    out: &mut impl Write,
    lines: &[Value],
    reference: &[Value],
    rates: &MachineRates,
    bytes_per_weight: f64,
) -> Result<()> {
    writeln!(
        out,
        "{:>5} {:>14} {:>14} {:>14} {:>14} {:>8} {:>14}",
        "batch",
        "prefill tok/s",
        "hf prefill",
        "decode tok/s",
        "hf decode",
        "decode x",
        "decode roof"
    )?;
    for line in lines.iter().filter(|l| l.get("batch").is_some()) {
        let batch = line["batch"].as_u64().unwrap_or(0);
        let hf = reference
            .iter()
            .find(|r| r["batch"].as_u64() == Some(batch));
        let f = |v: Option<&Value>, k: &str| v.and_then(|v| v[k].as_f64());
        let show = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.1}"));
        let (p, d) = (
            f(Some(line), "prefill_tokens_per_sec"),
            f(Some(line), "decode_tokens_per_sec"),
        );
        let (hp, hd) = (
            f(hf, "prefill_tokens_per_sec"),
            f(hf, "decode_tokens_per_sec"),
        );
        let ratio = d
            .zip(hd)
            .map_or("-".to_string(), |(a, b)| format!("{:.2}x", a / b));
        writeln!(
            out,
            "{batch:>5} {:>14} {:>14} {:>14} {:>14} {ratio:>8} {:>14.0}",
            show(p),
            show(hp),
            show(d),
            show(hd),
            rates.decode_roofline(batch as f64, bytes_per_weight)
        )?;
    }
    Ok(())
}

/// The run config of the GRPO bench: the issue's step, in `single` mode (the policy's step;
/// a fused step adds the team's forward passes, which TRL has no counterpart for).
const GRPO_CONFIG: &str = r#"
mode = "single"
answer_extraction = "tag-or-last-number"
[policy]
model = "{model}"
prompt_template = {template}
lora = { rank = 8, alpha = 16.0 }
[grpo]
prompts_per_step = 4
num_generations = 8
max_completion_length = {max_length}
temperature = 1.0
beta = 0.04
learning_rate = 1e-5
save_steps = 1000
[eval]
problems = 0
[[tasks]]
name = "chain_sum"
options = { min_terms = {terms}, max_terms = {terms}, min_digits = {digits}, max_digits = {digits} }
"#;

/// What the GRPO bench asks the policy, the same on both sides.
struct GrpoWork {
    /// `chain_sum`'s terms and digits per term.
    terms: usize,
    digits: usize,
    template: &'static str,
    max_length: usize,
}

/// The default: one-digit sums, answered in a few tokens.
const GRPO_SHORT: GrpoWork = GrpoWork {
    terms: 2,
    digits: 1,
    template: "{question}\nGive only the final answer, as <answer>...</answer>.",
    max_length: 64,
};

/// `--long`: sums worth working out, and a prompt that asks for the working.
const GRPO_LONG: GrpoWork = GrpoWork {
    terms: 3,
    digits: 2,
    template: "{question}\nWork it out step by step, explaining each addition, then give the \
               final answer as <answer>...</answer>.",
    max_length: 128,
};

impl GrpoWork {
    fn config(&self, model: &str) -> String {
        GRPO_CONFIG
            .replace("{model}", model)
            .replace("{template}", &Value::from(self.template).to_string())
            .replace("{max_length}", &self.max_length.to_string())
            .replace("{terms}", &self.terms.to_string())
            .replace("{digits}", &self.digits.to_string())
    }
}

fn mean_after_first(xs: &[f64]) -> f64 {
    let rest = if xs.len() > 1 { &xs[1..] } else { xs };
    rest.iter().sum::<f64>() / rest.len().max(1) as f64
}

fn grpo(
    steps: u64,
    no_python: bool,
    name: &str,
    work_done: &GrpoWork,
    allocator: Allocator,
) -> Result<()> {
    let model = musketeers_catalog::resolve(name)
        .with_context(|| format!("the GRPO bench's policy: `cargo xtask models fetch {name}`"))?;
    let mut build = vec!["build", "--release", "--quiet", "-p", "musketeers"];
    build.extend(allocator.cargo_features("musketeers/mimalloc"));
    run_cmd("cargo", &build)?;
    let bin = crate::util::target_dir().join("release/musketeers");
    let bin = bin.to_string_lossy();
    let work = root().join("target/bench-grpo");
    std::fs::create_dir_all(&work)?;
    let config = work.join("config.toml");
    std::fs::write(&config, work_done.config(name))?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());

    let lines = our_grpo_steps(&bin, &config, steps, &work.join("ours"))?;
    let trl_lines: Vec<Value> = if no_python {
        Vec::new()
    } else {
        trl_grpo_steps(&bin, &work, &model, steps, threads, work_done)?
    };

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "GRPO step, {name} (f32 from its GGUF on both sides), CPU ({threads} threads): 4 prompts x 8 generations x <={} tokens, LoRA r8, beta 0.04; chain_sum of {} {}-digit terms; ours with the {} allocator",
        work_done.max_length,
        work_done.terms,
        work_done.digits,
        allocator.name()
    )?;
    write_grpo_steps(&mut out, &lines, &trl_lines)?;
    write_grpo_means(&mut out, &lines, &trl_lines)?;
    write_peak_rss(
        &mut out,
        (&lines, "peak_memory_bytes"),
        (&trl_lines, "peak_rss_bytes"),
        "TRL",
    )
}

/// Each line's number at `key`, where it has one.
fn column(lines: &[Value], key: &str) -> Vec<f64> {
    lines.iter().filter_map(|l| l[key].as_f64()).collect()
}

/// Our GRPO steps (`musketeers train`) into a fresh `dir`; its metrics lines.
fn our_grpo_steps(bin: &str, config: &Path, steps: u64, dir: &Path) -> Result<Vec<Value>> {
    let _ = std::fs::remove_dir_all(dir);
    run_cmd(
        bin,
        &[
            "train",
            "--config",
            &config.to_string_lossy(),
            "--steps",
            &steps.to_string(),
            "--out",
            &dir.to_string_lossy(),
            // The dashboard's render thread polls without sleeping: keep it off the timing.
            "--progress",
            "plain",
        ],
    )?;
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl"))?;
    Ok(json_lines(&metrics))
}

/// TRL's GRPOTrainer on the same configuration and the prompts of our task sampler; its
/// lines of JSON.
fn trl_grpo_steps(
    bin: &str,
    work: &Path,
    model: &Path,
    steps: u64,
    threads: usize,
    work_done: &GrpoWork,
) -> Result<Vec<Value>> {
    let prompts = work.join("prompts.jsonl");
    let (terms, digits) = (work_done.terms, work_done.digits);
    let options = [
        format!("min_terms={terms}"),
        format!("max_terms={terms}"),
        format!("min_digits={digits}"),
        format!("max_digits={digits}"),
    ];
    let sample = output(
        bin,
        &[
            "verify",
            "sample",
            "--task",
            "chain_sum",
            "--n",
            "256",
            "--seed",
            "0",
            "--config",
            &options[0],
            "--config",
            &options[1],
            "--config",
            &options[2],
            "--config",
            &options[3],
        ],
        None,
    )?;
    std::fs::write(&prompts, sample)?;
    let python = venv("bench-venv-lm", &TORCH_PACKAGES)?;
    let script = root().join("scripts/bench/trl_grpo_step.py");
    Ok(json_lines(&output(
        &python,
        &[
            &script.to_string_lossy(),
            &model.to_string_lossy(),
            &prompts.to_string_lossy(),
            &steps.to_string(),
            &threads.to_string(),
            work_done.template,
            &work_done.max_length.to_string(),
        ],
        None,
    )?))
}

/// A row per step: our seconds and sampling seconds beside TRL's seconds.
fn write_grpo_steps(out: &mut impl Write, lines: &[Value], trl_lines: &[Value]) -> Result<()> {
    let ours = column(lines, "step_seconds");
    let sampling = column(lines, "sample_seconds");
    let trl = column(trl_lines, "seconds");
    writeln!(
        out,
        "{:>5} {:>12} {:>14} {:>12}",
        "step", "ours s", "ours sampling", "TRL s"
    )?;
    for i in 0..ours.len().max(trl.len()) {
        let show = |v: Option<&f64>| v.map_or("-".to_string(), |x| format!("{x:.1}"));
        writeln!(
            out,
            "{:>5} {:>12} {:>14} {:>12}",
            i + 1,
            show(ours.get(i)),
            show(sampling.get(i)),
            show(trl.get(i))
        )?;
    }
    Ok(())
}

/// Our phases, both sides' completion lengths and step seconds, as means.
fn write_grpo_means(out: &mut impl Write, lines: &[Value], trl_lines: &[Value]) -> Result<()> {
    let phases = [
        ("team", "team_seconds"),
        ("sampling", "sample_seconds"),
        ("reference", "reference_seconds"),
        ("policy forward + loss", "loss_seconds"),
        ("backward + optimizer", "update_seconds"),
    ];
    let breakdown: Vec<String> = phases
        .iter()
        .map(|(label, key)| format!("{label} {:.1}", mean_after_first(&column(lines, key))))
        .collect();
    writeln!(
        out,
        "ours, mean seconds after the first step: {}",
        breakdown.join(", ")
    )?;
    let our_lengths: Vec<f64> = lines
        .iter()
        .filter_map(|l| l["rollouts"]["mean_completion_length"].as_f64())
        .collect();
    let trl_lengths = column(trl_lines, "mean_length");
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    writeln!(
        out,
        "mean completion length (tokens): ours {:.1}, TRL {}",
        mean(&our_lengths),
        if trl_lengths.is_empty() {
            "-".to_string()
        } else {
            format!("{:.1}", mean(&trl_lengths))
        }
    )?;
    let (ours, trl) = (column(lines, "step_seconds"), column(trl_lines, "seconds"));
    let (a, b) = (mean_after_first(&ours), mean_after_first(&trl));
    if trl.is_empty() {
        writeln!(out, "mean after the first step: ours {a:.1} s")?;
    } else {
        writeln!(
            out,
            "mean after the first step: ours {a:.1} s, TRL {b:.1} s: {:.2}x TRL's speed",
            b / a
        )?;
        // Lengths are sampled, so the sides' steps do different amounts of work: per
        // generated token is the fairer ratio when they differ.
        let (la, lb) = (
            mean_after_first(&our_lengths),
            mean_after_first(&trl_lengths),
        );
        if la > 0.0 && lb > 0.0 {
            writeln!(
                out,
                "per completion token (after the first step): ours {:.3} s, TRL {:.3} s: {:.2}x TRL's speed",
                a / la,
                b / lb,
                (b / lb) / (a / la)
            )?;
        }
    }
    Ok(())
}
