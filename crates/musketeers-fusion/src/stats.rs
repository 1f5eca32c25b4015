//! What the attention says about the team: each expert's share of it, how spread that share
//! is, and whether spread tracks reward over training.

use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

/// The share of attention mass each expert receives: its tokens' weights summed, averaged over
/// heads and latents. `attention` `[batch, heads, latents, tokens]`, `spans` as in
/// [`crate::FusionOutput::expert_spans`]; returns `[batch, experts]`, each row summing to 1.
pub fn expert_utilization<B: Backend>(
    attention: &Tensor<B, 4>,
    spans: &[(usize, usize)],
) -> Tensor<B, 2> {
    let [b, h, k, t] = attention.dims();
    let shares: Vec<Tensor<B, 2>> = spans
        .iter()
        .map(|&(start, len)| {
            attention
                .clone()
                .slice([0..b, 0..h, 0..k, start..start + len])
                .sum_dim(3) // [b, h, k, 1]
                .reshape([b, h * k])
                .mean_dim(1) // [b, 1]
        })
        .collect();
    debug_assert_eq!(spans.iter().map(|s| s.1).sum::<usize>(), t);
    Tensor::cat(shares, 1)
}

/// The batch's utilization: the mean over examples, `[experts]`.
pub fn batch_utilization<B: Backend>(utilization: &Tensor<B, 2>) -> Tensor<B, 1> {
    let n = utilization.dims()[1];
    utilization.clone().mean_dim(0).reshape([n])
}

/// Routing entropy `-Σ p ln p` (nats) of each row of `utilization` `[batch, experts]`, and the
/// same divided by `ln n` (1 = uniform over the team, 0 = one expert). Returns two `[batch]`.
pub fn routing_entropy<B: Backend>(utilization: &Tensor<B, 2>) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let [b, n] = utilization.dims();
    let p = utilization.clone();
    // 0 · ln 0 = 0: clamping inside the log leaves p = 0 contributing exactly 0.
    let entropy = (p.clone() * p.clamp_min(1e-30).log())
        .sum_dim(1)
        .neg()
        .reshape([b]);
    let normalised = if n > 1 {
        entropy.clone() / (n as f64).ln()
    } else {
        entropy.clone().zeros_like()
    };
    (entropy, normalised)
}

/// Spearman's rank correlation of paired samples (average ranks for ties); `None` with fewer
/// than two pairs, a length mismatch, a non-finite value, or a constant side.
pub fn spearman(xs: &[f64], ys: &[f64]) -> Option<f64> {
    if xs.len() != ys.len() || xs.len() < 2 || xs.iter().chain(ys).any(|v| !v.is_finite()) {
        return None;
    }
    let (rx, ry) = (ranks(xs), ranks(ys));
    let n = rx.len() as f64;
    let mean = (n + 1.0) / 2.0;
    let (mut cov, mut vx, mut vy) = (0.0, 0.0, 0.0);
    for (a, b) in rx.iter().zip(&ry) {
        cov += (a - mean) * (b - mean);
        vx += (a - mean) * (a - mean);
        vy += (b - mean) * (b - mean);
    }
    (vx > 0.0 && vy > 0.0).then(|| cov / (vx * vy).sqrt())
}

/// 1-based ranks, ties sharing the mean of the ranks they span.
fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && values[order[j + 1]] == values[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = rank;
        }
        i = j + 1;
    }
    ranks
}

#[cfg(test)]
mod tests {
    use super::spearman;

    #[test]
    fn spearman_matches_hand_computed_values() {
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]), Some(1.0));
        assert_eq!(spearman(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), Some(-1.0));
        // scipy.stats.spearmanr([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) = 0.8207826816681233
        let rho = spearman(&[1.0, 2.0, 3.0, 4.0, 5.0], &[5.0, 6.0, 7.0, 8.0, 7.0]).expect("rho");
        assert!((rho - 0.820_782_681_668_123_3).abs() < 1e-12, "{rho}");
        assert_eq!(spearman(&[1.0, 1.0], &[1.0, 2.0]), None);
        assert_eq!(spearman(&[1.0], &[1.0]), None);
        assert_eq!(spearman(&[1.0, f64::NAN], &[1.0, 2.0]), None);
    }
}
