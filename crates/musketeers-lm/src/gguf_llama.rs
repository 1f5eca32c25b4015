//! GGUF checkpoints (`general.architecture` = llama, qwen2, qwen3, gemma3) as Hugging Face
//! tensors: llama.cpp's names mapped to ours; for `llama` the row permutation llama.cpp's
//! converter applies to Q and K undone; for `gemma3` the `+1` it folds into norm weights undone.

use crate::config::{Activation, GemmaOptions, LlamaConfig};
use crate::error::LmError;
use crate::gguf::GgufFile;
use crate::llama::Llama;
use crate::precision::Precision;
use crate::weights::{Head, TensorSource, fill};
use burn::tensor::backend::Backend;
use std::collections::BTreeSet;
use std::path::Path;

/// Whether `path` names a GGUF file (by extension, or by magic for other names).
pub fn is_gguf(path: &Path) -> bool {
    if path.is_dir() {
        return false;
    }
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        return true;
    }
    std::fs::File::open(path)
        .and_then(|mut f| {
            let mut magic = [0u8; 4];
            std::io::Read::read_exact(&mut f, &mut magic).map(|_| &magic == b"GGUF")
        })
        .unwrap_or(false)
}

/// The model config a GGUF file's metadata describes.
pub fn config(file: &GgufFile) -> Result<LlamaConfig, LmError> {
    let arch = file.architecture()?.to_string();
    let (qkv_bias, qk_norm) = attention_flags(file, &arch)?;
    let key = |k: &str| format!("{arch}.{k}");
    let hidden = file.require_u64(&key("embedding_length"))? as usize;
    let heads = file.require_u64(&key("attention.head_count"))? as usize;
    let kv_heads = optional_usize(file, &key("attention.head_count_kv"))?.unwrap_or(heads);
    if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        return Err(LmError::BadGguf {
            path: file.path.clone(),
            reason: format!("{heads} heads cannot share {kv_heads} key/value heads"),
        });
    }
    let head_dim = optional_usize(file, &key("attention.key_length"))?.unwrap_or(hidden / heads);
    let vocab = match optional_usize(file, &key("vocab_size"))? {
        Some(n) => n,
        None => file
            .get("tokenizer.ggml.tokens")
            .and_then(|t| t.as_array())
            .map_or(0, <[_]>::len),
    };
    if head_dim == 0 || vocab == 0 {
        return Err(LmError::BadGguf {
            path: file.path.clone(),
            reason: format!("head size {head_dim} and vocabulary {vocab} must be positive"),
        });
    }
    let eos = file
        .get("tokenizer.ggml.eos_token_id")
        .and_then(|v| v.as_u64())
        .map(|id| id as u32);
    let layers = file.require_u64(&key("block_count"))? as usize;
    let gemma = if arch == "gemma3" {
        gemma_options(
            layers,
            optional_usize(file, &key("attention.sliding_window"))?,
        )
    } else {
        GemmaOptions::default()
    };
    Ok(LlamaConfig {
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: file.require_u64(&key("feed_forward_length"))? as usize,
        num_layers: layers,
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim,
        rms_norm_eps: file.require_f64(&key("attention.layer_norm_rms_epsilon"))?,
        rope_theta: file
            .get(&key("rope.freq_base"))
            .and_then(|v| v.as_f64())
            .unwrap_or(10_000.0),
        rope_scaling: None,
        tie_word_embeddings: file.tensor_info("output.weight").is_none(),
        qkv_bias,
        o_bias: false,
        mlp_bias: false,
        qk_norm,
        eos_token_ids: eos.into_iter().collect(),
        activation: if arch == "gemma3" {
            Activation::GeluTanh
        } else {
            Activation::Silu
        },
        attention_scale: (head_dim as f64).powf(-0.5),
        gemma,
        max_position_embeddings: file
            .get(&key("context_length"))
            .and_then(|v| v.as_u64())
            .map(|n| n as usize),
    })
}

/// `(qkv_bias, qk_norm)` of the architecture `arch`.
fn attention_flags(file: &GgufFile, arch: &str) -> Result<(bool, bool), LmError> {
    Ok(match arch {
        "llama" => (file.tensor_info("blk.0.attn_q.bias").is_some(), false),
        "qwen2" => (true, false),
        "qwen3" | "gemma3" => (false, true),
        other => {
            return Err(LmError::UnsupportedModel {
                path: file.path.clone(),
                model_type: format!("{other} (GGUF general.architecture)"),
            });
        }
    })
}

/// An optional integer key: absent gives None, present but not an integer is an error
/// naming it.
fn optional_usize(file: &GgufFile, k: &str) -> Result<Option<usize>, LmError> {
    file.get(k)
        .map(|v| {
            v.as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| LmError::BadGguf {
                    path: file.path.clone(),
                    reason: format!("{k} is not an integer"),
                })
        })
        .transpose()
}

/// Gemma 3's options for `layers` layers.
fn gemma_options(layers: usize, sliding_window: Option<usize>) -> GemmaOptions {
    GemmaOptions {
        embedding_scale: true,
        norm_plus_one: true,
        sandwich_norms: true,
        // llama.cpp's Gemma 3: five local layers then one global, local base 10000.
        sliding_layers: (0..layers).map(|i| (i + 1) % 6 != 0).collect(),
        sliding_window,
        rope_local_theta: Some(10_000.0),
    }
}

/// Load a Llama-family model from a parsed GGUF file, dequantized to f32.
pub fn load<B: Backend>(
    file: &GgufFile,
    device: &B::Device,
) -> Result<(LlamaConfig, Llama<B>), LmError> {
    load_with_weights(file, device, Precision::F32)
}

/// As [`load`], with weight matrices dequantized into `weights` (see [`Llama::weight_dtype`]).
pub fn load_with_weights<B: Backend>(
    file: &GgufFile,
    device: &B::Device,
    weights: Precision,
) -> Result<(LlamaConfig, Llama<B>), LmError> {
    load_parts(file, device, weights, Head::Load)
}

/// As [`load_with_weights`], with or without the untied head.
pub(crate) fn load_parts<B: Backend>(
    file: &GgufFile,
    device: &B::Device,
    weights: Precision,
    head: Head,
) -> Result<(LlamaConfig, Llama<B>), LmError> {
    let config = config(file)?;
    let mut source = GgufSource {
        file,
        permute_qk: file.architecture()? == "llama",
        gemma: config.gemma.norm_plus_one,
        heads: config.num_heads,
        kv_heads: config.num_kv_heads,
        used: BTreeSet::new(),
    };
    let model = fill(&config, &mut source, device, weights, head)?;
    let unused: Vec<String> = source
        .unused()
        .into_iter()
        // llama.cpp stores precomputed rope factors for some models; we compute our own.
        .filter(|n| !n.starts_with("rope_"))
        .filter(|n| !(head == Head::Skip && n == "output.weight"))
        .collect();
    if let Some(first) = unused.first() {
        return Err(LmError::BadGguf {
            path: file.path.clone(),
            reason: format!(
                "{} tensors are not used by a {} model, e.g. {first:?}",
                unused.len(),
                file.architecture()?
            ),
        });
    }
    Ok((config, model))
}

struct GgufSource<'a> {
    file: &'a GgufFile,
    permute_qk: bool,
    /// Gemma: norms are named differently and stored as `1 + w`.
    gemma: bool,
    heads: usize,
    kv_heads: usize,
    used: BTreeSet<String>,
}

/// llama.cpp's name for a Hugging Face tensor name.
fn gguf_name(hf: &str, gemma: bool) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.into());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, suffix) = rest.rsplit_once('.')?; // suffix: weight | bias
    let ours = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" if gemma => "post_attention_norm",
        "post_attention_layernorm" => "ffn_norm",
        "pre_feedforward_layernorm" => "ffn_norm",
        "post_feedforward_layernorm" => "post_ffw_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{ours}.{suffix}"))
}

/// Undo llama.cpp's `permute`: within each head, its rows `[2j + s]` hold Hugging Face rows
/// `[s * d/2 + j]` (rotate-half order was interleaved for ggml's RoPE).
fn unpermute_rows(values: &[f32], heads: usize, rows: usize, cols: usize) -> Vec<f32> {
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![0.0; values.len()];
    for h in 0..heads {
        for j in 0..half {
            for s in 0..2 {
                let from = h * head_dim + 2 * j + s;
                let to = h * head_dim + s * half + j;
                out[to * cols..(to + 1) * cols]
                    .copy_from_slice(&values[from * cols..(from + 1) * cols]);
            }
        }
    }
    out
}

impl TensorSource for GgufSource<'_> {
    fn read(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, LmError> {
        let gguf = gguf_name(name, self.gemma).ok_or_else(|| LmError::MissingTensor {
            name: name.into(),
            dir: self.file.path.clone(),
        })?;
        let (actual, values) = self.file.tensor_f32(&gguf)?;
        if actual != shape {
            return Err(LmError::WrongShape {
                path: self.file.path.clone(),
                name: gguf,
                actual,
                expected: shape.to_vec(),
            });
        }
        self.used.insert(gguf.clone());
        let heads = if name.ends_with("q_proj.weight") || name.ends_with("q_proj.bias") {
            Some(self.heads)
        } else if name.ends_with("k_proj.weight") || name.ends_with("k_proj.bias") {
            Some(self.kv_heads)
        } else {
            None
        };
        let is_norm = name.contains("norm.weight");
        Ok(match heads {
            _ if self.gemma && is_norm => values.into_iter().map(|w| w - 1.0).collect(),
            Some(heads) if self.permute_qk => {
                let cols = if shape.len() == 2 { shape[1] } else { 1 };
                unpermute_rows(&values, heads, shape[0], cols)
            }
            _ => values,
        })
    }

    fn unused(&self) -> Vec<String> {
        self.file
            .tensors
            .iter()
            .map(|t| t.name.clone())
            .filter(|n| !self.used.contains(n))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::{gguf_name, unpermute_rows};

    #[test]
    fn maps_names() {
        assert_eq!(
            gguf_name("model.layers.12.self_attn.k_proj.weight", false).as_deref(),
            Some("blk.12.attn_k.weight")
        );
        assert_eq!(
            gguf_name("model.layers.0.mlp.down_proj.weight", false).as_deref(),
            Some("blk.0.ffn_down.weight")
        );
        assert_eq!(gguf_name("model.layers.0.mystery.weight", false), None);
        assert_eq!(
            gguf_name("model.layers.3.post_attention_layernorm.weight", true).as_deref(),
            Some("blk.3.post_attention_norm.weight")
        );
    }

    #[test]
    fn undoes_llama_cpp_permutation() {
        // One head of dim 4, one column: HF rows [a, b, c, d] (halves [a, b], [c, d]) are
        // stored by llama.cpp interleaved as [a, c, b, d].
        let stored = [1.0, 3.0, 2.0, 4.0];
        assert_eq!(unpermute_rows(&stored, 1, 4, 1), vec![1.0, 2.0, 3.0, 4.0]);
    }
}
