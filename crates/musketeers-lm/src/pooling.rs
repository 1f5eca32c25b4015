//! One vector per sequence from per-token hidden states, padding-aware (left or right).

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

/// How a sequence's hidden states become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// The last real token: in a causal model the only one that has read the whole prompt.
    Last,
    /// The first real token.
    First,
    /// The mean over real tokens.
    Mean,
}

/// Pool `hidden` `[batch, seq, dim]` over the real tokens of `mask` `[batch, seq]` (1 real,
/// 0 padding) into `[batch, dim]`. A row without real tokens gives zeros.
pub fn pool<B: Backend>(
    hidden: Tensor<B, 3>,
    mask: Tensor<B, 2, Int>,
    how: Pooling,
) -> Tensor<B, 2> {
    let [b, t, d] = hidden.dims();
    let device = hidden.device();
    match how {
        Pooling::Mean => {
            let weights = mask.float().unsqueeze_dim::<3>(2); // [b, t, 1]
            let count = weights.clone().sum_dim(1).clamp_min(1.0); // [b, 1, 1]
            (hidden * weights).sum_dim(1).div(count).reshape([b, d])
        }
        Pooling::Last | Pooling::First => {
            let positions = Tensor::<B, 1, Int>::arange(0..t as i64, &device)
                .reshape([1, t])
                .expand([b, t]);
            let real = mask.clone().greater_elem(0);
            let index = if how == Pooling::Last {
                // Padding scores -1, so the largest is the last real position.
                positions
                    .mask_fill(real.bool_not(), -1)
                    .max_dim(1)
                    .clamp_min(0)
            } else {
                positions
                    .mask_fill(real.bool_not(), t as i64)
                    .min_dim(1)
                    .clamp_max(t as i64 - 1)
            }; // [b, 1]
            let any_real = mask.sum_dim(1).greater_elem(0).float(); // [b, 1]
            let index = index.reshape([b, 1, 1]).expand([b, 1, d]);
            hidden.gather(1, index).reshape([b, d]) * any_real
        }
    }
}
