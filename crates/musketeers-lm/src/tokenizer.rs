//! Tokenizers and chat templates from a Hugging Face model directory.
//!
//! `tokenizer.json` goes through the `tokenizers` crate; the Jinja chat template of
//! `tokenizer_config.json` is rendered by `minijinja`, as the ecosystem renders it.

use crate::error::LmError;
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    chat_template: Option<String>,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab", &self.inner.get_vocab_size(true))
            .finish()
    }
}

/// A special token in `tokenizer_config.json`: a string or `{"content": ...}`.
fn token_string(value: Option<&serde_json::Value>) -> Option<String> {
    match value? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// The text of a word-level `tokenizer.json` over `n` ids where id `i` is the word `w{i}`
/// (unknown words map to `w0`): a tokenizer for models with random weights, in tests and
/// shape checks.
pub fn numbered_words_json(n: usize) -> String {
    let vocab: serde_json::Map<String, serde_json::Value> =
        (0..n).map(|i| (format!("w{i}"), i.into())).collect();
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "w0"}
    })
    .to_string()
}

impl TextTokenizer {
    /// Load `tokenizer.json` (and `tokenizer_config.json` when present) and check that every
    /// token id fits the model's vocabulary.
    pub fn load(dir: &Path, model_vocab: usize) -> Result<Self, LmError> {
        let path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| LmError::BadConfig {
            path: path.clone(),
            reason: format!("cannot load tokenizer: {e}"),
        })?;
        let vocab = inner.get_vocab_size(true);
        if vocab > model_vocab {
            return Err(LmError::BadConfig {
                path,
                reason: format!(
                    "tokenizer has {vocab} tokens but the model's vocab_size is {model_vocab}"
                ),
            });
        }
        let config_path = dir.join("tokenizer_config.json");
        let config: serde_json::Value = match std::fs::read_to_string(&config_path) {
            Ok(text) => serde_json::from_str(&text).map_err(|source| LmError::Json {
                path: config_path.clone(),
                source,
            })?,
            Err(_) => serde_json::Value::Null,
        };
        Ok(Self {
            inner,
            chat_template: config
                .get("chat_template")
                .and_then(|t| t.as_str())
                .map(str::to_string),
            bos_token: token_string(config.get("bos_token")),
            eos_token: token_string(config.get("eos_token")),
        })
    }

    /// A tokenizer built elsewhere (e.g. from GGUF metadata) with its chat template and the
    /// texts of its bos and eos tokens.
    pub fn from_parts(
        inner: tokenizers::Tokenizer,
        chat_template: Option<String>,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Self {
        Self {
            inner,
            chat_template,
            bos_token,
            eos_token,
        }
    }

    /// A tokenizer from the text of a `tokenizer.json` (e.g. one built in code for a model
    /// trained from scratch), with the text of its eos token.
    pub fn from_json(json: &str, eos_token: Option<String>) -> Result<Self, LmError> {
        let inner: tokenizers::Tokenizer = json
            .parse()
            .map_err(|e| LmError::BadInput(format!("not a tokenizer.json: {e}")))?;
        Ok(Self::from_parts(inner, None, None, eos_token))
    }

    /// How many tokens the vocabulary has, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, LmError> {
        self.inner
            .encode(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| LmError::BadInput(format!("cannot tokenize: {e}")))
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, LmError> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| LmError::BadInput(format!("cannot decode: {e}")))
    }

    /// Write `tokenizer.json` and `tokenizer_config.json` (chat template, bos and eos) into
    /// `dir`, as a Hugging Face directory holds them.
    pub fn save(&self, dir: &Path) -> Result<(), LmError> {
        let path = dir.join("tokenizer.json");
        self.inner
            .save(&path, true)
            .map_err(|e| LmError::BadInput(format!("{}: cannot write: {e}", path.display())))?;
        let mut config = serde_json::Map::new();
        let fields = [
            ("chat_template", &self.chat_template),
            ("bos_token", &self.bos_token),
            ("eos_token", &self.eos_token),
        ];
        for (key, value) in fields {
            if let Some(value) = value {
                config.insert(key.into(), value.clone().into());
            }
        }
        let path = dir.join("tokenizer_config.json");
        let text = serde_json::to_string_pretty(&config).map_err(|source| LmError::Json {
            path: path.clone(),
            source,
        })?;
        std::fs::write(&path, text).map_err(|source| LmError::Io { path, source })
    }

    /// The id of the eos token named in `tokenizer_config.json`, if any.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token
            .as_deref()
            .and_then(|t| self.inner.token_to_id(t))
    }

    /// Render the chat template over `messages`.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, LmError> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or_else(|| LmError::BadInput("the tokenizer has no chat_template".into()))?;
        let mut env = minijinja::Environment::new();
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    message,
                ))
            },
        );
        env.add_template("chat", template)
            .map_err(|e| LmError::BadInput(format!("chat_template does not parse: {e}")))?;
        let context = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
        };
        env.get_template("chat")
            .and_then(|t| t.render(context))
            .map_err(|e| LmError::BadInput(format!("chat_template failed: {e}")))
    }
}
