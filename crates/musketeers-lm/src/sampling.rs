//! Choosing the next token: greedy, or temperature with top-k / top-p, seeded per sequence.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How to pick tokens. `temperature == 0` is greedy.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    pub temperature: f32,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
        }
    }
}

/// A seeded sampler for one sequence; its stream depends only on (seed, sequence id).
#[derive(Debug, Clone)]
pub struct Sampler {
    config: SamplingConfig,
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn new(config: &SamplingConfig, sequence: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        rng.set_stream(sequence);
        Self {
            config: config.clone(),
            rng,
        }
    }

    /// The next token and its log-probability under `softmax(logits / temperature)` (before
    /// top-k / top-p filtering, as TRL records sampling log-probs).
    pub fn sample(&mut self, logits: &[f32]) -> (u32, f32) {
        let t = if self.config.temperature > 0.0 {
            self.config.temperature
        } else {
            1.0
        };
        let scaled: Vec<f32> = logits.iter().map(|l| l / t).collect();
        let log_z = log_sum_exp(&scaled);
        let token = if self.config.temperature <= 0.0 {
            argmax(&scaled)
        } else {
            self.draw(&scaled, log_z)
        };
        (token as u32, scaled[token] - log_z)
    }

    fn draw(&mut self, scaled: &[f32], log_z: f32) -> usize {
        let filtered =
            self.config.top_k.is_some_and(|k| k > 0) || self.config.top_p.is_some_and(|p| p < 1.0);
        if !filtered {
            // Plain temperature sampling needs no sort over the vocabulary: invert the CDF.
            let mut u = self.rng.random::<f32>();
            for (i, l) in scaled.iter().enumerate() {
                let q = exp(l - log_z);
                if u < q {
                    return i;
                }
                u -= q;
            }
            return argmax(scaled);
        }
        let mut order: Vec<usize> = (0..scaled.len()).collect();
        order.sort_unstable_by(|&a, &b| scaled[b].total_cmp(&scaled[a]).then(a.cmp(&b)));
        if let Some(k) = self.config.top_k.filter(|k| *k > 0) {
            order.truncate(k);
        }
        let mut probs: Vec<f32> = order.iter().map(|&i| exp(scaled[i] - log_z)).collect();
        if let Some(p) = self.config.top_p.filter(|p| *p < 1.0) {
            let mut cumulative = 0.0;
            let keep = probs.iter().position(|q| {
                cumulative += q;
                cumulative >= p
            });
            let keep = keep.map_or(probs.len(), |i| i + 1);
            probs.truncate(keep);
            order.truncate(keep);
        }
        let total: f32 = probs.iter().sum();
        let mut u = self.rng.random::<f32>() * total;
        for (i, q) in order.iter().zip(&probs) {
            if u < *q {
                return *i;
            }
            u -= q;
        }
        *order.last().expect("at least one candidate token")
    }
}

fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .fold(0, |best, (i, v)| if *v > values[best] { i } else { best })
}

fn log_sum_exp(values: &[f32]) -> f32 {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max + values.iter().map(|v| exp(v - max)).sum::<f32>().ln()
}

/// `x.exp()`, bit for bit, without libm's underflow path: below -104 `expf` rounds to zero
/// anyway, but gets there through a slow branch that sets `errno` (1-2% of a batch-32
/// decode with a 49k vocabulary was spent there).
#[inline]
fn exp(x: f32) -> f32 {
    if x < -104.0 { 0.0 } else { x.exp() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_libms_bit_for_bit_around_the_underflow() {
        let mut x = -110.0f32;
        while x < -80.0 {
            assert_eq!(exp(x).to_bits(), x.exp().to_bits(), "{x}");
            x = f32::from_bits(x.to_bits() - 1_000);
        }
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn greedy_picks_argmax_with_its_logprob() {
        let mut s = Sampler::new(&SamplingConfig::default(), 0);
        let (token, logprob) = s.sample(&[0.0, 2.0, 1.0]);
        assert_eq!(token, 1);
        let expected = 2.0 - (1f32 + 2f32.exp() + 1f32.exp()).ln();
        assert!((logprob - expected).abs() < 1e-6);
    }

    #[test]
    fn top_k_one_is_greedy_and_seeds_repeat() {
        let config = SamplingConfig {
            temperature: 1.0,
            top_k: Some(1),
            top_p: None,
            seed: 3,
        };
        let mut s = Sampler::new(&config, 0);
        assert_eq!(s.sample(&[0.1, 0.3, 5.0, 0.2]).0, 2);
        let config = SamplingConfig {
            temperature: 1.0,
            top_k: None,
            top_p: Some(0.9),
            seed: 3,
        };
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let draws = |seq| {
            let mut s = Sampler::new(&config, seq);
            (0..20).map(|_| s.sample(&logits).0).collect::<Vec<_>>()
        };
        assert_eq!(draws(4), draws(4));
        assert_ne!(draws(4), draws(5));
    }
}
