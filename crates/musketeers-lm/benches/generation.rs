//! Prefill and decode tokens per second of a SmolLM2-135M-shaped model (random weights; f32,
//! or compact weight matrices with `BENCH_WEIGHTS`)
//! on the CPU backend, at batch 1, 8 and 32, beside this machine's matmul rate measured in the
//! same run. One JSON object per line; `cargo xtask bench lm` sets them beside transformers.

#![allow(clippy::print_stdout)] // a benchmark reports on stdout

use burn_flex::Flex;
use musketeers_lm::LlamaConfig;
use musketeers_lm::generate::{GenerationConfig, generate};
use musketeers_lm::sampling::SamplingConfig;

type B = Flex;

/// With `--features mimalloc` the allocator the `musketeers` binary gets from its feature
/// of that name (`cargo xtask bench lm --mimalloc`); the system's otherwise.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: musketeers_lm::allocator::MiMalloc = musketeers_lm::allocator::MiMalloc;

const ALLOCATOR_NAME: &str = if cfg!(feature = "mimalloc") {
    "mimalloc"
} else {
    "system"
};

fn smollm2_135m() -> LlamaConfig {
    LlamaConfig::llama(49152, 576, 1536, 30, 9, 3, 100_000.0)
}

fn main() {
    #[cfg(feature = "mimalloc")]
    musketeers_lm::allocator::keep_freed_memory();
    let batches: Vec<usize> = std::env::var("BENCH_BATCHES")
        .ok()
        .map(|s| s.split(',').filter_map(|b| b.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 8, 32]);
    let new_tokens: usize = std::env::var("BENCH_NEW_TOKENS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let prompt_len = 32;
    println!(
        "{}",
        serde_json::json!({
            "matmul_gflops_1024": musketeers_lm::perf::matmul_gflops::<B>(1024, &Default::default()),
            "memory_read_gbs": musketeers_lm::perf::memory_read_gbs(),
        })
    );
    let device = Default::default();
    // BENCH_MODEL: a real model (dequantized to f32) instead of random weights.
    let model = match std::env::var("BENCH_MODEL").ok().filter(|m| !m.is_empty()) {
        Some(path) => {
            musketeers_lm::Pretrained::<B>::load(std::path::Path::new(&path), &device)
                .expect("BENCH_MODEL loads")
                .model
        }
        None => smollm2_135m().init::<B>(&device),
    };
    // BENCH_WEIGHTS: how the weight matrices are stored (f32, f16, bf16).
    let weights: musketeers_lm::Precision = std::env::var("BENCH_WEIGHTS")
        .ok()
        .filter(|w| !w.is_empty())
        .map_or(Ok(musketeers_lm::Precision::F32), |w| w.parse())
        .expect("BENCH_WEIGHTS is f32, f16 or bf16");
    let model = model.with_compact_weights(weights);
    for batch in batches {
        let prompts: Vec<Vec<u32>> = (0..batch)
            .map(|b| {
                (0..prompt_len)
                    .map(|i| ((b * 131 + i * 17) % 49_000) as u32)
                    .collect()
            })
            .collect();
        let config = GenerationConfig {
            max_new_tokens: new_tokens,
            num_return_sequences: 1,
            eos_token_ids: Vec::new(),
            sampling: SamplingConfig {
                temperature: 1.0,
                top_k: None,
                top_p: None,
                seed: 0,
            },
        };
        // Warm-up at a short length, then the measured run.
        let _ = generate(
            &model,
            &prompts,
            &GenerationConfig {
                max_new_tokens: 2,
                ..config.clone()
            },
            &device,
        );
        let out = generate(&model, &prompts, &config, &device).expect("generation runs");
        println!(
            "{}",
            serde_json::json!({
                "batch": batch,
                "prefill_tokens_per_sec": out.prefill_tokens as f64 / out.prefill_seconds,
                "decode_tokens_per_sec": out.decode_tokens as f64 / out.decode_seconds,
                "new_tokens": new_tokens,
            })
        );
    }
    println!(
        "{}",
        serde_json::json!({
            "peak_rss_bytes": musketeers_lm::perf::peak_rss_bytes(),
            "allocator": ALLOCATOR_NAME,
        })
    );
}
