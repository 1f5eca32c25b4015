//! One-pass versions of two element-wise chains of every layer, on the CPU backend.
//!
//! Through Burn, SwiGLU's `gate / (exp(-gate) + 1) * up` is five operations and the rotary
//! `x * cos + rotate_half(x) * sin` seven (two slices, a negation, a concatenation, two
//! products and a sum), each a pass over memory into a freshly allocated tensor; at a
//! batch-32 prefill the activations are megabytes, so each pass streams them from memory.
//! Here each chain is one pass. The arithmetic is the same operations in the same order on
//! each element (no fused multiply-add, the same `exp`), so results are bit-identical to the
//! chains they replace: the tests compare bits.
//!
//! Only the backend's own f32 tensors take this path (an autodiff tensor's primitive is not
//! Flex's and declines); anything else returns `None` and the caller runs Burn's operations.

use crate::flex::{as_flex, float_tensor};
use burn::backend::flex::FlexTensor;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use rayon::prelude::*;

/// Elements per parallel task: below this a pass is not worth a second thread.
const CHUNK: usize = 1 << 15;

/// `gate / (exp(-gate) + 1) * up` (SwiGLU with SiLU written as in [`crate::llama`]) for two
/// contiguous f32 tensors of the same shape.
pub fn silu_times<B: Backend, const D: usize>(
    gate: &Tensor<B, D>,
    up: &Tensor<B, D>,
) -> Option<Tensor<B, D>> {
    let shape = gate.dims();
    if up.dims() != shape || [gate.dtype(), up.dtype()] != [DType::F32; 2] {
        return None;
    }
    let (gp, upp) = (
        gate.clone().into_primitive().tensor(),
        up.clone().into_primitive().tensor(),
    );
    let (gate, up) = (contiguous(as_flex(&gp)?)?, contiguous(as_flex(&upp)?)?);
    let mut out = vec![0f32; gate.len()];
    out.par_chunks_mut(CHUNK)
        .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
        .for_each(|(out, (gate, up))| {
            for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                *o = g / ((-g).exp() + 1.0) * u;
            }
        });
    float_tensor(FlexTensor::from_data(TensorData::new(out, shape)))
}

/// `x * cos + rotate_half(x) * sin` with `rotate_half(x) = [-x2, x1]` (the halves of the
/// last axis), for `x` `[b, h, t, d]` with a contiguous last axis (any other strides: the
/// heads of a projection's output, swapped to the front, are read where they lie) and
/// contiguous tables `[b, 1, t, d]` (every head the same) or `[b, h, t, d]` (the layers'
/// tables, repeated per head for Burn's chain). The result is contiguous.
pub fn rotate<B: Backend>(
    x: &Tensor<B, 4>,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
) -> Option<Tensor<B, 4>> {
    let [b, h, t, d] = x.dims();
    let table_heads = cos.dims()[1];
    if d % 2 != 0
        || !(table_heads == 1 || table_heads == h)
        || cos.dims() != [b, table_heads, t, d]
        || sin.dims() != cos.dims()
        || [x.dtype(), cos.dtype(), sin.dtype()] != [DType::F32; 3]
        || b * h * t * d == 0
    {
        return None;
    }
    let (xp, cp, sp) = (
        x.clone().into_primitive().tensor(),
        cos.clone().into_primitive().tensor(),
        sin.clone().into_primitive().tensor(),
    );
    let xf = as_flex(&xp)?;
    let (cos, sin) = (contiguous(as_flex(&cp)?)?, contiguous(as_flex(&sp)?)?);
    let layout = xf.layout();
    let strides = layout.strides();
    if strides.len() != 4 || strides[3] != 1 || strides[..3].iter().any(|&s| s < 0) {
        return None;
    }
    let (offset, strides) = (
        layout.start_offset(),
        [
            strides[0] as usize,
            strides[1] as usize,
            strides[2] as usize,
        ],
    );
    let values = xf.storage::<f32>();
    let half = d / 2;
    let mut out = vec![0f32; b * h * t * d];
    // One task per (batch row, head): `t * d` elements each.
    out.par_chunks_mut(t * d).enumerate().for_each(|(bh, out)| {
        let (row, head) = (bh / h, bh % h);
        let table_head = if table_heads == 1 { 0 } else { head };
        for (position, out) in out.chunks_exact_mut(d).enumerate() {
            let at = offset + row * strides[0] + head * strides[1] + position * strides[2];
            let x = &values[at..at + d];
            let table = ((row * table_heads + table_head) * t + position) * d;
            let (cos, sin) = (&cos[table..table + d], &sin[table..table + d]);
            let (x1, x2) = x.split_at(half);
            let (out1, out2) = out.split_at_mut(half);
            for i in 0..half {
                out1[i] = x1[i] * cos[i] + -x2[i] * sin[i];
                out2[i] = x2[i] * cos[half + i] + x1[i] * sin[half + i];
            }
        }
    });
    float_tensor(FlexTensor::from_data(TensorData::new(out, [b, h, t, d])))
}

/// A tensor's f32 elements in logical order, when they lie contiguously from its offset.
fn contiguous(t: &FlexTensor) -> Option<&[f32]> {
    let layout = t.layout();
    let len: usize = layout.shape().iter().product();
    let start = layout.start_offset();
    let mut expected = 1isize;
    for (&dim, &stride) in layout.shape().iter().zip(layout.strides()).rev() {
        if dim != 1 && stride != expected {
            return None;
        }
        expected *= dim as isize;
    }
    t.storage::<f32>().get(start..start + len)
}
