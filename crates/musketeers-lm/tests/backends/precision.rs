//! Reduced-precision forward passes (frozen experts, rollouts, the reference model on a GPU):
//! a model cast to bf16 or f16 gives the f32 model's logits within that format's rounding,
//! generates through the KV cache with a soft (f32) prefix, and casting to f32 is a no-op.
//! A precision the backend cannot compute in (wgpu has no bf16) is skipped with a note.

// Skips and the measured errors belong in the test output.
#![allow(clippy::print_stderr)]

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};
use musketeers_lm::generate::{GenerationConfig, generate_with_prefix};
use musketeers_lm::precision::to_f32;
use musketeers_lm::{Llama, Precision, weights};

use crate::common;
use common::{fixture, input_ids, relative_error};

musketeers_testkit::backend_tests!(
    reduced_precision_logits_stay_within_rounding_of_f32,
    a_reduced_precision_model_generates_with_an_f32_prefix,
    casting_to_f32_changes_nothing,
);

/// Each reduced precision the backend computes in, with a bound on the logits' relative error
/// (max |diff| / max |f32 logit|) over the tiny fixtures' two layers: 32 units of the format's
/// epsilon (bf16 2^-8, f16 2^-11), as rounding compounds over the layers (Gemma 3's scaled
/// embeddings and four norms per layer are the largest: 16 f16 units on lavapipe). A wrong
/// rotary table or mask moves logits by their own size.
fn precisions<B: Backend>(device: &B::Device) -> Vec<(Precision, f32)> {
    [
        (Precision::Bf16, 32.0 / 256.0),
        (Precision::F16, 32.0 / 2048.0),
    ]
    .into_iter()
    .filter(|(p, _)| {
        let dtype = DType::from(p.dtype());
        let ok = B::supports_dtype(device, dtype);
        if !ok {
            eprintln!("skipped {p}: this backend does not compute in {dtype:?}");
        }
        ok
    })
    .collect()
}

fn logits<B: Backend>(model: &Llama<B>, ids: &[i64], device: &B::Device) -> Vec<f32> {
    let input =
        Tensor::<B, 2, Int>::from_data(TensorData::new(ids.to_vec(), [1, ids.len()]), device);
    to_f32(model.forward(input, None, false).logits)
        .into_data()
        .to_vec::<f32>()
        .expect("f32 logits")
}

fn reduced_precision_logits_stay_within_rounding_of_f32<B: Backend>(device: &B::Device) {
    for (precision, bound) in precisions::<B>(device) {
        for name in ["llama-gqa", "qwen2-bias", "qwen3-qk-norm", "gemma3-sliding"] {
            let dir = fixture(name);
            let ids = input_ids(&dir);
            let (_, model) = weights::load::<B>(&dir, device).expect("fixture loads");
            let want = logits(&model, &ids, device);
            let reduced = model.with_precision(precision);
            assert_eq!(reduced.float_dtype(), DType::from(precision.dtype()));
            let out = reduced.forward(
                Tensor::from_data(TensorData::new(ids.clone(), [1, ids.len()]), device),
                None,
                true,
            );
            assert_eq!(out.logits.dtype(), reduced.float_dtype(), "{name}");
            let err = relative_error(&logits(&reduced, &ids, device), &want);
            eprintln!("{name} {precision}: logits relative error {err:.2e}");
            assert!(
                err < bound,
                "{name} {precision}: relative error {err} >= {bound}"
            );
            // Not the f32 model: the rounding is real.
            assert!(err > 0.0, "{name} {precision}: no rounding at all");
        }
    }
}

fn a_reduced_precision_model_generates_with_an_f32_prefix<B: Backend>(device: &B::Device) {
    for (precision, _) in precisions::<B>(device) {
        let (config, model) =
            weights::load::<B>(&fixture("gemma3-sliding"), device).expect("loads");
        let model = model.with_precision(precision);
        let prefix = Tensor::<B, 3>::ones([2, 3, config.hidden_size], device) * 0.1;
        assert_eq!(prefix.dtype(), DType::F32);
        let prompts: Vec<Vec<u32>> = vec![vec![3, 14, 15, 92, 65], vec![9, 26, 5]];
        let out = generate_with_prefix(
            &model,
            &prompts,
            Some(prefix),
            &GenerationConfig {
                max_new_tokens: 9,
                num_return_sequences: 2,
                ..Default::default()
            },
            None,
            device,
        )
        .expect("generate");
        assert_eq!(out.tokens.len(), 4);
        for (tokens, logprobs) in out.tokens.iter().zip(&out.logprobs) {
            assert_eq!(tokens.len(), 9, "{precision}: no eos configured");
            assert!(tokens.iter().all(|&t| (t as usize) < config.vocab_size));
            assert!(logprobs.iter().all(|l| l.is_finite() && *l <= 0.0));
        }
    }
}

fn casting_to_f32_changes_nothing<B: Backend>(device: &B::Device) {
    let dir = fixture("qwen2-bias");
    let ids = input_ids(&dir);
    let (_, model) = weights::load::<B>(&dir, device).expect("fixture loads");
    let want = logits(&model, &ids, device);
    let same = model.with_precision(Precision::F32);
    assert_eq!(same.float_dtype(), DType::F32);
    assert!(
        logits(&same, &ids, device) == want,
        "an f32 cast moved the logits"
    );
}

#[test]
fn precisions_parse_and_name_themselves() {
    for name in Precision::NAMES {
        let p: Precision = name.parse().expect("known name");
        assert_eq!(p.to_string(), name);
    }
    let err = "fp8".parse::<Precision>().expect_err("unknown");
    assert!(err.contains("fp8") && err.contains("bf16"), "{err}");
}
