//! Plain question/answer JSON lines (`{"question": ..., "answer": ...}`), for a user's own data:
//! scored by exact match after normalisation (`qa-exact`) or as numbers (`qa-numeric`).

use crate::entry::Entry;
use crate::extract::numbers_match;
use serde::Deserialize;

/// Entries scored by [`normalize_text`] equality.
pub const EXACT: &str = "qa-exact";
/// Entries scored by numeric equality (GSM8K's comparison: `$1,080.0` equals `1080`).
pub const NUMERIC: &str = "qa-numeric";

#[derive(Debug, Deserialize)]
struct Row {
    question: String,
    /// A string, or a JSON number (written as the number's text).
    answer: serde_json::Value,
}

/// Parse one line; `dataset` is [`EXACT`] or [`NUMERIC`].
pub fn parse_line(line: &str, dataset: &'static str) -> Result<Entry, String> {
    let record: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    parse_record(record, dataset)
}

/// Parse one record (a JSONL line or a Parquet row, as JSON); `dataset` is [`EXACT`] or
/// [`NUMERIC`].
pub fn parse_record(record: serde_json::Value, dataset: &'static str) -> Result<Entry, String> {
    let row: Row = serde_json::from_value(record)
        .map_err(|e| format!("not a {{\"question\", \"answer\"}} object: {e}"))?;
    let answer = match row.answer {
        serde_json::Value::String(s) => s,
        serde_json::Value::Number(n) => n.to_string(),
        other => return Err(format!("answer must be a string or a number, got {other}")),
    };
    if answer.trim().is_empty() {
        return Err("answer is empty".into());
    }
    if dataset == NUMERIC && crate::extract::normalize_number(&answer).is_none() {
        return Err(format!("answer {answer:?} is not a number"));
    }
    Ok(Entry {
        question: row.question,
        answer: Some(answer),
        metadata: serde_json::json!({ "source_dataset": dataset }),
    })
}

/// Lower case, whitespace runs collapsed to one space, surrounding whitespace, quotes and a
/// trailing period removed: `"  Paris. "` and `paris` are the same answer.
pub fn normalize_text(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .join(" ")
        .trim_matches(|c: char| c == '"' || c == '\'' || c == '`')
        .trim_end_matches('.')
        .trim()
        .to_lowercase()
}

/// 1 when the candidate matches the entry's answer under `dataset`'s rule, else 0.
pub fn score(dataset: &str, answer: Option<&str>, entry: &Entry) -> f64 {
    let (Some(candidate), Some(oracle)) = (answer, entry.answer.as_deref()) else {
        return 0.0;
    };
    let right = if dataset == NUMERIC {
        numbers_match(candidate, oracle)
    } else {
        normalize_text(candidate) == normalize_text(oracle)
    };
    f64::from(u8::from(right))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_and_score() {
        let e = parse_line(
            r#"{"question":"Capital of France?","answer":"Paris"}"#,
            EXACT,
        )
        .expect("line");
        assert_eq!(score(EXACT, Some("  paris. "), &e), 1.0);
        assert_eq!(score(EXACT, Some("Lyon"), &e), 0.0);
        assert_eq!(score(EXACT, None, &e), 0.0);
        let n = parse_line(r#"{"question":"q","answer":1080}"#, NUMERIC).expect("number");
        assert_eq!(score(NUMERIC, Some("$1,080.0"), &n), 1.0);
        assert_eq!(score(NUMERIC, Some("108"), &n), 0.0);
        for bad in [
            r#"{"question":"q"}"#,
            r#"{"question":"q","answer":[1]}"#,
            r#"{"question":"q","answer":"  "}"#,
            "not json",
        ] {
            assert!(parse_line(bad, EXACT).is_err(), "{bad}");
        }
        let err = parse_line(r#"{"question":"q","answer":"ten"}"#, NUMERIC).expect_err("word");
        assert!(err.contains("not a number"), "{err}");
    }
}
