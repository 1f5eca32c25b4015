//! Rotary position embeddings in the Hugging Face layout.
//!
//! Burn's `RotaryEncoding` rotates interleaved pairs and takes one offset per batch; Llama and
//! Qwen checkpoints rotate halves (`rotate_half`) and left-padded batches need a position per
//! row, so this is our own.

use crate::config::RopeScaling;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};

/// Inverse frequencies, `[head_dim / 2]`, with Llama 3 scaling when configured.
pub fn inverse_frequencies(head_dim: usize, theta: f64, scaling: Option<&RopeScaling>) -> Vec<f32> {
    (0..head_dim / 2)
        .map(|i| {
            // Hugging Face computes the exponent in f32; so do we, to agree to the last bit.
            let exponent = (2 * i) as f32 / head_dim as f32;
            let base = 1.0 / (theta as f32).powf(exponent);
            match scaling {
                Some(s) => llama3_scale(base, s),
                None => base,
            }
        })
        .collect()
}

fn llama3_scale(inv_freq: f32, s: &RopeScaling) -> f32 {
    let old_context = s.original_max_position_embeddings as f32;
    let low_freq_wavelen = old_context / s.low_freq_factor as f32;
    let high_freq_wavelen = old_context / s.high_freq_factor as f32;
    let wavelen = 2.0 * std::f32::consts::PI / inv_freq;
    let factor = s.factor as f32;
    if wavelen > low_freq_wavelen {
        inv_freq / factor
    } else if wavelen < high_freq_wavelen {
        inv_freq
    } else {
        let smooth = (old_context / wavelen - s.low_freq_factor as f32)
            / (s.high_freq_factor - s.low_freq_factor) as f32;
        (1.0 - smooth) * inv_freq / factor + smooth * inv_freq
    }
}

/// Cosine and sine tables for the given positions.
///
/// # Shapes
/// - `positions`: `[batch, seq]`
/// - returns `(cos, sin)`, each `[batch, 1, seq, head_dim]` (broadcast over heads)
#[derive(Debug, Clone)]
pub struct Rope<B: Backend> {
    inv_freq: Tensor<B, 1>,
    /// Gemma 3's local (sliding-window) layers use their own base.
    local_inv_freq: Option<Tensor<B, 1>>,
    /// The dtype of the tables handed out; angles are always computed in f32 (a bf16
    /// position times frequency would lose the position past 256).
    dtype: DType,
}

impl<B: Backend> Rope<B> {
    pub fn new(
        head_dim: usize,
        theta: f64,
        scaling: Option<&RopeScaling>,
        local_theta: Option<f64>,
        device: &B::Device,
    ) -> Self {
        let table = |inv: Vec<f32>| {
            let n = inv.len();
            Tensor::from_data(TensorData::new(inv, [n]), device)
        };
        Self {
            inv_freq: table(inverse_frequencies(head_dim, theta, scaling)),
            local_inv_freq: local_theta
                .map(|theta| table(inverse_frequencies(head_dim, theta, None))),
            dtype: DType::F32,
        }
    }

    /// Tables in `dtype`: the dtype of the model they rotate.
    pub fn in_dtype(self, dtype: DType) -> Self {
        Self { dtype, ..self }
    }

    pub fn has_local(&self) -> bool {
        self.local_inv_freq.is_some()
    }

    pub fn tables(&self, positions: Tensor<B, 2, Int>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let (cos, sin) = tables(&self.inv_freq, positions);
        (cos.cast(self.dtype), sin.cast(self.dtype))
    }

    /// The local layers' tables (the global ones when there is no local base).
    pub fn local_tables(&self, positions: Tensor<B, 2, Int>) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let (cos, sin) = tables(
            self.local_inv_freq.as_ref().unwrap_or(&self.inv_freq),
            positions,
        );
        (cos.cast(self.dtype), sin.cast(self.dtype))
    }
}

fn tables<B: Backend>(
    inv_freq: &Tensor<B, 1>,
    positions: Tensor<B, 2, Int>,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    {
        let [b, t] = positions.dims();
        let half = inv_freq.dims()[0];
        let pos = positions.float().reshape([b, t, 1]); // [b, t, 1]
        let freqs = pos * inv_freq.clone().reshape([1, 1, half]); // [b, t, half]
        let emb = Tensor::cat(vec![freqs.clone(), freqs], 2); // [b, t, head_dim]
        let emb = emb.unsqueeze_dim::<4>(1); // [b, 1, t, head_dim]
        (emb.clone().cos(), emb.sin())
    }
}

/// `x * cos + rotate_half(x) * sin`.
///
/// # Shapes
/// - `x`: `[batch, heads, seq, head_dim]`; `cos`, `sin`: `[batch, 1, seq, head_dim]`
pub fn apply<B: Backend>(x: Tensor<B, 4>, cos: &Tensor<B, 4>, sin: &Tensor<B, 4>) -> Tensor<B, 4> {
    if let Some(rotated) = crate::fused::rotate(&x, cos, sin) {
        return rotated;
    }
    let [b, h, t, d] = x.dims();
    let x1 = x.clone().slice([0..b, 0..h, 0..t, 0..d / 2]);
    let x2 = x.clone().slice([0..b, 0..h, 0..t, d / 2..d]);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone() + rotated * sin.clone()
}
