//! Float precision of forward passes that train nothing (frozen experts, rollout sampling, the
//! reference model). On a GPU, bf16 or f16 halves their memory and bandwidth; what is trained
//! (LoRA adapters, the interface) and the optimizer state stay f32.
//!
//! A model cast with [`cast_floats`] computes in its parameters' dtype: the rotary tables are
//! computed in f32 and cast once per forward, and every tensor the model hands back
//! (logits, hidden states) is in that dtype, so callers cast at the seam where f32 matters.

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, FloatDType, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The float type of a frozen forward pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Full precision: the CPU default, bit-identical to a model that was never cast.
    #[default]
    F32,
    /// bfloat16: f32's range with 8 bits of mantissa (what GPU inference engines use).
    Bf16,
    /// IEEE half: more mantissa, less range; activations of some models overflow it.
    F16,
}

impl Precision {
    pub fn dtype(self) -> FloatDType {
        match self {
            Precision::F32 => FloatDType::F32,
            Precision::Bf16 => FloatDType::BF16,
            Precision::F16 => FloatDType::F16,
        }
    }

    pub const NAMES: [&'static str; 3] = ["f32", "bf16", "f16"];

    /// Bytes of one element stored in this precision.
    pub fn element_bytes(self) -> u64 {
        match self {
            Precision::F32 => 4,
            Precision::Bf16 | Precision::F16 => 2,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        })
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "f16" => Ok(Precision::F16),
            other => Err(format!(
                "unknown precision {other:?}: expected one of {}",
                Precision::NAMES.join(", ")
            )),
        }
    }
}

/// Every float parameter of `module` in `precision`; a no-op (no copy) where a parameter
/// already has that dtype, so casting an f32 model to f32 changes nothing.
pub fn cast_floats<B: Backend, M: Module<B>>(module: M, precision: Precision) -> M {
    module.map(&mut CastFloats {
        to: precision.dtype(),
        keep: None,
    })
}

/// As [`cast_floats`], but parameters stored in `keep` stay as they are: compact frozen
/// weights (see [`crate::Llama::with_precision`]) are never expanded.
pub(crate) fn cast_floats_keeping<B: Backend, M: Module<B>>(
    module: M,
    precision: Precision,
    keep: DType,
) -> M {
    module.map(&mut CastFloats {
        to: precision.dtype(),
        keep: Some(keep),
    })
}

struct CastFloats {
    to: FloatDType,
    keep: Option<DType>,
}

impl<B: Backend> ModuleMapper<B> for CastFloats {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (to, keep) = (self.to, self.keep);
        param.map(|tensor| {
            if Some(tensor.dtype()) == keep {
                tensor
            } else {
                tensor.cast(to)
            }
        })
    }
}

/// `values` (row-major, `shape`) as a tensor stored in `storage`. Converted here, on the host,
/// with `half`'s vectorised conversion: a backend cast of a whole weight matrix is both slow on
/// the CPU backend (Flex casts element by element through f64) and a transient f32 copy of it.
pub fn tensor_stored_as<B: Backend, const D: usize>(
    values: Vec<f32>,
    shape: [usize; D],
    storage: Precision,
    device: &B::Device,
) -> Tensor<B, D> {
    let dtype: DType = storage.dtype().into();
    let data = TensorData::new(values, shape);
    let data = host_cast(&data, dtype).unwrap_or(data);
    Tensor::from_data(data, (device, dtype))
}

/// `tensor` in f32 (a no-op for an f32 tensor): where a reduced-precision model's output
/// meets f32 code (the interface, sampling, the loss).
pub fn to_f32<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Tensor<B, D> {
    tensor.cast(FloatDType::F32)
}

/// `tensor` in `dtype`, as [`Tensor::cast`], but converted on the host with `half`'s vectorised
/// routines where that is both possible and faster: on the CPU backend outside an autodiff
/// graph. Flex 0.21 casts element by element through an f64 buffer (about 8 ns an element on
/// an AVX2 EPYC), which made a compact weight's product 1.5x slower than f32's at prefill, the
/// whole cost being the casts of its input and output. Elsewhere (GPU backends, autodiff
/// graphs, which a host round trip would cut) Burn's own cast.
pub fn cast_float<B: Backend, const D: usize>(tensor: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    let device = tensor.device();
    if tensor.dtype() == dtype || B::ad_enabled(&device) || B::name(&device) != "flex" {
        return tensor.cast(dtype);
    }
    let data = tensor.into_data();
    match host_cast(&data, dtype) {
        Some(converted) => Tensor::from_data(converted, (&device, dtype)),
        None => Tensor::<B, D>::from_data(data, &device).cast(dtype),
    }
}

/// Between f32 and f16/bf16 on the host; `None` for any other pair.
fn host_cast(data: &TensorData, to: DType) -> Option<TensorData> {
    use half::slice::HalfFloatSliceExt;
    let shape = data.shape.clone();
    Some(match (data.dtype, to) {
        (DType::F32, DType::F16) => {
            let src = data.as_slice::<f32>().ok()?;
            let mut out = vec![half::f16::ZERO; src.len()];
            out.convert_from_f32_slice(src);
            TensorData::new(out, shape)
        }
        (DType::F32, DType::BF16) => {
            let src = data.as_slice::<f32>().ok()?;
            let mut out = vec![half::bf16::ZERO; src.len()];
            out.convert_from_f32_slice(src);
            TensorData::new(out, shape)
        }
        (DType::F16, DType::F32) => {
            let src = data.as_slice::<half::f16>().ok()?;
            let mut out = vec![0f32; src.len()];
            src.convert_to_f32_slice(&mut out);
            TensorData::new(out, shape)
        }
        (DType::BF16, DType::F32) => {
            let src = data.as_slice::<half::bf16>().ok()?;
            let mut out = vec![0f32; src.len()];
            src.convert_to_f32_slice(&mut out);
            TensorData::new(out, shape)
        }
        _ => return None,
    })
}
