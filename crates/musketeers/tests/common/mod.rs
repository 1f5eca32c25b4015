//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};

/// A copy of a tiny random-weight fixture model under `into`, with a word-level tokenizer
/// over its 96 ids (id i is "w{i}"), so the run loop can load it like any model directory.
pub fn fixture_with_tokenizer(name: &str, into: &Path) -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../musketeers-lm/tests/fixtures")
        .join(name);
    let dir = into.join(name);
    std::fs::create_dir_all(&dir).expect("dir");
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(file), dir.join(file)).expect("copy");
    }
    let tokenizer = musketeers_lm::tokenizer::numbered_words_json(96);
    std::fs::write(dir.join("tokenizer.json"), tokenizer).expect("tokenizer");
    dir
}

/// A tiny run of a few steps on the fixtures: `fused` (llama-gqa policy, one Qwen3 expert) or
/// `single`; a checkpoint every step, no held-out evaluation.
#[allow(dead_code)] // not every test binary that includes this module runs a training
pub fn tiny_run_config(temp: &Path, mode: &str) -> musketeers::run_config::RunConfig {
    let policy = fixture_with_tokenizer("llama-gqa", temp);
    let expert = fixture_with_tokenizer("qwen3-qk-norm", temp);
    let team = if mode == "single" {
        String::new()
    } else {
        format!(
            "[[team]]\nname = \"qwen3\"\nmodel = \"{}\"\n[interface]\nlatent_dim = 16\nnum_latents = 2\nnum_heads = 2\n",
            expert.display()
        )
    };
    toml::from_str(&format!(
        r#"
        mode = "{mode}"
        [policy]
        model = "{}"
        chat = false
        lora = {{ rank = 2, alpha = 4.0 }}
        {team}
        [grpo]
        steps = 3
        prompts_per_step = 2
        num_generations = 2
        max_completion_length = 4
        save_steps = 1
        [eval]
        problems = 0
        [[tasks]]
        name = "chain_sum"
        "#,
        policy.display()
    ))
    .expect("config parses")
}

/// Run `config` in `out` for `steps` (on Flex), resuming when asked: the steps taken, or the
/// run's error as text.
#[allow(dead_code)] // not every test binary that includes this module runs a training
pub fn run_steps(
    config: &musketeers::run_config::RunConfig,
    out: &Path,
    steps: u64,
    resume: bool,
) -> Result<Vec<u64>, String> {
    let mut seen = Vec::new();
    musketeers::run::run::<burn::backend::Autodiff<burn_flex::Flex>>(
        config,
        out,
        Some(steps),
        resume,
        &Default::default(),
        &mut |r: &musketeers::train::StepReport| {
            seen.push(r.step);
            std::ops::ControlFlow::Continue(())
        },
    )
    .map(|_| seen)
    .map_err(|e| e.to_string())
}
