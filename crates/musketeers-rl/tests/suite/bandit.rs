//! GRPO end to end on a one-token task: a policy over 10 tokens, reward 1 for token 3 only.
//! From p(3) = 0.1, a fixed 40 steps of GRPO (4 prompts × 8 samples, Adam) must bring the
//! reward near 1.

use burn::backend::Autodiff;
use burn::module::{Module, Param};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use burn_flex::Flex;
use musketeers_rl::rollout::StepConfig;
use musketeers_rl::{RlError, Rollouts, TokenScorer, grpo_step};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type Ad = Autodiff<Flex>;
const VOCAB: usize = 10;
const RIGHT: u32 = 3;

#[derive(Module, Debug)]
struct Bandit<B: Backend> {
    logits: Param<Tensor<B, 1>>,
}

impl<B: Backend> TokenScorer<B> for Bandit<B> {
    fn score(
        &self,
        rollouts: &Rollouts,
        width: usize,
    ) -> Result<(Tensor<B, 2>, Tensor<B, 2>), RlError> {
        assert_eq!(width, 1, "one-token completions");
        let n = rollouts.completion_ids.len();
        let device = self.logits.device();
        let logp = log_softmax(self.logits.val(), 0); // [V]
        let ids: Vec<i64> = rollouts
            .completion_ids
            .iter()
            .map(|c| i64::from(c[0]))
            .collect();
        let picked = logp
            .clone()
            .select(
                0,
                Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [n]), &device),
            )
            .reshape([n, 1]);
        let entropy = (logp.clone().exp() * logp)
            .sum()
            .neg()
            .reshape([1, 1])
            .repeat_dim(0, n);
        Ok((picked, entropy))
    }
}

fn probabilities(policy: &Bandit<Ad>) -> Vec<f32> {
    softmax(policy.logits.val(), 0)
        .into_data()
        .to_vec::<f32>()
        .expect("f32")
}

#[test]
fn grpo_learns_the_rewarded_token() {
    let device = Default::default();
    let mut policy = Bandit::<Ad> {
        logits: Param::from_tensor(Tensor::zeros([VOCAB], &device)),
    };
    let mut optim = AdamConfig::new().init::<Ad, Bandit<Ad>>();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let config = StepConfig {
        eos_token_ids: vec![],
        drop_zero_std_groups: true,
        ..StepConfig::default()
    };
    let (prompts, g) = (4, 8);
    let mut rewards_per_step = Vec::new();
    for _ in 0..40 {
        let probs = probabilities(&policy);
        let completions: Vec<Vec<u32>> = (0..prompts * g)
            .map(|_| {
                let mut u: f32 = rng.random();
                let token = probs.iter().position(|&p| {
                    u -= p;
                    u < 0.0
                });
                vec![token.unwrap_or(VOCAB - 1) as u32]
            })
            .collect();
        let rewards: Vec<f32> = completions
            .iter()
            .map(|c| f32::from(u8::from(c[0] == RIGHT)))
            .collect();
        rewards_per_step.push(rewards.iter().sum::<f32>() / rewards.len() as f32);
        let rollouts = Rollouts {
            prompt_ids: vec![vec![0]; prompts * g],
            completion_ids: completions,
            num_generations: g,
            rewards,
            old_logprobs: None,
            ref_logprobs: None,
        };
        let (loss, _, stats) = grpo_step(&policy, &rollouts, &config, &device).expect("step");
        assert_eq!(stats.truncation_rate, 1.0, "no eos in this task");
        let grads = GradientsParams::from_grads(loss.loss.backward(), &policy);
        policy = optim.step(0.1, policy, grads);
    }
    let first: f32 = rewards_per_step[..5].iter().sum::<f32>() / 5.0;
    let last: f32 = rewards_per_step[35..].iter().sum::<f32>() / 5.0;
    let p_right = probabilities(&policy)[RIGHT as usize];
    eprintln!("reward: first 5 steps {first:.3}, last 5 steps {last:.3}; p(right) = {p_right:.3}");
    assert!(
        first < 0.3,
        "the task starts hard: first-steps reward {first}"
    );
    assert!(
        last > 0.9,
        "reward over the last 5 steps {last} (first 5: {first})"
    );
    assert!(p_right > 0.9, "p(right token) = {p_right}");
}
