//! Per-expert projections, K latent queries cross-attending over all expert tokens, optional
//! latent self-attention blocks, and a zero-initialised output projection (whose bias can
//! start `C` off zero: [`LatentInterface::with_context_start`]).

use crate::FusionError;
use crate::attention::MultiHeadAttention;
use crate::init::InitRng;
use burn::module::{Module, Param};
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Distribution, Int, Tensor};
use serde::{Deserialize, Serialize};

/// The interface's shape. Defaults follow the paper: width 512, 8 latents, 8 heads, one
/// cross-attention block and no latent self-attention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatentInterfaceConfig {
    /// Hidden width of each expert, in team order.
    pub expert_dims: Vec<usize>,
    /// Embedding width of the policy: the width of each context token.
    pub policy_dim: usize,
    #[serde(default = "default_width")]
    pub latent_dim: usize,
    #[serde(default = "default_eight")]
    pub num_latents: usize,
    #[serde(default = "default_eight")]
    pub num_heads: usize,
    /// Latent self-attention blocks after the cross-attention block (Perceiver style).
    #[serde(default)]
    pub self_attention_blocks: usize,
    /// FFN hidden width as a multiple of `latent_dim`.
    #[serde(default = "default_ffn")]
    pub ffn_multiplier: usize,
    /// How the output projection starts: `None` at zero (`C` is then its bias, the same for
    /// every prompt until the projection has trained); `Some(rms)` random, so that `C` has
    /// RMS about `rms` and depends on the prompt from the first step (drawn as
    /// [`LatentInterface::with_random_output`] draws it, but before every other parameter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_rms: Option<f32>,
}

fn default_width() -> usize {
    512
}
fn default_eight() -> usize {
    8
}
fn default_ffn() -> usize {
    4
}

impl LatentInterfaceConfig {
    pub fn new(expert_dims: Vec<usize>, policy_dim: usize) -> Self {
        Self {
            expert_dims,
            policy_dim,
            latent_dim: default_width(),
            num_latents: default_eight(),
            num_heads: default_eight(),
            self_attention_blocks: 0,
            ffn_multiplier: default_ffn(),
            output_rms: None,
        }
    }

    pub fn validate(&self) -> Result<(), FusionError> {
        let bad = |m: String| Err(FusionError::BadConfig(m));
        if self.expert_dims.is_empty() {
            return bad("the team has no experts".into());
        }
        if let Some(i) = self.expert_dims.iter().position(|&d| d == 0) {
            return bad(format!("expert {i} has width 0"));
        }
        if self.policy_dim == 0 || self.latent_dim == 0 || self.num_latents == 0 {
            return bad("policy_dim, latent_dim and num_latents must be positive".into());
        }
        if self.num_heads == 0 || !self.latent_dim.is_multiple_of(self.num_heads) {
            return bad(format!(
                "latent_dim {} is not divisible into {} heads",
                self.latent_dim, self.num_heads
            ));
        }
        if self.ffn_multiplier == 0 {
            return bad("ffn_multiplier must be positive".into());
        }
        if let Some(rms) = self.output_rms
            && !(rms.is_finite() && rms > 0.0)
        {
            return bad(format!("output_rms {rms} is not a positive number"));
        }
        Ok(())
    }

    /// A fresh interface, its random values drawn from `rng` (see [`InitRng`]: the same seed
    /// gives the same interface in any thread and on any backend).
    pub fn init<B: Backend>(
        &self,
        rng: &mut InitRng,
        device: &B::Device,
    ) -> Result<LatentInterface<B>, FusionError> {
        self.validate()?;
        let w = self.latent_dim;
        let norm = || LayerNormConfig::new(w).init(device);
        let block = |rng: &mut InitRng, cross| Block {
            attention_norm: norm(),
            attention: MultiHeadAttention::new(w, self.num_heads, rng, device),
            ffn_norm: norm(),
            ffn_up: rng.linear(w, w * self.ffn_multiplier, device),
            ffn_down: rng.linear(w * self.ffn_multiplier, w, device),
            cross,
        };
        // A random output projection is drawn first, then every other parameter in the
        // module's field order (a struct literal's fields are evaluated in the order written,
        // the declaration order here). That is the order Burn's lazy initialisers drew in for
        // every gated run and every run with a zero output measured before `InitRng` (adding
        // the gates touched the random output weight first), so those keep their numbers on
        // Flex; a random output behind a plain prefix was drawn last then and is first now.
        let random_output = self
            .output_rms
            .map(|rms| random_output_weight(rng, w, self.policy_dim, rms, device));
        let mut interface = LatentInterface {
            projections: self
                .expert_dims
                .iter()
                .map(|&d| ExpertProjection {
                    linear: rng.linear(d, w, device),
                    norm: norm(),
                })
                .collect(),
            latents: rng.param(
                [self.num_latents, w],
                Distribution::Normal(0.0, 0.02),
                device,
            ),
            cross: block(rng, true),
            blocks: (0..self.self_attention_blocks)
                .map(|_| block(rng, false))
                .collect(),
            output_norm: norm(),
            // Zero: C = 0 at the start, so the policy begins exactly as it was.
            output: LinearConfig::new(w, self.policy_dim)
                .with_initializer(Initializer::Zeros)
                .init(device),
            context_gain: None,
            context_gate: None,
        };
        if let Some(weight) = random_output {
            interface.output.weight = weight;
        }
        Ok(interface)
    }
}

/// The output projection's weight drawn so that its output has RMS about `rms` over
/// layer-normalised latents (unit RMS per channel): std `rms / sqrt(latent_dim)`.
fn random_output_weight<B: Backend>(
    rng: &mut InitRng,
    latent_dim: usize,
    policy_dim: usize,
    rms: f32,
    device: &B::Device,
) -> Param<Tensor<B, 2>> {
    let std = f64::from(rms) / (latent_dim as f64).sqrt();
    rng.param(
        [latent_dim, policy_dim],
        Distribution::Normal(0.0, std),
        device,
    )
}

/// One expert's width to the shared latent width, normalised so experts of different scale
/// compete on equal terms.
#[derive(Module, Debug)]
pub struct ExpertProjection<B: Backend> {
    pub linear: Linear<B>,
    pub norm: LayerNorm<B>,
}

/// Pre-norm attention (cross over expert tokens, or self over latents) and FFN, each residual.
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    pub attention_norm: LayerNorm<B>,
    pub attention: MultiHeadAttention<B>,
    pub ffn_norm: LayerNorm<B>,
    pub ffn_up: Linear<B>,
    pub ffn_down: Linear<B>,
    pub cross: bool,
}

impl<B: Backend> Block<B> {
    fn forward(
        &self,
        latents: Tensor<B, 3>,
        tokens: Option<(Tensor<B, 3>, Tensor<B, 2, Bool>)>,
    ) -> (Tensor<B, 3>, Tensor<B, 4>) {
        let normed = self.attention_norm.forward(latents.clone());
        let (attended, weights) = match tokens {
            Some((keys, mask)) => self.attention.forward(normed, keys, Some(mask)),
            None => self.attention.forward(normed.clone(), normed, None),
        };
        let latents = latents + attended;
        let ffn = self.ffn_down.forward(gelu(
            self.ffn_up.forward(self.ffn_norm.forward(latents.clone())),
        ));
        (latents + ffn, weights)
    }
}

/// The trainable interface between the team and the policy.
#[derive(Module, Debug)]
pub struct LatentInterface<B: Backend> {
    pub projections: Vec<ExpertProjection<B>>,
    /// `[num_latents, latent_dim]`
    pub latents: Param<Tensor<B, 2>>,
    pub cross: Block<B>,
    pub blocks: Vec<Block<B>>,
    pub output_norm: LayerNorm<B>,
    pub output: Linear<B>,
    /// With [`LatentInterface::with_context_norm`]: each context token is RMS-normalised and
    /// scaled by this learned per-channel gain `[policy_dim]`, which starts at the policy's
    /// token-embedding RMS, so `C` has the norm of a real token whatever the projection does.
    pub context_gain: Option<Param<Tensor<B, 1>>>,
    /// With [`LatentInterface::with_context_gate`]: the policy reads `C` through gated
    /// attention, `tanh(scale * gate)` per policy layer and head, `[layers, heads]`, starting
    /// at 0 (the policy exactly as it is without `C`).
    pub context_gate: Option<ContextGate<B>>,
}

/// The gates through which the policy reads `C` (see `musketeers_lm::context`).
#[derive(Module, Debug)]
pub struct ContextGate<B: Backend> {
    /// `[policy layers, policy heads]`, zero at the start.
    pub gate: Param<Tensor<B, 2>>,
    /// The gate's rate of change: Adam moves `gate` by about the learning rate per step
    /// whatever the gradient's size, so a gate that should open within a few hundred steps
    /// at an interface learning rate of ~1e-4 needs its argument scaled. The gradient is
    /// then `scale` times the argument's: a trainer that clips by a global norm should count
    /// the gates per unit of the argument (`musketeers`' trainer does), or the gates outweigh
    /// every other gradient and the clip pushes those below Adam's epsilon.
    pub scale: f64,
}

/// `Ok` for a finite positive `value`; else an error naming `what` and the value.
fn positive<T: Into<f64> + std::fmt::Display + Copy>(
    value: T,
    what: &str,
) -> Result<(), FusionError> {
    let number: f64 = value.into();
    if number.is_finite() && number > 0.0 {
        Ok(())
    } else {
        Err(FusionError::BadInput(format!(
            "{what} {value} is not a positive number"
        )))
    }
}

/// Added to the mean square before the root in the context norm.
const CONTEXT_NORM_EPS: f64 = 1e-6;

/// One expert's contribution for a batch.
#[derive(Debug, Clone)]
pub struct ExpertInput<B: Backend> {
    /// `[batch, tokens, expert width]`: one token for a pooled vector, or all prompt tokens.
    pub hidden: Tensor<B, 3>,
    /// `[batch, tokens]`, 1 for real tokens and 0 for padding; `None` when all are real.
    pub mask: Option<Tensor<B, 2, Int>>,
}

/// The context tokens and the attention that produced them.
#[derive(Debug, Clone)]
pub struct FusionOutput<B: Backend> {
    /// `[batch, num_latents, policy_dim]`
    pub context: Tensor<B, 3>,
    /// Cross-attention weights `[batch, heads, num_latents, total expert tokens]`.
    pub attention: Tensor<B, 4>,
    /// Where each expert's tokens sit along the last axis of `attention`: `(start, len)`.
    pub expert_spans: Vec<(usize, usize)>,
    /// `[policy layers, policy heads]`: the factors of the policy's gated context attention,
    /// `None` when the policy reads `C` as a plain prefix.
    pub gates: Option<Tensor<B, 2>>,
}

impl<B: Backend> LatentInterface<B> {
    pub fn num_experts(&self) -> usize {
        self.projections.len()
    }

    /// Starts every context token at `start` (`[policy_dim]`, e.g. the policy's mean token
    /// embedding) instead of zero: the output projection's weight stays zero, its bias (still
    /// trained) begins at `start`.
    ///
    /// Why: an all-zero `C` is a fixed point of a decoder without attention biases and with
    /// RMSNorm (Llama, SmolLM2, Gemma): the `C` positions' hidden states stay exactly zero
    /// through every layer, where each RMSNorm's Jacobian is `1/sqrt(eps)`, so the gradient
    /// reaching `C` grows by ~1e5 per layer and overflows f32 (measured: every gradient NaN on
    /// the first step with SmolLM2-135M's 30 layers). Qwen2's q/k/v biases move zero inputs
    /// off that point; an explicit start works for every policy.
    pub fn with_context_start(mut self, start: Tensor<B, 1>) -> Result<Self, FusionError> {
        let [width] = start.dims();
        let [_, policy_dim] = self.output.weight.dims();
        if width != policy_dim {
            return Err(FusionError::BadInput(format!(
                "context start has {width} values, the policy's width is {policy_dim}"
            )));
        }
        self.output.bias = Some(Param::from_tensor(start));
        Ok(self)
    }

    /// Start the output projection random instead of zero: its output has RMS about `rms`
    /// (each is a sum over a layer-normalised latent of unit RMS), part of it dependent on the
    /// prompt from the first step (the rest comes from the latents' shared part; measured on
    /// the real experiment: 40-55% of C's RMS at the last step).
    ///
    /// Why: with gated injection the gates (zero at the start) already make the policy
    /// exactly the policy without `C`, and a zero projection on top of them leaves `C` the
    /// same for every prompt until the projection has grown, while its gradient is itself
    /// scaled by the still-small gates (measured on the real experiment: the prompt-dependent
    /// part of `C` was 0.0005 RMS after three steps, against 0.136 for a token embedding).
    ///
    /// On an interface already built: `LatentInterfaceConfig::output_rms` draws the same at
    /// initialisation.
    pub fn with_random_output(mut self, rms: f32, rng: &mut InitRng) -> Result<Self, FusionError> {
        positive(rms, "output spread")?;
        let [latent_dim, policy_dim] = self.output.weight.dims();
        let device = self.output.weight.device();
        self.output.weight = random_output_weight(rng, latent_dim, policy_dim, rms, &device);
        Ok(self)
    }

    /// Normalise every context token to RMS `target_rms` (e.g. the policy's token-embedding
    /// RMS) through a learned per-channel gain that starts there.
    ///
    /// Why: with the zero-initialised projection, `C` starts at its bias (a mean embedding is
    /// far shorter than a real token) and grows only as fast as the projection trains, so the
    /// policy's residual stream at the `C` positions can stay small against the prompt's
    /// tokens. Normalised, the projection's output sets the direction of `C` and the gain its
    /// scale, and `C` is still prompt-independent at the start (the weight is zero).
    pub fn with_context_norm(mut self, target_rms: f32) -> Result<Self, FusionError> {
        positive(target_rms, "context norm target RMS")?;
        let [_, policy_dim] = self.output.weight.dims();
        let device = self.output.weight.device();
        self.context_gain = Some(Param::from_tensor(Tensor::full(
            [policy_dim],
            target_rms,
            &device,
        )));
        Ok(self)
    }

    /// Let the policy read `C` through gated attention (`layers` x `heads` gates starting at
    /// 0) instead of as a plain prefix: at the start the policy is exactly the policy
    /// without `C`, so fusion cannot make it worse before it has learned anything.
    pub fn with_context_gate(
        mut self,
        layers: usize,
        heads: usize,
        scale: f64,
    ) -> Result<Self, FusionError> {
        if layers == 0 || heads == 0 {
            return Err(FusionError::BadInput(format!(
                "context gates for {layers} layers of {heads} heads"
            )));
        }
        positive(scale, "context gate scale")?;
        let device = self.output.weight.device();
        self.context_gate = Some(ContextGate {
            gate: Param::from_tensor(Tensor::zeros([layers, heads], &device)),
            scale,
        });
        Ok(self)
    }

    /// The gates' factors `tanh(scale * gate)`, `[layers, heads]`; `None` without gates.
    pub fn gates(&self) -> Option<Tensor<B, 2>> {
        self.context_gate
            .as_ref()
            .map(|g| (g.gate.val() * g.scale).tanh())
    }

    /// # Shapes
    /// `experts[i].hidden`: `[batch, T_i, d_i]`; returns context `[batch, K, d_policy]`.
    pub fn forward(&self, experts: &[ExpertInput<B>]) -> Result<FusionOutput<B>, FusionError> {
        if experts.len() != self.projections.len() {
            return Err(FusionError::BadInput(format!(
                "{} experts given to an interface built for {}",
                experts.len(),
                self.projections.len()
            )));
        }
        let batch = experts[0].hidden.dims()[0];
        let mut tokens = Vec::with_capacity(experts.len());
        let mut padding = Vec::with_capacity(experts.len());
        let mut spans = Vec::with_capacity(experts.len());
        let mut start = 0;
        for (i, (input, projection)) in experts.iter().zip(&self.projections).enumerate() {
            let [b, t, d] = input.hidden.dims();
            let expected = projection.linear.weight.dims()[0];
            if b != batch || d != expected || t == 0 {
                return Err(FusionError::BadInput(format!(
                    "expert {i}: hidden states [{b}, {t}, {d}], expected [{batch}, T >= 1, {expected}]"
                )));
            }
            if let Some(mask) = &input.mask
                && mask.dims() != [b, t]
            {
                return Err(FusionError::BadInput(format!(
                    "expert {i}: mask {:?} for hidden states [{b}, {t}, {d}]",
                    mask.dims()
                )));
            }
            tokens.push(
                projection
                    .norm
                    .forward(projection.linear.forward(input.hidden.clone())),
            );
            padding.push(match &input.mask {
                Some(mask) => mask.clone().equal_elem(0),
                None => Tensor::<B, 2, Bool>::from_bool(
                    burn::tensor::TensorData::new(vec![false; b * t], [b, t]),
                    &input.hidden.device(),
                ),
            });
            spans.push((start, t));
            start += t;
        }
        let tokens = Tensor::cat(tokens, 1);
        let padding = Tensor::cat(padding, 1);
        let [k, w] = self.latents.dims();
        let latents = self.latents.val().reshape([1, k, w]).repeat_dim(0, batch);
        let (mut latents, attention) = self.cross.forward(latents, Some((tokens, padding)));
        for block in &self.blocks {
            latents = block.forward(latents, None).0;
        }
        let context = self.output.forward(self.output_norm.forward(latents));
        let context = match &self.context_gain {
            Some(gain) => {
                let [.., d] = context.dims();
                let rms = context
                    .clone()
                    .powi_scalar(2)
                    .mean_dim(2)
                    .add_scalar(CONTEXT_NORM_EPS)
                    .sqrt();
                context / rms * gain.val().reshape([1, 1, d])
            }
            None => context,
        };
        Ok(FusionOutput {
            context,
            attention,
            expert_spans: spans,
            gates: self.gates(),
        })
    }
}
