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

impl Rollouts {
    /// Rows `rows` of the batch (whole groups, for a micro-batch).
    pub fn rows(&self, rows: std::ops::Range<usize>) -> Self {
        let pick = |v: &Option<Vec<Vec<f32>>>| v.as_ref().map(|v| v[rows.clone()].to_vec());
        Self {
            prompt_ids: self.prompt_ids[rows.clone()].to_vec(),
            completion_ids: self.completion_ids[rows.clone()].to_vec(),
            num_generations: self.num_generations,
            rewards: self.rewards[rows.clone()].to_vec(),
            old_logprobs: pick(&self.old_logprobs),
            ref_logprobs: pick(&self.ref_logprobs),
        }
    }
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
    check_lengths(rollouts)?;
    let advantages = group_advantages(
        &rollouts.rewards,
        rollouts.num_generations,
        config.scale_rewards,
    )?;
    let (loss, _) = grpo_micro_step(scorer, rollouts, &advantages, config, None, device)?;
    let stats = rollout_stats(rollouts, &advantages, config);
    Ok((loss, advantages, stats))
}

fn check_lengths(rollouts: &Rollouts) -> Result<(), RlError> {
    let n = rollouts.completion_ids.len();
    if rollouts.rewards.len() != n || rollouts.prompt_ids.len() != n {
        return Err(RlError::BadInput(format!(
            "{n} completions, {} rewards, {} prompts",
            rollouts.rewards.len(),
            rollouts.prompt_ids.len()
        )));
    }
    Ok(())
}

/// The figures of a whole batch of rollouts.
pub fn rollout_stats(
    rollouts: &Rollouts,
    advantages: &Advantages,
    config: &StepConfig,
) -> RolloutStats {
    let n = rollouts.completion_ids.len();
    let truncated = rollouts
        .completion_ids
        .iter()
        .filter(|c| !c.iter().any(|t| config.eos_token_ids.contains(t)))
        .count();
    RolloutStats {
        reward_mean: advantages.reward_mean,
        reward_std: advantages.reward_std,
        frac_reward_zero_std: advantages.frac_reward_zero_std,
        mean_completion_length: rollouts.completion_ids.iter().map(Vec::len).sum::<usize>() as f64
            / n.max(1) as f64,
        truncation_rate: truncated as f64 / n.max(1) as f64,
    }
}

/// The tokens of `rollouts` that the loss counts (after masking truncated completions and,
/// with `drop_zero_std_groups`, groups without signal): the normaliser of `dapo` and `bnpo`.
pub fn counted_tokens(rollouts: &Rollouts, advantages: &Advantages, config: &StepConfig) -> f64 {
    let (mask, _) = loss_mask(rollouts, advantages, config);
    mask.iter().map(|&m| f64::from(m)).sum()
}

/// Row-major `[n, width]` mask of the tokens the loss counts, and `width` (the longest
/// completion, at least 1).
fn loss_mask(
    rollouts: &Rollouts,
    advantages: &Advantages,
    config: &StepConfig,
) -> (Vec<f32>, usize) {
    let width = rollouts
        .completion_ids
        .iter()
        .map(Vec::len)
        .max()
        .unwrap_or(0)
        .max(1);
    let (mut mask, _) = completion_mask(
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
    (mask, width)
}

/// The GRPO loss of `rollouts` (part of a batch) with `advantages` computed over the whole
/// batch, and the number of tokens it counts. `num_items_in_batch`: the whole batch's counted
/// tokens, so that `dapo` losses of the parts sum to the loss of the batch (TRL's gradient
/// accumulation); `None` = this part's own.
pub fn grpo_micro_step<B: Backend, S: TokenScorer<B> + ?Sized>(
    scorer: &S,
    rollouts: &Rollouts,
    advantages: &Advantages,
    config: &StepConfig,
    num_items_in_batch: Option<f64>,
    device: &B::Device,
) -> Result<(GrpoLoss<B>, f64), RlError> {
    check_lengths(rollouts)?;
    let n = rollouts.completion_ids.len();
    if advantages.values.len() != n || advantages.zero_std_group.len() != n {
        return Err(RlError::BadInput(format!(
            "{} advantages for {n} completions",
            advantages.values.len()
        )));
    }
    let (mask, width) = loss_mask(rollouts, advantages, config);
    let counted = mask.iter().map(|&m| f64::from(m)).sum::<f64>();
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
        num_items_in_batch,
    };
    Ok((grpo_loss(inputs, &config.loss)?, counted))
}
