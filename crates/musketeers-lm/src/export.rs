//! Write a loaded model as a Hugging Face directory (`config.json`, `model.safetensors` in
//! f32, the tokenizer files), e.g. to turn a GGUF file into something `transformers` loads.

use crate::config::{Activation, LlamaConfig};
use crate::error::LmError;
use crate::llama::Llama;
use crate::lora::LoraLinear;
use crate::pretrained::Pretrained;
use burn::nn::RmsNorm;
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde_json::json;
use std::path::Path;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LmError + '_ {
    move |source| LmError::Io {
        path: path.into(),
        source,
    }
}

/// `model_type` and the keys that describe this config in `config.json`.
fn config_json(config: &LlamaConfig) -> serde_json::Value {
    let model_type = model_type(config);
    let architecture = match model_type {
        "gemma3_text" => "Gemma3ForCausalLM",
        "qwen3" => "Qwen3ForCausalLM",
        "qwen2" => "Qwen2ForCausalLM",
        _ => "LlamaForCausalLM",
    };
    let mut out = json!({
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "tie_word_embeddings": config.tie_word_embeddings,
        "attention_bias": config.qkv_bias && model_type != "qwen2",
        "mlp_bias": config.mlp_bias,
        "torch_dtype": "float32",
        // Unknown (a model built in code): a length no demo prompt approaches.
        "max_position_embeddings": config.max_position_embeddings.unwrap_or(32_768),
    });
    if config.eos_token_ids.len() == 1 {
        out["eos_token_id"] = config.eos_token_ids[0].into();
    } else if !config.eos_token_ids.is_empty() {
        out["eos_token_id"] = config.eos_token_ids.clone().into();
    }
    if let Some(s) = &config.rope_scaling {
        out["rope_scaling"] = json!({
            "rope_type": s.rope_type, "factor": s.factor, "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position_embeddings,
        });
    }
    out["hidden_act"] = match config.activation {
        Activation::Silu => "silu".into(),
        Activation::GeluTanh => "gelu_pytorch_tanh".into(),
    };
    if model_type == "gemma3_text" {
        add_gemma_keys(&mut out, config);
    }
    out
}

/// The `model_type` whose layout `config` matches.
fn model_type(config: &LlamaConfig) -> &'static str {
    if config.gemma.sandwich_norms {
        "gemma3_text"
    } else if config.qk_norm {
        "qwen3"
    } else if config.qkv_bias && !config.o_bias {
        "qwen2"
    } else {
        "llama"
    }
}

/// The Gemma 3 keys of `config.json`, added to `out` (which already has `hidden_act`).
fn add_gemma_keys(out: &mut serde_json::Value, config: &LlamaConfig) {
    let gemma = &config.gemma;
    out["hidden_activation"] = out["hidden_act"].clone();
    // transformers wants an integer here; the scale came from one.
    let scalar = 1.0 / (config.attention_scale * config.attention_scale);
    out["query_pre_attn_scalar"] = if (scalar - scalar.round()).abs() < 1e-6 {
        (scalar.round() as u64).into()
    } else {
        scalar.into()
    };
    out["sliding_window"] = gemma.sliding_window.unwrap_or(4096).into();
    let local = gemma.rope_local_theta.unwrap_or(10_000.0);
    out["rope_local_base_freq"] = local.into();
    out["layer_types"] = gemma
        .sliding_layers
        .iter()
        .map(|&s| {
            if s {
                "sliding_attention"
            } else {
                "full_attention"
            }
        })
        .collect::<Vec<_>>()
        .into();
    out["rope_parameters"] = json!({
        "full_attention": {"rope_type": "default", "rope_theta": config.rope_theta},
        "sliding_attention": {"rope_type": "default", "rope_theta": local},
    });
}

struct Writer {
    tensors: Vec<(String, Vec<usize>, Vec<u8>)>,
}

impl Writer {
    fn add<B: Backend, const D: usize>(
        &mut self,
        name: String,
        tensor: Tensor<B, D>,
        offset: f32,
    ) -> Result<(), LmError> {
        let shape = tensor.dims().to_vec();
        let values = tensor
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| LmError::BadInput(format!("{name}: {e:?}")))?;
        let bytes = values
            .iter()
            .flat_map(|v| (v - offset).to_le_bytes())
            .collect();
        self.tensors.push((name, shape, bytes));
        Ok(())
    }

    /// Burn's `[in, out]` weight as Hugging Face's `[out, in]`, adapters merged.
    fn linear<B: Backend>(&mut self, prefix: &str, proj: &LoraLinear<B>) -> Result<(), LmError> {
        let mut weight = proj.base.weight.val().cast(burn::tensor::DType::F32);
        if let Some(adapter) = &proj.adapter {
            weight = weight + adapter.delta();
        }
        self.add(format!("{prefix}.weight"), weight.transpose(), 0.0)?;
        if let Some(bias) = &proj.base.bias {
            self.add(format!("{prefix}.bias"), bias.val(), 0.0)?;
        }
        Ok(())
    }

    fn norm<B: Backend>(
        &mut self,
        name: &str,
        norm: &RmsNorm<B>,
        offset: f32,
    ) -> Result<(), LmError> {
        self.add(format!("{name}.weight"), norm.gamma.val(), offset)
    }
}

fn tensors<B: Backend>(model: &Llama<B>, config: &LlamaConfig) -> Result<Writer, LmError> {
    if model.headless {
        return Err(LmError::BadInput(
            "a model loaded for hidden states only has no output layer to write".into(),
        ));
    }
    // Gemma's files hold `w` where the model applies `1 + w`; ours hold `1 + w`.
    let offset = if config.gemma.norm_plus_one { 1.0 } else { 0.0 };
    let mut w = Writer {
        tensors: Vec::new(),
    };
    let embed = model.embed_tokens.weight.val();
    w.add("model.embed_tokens.weight".into(), embed, 0.0)?;
    for (i, layer) in model.layers.iter().enumerate() {
        let p = format!("model.layers.{i}");
        w.norm(
            &format!("{p}.input_layernorm"),
            &layer.input_layernorm,
            offset,
        )?;
        w.norm(
            &format!("{p}.post_attention_layernorm"),
            &layer.post_attention_layernorm,
            offset,
        )?;
        if let Some(n) = &layer.pre_feedforward_layernorm {
            w.norm(&format!("{p}.pre_feedforward_layernorm"), n, offset)?;
        }
        if let Some(n) = &layer.post_feedforward_layernorm {
            w.norm(&format!("{p}.post_feedforward_layernorm"), n, offset)?;
        }
        let a = &layer.self_attn;
        w.linear(&format!("{p}.self_attn.q_proj"), &a.q_proj)?;
        w.linear(&format!("{p}.self_attn.k_proj"), &a.k_proj)?;
        w.linear(&format!("{p}.self_attn.v_proj"), &a.v_proj)?;
        w.linear(&format!("{p}.self_attn.o_proj"), &a.o_proj)?;
        if let (Some(q), Some(k)) = (&a.q_norm, &a.k_norm) {
            w.norm(&format!("{p}.self_attn.q_norm"), q, offset)?;
            w.norm(&format!("{p}.self_attn.k_norm"), k, offset)?;
        }
        let m = &layer.mlp;
        w.linear(&format!("{p}.mlp.gate_proj"), &m.gate_proj)?;
        w.linear(&format!("{p}.mlp.up_proj"), &m.up_proj)?;
        w.linear(&format!("{p}.mlp.down_proj"), &m.down_proj)?;
    }
    w.norm("model.norm", &model.norm, offset)?;
    if let Some(head) = &model.lm_head {
        w.linear("lm_head", head)?;
    }
    Ok(w)
}

/// Write `pretrained` into `dir` as a Hugging Face model directory (f32 weights, LoRA
/// adapters merged): `config.json`, `model.safetensors`, `generation_config.json`, and
/// `tokenizer.json` + `tokenizer_config.json` when it has a tokenizer.
pub fn save_pretrained<B: Backend>(pretrained: &Pretrained<B>, dir: &Path) -> Result<(), LmError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let config = &pretrained.config;
    let write_json = |name: &str, value: &serde_json::Value| -> Result<(), LmError> {
        let path = dir.join(name);
        let text = serde_json::to_string_pretty(value).map_err(|source| LmError::Json {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&path, text).map_err(io(&path))
    };
    write_json("config.json", &config_json(config))?;
    write_json(
        "generation_config.json",
        &json!({"eos_token_id": pretrained.eos_token_ids}),
    )?;
    let writer = tensors(&pretrained.model, config)?;
    crate::weights::save_f32_safetensors(&dir.join("model.safetensors"), &writer.tensors)?;
    if let Some(tokenizer) = &pretrained.tokenizer {
        tokenizer.save(dir)?;
    }
    Ok(())
}
