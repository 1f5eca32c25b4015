//! LoRA adapters on a [`Llama`]: attached to its projections, merged, counted, and saved and
//! loaded in PEFT's file layout and tensor names. The adapter itself is [`crate::lora`].

use crate::error::LmError;
use crate::llama::Llama;
use crate::lora::{LoraAdapter, LoraConfig, LoraLinear};
use burn::module::{Module, Param, ParamId};
use burn::nn::DropoutConfig;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The adapter-capable projections of one decoder layer, with their Hugging Face module names.
macro_rules! layer_projections {
    ($layer:expr, $($ref:tt)+) => {{
        let attn = $($ref)+ $layer.self_attn;
        let mlp = $($ref)+ $layer.mlp;
        [
            ("self_attn", "q_proj", $($ref)+ attn.q_proj),
            ("self_attn", "k_proj", $($ref)+ attn.k_proj),
            ("self_attn", "v_proj", $($ref)+ attn.v_proj),
            ("self_attn", "o_proj", $($ref)+ attn.o_proj),
            ("mlp", "gate_proj", $($ref)+ mlp.gate_proj),
            ("mlp", "up_proj", $($ref)+ mlp.up_proj),
            ("mlp", "down_proj", $($ref)+ mlp.down_proj),
        ]
    }};
}

impl<B: Backend> Llama<B> {
    /// Every projection with its Hugging Face name, e.g. `model.layers.3.self_attn.q_proj`.
    fn projections(&self) -> Vec<(String, &'static str, &LoraLinear<B>)> {
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter().enumerate() {
            for (kind, name, proj) in layer_projections!(layer, &) {
                out.push((format!("model.layers.{i}.{kind}.{name}"), name, proj));
            }
        }
        out
    }

    /// [`Self::projections`], mutably.
    fn projections_mut(&mut self) -> Vec<(String, &'static str, &mut LoraLinear<B>)> {
        let mut out = Vec::new();
        for (i, layer) in self.layers.iter_mut().enumerate() {
            for (kind, name, proj) in layer_projections!(layer, &mut) {
                out.push((format!("model.layers.{i}.{kind}.{name}"), name, proj));
            }
        }
        out
    }

    /// Freeze the base and attach fresh adapters (`B = 0`, so the output is unchanged).
    /// `seed` fixes the initial `A`, the same on every backend.
    pub fn with_lora(mut self, config: &LoraConfig, seed: u64) -> Result<Self, LmError> {
        config.validate()?;
        self = self.no_grad();
        let device = self.embed_tokens.weight.device();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for (prefix, name, proj) in self.projections_mut() {
            if !config.targets.iter().any(|t| t == name) {
                continue;
            }
            let (inp, out) = proj.dims();
            let bound = 1.0 / (inp as f64).sqrt();
            let a: Vec<f32> = (0..inp * config.rank)
                .map(|_| rng.random_range(-bound..bound) as f32)
                .collect();
            proj.adapter = Some(adapter(
                Tensor::from_data(TensorData::new(a, [inp, config.rank]), &device),
                Tensor::zeros([config.rank, out], &device),
                config,
                &prefix,
            ));
        }
        Ok(self)
    }

    /// The same model with every adapter removed: the frozen base, e.g. GRPO's reference
    /// policy. Cheap: parameters are shared, not copied.
    pub fn without_adapters(&self) -> Self {
        let mut base = self.clone();
        for (_, _, proj) in base.projections_mut() {
            proj.adapter = None;
        }
        base
    }

    /// Fold every adapter into its base weight (`W + s·A·B`): the same outputs without the
    /// adapters' extra matmuls, for fast sampling. The result has no trainable parameters.
    pub fn merge_adapters(mut self) -> Self {
        for (_, _, proj) in self.projections_mut() {
            proj.merge();
        }
        self
    }

    /// Whether any projection carries an adapter.
    pub fn has_adapters(&self) -> bool {
        self.projections()
            .iter()
            .any(|(_, _, p)| p.adapter.is_some())
    }

    /// Number of adapter parameters (the trainable ones after [`Self::with_lora`]).
    pub fn adapter_parameter_count(&self) -> usize {
        self.projections()
            .iter()
            .filter_map(|(_, _, p)| p.adapter.as_ref())
            .map(|a| a.lora_a.shape().num_elements() + a.lora_b.shape().num_elements())
            .sum()
    }

    /// Write `adapter_model.safetensors` and `adapter_config.json` into `dir` as PEFT does,
    /// so `PeftModel.from_pretrained(base, dir)` loads them. `config` must be the one the
    /// adapters were made with; `base_model` is recorded as `base_model_name_or_path`.
    pub fn save_adapters(
        &self,
        dir: &Path,
        config: &LoraConfig,
        base_model: &str,
    ) -> Result<(), LmError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| LmError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut tensors: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
        for (prefix, _, proj) in self.projections() {
            let Some(adapter) = &proj.adapter else {
                continue;
            };
            // PEFT stores torch Linear weights, `[out, in]`: A as `[rank, in]`, B as `[out, rank]`.
            for (which, tensor) in [
                ("lora_A", adapter.lora_a.val().transpose()),
                ("lora_B", adapter.lora_b.val().transpose()),
            ] {
                let shape = tensor.dims().to_vec();
                let values = tensor
                    .into_data()
                    .convert::<f32>()
                    .to_vec::<f32>()
                    .map_err(|e| LmError::BadInput(format!("adapter {prefix}.{which}: {e:?}")))?;
                let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                tensors.insert(
                    format!("base_model.model.{prefix}.{which}.weight"),
                    (shape, bytes),
                );
            }
        }
        let weights_path = dir.join("adapter_model.safetensors");
        let tensors: Vec<_> = tensors
            .into_iter()
            .map(|(name, (shape, bytes))| (name, shape, bytes))
            .collect();
        crate::weights::save_f32_safetensors(&weights_path, &tensors)?;
        let peft = PeftConfig {
            peft_type: "LORA".into(),
            task_type: Some("CAUSAL_LM".into()),
            r: config.rank,
            lora_alpha: config.alpha,
            lora_dropout: config.dropout,
            target_modules: config.targets.clone(),
            use_rslora: config.rslora,
            bias: "none".into(),
            fan_in_fan_out: false,
            use_dora: false,
            base_model_name_or_path: Some(base_model.into()),
            inference_mode: true,
            layers_to_transform: None,
            extra: BTreeMap::new(),
        };
        let config_path = dir.join("adapter_config.json");
        let text = serde_json::to_string_pretty(&peft).map_err(|source| LmError::Json {
            path: config_path.clone(),
            source,
        })?;
        std::fs::write(&config_path, text).map_err(io(&config_path))
    }

    /// Freeze the base and attach the adapters PEFT saved in `dir` (`adapter_config.json`,
    /// `adapter_model.safetensors`). Returns the adapters' config.
    pub fn load_adapters(mut self, dir: &Path) -> Result<(Self, LoraConfig), LmError> {
        let config_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|source| LmError::Io {
            path: config_path.clone(),
            source,
        })?;
        let peft: PeftConfig = serde_json::from_str(&text).map_err(|source| LmError::Json {
            path: config_path.clone(),
            source,
        })?;
        let config = peft.to_lora(&config_path)?;
        let weights_path = dir.join("adapter_model.safetensors");
        let file = crate::weights::SafetensorsFile::open(&weights_path)?;
        let mut used = 0;
        self = self.no_grad();
        let device = self.embed_tokens.weight.device();
        for (prefix, name, proj) in self.projections_mut() {
            if !config.targets.iter().any(|t| t == name) {
                continue;
            }
            let (inp, out) = proj.dims();
            let r = config.rank;
            let key = |which: &str| format!("base_model.model.{prefix}.{which}.weight");
            let a = file.read_f32(&key("lora_A"), &[r, inp])?; // [r, in]
            let b = file.read_f32(&key("lora_B"), &[out, r])?; // [out, r]
            used += 2;
            proj.adapter = Some(adapter(
                // Transposed on the host, so the adapters are laid out (contiguous) exactly as
                // fresh ones and a resumed run computes bit for bit as before.
                Tensor::<B, 2>::from_data(
                    TensorData::new(crate::weights::transposed(a, r, inp), [inp, r]),
                    &device,
                ),
                Tensor::<B, 2>::from_data(
                    TensorData::new(crate::weights::transposed(b, out, r), [r, out]),
                    &device,
                ),
                &config,
                &prefix,
            ));
        }
        let total = file.len();
        if used != total {
            return Err(LmError::BadConfig {
                path: weights_path,
                reason: format!(
                    "{total} tensors, but adapter_config.json's targets on this model name {used}"
                ),
            });
        }
        Ok((self, config))
    }
}

/// A parameter id derived from the adapter's name (FNV-1a), the same in every process: an
/// optimizer's saved state, keyed by parameter id, then matches adapters loaded from disk.
fn stable_id(name: &str) -> ParamId {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    ParamId::from(hash)
}

fn adapter<B: Backend>(
    a: Tensor<B, 2>,
    b: Tensor<B, 2>,
    config: &LoraConfig,
    prefix: &str,
) -> LoraAdapter<B> {
    let param = |which: &str, t: Tensor<B, 2>| {
        Param::initialized(
            stable_id(&format!("lora:{prefix}.{which}")),
            t.require_grad(),
        )
    };
    LoraAdapter {
        lora_a: param("lora_A", a),
        lora_b: param("lora_B", b),
        dropout: DropoutConfig::new(config.dropout).init(),
        scaling: config.scaling(),
    }
}

/// The fields of PEFT's `adapter_config.json` this crate reads and writes; others are kept
/// on read and ignored.
#[derive(Debug, Serialize, Deserialize)]
struct PeftConfig {
    peft_type: String,
    #[serde(default)]
    task_type: Option<String>,
    r: usize,
    lora_alpha: f64,
    #[serde(default)]
    lora_dropout: f64,
    #[serde(deserialize_with = "one_or_many")]
    target_modules: Vec<String>,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default = "none_bias")]
    bias: String,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    base_model_name_or_path: Option<String>,
    #[serde(default)]
    inference_mode: bool,
    #[serde(default)]
    layers_to_transform: Option<serde_json::Value>,
    #[serde(flatten)]
    extra: BTreeMap<String, serde_json::Value>,
}

fn none_bias() -> String {
    "none".into()
}

/// PEFT accepts `target_modules` as a list or as one string.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

impl PeftConfig {
    fn to_lora(&self, path: &Path) -> Result<LoraConfig, LmError> {
        let unsupported = |what: &str| {
            Err(LmError::BadConfig {
                path: path.into(),
                reason: format!("{what} is not supported"),
            })
        };
        if self.peft_type != "LORA" {
            return unsupported(&format!("peft_type {:?}", self.peft_type));
        }
        if self.use_dora {
            return unsupported("use_dora");
        }
        if self.fan_in_fan_out {
            return unsupported("fan_in_fan_out");
        }
        if self.bias != "none" {
            return unsupported(&format!("bias {:?}", self.bias));
        }
        if self
            .layers_to_transform
            .as_ref()
            .is_some_and(|v| !v.is_null())
        {
            return unsupported("layers_to_transform");
        }
        for key in ["rank_pattern", "alpha_pattern"] {
            if self
                .extra
                .get(key)
                .is_some_and(|v| v.as_object().is_some_and(|o| !o.is_empty()))
            {
                return unsupported(key);
            }
        }
        let config = LoraConfig {
            rank: self.r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            targets: self.target_modules.clone(),
            rslora: self.use_rslora,
        };
        config.validate().map_err(|e| LmError::BadConfig {
            path: path.into(),
            reason: e.to_string(),
        })?;
        Ok(config)
    }
}
