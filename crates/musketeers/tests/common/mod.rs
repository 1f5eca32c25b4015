//! The test kit of this crate's three test binaries (`backends`, `suite`, `data_parallel`):
//! fixture models with a word tokenizer, the one tiny run config every run test starts from,
//! and running it. It lives here rather than in `musketeers-testkit` because it builds
//! `musketeers` and `musketeers_lm` types, and the testkit cannot depend on the crates whose
//! tests depend on it.
#![allow(dead_code)] // each test binary uses a part of it

use musketeers::run_config::RunConfig;
use musketeers_lm::tokenizer::TextTokenizer;
use std::path::{Path, PathBuf};

pub use musketeers_testkit::tiny_model;

/// The tiny fixture models' vocabulary size.
pub const VOCAB: usize = 96;

/// A word-level tokenizer over the fixtures' 96 ids (id i is "w{i}"), written into `dir`.
pub fn word_tokenizer(dir: &Path) -> TextTokenizer {
    let json = musketeers_lm::tokenizer::numbered_words_json(VOCAB);
    std::fs::write(dir.join("tokenizer.json"), json).expect("write tokenizer.json");
    TextTokenizer::load(dir, VOCAB).expect("tokenizer")
}

/// A copy of a tiny random-weight fixture model under `into`, with the word tokenizer, so the
/// run loop can load it like any model directory.
pub fn fixture_with_tokenizer(name: &str, into: &Path) -> PathBuf {
    let src = tiny_model(name);
    let dir = into.join(name);
    std::fs::create_dir_all(&dir).expect("dir");
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(file), dir.join(file)).expect("copy");
    }
    word_tokenizer(&dir);
    dir
}

/// The tiny run every run test starts from: a fused llama-gqa policy with one Qwen3 expert,
/// three steps of 2 prompts x 2 completions of at most 4 tokens, a checkpoint every step, no
/// held-out evaluation, chain_sum. `fixture:NAME` is a fixture model (see [`tiny_run_table`]).
const TINY_RUN: &str = r#"
mode = "fused"
[policy]
model = "fixture:llama-gqa"
chat = false
lora = { rank = 2, alpha = 4.0 }
[[team]]
name = "qwen3"
model = "fixture:qwen3-qk-norm"
[interface]
latent_dim = 16
num_latents = 2
num_heads = 2
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
"#;

/// The tiny run with `patch` (TOML) merged over it: tables merge key by key, any other value
/// (arrays such as `team` and `tasks` included) replaces the tiny run's. Every string
/// `fixture:NAME` becomes a copy of that fixture model under `temp`, with the word tokenizer.
pub fn tiny_run_table(temp: &Path, patch: &str) -> toml::Table {
    let mut table: toml::Table = toml::from_str(TINY_RUN).expect("the tiny run parses");
    let patch: toml::Table = toml::from_str(patch).expect("the patch parses");
    merge(&mut table, patch);
    let mut value = toml::Value::Table(table);
    resolve_fixtures(&mut value, temp);
    match value {
        toml::Value::Table(table) => table,
        _ => unreachable!("a table stays a table"),
    }
}

/// [`tiny_run_table`] as a run config.
pub fn tiny_run(temp: &Path, patch: &str) -> RunConfig {
    toml::Value::Table(tiny_run_table(temp, patch))
        .try_into()
        .expect("the patched tiny run is a run config")
}

/// [`tiny_run_table`] written to `temp/name`, for the CLI; returns the path.
pub fn write_tiny_run(temp: &Path, name: &str, patch: &str) -> PathBuf {
    let path = temp.join(name);
    let text = toml::to_string(&tiny_run_table(temp, patch)).expect("TOML");
    std::fs::write(&path, text).expect("write the run config");
    path
}

/// The tiny run as it is (`fused`), or without its team (`single`).
pub fn tiny_run_config(temp: &Path, mode: &str) -> RunConfig {
    match mode {
        "single" => tiny_run(temp, "mode = \"single\"\nteam = []"),
        mode => tiny_run(temp, &format!("mode = \"{mode}\"")),
    }
}

fn merge(base: &mut toml::Table, patch: toml::Table) {
    for (key, value) in patch {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base)), toml::Value::Table(patch)) => merge(base, patch),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

fn resolve_fixtures(value: &mut toml::Value, temp: &Path) {
    match value {
        toml::Value::String(text) => {
            if let Some(name) = text.strip_prefix("fixture:") {
                *text = fixture_with_tokenizer(name, temp).display().to_string();
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(|v| resolve_fixtures(v, temp)),
        toml::Value::Table(table) => table
            .iter_mut()
            .for_each(|(_, v)| resolve_fixtures(v, temp)),
        _ => {}
    }
}

/// Run `config` in `out` for `steps` (`None`: the config's), on Flex, resuming when asked: the steps taken, or the
/// run's error as text.
pub fn run_steps(
    config: &RunConfig,
    out: &Path,
    steps: impl Into<Option<u64>>,
    resume: bool,
) -> Result<Vec<u64>, String> {
    let mut seen = Vec::new();
    musketeers::run::run::<burn::backend::Autodiff<burn_flex::Flex>>(
        config,
        out,
        steps.into(),
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
