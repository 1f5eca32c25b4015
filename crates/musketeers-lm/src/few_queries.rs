//! Attention of a few query rows (a decode step) over the KV cache, on the CPU backend.
//!
//! A decode step's attention is tiny (per batch row and key/value head: a few query rows
//! against the cached keys) but through Burn it is five operations, two of them batched
//! matmuls that `gemm` runs as one small product per batch row and head: 2 x 96 calls per
//! layer at batch 32 for SmolLM2, 12% of a batch-32 decode step's time in `perf`. Here it is
//! one pass per batch row: scores, mask, softmax and the weighted sum of values, reading the
//! cache where it lies (a strided view is fine).
//!
//! The arithmetic is [`crate::llama`]'s: `softmax(mask_fill(q k^T * scale, mask, fill)) v`, so a
//! forbidden key still scores `fill` (large, finite) and a row with every key forbidden is
//! uniform, as there. A forbidden key's weight is exactly 0, and adding it changes no sum, so
//! the same real keys give the same bits with or without forbidden ones among them (gated
//! context at a zero gate stays exactly the model without C). Sums run in a fixed order per row:
//! results do not depend on the thread count.
//!
//! Only the backend's own f32 tensors with a contiguous last axis take this path; anything else
//! returns `None` and the caller runs Burn's operations (autodiff included).

use crate::flex::{as_flex, float_tensor};
use burn::backend::flex::FlexTensor;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, Tensor, TensorData};
use rayon::prelude::*;

/// The most query rows per batch row and key/value head this path takes (a decode step has
/// the `num_heads / num_kv_heads` heads of a group, 7 for Qwen2.5-0.5B).
pub const MAX_QUERY_ROWS: usize = 8;

/// Where a 4-D tensor's elements lie in its storage: offset and strides of the first three
/// axes (the last is contiguous).
struct View<'a, E> {
    values: &'a [E],
    offset: usize,
    strides: [usize; 3],
}

impl<'a, E> View<'a, E> {
    fn of(t: &'a FlexTensor, values: &'a [E]) -> Option<Self> {
        let layout = t.layout();
        let s = layout.strides();
        if s.len() != 4 || s[3] != 1 || s[..3].iter().any(|&x| x < 0) {
            return None;
        }
        Some(Self {
            values,
            offset: layout.start_offset(),
            strides: [s[0] as usize, s[1] as usize, s[2] as usize],
        })
    }

    /// The `len` elements of row `[a, b, c]`.
    fn row(&self, a: usize, b: usize, c: usize, len: usize) -> &'a [E] {
        let at = self.offset + a * self.strides[0] + b * self.strides[1] + c * self.strides[2];
        &self.values[at..at + len]
    }
}

/// `softmax(mask_fill(q k^T * scale, mask, fill)) v` for `q` `[b, g, r, d]`, `k` and `v`
/// `[b, g, t, d]` and `mask` `[b, g, r, t]` (true: forbidden), all the CPU backend's, f32,
/// with `r <= MAX_QUERY_ROWS`; `[b, g, r, d]`. `None` for anything else.
pub fn attend<B: Backend>(
    q: &Tensor<B, 4>,
    k: &Tensor<B, 4>,
    v: &Tensor<B, 4>,
    mask: &Tensor<B, 4, Bool>,
    scale: f64,
    fill: f32,
) -> Option<Tensor<B, 4>> {
    let [b, g, r, d] = q.dims();
    let t = k.dims()[2];
    if r > MAX_QUERY_ROWS
        || k.dims() != [b, g, t, d]
        || v.dims() != [b, g, t, d]
        || mask.dims() != [b, g, r, t]
        || [q.dtype(), k.dtype(), v.dtype()] != [DType::F32; 3]
        || b * g * r * t * d == 0
    {
        return None;
    }
    let (qp, kp, vp) = (
        q.clone().into_primitive().tensor(),
        k.clone().into_primitive().tensor(),
        v.clone().into_primitive().tensor(),
    );
    let mp = mask.clone().into_primitive();
    let (qf, kf, vf, mf) = (as_flex(&qp)?, as_flex(&kp)?, as_flex(&vp)?, as_flex(&mp)?);
    if !matches!(mf.dtype(), DType::Bool(_)) {
        return None;
    }
    let (qs, ks, vs) = (
        View::of(qf, qf.storage::<f32>())?,
        View::of(kf, kf.storage::<f32>())?,
        View::of(vf, vf.storage::<f32>())?,
    );
    let ms = View::of(mf, mf.storage::<u8>())?;
    let scale = scale as f32;
    let mut out = vec![0f32; b * g * r * d];
    out.par_chunks_mut(g * r * d)
        .enumerate()
        .for_each(|(row, out)| {
            let mut weights = vec![0f32; t];
            for group in 0..g {
                for query in 0..r {
                    let q = qs.row(row, group, query, d);
                    let forbidden = ms.row(row, group, query, t);
                    for (key, (w, &no)) in weights.iter_mut().zip(forbidden).enumerate() {
                        *w = if no != 0 {
                            fill
                        } else {
                            dot(q, ks.row(row, group, key, d)) * scale
                        };
                    }
                    softmax_in_place(&mut weights);
                    let target = &mut out[(group * r + query) * d..(group * r + query + 1) * d];
                    for (key, &w) in weights.iter().enumerate() {
                        for (o, &x) in target.iter_mut().zip(vs.row(row, group, key, d)) {
                            *o += w * x;
                        }
                    }
                }
            }
        });
    let result = FlexTensor::from_data(TensorData::new(out, [b, g, r, d]));
    float_tensor(result)
}

/// `a . b` in eight running sums (vectorised; the order is fixed).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a_blocks, b_blocks) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a_blocks
        .remainder()
        .iter()
        .zip(b_blocks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a_blocks.zip(b_blocks) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `exp(x - max) / sum`, as Burn's softmax.
fn softmax_in_place(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut total = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        total += *v;
    }
    for v in x.iter_mut() {
        *v /= total;
    }
}
