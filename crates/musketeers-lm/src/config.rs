//! `config.json` mirrored key for key, then resolved into an option-free model config.

use crate::error::LmError;
use serde::Deserialize;
use std::path::Path;

/// The keys of a Hugging Face `config.json` that the Llama family uses.
#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    pub rope_theta: Option<f64>,
    pub rope_scaling: Option<RopeScaling>,
    /// transformers >= 5 writes `rope_theta` and the scaling here instead; Gemma 3 has one
    /// such object per layer type (`full_attention`, `sliding_attention`).
    pub rope_parameters: Option<serde_json::Value>,
    /// Gemma 3: `sliding_attention` or `full_attention` per layer.
    pub layer_types: Option<Vec<String>>,
    pub sliding_window: Option<usize>,
    /// Gemma 3 (transformers 4): the local layers' base.
    pub rope_local_base_freq: Option<f64>,
    /// Gemma: attention scores scale by `query_pre_attn_scalar ** -0.5`.
    pub query_pre_attn_scalar: Option<f64>,
    pub hidden_activation: Option<String>,
    pub final_logit_softcapping: Option<f64>,
    pub attn_logit_softcapping: Option<f64>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    pub attention_bias: Option<bool>,
    #[serde(default)]
    pub mlp_bias: bool,
    pub hidden_act: Option<String>,
    pub bos_token_id: Option<serde_json::Value>,
    pub eos_token_id: Option<serde_json::Value>,
    pub max_position_embeddings: Option<usize>,
}

fn default_eps() -> f64 {
    1e-6
}

/// `rope_parameters` of transformers >= 5: theta and scaling in one object.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct RopeParameters {
    pub rope_type: Option<String>,
    pub rope_theta: Option<f64>,
    pub factor: Option<f64>,
    pub low_freq_factor: Option<f64>,
    pub high_freq_factor: Option<f64>,
    pub original_max_position_embeddings: Option<usize>,
}

/// `rope_scaling` of Llama 3 (`rope_type` or the older `type` key).
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct RopeScaling {
    #[serde(alias = "type")]
    pub rope_type: String,
    pub factor: f64,
    #[serde(default = "one")]
    pub low_freq_factor: f64,
    #[serde(default = "four")]
    pub high_freq_factor: f64,
    #[serde(default = "eight_k")]
    pub original_max_position_embeddings: usize,
}

fn one() -> f64 {
    1.0
}
fn four() -> f64 {
    4.0
}
fn eight_k() -> usize {
    8192
}

/// The feed-forward nonlinearity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// `gelu_pytorch_tanh` (Gemma).
    GeluTanh,
}

/// What differs in Gemma 3 from the Llama layout, all `None`/off for the Llama family.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GemmaOptions {
    /// Token embeddings are multiplied by `sqrt(hidden_size)`.
    pub embedding_scale: bool,
    /// RMSNorm weights are stored as `w` and applied as `1 + w`.
    pub norm_plus_one: bool,
    /// Norms after attention and around the feed-forward block (`post_attention_layernorm` on
    /// the attention output, `pre_feedforward_layernorm`, `post_feedforward_layernorm`).
    pub sandwich_norms: bool,
    /// Per layer: true for a sliding-window (local) layer.
    pub sliding_layers: Vec<bool>,
    pub sliding_window: Option<usize>,
    /// RoPE base of the local layers.
    pub rope_local_theta: Option<f64>,
}

/// Everything the model needs, with no option left open.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<RopeScaling>,
    pub tie_word_embeddings: bool,
    /// Bias on q, k, v (Qwen2; Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on o (Llama with `attention_bias` only).
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// RMSNorm of q and k per head before RoPE (Qwen3, Gemma 3).
    pub qk_norm: bool,
    pub eos_token_ids: Vec<u32>,
    pub activation: Activation,
    /// Attention scores are `q·k * attention_scale` (default `1/sqrt(head_dim)`).
    pub attention_scale: f64,
    pub gemma: GemmaOptions,
    /// The longest sequence the model was trained on (`max_position_embeddings`, GGUF's
    /// `context_length`), when the file says.
    pub max_position_embeddings: Option<usize>,
}

impl LlamaConfig {
    /// Bytes of this model's parameters with its weight matrices (embeddings, projections,
    /// an untied head) stored in `weights`; norms and biases are f32. Exact for the models
    /// [`crate::Llama`] builds: what loading one will hold, known before loading it.
    pub fn parameter_bytes(&self, weights: crate::Precision) -> u64 {
        let (h, d) = (self.hidden_size as u64, self.head_dim as u64);
        let (q, kv) = (self.num_heads as u64 * d, self.num_kv_heads as u64 * d);
        let ffn = self.intermediate_size as u64;
        let per_layer_matrices = h * (q + 2 * kv) + q * h + 3 * h * ffn;
        let head = if self.tie_word_embeddings { 0 } else { 1 };
        let matrices =
            (1 + head) * self.vocab_size as u64 * h + self.num_layers as u64 * per_layer_matrices;
        let norms = if self.gemma.sandwich_norms { 4 } else { 2 };
        let mut per_layer_vectors = norms * h;
        if self.qk_norm {
            per_layer_vectors += 2 * d;
        }
        if self.qkv_bias {
            per_layer_vectors += q + 2 * kv;
        }
        if self.o_bias {
            per_layer_vectors += h;
        }
        if self.mlp_bias {
            per_layer_vectors += 2 * ffn + h;
        }
        let vectors = h + self.num_layers as u64 * per_layer_vectors;
        matrices * weights.element_bytes() + vectors * 4
    }

    /// The bytes of an untied output layer in `weights` (0 when tied): what
    /// [`crate::Pretrained::load_for_hidden_states`] does not hold of
    /// [`Self::parameter_bytes`].
    pub fn untied_head_bytes(&self, weights: crate::Precision) -> u64 {
        if self.tie_word_embeddings {
            return 0;
        }
        self.vocab_size as u64 * self.hidden_size as u64 * weights.element_bytes()
    }

    /// A plain Llama (SiLU, RMSNorm 1e-5, no biases, tied head, `1/sqrt(head_dim)` attention
    /// scale, no Gemma options): for models built in code rather than read from a file.
    pub fn llama(
        vocab_size: usize,
        hidden_size: usize,
        intermediate_size: usize,
        num_layers: usize,
        num_heads: usize,
        num_kv_heads: usize,
        rope_theta: f64,
    ) -> Self {
        let head_dim = hidden_size / num_heads;
        Self {
            vocab_size,
            hidden_size,
            intermediate_size,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: 1e-5,
            rope_theta,
            rope_scaling: None,
            tie_word_embeddings: true,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            qk_norm: false,
            eos_token_ids: Vec::new(),
            activation: Activation::Silu,
            attention_scale: 1.0 / (head_dim as f64).sqrt(),
            gemma: GemmaOptions::default(),
            max_position_embeddings: None,
        }
    }

    /// Read and resolve `config.json`.
    pub fn from_file(path: &Path) -> Result<Self, LmError> {
        let text = std::fs::read_to_string(path).map_err(|source| LmError::Io {
            path: path.into(),
            source,
        })?;
        let hf: HfConfig = serde_json::from_str(&text).map_err(|source| LmError::Json {
            path: path.into(),
            source,
        })?;
        Self::resolve(hf, path)
    }

    pub fn resolve(hf: HfConfig, path: &Path) -> Result<Self, LmError> {
        let bad = |reason: String| LmError::BadConfig {
            path: path.into(),
            reason,
        };
        let Some((qkv_bias, o_bias, qk_norm)) = attention_flags(&hf) else {
            return Err(LmError::UnsupportedModel {
                path: path.into(),
                model_type: hf.model_type.clone(),
            });
        };
        let gemma = hf.model_type == "gemma3_text";
        let activation = resolve_activation(&hf, gemma).map_err(bad)?;
        reject_softcapping(&hf).map_err(bad)?;
        let (num_kv_heads, head_dim) = head_shape(&hf).map_err(bad)?;
        let parameters = rope_parameters(&hf, "full_attention").map_err(bad)?;
        let local_parameters = rope_parameters(&hf, "sliding_attention").map_err(bad)?;
        let rope_theta = hf
            .rope_theta
            .or(parameters.as_ref().and_then(|p| p.rope_theta))
            .unwrap_or(10_000.0);
        let rope_scaling = resolve_rope_scaling(&hf, parameters).map_err(bad)?;
        let gemma_options = if gemma {
            resolve_gemma_options(&hf, local_parameters).map_err(bad)?
        } else {
            GemmaOptions::default()
        };
        if let Some(s) = &rope_scaling
            && s.rope_type != "llama3"
            && s.rope_type != "default"
        {
            return Err(bad(format!(
                "rope_scaling type {:?} is not supported (llama3, default)",
                s.rope_type
            )));
        }
        let eos_token_ids = token_ids(hf.eos_token_id.as_ref());
        Ok(Self {
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_layers: hf.num_hidden_layers,
            num_heads: hf.num_attention_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: hf.rms_norm_eps,
            rope_theta,
            rope_scaling: rope_scaling.filter(|s| s.rope_type == "llama3"),
            tie_word_embeddings: hf.tie_word_embeddings,
            qkv_bias,
            o_bias,
            mlp_bias: hf.mlp_bias,
            qk_norm,
            eos_token_ids,
            activation,
            attention_scale: match hf.query_pre_attn_scalar {
                Some(scalar) => scalar.powf(-0.5),
                None => (head_dim as f64).powf(-0.5),
            },
            gemma: gemma_options,
            max_position_embeddings: hf.max_position_embeddings,
        })
    }
}

/// `(qkv_bias, o_bias, qk_norm)` of the model type; `None` for an unsupported type.
fn attention_flags(hf: &HfConfig) -> Option<(bool, bool, bool)> {
    Some(match hf.model_type.as_str() {
        "llama" | "mistral" => {
            let bias = hf.attention_bias.unwrap_or(false);
            (bias, bias, false)
        }
        "qwen2" => (true, false, false),
        "qwen3" => {
            let bias = hf.attention_bias.unwrap_or(false);
            (bias, bias, true)
        }
        "gemma3_text" => {
            let bias = hf.attention_bias.unwrap_or(false);
            (bias, bias, true)
        }
        _ => return None,
    })
}

/// The feed-forward nonlinearity (Gemma's default when the file names none); `Err` holds
/// the reason it is not supported.
fn resolve_activation(hf: &HfConfig, gemma: bool) -> Result<Activation, String> {
    match hf.hidden_activation.as_deref().or(hf.hidden_act.as_deref()) {
        None if gemma => Ok(Activation::GeluTanh),
        None | Some("silu") => Ok(Activation::Silu),
        Some("gelu_pytorch_tanh") => Ok(Activation::GeluTanh),
        Some(act) => Err(format!(
            "activation {act:?} is not supported (silu, gelu_pytorch_tanh)"
        )),
    }
}

/// Logit soft-capping is not implemented, so a config that asks for it is refused.
fn reject_softcapping(hf: &HfConfig) -> Result<(), String> {
    for (key, value) in [
        ("final_logit_softcapping", hf.final_logit_softcapping),
        ("attn_logit_softcapping", hf.attn_logit_softcapping),
    ] {
        if value.is_some() {
            return Err(format!("{key} is not supported"));
        }
    }
    Ok(())
}

/// `(num_kv_heads, head_dim)`, checked against the number of attention heads.
fn head_shape(hf: &HfConfig) -> Result<(usize, usize), String> {
    let num_kv_heads = hf.num_key_value_heads.unwrap_or(hf.num_attention_heads);
    if hf.num_attention_heads == 0
        || num_kv_heads == 0
        || !hf.num_attention_heads.is_multiple_of(num_kv_heads)
    {
        return Err(format!(
            "num_attention_heads ({}) must be a positive multiple of num_key_value_heads ({num_kv_heads})",
            hf.num_attention_heads
        ));
    }
    let head_dim = match hf.head_dim {
        Some(d) => d,
        None if hf.hidden_size.is_multiple_of(hf.num_attention_heads) => {
            hf.hidden_size / hf.num_attention_heads
        }
        None => {
            return Err(
                "hidden_size is not divisible by num_attention_heads and head_dim is absent".into(),
            );
        }
    };
    if !head_dim.is_multiple_of(2) {
        return Err(format!(
            "head_dim {head_dim} must be even for rotary embeddings"
        ));
    }
    Ok((num_kv_heads, head_dim))
}

/// The `rope_parameters` of layers of type `kind`.
fn rope_parameters(hf: &HfConfig, kind: &str) -> Result<Option<RopeParameters>, String> {
    // transformers 5: one `rope_parameters` object, or (Gemma 3) one per layer type.
    let Some(all) = &hf.rope_parameters else {
        return Ok(None);
    };
    let one = all
        .get(kind)
        .filter(|_| all.get("rope_theta").is_none())
        .unwrap_or(all);
    serde_json::from_value(one.clone())
        .map(Some)
        .map_err(|e| format!("rope_parameters: {e}"))
}

/// RoPE scaling from `rope_scaling`, else from the (full-attention) `rope_parameters`.
fn resolve_rope_scaling(
    hf: &HfConfig,
    parameters: Option<RopeParameters>,
) -> Result<Option<RopeScaling>, String> {
    Ok(match (hf.rope_scaling.clone(), parameters) {
        (Some(s), _) => Some(s),
        (None, Some(p)) => match p.rope_type.as_deref() {
            None | Some("default") => None,
            Some(kind) => Some(RopeScaling {
                rope_type: kind.to_string(),
                factor: p
                    .factor
                    .ok_or_else(|| format!("rope_parameters of type {kind:?} lack `factor`"))?,
                low_freq_factor: p.low_freq_factor.unwrap_or(1.0),
                high_freq_factor: p.high_freq_factor.unwrap_or(4.0),
                original_max_position_embeddings: p
                    .original_max_position_embeddings
                    .unwrap_or(8192),
            }),
        },
        (None, None) => None,
    })
}

/// Gemma 3's options: its layer pattern and local RoPE base, from `local_parameters` (the
/// sliding-attention `rope_parameters`) when the file has no `rope_local_base_freq`.
fn resolve_gemma_options(
    hf: &HfConfig,
    local_parameters: Option<RopeParameters>,
) -> Result<GemmaOptions, String> {
    let sliding_layers = match &hf.layer_types {
        Some(types) => {
            if types.len() != hf.num_hidden_layers {
                return Err(format!(
                    "layer_types has {} entries for {} layers",
                    types.len(),
                    hf.num_hidden_layers
                ));
            }
            types
                .iter()
                .map(|t| match t.as_str() {
                    "sliding_attention" => Ok(true),
                    "full_attention" => Ok(false),
                    other => Err(format!("layer type {other:?} is not supported")),
                })
                .collect::<Result<Vec<_>, _>>()?
        }
        // Gemma 3's default pattern: five local layers, then one global.
        None => (0..hf.num_hidden_layers)
            .map(|i| (i + 1) % 6 != 0)
            .collect(),
    };
    Ok(GemmaOptions {
        embedding_scale: true,
        norm_plus_one: true,
        sandwich_norms: true,
        sliding_layers,
        sliding_window: hf.sliding_window,
        rope_local_theta: Some(
            hf.rope_local_base_freq
                .or(local_parameters.and_then(|p| p.rope_theta))
                .unwrap_or(10_000.0),
        ),
    })
}

/// A token id field as Hugging Face writes it: one id, a list of ids, or absent.
pub fn token_ids(value: Option<&serde_json::Value>) -> Vec<u32> {
    let id = |v: &serde_json::Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
    match value {
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(id).collect(),
        Some(v) => id(v).into_iter().collect(),
        None => Vec::new(),
    }
}

/// The eos ids of `generation_config.json` in `dir` (empty when the file is absent).
pub fn generation_eos_ids(dir: &Path) -> Result<Vec<u32>, LmError> {
    let path = dir.join("generation_config.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(LmError::Io { path, source }),
    };
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| LmError::Json { path, source })?;
    Ok(token_ids(value.get("eos_token_id")))
}
