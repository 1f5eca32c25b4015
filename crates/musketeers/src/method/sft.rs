//! Supervised fine-tuning: next-token cross-entropy on target tokens that follow a prompt.
//!
//! What the demo trains its experts with from scratch, and what warm-starts a policy on the
//! answer format before GRPO. Every trainable parameter of the model is updated (call it on
//! a model with LoRA attached to train the adapters only).

use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use musketeers_lm::Llama;
use musketeers_rl::{LrSchedule, LrSchedulerType};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::error::TrainError;

/// One training example: the prompt's token ids and the ids the model should continue with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub prompt: Vec<u32>,
    pub target: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SftSettings {
    pub steps: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    /// How the learning rate changes over the steps (warmup, then decay or not).
    pub schedule: LrSchedulerType,
    pub warmup_steps: usize,
    pub weight_decay: f32,
    pub max_grad_norm: f32,
    /// Shuffling order of the examples.
    pub seed: u64,
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SftStep {
    pub step: usize,
    /// Mean cross-entropy per target token (nats).
    pub loss: f32,
    /// Share of target tokens the model's argmax got right.
    pub token_accuracy: f32,
}

/// `[batch, seq]` ids right-padded with 0, the next-token targets shifted by one and a 0/1
/// weight that is 1 where a target token is predicted.
fn batch<B: Backend>(
    examples: &[&Example],
    device: &B::Device,
) -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>, Tensor<B, 2>) {
    let width = examples
        .iter()
        .map(|e| e.prompt.len() + e.target.len())
        .max()
        .unwrap_or(1);
    let n = examples.len();
    let (mut ids, mut next, mut weight) = (
        vec![0i64; n * width],
        vec![0i64; n * width],
        vec![0f32; n * width],
    );
    for (r, e) in examples.iter().enumerate() {
        let row: Vec<u32> = e.prompt.iter().chain(&e.target).copied().collect();
        for (t, &id) in row.iter().enumerate() {
            ids[r * width + t] = i64::from(id);
            if t + 1 < row.len() {
                next[r * width + t] = i64::from(row[t + 1]);
                // Position t predicts token t+1: a target token when t+1 >= prompt length.
                if t + 1 >= e.prompt.len() {
                    weight[r * width + t] = 1.0;
                }
            }
        }
    }
    (
        Tensor::from_data(TensorData::new(ids, [n, width]), device),
        Tensor::from_data(TensorData::new(next, [n, width]), device),
        Tensor::from_data(TensorData::new(weight, [n, width]), device),
    )
}

/// Train `model` on `examples` for `settings.steps` AdamW steps of shuffled minibatches;
/// right padding needs no mask, since a causal model never looks past its token.
pub fn train<B: AutodiffBackend>(
    mut model: Llama<B>,
    examples: &[Example],
    settings: &SftSettings,
    progress: &mut dyn FnMut(&SftStep),
) -> Result<Llama<B>, TrainError> {
    if examples.is_empty() || settings.batch_size == 0 {
        return Err(TrainError::BadInput(
            "supervised training needs examples and a positive batch size".into(),
        ));
    }
    if let Some(i) = examples
        .iter()
        .position(|e| e.prompt.is_empty() || e.target.is_empty())
    {
        return Err(TrainError::BadInput(format!(
            "example {i} has an empty prompt or target"
        )));
    }
    let device = model.embed_tokens.weight.device();
    let mut optim = AdamWConfig::new()
        .with_weight_decay(settings.weight_decay)
        .with_grad_clipping(Some(burn::grad_clipping::GradientClippingConfig::Norm(
            settings.max_grad_norm,
        )))
        .init::<B, Llama<B>>();
    let schedule = LrSchedule {
        kind: settings.schedule,
        warmup_steps: settings.warmup_steps as u64,
        total_steps: settings.steps as u64,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(settings.seed);
    let mut order: Vec<usize> = (0..examples.len()).collect();
    let mut cursor = order.len();
    for step in 0..settings.steps {
        let _graphs = crate::method::autodiff_lock::hold();
        let mut picked = Vec::with_capacity(settings.batch_size);
        while picked.len() < settings.batch_size.min(examples.len()) {
            if cursor == order.len() {
                order.shuffle(&mut rng);
                cursor = 0;
            }
            picked.push(&examples[order[cursor]]);
            cursor += 1;
        }
        let (ids, next, weight) = batch::<B>(&picked, &device);
        let logits = model.forward(ids, None, false).logits;
        let logp = log_softmax(logits.clone(), 2);
        let picked_logp = logp.gather(2, next.clone().unsqueeze_dim(2)).squeeze_dim(2);
        let count = weight.clone().sum();
        let loss = (picked_logp * weight.clone()).sum().neg() / count.clone();
        let hits = logits
            .argmax(2)
            .squeeze_dim::<2>(2)
            .equal(next)
            .float()
            .mul(weight)
            .sum();
        let report = SftStep {
            step: step + 1,
            loss: loss.clone().into_scalar().elem(),
            token_accuracy: (hits.inner().into_scalar().elem::<f32>())
                / count.inner().into_scalar().elem::<f32>(),
        };
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let lr = settings.learning_rate * schedule.factor(step as u64);
        model = optim.step(lr, model, grads);
        progress(&report);
    }
    Ok(model)
}

/// Share of `examples` whose whole target the model reproduces greedily, token by token under
/// teacher forcing (an exact-match check without sampling).
pub fn exact_match<B: AutodiffBackend>(model: &Llama<B>, examples: &[Example]) -> f32 {
    let model = model.valid();
    let device = model.embed_tokens.weight.device();
    let mut right = 0usize;
    for chunk in examples.chunks(256) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let (ids, next, weight) = batch::<B::InnerBackend>(&refs, &device);
        let wrong = model
            .forward(ids, None, false)
            .logits
            .argmax(2)
            .squeeze_dim::<2>(2)
            .not_equal(next)
            .float()
            .mul(weight)
            .sum_dim(1)
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .unwrap_or_default();
        right += wrong.iter().filter(|&&w| w == 0.0).count();
    }
    right as f32 / examples.len().max(1) as f32
}
