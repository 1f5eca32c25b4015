//! `musketeers verify score`: one JSON result per input line, never aborting on a bad line.

use musketeers_verify::{Entry, gsm8k, score_answer, score_completion};
use rayon::prelude::*;
use serde::Deserialize;
use serde_json::{Value, json};

/// One line of the input: a dataset name, an entry, and either an extracted `answer` or a
/// raw `completion`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreLine {
    pub dataset: String,
    pub entry: Value,
    #[serde(default)]
    pub answer: Option<Value>,
    #[serde(default)]
    pub completion: Option<String>,
}

/// Score one input line: `{"score": f}` or `{"error": message}`.
pub fn score_line(line: &str) -> Value {
    match try_score_line(line) {
        Ok(score) => json!({ "score": score }),
        Err(message) => json!({ "error": message }),
    }
}

fn try_score_line(line: &str) -> Result<f64, String> {
    let input: ScoreLine =
        serde_json::from_str(line).map_err(|e| format!("bad input line: {e}"))?;
    let entry = if input.dataset == gsm8k::NAME && input.entry.get("metadata").is_none() {
        let row: gsm8k::Row =
            serde_json::from_value(input.entry).map_err(|e| format!("bad GSM8K entry: {e}"))?;
        gsm8k::entry_from_row(row).map_err(|e| format!("bad GSM8K entry: {e}"))?
    } else {
        serde_json::from_value::<Entry>(input.entry).map_err(|e| format!("bad entry: {e}"))?
    };
    let score = match (input.answer, input.completion) {
        (Some(_), Some(_)) => {
            return Err("give either \"answer\" or \"completion\", not both".into());
        }
        (None, Some(completion)) => score_completion(&input.dataset, &completion, &entry),
        (Some(Value::String(answer)), None) => score_answer(&input.dataset, Some(&answer), &entry),
        (Some(Value::Null) | None, None) => score_answer(&input.dataset, None, &entry),
        (Some(other), None) => {
            return Err(format!("\"answer\" must be a string or null, got {other}"));
        }
    };
    score.map_err(|e| e.to_string())
}

/// Score many lines in parallel, keeping their order.
pub fn score_lines(lines: &[String]) -> Vec<Value> {
    lines.par_iter().map(|line| score_line(line)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_answers_completions_and_reports_errors() {
        let entry = r#"{"question":"q","answer":"42","metadata":{}}"#;
        let ok = format!(r#"{{"dataset":"gcd","entry":{entry},"answer":"42"}}"#);
        assert_eq!(score_line(&ok), json!({"score": 1.0}));
        let completion = format!(
            r#"{{"dataset":"gcd","entry":{entry},"completion":"so <answer> 42 </answer>"}}"#
        );
        assert_eq!(score_line(&completion), json!({"score": 1.0}));
        let null = format!(r#"{{"dataset":"gcd","entry":{entry},"answer":null}}"#);
        assert_eq!(score_line(&null), json!({"score": 0.0}));
        let gsm = r##"{"dataset":"gsm8k","entry":{"question":"q","answer":"x\n#### 1,080"},"completion":"\\boxed{1080}"}"##;
        assert_eq!(score_line(gsm), json!({"score": 1.0}));
        for bad in [
            "{not json",
            r#"{"dataset":"nope","entry":{"question":"q","answer":"1"},"answer":"1"}"#,
        ] {
            assert!(score_line(bad).get("error").is_some(), "{bad}");
        }
    }
}
