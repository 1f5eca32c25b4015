//! Tensors read back to the host, for logs, metrics and decisions taken on the CPU.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// Every value of `t` as f32 (empty if the backend cannot convert it).
pub(crate) fn host_f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap_or_default()
}
