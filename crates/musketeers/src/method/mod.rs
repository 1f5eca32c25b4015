//! The method: the frozen team, the systems that give the policy its context, the trained
//! team as a model ([`model::TeamModel`]), and the GRPO step that trains it. Its only file
//! I/O is models and checkpoint files (`model`, `train::params`): no run directory, no run
//! loop, no CLI.

pub mod autodiff_lock;
pub mod memory;
pub mod model;
pub mod policy;
pub mod sft;
pub mod system;
pub mod team;
pub mod train;
