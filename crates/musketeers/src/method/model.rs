//! A trained team as a model of its own: the policy (with its adapters), the frozen team, the
//! interface and router when its system has them, and the system that joins them. It gives a
//! prompt its context, completes greedily, and loads from a run directory, on any backend:
//! evaluation and serving need no autodiff, no optimizer and no run loop. The trainer
//! ([`crate::method::train::Trainer`]) holds the same modules on an autodiff backend and lends them
//! out as a `TeamModel` ([`crate::method::train::Trainer::model`]).

use std::cell::RefCell;
use std::path::Path;
use std::sync::Arc;

use burn::module::Module;
use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder, RecorderError};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use musketeers_fusion::{InitRng, LatentInterface, LatentInterfaceConfig};
use musketeers_lm::generate::{GenerationConfig, generate_with_context};
use musketeers_lm::sampling::SamplingConfig;
use musketeers_lm::tokenizer::{ChatMessage, TextTokenizer};
use musketeers_lm::{Llama, Precision, Pretrained, SoftContext, catalog};

use crate::error::TrainError;
use crate::method::system::hard_route::Router;
use crate::method::system::{self, Infer, InferenceParts, Inferred, Needs};
use crate::method::team::TeamMember;
use crate::progress::DecodeProgress;
use crate::run_config::{ContextNorm, Injection, OutputInit, RunConfig};

/// How a question becomes the policy's prompt: the run's template (`{question}` marks the
/// question), through the policy's chat template when `chat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptFormat {
    pub template: String,
    pub chat: bool,
}

impl Default for PromptFormat {
    fn default() -> Self {
        Self {
            template: "{question}".into(),
            chat: false,
        }
    }
}

impl PromptFormat {
    pub fn of(config: &RunConfig) -> Self {
        Self {
            template: config.policy.prompt_template.clone(),
            chat: config.policy.chat,
        }
    }

    /// The policy's prompt for `question`.
    pub fn render(&self, tokenizer: &TextTokenizer, question: &str) -> Result<String, TrainError> {
        let user = self.template.replace("{question}", question);
        if !self.chat {
            return Ok(user);
        }
        Ok(tokenizer.apply_chat_template(
            &[ChatMessage {
                role: "user".into(),
                content: user,
            }],
            true,
        )?)
    }
}

/// How the model decodes when a caller does not say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoding {
    pub max_new_tokens: usize,
    pub eos_token_ids: Vec<u32>,
}

/// A prompt ready to generate from, with what the team did for it.
#[derive(Debug, Clone)]
pub struct PromptContext<B: Backend> {
    pub ids: Vec<u32>,
    /// The system's context tokens `[K, d]`, if it has them.
    pub prefix: Option<Tensor<B, 2>>,
    /// The policy's context gates `[layers, heads]` when it reads the prefix gated.
    pub gates: Option<Tensor<B, 2>>,
    /// Share of the interface's attention per expert (empty without an interface).
    pub utilization: Vec<f32>,
    pub routing_entropy: Option<f32>,
    pub routing_entropy_normalized: Option<f32>,
}

/// A trained team, ready to answer.
#[derive(Clone)]
pub struct TeamModel<B: Backend> {
    pub policy: Llama<B>,
    pub tokenizer: Arc<TextTokenizer>,
    pub interface: Option<LatentInterface<B>>,
    pub router: Option<Router<B>>,
    pub team: Arc<[TeamMember<B>]>,
    pub system: Arc<dyn Infer<B>>,
    /// Precision of the passes: the team's (cast when loaded) and the policy's sampling.
    pub precision: Precision,
    pub decoding: Decoding,
    pub prompt: PromptFormat,
    /// Training steps behind it.
    pub step: u64,
}

impl<B: Backend> std::fmt::Debug for TeamModel<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TeamModel")
            .field("system", &self.system.name())
            .field("team", &self.expert_names())
            .field("step", &self.step)
            .finish()
    }
}

impl<B: Backend> TeamModel<B> {
    /// The model of `config` before any training: fresh adapters, a fresh interface.
    pub fn from_config(config: &RunConfig, device: &B::Device) -> Result<Self, TrainError> {
        let system = system::build::<B>(config);
        let modules = load_modules::<B, B>(config, system.needs(), None, device, device)?;
        Ok(Self::assemble(config, modules, system, 0))
    }

    /// The model of `config` with the adapters, interface and router a checkpoint saved
    /// (`checkpoint`: the directory, `step`: its step). A run directory's newest checkpoint:
    /// `TeamModel::from_run_dir` ([`crate::running::rundir`]).
    pub fn from_checkpoint(
        config: &RunConfig,
        checkpoint: &Path,
        step: u64,
        device: &B::Device,
    ) -> Result<Self, TrainError> {
        let system = system::build::<B>(config);
        let mut modules = load_modules::<B, B>(
            config,
            system.needs(),
            Some(&checkpoint.join("adapter")),
            device,
            device,
        )?;
        load_trained_records(checkpoint, &mut modules.interface, &mut modules.router)?;
        Ok(Self::assemble(config, modules, system, step))
    }

    fn assemble(
        config: &RunConfig,
        modules: Modules<B, B>,
        system: Arc<dyn Infer<B>>,
        step: u64,
    ) -> Self {
        let team: Vec<TeamMember<B>> = modules
            .team
            .into_iter()
            .map(|member| member.with_precision(config.dtype))
            .collect();
        Self {
            policy: modules.policy,
            tokenizer: Arc::new(modules.tokenizer),
            interface: modules.interface,
            router: modules.router,
            team: team.into(),
            system,
            precision: config.dtype,
            decoding: Decoding {
                max_new_tokens: config.grpo.max_completion_length,
                eos_token_ids: modules.eos_token_ids,
            },
            prompt: PromptFormat::of(config),
            step,
        }
    }

    pub fn expert_names(&self) -> Vec<String> {
        self.team.iter().map(|m| m.name.clone()).collect()
    }

    pub fn parts(&self) -> InferenceParts<'_, B> {
        InferenceParts {
            policy: &self.policy,
            interface: self.interface.as_ref(),
            router: self.router.as_ref(),
            team: &self.team,
        }
    }

    fn infer(&self, prompts: &[String], ids: &[Vec<u32>]) -> Result<Inferred<B>, TrainError> {
        self.system.infer(&self.parts(), prompts, ids)
    }

    /// The questions as the policy's prompts: the system's notes (`text-collab`), the
    /// template, the chat template.
    pub fn prompts(&self, questions: &[String]) -> Result<Vec<String>, TrainError> {
        self.system
            .questions(&self.parts(), questions)?
            .iter()
            .map(|q| self.prompt.render(&self.tokenizer, q))
            .collect()
    }

    /// [`Self::prompts`] for one question.
    pub fn prompt(&self, question: &str) -> Result<String, TrainError> {
        Ok(self.prompts(&[question.to_string()])?.remove(0))
    }

    /// The policy's tokens of `prompts`.
    pub fn encode(&self, prompts: &[String]) -> Result<Vec<Vec<u32>>, TrainError> {
        encode_prompts(&self.tokenizer, prompts)
    }

    /// The team's context tokens for `prompts` (already rendered), if the system has them.
    pub fn context(&self, prompts: &[String]) -> Result<Option<SoftContext<B>>, TrainError> {
        let ids = self.encode(prompts)?;
        Ok(self.infer(prompts, &ids)?.tokens())
    }

    /// The gates through which the policy reads its context `[layers, heads]`, when the
    /// interface has them.
    pub fn context_gates(&self) -> Option<Tensor<B, 2>> {
        self.interface.as_ref().and_then(LatentInterface::gates)
    }

    /// The policy as it samples: in the model's precision.
    pub fn sampler(&self) -> Llama<B> {
        self.policy.clone().with_precision(self.precision)
    }

    /// Check that `prompt` and `max_new_tokens` new tokens fit every model that reads them:
    /// at most `max_prompt_tokens` prompt tokens in the policy's and in each expert's
    /// tokenizer, and within each model's context length (the policy's counting its context
    /// tokens). Cheap (tokenizing only), so a server checks before any model runs; the error
    /// names the model and the limit.
    pub fn check_prompt_fits(
        &self,
        prompt: &str,
        max_new_tokens: usize,
        max_prompt_tokens: usize,
    ) -> Result<usize, TrainError> {
        let ids = self.tokenizer.encode(prompt, true)?;
        let context = self.interface.as_ref().map_or(0, |i| i.latents.dims()[0]);
        let too_long = |who: &str, n: usize, limit: usize, what: &str| {
            TrainError::BadInput(format!(
                "the prompt is {n} tokens for {who}, over the limit of {limit} ({what})"
            ))
        };
        if ids.len() > max_prompt_tokens {
            return Err(too_long(
                "the policy",
                ids.len(),
                max_prompt_tokens,
                "the server's prompt limit",
            ));
        }
        if let Some(length) = self.policy.max_position_embeddings {
            let needed = ids.len() + context + max_new_tokens;
            if needed > length {
                return Err(TrainError::BadInput(format!(
                    "the prompt ({} tokens), its {context} context tokens and {max_new_tokens} \
                     new tokens need {needed} positions; the policy's context length is {length}",
                    ids.len()
                )));
            }
        }
        for member in self.team.iter() {
            let n = member.tokenizer.encode(prompt, true)?.len();
            let limit = member
                .model
                .max_position_embeddings
                .map_or(max_prompt_tokens, |l| l.min(max_prompt_tokens));
            if n > limit {
                return Err(too_long(
                    &format!("expert {}", member.name),
                    n,
                    limit,
                    "its context length or the server's prompt limit",
                ));
            }
        }
        Ok(ids.len())
    }

    /// What generating from `prompt` needs (a server's request): its tokens, the system's
    /// context tokens `[K, d]` and what the team did for it.
    pub fn prompt_context(&self, prompt: &str) -> Result<PromptContext<B>, TrainError> {
        let prompts = [prompt.to_string()];
        let mut ids = self.encode(&prompts)?;
        let context = self.infer(&prompts, &ids)?;
        let (utilization, entropy, normalized) = context.utilization(self.team.len());
        let soft = context.tokens();
        let gates = soft.as_ref().and_then(|c| c.gates.clone());
        let prefix = soft.map(|c| {
            let [_, k, d] = c.tokens.dims();
            c.tokens.reshape([k, d])
        });
        Ok(PromptContext {
            ids: ids.remove(0),
            prefix,
            gates,
            utilization,
            routing_entropy: entropy,
            routing_entropy_normalized: normalized,
        })
    }

    /// Greedy completions of `prompts`, from `[C ; prompt]` when `with_context` and the
    /// system has a context, else from the prompt alone (the "no C at evaluation" ablation).
    pub fn complete_greedy(
        &self,
        prompts: &[String],
        with_context: bool,
    ) -> Result<Vec<String>, TrainError> {
        self.complete_greedy_observed(prompts, with_context, &mut |_| {})
    }

    /// [`Self::complete_greedy`], telling `done` how many of the prompts are decoded after
    /// every decode step (fractions included: a row counts as its share of new tokens).
    pub fn complete_greedy_observed(
        &self,
        prompts: &[String],
        with_context: bool,
        done: &mut dyn FnMut(f64),
    ) -> Result<Vec<String>, TrainError> {
        let device = self.policy.embed_tokens.weight.device();
        let sampler = self.sampler();
        let max_new_tokens = self.decoding.max_new_tokens;
        let mut out = Vec::with_capacity(prompts.len());
        for chunk in prompts.chunks(64) {
            let progress = DecodeProgress {
                before: out.len() as f64,
                rows: chunk.len(),
                max_new_tokens,
                report: RefCell::new(&mut *done),
            };
            let ids = self.encode(chunk)?;
            let context = if with_context {
                self.infer(chunk, &ids)?.tokens()
            } else {
                None
            };
            let generation = generate_with_context(
                &sampler,
                &ids,
                context,
                &GenerationConfig {
                    max_new_tokens,
                    num_return_sequences: 1,
                    eos_token_ids: self.decoding.eos_token_ids.clone(),
                    sampling: SamplingConfig::default(),
                },
                Some(&progress),
                &device,
            )?;
            for tokens in &generation.tokens {
                out.push(self.tokenizer.decode(tokens, true)?);
            }
            done(out.len() as f64);
        }
        Ok(out)
    }
}

/// The policy's token ids of each prompt (special tokens added), as sampling and scoring read
/// them.
pub fn encode_prompts(
    tokenizer: &TextTokenizer,
    prompts: &[String],
) -> Result<Vec<Vec<u32>>, TrainError> {
    Ok(prompts
        .iter()
        .map(|t| tokenizer.encode(t, true))
        .collect::<Result<Vec<_>, _>>()?)
}

/// A run's modules, loaded: the policy on `B` with its tokenizer and end tokens, the team on
/// `T` (the trainer keeps it off the autodiff backend), and the interface and router when the
/// system reads them.
pub(crate) struct Modules<B: Backend, T: Backend> {
    pub policy: Llama<B>,
    pub tokenizer: TextTokenizer,
    pub eos_token_ids: Vec<u32>,
    pub team: Vec<TeamMember<T>>,
    pub interface: Option<LatentInterface<B>>,
    pub router: Option<Router<B>>,
}

/// Held while Burn's process-wide generator is seeded and drawn from (see [`seeded_init`]).
static INIT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `build` a module with Burn's generator seeded with `seed`, every random value drawn before
/// this returns.
///
/// Why: Burn draws initial values from one generator per process (and a parameter lazily, at
/// its first use), so a seed set in one thread does not fix the values another thread's
/// draws take from the same stream. The modules of a run draw from generators of their own
/// (the interface: `musketeers_fusion::InitRng`; LoRA adapters: their seed); what must use
/// Burn's initialisers (the demo's from-scratch experts) builds through here, under one lock.
/// Code of yours that draws from Burn's generator while a run builds a module in another
/// thread keeps both reproducible by building through here too.
pub fn seeded_init<B: Backend, M: Module<B>>(
    device: &B::Device,
    seed: u64,
    build: impl FnOnce() -> M,
) -> M {
    struct Touch;
    impl<B: Backend> burn::module::ModuleVisitor<B> for Touch {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D>>) {
            let _ = param.val();
        }
    }
    let _generator = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    B::seed(device, seed);
    let module = build();
    module.visit(&mut Touch);
    module
}

fn load_pretrained<B: Backend>(
    spec: &str,
    weights: Precision,
    with_head: bool,
    device: &B::Device,
) -> Result<(Pretrained<B>, TextTokenizer), TrainError> {
    let path = catalog::resolve(spec).map_err(musketeers_lm::LmError::from)?;
    let mut pretrained = if with_head {
        Pretrained::<B>::load_with_weights(&path, device, weights)?
    } else {
        Pretrained::<B>::load_for_hidden_states(&path, device, weights)?
    };
    let tokenizer = pretrained
        .tokenizer
        .take()
        .ok_or_else(|| TrainError::BadInput(format!("model {spec} has no tokenizer")))?;
    Ok((pretrained, tokenizer))
}

/// Load `config`'s policy (fresh LoRA adapters, or those saved in `adapters`), and what its
/// system `needs`: the team, a fresh interface and router (initial values drawn from the run's
/// seed).
pub(crate) fn load_modules<B: Backend, T: Backend>(
    config: &RunConfig,
    needs: Needs,
    adapters: Option<&Path>,
    device: &B::Device,
    team_device: &T::Device,
) -> Result<Modules<B, T>, TrainError> {
    // Known from the models' configs alone: a run that cannot fit stops here, before loading.
    let memory = crate::method::memory::estimate(config, needs)?;
    crate::method::memory::check_fits(&memory, crate::method::memory::memory_limit()?)?;
    let seed = config.grpo.seed;
    let (pretrained, tokenizer) =
        load_pretrained::<B>(&config.policy.model, config.policy.weights, true, device)?;
    let width = pretrained.config.hidden_size;
    let policy = match adapters {
        Some(dir) => pretrained.model.load_adapters(dir)?.0,
        None => pretrained.model.with_lora(&config.policy.lora, seed)?,
    };
    let mut team = Vec::new();
    if needs.team {
        for member in &config.team {
            let (expert, tokenizer) = load_pretrained::<T>(
                &member.model,
                config.team_weights,
                needs.team_generates,
                team_device,
            )?;
            team.push(TeamMember {
                name: member.name.clone(),
                tokenizer,
                model: expert.model,
                layer: member.layer,
                readout: member.readout,
                readout_suffix: member.readout_suffix.clone(),
                eos_token_ids: expert.eos_token_ids,
            });
        }
    }
    let interface = if needs.interface {
        Some(fresh_interface(config, &policy, width, &team, device)?)
    } else {
        None
    };
    let router = needs.router.then(|| Router::new(width, team.len(), device));
    Ok(Modules {
        policy,
        tokenizer,
        eos_token_ids: pretrained.eos_token_ids,
        team,
        interface,
        router,
    })
}

/// The interface of `config` over `team`'s widths, its random values drawn from the run's
/// seed.
fn fresh_interface<B: Backend, T: Backend>(
    config: &RunConfig,
    policy: &Llama<B>,
    policy_dim: usize,
    team: &[TeamMember<T>],
    device: &B::Device,
) -> Result<LatentInterface<B>, TrainError> {
    let i = &config.interface;
    // The interface's own stream (not Burn's process-wide generator): the same seed gives the
    // same interface whatever else the process draws. On Flex it is the stream
    // `Backend::seed(seed)` started, so runs measured before this change keep their numbers.
    let mut rng = InitRng::new(config.grpo.seed);
    let interface = LatentInterfaceConfig {
        expert_dims: team
            .iter()
            .map(|m| m.model.embed_tokens.weight.dims()[1])
            .collect(),
        policy_dim,
        latent_dim: i.latent_dim,
        num_latents: i.num_latents,
        num_heads: i.num_heads,
        self_attention_blocks: i.self_attention_blocks,
        ffn_multiplier: i.ffn_multiplier,
        output_rms: match i.output_init {
            OutputInit::Zero => None,
            OutputInit::EmbeddingRms => Some(policy.embedding_rms()),
        },
    }
    .init::<B>(&mut rng, device)?
    // C starts at the policy's mean token embedding, not at zero: see
    // `LatentInterface::with_context_start` (an all-zero C gives NaN gradients on bias-free
    // RMSNorm policies such as SmolLM2).
    .with_context_start(policy.mean_token_embedding().detach())?;
    let interface = match i.context_norm {
        ContextNorm::None => interface,
        ContextNorm::EmbeddingRms => interface.with_context_norm(policy.embedding_rms())?,
    };
    let interface = match i.injection {
        Injection::Prefix => interface,
        Injection::Gated => {
            let (layers, heads, _) = policy.context_shape();
            interface.with_context_gate(layers, heads, i.gate_scale)?
        }
    };
    Ok(interface)
}

/// Replace `interface` and `router` (where present) by the values a checkpoint saved.
pub(crate) fn load_trained_records<B: Backend>(
    checkpoint: &Path,
    interface: &mut Option<LatentInterface<B>>,
    router: &mut Option<Router<B>>,
) -> Result<(), TrainError> {
    let recorder = BinFileRecorder::<FullPrecisionSettings>::new();
    let fail = |e: RecorderError| TrainError::BadInput(format!("{}: {e}", checkpoint.display()));
    if let Some(module) = interface.take() {
        let device = module.latents.device();
        let record = recorder
            .load(checkpoint.join("interface"), &device)
            .map_err(fail)?;
        *interface = Some(module.load_record(record));
    }
    if let Some(module) = router.take() {
        let device = module.scores.weight.device();
        let record = recorder
            .load(checkpoint.join("router"), &device)
            .map_err(fail)?;
        *router = Some(module.load_record(record));
    }
    Ok(())
}

/// Write `interface` and `router` (where present) as a checkpoint's records.
pub(crate) fn save_trained_records<B: Backend>(
    checkpoint: &Path,
    interface: Option<&LatentInterface<B>>,
    router: Option<&Router<B>>,
) -> Result<(), TrainError> {
    let recorder = BinFileRecorder::<FullPrecisionSettings>::new();
    let fail = |e: RecorderError| TrainError::BadInput(format!("{}: {e}", checkpoint.display()));
    if let Some(interface) = interface {
        recorder
            .record(
                interface.clone().into_record(),
                checkpoint.join("interface"),
            )
            .map_err(fail)?;
    }
    if let Some(router) = router {
        recorder
            .record(router.clone().into_record(), checkpoint.join("router"))
            .map_err(fail)?;
    }
    Ok(())
}
