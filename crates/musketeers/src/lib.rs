//! n-Musketeers orchestration: the pieces of the `musketeers` CLI that are worth reusing.
//!
//! Today: scoring saved completions in bulk ([`score_lines`]) and the policy as GRPO scores it
//! ([`policy::PrefixedPolicy`]). The trainer, team config and reports land here as they are
//! built (see docs/ARCHITECTURE.md).

pub mod collab;
pub mod demo;
pub mod eval;
pub mod grid;
pub mod policy;
pub mod progress;
pub mod report;
pub mod reward_program;
pub mod route;
pub mod run;
pub mod run_config;
pub mod rundir;
pub mod scoring;
pub mod serve;
pub mod sft;
pub mod system;
pub mod tensorboard;
pub mod train;

pub use scoring::{ScoreLine, score_lines};
