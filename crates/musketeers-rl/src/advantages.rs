//! Group-relative advantages, as TRL's `_generate_and_score_completions` computes them.

use crate::RlError;
use serde::{Deserialize, Serialize};

/// How rewards are scaled after subtracting the group mean (TRL's `scale_rewards`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScaleRewards {
    /// Divide by the group's standard deviation (+1e-4).
    #[default]
    Group,
    /// Divide by the whole batch's standard deviation (+1e-4).
    Batch,
    /// Do not divide (Dr. GRPO).
    None,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Advantages {
    /// One per completion, in the order of the rewards.
    pub values: Vec<f32>,
    /// Per completion: whether its group's rewards were all equal (no learning signal; the
    /// trainer may drop such groups).
    pub zero_std_group: Vec<bool>,
    /// TRL's `frac_reward_zero_std`: the fraction of completions whose scaling std is zero
    /// (the group's std, or the batch's with `ScaleRewards::Batch`).
    pub frac_reward_zero_std: f32,
    pub reward_mean: f32,
    /// Unbiased standard deviation of all rewards.
    pub reward_std: f32,
}

impl Advantages {
    /// The advantages of rows `rows`, keeping the whole batch's statistics.
    pub fn rows(&self, rows: std::ops::Range<usize>) -> Self {
        Self {
            values: self.values[rows.clone()].to_vec(),
            zero_std_group: self.zero_std_group[rows].to_vec(),
            ..self.clone()
        }
    }
}

/// Unbiased (Bessel-corrected) mean and standard deviation, accumulated in f64.
fn mean_std(values: &[f32]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let var = values
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / (n - 1.0);
    (mean, var.sqrt())
}

/// Advantages of `rewards`, laid out as consecutive groups of `num_generations` samples of
/// one prompt each.
pub fn group_advantages(
    rewards: &[f32],
    num_generations: usize,
    scale: ScaleRewards,
) -> Result<Advantages, RlError> {
    if num_generations == 0 || rewards.is_empty() || !rewards.len().is_multiple_of(num_generations)
    {
        return Err(RlError::BadInput(format!(
            "{} rewards do not split into groups of {num_generations}",
            rewards.len()
        )));
    }
    if let Some(i) = rewards.iter().position(|r| !r.is_finite()) {
        return Err(RlError::BadInput(format!(
            "reward {i} is {} (rewards must be finite)",
            rewards[i]
        )));
    }
    let (batch_mean, batch_std) = mean_std(rewards);
    let mut values = Vec::with_capacity(rewards.len());
    let mut zero_std_group = Vec::with_capacity(rewards.len());
    let mut zero_scale = 0usize;
    for group in rewards.chunks(num_generations) {
        let (mean, group_std) = mean_std(group);
        let std = match scale {
            ScaleRewards::Group | ScaleRewards::None => group_std,
            ScaleRewards::Batch => batch_std,
        };
        for &r in group {
            let centred = (f64::from(r) - mean) as f32;
            values.push(match scale {
                ScaleRewards::None => centred,
                _ => centred / (std as f32 + 1e-4),
            });
            // torch.isclose(std, 0): |std| <= 1e-8.
            zero_std_group.push(group_std <= 1e-8);
            zero_scale += usize::from(std <= 1e-8);
        }
    }
    Ok(Advantages {
        frac_reward_zero_std: zero_scale as f32 / rewards.len() as f32,
        values,
        zero_std_group,
        reward_mean: batch_mean as f32,
        reward_std: batch_std as f32,
    })
}
