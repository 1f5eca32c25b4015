//! Tokenizers rebuilt from GGUF metadata, as a `tokenizers` pipeline:
//! - `tokenizer.ggml.model = gpt2`: byte-level BPE with its merges and the pre-tokenizer that
//!   `tokenizer.ggml.pre` names (llama.cpp's list: gpt-2, smollm, llama-bpe, qwen2, ...);
//! - `tokenizer.ggml.model = llama`: SentencePiece-style BPE with byte fallback, its merges
//!   derived from the token scores the way `transformers` converts SentencePiece models.

use crate::error::LmError;
use crate::gguf::{GgufFile, Value};
use crate::tokenizer::TextTokenizer;
use serde_json::{Value as Json, json};
use std::collections::HashMap;

/// llama.cpp's token types.
const CONTROL: u64 = 3;
const USER_DEFINED: u64 = 4;

/// The word-splitting regexes llama.cpp uses per `tokenizer.ggml.pre`.
const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn bad(file: &GgufFile, reason: String) -> LmError {
    LmError::BadGguf {
        path: file.path.clone(),
        reason,
    }
}

fn strings<'a>(file: &'a GgufFile, key: &str) -> Result<Vec<&'a str>, LmError> {
    file.require(key)?
        .as_array()
        .ok_or_else(|| bad(file, format!("{key} is not an array")))?
        .iter()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| bad(file, format!("{key} holds a non-string")))
        })
        .collect()
}

fn numbers(file: &GgufFile, key: &str, n: usize) -> Result<Vec<f64>, LmError> {
    match file.get(key) {
        None => Ok(vec![0.0; n]),
        Some(v) => {
            let items = v
                .as_array()
                .ok_or_else(|| bad(file, format!("{key} is not an array")))?;
            if items.len() != n {
                return Err(bad(
                    file,
                    format!("{key} has {} entries for {n} tokens", items.len()),
                ));
            }
            items
                .iter()
                .map(|v| {
                    v.as_f64()
                        .ok_or_else(|| bad(file, format!("{key} holds a non-number")))
                })
                .collect()
        }
    }
}

fn pre_tokenizer(file: &GgufFile, pre: &str) -> Result<Json, LmError> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": use_regex});
    let split = |regex: &str| json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false});
    Ok(match pre {
        "default" | "gpt2" | "gpt-2" => {
            json!({"type": "Sequence", "pretokenizers": [split(GPT2_REGEX), byte_level(false)]})
        }
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, split(GPT2_REGEX), byte_level(false)]}),
        "llama-bpe" | "llama3" | "llama-v3" => {
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_REGEX), byte_level(false)]})
        }
        "qwen2" => {
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_REGEX), byte_level(false)]})
        }
        other => {
            return Err(bad(
                file,
                format!(
                    "tokenizer.ggml.pre {other:?} is not supported (gpt-2, smollm, llama-bpe, qwen2)"
                ),
            ));
        }
    })
}

/// Merges for a SentencePiece vocabulary: every split of a token into two tokens, ranked by
/// the merged token's score (highest first), as `transformers`' SentencePiece converter does.
fn merges_from_scores(tokens: &[&str], scores: &[f64], types: &[u64]) -> Vec<Json> {
    let index: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    let mut merges: Vec<(usize, usize, usize)> = Vec::new();
    for (id, token) in tokens.iter().enumerate() {
        if types[id] == CONTROL || types[id] == 6 {
            continue;
        }
        for (split, _) in token.char_indices().skip(1) {
            let (left, right) = token.split_at(split);
            if let (Some(&l), Some(&r)) = (index.get(left), index.get(right)) {
                merges.push((id, l, r));
            }
        }
    }
    merges.sort_by(|a, b| {
        scores[b.0]
            .total_cmp(&scores[a.0])
            .then(a.1.cmp(&b.1))
            .then(a.2.cmp(&b.2))
    });
    merges
        .into_iter()
        .map(|(_, l, r)| json!([tokens[l], tokens[r]]))
        .collect()
}

/// The tokenizer a GGUF file describes, with its chat template and special tokens.
pub fn from_gguf(file: &GgufFile) -> Result<TextTokenizer, LmError> {
    let model = file.require_str("tokenizer.ggml.model")?;
    let tokens = strings(file, "tokenizer.ggml.tokens")?;
    let n = tokens.len();
    let types: Vec<u64> = numbers(file, "tokenizer.ggml.token_type", n)?
        .into_iter()
        .map(|t| t as u64)
        .collect();
    let id_of = |key: &str| file.get(key).and_then(Value::as_u64).map(|v| v as usize);
    let bos = id_of("tokenizer.ggml.bos_token_id").filter(|&i| i < n);
    let eos = id_of("tokenizer.ggml.eos_token_id").filter(|&i| i < n);
    let unk = id_of("tokenizer.ggml.unknown_token_id").filter(|&i| i < n);
    let vocab: serde_json::Map<String, Json> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i.into()))
        .collect();
    if vocab.len() != n {
        return Err(bad(
            file,
            "tokenizer.ggml.tokens has repeated tokens".into(),
        ));
    }
    let added = added_tokens(&tokens, &types);
    let (add_bos_default, tokenizer) = match model {
        "gpt2" => (false, gpt2_tokenizer(file, vocab, added)?),
        "llama" => (
            true,
            llama_tokenizer(file, &tokens, &types, vocab, added, unk)?,
        ),
        other => {
            return Err(bad(
                file,
                format!("tokenizer.ggml.model {other:?} is not supported (gpt2, llama)"),
            ));
        }
    };
    let mut tokenizer = tokenizer;
    let add_bos = flag(file, "tokenizer.ggml.add_bos_token", add_bos_default);
    if let (true, Some(bos)) = (add_bos, bos) {
        tokenizer["post_processor"] = bos_post_processor(tokens[bos], bos);
    }
    let inner: tokenizers::Tokenizer = tokenizer.to_string().parse().map_err(|e| {
        bad(
            file,
            format!("the tokenizer in its metadata does not build: {e}"),
        )
    })?;
    Ok(TextTokenizer::from_parts(
        inner,
        file.get("tokenizer.chat_template")
            .and_then(Value::as_str)
            .map(str::to_string),
        bos.map(|i| tokens[i].to_string()),
        eos.map(|i| tokens[i].to_string()),
    ))
}

/// A boolean metadata value, `default` when absent.
fn flag(file: &GgufFile, key: &str, default: bool) -> bool {
    file.get(key).and_then(Value::as_bool).unwrap_or(default)
}

/// The control and user-defined tokens, as `added_tokens` (control tokens are special).
fn added_tokens(tokens: &[&str], types: &[u64]) -> Vec<Json> {
    types
        .iter()
        .enumerate()
        .filter(|(_, t)| **t == CONTROL || **t == USER_DEFINED)
        .map(|(id, t)| {
            json!({"id": id, "content": tokens[id], "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": *t == CONTROL})
        })
        .collect()
}

/// `tokenizer.ggml.model = gpt2`: byte-level BPE with the file's merges and pre-tokenizer.
fn gpt2_tokenizer(
    file: &GgufFile,
    vocab: serde_json::Map<String, Json>,
    added: Vec<Json>,
) -> Result<Json, LmError> {
    let merges = strings(file, "tokenizer.ggml.merges")?;
    let pre = file
        .get("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let model = json!({"type": "BPE", "vocab": vocab, "merges": merges,
        "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
        "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
        "ignore_merges": pre == "llama-bpe" || pre == "llama3"});
    let tokenizer = json!({"version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added, "normalizer": null,
        "pre_tokenizer": pre_tokenizer(file, pre)?,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
        "model": model});
    Ok(tokenizer)
}

/// `tokenizer.ggml.model = llama`: SentencePiece-style BPE with byte fallback, its merges
/// derived from the token scores.
fn llama_tokenizer(
    file: &GgufFile,
    tokens: &[&str],
    types: &[u64],
    vocab: serde_json::Map<String, Json>,
    added: Vec<Json>,
    unk: Option<usize>,
) -> Result<Json, LmError> {
    let scores = numbers(file, "tokenizer.ggml.scores", tokens.len())?;
    let merges = merges_from_scores(tokens, &scores, types);
    let prefix = flag(file, "tokenizer.ggml.add_space_prefix", true);
    let mut normalizers =
        vec![json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"})];
    if prefix {
        normalizers.insert(0, json!({"type": "Prepend", "prepend": "\u{2581}"}));
    }
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let model = json!({"type": "BPE", "vocab": vocab, "merges": merges,
        "dropout": null, "unk_token": unk.map(|u| tokens[u]),
        "continuing_subword_prefix": null, "end_of_word_suffix": null,
        "fuse_unk": true, "byte_fallback": true, "ignore_merges": false});
    let tokenizer = json!({"version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": null, "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": model});
    Ok(tokenizer)
}

/// The post-processor that puts the bos token (`bos_text`, id `bos`) before every sequence.
fn bos_post_processor(bos_text: &str, bos: usize) -> Json {
    json!({"type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos_text, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": bos_text, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {bos_text: {"id": bos_text, "ids": [bos], "tokens": [bos_text]}}})
}
