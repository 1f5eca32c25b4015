//! The integration tests that run on the CPU only, as one binary (one link, one copy of
//! the generic model code instead of one per file).

#[path = "../common/mod.rs"]
mod common;

mod cli_lm;
mod cli_verify;
mod datasets;
mod demo;
mod grid;
mod mechanism;
mod memory;
mod phases;
mod reward_program;
mod run_config;
mod run_dir;
mod serve;
mod sft;
mod tensorboard;
