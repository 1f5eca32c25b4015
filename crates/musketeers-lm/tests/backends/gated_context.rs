//! Gated context at a zero gate is the model without context: every prompt token's logits,
//! greedy continuations through the KV cache and a continuous batch, with left padding, on
//! every architecture we load. And a gate that opens does change them (the test can fail).

use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use musketeers_lm::batch::{DecodeBatch, Event, SequenceSpec};
use musketeers_lm::generate::{
    GenerationConfig, attention_mask, generate_with_context, generate_with_prefix,
};
use musketeers_lm::sampling::SamplingConfig;
use musketeers_lm::{Llama, SoftContext, weights};
use musketeers_testkit::TINY_MODELS;
use std::path::PathBuf;

musketeers_testkit::backend_tests!(
    prompt_logits_at_a_zero_gate_equal_those_without_context,
    greedy_decoding_at_a_zero_gate_equals_decoding_without_context,
    a_continuous_batch_at_a_zero_gate_decodes_as_without_context,
    an_open_gate_reads_the_context,
);

fn load<B: Backend>(name: &str, device: &B::Device) -> Llama<B> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    weights::load::<B>(&dir, device).expect("fixture loads").1
}

/// Prompts of different lengths, so that rows are left-padded.
fn prompts() -> Vec<Vec<u32>> {
    vec![vec![3, 14, 15, 92, 65, 35, 8], vec![9, 26, 5]]
}

fn context<B: Backend>(
    model: &Llama<B>,
    rows: usize,
    gate: f32,
    device: &B::Device,
) -> SoftContext<B> {
    let (layers, heads, hidden) = model.context_shape();
    SoftContext::gated(
        Tensor::random([rows, 4, hidden], Distribution::Normal(0.0, 1.0), device),
        Tensor::full([layers, heads], gate, device),
    )
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().expect("f32")
}

/// Largest |a - b| / max(1, |b|).
fn max_relative(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1.0))
        .fold(0.0, f32::max)
}

/// The logits of every prompt slot of `[C | pad | prompt]` (context read through `gates`)
/// or `[pad | prompt]` (no context), `[rows, width, vocab]` flattened, the context's slots cut.
fn prompt_logits<B: Backend>(
    model: &Llama<B>,
    prompts: &[Vec<u32>],
    context: Option<&SoftContext<B>>,
    extra_padding: usize,
    device: &B::Device,
) -> Vec<f32> {
    let width = prompts.iter().map(Vec::len).max().expect("prompts") + extra_padding;
    let soft = context.map_or(0, SoftContext::len);
    let gated = context.is_some_and(SoftContext::is_gated);
    let total = soft + width;
    let (mut ids, mut positions, mut real) = (Vec::new(), Vec::new(), Vec::new());
    for prompt in prompts {
        let pad = width - prompt.len();
        ids.extend(std::iter::repeat_n(0i64, pad).chain(prompt.iter().map(|&t| i64::from(t))));
        positions.extend(musketeers_lm::context::row_positions(soft, pad, prompt.len(), gated).0);
        real.push(
            std::iter::repeat_n(true, soft)
                .chain(std::iter::repeat_n(false, pad))
                .chain(std::iter::repeat_n(true, prompt.len()))
                .collect::<Vec<bool>>(),
        );
    }
    let b = prompts.len();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, width]), device);
    let positions = Tensor::<B, 2, Int>::from_data(TensorData::new(positions, [b, total]), device);
    let embedded = match context {
        Some(c) => Tensor::cat(vec![c.tokens.clone(), model.embed(ids)], 1),
        None => model.embed(ids),
    };
    let mut caches = model.new_caches();
    let hidden = model.forward_cached_gated(
        embedded,
        positions.clone(),
        positions,
        &attention_mask::<B>(&real, total, device),
        &mut caches,
        &model.rope(device),
        context.and_then(|c| c.gates.as_ref()),
    );
    let [_, _, h] = hidden.dims();
    let logits = model.head(hidden.slice([0..b, soft..total, 0..h]));
    // Padding slots are never read; keep the real prompt tokens only.
    let vocab = logits.dims()[2];
    let values = host(logits);
    let mut out = Vec::new();
    for (r, prompt) in prompts.iter().enumerate() {
        for slot in width - prompt.len()..width {
            let at = (r * width + slot) * vocab;
            out.extend_from_slice(&values[at..at + vocab]);
        }
    }
    out
}

#[allow(clippy::print_stderr)] // the unpadded gap belongs in the test output
fn prompt_logits_at_a_zero_gate_equal_those_without_context<B: Backend>(device: &B::Device) {
    for name in TINY_MODELS {
        let model = load::<B>(name, device);
        let prompts = prompts();
        let gated = context(&model, prompts.len(), 0.0, device);
        let with = prompt_logits(&model, &prompts, Some(&gated), 0, device);
        // The same rows with the context's slots as masked padding: the same key count, so
        // the same matmul shapes and summation order.
        let padded = prompt_logits(&model, &prompts, None, gated.len(), device);
        let worst = max_relative(&with, &padded);
        assert!(
            worst <= 1e-6,
            "{name}: prompt logits with a zero-gated context differ by {worst:e} (relative) \
             from the policy alone"
        );
        let without = prompt_logits(&model, &prompts, None, 0, device);
        eprintln!(
            "{name}: zero gate vs alone: {:e} (same shapes), {:e} (unpadded)",
            worst,
            max_relative(&with, &without)
        );
    }
}

fn greedy(max_new_tokens: usize) -> GenerationConfig {
    GenerationConfig {
        max_new_tokens,
        num_return_sequences: 2,
        eos_token_ids: vec![],
        sampling: SamplingConfig {
            temperature: 0.0,
            ..SamplingConfig::default()
        },
    }
}

fn greedy_decoding_at_a_zero_gate_equals_decoding_without_context<B: Backend>(device: &B::Device) {
    for name in TINY_MODELS {
        let model = load::<B>(name, device);
        let prompts = prompts();
        let gated = context(&model, prompts.len(), 0.0, device);
        let with = generate_with_context(&model, &prompts, Some(gated), &greedy(8), None, device)
            .expect("gated");
        let without =
            generate_with_prefix(&model, &prompts, None, &greedy(8), None, device).expect("plain");
        assert_eq!(with.tokens, without.tokens, "{name}: greedy tokens");
        let flat = |v: &[Vec<f32>]| v.concat();
        // Bit for bit at equal shapes (the prompt-logits test); here the context's slots make
        // the attention matmuls wider than the plain run's, and Flex sums them in another
        // order: Gemma 3's fixture (sandwich norms, embedding scale) shows 3e-6.
        let worst = max_relative(&flat(&with.logprobs), &flat(&without.logprobs));
        assert!(
            worst <= 1e-5,
            "{name}: decoded log-probabilities differ by {worst:e}"
        );
    }
}

/// Greedy tokens of each sequence decoded through a [`DecodeBatch`], the second joining
/// after the first has decoded three tokens (so its cache is front-padded).
fn batch_tokens<B: Backend>(
    model: &Llama<B>,
    prompts: &[Vec<u32>],
    context: Option<&SoftContext<B>>,
    device: &B::Device,
) -> Vec<Vec<u32>> {
    let mut batch = DecodeBatch::new(model, device);
    if let Some(gates) = context.and_then(|c| c.gates.clone()) {
        batch = batch.with_context_gates(gates);
    }
    let spec = |id: usize| {
        let hidden = model.context_shape().2;
        SequenceSpec {
            id: id as u64,
            prompt: prompts[id].clone(),
            prefix: context.map(|c| {
                let k = c.len();
                c.tokens
                    .clone()
                    .slice([id..id + 1, 0..k, 0..hidden])
                    .reshape([k, hidden])
            }),
            max_new_tokens: 6,
            eos_token_ids: vec![],
            sampling: SamplingConfig {
                temperature: 0.0,
                ..SamplingConfig::default()
            },
            stream: 0,
            stop: None,
        }
    };
    let mut tokens = vec![Vec::new(); prompts.len()];
    let mut record = |events: Vec<Event>| {
        for event in events {
            if let Event::Token { id, token, .. } = event {
                tokens[id as usize].push(token);
            }
        }
    };
    batch.join(model, vec![spec(0)], device).expect("join 0");
    for _ in 0..3 {
        record(batch.step(model, device).expect("step"));
    }
    batch.join(model, vec![spec(1)], device).expect("join 1");
    while !batch.is_empty() {
        record(batch.step(model, device).expect("step"));
    }
    tokens
}

fn a_continuous_batch_at_a_zero_gate_decodes_as_without_context<B: Backend>(device: &B::Device) {
    for name in ["llama-gqa", "gemma3-sliding", "qwen2-bias"] {
        let model = load::<B>(name, device);
        let prompts = prompts();
        let gated = context(&model, prompts.len(), 0.0, device);
        assert_eq!(
            batch_tokens(&model, &prompts, Some(&gated), device),
            batch_tokens(&model, &prompts, None, device),
            "{name}: a continuous batch with zero-gated context"
        );
    }
}

fn an_open_gate_reads_the_context<B: Backend>(device: &B::Device) {
    for name in ["llama-gqa", "qwen3-qk-norm", "gemma3-sliding"] {
        let model = load::<B>(name, device);
        let prompts = prompts();
        let open = context(&model, prompts.len(), 0.8, device);
        let with = prompt_logits(&model, &prompts, Some(&open), 0, device);
        let without = prompt_logits(&model, &prompts, None, 0, device);
        assert!(
            max_relative(&with, &without) > 1e-3,
            "{name}: an open gate left the logits unchanged"
        );
        // A wrong gate shape is an error, not a panic.
        let (layers, heads, hidden) = model.context_shape();
        let bad = SoftContext::gated(
            Tensor::zeros([prompts.len(), 2, hidden], device),
            Tensor::zeros([layers + 1, heads], device),
        );
        let err = generate_with_context(&model, &prompts, Some(bad), &greedy(2), None, device)
            .expect_err("a gate per layer is required");
        assert!(err.to_string().contains("gates"), "{err}");
    }
}
