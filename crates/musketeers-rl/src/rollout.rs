//! The seam between "a batch of rollouts" (plain data from sampling and rewards) and "a policy
//! that scores token log-probs": the trainer, a test bandit or any model plugs in through
//! [`TokenScorer`], and [`grpo_step`] turns one into a loss.

use crate::RlError;
use crate::advantages::{Advantages, ScaleRewards, group_advantages};
use crate::logprobs::completion_mask;
use crate::loss::{GrpoLoss, GrpoLossConfig, LossInputs, grpo_loss};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::Serialize;

/// What sampling and scoring produced, `n = prompts × num_generations` completions in
/// consecutive groups.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollouts {
    /// The prompt of each completion (repeated within a group).
    pub prompt_ids: Vec<Vec<u32>>,
    pub completion_ids: Vec<Vec<u32>>,
    pub num_generations: usize,
    pub rewards: Vec<f32>,
    /// Log-probabilities of each completion token under the policy that sampled it (reused
    /// across `num_iterations`); `None` = the current policy, detached.
    pub old_logprobs: Option<Vec<Vec<f32>>>,
    /// Under the reference policy (for `beta > 0`).
    pub ref_logprobs: Option<Vec<Vec<f32>>>,
}

/// A policy as GRPO sees it.
pub trait TokenScorer<B: Backend> {
    /// Log-probabilities (differentiable) and entropies of every completion token given its
    /// prompt, `[n, width]`, zero past each completion's end.
    fn score(
        &self,
        rollouts: &Rollouts,
        width: usize,
    ) -> Result<(Tensor<B, 2>, Tensor<B, 2>), RlError>;
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct StepConfig {
    pub loss: GrpoLossConfig,
    pub scale_rewards: ScaleRewards,
    pub eos_token_ids: Vec<u32>,
    /// Exclude completions cut at the length limit from the loss.
    pub mask_truncated_completions: bool,
    /// Exclude groups whose rewards are all equal (their advantages are 0; dropping them keeps
    /// them out of the token counts that normalise the loss).
    pub drop_zero_std_groups: bool,
}

/// Per-step figures besides the loss's own metrics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutStats {
    pub reward_mean: f32,
    pub reward_std: f32,
    pub frac_reward_zero_std: f32,
    pub mean_completion_length: f64,
    /// Fraction of completions without eos.
    pub truncation_rate: f64,
}

fn padded<B: Backend>(
    rows: &[Vec<f32>],
    width: usize,
    name: &str,
    device: &B::Device,
) -> Result<Tensor<B, 2>, RlError> {
    let mut data = vec![0.0f32; rows.len() * width];
    for (r, row) in rows.iter().enumerate() {
        if row.len() > width {
            return Err(RlError::BadInput(format!(
                "{name}[{r}] has {} values for a completion of at most {width} tokens",
                row.len()
            )));
        }
        data[r * width..r * width + row.len()].copy_from_slice(row);
    }
    Ok(Tensor::from_data(
        TensorData::new(data, [rows.len(), width]),
        device,
    ))
}

/// Advantages, masks and the GRPO loss of `rollouts` under `scorer`.
pub fn grpo_step<B: Backend, S: TokenScorer<B> + ?Sized>(
    scorer: &S,
    rollouts: &Rollouts,
    config: &StepConfig,
    device: &B::Device,
) -> Result<(GrpoLoss<B>, Advantages, RolloutStats), RlError> {
    let n = rollouts.completion_ids.len();
    if rollouts.rewards.len() != n || rollouts.prompt_ids.len() != n {
        return Err(RlError::BadInput(format!(
            "{n} completions, {} rewards, {} prompts",
            rollouts.rewards.len(),
            rollouts.prompt_ids.len()
        )));
    }
    let advantages = group_advantages(
        &rollouts.rewards,
        rollouts.num_generations,
        config.scale_rewards,
    )?;
    let width = rollouts
        .completion_ids
        .iter()
        .map(Vec::len)
        .max()
        .unwrap_or(0)
        .max(1);
    let (mut mask, truncated) = completion_mask(
        &rollouts.completion_ids,
        &config.eos_token_ids,
        width,
        config.mask_truncated_completions,
    );
    if config.drop_zero_std_groups {
        for (row, zero) in advantages.zero_std_group.iter().enumerate() {
            if *zero {
                mask[row * width..(row + 1) * width].fill(0.0);
            }
        }
    }
    let (logps, entropies) = scorer.score(rollouts, width)?;
    let inputs = LossInputs {
        per_token_logps: logps,
        old_per_token_logps: rollouts
            .old_logprobs
            .as_ref()
            .map(|rows| padded(rows, width, "old_logprobs", device))
            .transpose()?,
        ref_per_token_logps: rollouts
            .ref_logprobs
            .as_ref()
            .map(|rows| padded(rows, width, "ref_logprobs", device))
            .transpose()?,
        completion_mask: Tensor::from_data(TensorData::new(mask, [n, width]), device),
        advantages: Tensor::from_data(TensorData::new(advantages.values.clone(), [n]), device),
        entropies: Some(entropies.detach()),
        num_items_in_batch: None,
    };
    let loss = grpo_loss(inputs, &config.loss)?;
    let stats = RolloutStats {
        reward_mean: advantages.reward_mean,
        reward_std: advantages.reward_std,
        frac_reward_zero_std: advantages.frac_reward_zero_std,
        mean_completion_length: rollouts.completion_ids.iter().map(Vec::len).sum::<usize>() as f64
            / n.max(1) as f64,
        truncation_rate: truncated.iter().filter(|t| **t).count() as f64 / n.max(1) as f64,
    };
    Ok((loss, advantages, stats))
}
