//! Tokenizer loading, vocabulary checks and chat-template rendering on a hand-written
//! word-level tokenizer (no download).

use musketeers_lm::tokenizer::{ChatMessage, TextTokenizer};

const TOKENIZER: &str = r#"{
  "version": "1.0", "truncation": null, "padding": null,
  "added_tokens": [
    {"id": 0, "content": "<|im_start|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 1, "content": "<|im_end|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
  ],
  "normalizer": null,
  "pre_tokenizer": {"type": "Whitespace"},
  "post_processor": null, "decoder": null,
  "model": {"type": "WordLevel", "vocab": {"<|im_start|>": 0, "<|im_end|>": 1, "user": 2, "assistant": 3, "hello": 4, "world": 5, "[UNK]": 6}, "unk_token": "[UNK]"}
}"#;

const CONFIG: &str = r#"{
  "eos_token": "<|im_end|>",
  "chat_template": "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
}"#;

fn dir(name: &str, config: Option<&str>) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("musketeers-tok-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("tokenizer.json"), TOKENIZER).expect("write");
    if let Some(config) = config {
        std::fs::write(dir.join("tokenizer_config.json"), config).expect("write");
    }
    dir
}

#[test]
fn encodes_decodes_and_renders_chatml() {
    let dir = dir("ok", Some(CONFIG));
    let tok = TextTokenizer::load(&dir, 7).expect("load");
    assert_eq!(
        tok.encode("hello world", false).expect("encode"),
        vec![4, 5]
    );
    assert_eq!(tok.encode("hello moon", false).expect("encode"), vec![4, 6]);
    assert_eq!(tok.eos_token_id(), Some(1));
    let text = tok
        .apply_chat_template(
            &[ChatMessage {
                role: "user".into(),
                content: "hello".into(),
            }],
            true,
        )
        .expect("template");
    assert_eq!(
        text,
        "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        tok.encode(&text, false).expect("encode"),
        vec![0, 2, 4, 1, 0, 3]
    );
    assert_eq!(tok.decode(&[4, 1, 5], true).expect("decode"), "hello world");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn vocabulary_mismatch_and_missing_template_are_errors() {
    let dir = dir("small", None);
    let err = TextTokenizer::load(&dir, 5)
        .expect_err("7 tokens do not fit 5")
        .to_string();
    assert!(
        err.contains("tokenizer.json") && err.contains("vocab_size is 5"),
        "{err}"
    );
    let tok = TextTokenizer::load(&dir, 7).expect("load");
    assert!(tok.apply_chat_template(&[], true).is_err());
    std::fs::write(dir.join("tokenizer.json"), "{ not json").expect("write");
    assert!(TextTokenizer::load(&dir, 7).is_err());
    std::fs::remove_dir_all(&dir).ok();
}
