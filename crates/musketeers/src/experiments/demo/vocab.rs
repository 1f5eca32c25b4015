//! Tokenizers for models trained from scratch: word-level and character-level, built from the
//! text they will see, written as ordinary `tokenizer.json` so that the models they belong to
//! load as any Hugging Face directory does.

use musketeers_lm::tokenizer::TextTokenizer;
use serde_json::{Value, json};
use std::collections::BTreeSet;

use crate::error::TrainError;

pub const UNK: &str = "[UNK]";
pub const EOS: &str = "[EOS]";
/// The answer tags are single tokens of the policy's vocabulary.
pub const ANSWER_OPEN: &str = "<answer>";
pub const ANSWER_CLOSE: &str = "</answer>";

/// How text is cut before the vocabulary lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segmentation {
    /// Runs of word characters and runs of punctuation (`tokenizers`' `Whitespace`).
    Words,
    /// Runs of anything but whitespace, punctuation kept on its word
    /// (`tokenizers`' `WhitespaceSplit`): "insects?" is one token.
    WhitespaceSplit,
    /// Every character, whitespace included.
    Characters,
}

impl Segmentation {
    fn pieces(self, text: &str) -> Vec<String> {
        match self {
            Self::Characters => text.chars().map(String::from).collect(),
            Self::WhitespaceSplit => text.split_whitespace().map(String::from).collect(),
            Self::Words => {
                let mut out = Vec::new();
                let mut current = String::new();
                let mut current_is_word = false;
                for c in text.chars() {
                    if c.is_whitespace() {
                        if !current.is_empty() {
                            out.push(std::mem::take(&mut current));
                        }
                        continue;
                    }
                    let is_word = c.is_alphanumeric() || c == '_';
                    if !current.is_empty() && is_word != current_is_word {
                        out.push(std::mem::take(&mut current));
                    }
                    current_is_word = is_word;
                    current.push(c);
                }
                if !current.is_empty() {
                    out.push(current);
                }
                out
            }
        }
    }
}

/// A tokenizer whose vocabulary is every piece of `corpus` (in first-seen order after the
/// special tokens) plus `extra` tokens that are matched whole before segmentation.
pub fn build<'a>(
    corpus: impl IntoIterator<Item = &'a str>,
    segmentation: Segmentation,
    extra: &[&str],
) -> Result<TextTokenizer, TrainError> {
    let mut seen = BTreeSet::new();
    let mut vocab: Vec<String> = vec![UNK.into(), EOS.into()];
    vocab.extend(extra.iter().map(|s| s.to_string()));
    seen.extend(vocab.iter().cloned());
    for text in corpus {
        for piece in segmentation.pieces(text) {
            if seen.insert(piece.clone()) {
                vocab.push(piece);
            }
        }
    }
    let ids: serde_json::Map<String, Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i.into()))
        .collect();
    let added: Vec<Value> = vocab
        .iter()
        .enumerate()
        .take(2 + extra.len())
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": i < 2})
        })
        .collect();
    let pre_tokenizer = match segmentation {
        Segmentation::Words => json!({"type": "Whitespace"}),
        Segmentation::WhitespaceSplit => json!({"type": "WhitespaceSplit"}),
        Segmentation::Characters => json!({"type": "Split",
            "pattern": {"Regex": "[\\s\\S]"}, "behavior": "Isolated", "invert": false}),
    };
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": pre_tokenizer, "post_processor": null,
        // Pieces are joined as they are: answers read back as written ("-11", not "- 11").
        "decoder": {"type": "Fuse"},
        "model": {"type": "WordLevel", "vocab": ids, "unk_token": UNK}
    });
    Ok(TextTokenizer::from_json(
        &tokenizer.to_string(),
        Some(EOS.into()),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_split_as_the_whitespace_pre_tokenizer_does() {
        let tok = build(["What is 2 - 5 =?"], Segmentation::Words, &[ANSWER_OPEN]).expect("tok");
        let ids = tok.encode("<answer>-11</answer>", false).expect("encode");
        // <answer> is whole; "-" known; "11" and "</" + "answer" + ">" unknown here.
        assert_eq!(ids[0], 2);
        let text = tok
            .decode(&tok.encode("2 - 5", false).expect("e"), true)
            .expect("d");
        assert_eq!(text, "2-5");
        assert_eq!(
            Segmentation::Words.pieces("a+b=?  c_d"),
            ["a", "+", "b", "=?", "c_d"]
        );
    }

    #[test]
    fn characters_keep_whitespace_and_unknowns_map_to_unk() {
        let tok = build(["ab \n"], Segmentation::Characters, &[]).expect("tok");
        let ids = tok.encode("a b\nz", false).expect("encode");
        assert_eq!(ids, vec![2, 4, 3, 5, 0]);
        assert_eq!(tok.eos_token_id(), Some(1));
    }
}
