//! Running: a [`crate::run_config::RunConfig`] resolved and trained into a run directory
//! ([`run`], [`rundir`]), evaluated ([`eval`]), reported ([`report`], [`tensorboard`]), with
//! the tasks and rewards it scores ([`tasks`], [`reward_program`], [`scoring`]).

pub mod eval;
pub mod report;
pub mod reward_program;
pub mod run;
pub mod rundir;
pub mod scoring;
pub mod tasks;
pub mod tensorboard;
