//! The OpenAI API's request and response shapes that `musketeers serve` speaks, and the
//! checks that turn a bad request into an error naming the field.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Bounds on what a request may ask for.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_tokens: usize,
    pub max_n: usize,
    /// Prompt length in characters (before tokenizing).
    pub max_prompt_chars: usize,
    pub max_stop: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_tokens: 1024,
            max_n: 16,
            max_prompt_chars: 32_768,
            max_stop: 4,
        }
    }
}

/// An error the client caused (400/401/404/413/...) or the server's state (503), in the
/// OpenAI error object's terms.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        let param = param.into();
        Self {
            status: 400,
            message: format!("{param}: {}", message.into()),
            kind: "invalid_request_error",
            param: Some(param),
            code: None,
        }
    }

    pub fn with_status(status: u16, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
        }
    }

    /// The JSON body: `{"error": {"message", "type", "param", "code"}}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {
            "message": self.message, "type": self.kind,
            "param": self.param, "code": self.code,
        }})
    }
}

/// `stop`: one string or a list of them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    pub role: String,
    pub content: MessageContent,
    #[serde(default)]
    pub name: Option<String>,
}

/// A message's content: text, or text parts (`[{"type": "text", "text": ...}]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: String,
}

/// The sampling fields both endpoints share.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub max_tokens: Option<i64>,
    #[serde(default)]
    pub max_completion_tokens: Option<i64>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub n: Option<i64>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub stream_options: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: Prompt,
    #[serde(default)]
    pub max_tokens: Option<i64>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub n: Option<i64>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub stream_options: Option<serde_json::Value>,
}

/// `prompt`: a string or a list of one string.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    One(String),
    Many(Vec<String>),
}

/// What the engine is asked to do, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    pub max_tokens: Option<usize>,
    pub temperature: f32,
    pub top_p: Option<f32>,
    pub n: usize,
    pub stop: Vec<String>,
    pub seed: Option<u64>,
    pub stream: bool,
}

/// Parse a JSON body into `T`, naming the field a type error is in.
pub fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::invalid("body", format!("not UTF-8 ({e})")))?;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let param = if path == "." {
            "body".to_string()
        } else {
            path
        };
        ApiError::invalid(param, e.into_inner().to_string())
    })?;
    deserializer
        .end()
        .map_err(|e| ApiError::invalid("body", format!("trailing data ({e})")))?;
    Ok(value)
}

#[allow(clippy::too_many_arguments)]
fn sampling(
    limits: &Limits,
    max_tokens: Option<(&str, i64)>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    n: Option<i64>,
    stop: Option<&Stop>,
    seed: Option<i64>,
    stream: Option<bool>,
) -> Result<Sampling, ApiError> {
    let max_tokens = match max_tokens {
        None => None,
        Some((name, v)) if v < 1 || v as u64 > limits.max_tokens as u64 => {
            return Err(ApiError::invalid(
                name,
                format!("{v} is not in 1..={}", limits.max_tokens),
            ));
        }
        Some((_, v)) => Some(v as usize),
    };
    let temperature = match temperature {
        None => 1.0,
        Some(t) if t.is_finite() && (0.0..=2.0).contains(&t) => t as f32,
        Some(t) => {
            return Err(ApiError::invalid(
                "temperature",
                format!("{t} is not in [0, 2]"),
            ));
        }
    };
    let top_p = match top_p {
        None => None,
        Some(p) if p.is_finite() && p > 0.0 && p <= 1.0 => Some(p as f32),
        Some(p) => return Err(ApiError::invalid("top_p", format!("{p} is not in (0, 1]"))),
    };
    let n = match n {
        None => 1,
        Some(n) if n >= 1 && n as u64 <= limits.max_n as u64 => n as usize,
        Some(n) => {
            return Err(ApiError::invalid(
                "n",
                format!("{n} is not in 1..={}", limits.max_n),
            ));
        }
    };
    let stop = match stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    if stop.len() > limits.max_stop {
        return Err(ApiError::invalid(
            "stop",
            format!("{} stop strings; at most {}", stop.len(), limits.max_stop),
        ));
    }
    if let Some(bad) = stop.iter().find(|s| s.is_empty() || s.len() > 256) {
        return Err(ApiError::invalid(
            "stop",
            format!("{bad:?}: a stop string has 1 to 256 bytes"),
        ));
    }
    let seed = match seed {
        None => None,
        Some(s) if s >= 0 => Some(s as u64),
        Some(s) => return Err(ApiError::invalid("seed", format!("{s} is negative"))),
    };
    Ok(Sampling {
        max_tokens,
        temperature,
        top_p,
        n,
        stop,
        seed,
        stream: stream.unwrap_or(false),
    })
}

/// A chat request's user question (what the run's prompt template wraps) and its sampling.
pub fn check_chat(request: &ChatRequest, limits: &Limits) -> Result<(String, Sampling), ApiError> {
    if request.messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "at least one message is needed",
        ));
    }
    let mut question = String::new();
    for (i, message) in request.messages.iter().enumerate() {
        if !["system", "user", "assistant", "developer"].contains(&message.role.as_str()) {
            return Err(ApiError::invalid(
                format!("messages[{i}].role"),
                format!(
                    "{:?} is not system, developer, user or assistant",
                    message.role
                ),
            ));
        }
        let text = match &message.content {
            MessageContent::Text(t) => t.clone(),
            MessageContent::Parts(parts) => {
                if let Some(bad) = parts.iter().position(|p| p.kind != "text") {
                    return Err(ApiError::invalid(
                        format!("messages[{i}].content[{bad}].type"),
                        "only text parts are supported",
                    ));
                }
                parts.iter().map(|p| p.text.as_str()).collect()
            }
        };
        if message.role == "user" {
            question = text;
        }
    }
    if request.messages.last().map(|m| m.role.as_str()) != Some("user") {
        return Err(ApiError::invalid(
            "messages",
            "the last message must be the user's question",
        ));
    }
    if question.chars().count() > limits.max_prompt_chars {
        return Err(ApiError::invalid(
            "messages",
            format!(
                "the question is longer than {} characters",
                limits.max_prompt_chars
            ),
        ));
    }
    if question.trim().is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "the user's question is empty",
        ));
    }
    let max_tokens = match (request.max_completion_tokens, request.max_tokens) {
        (Some(v), _) => Some(("max_completion_tokens", v)),
        (None, Some(v)) => Some(("max_tokens", v)),
        (None, None) => None,
    };
    let sampling = sampling(
        limits,
        max_tokens,
        request.temperature,
        request.top_p,
        request.n,
        request.stop.as_ref(),
        request.seed,
        request.stream,
    )?;
    Ok((question, sampling))
}

/// A completion request's prompt text and its sampling.
pub fn check_completion(
    request: &CompletionRequest,
    limits: &Limits,
) -> Result<(String, Sampling), ApiError> {
    let prompt = match &request.prompt {
        Prompt::One(p) => p.clone(),
        Prompt::Many(v) if v.len() == 1 => v[0].clone(),
        Prompt::Many(v) => {
            return Err(ApiError::invalid(
                "prompt",
                format!("{} prompts; send one per request", v.len()),
            ));
        }
    };
    if prompt.is_empty() {
        return Err(ApiError::invalid("prompt", "the prompt is empty"));
    }
    if prompt.chars().count() > limits.max_prompt_chars {
        return Err(ApiError::invalid(
            "prompt",
            format!("longer than {} characters", limits.max_prompt_chars),
        ));
    }
    let sampling = sampling(
        limits,
        request.max_tokens.map(|v| ("max_tokens", v)),
        request.temperature,
        request.top_p,
        request.n,
        request.stop.as_ref(),
        request.seed,
        request.stream,
    )?;
    Ok((prompt, sampling))
}

/// What the team did for a request: the extra response field `musketeers`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TeamReport {
    /// `single`, `fused`, `hard-route` or `text-collab`.
    pub system: String,
    /// Share of the interface's attention per expert, by name (sums to 1; empty without
    /// an interface).
    pub utilization: BTreeMap<String, f32>,
    /// Entropy of that share, natural log, and divided by ln(experts).
    pub routing_entropy: Option<f32>,
    pub routing_entropy_normalized: Option<f32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

/// OpenAI's `finish_reason`.
pub fn finish_reason(reason: musketeers_lm::generate::FinishReason) -> &'static str {
    use musketeers_lm::generate::FinishReason;
    match reason {
        FinishReason::Eos | FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<(String, Sampling), ApiError> {
        check_chat(&parse::<ChatRequest>(body.as_bytes())?, &Limits::default())
    }

    #[test]
    fn a_chat_request_gives_its_last_user_message_and_sampling() {
        let (q, s) = chat(
            r#"{"model": "m", "messages": [{"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "2+2?"}]}],
            "max_tokens": 8, "temperature": 0, "n": 2, "stop": "\n", "seed": 3}"#,
        )
        .expect("valid");
        assert_eq!(q, "2+2?");
        assert_eq!(s.max_tokens, Some(8));
        assert_eq!((s.temperature, s.n, s.seed), (0.0, 2, Some(3)));
        assert_eq!(s.stop, vec!["\n".to_string()]);
    }

    #[test]
    fn bad_fields_are_named() {
        for (body, param) in [
            (r#"{"model": "m", "messages": []}"#, "messages"),
            (
                r#"{"model": "m", "messages": [{"role": "user", "content": 3}]}"#,
                "messages[0].content",
            ),
            (
                r#"{"model": "m", "messages": [{"role": "robot", "content": "x"}]}"#,
                "messages[0].role",
            ),
            (
                r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}"#,
                "max_tokens",
            ),
            (
                r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": "8"}"#,
                "max_tokens",
            ),
            (
                r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 1000}"#,
                "n",
            ),
            (
                r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 9}"#,
                "temperature",
            ),
            (
                r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "frobnicate": 1}"#,
                "frobnicate",
            ),
            (
                r#"{"messages": [{"role": "user", "content": "x"}]}"#,
                "body",
            ),
        ] {
            let error = chat(body).expect_err(body);
            assert_eq!(error.status, 400, "{body}");
            assert_eq!(
                error.param.as_deref(),
                Some(param),
                "{body}: {}",
                error.message
            );
        }
        let error = parse::<ChatRequest>(b"{\"model\": \"\xff\"}").expect_err("utf-8");
        assert_eq!(error.param.as_deref(), Some("body"));
    }
}
