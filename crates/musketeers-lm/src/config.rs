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
    /// transformers >= 5 writes `rope_theta` and the scaling here instead.
    pub rope_parameters: Option<RopeParameters>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    pub attention_bias: Option<bool>,
    #[serde(default)]
    pub mlp_bias: bool,
    pub hidden_act: Option<String>,
    pub bos_token_id: Option<serde_json::Value>,
    pub eos_token_id: Option<serde_json::Value>,
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
    /// RMSNorm of q and k per head before RoPE (Qwen3).
    pub qk_norm: bool,
    pub eos_token_ids: Vec<u32>,
}

impl LlamaConfig {
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
        let (qkv_bias, o_bias, qk_norm) = match hf.model_type.as_str() {
            "llama" | "mistral" => {
                let bias = hf.attention_bias.unwrap_or(false);
                (bias, bias, false)
            }
            "qwen2" => (true, false, false),
            "qwen3" => {
                let bias = hf.attention_bias.unwrap_or(false);
                (bias, bias, true)
            }
            other => {
                return Err(LmError::UnsupportedModel {
                    path: path.into(),
                    model_type: other.to_string(),
                });
            }
        };
        if let Some(act) = &hf.hidden_act
            && act != "silu"
        {
            return Err(bad(format!(
                "hidden_act {act:?} is not supported (only silu)"
            )));
        }
        let num_kv_heads = hf.num_key_value_heads.unwrap_or(hf.num_attention_heads);
        if hf.num_attention_heads == 0
            || num_kv_heads == 0
            || !hf.num_attention_heads.is_multiple_of(num_kv_heads)
        {
            return Err(bad(format!(
                "num_attention_heads ({}) must be a positive multiple of num_key_value_heads ({num_kv_heads})",
                hf.num_attention_heads
            )));
        }
        let head_dim =
            match hf.head_dim {
                Some(d) => d,
                None if hf.hidden_size.is_multiple_of(hf.num_attention_heads) => {
                    hf.hidden_size / hf.num_attention_heads
                }
                None => return Err(bad(
                    "hidden_size is not divisible by num_attention_heads and head_dim is absent"
                        .into(),
                )),
            };
        if !head_dim.is_multiple_of(2) {
            return Err(bad(format!(
                "head_dim {head_dim} must be even for rotary embeddings"
            )));
        }
        let parameters = hf.rope_parameters.clone();
        let rope_theta = hf
            .rope_theta
            .or(parameters.as_ref().and_then(|p| p.rope_theta))
            .unwrap_or(10_000.0);
        let rope_scaling = match (hf.rope_scaling.clone(), parameters) {
            (Some(s), _) => Some(s),
            (None, Some(p)) => match p.rope_type.as_deref() {
                None | Some("default") => None,
                Some(kind) => Some(RopeScaling {
                    rope_type: kind.to_string(),
                    factor: p.factor.ok_or_else(|| {
                        bad(format!("rope_parameters of type {kind:?} lack `factor`"))
                    })?,
                    low_freq_factor: p.low_freq_factor.unwrap_or(1.0),
                    high_freq_factor: p.high_freq_factor.unwrap_or(4.0),
                    original_max_position_embeddings: p
                        .original_max_position_embeddings
                        .unwrap_or(8192),
                }),
            },
            (None, None) => None,
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
        })
    }
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
