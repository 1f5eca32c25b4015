//! The output layer read as the log-probabilities of given tokens, without `[tokens, vocab]`
//! logits in the autodiff graph.
//!
//! Scoring completions for a policy-gradient loss needs `log softmax(h W^T / t)[y]` for each
//! position's hidden state `h` and token `y`. Through the ordinary graph, backward keeps the
//! `[tokens, vocab]` logits' softmax alive until the loss is differentiated: with Qwen2.5's
//! 151,936-token vocabulary that is 2.5 GB for 32 completions of 128 tokens, most of a real
//! step's working memory. When the head is frozen (no adapter, no gradient: the policy's base
//! under LoRA) the only gradient needed is the one to `h`, and it has a closed form,
//!
//! `d logp / d h = (W[y] - softmax(h W^T / t) W) / t`,
//!
//! so [`FrozenHead::token_logprobs`] computes log-probabilities, entropies and that slope a
//! chunk of rows at a time off the graph, and hands back `logp + (h . slope - stop(h . slope))`:
//! the same values (the bracket is exactly zero) with the same gradient to `h`, while the graph
//! holds only `h` and the `[tokens, hidden]` slope. The work is the same as the graph's (one
//! product with the head forward, one back); only the memory changes.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use crate::lora::matmul_stored;
use crate::precision::to_f32;

/// How many logits one chunk of rows holds at a time (2^22 f32, 16 MiB; a chunk's temporaries
/// are about four times that): 27 rows of Qwen2.5's vocabulary, enough rows for an efficient
/// product, and small beside the activations that are live when the head runs (a 64 MiB chunk
/// put 0.2 GB more on a real step's peak: 8.04 GB against 7.83).
const CHUNK_LOGITS: usize = 1 << 22;

/// A frozen output layer, `logits = h W^T + b` (see the module's documentation).
#[derive(Debug, Clone)]
pub struct FrozenHead<B: Backend> {
    /// `[hidden, vocab]`, as the product reads it (Burn's `Linear` layout; a tied head's
    /// embedding table transposed as a view), in its stored dtype: compact weights stay compact.
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
}

impl<B: Backend> FrozenHead<B> {
    /// The head `h weight + b` with `weight` `[hidden, vocab]`.
    pub fn new(weight: Tensor<B, 2>, bias: Option<Tensor<B, 1>>) -> Self {
        Self { weight, bias }
    }

    /// f32 logits of `hidden` `[rows, hidden]`, `[rows, vocab]`.
    fn logits(&self, hidden: Tensor<B, 2>) -> Tensor<B, 2> {
        let logits = to_f32(matmul_stored(hidden, self.weight.clone()));
        match &self.bias {
            Some(bias) => logits + to_f32(bias.clone()).unsqueeze(),
            None => logits,
        }
    }

    /// The log-probability of each target token and the entropy of each position's
    /// distribution under `softmax(logits / temperature)`, both `[n, T]` f32, as
    /// `musketeers_rl::logprobs::token_logprobs` computes them from the logits. With
    /// `with_gradient` the log-probabilities carry `hidden`'s gradient; without (a reference
    /// or evaluation pass) the slope is not computed at all. Entropies never carry one.
    ///
    /// # Shapes
    /// - `hidden`: `[n, T, hidden]`; `targets`: `[n, T]`
    pub fn token_logprobs(
        &self,
        hidden: Tensor<B, 3>,
        targets: Tensor<B, 2, Int>,
        temperature: f64,
        with_gradient: bool,
    ) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let [n, t, d] = hidden.dims();
        let rows = n * t;
        let vocab = self.weight.dims()[1].max(1);
        if rows == 0 {
            let device = hidden.device();
            return (
                Tensor::zeros([n, t], &device),
                Tensor::zeros([n, t], &device),
            );
        }
        let hidden = hidden.reshape([rows, d]);
        let targets = targets.reshape([rows]);
        let detached = hidden.clone().detach();
        let chunk = (CHUNK_LOGITS / vocab).clamp(1, rows);
        let (mut logps, mut entropies, mut slopes) = (Vec::new(), Vec::new(), Vec::new());
        for start in (0..rows).step_by(chunk) {
            let end = (start + chunk).min(rows);
            let ids = targets.clone().slice(start..end);
            let logits = self.logits(detached.clone().slice([start..end, 0..d])) / temperature;
            let max = logits.clone().max_dim(1);
            let log_total = (logits.clone() - max.clone()).exp().sum_dim(1).log() + max;
            let picked = logits
                .clone()
                .gather(1, ids.clone().reshape([end - start, 1]))
                - log_total.clone();
            let probs = (logits.clone() - log_total.clone()).exp();
            // -sum p log p = log_total - sum p * logits.
            entropies.push(log_total - (probs.clone() * logits).sum_dim(1));
            logps.push(picked);
            if with_gradient {
                let target_rows = to_f32(self.weight.clone().select(1, ids).transpose());
                let expected = to_f32(matmul_stored(probs, self.weight.clone().transpose()));
                slopes.push((target_rows - expected) / temperature);
            }
        }
        let logp = Tensor::cat(logps, 0).reshape([n, t]);
        let entropy = Tensor::cat(entropies, 0).reshape([n, t]);
        if !with_gradient {
            return (logp, entropy);
        }
        let slope = Tensor::cat(slopes, 0).cast(hidden.dtype());
        let linear = to_f32((hidden * slope).sum_dim(1)).reshape([n, t]);
        // `linear - stop(linear)` is exactly 0: the values are the chunks' log-probabilities
        // to the bit, the gradient to `hidden` is the slope's.
        (logp + (linear.clone() - linear.detach()), entropy)
    }
}
