//! One n-Musketeers GRPO step, following the design's data flow: the frozen team reads each
//! prompt once; the latent interface turns their states into context tokens `C` (with
//! autodiff); the policy samples G completions per prompt from `[C ; prompt]` on the inner
//! backend; rewards score them; GRPO's loss flows back into the LoRA adapters and the
//! interface, and AdamW (with gradient clipping) updates only those.
//!
//! The step is a sequence of named phases ([`phases`]); what differs between systems sits
//! behind [`crate::method::system::System`]; everything trained is one parameter set
//! ([`params`]); and a [`collective::Collective`] joins processes that share a step.

pub mod collective;
pub mod dynamic;
pub mod params;
pub mod phases;
pub mod reward;

use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use musketeers_fusion::LatentInterface;
use musketeers_lm::tokenizer::TextTokenizer;
use musketeers_lm::{Llama, Precision};
use musketeers_rl::advantages::Advantages;
use musketeers_rl::rollout::{RolloutStats, StepConfig, counted_tokens, rollout_stats};
use musketeers_rl::{GrpoLossConfig, GrpoMetrics, LrSchedule};
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

pub use crate::error::TrainError;
pub(crate) use crate::host::host_f32;
pub use crate::method::model::PromptContext;
use crate::method::model::{
    Decoding, PromptFormat, TeamModel, load_trained_records, save_trained_records,
};
use crate::method::system::hard_route::{HardRoute, Router};
use crate::method::system::{Parts, System, fused::Fused, single::Single};
pub use crate::method::team::{ExpertReadout, TeamMember};
use crate::run_config::RunConfig;
use collective::Collective;
use params::{AdamSettings, Group, ParamOptimizer, Trained, TrainedRef};
use phases::BatchShare;

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
    /// Completions per backward pass instead (wins over `micro_batch_prompts`): a multiple of
    /// `num_generations`, or a divisor of it (a group cut into equal parts, each scored with
    /// its prompt's prefix again).
    pub micro_batch_completions: Option<usize>,
}

impl StepSettings {
    /// The settings of `config`'s GRPO section; `steps`: the run's length, which the
    /// learning-rate schedule spans (default: the config's); `eos_token_ids`: the policy's.
    pub fn from_config(config: &RunConfig, steps: Option<u64>, eos_token_ids: Vec<u32>) -> Self {
        let g = &config.grpo;
        Self {
            num_generations: g.num_generations,
            max_completion_length: g.max_completion_length,
            temperature: g.temperature,
            learning_rate: g.learning_rate,
            max_grad_norm: g.max_grad_norm,
            interface_learning_rate: config.interface.learning_rate.unwrap_or(g.learning_rate),
            schedule: LrSchedule {
                kind: g.lr_scheduler_type,
                warmup_steps: g.warmup_steps,
                total_steps: steps.unwrap_or(g.steps),
            },
            grpo: StepConfig {
                loss: GrpoLossConfig {
                    beta: g.beta,
                    epsilon: g.epsilon,
                    epsilon_high: g.epsilon_high,
                    loss_type: g.loss_type,
                    max_completion_length: g.max_completion_length,
                },
                scale_rewards: g.scale_rewards,
                eos_token_ids,
                mask_truncated_completions: g.mask_truncated_completions,
                drop_zero_std_groups: false,
            },
            seed: g.seed,
            micro_batch_prompts: g.micro_batch_prompts,
            micro_batch_completions: g.micro_batch_completions,
        }
    }

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
    /// Gated injection: the mean and the largest `|tanh(scale * gate)|` over the policy's
    /// layers and heads (0 at the start: how far the policy has opened to `C`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_gate_mean: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_gate_max: Option<f32>,
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
    /// Time in collective operations (all-reduce) with other processes; 0 alone.
    pub communication_seconds: f64,
    pub step_seconds: f64,
    /// This process's peak resident memory so far, in bytes (Linux `VmHWM`; absent
    /// elsewhere): what to compare with the machine's memory before scaling a run up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_memory_bytes: Option<u64>,
    /// The step's phases' own peaks (`load` on a process's first step, `context`, `sample`,
    /// `reference`, `loss` and `backward` (the highest of its micro-batches'), `update`):
    /// which part of a step sets the memory a run needs.
    #[serde(skip_serializing_if = "PhasePeaks::is_empty")]
    pub phase_peak_bytes: PhasePeaks,
    pub diagnostics: StepDiagnostics,
    /// The first completion of each prompt, for the run log.
    pub samples: Vec<Sample>,
    /// With several reward functions: each one's mean over the step's completions
    /// (unweighted; `rollouts.reward_mean` is their weighted sum's).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub reward_functions: std::collections::BTreeMap<String, f64>,
    /// With dynamic sampling: what was drawn, dropped and refilled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dynamic_sampling: Option<dynamic::DynamicSampling>,
    /// Which of the step's candidate prompts were trained on, in order (all of them without
    /// dynamic sampling): `samples[i]` answers candidate `prompt_indices[i]`.
    #[serde(skip)]
    pub prompt_indices: Vec<usize>,
}

/// A share of a step's batch after sampling and scoring: what the update learns from.
struct Sampled<B: AutodiffBackend> {
    prompt_ids: Vec<Vec<u32>>,
    context: crate::method::system::Context<B>,
    generation: musketeers_lm::generate::Generation,
    texts: Vec<String>,
    rewards: Vec<f32>,
    /// Each named reward function's values, per completion (empty for a single reward).
    reward_parts: Vec<(String, Vec<f32>)>,
    team_seconds: f64,
    sample_seconds: f64,
    /// Peak resident memory of the context and sampling phases.
    memory: PhasePeaks,
}

/// Each phase's peak resident memory in bytes (see [`musketeers_lm::perf::phase_peak`]),
/// by phase name; empty where the kernel's peak cannot be read or reset.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct PhasePeaks(pub std::collections::BTreeMap<&'static str, u64>);

impl PhasePeaks {
    /// Runs `work` as phase `name`, keeping the highest peak seen under that name.
    pub(crate) fn measure<T>(&mut self, name: &'static str, work: impl FnOnce() -> T) -> T {
        let (result, peak) = musketeers_lm::perf::phase_peak(work);
        self.note(name, peak);
        result
    }

    fn note(&mut self, name: &'static str, peak: Option<u64>) {
        if let Some(peak) = peak {
            let kept = self.0.entry(name).or_insert(0);
            *kept = (*kept).max(peak);
        }
    }

    fn merge(&mut self, other: &PhasePeaks) {
        for (&name, &peak) in &other.0 {
            self.note(name, Some(peak));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a step's update did.
struct Update {
    metrics: GrpoMetrics,
    norms: phases::GradNorms,
    learning_rate: f64,
    interface_learning_rate: f64,
    routing_entropy: Option<f32>,
    loss_seconds: f64,
    update_seconds: f64,
}

/// The first completion of each prompt, with its reward and advantage, for the samples log.
fn first_samples<B: AutodiffBackend>(
    sampled: &Sampled<B>,
    advantages: &Advantages,
    group: usize,
) -> Vec<Sample> {
    (0..sampled.prompt_ids.len())
        .map(|i| {
            let r = i * group;
            Sample {
                completion: sampled.texts[r].clone(),
                reward: sampled.rewards[r],
                advantage: advantages.values.get(r).copied().unwrap_or(f32::NAN),
            }
        })
        .collect()
}

/// The mean of each named reward function over the step's completions.
fn reward_means(parts: &[(String, Vec<f32>)]) -> std::collections::BTreeMap<String, f64> {
    parts
        .iter()
        .map(|(name, values)| {
            let mean =
                values.iter().map(|&v| f64::from(v)).sum::<f64>() / values.len().max(1) as f64;
            (name.clone(), mean)
        })
        .collect()
}

/// A logged completion with its reward and group advantage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sample {
    pub completion: String,
    pub reward: f32,
    pub advantage: f32,
}

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
            .field("system", &self.system.name())
            .field("settings", &self.settings)
            .finish()
    }
}

/// The trainable state: the policy (LoRA on a frozen base), the interface (absent in
/// `single` mode), the frozen team, the system that uses them and the optimizer.
pub struct Trainer<B: AutodiffBackend> {
    pub policy: Llama<B>,
    pub tokenizer: Arc<TextTokenizer>,
    pub interface: Option<LatentInterface<B>>,
    pub team: Arc<[TeamMember<B::InnerBackend>]>,
    pub settings: StepSettings,
    pub step: u64,
    /// `hard-route` mode: picks one expert per prompt (see
    /// [`crate::method::system::hard_route`]).
    pub router: Option<Router<B>>,
    /// How a question becomes the policy's prompt.
    pub prompt: PromptFormat,
    /// Precision of the passes that train nothing: the team, rollouts, the reference.
    precision: Precision,
    /// RMS of the policy's token embeddings (frozen: computed once).
    embedding_rms: f32,
    optimizer: ParamOptimizer<B>,
    system: Arc<dyn System<B>>,
    collective: Box<dyn Collective>,
    /// Loading's peak resident memory, reported once, as the `load` phase of the next step.
    pub load_peak_bytes: Option<u64>,
}

/// The file of the optimizer's state in a checkpoint.
const OPTIMIZER_FILE: &str = "optimizer";

impl<B: AutodiffBackend> Trainer<B> {
    /// A trainer for `fused` (with an interface) or `single` (without); see
    /// [`Self::with_router`] and [`Self::with_system`] for the others.
    pub fn new(
        policy: Llama<B>,
        tokenizer: TextTokenizer,
        interface: Option<LatentInterface<B>>,
        team: Vec<TeamMember<B::InnerBackend>>,
        settings: StepSettings,
    ) -> Result<Self, TrainError> {
        if let Some(interface) = &interface
            && interface.num_experts() != team.len()
        {
            return Err(TrainError::BadInput(format!(
                "{} team members for an interface of {} experts",
                team.len(),
                interface.num_experts()
            )));
        }
        let system: Arc<dyn System<B>> = match interface {
            Some(_) => Arc::new(Fused),
            None => Arc::new(Single),
        };
        let embedding_rms = policy.embedding_rms();
        Ok(Self {
            embedding_rms,
            policy,
            tokenizer: Arc::new(tokenizer),
            interface,
            team: team.into(),
            prompt: PromptFormat::default(),
            step: 0,
            router: None,
            load_peak_bytes: None,
            precision: Precision::F32,
            optimizer: ParamOptimizer::new(AdamSettings::default()),
            system,
            collective: Box::new(collective::Alone),
            settings,
        })
    }

    /// Run the team, rollout sampling and the reference model in `precision` (bf16 or f16
    /// on a GPU; f32, the default, changes nothing). The team is cast here; the policy's
    /// sampling and reference copies are cast each step, so LoRA, the interface and the
    /// optimizer state stay f32.
    /// A builder step, before the trainer lends its team out ([`Self::model`]): a shared
    /// team cannot be cast, and that is an error rather than a run in the wrong precision.
    pub fn with_precision(mut self, precision: Precision) -> Result<Self, TrainError> {
        let Some(team) = Arc::get_mut(&mut self.team) else {
            return Err(TrainError::BadInput(
                "the team is shared with a model lent out by Trainer::model: set the precision \
                 before"
                    .into(),
            ));
        };
        for member in team {
            member.model = member.model.clone().with_precision(precision);
        }
        self.precision = precision;
        Ok(self)
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Route each prompt to one expert (`hard-route`) instead of fusing them all.
    pub fn with_router(mut self, router: Router<B>) -> Self {
        self.router = Some(router);
        self.system = Arc::new(HardRoute);
        self
    }

    /// Another way to give the policy its context (e.g. `text-collab`).
    pub fn with_system(mut self, system: Arc<dyn System<B>>) -> Self {
        self.system = system;
        self
    }

    /// How questions become the policy's prompts.
    pub fn with_prompt_format(mut self, prompt: PromptFormat) -> Self {
        self.prompt = prompt;
        self
    }

    pub fn system(&self) -> &dyn System<B> {
        self.system.as_ref()
    }

    /// AdamW's settings (a fresh optimizer: call before the first step).
    pub fn with_optimizer(mut self, settings: AdamSettings) -> Self {
        self.optimizer = ParamOptimizer::new(settings);
        self
    }

    /// Share every step with other processes (data parallelism): each takes its share of
    /// the prompts and all apply the same update.
    pub fn with_collective(mut self, collective: Box<dyn Collective>) -> Self {
        self.collective = collective;
        self
    }

    pub fn collective(&self) -> &dyn Collective {
        self.collective.as_ref()
    }

    /// Everything trained, in the parameter set's order.
    pub fn trained(&self) -> TrainedRef<'_, B> {
        TrainedRef {
            policy: &self.policy,
            interface: self.interface.as_ref(),
            router: self.router.as_ref(),
        }
    }

    fn parts(&self) -> Parts<'_, B> {
        Parts {
            policy: &self.policy,
            interface: self.interface.as_ref(),
            router: self.router.as_ref(),
            team: &self.team,
        }
    }

    /// Save what `load_state` needs to continue exactly: the optimizer's state, the
    /// interface and router as Burn records, and the step. The adapters are saved
    /// separately, in PEFT's layout.
    pub fn save_state(&self, dir: &Path) -> Result<(), TrainError> {
        self.optimizer.save(&dir.join(OPTIMIZER_FILE))?;
        save_trained_records(dir, self.interface.as_ref(), self.router.as_ref())
    }

    /// Restore what [`Self::save_state`] wrote, and the step count.
    pub fn load_state(&mut self, dir: &Path, step: u64) -> Result<(), TrainError> {
        let device = self.policy.embed_tokens.weight.device();
        self.optimizer.load(&dir.join(OPTIMIZER_FILE), &device)?;
        load_trained_records(dir, &mut self.interface, &mut self.router)?;
        self.step = step;
        Ok(())
    }

    /// The trained team as it stands, off the autodiff backend: what evaluation, serving and
    /// the step's prompts read. Cheap: the modules' values are shared, not copied.
    pub fn model(&self) -> TeamModel<B::InnerBackend> {
        TeamModel {
            policy: self.policy.valid(),
            tokenizer: self.tokenizer.clone(),
            interface: self.interface.as_ref().map(AutodiffModule::valid),
            router: self.router.as_ref().map(AutodiffModule::valid),
            team: self.team.clone(),
            system: self.system.clone(),
            precision: self.precision,
            decoding: Decoding {
                max_new_tokens: self.settings.max_completion_length,
                eos_token_ids: self.settings.grpo.eos_token_ids.clone(),
            },
            prompt: self.prompt.clone(),
            step: self.step,
        }
    }

    /// The policy as it samples: without autodiff, in the run's precision.
    pub fn sampler(&self) -> Llama<B::InnerBackend> {
        self.policy.valid().with_precision(self.precision)
    }

    /// One GRPO step on `prompts` (texts, already in the policy's prompt template);
    /// `reward(prompt_index, completion_text)` scores a completion. With other processes
    /// ([`Self::with_collective`]) every process passes the step's whole batch and works on
    /// its share of it.
    pub fn train_step(
        &mut self,
        prompts: &[String],
        reward: &dyn reward::Reward,
    ) -> Result<StepReport, TrainError> {
        let _graphs = crate::method::autodiff_lock::hold();
        let mine = collective::share(
            prompts.len(),
            self.collective.rank(),
            self.collective.size(),
        );
        if mine.is_empty() {
            return Err(TrainError::BadInput(format!(
                "{} prompts per step for {} processes: each needs at least one",
                prompts.len(),
                self.collective.size()
            )));
        }
        let first = mine.start;
        let share_reward = reward::Shifted { reward, by: first };
        let started = Instant::now();
        let sampled = self.sample_share(&prompts[mine.clone()], first, &share_reward)?;
        let mut report = self.learn(sampled, first, prompts.len(), started)?;
        report.prompt_indices = mine.collect();
        Ok(report)
    }

    /// One GRPO step with DAPO's dynamic sampling: `candidates` are drawn `batch` at a time
    /// (round `r` takes `candidates[r * batch..(r + 1) * batch]`); groups whose rewards are
    /// all equal (no advantage, nothing to learn) are dropped, and rounds continue until
    /// `batch` groups have signal or the candidates run out. The step trains on the first
    /// `batch` kept groups; if none has signal, on the first round's. `reward(i, text)`
    /// scores a completion of candidate `i`.
    pub fn train_step_dynamic(
        &mut self,
        candidates: &[String],
        batch: usize,
        reward: &dyn reward::Reward,
    ) -> Result<StepReport, TrainError> {
        let _graphs = crate::method::autodiff_lock::hold();
        if self.collective.size() > 1 {
            return Err(TrainError::BadInput(
                "dynamic sampling runs in one process (data parallelism would need the \
                 processes to agree on every refill)"
                    .into(),
            ));
        }
        if !self.system.deterministic_context() {
            return Err(TrainError::BadInput(format!(
                "dynamic sampling recomputes the context of the groups it keeps; the {} \
                 system samples its context, so it cannot",
                self.system.name()
            )));
        }
        if batch == 0 || candidates.len() < batch {
            return Err(TrainError::BadInput(format!(
                "dynamic sampling of {batch} prompts from {} candidates",
                candidates.len()
            )));
        }
        let started = Instant::now();
        let g = self.settings.num_generations;
        let mut rounds = Vec::new();
        let mut plan = dynamic::Plan::new(batch);
        for (round, chunk) in candidates.chunks(batch).enumerate() {
            let first = round * batch;
            let round_reward = reward::Shifted { reward, by: first };
            let sampled = self.sample_share(chunk, first, &round_reward)?;
            let full = plan.add_round(first, &sampled.rewards, g);
            rounds.push(sampled);
            if full {
                break;
            }
        }
        let (kept, summary) = plan.finish();
        let sampled = self.select_groups(candidates, rounds, &kept, batch)?;
        let mut report = self.learn(sampled, 0, kept.len(), started)?;
        report.dynamic_sampling = Some(summary);
        report.prompt_indices = kept;
        Ok(report)
    }

    /// The groups of candidates `kept` (indices into the candidates, rounds of `batch`) out
    /// of the rounds that sampled them, with their context recomputed as one batch.
    fn select_groups(
        &self,
        candidates: &[String],
        rounds: Vec<Sampled<B>>,
        kept: &[usize],
        batch: usize,
    ) -> Result<Sampled<B>, TrainError> {
        let g = self.settings.num_generations;
        let started = Instant::now();
        let prompts: Vec<String> = kept.iter().map(|&i| candidates[i].clone()).collect();
        let mut prompt_ids = Vec::with_capacity(kept.len());
        let mut texts = Vec::with_capacity(kept.len() * g);
        let mut rewards = Vec::with_capacity(kept.len() * g);
        let mut reward_parts: Vec<(String, Vec<f32>)> = rounds
            .first()
            .map(|r| {
                r.reward_parts
                    .iter()
                    .map(|(name, _)| (name.clone(), Vec::new()))
                    .collect()
            })
            .unwrap_or_default();
        let mut generation = musketeers_lm::generate::Generation {
            tokens: Vec::with_capacity(kept.len() * g),
            logprobs: Vec::with_capacity(kept.len() * g),
            finish_reasons: Vec::with_capacity(kept.len() * g),
            prefill_tokens: rounds.iter().map(|r| r.generation.prefill_tokens).sum(),
            prefill_seconds: rounds.iter().map(|r| r.generation.prefill_seconds).sum(),
            decode_tokens: rounds.iter().map(|r| r.generation.decode_tokens).sum(),
            decode_seconds: rounds.iter().map(|r| r.generation.decode_seconds).sum(),
        };
        for &candidate in kept {
            let round = &rounds[candidate / batch];
            let local = candidate % batch;
            prompt_ids.push(round.prompt_ids[local].clone());
            let rows = local * g..(local + 1) * g;
            texts.extend_from_slice(&round.texts[rows.clone()]);
            rewards.extend_from_slice(&round.rewards[rows.clone()]);
            for ((_, kept), (_, values)) in reward_parts.iter_mut().zip(&round.reward_parts) {
                kept.extend_from_slice(&values[rows.clone()]);
            }
            generation
                .tokens
                .extend_from_slice(&round.generation.tokens[rows.clone()]);
            generation
                .logprobs
                .extend_from_slice(&round.generation.logprobs[rows.clone()]);
            generation
                .finish_reasons
                .extend_from_slice(&round.generation.finish_reasons[rows]);
        }
        // The kept prompts' context as one batch, with the graph the update needs (the
        // system's context is a function of the prompt alone: checked by the caller).
        let mut memory = PhasePeaks::default();
        for round in &rounds {
            memory.merge(&round.memory);
        }
        let context = memory.measure("context", || self.step_context(&prompts, &prompt_ids))?;
        Ok(Sampled {
            prompt_ids,
            context,
            generation,
            texts,
            rewards,
            reward_parts,
            team_seconds: rounds.iter().map(|r| r.team_seconds).sum::<f64>()
                + started.elapsed().as_secs_f64(),
            sample_seconds: rounds.iter().map(|r| r.sample_seconds).sum(),
            memory,
        })
    }

    /// Team states and context for a training step: the system's, with gradient through
    /// the interface and this step's routing seed.
    fn step_context(
        &self,
        prompts: &[String],
        ids: &[Vec<u32>],
    ) -> Result<crate::method::system::Context<B>, TrainError> {
        self.system.context(
            &self.parts(),
            prompts,
            ids,
            Some(phases::routing_seed(&self.settings, self.step)),
        )
    }

    /// Context, rollouts and rewards of `prompts`, prompts `first..` of the step's batch
    /// (which fixes their random streams).
    fn sample_share(
        &self,
        prompts: &[String],
        first: usize,
        reward: &dyn reward::Reward,
    ) -> Result<Sampled<B>, TrainError> {
        let started = Instant::now();
        let inner_device = self.policy.embed_tokens.weight.val().inner().device();
        let s = &self.settings;
        let prompt_ids = phases::encode_prompts(&self.tokenizer, prompts)?;
        let mut memory = PhasePeaks::default();
        let context = memory.measure("context", || self.step_context(prompts, &prompt_ids))?;
        let team_seconds = started.elapsed().as_secs_f64();

        let sample_start = Instant::now();
        let sampler = self.sampler();
        let generation = memory.measure("sample", || {
            phases::sample_rollouts(
                &sampler,
                &prompt_ids,
                context.inner_tokens(),
                s,
                self.step,
                first,
                &inner_device,
            )
        })?;
        let sample_seconds = sample_start.elapsed().as_secs_f64();
        let (texts, scored) = phases::score_rewards(
            &self.tokenizer,
            &generation.tokens,
            s.num_generations,
            reward,
        )?;
        Ok(Sampled {
            prompt_ids,
            context,
            generation,
            texts,
            rewards: scored.total,
            reward_parts: scored.parts,
            team_seconds,
            sample_seconds,
            memory,
        })
    }

    /// The update from this process's share of the batch (prompts `first..` of `total`):
    /// advantages, reference, loss and gradients, (all-reduce), clipping, AdamW, report.
    fn learn(
        &mut self,
        sampled: Sampled<B>,
        first: usize,
        total: usize,
        started: Instant,
    ) -> Result<StepReport, TrainError> {
        let communication_start = self.collective.seconds();
        let mut memory = sampled.memory.clone();
        memory.note("load", self.load_peak_bytes.take());
        let (advantages, batch_advantages) = self.advantages(&sampled.rewards, first, total)?;
        let (rollouts, reference_seconds) =
            memory.measure("reference", || self.rollouts_with_reference(&sampled))?;
        let stats = self.rollout_figures(&rollouts, &advantages, &batch_advantages)?;
        let outcome = self.loss_and_gradients(&sampled.context, &rollouts, &advantages, total)?;
        memory.merge(&outcome.memory);
        let update = memory.measure("update", || self.update(outcome))?;
        let diagnostics = self.diagnostics(&update, &sampled.context);
        let (utilization, entropy, normalized) =
            phases::utilization(&sampled.context, update.routing_entropy, self.team.len());
        self.step += 1;
        let g = self.settings.num_generations;
        Ok(StepReport {
            step: self.step,
            loss: update.metrics,
            rollouts: stats,
            utilization,
            routing_entropy: entropy,
            routing_entropy_normalized: normalized,
            grad_norm: update.norms.total,
            sampled_tokens: sampled.generation.decode_tokens,
            sample_seconds: sampled.sample_seconds,
            team_seconds: sampled.team_seconds,
            reference_seconds,
            loss_seconds: update.loss_seconds,
            update_seconds: update.update_seconds,
            communication_seconds: self.collective.seconds() - communication_start,
            step_seconds: started.elapsed().as_secs_f64(),
            peak_memory_bytes: musketeers_lm::perf::process_peak_bytes(),
            phase_peak_bytes: memory,
            diagnostics,
            samples: first_samples(&sampled, &advantages, g),
            dynamic_sampling: None,
            prompt_indices: Vec::new(),
            reward_functions: reward_means(&sampled.reward_parts),
        })
    }

    /// This share's advantages and the whole batch's. A process sees every reward (a sum of
    /// zero-padded shares), so scaling by the batch's spread needs nothing more.
    fn advantages(
        &self,
        rewards: &[f32],
        first: usize,
        total: usize,
    ) -> Result<(Advantages, Advantages), TrainError> {
        let g = self.settings.num_generations;
        if self.collective.size() == 1 {
            let batch = phases::advantages(rewards, &self.settings)?;
            return Ok((batch.clone(), batch));
        }
        let batch_rewards = self.gather_rows(rewards, first * g, total * g)?;
        let batch = phases::advantages(&batch_rewards, &self.settings)?;
        let prompts_here = rewards.len() / g.max(1);
        Ok((batch.rows(first * g..(first + prompts_here) * g), batch))
    }

    /// The share's rollouts grouped per prompt, with the reference model's log-probabilities
    /// when the KL term needs them; the seconds the reference took.
    fn rollouts_with_reference(
        &self,
        sampled: &Sampled<B>,
    ) -> Result<(musketeers_rl::Rollouts, f64), TrainError> {
        let s = &self.settings;
        let mut rollouts = phases::group_rollouts(
            &sampled.prompt_ids,
            sampled.generation.tokens.clone(),
            &sampled.rewards,
            s.num_generations,
        );
        let reference_start = Instant::now();
        if s.grpo.loss.beta > 0.0 {
            let reference = self
                .policy
                .without_adapters()
                .with_precision(self.precision);
            rollouts.ref_logprobs = Some(phases::reference_logprobs(
                &reference,
                phases::reference_context(sampled.context.tokens()),
                &rollouts,
                s.temperature,
            )?);
        }
        Ok((rollouts, reference_start.elapsed().as_secs_f64()))
    }

    /// The loss over the share and its gradients, normalised by the whole batch's tokens.
    fn loss_and_gradients(
        &self,
        context: &crate::method::system::Context<B>,
        rollouts: &musketeers_rl::Rollouts,
        advantages: &Advantages,
        total: usize,
    ) -> Result<phases::LossOutcome, TrainError> {
        let mut tokens = [counted_tokens(rollouts, advantages, &self.settings.grpo)];
        self.collective.sum_f64(&mut tokens)?;
        let share = BatchShare {
            total_prompts: total,
            total_tokens: tokens[0],
            split: self.collective.size() > 1,
        };
        let device = self.policy.embed_tokens.weight.device();
        phases::loss_and_gradients(
            self.system.as_ref(),
            self.trained(),
            context,
            rollouts,
            advantages,
            &self.settings,
            share,
            &device,
        )
    }

    /// The update: gradients summed over processes, clipped, applied by AdamW at this step's
    /// learning rates.
    fn update(&mut self, outcome: phases::LossOutcome) -> Result<Update, TrainError> {
        let update_start = Instant::now();
        let mut grads = outcome.grads;
        let mut metrics = outcome.metrics;
        if self.collective.size() > 1 {
            let trained = self.trained();
            let mut flat = trained.flatten(&grads);
            self.collective.sum_f32(&mut flat)?;
            grads = trained.unflatten(&flat)?;
            metrics = self.batch_metrics(&metrics, outcome.counted_tokens)?;
        }
        let s = &self.settings;
        let norms =
            phases::clip_gradients(self.trained(), &mut grads, s.max_grad_norm, self.step + 1)?;
        let learning_rate = s.learning_rate_at(self.step);
        let interface_learning_rate = s.interface_learning_rate * s.schedule.factor(self.step);
        // The router is a bandit over a few experts with a noisy reward; it moves
        // ROUTER_LR_SCALE times faster than the policy so routing settles within a run.
        let mut rates = [0.0; 3];
        rates[Group::Adapters as usize] = learning_rate;
        rates[Group::Interface as usize] = interface_learning_rate;
        rates[Group::Router as usize] = learning_rate * ROUTER_LR_SCALE;
        let trained = Trained {
            policy: self.policy.clone(),
            interface: self.interface.take(),
            router: self.router.take(),
        };
        let trained = self.optimizer.step(trained, grads, rates);
        self.policy = trained.policy;
        self.interface = trained.interface;
        self.router = trained.router;
        Ok(Update {
            metrics,
            norms,
            learning_rate,
            interface_learning_rate,
            routing_entropy: outcome.routing_entropy,
            loss_seconds: outcome.loss_seconds,
            update_seconds: outcome.backward_seconds + update_start.elapsed().as_secs_f64(),
        })
    }

    /// Where the gradient went and what C looked like this step.
    fn diagnostics(
        &self,
        update: &Update,
        context: &crate::method::system::Context<B>,
    ) -> StepDiagnostics {
        let fused = context.fused.as_ref();
        let norms = &update.norms.groups;
        let gates = self
            .interface
            .as_ref()
            .and_then(|i| i.gates())
            .map(|g| g.inner());
        StepDiagnostics {
            grad_norm_adapters: norms[Group::Adapters as usize].unwrap_or(0.0),
            grad_norm_interface: norms[Group::Interface as usize],
            grad_norm_router: norms[Group::Router as usize],
            learning_rate: update.learning_rate,
            interface_learning_rate: self
                .interface
                .as_ref()
                .map(|_| update.interface_learning_rate),
            embedding_rms: self.embedding_rms,
            context_rms: fused.map(|f| rms(f.context.clone().inner())),
            context_prompt_rms: fused.map(|f| {
                let c = f.context.clone().inner();
                rms(c.clone() - c.mean_dim(0))
            }),
            latent_attention_entropy: fused
                .map(|f| latent_attention_entropy(f.attention.clone().inner()))
                .unwrap_or_default(),
            context_gate_mean: gates
                .as_ref()
                .map(|g| g.clone().abs().mean().into_scalar().elem()),
            context_gate_max: gates.map(|g| g.abs().max().into_scalar().elem()),
        }
    }

    /// Every process's `values` (rows `first..first + values.len()` of `total`), in order.
    fn gather_rows(
        &self,
        values: &[f32],
        first: usize,
        total: usize,
    ) -> Result<Vec<f32>, TrainError> {
        let mut all = vec![0.0f64; total];
        for (slot, v) in all[first..first + values.len()].iter_mut().zip(values) {
            *slot = f64::from(*v);
        }
        self.collective.sum_f64(&mut all)?;
        Ok(all.into_iter().map(|v| v as f32).collect())
    }

    /// The batch's rollout figures: this process's alone, or every process's together.
    fn rollout_figures(
        &self,
        rollouts: &musketeers_rl::Rollouts,
        advantages: &musketeers_rl::advantages::Advantages,
        batch_advantages: &musketeers_rl::advantages::Advantages,
    ) -> Result<RolloutStats, TrainError> {
        let local = rollout_stats(rollouts, advantages, &self.settings.grpo);
        if self.collective.size() == 1 {
            return Ok(local);
        }
        let n = rollouts.completion_ids.len() as f64;
        let mut sums = [
            local.mean_completion_length * n,
            local.truncation_rate * n,
            n,
        ];
        self.collective.sum_f64(&mut sums)?;
        Ok(RolloutStats {
            reward_mean: batch_advantages.reward_mean,
            reward_std: batch_advantages.reward_std,
            frac_reward_zero_std: batch_advantages.frac_reward_zero_std,
            mean_completion_length: sums[0] / sums[2].max(1.0),
            truncation_rate: sums[1] / sums[2].max(1.0),
        })
    }

    /// The step's loss figures over every process: losses (already weighted) summed, the
    /// rest token-weighted means, extremes kept.
    fn batch_metrics(&self, local: &GrpoMetrics, counted: f64) -> Result<GrpoMetrics, TrainError> {
        let mut sums = [
            local.loss,
            local.kl.unwrap_or(0.0) * counted,
            local.entropy.unwrap_or(0.0) * counted,
            local.clip_ratio_low_mean * counted,
            local.clip_ratio_high_mean * counted,
            local.clip_ratio_region_mean * counted,
            counted,
        ];
        self.collective.sum_f64(&mut sums)?;
        let n = sums[6].max(1.0);
        Ok(GrpoMetrics {
            loss: sums[0],
            kl: local.kl.map(|_| sums[1] / n),
            entropy: local.entropy.map(|_| sums[2] / n),
            clip_ratio_low_mean: sums[3] / n,
            clip_ratio_high_mean: sums[4] / n,
            clip_ratio_region_mean: sums[5] / n,
            // Extremes stay this process's: a sum cannot carry a min or a max.
            clip_ratio_low_min: local.clip_ratio_low_min,
            clip_ratio_high_max: local.clip_ratio_high_max,
        })
    }
}
