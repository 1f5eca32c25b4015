//! Generation with the KV cache against recomputation, padding, groups and seeds.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use burn_flex::Flex;
use musketeers_lm::Pretrained;
use musketeers_lm::generate::{
    FinishReason, Generation, GenerationConfig, StopStrings, generate, generate_until,
};
use musketeers_lm::sampling::SamplingConfig;
use musketeers_lm::tokenizer::TextTokenizer;
use musketeers_lm::{Llama, weights};
use std::path::PathBuf;

musketeers_testkit::backend_tests!(
    cached_greedy_equals_recomputed_greedy,
    left_padded_batch_equals_single_rows,
    a_soft_prefix_of_token_embeddings_generates_as_those_tokens_do,
);

fn model<B: Backend>(name: &str, device: &B::Device) -> Llama<B> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    weights::load::<B>(&dir, device).expect("fixture loads").1
}

/// Greedy decoding by re-running the whole sequence each step, no cache.
fn greedy_without_cache<B: Backend>(
    model: &Llama<B>,
    prompt: &[u32],
    steps: usize,
    device: &B::Device,
) -> Vec<u32> {
    let mut ids: Vec<i64> = prompt.iter().map(|&t| i64::from(t)).collect();
    let mut out = Vec::new();
    for _ in 0..steps {
        let t = ids.len();
        let logits = model
            .forward(
                Tensor::<B, 2, Int>::from_data(TensorData::new(ids.clone(), [1, t]), device),
                None,
                false,
            )
            .logits;
        let last = logits.into_data().to_vec::<f32>().expect("f32");
        let vocab = last.len() / t;
        let row = &last[(t - 1) * vocab..];
        let next = row
            .iter()
            .enumerate()
            .fold(0, |best, (i, v)| if *v > row[best] { i } else { best });
        out.push(next as u32);
        ids.push(next as i64);
    }
    out
}

fn cached_greedy_equals_recomputed_greedy<B: Backend>(device: &B::Device) {
    for name in [
        "llama-gqa",
        "qwen2-bias",
        "qwen3-qk-norm",
        "llama3-rope-scaling",
        // Sliding window 4: the 17-token sequences cross it, in prefill and in decode.
        "gemma3-sliding",
    ] {
        let model = model::<B>(name, device);
        let prompt = vec![3, 14, 15, 92, 65];
        let config = GenerationConfig {
            max_new_tokens: 12,
            ..Default::default()
        };
        let out =
            generate(&model, std::slice::from_ref(&prompt), &config, device).expect("generate");
        assert_eq!(
            out.tokens[0],
            greedy_without_cache(&model, &prompt, 12, device),
            "{name}"
        );
        assert!(out.logprobs[0].iter().all(|l| *l <= 0.0 && l.is_finite()));
    }
}

fn left_padded_batch_equals_single_rows<B: Backend>(device: &B::Device) {
    for name in ["llama-tied", "gemma3-sliding"] {
        left_padded_batch_equals_single_rows_for::<B>(name, device);
    }
}

fn left_padded_batch_equals_single_rows_for<B: Backend>(name: &str, device: &B::Device) {
    let model = model::<B>(name, device);
    let prompts = vec![
        vec![1, 2, 3, 4, 5, 6, 7, 8],
        vec![9, 10],
        vec![40, 41, 42, 43],
    ];
    let config = GenerationConfig {
        max_new_tokens: 10,
        ..Default::default()
    };
    let batch = generate(&model, &prompts, &config, device).expect("batch");
    for (i, prompt) in prompts.iter().enumerate() {
        let single =
            generate(&model, std::slice::from_ref(prompt), &config, device).expect("single");
        assert_eq!(batch.tokens[i], single.tokens[0], "row {i}");
    }
}

#[test]
fn groups_share_a_prefill_and_seeds_reproduce() {
    let model = model::<Flex>("qwen3-qk-norm", &Default::default());
    let sampling = SamplingConfig {
        temperature: 1.0,
        top_k: None,
        top_p: Some(0.95),
        seed: 11,
    };
    let config = GenerationConfig {
        max_new_tokens: 8,
        num_return_sequences: 4,
        eos_token_ids: vec![],
        sampling,
    };
    let prompts = vec![vec![5, 6, 7], vec![8, 9]];
    let a = generate(&model, &prompts, &config, &Default::default()).expect("generate");
    let b = generate(&model, &prompts, &config, &Default::default()).expect("generate");
    assert_eq!(
        a,
        Generation {
            prefill_seconds: a.prefill_seconds,
            decode_seconds: a.decode_seconds,
            ..b
        }
    );
    assert_eq!(a.tokens.len(), 8);
    assert_eq!(
        a.prefill_tokens, 5,
        "each prompt is prefilled once, not once per sample"
    );
    let distinct: std::collections::HashSet<_> = a.tokens[..4].iter().collect();
    assert!(
        distinct.len() > 1,
        "samples of one prompt should differ at temperature 1"
    );
}

#[test]
fn eos_stops_a_row_and_bad_input_is_an_error() {
    let model = model::<Flex>("llama-gqa", &Default::default());
    let prompt = vec![3, 14, 15];
    let free = generate(
        &model,
        std::slice::from_ref(&prompt),
        &GenerationConfig {
            max_new_tokens: 6,
            ..Default::default()
        },
        &Default::default(),
    )
    .expect("generate");
    let eos = free.tokens[0][2];
    let config = GenerationConfig {
        max_new_tokens: 6,
        eos_token_ids: vec![eos],
        ..Default::default()
    };
    let stopped = generate(
        &model,
        std::slice::from_ref(&prompt),
        &config,
        &Default::default(),
    )
    .expect("generate");
    let first = free.tokens[0]
        .iter()
        .position(|&t| t == eos)
        .expect("eos appears");
    assert_eq!(stopped.tokens[0], free.tokens[0][..=first].to_vec());
    assert_eq!(stopped.finish_reasons[0], FinishReason::Eos);
    assert_eq!(free.finish_reasons[0], FinishReason::Length);
    assert!(generate(&model, &[vec![]], &config, &Default::default()).is_err());
    assert!(generate(&model, &[vec![1000]], &config, &Default::default()).is_err());
}

/// A word-level tokenizer over the fixtures' 96 ids: id `i` is the word `w{i}`.
fn word_tokenizer(dir: &std::path::Path) {
    let tokenizer = musketeers_lm::tokenizer::numbered_words_json(96);
    std::fs::write(dir.join("tokenizer.json"), tokenizer).expect("tokenizer");
    std::fs::write(dir.join("tokenizer_config.json"), r#"{"eos_token": "w9"}"#).expect("config");
}

#[test]
fn a_stop_string_ends_a_row_at_the_token_that_completes_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    word_tokenizer(dir.path());
    let tokenizer = TextTokenizer::load(dir.path(), 96).expect("tokenizer");
    let model = model::<Flex>("llama-gqa", &Default::default());
    let prompts = vec![vec![3, 14, 15], vec![9, 26, 5, 35]];
    let config = GenerationConfig {
        max_new_tokens: 8,
        ..Default::default()
    };
    let free = generate(&model, &prompts, &config, &Default::default()).expect("generate");
    // Stop on the text of row 0's 3rd and 4th new tokens; row 1 stops wherever that text
    // first appears in it, if anywhere.
    let stop = tokenizer
        .decode(&free.tokens[0][2..4], false)
        .expect("decode");
    let stop_strings = StopStrings::new(&tokenizer, vec![stop.clone()]);
    let stopped = generate_until(
        &model,
        &prompts,
        &config,
        Some(&stop_strings),
        &Default::default(),
    )
    .expect("generate");
    for row in 0..2 {
        let text_upto = |k: usize| {
            tokenizer
                .decode(&free.tokens[row][..=k], false)
                .expect("decode")
        };
        match (0..free.tokens[row].len()).find(|&k| text_upto(k).contains(&stop)) {
            Some(k) => {
                assert_eq!(stopped.tokens[row], free.tokens[row][..=k].to_vec());
                assert_eq!(stopped.finish_reasons[row], FinishReason::Stop);
            }
            None => assert_eq!(stopped.tokens[row], free.tokens[row]),
        }
    }
    assert_eq!(stopped.tokens[0].len(), 4);
}

#[test]
fn pretrained_collects_eos_from_generation_config_config_and_tokenizer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama-gqa");
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture.join(file), dir.path().join(file)).expect("copy");
    }
    word_tokenizer(dir.path());
    std::fs::write(
        dir.path().join("generation_config.json"),
        r#"{"eos_token_id": [7, 2]}"#,
    )
    .expect("generation config");
    let loaded = Pretrained::<Flex>::load(dir.path(), &Default::default()).expect("load");
    // generation_config.json first, then config.json's eos (2, already present), then the
    // tokenizer's eos token "w9".
    assert_eq!(loaded.eos_token_ids, vec![7, 2, 9]);
    std::fs::write(dir.path().join("generation_config.json"), "{ not json").expect("write");
    let err = Pretrained::<Flex>::load(dir.path(), &Default::default())
        .expect_err("bad generation_config.json fails")
        .to_string();
    assert!(err.contains("generation_config.json"), "{err}");
}

fn a_soft_prefix_of_token_embeddings_generates_as_those_tokens_do<B: Backend>(device: &B::Device) {
    use musketeers_lm::generate::generate_with_prefix;
    for name in ["llama-gqa", "gemma3-sliding"] {
        let model = model::<B>(name, device);
        let prompts: Vec<Vec<u32>> = vec![vec![3, 14, 15, 92, 65], vec![9, 26, 5]];
        let k = 2;
        let config = GenerationConfig {
            max_new_tokens: 8,
            num_return_sequences: 2,
            ..Default::default()
        };
        let plain = generate(&model, &prompts, &config, device).expect("plain");
        // The first k tokens of each prompt as soft tokens (their input embeddings).
        let heads: Vec<i64> = prompts
            .iter()
            .flat_map(|p| p[..k].iter().map(|&t| i64::from(t)))
            .collect();
        let heads = Tensor::<B, 2, Int>::from_data(TensorData::new(heads, [2, k]), device);
        let prefix = model.embed(heads);
        let rests: Vec<Vec<u32>> = prompts.iter().map(|p| p[k..].to_vec()).collect();
        let soft = generate_with_prefix(&model, &rests, Some(prefix), &config, None, device)
            .expect("with prefix");
        assert_eq!(soft.tokens, plain.tokens, "{name}");
        for (a, b) in soft
            .logprobs
            .iter()
            .flatten()
            .zip(plain.logprobs.iter().flatten())
        {
            assert!((a - b).abs() < 1e-4, "{name}: logprob {a} vs {b}");
        }
    }
}
