//! Multi-head attention of a few queries over many keys, returning its weights.

use crate::init::InitRng;
use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor};

/// `H` heads of scaled dot-product attention with query/key/value/output projections.
#[derive(Module, Debug)]
pub struct MultiHeadAttention<B: Backend> {
    pub query: Linear<B>,
    pub key: Linear<B>,
    pub value: Linear<B>,
    pub output: Linear<B>,
    pub num_heads: usize,
}

/// Large and finite, so a query whose every key is masked still gives finite (uniform) weights.
const MASKED: f32 = -1e30;

impl<B: Backend> MultiHeadAttention<B> {
    /// Fresh projections drawn from `rng`, in field order (query, key, value, output).
    pub fn new(width: usize, num_heads: usize, rng: &mut InitRng, device: &B::Device) -> Self {
        Self {
            query: rng.linear(width, width, device),
            key: rng.linear(width, width, device),
            value: rng.linear(width, width, device),
            output: rng.linear(width, width, device),
            num_heads,
        }
    }

    /// # Shapes
    /// - `queries`: `[batch, q, width]`; `keys`: `[batch, k, width]`
    /// - `mask`: `[batch, k]`, true where a key must be ignored (padding)
    /// - returns the output `[batch, q, width]` and the weights `[batch, heads, q, k]`
    pub fn forward(
        &self,
        queries: Tensor<B, 3>,
        keys: Tensor<B, 3>,
        mask: Option<Tensor<B, 2, Bool>>,
    ) -> (Tensor<B, 3>, Tensor<B, 4>) {
        let [b, q, width] = queries.dims();
        let k = keys.dims()[1];
        let h = self.num_heads;
        let d = width / h;
        let heads = |x: Tensor<B, 3>, n: usize| x.reshape([b, n, h, d]).swap_dims(1, 2);
        let query = heads(self.query.forward(queries), q); // [b, h, q, d]
        let key = heads(self.key.forward(keys.clone()), k); // [b, h, k, d]
        let value = heads(self.value.forward(keys), k); // [b, h, k, d]
        let mut scores = query.matmul(key.swap_dims(2, 3)) / (d as f64).sqrt(); // [b, h, q, k]
        if let Some(mask) = mask {
            scores = scores.mask_fill(mask.reshape([b, 1, 1, k]).expand([b, h, q, k]), MASKED);
        }
        let weights = softmax(scores, 3);
        let out = weights
            .clone()
            .matmul(value)
            .swap_dims(1, 2)
            .reshape([b, q, width]);
        (self.output.forward(out), weights)
    }
}
