//! The seam between the GRPO step, the trained model and the systems: how a prompt gets its
//! context, and any loss term of a system's own. Two traits, because a served model has no
//! autodiff backend: [`Infer`] (a prompt's context and the question as the policy reads it,
//! on any backend) is all [`crate::method::model::TeamModel`] needs; [`System`] adds what the GRPO
//! step's phases (see [`crate::method::train`]) call. A new system is a new file here, a new
//! [`crate::run_config::Mode`] and its line in [`build`].
//!
//! - [`single::Single`]: the policy alone, no context.
//! - [`fused::Fused`]: every expert reads the prompt; the latent interface turns their
//!   states into the context tokens `C`.
//! - [`hard_route::HardRoute`]: a router picks one expert per prompt, which alone reads it;
//!   REINFORCE trains the router.
//! - [`text_collab::TextCollab`]: the experts answer in text, pasted into the prompt.

pub mod fused;
pub mod hard_route;
pub mod single;
pub mod text_collab;

use std::sync::Arc;

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use musketeers_fusion::stats::{batch_utilization, expert_utilization, routing_entropy};
use musketeers_fusion::{ExpertInput, FusionOutput, LatentInterface};
use musketeers_lm::{Llama, SoftContext};

use crate::error::TrainError;
use crate::method::team::TeamMember;
use crate::run_config::{Mode, RunConfig};
use hard_route::Router;

/// What a system reads of the trainer: the trained modules and the frozen team.
#[derive(Debug, Clone, Copy)]
pub struct Parts<'a, B: AutodiffBackend> {
    pub policy: &'a Llama<B>,
    pub interface: Option<&'a LatentInterface<B>>,
    pub router: Option<&'a Router<B>>,
    pub team: &'a [TeamMember<B::InnerBackend>],
}

/// What a system reads at inference (evaluation, serving): the trained modules off the
/// autodiff backend, so that no graph is recorded (a forward with tracked parameters keeps
/// its graph until a backward pass that never comes: a server grew by ~120 KiB a request).
#[derive(Debug, Clone, Copy)]
pub struct InferenceParts<'a, B: Backend> {
    pub policy: &'a Llama<B>,
    pub interface: Option<&'a LatentInterface<B>>,
    pub router: Option<&'a Router<B>>,
    pub team: &'a [TeamMember<B>],
}

/// A context built for inference.
#[derive(Debug, Clone)]
pub struct Inferred<B: Backend> {
    pub fused: Option<FusionOutput<B>>,
    /// Hard routing: the router's entropy over experts (natural log), mean over prompts.
    pub router_entropy: Option<f32>,
}

impl<B: Backend> Inferred<B> {
    pub fn none() -> Self {
        Self {
            fused: None,
            router_entropy: None,
        }
    }

    /// `C` (with its gates) for the batch, if there is one.
    pub fn tokens(&self) -> Option<SoftContext<B>> {
        self.fused.as_ref().map(|f| SoftContext {
            tokens: f.context.clone(),
            gates: f.gates.clone(),
        })
    }

    /// Batch-mean attention share per expert, routing entropy and its normalised value.
    pub fn utilization(&self, experts: usize) -> (Vec<f32>, Option<f32>, Option<f32>) {
        let Some(f) = &self.fused else {
            return (Vec::new(), None, None);
        };
        let per_example = expert_utilization(&f.attention, &f.expert_spans);
        let util = batch_utilization(&per_example)
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .unwrap_or_default();
        if let Some(h) = self.router_entropy {
            let n = experts.max(2) as f32;
            return (util, Some(h), Some(h / n.ln()));
        }
        let (h, hn) = routing_entropy(&per_example);
        let mean = |t: Tensor<B, 1>| t.mean().into_scalar().elem::<f32>();
        (util, Some(mean(h)), Some(mean(hn)))
    }
}

/// A batch's context, as a system built it.
#[derive(Debug, Clone)]
pub struct Context<B: AutodiffBackend> {
    /// The interface over the whole batch: `C` `[prompts, latents, d]` with its gradient,
    /// and the attention that shows which expert it read.
    pub fused: Option<FusionOutput<B>>,
    /// What the team read (no gradient), kept so that a micro-batch can rebuild its rows
    /// of `C` with a graph of its own.
    pub readings: Vec<ExpertInput<B>>,
    /// The router's log-probabilities `[prompts, experts]` (with gradient) and its choices.
    pub routing: Option<(Tensor<B, 2>, Vec<usize>)>,
}

impl<B: AutodiffBackend> Context<B> {
    /// No context: the policy reads the prompt alone.
    pub fn none() -> Self {
        Self {
            fused: None,
            readings: Vec::new(),
            routing: None,
        }
    }

    /// `C` for the whole batch (with the gates the policy reads it through), if there is one.
    pub fn tokens(&self) -> Option<SoftContext<B>> {
        self.fused.as_ref().map(|f| SoftContext {
            tokens: f.context.clone(),
            gates: f.gates.clone(),
        })
    }

    /// [`Self::tokens`] off the autodiff graph, for sampling and serving.
    pub fn inner_tokens(&self) -> Option<SoftContext<B::InnerBackend>> {
        self.tokens().map(|c| c.map(|t| t.inner(), |g| g.inner()))
    }

    /// `C` for prompts `first..first + len` through a fresh pass of the interface, so that
    /// the micro-batch's backward pass has its own graph.
    pub fn rows(
        &self,
        interface: Option<&LatentInterface<B>>,
        first: usize,
        len: usize,
    ) -> Result<Option<SoftContext<B>>, TrainError> {
        let (Some(interface), Some(_)) = (interface, &self.fused) else {
            return Ok(None);
        };
        let inputs: Vec<ExpertInput<B>> = self
            .readings
            .iter()
            .map(|read| ExpertInput {
                hidden: read.hidden.clone().narrow(0, first, len),
                mask: read.mask.clone().map(|m| m.narrow(0, first, len)),
            })
            .collect();
        let out = interface.forward(&inputs)?;
        Ok(Some(SoftContext {
            tokens: out.context,
            gates: out.gates,
        }))
    }
}

/// A loss term of a system's own, added once per step.
#[derive(Debug, Clone)]
pub struct ExtraLoss<B: AutodiffBackend> {
    pub term: Tensor<B, 1>,
    /// The routing entropy to report instead of the interface's (natural log).
    pub routing_entropy: Option<f32>,
}

/// What a system needs built besides the policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// The team, loaded from the config's `[[team]]`.
    pub team: bool,
    /// The team writes text (its output layers loaded); otherwise it only gives hidden
    /// states, and untied output layers stay on disk.
    pub team_generates: bool,
    /// A latent interface over the team's hidden states.
    pub interface: bool,
    /// A router over the team.
    pub router: bool,
}

/// How a system gives the policy its context at inference, on any backend.
pub trait Infer<B: Backend> {
    /// The name `--modes` and reports use.
    fn name(&self) -> &'static str;

    /// The modules it reads.
    fn needs(&self) -> Needs;

    /// The context for `prompts` (`ids`: the same prompts in the policy's tokens), as
    /// evaluation and serving see it: no gradient, no sampling (a router's most likely choice).
    fn infer(
        &self,
        parts: &InferenceParts<'_, B>,
        prompts: &[String],
        ids: &[Vec<u32>],
    ) -> Result<Inferred<B>, TrainError>;

    /// Each question as the policy reads it, before its prompt template (`text-collab`: with
    /// the team's short answers pasted under it).
    fn questions(
        &self,
        _parts: &InferenceParts<'_, B>,
        questions: &[String],
    ) -> Result<Vec<String>, TrainError> {
        Ok(questions.to_vec())
    }
}

/// What the GRPO step calls of a system, on top of its inference.
pub trait System<B: AutodiffBackend>: Infer<B::InnerBackend> {
    /// The context for `prompts` (`ids`: the same prompts in the policy's tokens).
    /// `sample_seed` is set while training (a router samples its choice) and `None` at
    /// evaluation (the most likely choice).
    fn context(
        &self,
        parts: &Parts<'_, B>,
        prompts: &[String],
        ids: &[Vec<u32>],
        sample_seed: Option<u64>,
    ) -> Result<Context<B>, TrainError>;

    /// Whether a prompt's context is the same each time it is asked for in a step (dynamic
    /// sampling recomputes the context of the groups it keeps).
    fn deterministic_context(&self) -> bool {
        true
    }

    /// A loss term of the system's own on the step's `rewards` (`group` completions per
    /// prompt, prompt-major).
    fn extra_loss(
        &self,
        _context: &Context<B>,
        _rewards: &[f32],
        _group: usize,
    ) -> Option<ExtraLoss<B>> {
        None
    }
}

/// Every mode's system, listed once for both builders below.
macro_rules! system_for {
    ($config:expr) => {
        match $config.mode {
            Mode::Single => Arc::new(single::Single),
            Mode::Fused => Arc::new(fused::Fused),
            Mode::HardRoute => Arc::new(hard_route::HardRoute),
            Mode::TextCollab => Arc::new(text_collab::TextCollab::new($config)),
        }
    };
}

/// The system of `config`'s mode, for inference.
pub fn build<B: Backend>(config: &RunConfig) -> Arc<dyn Infer<B>> {
    system_for!(config)
}

/// The system of `config`'s mode, for training.
pub fn build_trainable<B: AutodiffBackend>(config: &RunConfig) -> Arc<dyn System<B>> {
    system_for!(config)
}
