//! n-Musketeers orchestration: a frozen team, the interface and a policy trained with GRPO
//! (`train`, `system`), run from a TOML config into a run directory (`run`, `eval`,
//! `report`), and the experiments (`demo`, `grid`) and surfaces (`serve`) built on them.
//! docs/ARCHITECTURE.md says what each module may import.

pub mod demo;
pub mod error;
pub mod eval;
pub mod grid;
mod host;
pub mod model;
pub mod policy;
pub mod progress;
pub mod report;
pub mod reward_program;
pub mod run;
pub mod run_config;
pub mod rundir;
pub mod scoring;
pub mod serve;
pub mod sft;
pub mod system;
pub mod tasks;
pub mod team;
pub mod tensorboard;
pub mod train;

pub use error::TrainError;
pub use scoring::{ScoreLine, score_lines};
