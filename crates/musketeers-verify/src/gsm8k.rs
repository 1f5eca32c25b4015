//! GSM8K: grade-school math word problems with a numeric final answer after `####`.

use crate::entry::Entry;
use crate::error::TaskError;
use crate::extract::numbers_match;
use serde::Deserialize;

pub const NAME: &str = "gsm8k";

/// A row of the GSM8K JSONL files: the question and a worked solution ending `#### N`.
#[derive(Debug, Clone, Deserialize)]
pub struct Row {
    pub question: String,
    pub answer: String,
}

/// Turn a raw GSM8K row into an entry whose `answer` is the final number.
pub fn entry_from_row(row: Row) -> Result<Entry, String> {
    let (_, final_answer) = row
        .answer
        .rsplit_once("####")
        .ok_or("answer has no `#### N` final line")?;
    let final_answer = final_answer.trim().replace(',', "");
    if final_answer.is_empty() {
        return Err("nothing after `####`".into());
    }
    Ok(Entry {
        question: row.question,
        answer: Some(final_answer),
        metadata: serde_json::json!({ "source_dataset": NAME, "solution": row.answer }),
    })
}

/// Parse one JSONL line of GSM8K (as [`parse_record`] parses it, the one parser of a row).
pub fn parse_line(line: &str) -> Result<Entry, String> {
    let record: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not a GSM8K row: {e}"))?;
    parse_record(record)
}

/// Parse one GSM8K record (a JSONL line or a Parquet row, as JSON).
pub fn parse_record(record: serde_json::Value) -> Result<Entry, String> {
    let row: Row = serde_json::from_value(record).map_err(|e| format!("not a GSM8K row: {e}"))?;
    entry_from_row(row)
}

/// 1 when the candidate equals the final answer as a number, else 0.
pub fn score(answer: Option<&str>, entry: &Entry) -> f64 {
    match (answer, entry.answer.as_deref()) {
        (Some(a), Some(o)) if numbers_match(a, o) => 1.0,
        _ => 0.0,
    }
}

/// Read a GSM8K file (JSONL, or Parquet as Hugging Face publishes it); a bad record is an
/// error naming the file and its line or row.
pub fn load(path: &std::path::Path) -> Result<Vec<Entry>, TaskError> {
    crate::records::read_records(path, &Default::default(), parse_record)
}
