//! The policy's scores of freshly sampled completions equal the log-probabilities they were
//! sampled with (GRPO's importance ratio is 1 on the first iteration), with context tokens
//! in front and left-padded prompts of different lengths.

use burn::tensor::{Distribution, Int, Tensor, TensorData};
use burn_flex::Flex;
use musketeers::policy::PrefixedPolicy;
use musketeers_lm::generate::{GenerationConfig, generate_with_prefix};
use musketeers_lm::sampling::SamplingConfig;
use musketeers_lm::weights;
use musketeers_rl::{Rollouts, TokenScorer};
use std::path::PathBuf;

type B = Flex;

#[test]
fn scores_of_sampled_completions_equal_their_sampling_logprobs() {
    let device = Default::default();
    for name in ["llama-gqa", "gemma3-sliding"] {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../musketeers-lm/tests/fixtures")
            .join(name);
        let (config, model) = weights::load::<B>(&dir, &device).expect("fixture loads");
        let prompts: Vec<Vec<u32>> = vec![vec![3, 14, 15, 92, 65, 35], vec![9, 26]];
        let g = 3;
        for with_context in [true, false] {
            let context = with_context.then(|| {
                Tensor::<B, 3>::random(
                    [2, 4, config.hidden_size],
                    Distribution::Normal(0.0, 0.5),
                    &device,
                )
            });
            let temperature = 0.8;
            let generation = generate_with_prefix(
                &model,
                &prompts,
                context.clone(),
                &GenerationConfig {
                    max_new_tokens: 7,
                    num_return_sequences: g,
                    eos_token_ids: vec![5],
                    sampling: SamplingConfig {
                        temperature: temperature as f32,
                        top_k: None,
                        top_p: None,
                        seed: 11,
                    },
                },
                None,
                &device,
            )
            .expect("generate");
            let rows: Vec<i64> = (0..2).flat_map(|p| std::iter::repeat_n(p, g)).collect();
            let n = rows.len();
            let index = Tensor::<B, 1, Int>::from_data(TensorData::new(rows.clone(), [n]), &device);
            let rollouts = Rollouts {
                prompt_ids: rows.iter().map(|&p| prompts[p as usize].clone()).collect(),
                completion_ids: generation.tokens.clone(),
                num_generations: g,
                rewards: vec![0.0; n],
                old_logprobs: None,
                ref_logprobs: None,
            };
            let policy = PrefixedPolicy {
                model: &model,
                context: context.map(|c| c.select(0, index)),
                temperature,
            };
            let width = generation.tokens.iter().map(Vec::len).max().expect("rows");
            let (scores, _) = policy.score(&rollouts, width).expect("score");
            let scores = scores.into_data().to_vec::<f32>().expect("f32");
            for (row, sampled) in generation.logprobs.iter().enumerate() {
                for (j, want) in sampled.iter().enumerate() {
                    let got = scores[row * width + j];
                    assert!(
                        (got - want).abs() < 1e-4,
                        "{name} context={with_context} row {row} token {j}: scored {got}, sampled {want}"
                    );
                }
            }
        }
    }
}
