//! A training run as a TOML file: serde defaults, unknown keys rejected with their name.

use musketeers_lm::{LoraConfig, Precision};
use musketeers_rl::{LossType, LrSchedulerType, ScaleRewards};
use musketeers_verify::records::Columns;
use musketeers_verify::task::FileFormat;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::TrainError;

/// What an expert passes on: one pooled vector, or all of its prompt tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpertReadout {
    Last,
    First,
    Mean,
    All,
}

/// `fused` is the paper's system; `single` trains the policy alone with the same GRPO;
/// `hard-route` lets a router pick one expert per prompt; `text-collab` pastes the experts'
/// short text answers into the policy's prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    #[default]
    Fused,
    Single,
    HardRoute,
    TextCollab,
}

impl Mode {
    /// The name configs, `--modes` and reports use (its serde name).
    pub fn name(self) -> &'static str {
        match self {
            Mode::Fused => "fused",
            Mode::Single => "single",
            Mode::HardRoute => "hard-route",
            Mode::TextCollab => "text-collab",
        }
    }
}

/// How a completion's answer is found before the task scores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnswerExtraction {
    /// Reasoning Gym's rule: the last `<answer>...</answer>`; none scores 0.
    #[default]
    Tag,
    /// The last `<answer>`, else GSM8K's conventions (`\boxed{}`, `#### N`, the last number):
    /// for small instruct models that answer correctly but ignore the tag format.
    TagOrLastNumber,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub answer_extraction: AnswerExtraction,
    pub policy: PolicyConfig,
    #[serde(default)]
    pub team: Vec<MemberConfig>,
    #[serde(default)]
    pub interface: InterfaceConfig,
    #[serde(default)]
    pub grpo: GrpoConfig,
    pub tasks: Vec<TaskConfig>,
    #[serde(default)]
    pub eval: EvalConfig,
    #[serde(default)]
    pub collab: CollabConfig,
    /// Where the run writes (default `runs/<config file stem>`).
    #[serde(default)]
    pub out_dir: Option<PathBuf>,
    /// Float type of the forward passes that train nothing: the team, rollout sampling and
    /// the reference model. `f32` (the default), `bf16` or `f16` (for GPUs: half the memory
    /// and bandwidth). LoRA, the interface and the optimizer state stay f32.
    #[serde(default, skip_serializing_if = "is_f32")]
    pub dtype: Precision,
    /// How the team's weight matrices are stored: `f16` (the default: half of f32's memory;
    /// products run in f16, everything else in f32; greedy parity with transformers holds on
    /// Qwen2.5-Coder 0.5B and 1.5B, see docs/ARCHITECTURE.md), `bf16` or `f32`.
    #[serde(default = "compact")]
    pub team_weights: Precision,
    /// The reward functions, summed with their weights (TRL's `reward_funcs` and
    /// `reward_weights`); empty: the task's own verifier alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rewards: Vec<RewardConfig>,
    /// Write TensorBoard event files beside `metrics.jsonl` (on by default: a few hundred
    /// bytes a step, and every run is comparable in the dashboards users already have).
    #[serde(default = "yes_tensorboard", skip_serializing_if = "is_true")]
    pub tensorboard: bool,
}

fn is_f32(precision: &Precision) -> bool {
    *precision == Precision::F32
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// A fetched model name, a `.gguf` file or a Hugging Face directory.
    pub model: String,
    #[serde(default)]
    pub lora: LoraConfig,
    /// Render prompts with the model's chat template (when it has one).
    #[serde(default = "yes")]
    pub chat: bool,
    /// The user message; `{question}` is replaced by the task's question.
    #[serde(default = "default_template")]
    pub prompt_template: String,
    /// How the frozen base's weight matrices are stored (the adapters stay f32): `f32` (the
    /// default), `f16` or `bf16`, as [`RunConfig::team_weights`].
    #[serde(default, skip_serializing_if = "is_f32")]
    pub weights: Precision,
}

fn compact() -> Precision {
    Precision::F16
}

fn yes() -> bool {
    true
}

fn default_template() -> String {
    "{question}\nGive only the final answer, as <answer>...</answer>.".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    pub name: String,
    pub model: String,
    /// `hidden_states` index, negative from the end.
    #[serde(default = "last_layer")]
    pub layer: isize,
    #[serde(default = "last_readout")]
    pub readout: ExpertReadout,
    /// Text appended to the prompt the expert reads (e.g. `"<answer>"`), so that its last
    /// hidden state is the one from which it would write the answer, not the one that
    /// starts its reply. Measured on Qwen2.5-Coder-0.5B reading sums: see the README, "The
    /// real experiment". Empty (the default): the prompt as the policy sees it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub readout_suffix: String,
}

fn last_layer() -> isize {
    -1
}

fn last_readout() -> ExpertReadout {
    ExpertReadout::Last
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InterfaceConfig {
    pub latent_dim: usize,
    pub num_latents: usize,
    pub num_heads: usize,
    pub self_attention_blocks: usize,
    pub ffn_multiplier: usize,
    /// The interface's peak learning rate; unset: `grpo.learning_rate`. It follows the same
    /// schedule. Measured on the demo: the interface wants a learning rate no higher than the
    /// adapters' (10x or 2x theirs made its attention saturate on one expert and `C` lose its
    /// dependence on the prompt; see the README).
    pub learning_rate: Option<f64>,
    /// The scale of the context tokens `C`.
    pub context_norm: ContextNorm,
    /// How the policy reads `C`: as a plain prefix (the paper) or through zero-initialised
    /// gated attention (the policy starts exactly as it is without `C`).
    #[serde(skip_serializing_if = "Injection::is_prefix")]
    pub injection: Injection,
    /// Gated only: the gates are `tanh(gate_scale * g)`, `g` trained from 0 at the
    /// interface's learning rate (see `musketeers_fusion::ContextGate`). Adam moves `g` by
    /// about the learning rate a step, so under the linear schedule a gate can reach
    /// `tanh(1)` within a run only when `gate_scale >= 2 / (steps * learning rate)`: the
    /// default 10 suits the demo (600 steps at 5e-4); 500 steps at 1e-4 want 40, 20 steps at
    /// 1e-4 (`--scale cpu-real-read`) 1000.
    #[serde(skip_serializing_if = "is_default_gate_scale")]
    pub gate_scale: f64,
    /// How the interface's output projection starts: `"zero"` (the paper's: `C` the same for
    /// every prompt until it has trained) or `"embedding-rms"` (random, its output at the RMS
    /// of the policy's token embeddings and dependent on the prompt from the first step; for
    /// the gated injection, whose zero gates keep the start exact anyway).
    #[serde(skip_serializing_if = "OutputInit::is_zero")]
    pub output_init: OutputInit,
}

/// How the interface's output projection starts (`interface.output_init`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputInit {
    #[default]
    Zero,
    EmbeddingRms,
}

impl OutputInit {
    fn is_zero(&self) -> bool {
        *self == OutputInit::Zero
    }
}

/// One reward function: the task's verifier, or a program speaking the JSON-lines reward
/// protocol on stdin/stdout (see `crate::running::reward_program`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardConfig {
    /// Its name in `metrics.jsonl` (`reward_functions`) and the report.
    pub name: String,
    #[serde(default = "one_weight")]
    pub weight: f64,
    /// The program and its arguments, started once per run; unset: the task's verifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Seconds the program may take to answer one batch.
    #[serde(default = "reward_timeout")]
    pub timeout_seconds: f64,
}

fn yes_tensorboard() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

fn one_weight() -> f64 {
    1.0
}

fn reward_timeout() -> f64 {
    60.0
}

/// How the policy reads the context tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Injection {
    /// `[C ; prompt]` as ordinary input: the paper's form, kept as the ablation.
    #[default]
    Prefix,
    /// A second softmax over `C`'s keys per layer and head, added through a gate that
    /// starts at 0; `C` takes positions before the prompt's, which keeps its own.
    Gated,
}

impl Injection {
    fn is_prefix(&self) -> bool {
        *self == Injection::Prefix
    }
}

/// The default `interface.gate_scale`.
pub const DEFAULT_GATE_SCALE: f64 = 10.0;

fn is_default_gate_scale(scale: &f64) -> bool {
    *scale == DEFAULT_GATE_SCALE
}

/// How the size of the context tokens is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContextNorm {
    /// As the output projection makes it (it starts at the policy's mean token embedding).
    #[default]
    None,
    /// RMS-normalised, times a learned per-channel gain that starts at the RMS of the
    /// policy's token embeddings: `C` is as large as a real token from the first step.
    EmbeddingRms,
}

impl Default for InterfaceConfig {
    fn default() -> Self {
        Self {
            latent_dim: 512,
            num_latents: 8,
            num_heads: 8,
            self_attention_blocks: 0,
            ffn_multiplier: 4,
            learning_rate: None,
            context_norm: ContextNorm::None,
            injection: Injection::Prefix,
            gate_scale: DEFAULT_GATE_SCALE,
            output_init: OutputInit::Zero,
        }
    }
}

/// GRPO settings, named as TRL's `GRPOConfig` names them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpoConfig {
    pub steps: u64,
    pub prompts_per_step: usize,
    pub num_generations: usize,
    pub max_completion_length: usize,
    pub temperature: f32,
    pub learning_rate: f64,
    /// How every learning rate changes over the run (TRL's `lr_scheduler_type`).
    pub lr_scheduler_type: LrSchedulerType,
    /// Linear warmup from 0 over this many steps.
    pub warmup_steps: u64,
    pub beta: f64,
    pub epsilon: f64,
    pub epsilon_high: Option<f64>,
    pub loss_type: LossType,
    pub scale_rewards: ScaleRewards,
    pub mask_truncated_completions: bool,
    pub max_grad_norm: f32,
    pub seed: u64,
    /// Save a checkpoint every this many steps (and at the end).
    pub save_steps: u64,
    /// Prompts per backward pass (gradient accumulation over the step's prompts, whole
    /// groups); unset: all at once. Lower it when long completions or a large vocabulary run
    /// out of memory: the gradient is the same up to rounding.
    pub micro_batch_prompts: Option<usize>,
    /// Completions per backward pass instead (TRL's `per_device_train_batch_size`): a
    /// multiple of `num_generations` (whole groups), or a divisor of it, which cuts a group
    /// into parts that each recompute the prompt's prefix. The least memory a step can hold;
    /// the gradient is the same up to rounding. When set, `micro_batch_prompts` is ignored
    /// (as TRL's `max_steps` overrides `num_train_epochs`), so that a scale or `--set` can
    /// change a config that sets the other.
    pub micro_batch_completions: Option<usize>,
    /// AdamW over everything trained (TRL's names; Burn's defaults, weight decay off).
    pub adam_beta1: f32,
    pub adam_beta2: f32,
    pub adam_epsilon: f32,
    pub weight_decay: f32,
    /// DAPO's dynamic sampling: groups whose completions all earn the same reward are
    /// dropped and the batch refilled with new prompts, up to `max_sampling_rounds` rounds
    /// of `prompts_per_step` prompts (single and fused; one process).
    #[serde(skip_serializing_if = "is_false")]
    pub dynamic_sampling: bool,
    #[serde(skip_serializing_if = "is_default_rounds")]
    pub max_sampling_rounds: usize,
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// The default `grpo.max_sampling_rounds`.
pub const DEFAULT_SAMPLING_ROUNDS: usize = 3;

fn is_default_rounds(rounds: &usize) -> bool {
    *rounds == DEFAULT_SAMPLING_ROUNDS
}

impl GrpoConfig {
    /// Candidate prompts drawn per step: one batch, or with dynamic sampling one batch per
    /// round (the rounds a step does not need are drawn, never sampled).
    pub fn candidates_per_step(&self) -> usize {
        let rounds = if self.dynamic_sampling {
            self.max_sampling_rounds.max(1)
        } else {
            1
        };
        self.prompts_per_step * rounds
    }

    /// The training stream's index of candidate `i` of `step`. The first batch of a step is
    /// indices `step * prompts_per_step..`, as without dynamic sampling; refills come from
    /// a stream of their own far beyond (so turning dynamic sampling on changes no step's
    /// first batch).
    pub fn candidate_index(&self, step: u64, i: usize) -> u64 {
        let p = self.prompts_per_step as u64;
        let i = i as u64;
        if i < p {
            return step * p + i;
        }
        let refills = (self.candidates_per_step() as u64).saturating_sub(p);
        REFILL_STREAM + step * refills + (i - p)
    }
}

/// Where refill candidates start in a task's index space.
const REFILL_STREAM: u64 = 1 << 40;

impl Default for GrpoConfig {
    fn default() -> Self {
        Self {
            steps: 100,
            prompts_per_step: 4,
            num_generations: 8,
            max_completion_length: 64,
            temperature: 1.0,
            learning_rate: 1e-5,
            lr_scheduler_type: LrSchedulerType::Linear,
            warmup_steps: 0,
            beta: 0.04,
            epsilon: 0.2,
            epsilon_high: None,
            loss_type: LossType::Dapo,
            scale_rewards: ScaleRewards::Group,
            mask_truncated_completions: false,
            max_grad_norm: 1.0,
            seed: 0,
            save_steps: 25,
            micro_batch_prompts: None,
            micro_batch_completions: None,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-5,
            weight_decay: 0.0,
            dynamic_sampling: false,
            max_sampling_rounds: DEFAULT_SAMPLING_ROUNDS,
        }
    }
}

/// `text-collab` settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollabConfig {
    /// Longest answer an expert writes (greedy).
    pub max_new_tokens: usize,
}

impl Default for CollabConfig {
    fn default() -> Self {
        Self { max_new_tokens: 16 }
    }
}

/// Greedy evaluation after training on problems the run never trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Held-out problems (0: no evaluation).
    pub problems: usize,
    /// The seed of the evaluation stream: one set of problems for every training seed.
    pub seed: u64,
    /// Also evaluate a fused run with its context tokens removed (the "no C" ablation).
    pub without_context: bool,
    /// Held-out tasks to evaluate on instead of the training stream (e.g. GSM8K's
    /// `test.jsonl`): each gives its first `problems` entries (a file: its first lines, in file
    /// order; a generator: its entries under `seed`), reported per task.
    pub tasks: Vec<TaskConfig>,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            problems: 256,
            seed: 0x5EED_E7A1,
            without_context: true,
            tasks: Vec::new(),
        }
    }
}

/// One task: a built-in generator, or a file (JSON lines, or Parquet).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    /// A generator name (`musketeers verify sample --task list`), or a file task's label.
    pub name: String,
    #[serde(default = "one")]
    pub weight: f64,
    /// Generator settings, Reasoning Gym's names (e.g. `min_terms = 2`).
    #[serde(default)]
    pub options: BTreeMap<String, toml::Value>,
    /// A file of problems instead of a generator (relative paths from the working
    /// directory): JSON lines, or Parquet when it ends in `.parquet` (a Hugging Face dataset's
    /// own files). Training draws its records without replacement within an epoch, seeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// The file's layout: `gsm8k`, `reasoning-gym`, `qa-exact` or `qa-numeric`; default
    /// `gsm8k` when the task is named `gsm8k`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<FileFormat>,
    /// The file's column (JSONL key) that holds the question, when it is not `question`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub question_column: Option<String>,
    /// The file's column (JSONL key) that holds the answer, when it is not `answer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_column: Option<String>,
}

impl TaskConfig {
    /// A generator task with default settings.
    pub fn generator(name: &str) -> Self {
        Self {
            name: name.into(),
            weight: 1.0,
            options: BTreeMap::new(),
            file: None,
            format: None,
            question_column: None,
            answer_column: None,
        }
    }

    /// Where the question and answer are in the file.
    pub fn columns(&self) -> Columns {
        Columns {
            question: self.question_column.clone(),
            answer: self.answer_column.clone(),
        }
    }

    /// The file's format, when this is a file task.
    pub fn file_format(&self) -> Result<Option<FileFormat>, TrainError> {
        let bad = |m: String| Err(TrainError::BadInput(format!("task {}: {m}", self.name)));
        match (&self.file, self.format) {
            (None, None) if self.question_column.is_some() || self.answer_column.is_some() => {
                bad("`question_column` and `answer_column` need a `file`".into())
            }
            (None, None) => Ok(None),
            (None, Some(_)) => bad("`format` needs a `file`".into()),
            (Some(_), _) if !self.options.is_empty() => {
                bad("`options` are generator settings; a file task takes none".into())
            }
            (Some(_), Some(format)) => Ok(Some(format)),
            (Some(_), None) if self.name == musketeers_verify::gsm8k::NAME => {
                Ok(Some(FileFormat::Gsm8k))
            }
            (Some(file), None) => bad(format!(
                "{} needs a `format` (gsm8k, reasoning-gym, qa-exact or qa-numeric)",
                file.display()
            )),
        }
    }
}

fn one() -> f64 {
    1.0
}

/// Whether backward passes of `completions` each hold whole groups of `num_generations`, or
/// cut one group into equal parts: the one rule for `grpo.micro_batch_completions`.
pub fn cuts_groups_evenly(completions: usize, num_generations: usize) -> bool {
    completions > 0
        && (completions.is_multiple_of(num_generations)
            || num_generations.is_multiple_of(completions))
}

fn bad(message: &str) -> Result<(), TrainError> {
    Err(TrainError::BadInput(message.into()))
}

impl RunConfig {
    /// This config with `key=value` overrides applied, as `--set grpo.learning_rate=1e-4`:
    /// `key` is a dotted path into the TOML layout (tables only), `value` a TOML value (a
    /// bare word that is not one is taken as a string). The result is validated.
    pub fn with_overrides(&self, overrides: &[String]) -> Result<Self, TrainError> {
        if overrides.is_empty() {
            return Ok(self.clone());
        }
        let bad = |m: String| TrainError::BadInput(m);
        let mut root = toml::Value::try_from(self).map_err(|e| bad(format!("config: {e}")))?;
        for item in overrides {
            let (key, text) = item
                .split_once('=')
                .ok_or_else(|| bad(format!("--set {item:?}: expected KEY=VALUE")))?;
            let value = toml::from_str::<toml::Table>(&format!("v = {text}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(text.to_string()));
            let path: Vec<&str> = key.trim().split('.').collect();
            let (last, tables) = path
                .split_last()
                .ok_or_else(|| bad(format!("--set {item:?}: empty key")))?;
            let mut table = root
                .as_table_mut()
                .ok_or_else(|| bad("config is not a table".into()))?;
            for name in tables {
                table = table
                    .entry(name.to_string())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                    .as_table_mut()
                    .ok_or_else(|| bad(format!("--set {item:?}: {name} is not a table")))?;
            }
            table.insert(last.to_string(), value);
        }
        let config: Self = root
            .try_into()
            .map_err(|e| bad(format!("--set {}: {e}", overrides.join(" "))))?;
        config.validate()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| TrainError::BadInput(format!("{}: {e}", path.display())))?;
        let config: Self = toml::from_str(&text)
            .map_err(|e| TrainError::BadInput(format!("{}: {e}", path.display())))?;
        config
            .validate()
            .map_err(|e| TrainError::BadInput(format!("{}: {e}", path.display())))?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), TrainError> {
        self.check_team_and_tasks()?;
        self.check_sampling()?;
        self.check_rewards()?;
        self.check_batch_and_prompt()?;
        self.check_rates()?;
        self.policy.lora.validate()?;
        Ok(())
    }

    fn check_team_and_tasks(&self) -> Result<(), TrainError> {
        if self.mode != Mode::Single && self.team.is_empty() {
            return bad(
                "modes fused, hard-route and text-collab need at least one [[team]] member",
            );
        }
        if self.tasks.is_empty() {
            return bad("at least one [[tasks]] entry is needed");
        }
        for task in self.tasks.iter().chain(&self.eval.tasks) {
            task.file_format()?;
        }
        Ok(())
    }

    fn check_sampling(&self) -> Result<(), TrainError> {
        if self.grpo.num_generations < 2 {
            return bad("grpo.num_generations must be at least 2 (advantages compare samples)");
        }
        if self.grpo.dynamic_sampling && self.grpo.max_sampling_rounds == 0 {
            return bad("grpo.max_sampling_rounds must be at least 1");
        }
        if self.grpo.dynamic_sampling && self.mode == Mode::HardRoute {
            return bad(
                "grpo.dynamic_sampling cannot be used with hard-route: its router samples \
                 each prompt's expert, and the kept groups' context is recomputed",
            );
        }
        Ok(())
    }

    fn check_rewards(&self) -> Result<(), TrainError> {
        for r in &self.rewards {
            if !(r.weight.is_finite() && r.timeout_seconds.is_finite() && r.timeout_seconds > 0.0) {
                return Err(TrainError::BadInput(format!(
                    "rewards `{}`: weight and timeout_seconds must be finite (timeout positive)",
                    r.name
                )));
            }
            if r.command.as_ref().is_some_and(Vec::is_empty) {
                return Err(TrainError::BadInput(format!(
                    "rewards `{}`: command is empty (give the program and its arguments)",
                    r.name
                )));
            }
        }
        Ok(())
    }

    fn check_batch_and_prompt(&self) -> Result<(), TrainError> {
        if self.grpo.micro_batch_prompts == Some(0) {
            return bad("grpo.micro_batch_prompts must be at least 1 (unset: all prompts at once)");
        }
        if let Some(c) = self.grpo.micro_batch_completions {
            let g = self.grpo.num_generations;
            if !cuts_groups_evenly(c, g) {
                return bad(&format!(
                    "grpo.micro_batch_completions = {c} must be a multiple or a divisor of \
                     grpo.num_generations = {g} (whole groups, or equal parts of one)"
                ));
            }
        }
        if self.grpo.prompts_per_step == 0 || self.grpo.max_completion_length == 0 {
            return bad("grpo.prompts_per_step and grpo.max_completion_length must be positive");
        }
        if !self.policy.prompt_template.contains("{question}") {
            return bad("policy.prompt_template must contain {question}");
        }
        Ok(())
    }

    /// Learning rates, the gate's scale and AdamW's settings.
    fn check_rates(&self) -> Result<(), TrainError> {
        let i = &self.interface;
        for (name, lr) in [
            ("grpo.learning_rate", Some(self.grpo.learning_rate)),
            ("interface.learning_rate", i.learning_rate),
        ] {
            if let Some(lr) = lr
                && !(lr.is_finite() && lr >= 0.0)
            {
                return Err(TrainError::BadInput(format!(
                    "{name} = {lr} is not a non-negative number"
                )));
            }
        }
        if !(i.gate_scale.is_finite() && i.gate_scale > 0.0) {
            return bad("interface.gate_scale must be a positive number");
        }
        let g = &self.grpo;
        for (name, beta) in [
            ("grpo.adam_beta1", g.adam_beta1),
            ("grpo.adam_beta2", g.adam_beta2),
        ] {
            if !(0.0..1.0).contains(&beta) {
                return Err(TrainError::BadInput(format!(
                    "{name} = {beta} is not in [0, 1)"
                )));
            }
        }
        if !(g.adam_epsilon.is_finite() && g.adam_epsilon > 0.0) {
            return Err(TrainError::BadInput(format!(
                "grpo.adam_epsilon = {} is not a positive number",
                g.adam_epsilon
            )));
        }
        if !(g.weight_decay.is_finite() && g.weight_decay >= 0.0) {
            return Err(TrainError::BadInput(format!(
                "grpo.weight_decay = {} is not a non-negative number",
                g.weight_decay
            )));
        }
        Ok(())
    }
}
