//! LoRA adapters on a frozen base, saved and loaded with PEFT's file layout and tensor names.
//!
//! A target projection `y = x W + b` becomes `y = x W + b + s · dropout(x) A B` with `A`
//! `[in, rank]`, `B` `[rank, out]` and `s = alpha / rank` (`alpha / sqrt(rank)` with rsLoRA).
//! `A` starts as PEFT's default (uniform in `±1/sqrt(in)`) and `B` at zero, so a fresh adapter
//! leaves the model's output unchanged. Attaching adapters freezes every base parameter, so
//! under autodiff gradients reach only `A` and `B`.

use crate::error::LmError;
use crate::param::set_param;
use crate::precision::cast_float;
use burn::module::{Module, Param};
use burn::nn::{Dropout, Linear};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

/// The projections an adapter can target, by their Hugging Face module names.
pub const TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// Where adapters go and how large they are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    /// Module names among [`TARGETS`].
    pub targets: Vec<String>,
    /// Scale by `alpha / sqrt(rank)` instead of `alpha / rank`.
    pub rslora: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 16.0,
            dropout: 0.0,
            targets: TARGETS.iter().map(|t| t.to_string()).collect(),
            rslora: false,
        }
    }
}

impl LoraConfig {
    pub fn scaling(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }

    /// Rejects a zero rank, a dropout outside `[0, 1)` and unknown or repeated targets.
    pub fn validate(&self) -> Result<(), LmError> {
        let bad = |reason: String| Err(LmError::BadInput(format!("LoRA config: {reason}")));
        if self.rank == 0 {
            return bad("rank must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout {} is not in [0, 1)", self.dropout));
        }
        if self.targets.is_empty() {
            return bad("no target modules".into());
        }
        for (i, t) in self.targets.iter().enumerate() {
            if !TARGETS.contains(&t.as_str()) {
                return bad(format!(
                    "unknown target module {t:?} (known: {})",
                    TARGETS.join(", ")
                ));
            }
            if self.targets[..i].contains(t) {
                return bad(format!("target module {t:?} is listed twice"));
            }
        }
        Ok(())
    }
}

/// The low-rank update of one projection.
#[derive(Module, Debug)]
pub struct LoraAdapter<B: Backend> {
    /// `[in, rank]`
    pub lora_a: Param<Tensor<B, 2>>,
    /// `[rank, out]`
    pub lora_b: Param<Tensor<B, 2>>,
    pub dropout: Dropout,
    pub scaling: f64,
}

impl<B: Backend> LoraAdapter<B> {
    /// `[..., in]` -> `[..., out]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        self.dropout
            .forward(x)
            .matmul(self.lora_a.val().unsqueeze())
            .matmul(self.lora_b.val().unsqueeze())
            * self.scaling
    }

    /// `s · A B`, `[in, out]`: what merging adds to the base weight.
    pub fn delta(&self) -> Tensor<B, 2> {
        self.lora_a.val().matmul(self.lora_b.val()) * self.scaling
    }
}

/// A linear projection with an optional adapter.
#[derive(Module, Debug)]
pub struct LoraLinear<B: Backend> {
    pub base: Linear<B>,
    pub adapter: Option<LoraAdapter<B>>,
}

impl<B: Backend> From<Linear<B>> for LoraLinear<B> {
    fn from(base: Linear<B>) -> Self {
        Self {
            base,
            adapter: None,
        }
    }
}

impl<B: Backend> LoraLinear<B> {
    /// `[..., in]` -> `[..., out]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dims = x.dims();
        let inp = dims[D - 1];
        let rows = dims[..D - 1].iter().product();
        // One 2-D matmul over all rows: Burn's `Linear` broadcasts the weight over the batch
        // axes, which on the CPU backend runs one small matmul per row and is 2-4x slower
        // at decode shapes (measured: [8, 576] x [576, 1536] 0.15 ms flat, 0.27 ms batched).
        let flat = x.reshape([rows, inp]);
        let mut y = matmul_stored(flat.clone(), self.base.weight.val());
        if let Some(bias) = &self.base.bias {
            y = y + bias.val().unsqueeze();
        }
        if let Some(adapter) = &self.adapter {
            y = y + adapter.forward(flat);
        }
        let mut out = dims;
        out[D - 1] = y.dims()[1];
        y.reshape(out)
    }

    /// `(in, out)` of the base weight.
    pub(crate) fn dims(&self) -> (usize, usize) {
        let [inp, out] = self.base.weight.dims();
        (inp, out)
    }

    pub(crate) fn merge(&mut self) {
        if let Some(adapter) = self.adapter.take() {
            let weight = self.base.weight.val();
            let dtype = weight.dtype();
            let merged = (weight.cast(adapter.lora_a.val().dtype()) + adapter.delta()).cast(dtype);
            set_param(&mut self.base.weight, merged.detach());
            self.base.weight = self.base.weight.clone().set_require_grad(false);
        }
    }
}

/// `x · w` where `w` may be stored in a compact dtype (see [`crate::Llama::weight_dtype`]):
/// then `x` is cast down and the product back up, and `w` is never expanded. Half the bytes
/// of f32 to stream, and on the CPU backend an f16 product runs through `gemm`'s f16 kernel
/// (measured on AVX2, `[32, 896] x [896, 4864]`: 5.0 ms against f32's 6.0; a cast of the
/// weight to f32 instead took 60).
///
/// A product of a few rows (decoding) on the CPU backend goes to [`crate::few_rows`].
pub(crate) fn matmul_stored<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>) -> Tensor<B, 2> {
    if let Some(product) = crate::few_rows::matmul(&x, &w) {
        return product;
    }
    let (compute, stored) = (x.dtype(), w.dtype());
    if compute == stored {
        x.matmul(w)
    } else {
        cast_float(cast_float(x, stored).matmul(w), compute)
    }
}
