//! Continuous batching: sequences that join a running batch, at once or steps apart, decode
//! what they decode alone; a cancelled sequence leaves the others untouched.

use burn::tensor::Tensor;
use burn_flex::Flex;
use musketeers_lm::batch::{DecodeBatch, Event, SequenceSpec};
use musketeers_lm::generate::{FinishReason, GenerationConfig, generate_with_prefix};
use musketeers_lm::sampling::SamplingConfig;
use musketeers_lm::{Llama, weights};
use std::collections::BTreeMap;
use std::path::PathBuf;

fn model(name: &str) -> Llama<Flex> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    weights::load::<Flex>(&dir, &Default::default())
        .expect("fixture loads")
        .1
}

fn spec(id: u64, prompt: &[u32], prefix: Option<Tensor<Flex, 2>>) -> SequenceSpec<Flex> {
    SequenceSpec {
        id,
        prompt: prompt.to_vec(),
        prefix,
        max_new_tokens: 6,
        eos_token_ids: Vec::new(),
        sampling: SamplingConfig::default(),
        stream: 0,
        stop: None,
    }
}

/// Greedy tokens of `prompt` alone, through `generate_with_prefix`.
fn alone(model: &Llama<Flex>, prompt: &[u32], prefix: Option<Tensor<Flex, 2>>) -> Vec<u32> {
    generate_with_prefix(
        model,
        &[prompt.to_vec()],
        prefix.map(|p| p.unsqueeze_dim(0)),
        &GenerationConfig {
            max_new_tokens: 6,
            num_return_sequences: 1,
            eos_token_ids: Vec::new(),
            sampling: SamplingConfig::default(),
        },
        None,
        &Default::default(),
    )
    .expect("generate")
    .tokens
    .remove(0)
}

/// Run `batch` to the end, joining `later[step]` before step `step`; tokens by id.
fn drain(
    model: &Llama<Flex>,
    batch: &mut DecodeBatch<Flex>,
    mut later: BTreeMap<usize, Vec<SequenceSpec<Flex>>>,
) -> BTreeMap<u64, (Vec<u32>, Option<FinishReason>)> {
    let mut out: BTreeMap<u64, (Vec<u32>, Option<FinishReason>)> = BTreeMap::new();
    let mut step = 0;
    while !batch.is_empty() || !later.is_empty() {
        if let Some(specs) = later.remove(&step) {
            batch.join(model, specs, &Default::default()).expect("join");
        }
        for event in batch.step(model, &Default::default()).expect("step") {
            match event {
                Event::Token { id, token, .. } => out.entry(id).or_default().0.push(token),
                Event::Finished { id, reason } => out.entry(id).or_default().1 = Some(reason),
            }
        }
        step += 1;
        assert!(step < 100, "the batch drains");
    }
    out
}

#[test]
fn sequences_joining_at_different_steps_decode_what_they_decode_alone() {
    for name in ["llama-gqa", "gemma3-sliding", "qwen2-bias"] {
        let model = model(name);
        let prompts: [&[u32]; 4] = [&[3, 14, 15], &[9, 26], &[60, 61, 62, 63, 64, 65, 66], &[7]];
        let mut batch = DecodeBatch::new(&model, &Default::default());
        batch
            .join(
                &model,
                vec![spec(0, prompts[0], None), spec(1, prompts[1], None)],
                &Default::default(),
            )
            .expect("join");
        let later = BTreeMap::from([
            (2, vec![spec(2, prompts[2], None)]),
            (4, vec![spec(3, prompts[3], None)]),
        ]);
        let out = drain(&model, &mut batch, later);
        for (id, prompt) in prompts.iter().enumerate() {
            let (tokens, reason) = &out[&(id as u64)];
            assert_eq!(
                tokens,
                &alone(&model, prompt, None),
                "{name}: sequence {id}"
            );
            assert_eq!(*reason, Some(FinishReason::Length));
        }
    }
}

#[test]
fn a_prefixed_sequence_joins_like_the_others() {
    let model = model("llama-gqa");
    let device = Default::default();
    let prefix = || {
        Tensor::<Flex, 2>::random(
            [2, 64],
            burn::tensor::Distribution::Normal(0.0, 0.5),
            &device,
        )
    };
    let (a, b) = (prefix(), prefix());
    let mut batch = DecodeBatch::new(&model, &device);
    batch
        .join(&model, vec![spec(0, &[3, 4, 5], Some(a.clone()))], &device)
        .expect("join");
    let out = drain(
        &model,
        &mut batch,
        BTreeMap::from([(3, vec![spec(1, &[8, 9], Some(b.clone()))])]),
    );
    assert_eq!(out[&0].0, alone(&model, &[3, 4, 5], Some(a)));
    assert_eq!(out[&1].0, alone(&model, &[8, 9], Some(b)));
    // Prefixes of two lengths cannot prefill together.
    let mut batch = DecodeBatch::new(&model, &device);
    let short = Tensor::<Flex, 2>::zeros([1, 64], &device);
    assert!(
        batch
            .join(
                &model,
                vec![spec(0, &[3], Some(short)), spec(1, &[4], None)],
                &device
            )
            .is_err()
    );
}

#[test]
fn a_cancelled_sequence_leaves_and_the_rest_decode_unchanged() {
    let model = model("llama-gqa");
    let device = Default::default();
    let mut batch = DecodeBatch::new(&model, &device);
    batch
        .join(
            &model,
            vec![
                spec(0, &[3, 14, 15, 16, 17, 18], None),
                spec(1, &[9, 26], None),
            ],
            &device,
        )
        .expect("join");
    batch.step(&model, &device).expect("step");
    assert_eq!(batch.width(), 7, "6 prompt tokens and one decoded");
    assert!(batch.cancel(0));
    // The padding only the cancelled row needed is gone: 2 prompt tokens and one decoded.
    assert_eq!(batch.width(), 3);
    assert!(!batch.cancel(0), "already gone");
    assert_eq!(batch.len(), 1);
    let mut rest = vec![];
    while !batch.is_empty() {
        for event in batch.step(&model, &device).expect("step") {
            if let Event::Token { id, token, .. } = event {
                assert_eq!(id, 1);
                rest.push(token);
            }
        }
    }
    assert_eq!(rest, alone(&model, &[9, 26], None)[1..]);
    // Bad sequences are refused with a reason.
    let mut bad = spec(5, &[], None);
    assert!(batch.join(&model, vec![bad], &device).is_err());
    bad = spec(6, &[100_000], None);
    assert!(batch.join(&model, vec![bad], &device).is_err());
}
