//! A model directory loaded whole: weights, tokenizer and the eos ids generation stops on.

use crate::config::{LlamaConfig, generation_eos_ids};
use crate::error::LmError;
use crate::llama::Llama;
use crate::precision::Precision;
use crate::tokenizer::TextTokenizer;
use crate::weights::{self, Head};
use burn::tensor::backend::Backend;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct Pretrained<B: Backend> {
    pub dir: PathBuf,
    pub config: LlamaConfig,
    pub model: Llama<B>,
    /// `None` when the directory has no `tokenizer.json`.
    pub tokenizer: Option<TextTokenizer>,
    /// From `generation_config.json`, `config.json` and the tokenizer's eos token, in that
    /// order, without repeats.
    pub eos_token_ids: Vec<u32>,
}

impl<B: Backend> Pretrained<B> {
    /// A Hugging Face directory or a `.gguf` file.
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self, LmError> {
        Self::load_with_weights(dir, device, Precision::F32)
    }

    /// As [`Self::load`], with weight matrices stored in `weights` (see
    /// [`Llama::weight_dtype`]).
    pub fn load_with_weights(
        dir: &Path,
        device: &B::Device,
        weights: Precision,
    ) -> Result<Self, LmError> {
        Self::load_parts(dir, device, weights, Head::Load)
    }

    /// As [`Self::load_with_weights`], for a model that only gives hidden states (an
    /// expert): an untied output layer is neither read nor held ([`Llama::headless`]; a
    /// Qwen2.5-Coder-1.5B GGUF's is 0.47 GB in f16). A tied one stays, as the embeddings.
    pub fn load_for_hidden_states(
        dir: &Path,
        device: &B::Device,
        weights: Precision,
    ) -> Result<Self, LmError> {
        Self::load_parts(dir, device, weights, Head::Skip)
    }

    fn load_parts(
        dir: &Path,
        device: &B::Device,
        weights: Precision,
        head: Head,
    ) -> Result<Self, LmError> {
        if WeightFormat::of(dir) == WeightFormat::Gguf {
            let file = crate::gguf::GgufFile::open(dir)?;
            let (config, model) = crate::gguf_llama::load_parts::<B>(&file, device, weights, head)?;
            let tokenizer = crate::tokenizer_gguf::from_gguf(&file)?;
            return Ok(Self {
                dir: dir.into(),
                eos_token_ids: config.eos_token_ids.clone(),
                config,
                model,
                tokenizer: Some(tokenizer),
            });
        }
        let (config, model) = weights::load_parts::<B>(dir, device, weights, head)?;
        let tokenizer = if dir.join("tokenizer.json").exists() {
            Some(TextTokenizer::load(dir, config.vocab_size)?)
        } else {
            None
        };
        let mut eos_token_ids = Vec::new();
        let candidates = generation_eos_ids(dir)?
            .into_iter()
            .chain(config.eos_token_ids.iter().copied())
            .chain(tokenizer.as_ref().and_then(TextTokenizer::eos_token_id));
        for id in candidates {
            if !eos_token_ids.contains(&id) {
                eos_token_ids.push(id);
            }
        }
        Ok(Self {
            dir: dir.into(),
            config,
            model,
            tokenizer,
            eos_token_ids,
        })
    }

    /// The tokenizer, or an error naming the directory that lacks one.
    pub fn tokenizer(&self) -> Result<&TextTokenizer, LmError> {
        self.tokenizer.as_ref().ok_or_else(|| LmError::Io {
            path: self.dir.join("tokenizer.json"),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no tokenizer"),
        })
    }
}

/// Only the tokenizer of a Hugging Face directory or a `.gguf` file.
pub fn load_tokenizer(path: &Path) -> Result<TextTokenizer, LmError> {
    if WeightFormat::of(path) == WeightFormat::Gguf {
        return crate::tokenizer_gguf::from_gguf(&crate::gguf::GgufFile::open(path)?);
    }
    let config = LlamaConfig::from_file(&path.join("config.json"))?;
    TextTokenizer::load(path, config.vocab_size)
}

/// Only the config of a Hugging Face directory or a `.gguf` file: what a model will need
/// before it is loaded (see [`LlamaConfig::parameter_bytes`]).
pub fn load_config(path: &Path) -> Result<LlamaConfig, LmError> {
    match WeightFormat::of(path) {
        WeightFormat::Gguf => crate::gguf_llama::config(&crate::gguf::GgufFile::open(path)?),
        WeightFormat::Safetensors => LlamaConfig::from_file(&path.join("config.json")),
    }
}

/// How a model's weights are stored. The one place that decides, from the path alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// A `.gguf` file (llama.cpp's), quantized blocks dequantized on load.
    Gguf,
    /// A Hugging Face directory: `config.json` and safetensors.
    Safetensors,
}

impl WeightFormat {
    pub fn of(path: &Path) -> Self {
        if crate::gguf_llama::is_gguf(path) {
            Self::Gguf
        } else {
            Self::Safetensors
        }
    }
}

/// A model's config and weights from either format (no tokenizer: see [`Pretrained::load`]).
pub fn load_model<B: Backend>(
    path: &Path,
    device: &B::Device,
) -> Result<(LlamaConfig, Llama<B>), LmError> {
    load_model_with_weights(path, device, Precision::F32)
}

/// As [`load_model`], with weight matrices stored in `weights` (see [`Llama::weight_dtype`]).
pub fn load_model_with_weights<B: Backend>(
    path: &Path,
    device: &B::Device,
    weights: Precision,
) -> Result<(LlamaConfig, Llama<B>), LmError> {
    match WeightFormat::of(path) {
        WeightFormat::Gguf => crate::gguf_llama::load_with_weights(
            &crate::gguf::GgufFile::open(path)?,
            device,
            weights,
        ),
        WeightFormat::Safetensors => weights::load_with_weights(path, device, weights),
    }
}
