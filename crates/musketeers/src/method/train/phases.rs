//! The phases of one GRPO step, in the order [`super::Trainer::train_step`] runs them:
//! prompts -> team states and context (a [`System`]) -> rollouts -> rewards -> advantages ->
//! reference log-probs -> loss and gradients -> (all-reduce) -> clipping -> update -> report.
//! Each is a function of what the earlier ones made, tested on its own below and in
//! `tests/backends/train_step.rs`.

use burn::optim::GradientsParams;
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use musketeers_lm::generate::{Generation, GenerationConfig, generate_part};
use musketeers_lm::sampling::SamplingConfig;
use musketeers_lm::tokenizer::TextTokenizer;
use musketeers_lm::{Llama, SoftContext};
use musketeers_rl::advantages::{Advantages, group_advantages};
use musketeers_rl::clip::clip_factor;
use musketeers_rl::rollout::grpo_micro_step;
use musketeers_rl::{GrpoMetrics, LossType, Rollouts};
use std::borrow::Cow;
use std::time::Instant;

use super::params::{Group, PerGroup, TrainedRef};
use super::reward::{Reward, Scored};
use super::{StepSettings, TrainError, combine_metrics, host_f32};
use crate::method::policy::PrefixedPolicy;
use crate::method::system::{Context, Inferred, System};
use musketeers_fusion::FusionOutput;

pub use crate::method::model::encode_prompts;

/// The sampling seed of optimizer step `step`.
pub fn sampling_seed(settings: &StepSettings, step: u64) -> u64 {
    settings.seed.wrapping_mul(1_000_003).wrapping_add(step)
}

/// The router's seed of optimizer step `step`.
pub fn routing_seed(settings: &StepSettings, step: u64) -> u64 {
    settings.seed.wrapping_mul(7_919).wrapping_add(step)
}

/// Rollouts: G completions per prompt from `[C ; prompt]` on the inner backend. The first
/// prompt is prompt `first_prompt` of the step's whole batch (another process may sample the
/// ones before it), which fixes the random stream of every sample.
pub fn sample_rollouts<B: Backend>(
    sampler: &Llama<B>,
    prompt_ids: &[Vec<u32>],
    context: Option<SoftContext<B>>,
    settings: &StepSettings,
    step: u64,
    first_prompt: usize,
    device: &B::Device,
) -> Result<Generation, TrainError> {
    Ok(generate_part(
        sampler,
        prompt_ids,
        context,
        &GenerationConfig {
            max_new_tokens: settings.max_completion_length,
            num_return_sequences: settings.num_generations,
            eos_token_ids: settings.grpo.eos_token_ids.clone(),
            sampling: SamplingConfig {
                temperature: settings.temperature,
                top_k: None,
                top_p: None,
                seed: sampling_seed(settings, step),
            },
        },
        None,
        (first_prompt * settings.num_generations) as u64,
        device,
    )?)
}

/// Rewards: each completion decoded and scored (in parallel); completion `r` answers prompt
/// `r / group`.
pub fn score_rewards(
    tokenizer: &TextTokenizer,
    completions: &[Vec<u32>],
    group: usize,
    reward: &dyn Reward,
) -> Result<(Vec<String>, Scored), TrainError> {
    let texts = completions
        .iter()
        .map(|t| tokenizer.decode(t, true))
        .collect::<Result<Vec<_>, _>>()?;
    let items: Vec<(usize, &str)> = texts
        .iter()
        .enumerate()
        .map(|(i, text)| (i / group.max(1), text.as_str()))
        .collect();
    let scored = reward.score_batch(&items)?;
    if scored.total.len() != texts.len() || scored.parts.iter().any(|(_, v)| v.len() != texts.len())
    {
        return Err(TrainError::BadInput(format!(
            "the reward scored {} of {} completions",
            scored.total.len(),
            texts.len()
        )));
    }
    Ok((texts, scored))
}

/// Advantages: each completion's reward against its group's (and, with
/// `scale_rewards = "batch"`, the batch's spread).
pub fn advantages(rewards: &[f32], settings: &StepSettings) -> Result<Advantages, TrainError> {
    Ok(group_advantages(
        rewards,
        settings.num_generations,
        settings.grpo.scale_rewards,
    )?)
}

/// The rollouts GRPO scores: each prompt repeated for its `group` completions.
pub fn group_rollouts(
    prompt_ids: &[Vec<u32>],
    completions: Vec<Vec<u32>>,
    rewards: &[f32],
    group: usize,
) -> Rollouts {
    Rollouts {
        prompt_ids: prompt_ids
            .iter()
            .flat_map(|ids| std::iter::repeat_n(ids.clone(), group))
            .collect(),
        completion_ids: completions,
        num_generations: group,
        rewards: rewards.to_vec(),
        old_logprobs: None,
        ref_logprobs: None,
    }
}

/// Reference: the frozen base policy's log-probabilities of every completion token, scored
/// on the policy's backend (so that with unchanged adapters the two agree to the bit and the
/// KL and its gradient are exactly zero).
///
/// Which context the reference reads is the caller's choice ([`reference_context`]).
pub fn reference_logprobs<B: AutodiffBackend>(
    reference: &Llama<B>,
    context: Option<SoftContext<B>>,
    rollouts: &Rollouts,
    temperature: f32,
) -> Result<Vec<Vec<f32>>, TrainError> {
    let width = rollouts
        .completion_ids
        .iter()
        .map(Vec::len)
        .max()
        .unwrap_or(1)
        .max(1);
    let scorer = PrefixedPolicy {
        model: reference,
        context: context.map(|c| c.map(|t| t.detach(), |g| g.detach())),
        temperature: f64::from(temperature),
        with_gradient: false,
    };
    let (logps, _) = musketeers_rl::TokenScorer::score(&scorer, rollouts, width)?;
    let values = host_f32(logps);
    Ok(rollouts
        .completion_ids
        .iter()
        .enumerate()
        .map(|(r, c)| values[r * width..r * width + c.len()].to_vec())
        .collect())
}

/// The context the KL reference reads: the policy's step-0 self. A plain prefix changes the
/// policy from its first step, so its reference reads the same `C` (detached) and the KL
/// measures the adapters alone. Gated context starts as no context at all, so its
/// reference reads none: the base model the run started from, and the KL anchors the
/// whole fused policy (adapters, gates and `C`) to it.
pub fn reference_context<B: Backend>(context: Option<SoftContext<B>>) -> Option<SoftContext<B>> {
    context.filter(|c| !c.is_gated())
}

/// How this process's prompts sit in the step's whole batch, which the loss is normalised
/// over: the whole batch's prompts and counted tokens (all processes together).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchShare {
    pub total_prompts: usize,
    pub total_tokens: f64,
    /// The batch is split (across micro-batches here, or across processes) even if this
    /// process holds one part.
    pub split: bool,
}

/// What the loss phase hands on.
pub struct LossOutcome {
    /// The gradient of the batch loss (this process's share of it).
    pub grads: GradientsParams,
    pub metrics: GrpoMetrics,
    /// This process's counted tokens.
    pub counted_tokens: f64,
    pub routing_entropy: Option<f32>,
    pub loss_seconds: f64,
    pub backward_seconds: f64,
    /// The highest peak resident memory of a micro-batch's forward (`loss`) and `backward`
    /// passes.
    pub memory: super::PhasePeaks,
}

/// Loss and gradients over micro-batches (gradient accumulation) of whole prompt groups, or
/// of equal parts of one group: one backward pass holds the activations of one micro-batch
/// only. The system's own loss term is added to the first micro-batch's.
#[allow(clippy::too_many_arguments)]
pub fn loss_and_gradients<B: AutodiffBackend>(
    system: &dyn System<B>,
    trained: TrainedRef<'_, B>,
    context: &Context<B>,
    rollouts: &Rollouts,
    advantages: &Advantages,
    settings: &StepSettings,
    share: BatchShare,
    device: &B::Device,
) -> Result<LossOutcome, TrainError> {
    let _graphs = crate::method::autodiff_lock::hold();
    let s = settings;
    let g = s.num_generations.max(1);
    let n = rollouts.completion_ids.len();
    let chunk = part_rows(s, n)?;
    let accumulating = chunk < n || share.split;
    let items = share.total_tokens.max(1.0);
    let extra = system.extra_loss(context, &rollouts.rewards, g);
    let micro_batches = MicroBatches {
        trained: &trained,
        context,
        whole_context: context.tokens(),
        rollouts,
        advantages,
        settings,
        share,
        device,
        rows: n,
        chunk,
        accumulating,
        items,
    };
    let mut grads = GradientsParams::new();
    let mut parts: Vec<(GrpoMetrics, f64)> = Vec::new();
    let mut counted_tokens = 0.0;
    let (mut loss_seconds, mut backward_seconds) = (0.0, 0.0);
    let mut memory = super::PhasePeaks::default();
    for (index, first) in (0..n).step_by(chunk).enumerate() {
        let part_start = Instant::now();
        let (mut term, metrics, counted) = memory.measure("loss", || micro_batches.loss(first))?;
        counted_tokens += counted;
        parts.push((metrics, counted));
        if let (0, Some(extra)) = (index, &extra) {
            term = term + extra.term.clone();
        }
        loss_seconds += part_start.elapsed().as_secs_f64();
        let backward_start = Instant::now();
        memory.measure("backward", || {
            let mut backward = term.backward();
            trained.accumulate(&mut grads, trained.gradients(&mut backward));
        });
        backward_seconds += backward_start.elapsed().as_secs_f64();
    }
    Ok(LossOutcome {
        grads,
        metrics: combine_metrics(&parts),
        counted_tokens,
        routing_entropy: extra.and_then(|e| e.routing_entropy),
        loss_seconds,
        backward_seconds,
        memory,
    })
}

/// Rows (completions) per backward pass: whole groups, or equal parts of one.
fn part_rows(s: &StepSettings, n: usize) -> Result<usize, TrainError> {
    let g = s.num_generations.max(1);
    let rows = match (s.micro_batch_completions, s.micro_batch_prompts) {
        (Some(completions), _) => completions,
        (None, Some(prompts)) => prompts.saturating_mul(g),
        (None, None) => n,
    };
    if !crate::run_config::cuts_groups_evenly(rows, g) {
        return Err(TrainError::BadInput(format!(
            "micro-batches of {rows} completions neither hold whole groups of {g} nor cut one \
             into equal parts"
        )));
    }
    Ok(rows.min(n.max(1)))
}

/// A step's batch cut into micro-batches of `chunk` rows, with what each one's loss reads.
struct MicroBatches<'a, B: AutodiffBackend> {
    trained: &'a TrainedRef<'a, B>,
    context: &'a Context<B>,
    /// The whole batch's C, read as is when the batch is one part.
    whole_context: Option<SoftContext<B>>,
    rollouts: &'a Rollouts,
    advantages: &'a Advantages,
    settings: &'a StepSettings,
    share: BatchShare,
    device: &'a B::Device,
    /// This process's completions (prompts × `num_generations`).
    rows: usize,
    /// Completions per micro-batch: whole groups, or a part of one.
    chunk: usize,
    /// The loss is summed over parts (of this process's batch or of the processes').
    accumulating: bool,
    /// The whole batch's counted tokens (at least 1).
    items: f64,
}

impl<B: AutodiffBackend> MicroBatches<'_, B> {
    /// The loss term of the micro-batch from row `first` on (weighed as its share of the
    /// batch loss), its metrics (loss weighed alike) and its counted tokens.
    fn loss(&self, first: usize) -> Result<(Tensor<B, 1>, GrpoMetrics, f64), TrainError> {
        let s = self.settings;
        let g = s.num_generations.max(1);
        let rows = first..(first + self.chunk).min(self.rows);
        let rows_here = rows.len();
        // The prompts the part reads: whole groups, or the one group it is a part of.
        let (first_prompt, prompts_here) = (first / g, rows_here.div_ceil(g));
        let split_here = self.chunk < self.rows;
        // The whole batch is borrowed, not copied, when it is one part.
        let (part, part_advantages) = if split_here {
            let mut part = self.rollouts.rows(rows.clone());
            // A part of a group is a smaller group of the same prompt to the scorer.
            part.num_generations = g.min(rows_here);
            (Cow::Owned(part), Cow::Owned(self.advantages.rows(rows)))
        } else {
            (Cow::Borrowed(self.rollouts), Cow::Borrowed(self.advantages))
        };
        // One C per prompt: the scorer shares each prompt's prefix across its group. A
        // micro-batch recomputes its rows of C, so that each backward pass has its own graph
        // through the interface.
        let part_context = if split_here {
            self.context
                .rows(self.trained.interface, first_prompt, prompts_here)?
        } else {
            self.whole_context.clone()
        };
        let scorer = PrefixedPolicy {
            model: self.trained.policy,
            context: part_context,
            temperature: f64::from(s.temperature),
            with_gradient: true,
        };
        let normaliser =
            (self.accumulating && s.grpo.loss.loss_type == LossType::Dapo).then_some(self.items);
        let (loss, counted) = grpo_micro_step(
            &scorer,
            &part,
            &part_advantages,
            &s.grpo,
            normaliser,
            self.device,
        )?;
        let weight = self.weight(rows_here, counted);
        let term = if weight == 1.0 {
            loss.loss.clone()
        } else {
            loss.loss.clone() * weight
        };
        let mut metrics = loss.metrics.clone();
        metrics.loss *= weight;
        Ok((term, metrics, counted))
    }

    /// Each part's share of the batch loss: dapo is normalised by the batch's tokens
    /// already; per-sequence means weigh by sequences, bnpo by counted tokens.
    fn weight(&self, rows_here: usize, counted: f64) -> f64 {
        if !self.accumulating {
            1.0
        } else {
            match self.settings.grpo.loss.loss_type {
                LossType::Dapo => 1.0,
                LossType::Grpo | LossType::DrGrpo => {
                    let total_rows = self.share.total_prompts * self.settings.num_generations;
                    rows_here as f64 / total_rows.max(1) as f64
                }
                LossType::Bnpo => counted / self.items,
            }
        }
    }
}

impl std::fmt::Debug for LossOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LossOutcome")
            .field("gradients", &self.grads.len())
            .field("metrics", &self.metrics)
            .field("counted_tokens", &self.counted_tokens)
            .finish_non_exhaustive()
    }
}

/// Gradient norms before clipping: per group, and over the whole set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradNorms {
    pub groups: PerGroup<Option<f64>>,
    pub total: f64,
}

/// Clipping: the global norm over every trained parameter (torch's `clip_grad_norm_`), and
/// the gradients scaled down to `max_norm` when above it. A non-finite norm is refused.
pub fn clip_gradients<B: AutodiffBackend>(
    trained: TrainedRef<'_, B>,
    grads: &mut GradientsParams,
    max_norm: f32,
    step: u64,
) -> Result<GradNorms, TrainError> {
    let squared = trained.squared_norms(grads);
    let part = |g: Group| squared[g as usize];
    let total = (part(Group::Adapters).unwrap_or(0.0)
        + part(Group::Interface).unwrap_or(0.0)
        + part(Group::Router).unwrap_or(0.0))
    .sqrt();
    if !total.is_finite() {
        return Err(TrainError::NonFinite {
            step,
            what: "the gradient norm",
            value: total,
        });
    }
    let factor = clip_factor(total, f64::from(max_norm));
    if factor < 1.0 {
        trained.scale(grads, factor);
    }
    Ok(GradNorms {
        groups: squared.map(|s| s.map(f64::sqrt)),
        total,
    })
}

/// Utilization per expert (batch mean) and the routing entropy (natural log, and over ln
/// n), from the interface's attention; a router's own entropy replaces the interface's.
pub fn utilization<B: AutodiffBackend>(
    context: &Context<B>,
    router_entropy: Option<f32>,
    experts: usize,
) -> (Vec<f32>, Option<f32>, Option<f32>) {
    let fused = context.fused.as_ref().map(|f| FusionOutput {
        context: f.context.clone().inner(),
        attention: f.attention.clone().inner(),
        expert_spans: f.expert_spans.clone(),
        gates: f.gates.clone().map(|g| g.inner()),
    });
    Inferred {
        fused,
        router_entropy,
    }
    .utilization(experts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use musketeers_rl::rollout::StepConfig;
    use musketeers_rl::{LrSchedule, ScaleRewards};

    fn settings(g: usize) -> StepSettings {
        StepSettings {
            num_generations: g,
            max_completion_length: 4,
            temperature: 1.0,
            learning_rate: 1e-3,
            max_grad_norm: 1.0,
            interface_learning_rate: 1e-3,
            schedule: LrSchedule::default(),
            grpo: StepConfig::default(),
            seed: 3,
            micro_batch_prompts: None,
            micro_batch_completions: None,
        }
    }

    #[test]
    fn micro_batches_hold_whole_groups_or_equal_parts_of_one() {
        let with = |prompts: Option<usize>, completions: Option<usize>| {
            part_rows(
                &StepSettings {
                    micro_batch_prompts: prompts,
                    micro_batch_completions: completions,
                    ..settings(8)
                },
                32,
            )
        };
        assert_eq!(with(None, None).expect("whole"), 32);
        assert_eq!(with(Some(1), None).expect("a group"), 8);
        assert_eq!(with(None, Some(4)).expect("half a group"), 4);
        assert_eq!(with(None, Some(16)).expect("two groups"), 16);
        assert_eq!(with(Some(9), None).expect("more than the batch"), 32);
        // Completions win over prompts.
        assert_eq!(with(Some(1), Some(2)).expect("both"), 2);
        for uneven in [3, 12, 0] {
            let err = with(None, Some(uneven)).expect_err("uneven").to_string();
            assert!(err.contains("equal parts"), "{uneven}: {err}");
        }
    }

    #[test]
    fn rollouts_repeat_each_prompt_for_its_group_and_advantages_are_per_group() {
        let s = StepSettings {
            grpo: StepConfig {
                scale_rewards: ScaleRewards::None,
                ..StepConfig::default()
            },
            ..settings(2)
        };
        let prompts = vec![vec![1, 2], vec![3]];
        let completions = vec![vec![4], vec![5], vec![6], vec![7]];
        let rewards = [1.0, 0.0, 0.5, 0.5];
        let rollouts = group_rollouts(&prompts, completions, &rewards, 2);
        assert_eq!(
            rollouts.prompt_ids,
            vec![vec![1, 2], vec![1, 2], vec![3], vec![3]]
        );
        assert_eq!(
            advantages(&rewards, &s).expect("advantages").values,
            vec![0.5, -0.5, 0.0, 0.0]
        );
        assert!(
            advantages(&[0.0; 3], &s).is_err(),
            "3 rewards are not groups of 2"
        );
    }

    #[test]
    fn seeds_differ_per_step_and_per_use() {
        let s = settings(2);
        assert_ne!(sampling_seed(&s, 0), sampling_seed(&s, 1));
        assert_ne!(sampling_seed(&s, 4), routing_seed(&s, 4));
        assert_eq!(sampling_seed(&s, 7), sampling_seed(&settings(8), 7));
    }
}
