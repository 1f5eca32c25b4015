//! GRPO (group relative policy optimization) as TRL's `GRPOTrainer` computes it, generic over
//! the Burn backend.
//!
//! - [`advantages`]: rewards of G samples per prompt to advantages (`scale_rewards`).
//! - [`logprobs`]: token log-probabilities and entropies from logits at a temperature, and the
//!   completion mask (up to and including the first eos).
//! - [`loss`]: the clipped surrogate with `epsilon`/`epsilon_high`, the k3 KL to a reference
//!   policy, the `grpo`/`bnpo`/`dr_grpo`/`dapo` normalisations, and the metrics TRL logs.
//! - [`schedule`]: learning-rate schedules (`lr_scheduler_type`, `warmup_steps`).
//! - [`rollout`]: the seam between a batch of rollouts and any policy that scores tokens.

pub mod advantages;
pub mod clip;
pub mod logprobs;
pub mod loss;
pub mod rollout;
pub mod schedule;

pub use advantages::{Advantages, ScaleRewards, group_advantages};
pub use loss::{GrpoLoss, GrpoLossConfig, GrpoMetrics, LossInputs, LossType, grpo_loss};
pub use rollout::{RolloutStats, Rollouts, StepConfig, TokenScorer, grpo_step};
pub use schedule::{LrSchedule, LrSchedulerType};

#[derive(Debug, thiserror::Error)]
pub enum RlError {
    #[error("GRPO input: {0}")]
    BadInput(String),
    #[error("GRPO config: {0}")]
    BadConfig(String),
}
