//! One n-Musketeers GRPO step, following the design's data flow: the frozen team reads each
//! prompt once; the latent interface turns their states into context tokens `C` (with
//! autodiff); the policy samples G completions per prompt from `[C ; prompt]` on the inner
//! backend; rewards score them; GRPO's loss flows back into the LoRA adapters and the
//! interface, and AdamW (with gradient clipping) updates only those.

use burn::module::{AutodiffModule, Module};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsAccumulator, GradientsParams, Optimizer};
use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder, RecorderError};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use musketeers_fusion::stats::{batch_utilization, expert_utilization, routing_entropy};
use musketeers_fusion::{ExpertInput, LatentInterface};
use musketeers_lm::generate::{GenerationConfig, generate_with_prefix};
use musketeers_lm::pooling::{Pooling, pool};
use musketeers_lm::precision::to_f32;
use musketeers_lm::sampling::SamplingConfig;
use musketeers_lm::tokenizer::TextTokenizer;
use musketeers_lm::{Llama, Precision};
use musketeers_rl::clip::{clip_factor, scale_grads, squared_grad_norm};
use musketeers_rl::rollout::{
    RolloutStats, StepConfig, counted_tokens, grpo_micro_step, rollout_stats,
};
use musketeers_rl::{GrpoMetrics, LossType, LrSchedule, Rollouts};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::path::Path;
use std::time::Instant;

use crate::policy::PrefixedPolicy;
use crate::route::{Router, choose, routed_inputs, sentence_embeddings};

fn host_f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap_or_default()
}

/// The metrics of a step from those of its micro-batches, each with the tokens it counted:
/// token-weighted means, the losses (already weighted) summed, extremes kept.
fn combine_metrics(parts: &[(GrpoMetrics, f64)]) -> GrpoMetrics {
    if let [(only, _)] = parts {
        return only.clone();
    }
    let total: f64 = parts.iter().map(|(_, n)| n).sum::<f64>().max(1.0);
    let mean =
        |f: &dyn Fn(&GrpoMetrics) -> f64| parts.iter().map(|(m, n)| f(m) * n).sum::<f64>() / total;
    let optional = |f: &dyn Fn(&GrpoMetrics) -> Option<f64>| {
        parts
            .iter()
            .map(|(m, n)| f(m).map(|v| v * n))
            .sum::<Option<f64>>()
            .map(|s| s / total)
    };
    GrpoMetrics {
        loss: parts.iter().map(|(m, _)| m.loss).sum(),
        kl: optional(&|m| m.kl),
        entropy: optional(&|m| m.entropy),
        clip_ratio_low_mean: mean(&|m| m.clip_ratio_low_mean),
        clip_ratio_high_mean: mean(&|m| m.clip_ratio_high_mean),
        clip_ratio_region_mean: mean(&|m| m.clip_ratio_region_mean),
        clip_ratio_low_min: parts
            .iter()
            .map(|(m, _)| m.clip_ratio_low_min)
            .fold(f64::NAN, f64::min),
        clip_ratio_high_max: parts
            .iter()
            .map(|(m, _)| m.clip_ratio_high_max)
            .fold(f64::NAN, f64::max),
    }
}

fn rms<B: Backend, const D: usize>(t: Tensor<B, D>) -> f32 {
    t.powi_scalar(2).mean().sqrt().into_scalar().elem::<f32>()
}

/// `attention` `[batch, heads, latents, tokens]` -> per latent, the entropy over tokens (mean
/// over heads and batch) divided by `ln tokens`.
fn latent_attention_entropy<B: Backend>(attention: Tensor<B, 4>) -> Vec<f32> {
    let [b, h, k, t] = attention.dims();
    if t < 2 {
        return vec![0.0; k];
    }
    let p = attention;
    let entropy = (p.clone() * p.clamp_min(1e-30).log())
        .sum_dim(3)
        .neg()
        .reshape([b * h, k])
        .mean_dim(0)
        .reshape([k])
        / (t as f64).ln();
    host_f32(entropy)
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Lm(#[from] musketeers_lm::LmError),
    #[error(transparent)]
    Fusion(#[from] musketeers_fusion::FusionError),
    #[error(transparent)]
    Rl(#[from] musketeers_rl::RlError),
    #[error("{0}")]
    BadInput(String),
    /// A non-finite loss or gradient: the step is refused before any parameter changes, so
    /// the model and the last checkpoint stay good.
    #[error("step {step}: {what} is not finite ({value}); no parameter was updated")]
    NonFinite {
        step: u64,
        what: &'static str,
        value: f64,
    },
}

/// What an expert passes on: one pooled vector, or all of its prompt tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpertReadout {
    Last,
    First,
    Mean,
    All,
}

/// A frozen expert: its model, its own tokenizer, which hidden state it passes on and how.
#[derive(Debug)]
pub struct TeamMember<B: Backend> {
    pub name: String,
    pub model: Llama<B>,
    pub tokenizer: TextTokenizer,
    /// `hidden_states` index, negative from the end.
    pub layer: isize,
    pub readout: ExpertReadout,
}

impl<B: Backend> TeamMember<B> {
    /// Hidden states for `prompts` (left-padded), `[prompts, 1 or T, width]` and their mask.
    pub fn read(
        &self,
        prompts: &[String],
        device: &B::Device,
    ) -> Result<ExpertInput<B>, TrainError> {
        let ids = prompts
            .iter()
            .map(|p| self.tokenizer.encode(p, true))
            .collect::<Result<Vec<_>, _>>()?;
        let width = ids.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let n = prompts.len();
        let mut flat = Vec::with_capacity(n * width);
        let mut mask = Vec::with_capacity(n * width);
        for row in &ids {
            let pad = width - row.len();
            flat.extend(std::iter::repeat_n(0i64, pad).chain(row.iter().map(|&t| i64::from(t))));
            mask.extend(std::iter::repeat_n(0i64, pad).chain(std::iter::repeat_n(1i64, row.len())));
        }
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [n, width]), device);
        let mask = Tensor::<B, 2, Int>::from_data(TensorData::new(mask, [n, width]), device);
        // The interface is f32 whatever precision the expert runs in.
        let hidden = to_f32(self.model.hidden_state(
            self.model.embed(ids),
            Some(mask.clone()),
            self.layer,
        )?);
        let pooled = |how| {
            let d = hidden.dims()[2];
            pool(hidden.clone(), mask.clone(), how).reshape([n, 1, d])
        };
        Ok(match self.readout {
            ExpertReadout::Last => ExpertInput {
                hidden: pooled(Pooling::Last),
                mask: None,
            },
            ExpertReadout::First => ExpertInput {
                hidden: pooled(Pooling::First),
                mask: None,
            },
            ExpertReadout::Mean => ExpertInput {
                hidden: pooled(Pooling::Mean),
                mask: None,
            },
            ExpertReadout::All => ExpertInput {
                hidden,
                mask: Some(mask),
            },
        })
    }
}

/// The GRPO settings of a run, named as TRL names them.
#[derive(Debug, Clone, PartialEq)]
pub struct StepSettings {
    pub num_generations: usize,
    pub max_completion_length: usize,
    pub temperature: f32,
    pub learning_rate: f64,
    /// Clip of the global gradient norm over every trained parameter (LoRA, interface,
    /// router), as TRL's `max_grad_norm`.
    pub max_grad_norm: f32,
    /// The interface's peak learning rate (the router's is `ROUTER_LR_SCALE` times the
    /// adapters').
    pub interface_learning_rate: f64,
    /// The multiplier of every learning rate per step.
    pub schedule: LrSchedule,
    pub grpo: StepConfig,
    pub seed: u64,
    /// Prompts (whole groups) per backward pass; `None`: the whole step in one. Smaller
    /// micro-batches hold fewer activations at once and give the same gradient (up to
    /// rounding): TRL's gradient accumulation.
    pub micro_batch_prompts: Option<usize>,
}

impl StepSettings {
    /// The adapters' learning rate for the optimizer step with 0-based index `step`.
    pub fn learning_rate_at(&self, step: u64) -> f64 {
        self.learning_rate * self.schedule.factor(step)
    }
}

/// What shows whether the policy reads its context, per step: where the gradient goes, how
/// large and how prompt-dependent `C` is against real token embeddings, and how sharply each
/// latent attends.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StepDiagnostics {
    /// Global gradient norm (before clipping) over the LoRA adapters alone.
    pub grad_norm_adapters: f64,
    /// Over the interface alone (fused and hard-route).
    pub grad_norm_interface: Option<f64>,
    pub grad_norm_router: Option<f64>,
    pub learning_rate: f64,
    pub interface_learning_rate: Option<f64>,
    /// RMS over every entry of the policy's token-embedding table (embedding scale applied).
    pub embedding_rms: f32,
    /// RMS over every entry of the batch's context tokens `C`.
    pub context_rms: Option<f32>,
    /// RMS of `C` minus its mean over the batch's prompts: the part of `C` that depends on
    /// the prompt (0 while the output projection is still zero).
    pub context_prompt_rms: Option<f32>,
    /// Per latent: the entropy of its cross-attention over the experts' tokens, mean over
    /// heads and prompts, divided by the log of the number of tokens (1 = uniform).
    pub latent_attention_entropy: Vec<f32>,
}

/// What one step did, for `metrics.jsonl` and the live view.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub step: u64,
    pub loss: GrpoMetrics,
    pub rollouts: RolloutStats,
    /// Batch-mean share of attention per expert (empty without a team).
    pub utilization: Vec<f32>,
    /// Batch-mean routing entropy, natural log and normalised by ln n.
    pub routing_entropy: Option<f32>,
    pub routing_entropy_normalized: Option<f32>,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub sampled_tokens: usize,
    pub sample_seconds: f64,
    /// Where the rest of the step went: the team's reads and the interface, the reference
    /// policy's scores, the policy's scores and loss, and backward with clipping and the
    /// optimizer. Wall-clock per phase: exact on the eager CPU backend; on an asynchronous
    /// GPU backend work queued in one phase may finish in the next.
    pub team_seconds: f64,
    pub reference_seconds: f64,
    pub loss_seconds: f64,
    pub update_seconds: f64,
    pub step_seconds: f64,
    pub diagnostics: StepDiagnostics,
    /// The first completion of each prompt, for the run log.
    pub samples: Vec<Sample>,
}

/// A logged completion with its reward and group advantage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    pub completion: String,
    pub reward: f32,
    pub advantage: f32,
}

type Adam<M, B> = OptimizerAdaptor<AdamW, M, B>;

/// The team's readings for the interface, and with a router its log-probabilities `[prompts,
/// experts]` (with gradient) and the expert it chose per prompt.
type TeamInputs<B> = (
    Vec<ExpertInput<<B as AutodiffBackend>::InnerBackend>>,
    Option<(Tensor<B, 2>, Vec<usize>)>,
);

/// `hard-route`'s router learning rate over the policy's.
pub const ROUTER_LR_SCALE: f64 = 10.0;

impl<B: AutodiffBackend> std::fmt::Debug for Trainer<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("step", &self.step)
            .field(
                "team",
                &self.team.iter().map(|m| &m.name).collect::<Vec<_>>(),
            )
            .field("fused", &self.interface.is_some())
            .field("settings", &self.settings)
            .finish()
    }
}

/// The trainable state: the policy (LoRA on a frozen base), the interface (absent in
/// `single` mode), the frozen team and the optimizers.
pub struct Trainer<B: AutodiffBackend> {
    pub policy: Llama<B>,
    pub tokenizer: TextTokenizer,
    pub interface: Option<LatentInterface<B>>,
    pub team: Vec<TeamMember<B::InnerBackend>>,
    pub settings: StepSettings,
    pub step: u64,
    /// `hard-route` mode: picks one expert per prompt (see [`crate::route`]).
    pub router: Option<Router<B>>,
    /// Precision of the passes that train nothing: the team, rollouts, the reference.
    precision: Precision,
    /// RMS of the policy's token embeddings (frozen: computed once).
    embedding_rms: f32,
    adam: AdamWConfig,
    policy_optim: Adam<Llama<B>, B>,
    interface_optim: Adam<LatentInterface<B>, B>,
    router_optim: Adam<Router<B>, B>,
}

impl<B: AutodiffBackend> Trainer<B> {
    pub fn new(
        policy: Llama<B>,
        tokenizer: TextTokenizer,
        interface: Option<LatentInterface<B>>,
        team: Vec<TeamMember<B::InnerBackend>>,
        settings: StepSettings,
    ) -> Result<Self, TrainError> {
        if interface.as_ref().map_or(0, |i| i.num_experts()) != team.len() {
            return Err(TrainError::BadInput(format!(
                "{} team members for an interface of {} experts",
                team.len(),
                interface.as_ref().map_or(0, |i| i.num_experts())
            )));
        }
        // Clipping is by the global norm, in `train_step`, not Burn's per-tensor clipping.
        let adam = AdamWConfig::new().with_weight_decay(0.0);
        let embedding_rms = policy.embedding_rms();
        Ok(Self {
            embedding_rms,
            policy,
            tokenizer,
            interface,
            team,
            step: 0,
            router: None,
            precision: Precision::F32,
            policy_optim: adam.init(),
            interface_optim: adam.init(),
            router_optim: adam.init(),
            adam,
            settings,
        })
    }

    /// Run the team, rollout sampling and the reference model in `precision` (bf16 or f16
    /// on a GPU; f32, the default, changes nothing). The team is cast here; the policy's
    /// sampling and reference copies are cast each step, so LoRA, the interface and the
    /// optimizer state stay f32.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.team = std::mem::take(&mut self.team)
            .into_iter()
            .map(|member| TeamMember {
                model: member.model.with_precision(precision),
                ..member
            })
            .collect();
        self.precision = precision;
        self
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Route each prompt to one expert (`hard-route`) instead of fusing them all.
    pub fn with_router(mut self, router: Router<B>) -> Self {
        self.router = Some(router);
        self
    }

    /// Save what `load_state` needs to continue exactly: both optimizers' state and the
    /// interface as Burn records (parameter ids included), and the step. The adapters are
    /// saved separately, in PEFT's layout (their parameter ids are derived from their names).
    pub fn save_state(&self, dir: &Path) -> Result<(), TrainError> {
        let recorder = BinFileRecorder::<FullPrecisionSettings>::new();
        let fail = |e: RecorderError| TrainError::BadInput(format!("{}: {e}", dir.display()));
        recorder
            .record(self.policy_optim.to_record(), dir.join("policy_optimizer"))
            .map_err(fail)?;
        recorder
            .record(
                self.interface_optim.to_record(),
                dir.join("interface_optimizer"),
            )
            .map_err(fail)?;
        if let Some(interface) = &self.interface {
            recorder
                .record(interface.clone().into_record(), dir.join("interface"))
                .map_err(fail)?;
        }
        if let Some(router) = &self.router {
            recorder
                .record(router.clone().into_record(), dir.join("router"))
                .map_err(fail)?;
            recorder
                .record(self.router_optim.to_record(), dir.join("router_optimizer"))
                .map_err(fail)?;
        }
        Ok(())
    }

    /// Restore what [`Self::save_state`] wrote, and the step count.
    pub fn load_state(&mut self, dir: &Path, step: u64) -> Result<(), TrainError> {
        let recorder = BinFileRecorder::<FullPrecisionSettings>::new();
        let device = self.policy.embed_tokens.weight.device();
        let fail = |e: RecorderError| TrainError::BadInput(format!("{}: {e}", dir.display()));
        let record = recorder
            .load(dir.join("policy_optimizer"), &device)
            .map_err(fail)?;
        let optim = std::mem::replace(&mut self.policy_optim, self.adam.init());
        self.policy_optim = optim.load_record(record);
        let record = recorder
            .load(dir.join("interface_optimizer"), &device)
            .map_err(fail)?;
        let optim = std::mem::replace(&mut self.interface_optim, self.adam.init());
        self.interface_optim = optim.load_record(record);
        if let Some(interface) = self.interface.take() {
            let record = recorder
                .load(dir.join("interface"), &device)
                .map_err(fail)?;
            self.interface = Some(interface.load_record(record));
        }
        if let Some(router) = self.router.take() {
            let record = recorder.load(dir.join("router"), &device).map_err(fail)?;
            self.router = Some(router.load_record(record));
            let record = recorder
                .load(dir.join("router_optimizer"), &device)
                .map_err(fail)?;
            let optim = std::mem::replace(&mut self.router_optim, self.adam.init());
            self.router_optim = optim.load_record(record);
        }
        self.step = step;
        Ok(())
    }

    /// What the team hands the interface for `prompts` (`ids`: the same prompts in the
    /// policy's tokens), on the inner backend: every expert's reading, or with a router only
    /// the chosen expert's. The router samples its choice with `sample_seed` (training) and
    /// takes the most likely expert without one (evaluation); its log-probabilities come back
    /// with their gradient, with the choices, for the REINFORCE term.
    fn team_inputs(
        &self,
        prompts: &[String],
        ids: &[Vec<u32>],
        sample_seed: Option<u64>,
    ) -> Result<TeamInputs<B>, TrainError> {
        let device = self.policy.embed_tokens.weight.val().inner().device();
        match &self.router {
            Some(router) => {
                let sentences = sentence_embeddings(&self.policy.valid(), ids, &device);
                let log_probs = router.log_probs(Tensor::from_inner(sentences));
                let choice = choose(
                    &host_f32(log_probs.clone().inner()),
                    self.team.len(),
                    sample_seed,
                );
                let inputs = routed_inputs(&self.team, prompts, &choice, &device)?;
                Ok((inputs, Some((log_probs, choice))))
            }
            None => {
                let inputs = self
                    .team
                    .iter()
                    .map(|m| m.read(prompts, &device))
                    .collect::<Result<Vec<_>, TrainError>>()?;
                Ok((inputs, None))
            }
        }
    }

    /// The team's context tokens for `prompts` on the inner backend (no gradient), for
    /// sampling outside training.
    pub fn context(
        &self,
        prompts: &[String],
    ) -> Result<Option<Tensor<B::InnerBackend, 3>>, TrainError> {
        let ids = prompts
            .iter()
            .map(|t| self.tokenizer.encode(t, true))
            .collect::<Result<Vec<_>, _>>()?;
        self.context_for(prompts, &ids)
    }

    fn context_for(
        &self,
        prompts: &[String],
        ids: &[Vec<u32>],
    ) -> Result<Option<Tensor<B::InnerBackend, 3>>, TrainError> {
        let Some(interface) = &self.interface else {
            return Ok(None);
        };
        let (inputs, _) = self.team_inputs(prompts, ids, None)?;
        Ok(Some(interface.valid().forward(&inputs)?.context))
    }

    /// Greedy completions of `prompts`, from `[C ; prompt]` when `with_context` and the run
    /// has a team, else from the prompt alone (the "no C at evaluation" ablation).
    pub fn complete_greedy(
        &self,
        prompts: &[String],
        with_context: bool,
    ) -> Result<Vec<String>, TrainError> {
        let device = self.policy.embed_tokens.weight.val().inner().device();
        let sampler = self.policy.valid().with_precision(self.precision);
        let mut out = Vec::with_capacity(prompts.len());
        for chunk in prompts.chunks(64) {
            let ids = chunk
                .iter()
                .map(|t| self.tokenizer.encode(t, true))
                .collect::<Result<Vec<_>, _>>()?;
            let context = if with_context {
                self.context_for(chunk, &ids)?
            } else {
                None
            };
            let generation = generate_with_prefix(
                &sampler,
                &ids,
                context,
                &GenerationConfig {
                    max_new_tokens: self.settings.max_completion_length,
                    num_return_sequences: 1,
                    eos_token_ids: self.settings.grpo.eos_token_ids.clone(),
                    sampling: SamplingConfig::default(),
                },
                None,
                &device,
            )?;
            for tokens in &generation.tokens {
                out.push(self.tokenizer.decode(tokens, true)?);
            }
        }
        Ok(out)
    }

    /// One GRPO step on `prompts` (texts, already in the policy's prompt template);
    /// `reward(prompt_index, completion_text)` scores a completion.
    pub fn train_step(
        &mut self,
        prompts: &[String],
        reward: &(dyn Fn(usize, &str) -> f32 + Sync),
    ) -> Result<StepReport, TrainError> {
        let started = Instant::now();
        let device = self.policy.embed_tokens.weight.device();
        let inner_device = self.policy.embed_tokens.weight.val().inner().device();
        let s = self.settings.clone();
        let p = prompts.len();

        let prompt_ids = prompts
            .iter()
            .map(|t| self.tokenizer.encode(t, true))
            .collect::<Result<Vec<_>, _>>()?;
        let sampler = self.policy.valid().with_precision(self.precision);

        // The team reads each prompt once (hard-route: only the routed expert reads it); the
        // interface turns that into C (with gradient).
        let (fused, routing, team_read) = match &self.interface {
            Some(interface) => {
                let seed = s.seed.wrapping_mul(7_919).wrapping_add(self.step);
                let (inner_inputs, routing) = self.team_inputs(prompts, &prompt_ids, Some(seed))?;
                let inputs: Vec<ExpertInput<B>> = inner_inputs
                    .into_iter()
                    .map(|read| ExpertInput {
                        hidden: Tensor::from_inner(read.hidden),
                        mask: read.mask.map(Tensor::from_inner),
                    })
                    .collect();
                (Some(interface.forward(&inputs)?), routing, inputs)
            }
            None => (None, None, Vec::new()),
        };
        let team_seconds = started.elapsed().as_secs_f64();
        // Rollouts from [C ; prompt] on the inner backend, G per prompt.
        let sample_start = Instant::now();
        let generation = generate_with_prefix(
            &sampler,
            &prompt_ids,
            fused.as_ref().map(|f| f.context.clone().inner()),
            &GenerationConfig {
                max_new_tokens: s.max_completion_length,
                num_return_sequences: s.num_generations,
                eos_token_ids: s.grpo.eos_token_ids.clone(),
                sampling: SamplingConfig {
                    temperature: s.temperature,
                    top_k: None,
                    top_p: None,
                    seed: s.seed.wrapping_mul(1_000_003).wrapping_add(self.step),
                },
            },
            None,
            &inner_device,
        )?;
        let sample_seconds = sample_start.elapsed().as_secs_f64();
        let texts = generation
            .tokens
            .iter()
            .map(|t| self.tokenizer.decode(t, true))
            .collect::<Result<Vec<_>, _>>()?;
        let rewards: Vec<f32> = {
            use rayon::prelude::*;
            texts
                .par_iter()
                .enumerate()
                .map(|(i, text)| reward(i / s.num_generations, text))
                .collect()
        };
        let advantages = musketeers_rl::advantages::group_advantages(
            &rewards,
            s.num_generations,
            s.grpo.scale_rewards,
        )?;
        let rows: Vec<i64> = (0..p as i64)
            .flat_map(|i| std::iter::repeat_n(i, s.num_generations))
            .collect();
        // One C per prompt: the scorer shares each prompt's prefix across its group.
        let context = fused.as_ref().map(|f| f.context.clone());
        let mut rollouts = Rollouts {
            prompt_ids: rows
                .iter()
                .map(|&i| prompt_ids[i as usize].clone())
                .collect(),
            completion_ids: generation.tokens.clone(),
            num_generations: s.num_generations,
            rewards: rewards.clone(),
            old_logprobs: None,
            ref_logprobs: None,
        };
        let reference_start = Instant::now();
        if s.grpo.loss.beta > 0.0 {
            // Scored on the same backend as the policy, so that with unchanged adapters the
            // two agree to the bit and the KL and its gradient are exactly zero.
            let reference = self
                .policy
                .without_adapters()
                .with_precision(self.precision);
            let width = rollouts
                .completion_ids
                .iter()
                .map(Vec::len)
                .max()
                .unwrap_or(1)
                .max(1);
            let scorer = PrefixedPolicy {
                model: &reference,
                context: context.clone().map(|c| c.detach()),
                temperature: f64::from(s.temperature),
            };
            let (logps, _) = musketeers_rl::TokenScorer::score(&scorer, &rollouts, width)?;
            let values = host_f32(logps);
            rollouts.ref_logprobs = Some(
                rollouts
                    .completion_ids
                    .iter()
                    .enumerate()
                    .map(|(r, c)| values[r * width..r * width + c.len()].to_vec())
                    .collect(),
            );
        }
        let reference_seconds = reference_start.elapsed().as_secs_f64();
        let stats = rollout_stats(&rollouts, &advantages, &s.grpo);
        // The loss and its gradients, over micro-batches of whole prompt groups (gradient
        // accumulation): one backward pass holds the activations of one micro-batch only.
        let chunk = s.micro_batch_prompts.unwrap_or(p).clamp(1, p.max(1));
        let accumulating = chunk < p;
        let items = counted_tokens(&rollouts, &advantages, &s.grpo).max(1.0);
        let g = s.num_generations;
        let mut policy_acc = GradientsAccumulator::<Llama<B>>::new();
        let mut interface_acc = GradientsAccumulator::<LatentInterface<B>>::new();
        let mut router_acc = GradientsAccumulator::<Router<B>>::new();
        let mut parts: Vec<(GrpoMetrics, f64)> = Vec::new();
        let mut router_entropy = None;
        let mut loss_seconds = 0.0;
        let mut update_seconds = 0.0;
        for (index, first) in (0..p).step_by(chunk).enumerate() {
            let part_start = Instant::now();
            let prompts_here = first..(first + chunk).min(p);
            let rows = prompts_here.start * g..prompts_here.end * g;
            // The whole batch is borrowed, not copied, when it is one part.
            let (part, part_advantages) = if accumulating {
                (
                    Cow::Owned(rollouts.rows(rows.clone())),
                    Cow::Owned(advantages.rows(rows)),
                )
            } else {
                (Cow::Borrowed(&rollouts), Cow::Borrowed(&advantages))
            };
            // One C per prompt: the scorer shares each prompt's prefix across its group. A
            // micro-batch recomputes its rows of C, so that each backward pass has its own
            // graph through the interface.
            let context = match (&self.interface, &context) {
                (Some(interface), Some(_)) if accumulating => {
                    let inputs: Vec<ExpertInput<B>> = team_read
                        .iter()
                        .map(|read| ExpertInput {
                            hidden: read.hidden.clone().narrow(0, first, prompts_here.len()),
                            mask: read
                                .mask
                                .clone()
                                .map(|m| m.narrow(0, first, prompts_here.len())),
                        })
                        .collect();
                    Some(interface.forward(&inputs)?.context)
                }
                _ => context.clone(),
            };
            let scorer = PrefixedPolicy {
                model: &self.policy,
                context,
                temperature: f64::from(s.temperature),
            };
            let normaliser =
                (accumulating && s.grpo.loss.loss_type == LossType::Dapo).then_some(items);
            let (loss, counted) = grpo_micro_step(
                &scorer,
                &part,
                &part_advantages,
                &s.grpo,
                normaliser,
                &device,
            )?;
            // Each part's share of the batch loss: dapo is normalised by the batch's tokens
            // already; per-sequence means weigh by sequences, bnpo by counted tokens.
            let weight = if !accumulating {
                1.0
            } else {
                match s.grpo.loss.loss_type {
                    LossType::Dapo => 1.0,
                    LossType::Grpo | LossType::DrGrpo => prompts_here.len() as f64 / p as f64,
                    LossType::Bnpo => counted / items,
                }
            };
            let mut term = if weight == 1.0 {
                loss.loss.clone()
            } else {
                loss.loss.clone() * weight
            };
            let mut metrics = loss.metrics.clone();
            metrics.loss *= weight;
            parts.push((metrics, counted));
            // The router's REINFORCE term (once per step): a prompt's mean reward against the
            // batch mean.
            if let (0, Some((log_probs, choice))) = (index, &routing) {
                let means: Vec<f32> = rewards
                    .chunks(s.num_generations)
                    .map(|g| g.iter().sum::<f32>() / g.len() as f32)
                    .collect();
                let baseline = means.iter().sum::<f32>() / means.len().max(1) as f32;
                let advantage: Vec<f32> = means.iter().map(|m| m - baseline).collect();
                let advantage =
                    Tensor::<B, 2>::from_data(TensorData::new(advantage, [p, 1]), &device);
                let picked: Vec<i64> = choice.iter().map(|&c| c as i64).collect();
                let picked =
                    Tensor::<B, 2, Int>::from_data(TensorData::new(picked, [p, 1]), &device);
                let chosen = log_probs.clone().gather(1, picked);
                let probs = log_probs.clone().inner().exp();
                let entropy = (probs.clone() * log_probs.clone().inner())
                    .sum_dim(1)
                    .neg()
                    .mean()
                    .into_scalar()
                    .elem::<f32>();
                router_entropy = Some(entropy);
                term = term - (chosen * advantage).mean();
            }
            loss_seconds += part_start.elapsed().as_secs_f64();
            let backward_start = Instant::now();
            let mut grads = term.backward();
            policy_acc.accumulate(
                &self.policy,
                GradientsParams::from_module(&mut grads, &self.policy),
            );
            if let Some(m) = &self.interface {
                interface_acc.accumulate(m, GradientsParams::from_module(&mut grads, m));
            }
            if let Some(m) = &self.router {
                router_acc.accumulate(m, GradientsParams::from_module(&mut grads, m));
            }
            update_seconds += backward_start.elapsed().as_secs_f64();
        }
        let loss_metrics = combine_metrics(&parts);
        let update_start = Instant::now();
        let mut policy_grads = policy_acc.grads();
        let mut interface_grads = self.interface.as_ref().map(|_| interface_acc.grads());
        let mut router_grads = self.router.as_ref().map(|_| router_acc.grads());
        let adapters_squared = squared_grad_norm(&self.policy, &policy_grads);
        let interface_squared = match (&self.interface, &interface_grads) {
            (Some(m), Some(g)) => Some(squared_grad_norm(m, g)),
            _ => None,
        };
        let router_squared = match (&self.router, &router_grads) {
            (Some(m), Some(g)) => Some(squared_grad_norm(m, g)),
            _ => None,
        };
        let grad_norm =
            (adapters_squared + interface_squared.unwrap_or(0.0) + router_squared.unwrap_or(0.0))
                .sqrt();
        if !grad_norm.is_finite() {
            return Err(TrainError::NonFinite {
                step: self.step + 1,
                what: "the gradient norm",
                value: grad_norm,
            });
        }
        let factor = clip_factor(grad_norm, f64::from(s.max_grad_norm));
        if factor < 1.0 {
            scale_grads(&self.policy, &mut policy_grads, factor);
            if let (Some(m), Some(g)) = (&self.interface, interface_grads.as_mut()) {
                scale_grads(m, g, factor);
            }
            if let (Some(m), Some(g)) = (&self.router, router_grads.as_mut()) {
                scale_grads(m, g, factor);
            }
        }
        let lr = s.learning_rate_at(self.step);
        self.policy = self
            .policy_optim
            .step(lr, self.policy.clone(), policy_grads);
        if let (Some(router), Some(g)) = (self.router.take(), router_grads) {
            // The router is a bandit over a few experts with a noisy reward; it moves
            // ROUTER_LR_SCALE times faster than the policy so routing settles within a run.
            self.router = Some(self.router_optim.step(lr * ROUTER_LR_SCALE, router, g));
        }
        let interface_lr = s.interface_learning_rate * s.schedule.factor(self.step);
        if let (Some(interface), Some(g)) = (self.interface.take(), interface_grads) {
            self.interface = Some(self.interface_optim.step(interface_lr, interface, g));
        }

        let update_seconds = update_seconds + update_start.elapsed().as_secs_f64();
        let diagnostics = StepDiagnostics {
            grad_norm_adapters: adapters_squared.sqrt(),
            grad_norm_interface: interface_squared.map(f64::sqrt),
            grad_norm_router: router_squared.map(f64::sqrt),
            learning_rate: lr,
            interface_learning_rate: self.interface.as_ref().map(|_| interface_lr),
            embedding_rms: self.embedding_rms,
            context_rms: fused.as_ref().map(|f| rms(f.context.clone().inner())),
            context_prompt_rms: fused.as_ref().map(|f| {
                let c = f.context.clone().inner();
                rms(c.clone() - c.mean_dim(0))
            }),
            latent_attention_entropy: fused
                .as_ref()
                .map(|f| latent_attention_entropy(f.attention.clone().inner()))
                .unwrap_or_default(),
        };
        let (utilization, entropy, normalized) = match &fused {
            Some(f) => {
                let per_example = expert_utilization(&f.attention, &f.expert_spans).inner();
                let (h, hn) = routing_entropy(&per_example);
                let mean = |t: Tensor<B::InnerBackend, 1>| t.mean().into_scalar().elem::<f32>();
                let util = host_f32(batch_utilization(&per_example));
                match router_entropy {
                    // Hard routing: each prompt attends to one expert; the entropy worth
                    // reporting is the router's.
                    Some(h) => {
                        let n = self.team.len().max(2) as f32;
                        (util, Some(h), Some(h / n.ln()))
                    }
                    None => (util, Some(mean(h)), Some(mean(hn))),
                }
            }
            None => (Vec::new(), None, None),
        };
        self.step += 1;
        Ok(StepReport {
            step: self.step,
            loss: loss_metrics,
            rollouts: stats,
            utilization,
            routing_entropy: entropy,
            routing_entropy_normalized: normalized,
            grad_norm,
            sampled_tokens: generation.decode_tokens,
            sample_seconds,
            team_seconds,
            reference_seconds,
            loss_seconds,
            update_seconds,
            step_seconds: started.elapsed().as_secs_f64(),
            diagnostics,
            samples: (0..p)
                .map(|i| {
                    let r = i * s.num_generations;
                    Sample {
                        completion: texts[r].clone(),
                        reward: rewards[r],
                        advantage: advantages.values.get(r).copied().unwrap_or(f32::NAN),
                    }
                })
                .collect(),
        })
    }
}
