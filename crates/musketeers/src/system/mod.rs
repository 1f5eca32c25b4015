//! The seam between the GRPO step and the systems it trains: how a prompt gets its context,
//! and any loss term of a system's own. The step's phases (see [`crate::train`]) call only
//! this trait, so a new system is a new file here and a new [`crate::run_config::Mode`].
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

use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use musketeers_fusion::stats::{batch_utilization, expert_utilization, routing_entropy};
use musketeers_fusion::{ExpertInput, FusionOutput, LatentInterface};
use musketeers_lm::{Llama, SoftContext};

use crate::error::TrainError;
use crate::route::Router;
use crate::team::TeamMember;

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

/// What a system pastes under one question: (author, note) pairs.
pub type Notes = Vec<(String, String)>;

/// A loss term of a system's own, added once per step.
#[derive(Debug, Clone)]
pub struct ExtraLoss<B: AutodiffBackend> {
    pub term: Tensor<B, 1>,
    /// The routing entropy to report instead of the interface's (natural log).
    pub routing_entropy: Option<f32>,
}

/// How a system gives the policy its context.
pub trait System<B: AutodiffBackend> {
    /// The name `--modes` and reports use.
    fn name(&self) -> &'static str;

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

    /// The context for `prompts` at inference: what [`Self::context`] gives without a
    /// sampling seed, computed on the inner backend (no gradient, no graph).
    fn infer(
        &self,
        parts: &InferenceParts<'_, B::InnerBackend>,
        prompts: &[String],
        ids: &[Vec<u32>],
    ) -> Result<Inferred<B::InnerBackend>, TrainError>;

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

    /// Text to paste under each question before the policy's template, as (author, note)
    /// pairs per question; `None`: the question alone.
    fn notes(&self, _questions: &[String]) -> Result<Option<Vec<Notes>>, TrainError> {
        Ok(None)
    }
}
