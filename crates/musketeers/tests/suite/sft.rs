//! Supervised training from scratch: a tiny model learns a lookup it could not know, the loss
//! counts only target tokens, and bad input is an error.

use burn::backend::Autodiff;
use burn_flex::Flex;
use musketeers::model::seeded_init;
use musketeers::sft::{Example, SftSettings, exact_match, train};
use musketeers_lm::config::LlamaConfig;
use musketeers_rl::LrSchedulerType;

type Ad = Autodiff<Flex>;

fn tiny(vocab: usize) -> LlamaConfig {
    LlamaConfig {
        eos_token_ids: vec![1],
        ..LlamaConfig::llama(vocab, 32, 64, 1, 2, 2, 10_000.0)
    }
}

fn settings(steps: usize) -> SftSettings {
    SftSettings {
        steps,
        batch_size: 16,
        learning_rate: 1e-2,
        schedule: LrSchedulerType::Constant,
        warmup_steps: 0,
        weight_decay: 0.0,
        max_grad_norm: 1.0,
        seed: 3,
    }
}

#[test]
fn a_tiny_model_learns_a_mapping_from_scratch() {
    // Prompt [2, a] -> target [10 + (a * 7) % 8, eos]: arbitrary, so only training explains it.
    let examples: Vec<Example> = (0..8u32)
        .map(|a| Example {
            prompt: vec![2, 3 + a],
            target: vec![11 + (a * 7) % 8, 1],
        })
        .collect();
    let device = Default::default();
    // Through the crate's lock: other tests of this binary start runs in parallel threads.
    let model = seeded_init(&device, 5, || tiny(20).init::<Ad>(&device));
    assert!(exact_match(&model, &examples) < 0.5);
    let mut losses = Vec::new();
    let model = train(model, &examples, &settings(150), &mut |s| {
        losses.push(s.loss)
    })
    .expect("trains");
    assert_eq!(losses.len(), 150);
    assert!(
        losses[149] < losses[0] * 0.1,
        "loss {} -> {}",
        losses[0],
        losses[149]
    );
    assert_eq!(exact_match(&model, &examples), 1.0);
}

#[test]
fn empty_examples_and_empty_targets_are_errors() {
    let device = Default::default();
    let model = seeded_init(&device, 6, || tiny(8).init::<Ad>(&device));
    let err = train(model.clone(), &[], &settings(1), &mut |_| {}).expect_err("no examples");
    assert!(err.to_string().contains("needs examples"), "{err}");
    let bad = [Example {
        prompt: vec![2],
        target: vec![],
    }];
    let err = train(model, &bad, &settings(1), &mut |_| {}).expect_err("empty target");
    assert!(err.to_string().contains("example 0"), "{err}");
}
