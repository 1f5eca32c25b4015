//! The GRPO loss of TRL's `GRPOTrainer._compute_loss` (token-level importance sampling):
//! clipped surrogate, k3 KL to the reference policy, and the `loss_type` normalisations.

use crate::RlError;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

/// How per-token losses become one number (TRL's `loss_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossType {
    /// Mean over each sequence's tokens, then over sequences.
    Grpo,
    /// Sum over all tokens / number of tokens in the batch.
    Bnpo,
    /// Sum over all tokens / (sequences × `max_completion_length`).
    DrGrpo,
    /// Sum over all tokens / tokens in the whole generation batch (`num_items_in_batch`).
    #[default]
    Dapo,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpoLossConfig {
    /// KL coefficient; 0 skips the reference policy.
    pub beta: f64,
    /// Lower clip: ratios below `1 - epsilon` stop helping.
    pub epsilon: f64,
    /// Upper clip, `1 + epsilon_high` (DAPO's clip-higher); `None` = `epsilon`.
    pub epsilon_high: Option<f64>,
    pub loss_type: LossType,
    /// For `dr_grpo`'s normaliser.
    pub max_completion_length: usize,
}

impl Default for GrpoLossConfig {
    fn default() -> Self {
        Self {
            beta: 0.0,
            epsilon: 0.2,
            epsilon_high: None,
            loss_type: LossType::Dapo,
            max_completion_length: 256,
        }
    }
}

impl GrpoLossConfig {
    pub fn validate(&self) -> Result<(), RlError> {
        let high = self.epsilon_high.unwrap_or(self.epsilon);
        if !(self.beta >= 0.0 && self.epsilon >= 0.0 && self.epsilon < 1.0 && high >= 0.0) {
            return Err(RlError::BadConfig(format!(
                "need beta >= 0 and 0 <= epsilon < 1, epsilon_high >= 0 (got beta {}, epsilon {}, epsilon_high {high})",
                self.beta, self.epsilon
            )));
        }
        if self.loss_type == LossType::DrGrpo && self.max_completion_length == 0 {
            return Err(RlError::BadConfig(
                "dr_grpo needs max_completion_length > 0".into(),
            ));
        }
        Ok(())
    }
}

/// What the loss is computed from, for `n` completions padded to `T` tokens.
#[derive(Debug, Clone)]
pub struct LossInputs<B: Backend> {
    /// `[n, T]`: the current policy's log-probabilities of the sampled tokens (with gradient).
    pub per_token_logps: Tensor<B, 2>,
    /// `[n, T]`: the policy that sampled them; `None` = the current one, detached
    /// (`num_iterations = 1`).
    pub old_per_token_logps: Option<Tensor<B, 2>>,
    /// `[n, T]`: the reference policy; needed when `beta > 0`.
    pub ref_per_token_logps: Option<Tensor<B, 2>>,
    /// `[n, T]`: 1 for tokens that count (see [`crate::logprobs::completion_mask`]).
    pub completion_mask: Tensor<B, 2>,
    /// `[n]`
    pub advantages: Tensor<B, 1>,
    /// `[n, T]`: per-position entropies, for the metrics only.
    pub entropies: Option<Tensor<B, 2>>,
    /// Tokens in the whole generation batch (`dapo`); `None` = this batch's mask sum.
    pub num_items_in_batch: Option<f64>,
}

/// The metrics TRL logs for a loss computation, as means over counted tokens.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GrpoMetrics {
    pub loss: f64,
    /// Mean k3 KL to the reference (when `beta > 0`).
    pub kl: Option<f64>,
    pub entropy: Option<f64>,
    /// Tokens whose ratio fell below `1 - epsilon` with a negative advantage.
    pub clip_ratio_low_mean: f64,
    /// Tokens whose ratio rose above `1 + epsilon_high` with a positive advantage.
    pub clip_ratio_high_mean: f64,
    pub clip_ratio_region_mean: f64,
    /// Over sequences: the smallest per-sequence low-clip fraction, the largest high-clip one.
    pub clip_ratio_low_min: f64,
    pub clip_ratio_high_max: f64,
}

#[derive(Debug, Clone)]
pub struct GrpoLoss<B: Backend> {
    /// `[1]`, differentiable with respect to `per_token_logps`.
    pub loss: Tensor<B, 1>,
    pub metrics: GrpoMetrics,
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap_or_default()
}

/// The GRPO loss and its metrics.
pub fn grpo_loss<B: Backend>(
    inputs: LossInputs<B>,
    config: &GrpoLossConfig,
) -> Result<GrpoLoss<B>, RlError> {
    config.validate()?;
    let [n, t] = inputs.per_token_logps.dims();
    let reference = check_inputs(&inputs, config)?;
    let logps = inputs.per_token_logps;
    let mask = inputs.completion_mask;
    let old = inputs
        .old_per_token_logps
        .unwrap_or_else(|| logps.clone().detach());
    let advantages = inputs.advantages.reshape([n, 1]).expand([n, t]);
    let (low, high) = (
        1.0 - config.epsilon,
        1.0 + config.epsilon_high.unwrap_or(config.epsilon),
    );
    let ratio = (logps.clone() - old).exp(); // coef_1
    let clipped = ratio.clone().clamp(low, high); // coef_2
    let surrogate = (ratio.clone() * advantages.clone())
        .min_pair(clipped * advantages.clone())
        .neg();
    let kl = reference.map(|r| {
        let diff = r - logps.clone();
        diff.clone().exp() - diff - 1.0
    });
    let per_token = match &kl {
        Some(kl) => surrogate + kl.clone() * config.beta,
        None => surrogate,
    };
    let masked = per_token * mask.clone();
    let tokens_per_seq = mask.clone().sum_dim(1).clamp_min(1.0); // [n, 1]
    let loss = match config.loss_type {
        LossType::Grpo => (masked.sum_dim(1) / tokens_per_seq).mean(),
        LossType::Bnpo => masked.sum() / mask.clone().sum().clamp_min(1.0),
        LossType::DrGrpo => masked.sum() / (n * config.max_completion_length) as f64,
        LossType::Dapo => {
            let items = inputs
                .num_items_in_batch
                .unwrap_or_else(|| f64::from(host(mask.clone().sum())[0]))
                .max(1.0);
            masked.sum() / items
        }
    };

    // Metrics, on the host from detached values.
    let mask_h = HostMask::new(host(mask), n, t);
    let clips = ClipFlags::new(&host(ratio.detach()), &host(advantages.detach()), low, high);
    let metrics = GrpoMetrics {
        loss: f64::from(host(loss.clone().detach())[0]),
        kl: kl.map(|kl| mask_h.masked_mean(&host(kl.detach()))),
        entropy: inputs.entropies.map(|e| mask_h.masked_mean(&host(e))),
        clip_ratio_low_mean: mask_h.masked_mean(&clips.is_low),
        clip_ratio_high_mean: mask_h.masked_mean(&clips.is_high),
        clip_ratio_region_mean: mask_h.masked_mean(&clips.region),
        clip_ratio_low_min: mask_h
            .per_sequence(&clips.is_low)
            .into_iter()
            .fold(f64::NAN, f64::min),
        clip_ratio_high_max: mask_h
            .per_sequence(&clips.is_high)
            .into_iter()
            .fold(f64::NAN, f64::max),
    };
    Ok(GrpoLoss { loss, metrics })
}

/// Checks every input's shape against `per_token_logps` `[n, T]`; returns the reference
/// log-probabilities when `beta > 0` needs them.
fn check_inputs<B: Backend>(
    inputs: &LossInputs<B>,
    config: &GrpoLossConfig,
) -> Result<Option<Tensor<B, 2>>, RlError> {
    let [n, t] = inputs.per_token_logps.dims();
    let check = |name: &str, dims: [usize; 2]| {
        if dims == [n, t] {
            Ok(())
        } else {
            Err(RlError::BadInput(format!(
                "{name} is {dims:?}, per_token_logps is [{n}, {t}]"
            )))
        }
    };
    check("completion_mask", inputs.completion_mask.dims())?;
    if let Some(old) = &inputs.old_per_token_logps {
        check("old_per_token_logps", old.dims())?;
    }
    if inputs.advantages.dims() != [n] {
        return Err(RlError::BadInput(format!(
            "advantages are {:?}, expected [{n}]",
            inputs.advantages.dims()
        )));
    }
    match (&inputs.ref_per_token_logps, config.beta > 0.0) {
        (Some(r), true) => {
            check("ref_per_token_logps", r.dims())?;
            Ok(Some(r.clone()))
        }
        (None, true) => Err(RlError::BadInput(
            "beta > 0 needs the reference policy's log-probabilities".into(),
        )),
        (_, false) => Ok(None),
    }
}

/// The completion mask `[n, T]` on the host, for means over counted tokens.
struct HostMask {
    values: Vec<f32>,
    n: usize,
    t: usize,
    /// Counted tokens (at least 1).
    counted: f64,
}

impl HostMask {
    fn new(values: Vec<f32>, n: usize, t: usize) -> Self {
        let counted: f64 = values.iter().map(|&m| f64::from(m)).sum::<f64>().max(1.0);
        Self {
            values,
            n,
            t,
            counted,
        }
    }

    /// The mean of `values` `[n, T]` over counted tokens.
    fn masked_mean(&self, values: &[f32]) -> f64 {
        values
            .iter()
            .zip(&self.values)
            .map(|(&v, &m)| f64::from(v) * f64::from(m))
            .sum::<f64>()
            / self.counted
    }

    /// Per-sequence means; a sequence with no counted tokens gives NaN, which TRL's
    /// nanmin/nanmax skip.
    fn per_sequence(&self, values: &[f32]) -> Vec<f64> {
        let t = self.t;
        (0..self.n)
            .map(|row| {
                let (mut sum, mut count) = (0.0, 0.0);
                for col in 0..t {
                    let m = f64::from(self.values[row * t + col]);
                    sum += f64::from(values[row * t + col]) * m;
                    count += m;
                }
                sum / count
            })
            .filter(|v| !v.is_nan())
            .collect()
    }
}

/// Per token (1 or 0): whether the clip applied.
struct ClipFlags {
    /// The ratio fell below `low` with a negative advantage.
    is_low: Vec<f32>,
    /// The ratio rose above `high` with a positive advantage.
    is_high: Vec<f32>,
    /// Either.
    region: Vec<f32>,
}

impl ClipFlags {
    fn new(ratio: &[f32], advantages: &[f32], low: f64, high: f64) -> Self {
        let is_low: Vec<f32> = ratio
            .iter()
            .zip(advantages)
            .map(|(&r, &a)| f32::from(u8::from(f64::from(r) < low && a < 0.0)))
            .collect();
        let is_high: Vec<f32> = ratio
            .iter()
            .zip(advantages)
            .map(|(&r, &a)| f32::from(u8::from(f64::from(r) > high && a > 0.0)))
            .collect();
        let region: Vec<f32> = is_low
            .iter()
            .zip(&is_high)
            .map(|(a, b)| a.max(*b))
            .collect();
        Self {
            is_low,
            is_high,
            region,
        }
    }
}
