//! Hugging Face safetensors checkpoints: one file or a sharded index; f32, f16 and bf16.
//!
//! Every tensor is checked against the shape the config implies, and every tensor in the
//! checkpoint must be used: a mismatch is an error naming the file and the tensor.

use crate::config::LlamaConfig;
use crate::error::LmError;
use crate::llama::Llama;
use crate::param::set_param;
use crate::precision::{Precision, tensor_stored_as};
use burn::nn::{Linear, RmsNorm};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use safetensors::tensor::Metadata;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// One safetensors file, read whole, its header parsed and validated once.
pub(crate) struct SafetensorsFile {
    path: PathBuf,
    bytes: Vec<u8>,
    /// Where the tensor data starts in `bytes`.
    data_start: usize,
    metadata: Metadata,
}

impl SafetensorsFile {
    pub(crate) fn open(path: &Path) -> Result<Self, LmError> {
        let bytes = std::fs::read(path).map_err(|source| LmError::Io {
            path: path.into(),
            source,
        })?;
        Self::parse(path, bytes)
    }

    /// Checks the header and that the data covers every tensor (a truncated file fails here).
    pub(crate) fn parse(path: &Path, bytes: Vec<u8>) -> Result<Self, LmError> {
        let (header_len, metadata) =
            SafeTensors::read_metadata(&bytes).map_err(|e| LmError::BadSafetensors {
                path: path.into(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            path: path.into(),
            bytes,
            data_start: 8 + header_len,
            metadata,
        })
    }

    pub(crate) fn names(&self) -> Vec<String> {
        self.metadata.offset_keys()
    }

    pub(crate) fn len(&self) -> usize {
        self.metadata.tensors().len()
    }

    /// The tensor `name` as f32, row-major, checked against `shape`.
    pub(crate) fn read_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, LmError> {
        let info = self
            .metadata
            .info(name)
            .ok_or_else(|| LmError::MissingTensor {
                name: name.into(),
                dir: self.path.clone(),
            })?;
        if info.shape != shape {
            return Err(LmError::WrongShape {
                path: self.path.clone(),
                name: name.into(),
                actual: info.shape.clone(),
                expected: shape.to_vec(),
            });
        }
        let (start, end) = info.data_offsets;
        let data = &self.bytes[self.data_start + start..self.data_start + end];
        Ok(match info.dtype {
            Dtype::F32 => data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => data
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => data
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(LmError::UnsupportedDtype {
                    path: self.path.clone(),
                    name: name.into(),
                    dtype: format!("{other:?}"),
                });
            }
        })
    }
}

/// Write little-endian f32 tensors (`name`, shape, bytes) as a safetensors file with PyTorch's
/// `format: pt` metadata, as `transformers` and PEFT write theirs.
pub fn save_f32_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<u8>)],
) -> Result<(), LmError> {
    let views = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| LmError::BadSafetensors {
            path: path.into(),
            reason: e.to_string(),
        })?;
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    safetensors::serialize_to_file(views, metadata, path).map_err(|e| LmError::BadSafetensors {
        path: path.into(),
        reason: e.to_string(),
    })
}

/// Named f32 tensors in Hugging Face naming and layout (`model.layers.0.self_attn.q_proj.weight`,
/// `[out, in]`), wherever they come from: safetensors shards, or a GGUF file mapped onto them.
pub(crate) trait TensorSource {
    /// The tensor `name`, row-major, checked against `shape`.
    fn read(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, LmError>;
    /// Names present but never read, sorted.
    fn unused(&self) -> Vec<String>;
}

/// The shards of a checkpoint and where each tensor lives.
struct Checkpoint {
    dir: PathBuf,
    files: Vec<SafetensorsFile>,
    index: HashMap<String, usize>,
    used: BTreeSet<String>,
}

impl Checkpoint {
    fn open(dir: &Path) -> Result<Self, LmError> {
        let index_path = dir.join("model.safetensors.index.json");
        let shard_names: Vec<String> = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path).map_err(|source| LmError::Io {
                path: index_path.clone(),
                source,
            })?;
            let index: serde_json::Value =
                serde_json::from_str(&text).map_err(|source| LmError::Json {
                    path: index_path.clone(),
                    source,
                })?;
            let map = index
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| LmError::BadConfig {
                    path: index_path.clone(),
                    reason: "no `weight_map` object".into(),
                })?;
            map.values()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        } else {
            vec!["model.safetensors".to_string()]
        };
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for name in shard_names {
            let file = SafetensorsFile::open(&dir.join(&name))?;
            for tensor in file.names() {
                index.insert(tensor, files.len());
            }
            files.push(file);
        }
        Ok(Self {
            dir: dir.into(),
            files,
            index,
            used: BTreeSet::new(),
        })
    }
}

impl TensorSource for Checkpoint {
    fn read(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, LmError> {
        let file = *self.index.get(name).ok_or_else(|| LmError::MissingTensor {
            name: name.into(),
            dir: self.dir.clone(),
        })?;
        let values = self.files[file].read_f32(name, shape)?;
        self.used.insert(name.to_string());
        Ok(values)
    }

    fn unused(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .index
            .keys()
            .filter(|n| !self.used.contains(*n))
            .cloned()
            .collect();
        names.sort();
        names
    }
}

/// A Hugging Face `[out, in]` weight as Burn's `[in, out]`, in square tiles so that reads
/// and writes both stay in cache (a plain loop is ~10x slower on a 576x1536 matrix).
pub(crate) fn transposed(values: Vec<f32>, out: usize, inp: usize) -> Vec<f32> {
    const TILE: usize = 32;
    let mut t = vec![0.0; values.len()];
    for o0 in (0..out).step_by(TILE) {
        for i0 in (0..inp).step_by(TILE) {
            for o in o0..(o0 + TILE).min(out) {
                for i in i0..(i0 + TILE).min(inp) {
                    t[i * out + o] = values[o * inp + i];
                }
            }
        }
    }
    t
}

struct Loader<'a, B: Backend> {
    checkpoint: &'a mut dyn TensorSource,
    device: &'a B::Device,
    /// Gemma stores RMSNorm weights as `w` and applies `1 + w`; ours hold `1 + w`.
    norm_offset: f32,
    /// How weight matrices (not norms or biases) are stored.
    weights: Precision,
}

impl<B: Backend> Loader<'_, B> {
    fn linear(&mut self, linear: &mut Linear<B>, prefix: &str) -> Result<(), LmError> {
        // `lazy_shape`, not `dims`: reading the shape must not run the random initialiser.
        let [inp, out] = linear.weight.lazy_shape().dims();
        let w = self
            .checkpoint
            .read(&format!("{prefix}.weight"), &[out, inp])?;
        set_param(
            &mut linear.weight,
            tensor_stored_as(
                transposed(w, out, inp),
                [inp, out],
                self.weights,
                self.device,
            ),
        );
        if let Some(bias) = linear.bias.as_mut() {
            let b = self.checkpoint.read(&format!("{prefix}.bias"), &[out])?;
            set_param(
                bias,
                Tensor::from_data(TensorData::new(b, [out]), self.device),
            );
        }
        Ok(())
    }

    fn norm(&mut self, norm: &mut RmsNorm<B>, prefix: &str) -> Result<(), LmError> {
        let [d] = norm.gamma.lazy_shape().dims();
        let mut g = self.checkpoint.read(&format!("{prefix}.weight"), &[d])?;
        if self.norm_offset != 0.0 {
            g.iter_mut().for_each(|w| *w += self.norm_offset);
        }
        set_param(
            &mut norm.gamma,
            Tensor::from_data(TensorData::new(g, [d]), self.device),
        );
        Ok(())
    }
}

/// Load a model from a Hugging Face directory (`config.json` + safetensors). For a path that
/// may also be a `.gguf` file, [`crate::pretrained::load_model`] decides.
pub fn load<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<(LlamaConfig, Llama<B>), LmError> {
    load_with_weights(dir, device, Precision::F32)
}

/// As [`load`], with weight matrices stored in `weights` (see [`Llama::weight_dtype`]).
pub fn load_with_weights<B: Backend>(
    dir: &Path,
    device: &B::Device,
    weights: Precision,
) -> Result<(LlamaConfig, Llama<B>), LmError> {
    load_parts(dir, device, weights, Head::Load)
}

/// Whether a model is loaded with its untied output layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Head {
    Load,
    /// Hidden states only: an untied head is neither read nor held (see [`Llama::headless`]).
    Skip,
}

/// As [`load_with_weights`], with or without the untied head.
pub(crate) fn load_parts<B: Backend>(
    dir: &Path,
    device: &B::Device,
    weights: Precision,
    head: Head,
) -> Result<(LlamaConfig, Llama<B>), LmError> {
    let config = LlamaConfig::from_file(&dir.join("config.json"))?;
    let mut checkpoint = Checkpoint::open(dir)?;
    let model = fill(&config, &mut checkpoint, device, weights, head)?;
    // A tied checkpoint may still carry a copy of the head; rotary buffers are recomputed.
    let unused: Vec<String> = checkpoint
        .unused()
        .into_iter()
        .filter(|n| {
            !(n.ends_with("rotary_emb.inv_freq")
                || ((config.tie_word_embeddings || head == Head::Skip) && n == "lm_head.weight"))
        })
        .collect();
    if let Some(first) = unused.first() {
        return Err(LmError::BadConfig {
            path: dir.join("config.json"),
            reason: format!(
                "the checkpoint has {} tensors this config does not use, e.g. {first:?}",
                unused.len()
            ),
        });
    }
    Ok((config, model))
}

/// A model of `config` with every parameter read from `source`, its weight matrices stored
/// in `weights`; with [`Head::Skip`], without an untied head.
pub(crate) fn fill<B: Backend>(
    config: &LlamaConfig,
    source: &mut dyn TensorSource,
    device: &B::Device,
    weights: Precision,
    head: Head,
) -> Result<Llama<B>, LmError> {
    let mut model = config.init::<B>(device);
    if head == Head::Skip && model.lm_head.is_some() {
        model.lm_head = None;
        model.headless = true;
    }
    let mut loader = Loader::<B> {
        checkpoint: source,
        device,
        norm_offset: if config.gemma.norm_plus_one { 1.0 } else { 0.0 },
        weights,
    };
    let (v, h) = (config.vocab_size, config.hidden_size);
    let emb = loader
        .checkpoint
        .read("model.embed_tokens.weight", &[v, h])?;
    set_param(
        &mut model.embed_tokens.weight,
        tensor_stored_as(emb, [v, h], weights, device),
    );
    for (i, layer) in model.layers.iter_mut().enumerate() {
        let p = format!("model.layers.{i}");
        loader.norm(&mut layer.input_layernorm, &format!("{p}.input_layernorm"))?;
        loader.norm(
            &mut layer.post_attention_layernorm,
            &format!("{p}.post_attention_layernorm"),
        )?;
        if let Some(norm) = layer.pre_feedforward_layernorm.as_mut() {
            loader.norm(norm, &format!("{p}.pre_feedforward_layernorm"))?;
        }
        if let Some(norm) = layer.post_feedforward_layernorm.as_mut() {
            loader.norm(norm, &format!("{p}.post_feedforward_layernorm"))?;
        }
        let attn = &mut layer.self_attn;
        for (proj, name) in [
            (&mut attn.q_proj, "q_proj"),
            (&mut attn.k_proj, "k_proj"),
            (&mut attn.v_proj, "v_proj"),
            (&mut attn.o_proj, "o_proj"),
        ] {
            loader.linear(&mut proj.base, &format!("{p}.self_attn.{name}"))?;
        }
        if let (Some(q), Some(k)) = (attn.q_norm.as_mut(), attn.k_norm.as_mut()) {
            loader.norm(q, &format!("{p}.self_attn.q_norm"))?;
            loader.norm(k, &format!("{p}.self_attn.k_norm"))?;
        }
        let mlp = &mut layer.mlp;
        for (proj, name) in [
            (&mut mlp.gate_proj, "gate_proj"),
            (&mut mlp.up_proj, "up_proj"),
            (&mut mlp.down_proj, "down_proj"),
        ] {
            loader.linear(&mut proj.base, &format!("{p}.mlp.{name}"))?;
        }
    }
    loader.norm(&mut model.norm, "model.norm")?;
    if let Some(head) = model.lm_head.as_mut() {
        loader.linear(&mut head.base, "lm_head")?;
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::transposed;

    #[test]
    fn transposes_row_major() {
        // [[1, 2, 3], [4, 5, 6]] -> [[1, 4], [2, 5], [3, 6]]
        assert_eq!(
            transposed(vec![1., 2., 3., 4., 5., 6.], 2, 3),
            vec![1., 4., 2., 5., 3., 6.]
        );
    }
}
