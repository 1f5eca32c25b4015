//! Tokenizers built from GGUF metadata against llama.cpp's own vocabulary test vectors
//! (`ggml-vocab-*.gguf` with `.inp`/`.out`, from the llama-cpp-python source distribution;
//! `cargo xtask models fetch llama-vocab`). Skips, saying why, when they are absent.

use musketeers_lm::catalog;
use musketeers_lm::gguf::GgufFile;
use musketeers_lm::tokenizer_gguf::from_gguf;

const SEPARATOR: &str = "\n__ggml_vocab_test__\n";

#[allow(clippy::print_stderr)] // the skip reason and the per-vocabulary tally belong in the output
fn check(vocab: &str) {
    let dir = catalog::models_dir().join("llama-vocab");
    let path = dir.join(format!("ggml-vocab-{vocab}.gguf"));
    if !path.exists() {
        musketeers_testkit::skip(format_args!(
            "{} is absent (run `cargo xtask models fetch llama-vocab`)",
            path.display()
        ));
        return;
    }
    let file = GgufFile::open(&path).expect("vocabulary parses");
    let tokenizer = from_gguf(&file).expect("tokenizer builds");
    let inputs = std::fs::read_to_string(path.with_extension("gguf.inp")).expect(".inp");
    let outputs = std::fs::read_to_string(path.with_extension("gguf.out")).expect(".out");
    let mut inputs: Vec<&str> = inputs.split(SEPARATOR).collect();
    // Every case, the last included, is followed by a separator.
    if inputs.last() == Some(&"") {
        inputs.pop();
    }
    let outputs: Vec<Vec<u32>> = outputs
        .lines()
        .map(|l| {
            l.split_whitespace()
                .map(|t| t.parse().expect("id"))
                .collect()
        })
        .collect();
    assert_eq!(
        inputs.len(),
        outputs.len(),
        "{vocab}: .inp and .out disagree"
    );
    let mut failures = Vec::new();
    for (text, want) in inputs.iter().zip(&outputs) {
        let got = tokenizer.encode(text, false).expect("encode");
        if &got != want {
            failures.push(format!("{text:?}: got {got:?}, want {want:?}"));
        }
    }
    eprintln!(
        "{vocab}: {} of {} cases match",
        inputs.len() - failures.len(),
        inputs.len()
    );
    assert!(failures.is_empty(), "{vocab}:\n{}", failures.join("\n"));
}

#[test]
fn gpt2() {
    check("gpt-2");
}

#[test]
fn llama_bpe() {
    check("llama-bpe");
}

#[test]
fn qwen2() {
    check("qwen2");
}

#[test]
fn llama_spm() {
    check("llama-spm");
}
