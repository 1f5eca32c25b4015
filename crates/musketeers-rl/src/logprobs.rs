//! Token log-probabilities and entropies, and which completion tokens count.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

/// Log-probability of each target token, and the entropy of each position's distribution,
/// under `softmax(logits / temperature)`: the distribution the tokens were sampled from.
/// Only the log-probabilities carry gradients.
///
/// # Shapes
/// - `logits`: `[n, T, vocab]`; `targets`: `[n, T]`; returns two `[n, T]`
pub fn token_logprobs<B: Backend>(
    logits: Tensor<B, 3>,
    targets: Tensor<B, 2, Int>,
    temperature: f64,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let [n, t, _] = logits.dims();
    let logp = log_softmax(logits / temperature, 2); // [n, T, V]
    let picked = logp
        .clone()
        .gather(2, targets.reshape([n, t, 1]))
        .reshape([n, t]);
    // The entropy is a metric, not part of the loss: computed off the autodiff graph, whose
    // backward would otherwise keep three more `[n, T, vocab]` tensors alive (gigabytes per
    // step with Qwen's 151,936-token vocabulary).
    let logp = logp.detach();
    let entropy = (logp.clone().exp() * logp).sum_dim(2).neg().reshape([n, t]);
    (picked, entropy)
}

/// Row-major `[n, width]` mask of the tokens that count: each completion up to and including
/// its first eos, 0 beyond (and on padding). With `mask_truncated`, a completion without eos
/// (cut at the length limit) is masked entirely. Also returns which completions were truncated.
pub fn completion_mask(
    completions: &[Vec<u32>],
    eos: &[u32],
    width: usize,
    mask_truncated: bool,
) -> (Vec<f32>, Vec<bool>) {
    let mut mask = vec![0.0; completions.len() * width];
    let mut truncated = Vec::with_capacity(completions.len());
    for (row, tokens) in completions.iter().enumerate() {
        let end = tokens.iter().position(|t| eos.contains(t));
        truncated.push(end.is_none());
        if end.is_none() && mask_truncated {
            continue;
        }
        let keep = end.map_or(tokens.len(), |e| e + 1).min(width);
        mask[row * width..row * width + keep].fill(1.0);
    }
    (mask, truncated)
}

#[cfg(test)]
mod tests {
    use super::completion_mask;

    #[test]
    fn mask_stops_after_the_first_eos() {
        let (mask, truncated) =
            completion_mask(&[vec![5, 2, 7], vec![5, 6, 7], vec![2]], &[2], 4, false);
        assert_eq!(mask, vec![1., 1., 0., 0., 1., 1., 1., 0., 1., 0., 0., 0.]);
        assert_eq!(truncated, vec![false, true, false]);
        let (mask, _) = completion_mask(&[vec![5, 6, 7]], &[2], 3, true);
        assert_eq!(mask, vec![0., 0., 0.]);
    }
}
