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
