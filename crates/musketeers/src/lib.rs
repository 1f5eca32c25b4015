//! n-Musketeers orchestration, in four rooms (docs/ARCHITECTURE.md says what each may import):
//!
//! - [`method`]: the frozen team, the systems, the trained team as a model, the GRPO step;
//! - [`running`]: a TOML config trained into a run directory, evaluated and reported;
//! - [`experiments`]: the offline demo and the paper's grid, built on runs;
//! - [`serve`]: a trained team behind an OpenAI-compatible endpoint (the surface the library
//!   offers; the CLI lives in the binary).
//!
//! Below them all: `error`, `run_config` (the config schema every room reads) and
//! `progress` (what a long wait reports).
//!
//! Each module is also re-exported at the crate root under its own name
//! (`musketeers::train`, `musketeers::run_config`, ...): the paths users write.

pub mod error;
pub mod experiments;
mod host;
pub mod method;
pub mod progress;
pub mod run_config;
pub mod running;
pub mod serve;

pub use error::TrainError;
pub use experiments::{demo, grid};
pub use method::{memory, model, policy, sft, system, team, train};
pub use running::{eval, report, reward_program, run, rundir, scoring, tasks, tensorboard};
pub use scoring::{ScoreLine, score_lines};
