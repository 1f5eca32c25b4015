//! Task files as records: JSON lines, or Parquet, the form Hugging Face datasets are published
//! in (`main/train-00000-of-00001.parquet`). Either way each record reaches its format's parser
//! as one JSON object whose `question` and `answer` keys may be renamed from the file's own
//! column names ([`Columns`]), so the four formats need one parser each, not one per file type.

use crate::error::TaskError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::Path;

/// Which of a file's columns (JSONL keys or Parquet columns) hold the question and the answer;
/// `None` keeps the name `question` / `answer`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Columns {
    pub question: Option<String>,
    pub answer: Option<String>,
}

impl Columns {
    pub fn question(&self) -> &str {
        self.question.as_deref().unwrap_or("question")
    }

    pub fn answer(&self) -> &str {
        self.answer.as_deref().unwrap_or("answer")
    }

    fn is_identity(&self) -> bool {
        self.question() == "question" && self.answer() == "answer"
    }

    /// The record with its mapped columns under the names the parsers read. The question must
    /// be text and the answer text, a number or absent (null): checked here, where the file's
    /// own column name is known, so the error names the column the user wrote.
    fn apply(&self, mut record: Map<String, Value>) -> Result<Map<String, Value>, String> {
        let question = record
            .remove(self.question())
            .ok_or_else(|| format!("column {:?} is missing", self.question()))?;
        if !question.is_string() {
            return Err(format!(
                "column {:?} must be text, found {}",
                self.question(),
                kind(&question)
            ));
        }
        let answer = record.remove(self.answer()).unwrap_or(Value::Null);
        if !(answer.is_string() || answer.is_number() || answer.is_null()) {
            return Err(format!(
                "column {:?} must be text or a number, found {}",
                self.answer(),
                kind(&answer)
            ));
        }
        record.insert("question".into(), question);
        record.insert("answer".into(), answer);
        Ok(record)
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "a struct",
    }
}

/// Whether `path` is read as Parquet (by its extension) rather than as JSON lines.
pub fn is_parquet(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
}

/// Every record of `path` through `parse`; the first bad record is an error naming the file and
/// the line (JSONL, counted from 1) or row (Parquet, counted from 0 as pandas and the Hugging
/// Face viewer count). An empty file is an error.
pub fn read_records<T>(
    path: &Path,
    columns: &Columns,
    parse: impl Fn(Value) -> Result<T, String>,
) -> Result<Vec<T>, TaskError> {
    let out = if is_parquet(path) {
        read_parquet(path, columns, parse)?
    } else {
        read_json_lines(path, columns, parse)?
    };
    if out.is_empty() {
        return Err(TaskError::Empty { path: path.into() });
    }
    Ok(out)
}

fn read_json_lines<T>(
    path: &Path,
    columns: &Columns,
    parse: impl Fn(Value) -> Result<T, String>,
) -> Result<Vec<T>, TaskError> {
    let text = std::fs::read_to_string(path).map_err(|source| TaskError::Io {
        path: path.into(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason| TaskError::BadLine {
            path: path.into(),
            line: i + 1,
            reason,
        };
        let value: Value = serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
        let value = if columns.is_identity() {
            value
        } else {
            match value {
                Value::Object(record) => Value::Object(columns.apply(record).map_err(bad)?),
                other => return Err(bad(format!("expected an object, found {}", kind(&other)))),
            }
        };
        out.push(parse(value).map_err(bad)?);
    }
    Ok(out)
}

#[cfg(feature = "parquet")]
fn read_parquet<T>(
    path: &Path,
    columns: &Columns,
    parse: impl Fn(Value) -> Result<T, String>,
) -> Result<Vec<T>, TaskError> {
    let records = parquet_file::records(path, columns)?;
    records
        .into_iter()
        .enumerate()
        .map(|(row, record)| {
            let bad = |reason| TaskError::BadRow {
                path: path.into(),
                row,
                reason,
            };
            parse(Value::Object(columns.apply(record).map_err(bad)?)).map_err(bad)
        })
        .collect()
}

#[cfg(not(feature = "parquet"))]
fn read_parquet<T>(
    path: &Path,
    _columns: &Columns,
    _parse: impl Fn(Value) -> Result<T, String>,
) -> Result<Vec<T>, TaskError> {
    Err(TaskError::BadFile {
        path: path.into(),
        reason: "Parquet support is not compiled in (feature `parquet` of musketeers-verify)"
            .into(),
    })
}

#[cfg(feature = "parquet")]
mod parquet_file {
    //! Rows of a Parquet file as JSON objects, through the `parquet` crate's record reader.
    //! Only the columns a task reads are decoded (question, answer, and `metadata` where the
    //! file has it), after their types are checked against the schema: the record reader's
    //! conversions are total for the types allowed here.

    use super::Columns;
    use crate::error::TaskError;
    use parquet::basic::{ConvertedType, LogicalType, Type as Physical};
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::schema::types::{Type, TypePtr};
    use serde_json::{Map, Value};
    use std::path::Path;
    use std::sync::Arc;

    /// The column Reasoning Gym's exports keep their scorer's settings in.
    const METADATA: &str = "metadata";

    pub(super) fn records(
        path: &Path,
        columns: &Columns,
    ) -> Result<Vec<Map<String, Value>>, TaskError> {
        let bad_file = |reason: String| TaskError::BadFile {
            path: path.into(),
            reason,
        };
        let file = std::fs::File::open(path).map_err(|source| TaskError::Io {
            path: path.into(),
            source,
        })?;
        let reader = SerializedFileReader::new(file)
            .map_err(|e| bad_file(format!("not a readable Parquet file: {e}")))?;
        let schema = reader.metadata().file_metadata().schema_descr_ptr();
        let fields = schema.root_schema().get_fields();
        let find = |name: &str| fields.iter().find(|f| f.name() == name).cloned();
        let missing = |name: &str| {
            let available: Vec<&str> = fields.iter().map(|f| f.name()).collect();
            bad_file(format!(
                "no column {name:?} (columns: {}); name the right one with `{}_column`",
                available.join(", "),
                if name == columns.question() {
                    "question"
                } else {
                    "answer"
                }
            ))
        };
        let question = find(columns.question()).ok_or_else(|| missing(columns.question()))?;
        check_type(&question, Want::Text).map_err(&bad_file)?;
        let mut projection: Vec<TypePtr> = vec![question];
        // An answer column is optional (propositional_logic has none), but a named one must exist.
        match find(columns.answer()) {
            Some(answer) => {
                check_type(&answer, Want::TextOrNumber).map_err(&bad_file)?;
                projection.push(answer);
            }
            None if columns.answer.is_some() => return Err(missing(columns.answer())),
            None => {}
        }
        if let Some(metadata) = find(METADATA) {
            projection.push(metadata);
        }
        let projection = Type::group_type_builder(schema.root_schema().name())
            .with_fields(projection)
            .build()
            .map_err(|e| bad_file(e.to_string()))?;

        // A corrupt file should surface as an error from the reader; should a decoder panic on
        // bytes it did not expect instead, the panic is turned into the same error rather than
        // taking the training run down with it.
        let decode = || -> Result<Vec<Map<String, Value>>, TaskError> {
            let rows = reader
                .get_row_iter(Some(projection))
                .map_err(|e| bad_file(e.to_string()))?;
            rows.enumerate()
                .map(|(row, decoded)| {
                    let decoded = decoded.map_err(|e| TaskError::BadRow {
                        path: path.into(),
                        row,
                        reason: e.to_string(),
                    })?;
                    match decoded.to_json_value() {
                        Value::Object(map) => Ok(map),
                        other => Err(TaskError::BadRow {
                            path: path.into(),
                            row,
                            reason: format!("decoded as {other}, not a record"),
                        }),
                    }
                })
                .collect()
        };
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)).unwrap_or_else(|_| {
            Err(bad_file(
                "the Parquet decoder failed on this file's bytes".into(),
            ))
        })
    }

    #[derive(Clone, Copy)]
    enum Want {
        Text,
        TextOrNumber,
    }

    fn check_type(field: &Arc<Type>, want: Want) -> Result<(), String> {
        let found = describe(field);
        let ok = field.is_primitive()
            && match field.get_physical_type() {
                Physical::BYTE_ARRAY => is_text(field),
                Physical::INT32 | Physical::INT64 | Physical::FLOAT | Physical::DOUBLE => {
                    matches!(want, Want::TextOrNumber) && is_plain_number(field)
                }
                _ => false,
            };
        if ok {
            Ok(())
        } else {
            let wanted = match want {
                Want::Text => "text (a string column)",
                Want::TextOrNumber => "text or a number",
            };
            Err(format!(
                "column {:?} must be {wanted}, found {found}",
                field.name()
            ))
        }
    }

    fn is_text(field: &Type) -> bool {
        let info = field.get_basic_info();
        matches!(info.logical_type_ref(), Some(LogicalType::String))
            || info.converted_type() == ConvertedType::UTF8
    }

    /// A number the JSON form carries as is: no date, time or decimal annotation.
    fn is_plain_number(field: &Type) -> bool {
        let info = field.get_basic_info();
        matches!(
            info.logical_type_ref(),
            None | Some(LogicalType::Integer(_))
        ) && matches!(
            info.converted_type(),
            ConvertedType::NONE
                | ConvertedType::INT_8
                | ConvertedType::INT_16
                | ConvertedType::INT_32
                | ConvertedType::INT_64
                | ConvertedType::UINT_8
                | ConvertedType::UINT_16
                | ConvertedType::UINT_32
                | ConvertedType::UINT_64
        )
    }

    fn describe(field: &Type) -> String {
        if !field.is_primitive() {
            return "a nested (group) column".into();
        }
        let info = field.get_basic_info();
        match info.logical_type_ref() {
            Some(logical) => format!("{:?} ({logical:?})", field.get_physical_type()),
            None => format!("{:?}", field.get_physical_type()),
        }
    }
}
