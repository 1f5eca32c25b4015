//! The Llama family in one implementation: Llama 2/3, SmolLM2, Qwen2/2.5 (q/k/v bias) and
//! Qwen3 (per-head q/k RMSNorm, explicit head_dim). Field names follow the safetensors keys
//! (`self_attn.q_proj`, `mlp.gate_proj`, `input_layernorm`), so loading needs no rename table.

use crate::cache::KvCache;
use crate::config::{Activation, LlamaConfig};
use crate::error::LmError;
use crate::lora::LoraLinear;
use crate::precision::{Precision, cast_floats, cast_floats_keeping};
use crate::rope::{self, Rope};
use burn::module::Module;
use burn::nn::{Embedding, RmsNorm};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, ElementConversion, Int, Tensor};

/// Query/key/value projections, grouped-query attention, output projection.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub q_proj: LoraLinear<B>,
    pub k_proj: LoraLinear<B>,
    pub v_proj: LoraLinear<B>,
    pub o_proj: LoraLinear<B>,
    pub q_norm: Option<RmsNorm<B>>,
    pub k_norm: Option<RmsNorm<B>>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Scores are `q·k * scale`.
    pub scale: f64,
    /// A sliding-window (local) layer (Gemma 3).
    pub sliding: bool,
}

/// What every layer's attention needs for one forward, computed once and shared: rotary
/// tables and the mask at their full shapes. Full shapes matter on the CPU backend, where an
/// elementwise op that broadcasts over a middle axis is ~50x slower than one over equal
/// shapes (measured: [32, 9, 1, 64] x [32, 1, 1, 64] 0.15 ms, equal shapes 0.002 ms).
#[derive(Debug, Clone)]
pub struct AttentionInputs<B: Backend> {
    global: KindInputs<B>,
    /// For sliding-window layers; `None` when the model has none.
    local: Option<KindInputs<B>>,
}

#[derive(Debug, Clone)]
struct KindInputs<B: Backend> {
    /// `[batch, heads, seq, head_dim]`
    cos_q: Tensor<B, 4>,
    sin_q: Tensor<B, 4>,
    /// `[batch, kv_heads, seq, head_dim]`
    cos_k: Tensor<B, 4>,
    sin_k: Tensor<B, 4>,
    /// `[batch, kv_heads, n_rep * seq, keys]`, true where attention is forbidden; rows are
    /// ordered (query head within the group, query position) as [`Attention::attend`] stacks them.
    /// With gated context, the ordinary attention's mask: context keys are forbidden to
    /// the prompt's queries (they read them through [`GatedInputs`]).
    mask: Tensor<B, 4, Bool>,
    gated: Option<GatedInputs<B>>,
}

/// The second softmax of gated context (see [`crate::context`]).
#[derive(Debug, Clone)]
struct GatedInputs<B: Backend> {
    /// Like [`KindInputs::mask`]: forbidden unless the key is context and the query is not.
    mask: Tensor<B, 4, Bool>,
    /// `[batch, heads, seq, head_dim]`: 1 where the query has a context key to read, else 0
    /// (a softmax over no allowed key is uniform, not zero).
    reads_context: Tensor<B, 4>,
}

impl<B: Backend> KindInputs<B> {
    /// `context_pairs` `[batch, 1, seq, keys]`: true where a prompt query meets a context key
    /// (gated context only).
    fn new(
        (cos, sin): (Tensor<B, 4>, Tensor<B, 4>),
        mask: Tensor<B, 4, Bool>,
        (num_heads, num_kv_heads): (usize, usize),
        context_pairs: Option<Tensor<B, 4, Bool>>,
    ) -> Self {
        let n_rep = num_heads / num_kv_heads;
        let grouped = |m: Tensor<B, 4, Bool>| m.repeat_dim(2, n_rep).repeat_dim(1, num_kv_heads);
        let cos_q = cos.clone().repeat_dim(1, num_heads);
        let (mask, gated) = match context_pairs {
            Some(pairs) => {
                let gated_mask = mask.clone().bool_or(pairs.clone().bool_not());
                let [b, h, t, d] = cos_q.dims();
                let reads_context = gated_mask
                    .clone()
                    .bool_not()
                    .any_dim(3)
                    .float()
                    .cast(cos_q.dtype())
                    .expand([b, h, t, d]);
                let gated = GatedInputs {
                    mask: grouped(gated_mask),
                    reads_context,
                };
                (mask.bool_or(pairs), Some(gated))
            }
            None => (mask, None),
        };
        Self {
            cos_q,
            sin_q: sin.clone().repeat_dim(1, num_heads),
            cos_k: cos.repeat_dim(1, num_kv_heads),
            sin_k: sin.repeat_dim(1, num_kv_heads),
            mask: grouped(mask),
            gated,
        }
    }
}

impl<B: Backend> AttentionInputs<B> {
    /// # Shapes
    /// - `positions`: `[batch, seq]` of the queries; `key_positions`: `[batch, keys]`
    /// - `mask`: `[batch, 1, seq, keys]`, true where attention is forbidden
    ///
    /// With `gated`, keys at negative positions are context, read by queries at
    /// non-negative positions through the gated softmax (see [`crate::context`]).
    pub fn new(
        rope: &Rope<B>,
        positions: Tensor<B, 2, Int>,
        key_positions: Tensor<B, 2, Int>,
        mask: Tensor<B, 4, Bool>,
        heads: (usize, usize),
        sliding_window: Option<usize>,
        gated: bool,
    ) -> Self {
        let pairs = gated.then(|| context_pairs(positions.clone(), key_positions.clone()));
        let local = rope.has_local().then(|| {
            let mask = match sliding_window {
                Some(window) => {
                    mask.clone()
                        .bool_or(outside_window(positions.clone(), key_positions, window))
                }
                None => mask.clone(),
            };
            KindInputs::new(
                rope.local_tables(positions.clone()),
                mask,
                heads,
                pairs.clone(),
            )
        });
        Self {
            global: KindInputs::new(rope.tables(positions), mask, heads, pairs),
            local,
        }
    }

    fn for_layer(&self, sliding: bool) -> &KindInputs<B> {
        match (&self.local, sliding) {
            (Some(local), true) => local,
            _ => &self.global,
        }
    }
}

/// `[batch, 1, seq, keys]`, true where a query at a non-negative position (prompt or
/// completion) meets a key at a negative one (gated context).
fn context_pairs<B: Backend>(
    positions: Tensor<B, 2, Int>,
    key_positions: Tensor<B, 2, Int>,
) -> Tensor<B, 4, Bool> {
    let [b, t] = positions.dims();
    let keys = key_positions.dims()[1];
    let queries = positions
        .greater_equal_elem(0)
        .reshape([b, 1, t, 1])
        .expand([b, 1, t, keys]);
    let context = key_positions
        .lower_elem(0)
        .reshape([b, 1, 1, keys])
        .expand([b, 1, t, keys]);
    queries.bool_and(context)
}

/// `[batch, 1, seq, keys]`, true where the key's position is `window` or more before the
/// query's (positions, not slots: padding may sit anywhere in a row).
fn outside_window<B: Backend>(
    positions: Tensor<B, 2, Int>,
    key_positions: Tensor<B, 2, Int>,
    window: usize,
) -> Tensor<B, 4, Bool> {
    let [b, t] = positions.dims();
    let keys = key_positions.dims()[1];
    let queries = positions.reshape([b, 1, t, 1]).expand([b, 1, t, keys]);
    let keys = key_positions
        .reshape([b, 1, 1, keys])
        .expand([b, 1, t, keys]);
    (queries - keys).greater_equal_elem(window as i64)
}

impl<B: Backend> Attention<B> {
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]`
    pub fn forward(&self, x: Tensor<B, 3>, inputs: &AttentionInputs<B>) -> Tensor<B, 3> {
        let inputs = inputs.for_layer(self.sliding);
        let (q, k, v) = self.project(x, inputs);
        self.attend(q, k, v, inputs, None)
    }

    /// Like [`Self::forward`] for new tokens after those in `cache`, which grows by them.
    /// `gate` `[heads]`: this layer's context gates, when the inputs are gated.
    pub fn forward_cached(
        &self,
        x: Tensor<B, 3>,
        inputs: &AttentionInputs<B>,
        cache: &mut KvCache<B>,
        gate: Option<Tensor<B, 1>>,
    ) -> Tensor<B, 3> {
        let inputs = inputs.for_layer(self.sliding);
        let (q, k, v) = self.project(x, inputs);
        let (k, v) = cache.append(k, v);
        self.attend(q, k, v, inputs, gate)
    }

    /// Queries `[b, h, t, d]`, keys and values `[b, kv, t, d]`, rotated.
    fn project(
        &self,
        x: Tensor<B, 3>,
        inputs: &KindInputs<B>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
        let [b, t, _] = x.dims();
        let (h, kv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let heads = |y: Tensor<B, 3>, n: usize| y.reshape([b, t, n, d]); // [b, t, n, d]
        let mut q = heads(self.q_proj.forward(x.clone()), h);
        let mut k = heads(self.k_proj.forward(x.clone()), kv);
        let v = heads(self.v_proj.forward(x), kv).swap_dims(1, 2); // [b, kv, t, d]
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = qn.forward(q);
            k = kn.forward(k);
        }
        let q = rope::apply(q.swap_dims(1, 2), &inputs.cos_q, &inputs.sin_q); // [b, h, t, d]
        let k = rope::apply(k.swap_dims(1, 2), &inputs.cos_k, &inputs.sin_k); // [b, kv, t, d]
        (q, k, v)
    }

    /// Scaled dot-product attention over (possibly cached) keys. Returns `[b, t_q, hidden]`.
    ///
    /// Grouped-query attention without repeating keys and values: the `n_rep` query heads that
    /// share a key/value head are stacked along the query axis, so each group is one matmul
    /// against its keys (fewer, larger matmuls and no K/V copies).
    fn attend(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
        inputs: &KindInputs<B>,
        gate: Option<Tensor<B, 1>>,
    ) -> Tensor<B, 3> {
        let [b, h, t, d] = q.dims();
        let kv = self.num_kv_heads;
        let n_rep = h / kv;
        let fill = masked_score(q.dtype());
        let q = q.reshape([b, kv, n_rep * t, d]); // [b, kv, n_rep * t, d], rows (rep, t)
        // `[b, kv, n_rep * t, t_k]`, computed once and only if a softmax below needs it.
        let scores = std::cell::OnceCell::new();
        let attend_under = |mask: &Tensor<B, 4, Bool>, v: Tensor<B, 4>| {
            // A decode step on the CPU backend: one fused pass (see `few_queries`).
            match crate::few_queries::attend(&q, &k, &v, mask, self.scale, fill) {
                Some(out) => out,
                None => {
                    let scores: &Tensor<B, 4> = scores
                        .get_or_init(|| q.clone().matmul(k.clone().swap_dims(2, 3)) * self.scale);
                    softmax(scores.clone().mask_fill(mask.clone(), fill), 3).matmul(v)
                }
            }
            .reshape([b, h, t, d]) // [b, h, t, d]
        };
        let out = match (gate, &inputs.gated) {
            (Some(gate), Some(gated)) => {
                let own = attend_under(&inputs.mask, v.clone());
                let context = attend_under(&gated.mask, v);
                let factor = gate
                    .cast(own.dtype())
                    .reshape([1, h, 1, 1])
                    .expand([b, h, t, d])
                    * gated.reads_context.clone();
                own + context * factor
            }
            _ => attend_under(&inputs.mask, v),
        };
        self.o_proj
            .forward(out.swap_dims(1, 2).reshape([b, t, h * d]))
    }
}

/// The score of a masked key: large and finite in the scores' dtype, so that a row with
/// every key masked (a pad query) stays finite (-inf there would give NaN, and NaN values
/// reach every row through the value matmul even at weight 0). f16 overflows at 65,504.
fn masked_score(dtype: DType) -> f32 {
    match dtype {
        DType::F16 => -65_504.0,
        _ => -1e30,
    }
}

/// SwiGLU feed-forward.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    pub gate_proj: LoraLinear<B>,
    pub up_proj: LoraLinear<B>,
    pub down_proj: LoraLinear<B>,
    /// GELU (tanh approximation) instead of SiLU on the gate (Gemma).
    pub gelu_tanh: bool,
}

impl<B: Backend> Mlp<B> {
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let gate = self.gate_proj.forward(x.clone());
        let up = self.up_proj.forward(x);
        let hidden = if self.gelu_tanh {
            gelu_tanh(gate) * up
        } else {
            crate::fused::silu_times(&gate, &up).unwrap_or_else(|| fast_silu(gate) * up)
        };
        self.down_proj.forward(hidden)
    }
}

/// `gelu_pytorch_tanh`: `x/2 · (1 + tanh(sqrt(2/π) · (x + 0.044715 x³)))`.
fn gelu_tanh<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let inner =
        (x.clone() + x.clone().powi_scalar(3) * 0.044715) * (2.0 / std::f64::consts::PI).sqrt();
    x * 0.5 * (inner.tanh() + 1.0)
}

/// `x * sigmoid(x)` as `x / (1 + exp(-x))`: the same function (exp(-x) = inf gives -0, the
/// limit), about 2x faster than Burn's `silu` on the CPU backend at decode shapes.
fn fast_silu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.clone() / (x.neg().exp() + 1.0)
}

#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    pub input_layernorm: RmsNorm<B>,
    pub self_attn: Attention<B>,
    /// Llama: the norm before the MLP. Gemma: the norm of the attention output.
    pub post_attention_layernorm: RmsNorm<B>,
    pub mlp: Mlp<B>,
    /// Gemma only: the norms before and after the MLP.
    pub pre_feedforward_layernorm: Option<RmsNorm<B>>,
    pub post_feedforward_layernorm: Option<RmsNorm<B>>,
}

impl<B: Backend> DecoderLayer<B> {
    pub fn forward(&self, x: Tensor<B, 3>, inputs: &AttentionInputs<B>) -> Tensor<B, 3> {
        let attended = self
            .self_attn
            .forward(self.input_layernorm.forward(x.clone()), inputs);
        self.feed_forward(x, attended)
    }

    /// Residual around attention, then the MLP block with its norms.
    fn feed_forward(&self, x: Tensor<B, 3>, attended: Tensor<B, 3>) -> Tensor<B, 3> {
        match (
            &self.pre_feedforward_layernorm,
            &self.post_feedforward_layernorm,
        ) {
            (Some(pre), Some(post)) => {
                let x = x + self.post_attention_layernorm.forward(attended);
                x.clone() + post.forward(self.mlp.forward(pre.forward(x)))
            }
            _ => {
                let x = x + attended;
                x.clone() + self.mlp.forward(self.post_attention_layernorm.forward(x))
            }
        }
    }

    pub fn forward_cached(
        &self,
        x: Tensor<B, 3>,
        inputs: &AttentionInputs<B>,
        cache: &mut KvCache<B>,
        gate: Option<Tensor<B, 1>>,
    ) -> Tensor<B, 3> {
        let normed = self.input_layernorm.forward(x.clone());
        let attended = self.self_attn.forward_cached(normed, inputs, cache, gate);
        self.feed_forward(x, attended)
    }
}

/// A causal language model of the Llama family.
#[derive(Module, Debug)]
pub struct Llama<B: Backend> {
    pub embed_tokens: Embedding<B>,
    pub layers: Vec<DecoderLayer<B>>,
    pub norm: RmsNorm<B>,
    /// `None` when the head is tied to `embed_tokens`, or when the model was loaded
    /// without its untied head (`headless`).
    pub lm_head: Option<LoraLinear<B>>,
    /// Loaded without its untied output layer ([`crate::Pretrained::load_for_hidden_states`]):
    /// hidden states only. Asking it for logits is a bug and panics, since the tied
    /// fallback would silently give wrong ones.
    pub headless: bool,
    pub rope_head_dim: usize,
    pub rope_theta: f64,
    pub rope_scaling: Option<(f64, f64, f64, usize)>,
    /// Gemma: the local layers' RoPE base.
    pub rope_local_theta: Option<f64>,
    pub sliding_window: Option<usize>,
    /// Gemma: embeddings are multiplied by `sqrt(hidden_size)` (rounded to f32 first).
    pub embedding_scale: Option<f64>,
    /// The longest sequence the model was trained on, when its file says.
    pub max_position_embeddings: Option<usize>,
}

/// Logits and, when asked for, every hidden state as `transformers` defines them.
#[derive(Debug, Clone)]
pub struct ModelOutput<B: Backend> {
    /// `[batch, seq, vocab]`
    pub logits: Tensor<B, 3>,
    /// `layers + 1` tensors `[batch, seq, hidden]`: index 0 the embeddings, `i` the output of
    /// layer `i`, the last one after the final norm. Empty unless requested.
    pub hidden_states: Vec<Tensor<B, 3>>,
}

impl<B: Backend> ModelOutput<B> {
    /// `hidden_states[layer]`, negative from the end. Needs `hidden_states` to have been
    /// requested.
    pub fn hidden_state(&self, layer: isize) -> Result<Tensor<B, 3>, LmError> {
        if self.hidden_states.is_empty() {
            return Err(LmError::BadInput(
                "hidden states were not requested in this forward".into(),
            ));
        }
        let index = resolve_layer(layer, self.hidden_states.len() - 1)?;
        Ok(self.hidden_states[index].clone())
    }
}

/// `layer` in `-(layers + 1)..=layers` as an index into the `layers + 1` hidden states.
pub fn resolve_layer(layer: isize, layers: usize) -> Result<usize, LmError> {
    let n = layers as isize + 1;
    let index = if layer < 0 { n + layer } else { layer };
    if (0..n).contains(&index) {
        Ok(index as usize)
    } else {
        Err(LmError::BadInput(format!(
            "hidden state {layer} does not exist: a model with {layers} layers has {n}, \
             indexed 0..={layers} or -{n}..=-1"
        )))
    }
}

impl<B: Backend> Llama<B> {
    pub fn rope(&self, device: &B::Device) -> Rope<B> {
        let scaling =
            self.rope_scaling
                .map(|(factor, low, high, original)| crate::config::RopeScaling {
                    rope_type: "llama3".into(),
                    factor,
                    low_freq_factor: low,
                    high_freq_factor: high,
                    original_max_position_embeddings: original,
                });
        Rope::new(
            self.rope_head_dim,
            self.rope_theta,
            scaling.as_ref(),
            self.rope_local_theta,
            device,
        )
        .in_dtype(self.float_dtype())
    }

    /// The dtype the model computes in: that of its norms and activations (f32 unless cast
    /// with [`Self::with_precision`]).
    pub fn float_dtype(&self) -> DType {
        self.norm.gamma.val().dtype()
    }

    /// The dtype its weight matrices (embeddings, projections, head) are stored in: the
    /// compute dtype, or a compact one chosen when loading
    /// ([`crate::pretrained::Pretrained::load_with_weights`]). A projection whose weight is
    /// compact multiplies in the weight's dtype (its input cast down, its output back up), so
    /// the weight is never expanded; norms, biases, rotary tables, attention and adapters
    /// stay in the compute dtype.
    pub fn weight_dtype(&self) -> DType {
        self.embed_tokens.weight.val().dtype()
    }

    /// The model with every parameter (adapters included) in `precision`, for forward passes
    /// that train nothing; f32 is a no-op. Its logits and hidden states come back in that
    /// dtype ([`crate::precision::to_f32`] converts), and soft inputs given to it are cast.
    /// Compact weights are never expanded: with `precision` f32 they stay as stored.
    pub fn with_precision(self, precision: Precision) -> Self {
        let (weights, compute) = (self.weight_dtype(), self.float_dtype());
        if weights != compute && precision == Precision::F32 {
            cast_floats_keeping(self, precision, weights)
        } else {
            cast_floats(self, precision)
        }
    }

    /// The model with its weight matrices (embeddings, projections, head; not norms, biases
    /// or adapters) stored in `storage`, as [`crate::Pretrained::load_with_weights`] loads
    /// them: for a model built or loaded in f32 first.
    pub fn with_compact_weights(mut self, storage: Precision) -> Self {
        let dtype: DType = storage.dtype().into();
        let compact = |param: burn::module::Param<Tensor<B, 2>>| {
            param.map(|w| crate::precision::cast_float(w, dtype))
        };
        self.embed_tokens.weight = compact(self.embed_tokens.weight);
        for layer in &mut self.layers {
            let attn = &mut layer.self_attn;
            let mlp = &mut layer.mlp;
            for proj in [
                &mut attn.q_proj,
                &mut attn.k_proj,
                &mut attn.v_proj,
                &mut attn.o_proj,
                &mut mlp.gate_proj,
                &mut mlp.up_proj,
                &mut mlp.down_proj,
            ] {
                proj.base.weight = compact(proj.base.weight.clone());
            }
        }
        if let Some(head) = self.lm_head.as_mut() {
            head.base.weight = compact(head.base.weight.clone());
        }
        self
    }

    /// The mean of every token's input embedding, `[hidden]` (scaled as [`Self::embed`]
    /// scales): a neutral, typical-scale input vector.
    pub fn mean_token_embedding(&self) -> Tensor<B, 1> {
        let hidden = self.embed_tokens.weight.dims()[1];
        let table =
            crate::precision::cast_float(self.embed_tokens.weight.val(), self.float_dtype());
        let mean = table.mean_dim(0).reshape([hidden]);
        match self.embedding_scale {
            Some(scale) => mean * scale,
            None => mean,
        }
    }

    /// RMS over every entry of the token-embedding table, as the model scales its inputs:
    /// the size of a typical input token.
    pub fn embedding_rms(&self) -> f32 {
        let table = crate::precision::cast_float(self.embed_tokens.weight.val(), DType::F32);
        let rms = table
            .powi_scalar(2)
            .mean()
            .sqrt()
            .into_scalar()
            .elem::<f32>();
        rms * self.embedding_scale.unwrap_or(1.0) as f32
    }

    /// Token embeddings. `[batch, seq]` -> `[batch, seq, hidden]`
    pub fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let x = crate::precision::cast_float(self.embed_tokens.forward(ids), self.float_dtype());
        match self.embedding_scale {
            Some(scale) => x * scale,
            None => x,
        }
    }

    /// Forward over token ids. `attention_mask` is `[batch, seq]`, 1 for real tokens and 0
    /// for (left) padding; `None` means every token is real.
    pub fn forward(
        &self,
        ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        hidden_states: bool,
    ) -> ModelOutput<B> {
        self.forward_embeddings(self.embed(ids), attention_mask, hidden_states)
    }

    /// Forward over input embeddings (soft context tokens followed by prompt embeddings).
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]`; `attention_mask`: `[batch, seq]`
    pub fn forward_embeddings(
        &self,
        x: Tensor<B, 3>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        hidden_states: bool,
    ) -> ModelOutput<B> {
        let x = x.cast(self.float_dtype());
        let (x, mut states) = self.run_layers(x, attention_mask, self.layers.len(), hidden_states);
        let x = self.norm.forward(x);
        if hidden_states {
            states.push(x.clone());
        }
        ModelOutput {
            logits: self.head(x),
            hidden_states: states,
        }
    }

    /// `hidden_states[layer]` as `transformers` numbers them (0 the embeddings, negative
    /// from the end, `-1` after the final norm), running only the layers it needs and never
    /// the head: what an expert contributes, at a fraction of a full forward.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, hidden]`; `attention_mask`: `[batch, seq]`; returns `[batch, seq, hidden]`
    pub fn hidden_state(
        &self,
        x: Tensor<B, 3>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        layer: isize,
    ) -> Result<Tensor<B, 3>, LmError> {
        let index = resolve_layer(layer, self.layers.len())?;
        let x = x.cast(self.float_dtype());
        let (x, _) = self.run_layers(x, attention_mask, index, false);
        // The last hidden state is the only one after the final norm.
        Ok(if index == self.layers.len() {
            self.norm.forward(x)
        } else {
            x
        })
    }

    /// The first `count` decoder layers over `x`; with `collect`, the input of each.
    fn run_layers(
        &self,
        x: Tensor<B, 3>,
        attention_mask: Option<Tensor<B, 2, Int>>,
        count: usize,
        collect: bool,
    ) -> (Tensor<B, 3>, Vec<Tensor<B, 3>>) {
        let [b, t, _] = x.dims();
        let device = x.device();
        let mask = attention_mask.unwrap_or_else(|| Tensor::ones([b, t], &device));
        // Position of each token among the real tokens of its row: left padding shifts nothing.
        let positions = (mask.clone().cumsum(1) - 1).clamp_min(0); // [b, t]
        let inputs = self.attention_inputs(
            &self.rope(&device),
            positions.clone(),
            positions,
            causal_padding_mask(mask),
            false,
        );
        let mut states = Vec::new();
        let mut x = x;
        for layer in &self.layers[..count] {
            if collect {
                states.push(x.clone());
            }
            x = layer.forward(x, &inputs);
        }
        (x, states)
    }

    /// New tokens through the model with a KV cache; returns the final-norm hidden states.
    ///
    /// # Shapes
    /// - `x`: `[batch, new, hidden]`; `positions`: `[batch, new]`
    /// - `key_positions`: `[batch, cached + new]`, the position of every cached and new slot
    ///   (any value on padding)
    /// - `mask`: `[batch, 1, new, cached + new]`, true where attention is forbidden
    /// - returns `[batch, new, hidden]`
    pub fn forward_cached(
        &self,
        x: Tensor<B, 3>,
        positions: Tensor<B, 2, Int>,
        key_positions: Tensor<B, 2, Int>,
        mask: &Tensor<B, 4, Bool>,
        caches: &mut [KvCache<B>],
        rope: &Rope<B>,
    ) -> Tensor<B, 3> {
        self.forward_cached_gated(x, positions, key_positions, mask, caches, rope, None)
    }

    /// Like [`Self::forward_cached`], reading context through `gates` `[layers, heads]`:
    /// slots at negative positions are context, read by the others through the gated
    /// softmax (see [`crate::context`]). `None`: exactly [`Self::forward_cached`].
    #[allow(clippy::too_many_arguments)]
    pub fn forward_cached_gated(
        &self,
        x: Tensor<B, 3>,
        positions: Tensor<B, 2, Int>,
        key_positions: Tensor<B, 2, Int>,
        mask: &Tensor<B, 4, Bool>,
        caches: &mut [KvCache<B>],
        rope: &Rope<B>,
        gates: Option<&Tensor<B, 2>>,
    ) -> Tensor<B, 3> {
        let inputs = self.attention_inputs(
            rope,
            positions,
            key_positions,
            mask.clone(),
            gates.is_some(),
        );
        let mut x = x;
        for (l, (layer, cache)) in self.layers.iter().zip(caches.iter_mut()).enumerate() {
            let gate = gates.map(|g| {
                let heads = g.dims()[1];
                g.clone().slice([l..l + 1, 0..heads]).reshape([heads])
            });
            x = layer.forward_cached(x, &inputs, cache, gate);
        }
        self.norm.forward(x)
    }

    /// `(layers, query heads, hidden)`: the shape gated context must match.
    pub fn context_shape(&self) -> (usize, usize, usize) {
        let heads = self.layers.first().map_or(0, |l| l.self_attn.num_heads);
        (self.layers.len(), heads, self.embed_tokens.weight.dims()[1])
    }

    fn attention_inputs(
        &self,
        rope: &Rope<B>,
        positions: Tensor<B, 2, Int>,
        key_positions: Tensor<B, 2, Int>,
        mask: Tensor<B, 4, Bool>,
        gated: bool,
    ) -> AttentionInputs<B> {
        // Layers are uniform; a model without layers never reads these.
        let heads = self.layers.first().map_or((1, 1), |l| {
            (l.self_attn.num_heads, l.self_attn.num_kv_heads)
        });
        AttentionInputs::new(
            rope,
            positions,
            key_positions,
            mask,
            heads,
            self.sliding_window,
            gated,
        )
    }

    /// One empty cache per layer.
    pub fn new_caches(&self) -> Vec<KvCache<B>> {
        self.layers.iter().map(|_| KvCache::default()).collect()
    }

    /// The output layer as a [`FrozenHead`](crate::head::FrozenHead), when nothing in it
    /// trains (no adapter on `lm_head`, no gradient on its weight or the tied embeddings): the
    /// form that scores tokens without holding `[tokens, vocab]` logits for backward.
    pub fn frozen_head(&self) -> Option<crate::head::FrozenHead<B>> {
        if self.headless {
            return None;
        }
        match &self.lm_head {
            Some(head) if head.adapter.is_some() => None,
            Some(head) => {
                let weight = head.base.weight.val();
                let bias = head.base.bias.as_ref().map(|b| b.val());
                let trains =
                    weight.is_require_grad() || bias.as_ref().is_some_and(Tensor::is_require_grad);
                (!trains).then(|| crate::head::FrozenHead::new(weight, bias))
            }
            None => {
                let weight = self.embed_tokens.weight.val();
                (!weight.is_require_grad())
                    .then(|| crate::head::FrozenHead::new(weight.transpose(), None))
            }
        }
    }

    /// `[batch, seq, hidden]` -> `[batch, seq, vocab]`
    pub fn head(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        assert!(
            !self.headless,
            "this model was loaded without its output layer (for hidden states only): it \
             has no logits"
        );
        let [b, t, d] = x.dims();
        let x = x.reshape([b * t, d]);
        let logits = match &self.lm_head {
            Some(head) => head.forward(x),
            // Tied: the embedding table `[vocab, hidden]`, transposed as a view.
            None => crate::lora::matmul_stored(x, self.embed_tokens.weight.val().transpose()),
        };
        let vocab = logits.dims()[1];
        logits.reshape([b, t, vocab])
    }
}

/// True where query `i` may not attend to key `j`: `j > i`, or `j` is padding.
///
/// # Shapes
/// `[batch, seq]` -> `[batch, 1, seq, seq]`
pub fn causal_padding_mask<B: Backend>(mask: Tensor<B, 2, Int>) -> Tensor<B, 4, Bool> {
    let [b, t] = mask.dims();
    let device = mask.device();
    let future = Tensor::<B, 2, Bool>::tril_mask([t, t], 0, &device)
        .reshape([1, 1, t, t])
        .expand([b, 1, t, t]);
    let padding = mask
        .equal_elem(0)
        .reshape([b, 1, 1, t])
        .expand([b, 1, t, t]);
    future.bool_or(padding)
}

impl LlamaConfig {
    /// A model with fresh random weights (for tests and shape checks; real weights come from
    /// [`crate::weights::load`]).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Llama<B> {
        use burn::nn::{EmbeddingConfig, LinearConfig, RmsNormConfig};
        let linear = |i, o, bias| LinearConfig::new(i, o).with_bias(bias).init(device);
        let proj = |i, o, bias| LoraLinear::from(linear(i, o, bias));
        let norm = |d| {
            RmsNormConfig::new(d)
                .with_epsilon(self.rms_norm_eps)
                .init(device)
        };
        let (h, kv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let gemma = &self.gemma;
        let layers = (0..self.num_layers)
            .map(|i| DecoderLayer {
                input_layernorm: norm(self.hidden_size),
                self_attn: Attention {
                    q_proj: proj(self.hidden_size, h * d, self.qkv_bias),
                    k_proj: proj(self.hidden_size, kv * d, self.qkv_bias),
                    v_proj: proj(self.hidden_size, kv * d, self.qkv_bias),
                    o_proj: proj(h * d, self.hidden_size, self.o_bias),
                    q_norm: self.qk_norm.then(|| norm(d)),
                    k_norm: self.qk_norm.then(|| norm(d)),
                    num_heads: h,
                    num_kv_heads: kv,
                    head_dim: d,
                    scale: self.attention_scale,
                    sliding: gemma.sliding_layers.get(i).copied().unwrap_or(false),
                },
                post_attention_layernorm: norm(self.hidden_size),
                mlp: Mlp {
                    gate_proj: proj(self.hidden_size, self.intermediate_size, self.mlp_bias),
                    up_proj: proj(self.hidden_size, self.intermediate_size, self.mlp_bias),
                    down_proj: proj(self.intermediate_size, self.hidden_size, self.mlp_bias),
                    gelu_tanh: self.activation == Activation::GeluTanh,
                },
                pre_feedforward_layernorm: gemma.sandwich_norms.then(|| norm(self.hidden_size)),
                post_feedforward_layernorm: gemma.sandwich_norms.then(|| norm(self.hidden_size)),
            })
            .collect();
        Llama {
            embed_tokens: EmbeddingConfig::new(self.vocab_size, self.hidden_size).init(device),
            layers,
            norm: norm(self.hidden_size),
            lm_head: (!self.tie_word_embeddings)
                .then(|| proj(self.hidden_size, self.vocab_size, false)),
            headless: false,
            rope_head_dim: self.head_dim,
            rope_theta: self.rope_theta,
            rope_local_theta: gemma.rope_local_theta,
            sliding_window: gemma.sliding_window,
            max_position_embeddings: self.max_position_embeddings,
            embedding_scale: gemma
                .embedding_scale
                .then(|| f64::from((self.hidden_size as f32).sqrt())),
            rope_scaling: self.rope_scaling.as_ref().map(|s| {
                (
                    s.factor,
                    s.low_freq_factor,
                    s.high_freq_factor,
                    s.original_max_position_embeddings,
                )
            }),
        }
    }
}
