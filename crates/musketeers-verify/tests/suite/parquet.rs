//! Parquet task files (written by pyarrow: `scripts/parquet_fixtures.py`) load as the JSONL
//! beside them does, under every codec pyarrow writes; bad files are errors naming the file,
//! column and row, never a panic.

use musketeers_verify::records::Columns;
use musketeers_verify::task::{FileFormat, FileTask, TaskError};
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parquet")
        .join(name)
}

fn renamed() -> Columns {
    Columns {
        question: Some("prompt".into()),
        answer: Some("target".into()),
    }
}

#[test]
fn parquet_loads_as_its_jsonl_twin_with_mapped_columns() {
    for format in [FileFormat::QaNumeric, FileFormat::QaExact] {
        let parquet =
            FileTask::open_columns("qa", &fixture("qa_renamed.parquet"), format, &renamed())
                .expect("parquet loads");
        let jsonl = FileTask::open_columns("qa", &fixture("qa_renamed.jsonl"), format, &renamed())
            .expect("jsonl loads");
        assert_eq!(parquet.entries().len(), 5);
        assert_eq!(parquet.entries(), jsonl.entries());
        assert_eq!(parquet.entries()[2].question, "What is 7 * 6?");
        assert_eq!(parquet.entries()[2].answer.as_deref(), Some("42"));
    }
    let gsm8k = FileTask::gsm8k(&fixture("gsm8k_like.parquet")).expect("gsm8k parquet");
    let twin = FileTask::gsm8k(&fixture("gsm8k_like.jsonl")).expect("gsm8k jsonl");
    assert_eq!(gsm8k.entries(), twin.entries());
    assert_eq!(gsm8k.entries()[2].answer.as_deref(), Some("1050"));
    let rg = FileTask::reasoning_gym("rg", &fixture("reasoning_gym.parquet")).expect("rg parquet");
    let twin = FileTask::reasoning_gym("rg", &fixture("reasoning_gym.jsonl")).expect("rg jsonl");
    assert_eq!(rg.entries(), twin.entries());
    assert_eq!(rg.entries()[1].metadata["source_dataset"], "chain_sum");
}

#[test]
fn every_codec_pyarrow_writes_loads_and_one_not_compiled_in_is_an_error() {
    let reference = FileTask::open_columns(
        "qa",
        &fixture("qa_renamed.parquet"),
        FileFormat::QaNumeric,
        &renamed(),
    )
    .expect("reference");
    for codec in ["zstd", "gzip", "lz4", "none"] {
        let path = fixture(&format!("qa_{codec}.parquet"));
        let task = FileTask::open_columns("qa", &path, FileFormat::QaNumeric, &renamed())
            .unwrap_or_else(|e| panic!("{codec}: {e}"));
        assert_eq!(task.entries(), reference.entries(), "{codec}");
    }
    let err = FileTask::open_columns(
        "qa",
        &fixture("qa_brotli.parquet"),
        FileFormat::QaNumeric,
        &renamed(),
    )
    .expect_err("brotli is not compiled in");
    assert!(err.to_string().contains("qa_brotli.parquet"), "{err}");
}

#[test]
fn missing_columns_wrong_types_and_nulls_name_file_column_and_row() {
    // The question column under its default name is absent: the columns there are listed.
    let err = FileTask::open("qa", &fixture("qa_renamed.parquet"), FileFormat::QaNumeric)
        .expect_err("no `question` column");
    let text = err.to_string();
    assert!(text.contains("qa_renamed.parquet"), "{text}");
    assert!(text.contains("no column \"question\""), "{text}");
    assert!(text.contains("prompt, target, tags"), "{text}");
    assert!(text.contains("question_column"), "{text}");

    let answer_missing = Columns {
        answer: Some("solution".into()),
        ..renamed()
    };
    let err = FileTask::open_columns(
        "qa",
        &fixture("qa_renamed.parquet"),
        FileFormat::QaNumeric,
        &answer_missing,
    )
    .expect_err("no `solution` column");
    assert!(err.to_string().contains("no column \"solution\""), "{err}");

    let err = FileTask::open(
        "qa",
        &fixture("question_is_int.parquet"),
        FileFormat::QaExact,
    )
    .expect_err("question is INT64");
    let text = err.to_string();
    assert!(text.contains("question_is_int.parquet"), "{text}");
    assert!(text.contains("column \"question\" must be text"), "{text}");
    assert!(text.contains("INT64"), "{text}");

    // A list is neither text nor a number.
    let list_answer = Columns {
        answer: Some("tags".into()),
        ..renamed()
    };
    let err = FileTask::open_columns(
        "qa",
        &fixture("qa_renamed.parquet"),
        FileFormat::QaExact,
        &list_answer,
    )
    .expect_err("tags is a list");
    assert!(err.to_string().contains("column \"tags\""), "{err}");

    let err = FileTask::open("qa", &fixture("null_question.parquet"), FileFormat::QaExact)
        .expect_err("row 2 has no question");
    assert!(matches!(&err, TaskError::BadRow { row: 2, .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("null_question.parquet: row 2"), "{text}");
    assert!(
        text.contains("column \"question\" must be text, found null"),
        "{text}"
    );
}

/// Truncated files and bytes overwritten anywhere in the file: an error, never a panic (the
/// test would fail on a panic that escaped the reader).
#[test]
fn damaged_files_are_errors() {
    let bytes = std::fs::read(fixture("qa_renamed.parquet")).expect("fixture");
    let dir = tempfile::tempdir().expect("temp");
    let path = dir.path().join("damaged.parquet");
    let mut damaged_but_loaded = 0;
    for cut in [0, 4, 12, bytes.len() / 2, bytes.len() - 9, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..cut]).expect("write");
        let err = FileTask::open_columns("qa", &path, FileFormat::QaNumeric, &renamed())
            .expect_err("a truncated file");
        assert!(err.to_string().contains("damaged.parquet"), "{err}");
    }
    // Overwrite 8 bytes at each of many offsets: the page data, headers and footer.
    for offset in (4..bytes.len() - 8).step_by(37) {
        let mut copy = bytes.clone();
        for (i, b) in copy[offset..offset + 8].iter_mut().enumerate() {
            *b ^= 0xA5 ^ (i as u8);
        }
        std::fs::write(&path, &copy).expect("write");
        match FileTask::open_columns("qa", &path, FileFormat::QaNumeric, &renamed()) {
            Ok(_) => damaged_but_loaded += 1,
            Err(err) => assert!(err.to_string().contains("damaged.parquet"), "{err}"),
        }
    }
    // Some damage lands where it changes nothing the reader checks (padding, statistics):
    // that is fine; what matters is that nothing panicked. Most damage must be noticed.
    let tries = (4..bytes.len() - 8).step_by(37).count();
    assert!(
        damaged_but_loaded * 2 < tries,
        "{damaged_but_loaded} of {tries} damaged files loaded"
    );
}

#[test]
fn column_names_map_in_jsonl_too() {
    let dir = tempfile::tempdir().expect("temp");
    let path = dir.path().join("mine.jsonl");
    std::fs::write(
        &path,
        "{\"prompt\": \"Capital of France?\", \"target\": \"Paris\"}\n[1, 2]\n",
    )
    .expect("write");
    let err = FileTask::open_columns("mine", &path, FileFormat::QaExact, &renamed())
        .expect_err("line 2 is a list");
    assert!(matches!(&err, TaskError::BadLine { line: 2, .. }), "{err}");
    assert!(err.to_string().contains("expected an object"), "{err}");
    std::fs::write(
        &path,
        "{\"prompt\": \"Capital of France?\", \"target\": \"Paris\"}\n",
    )
    .expect("write");
    let task =
        FileTask::open_columns("mine", &path, FileFormat::QaExact, &renamed()).expect("loads");
    assert_eq!(task.entries()[0].answer.as_deref(), Some("Paris"));
}

/// GSM8K as Hugging Face publishes it (CI converts the JSONL with pyarrow and names the
/// folder in MUSKETEERS_GSM8K_PARQUET): every entry equals the JSONL's.
#[test]
fn real_gsm8k_parquet_equals_its_jsonl() {
    let Ok(dir) = std::env::var("MUSKETEERS_GSM8K_PARQUET") else {
        musketeers_testkit::skip(
            "MUSKETEERS_GSM8K_PARQUET does not name a folder of GSM8K Parquet files",
        );
        return;
    };
    let jsonl_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/gsm8k");
    for (split, rows) in [("train", 7473), ("test", 1319)] {
        let parquet = FileTask::gsm8k(&PathBuf::from(&dir).join(format!("{split}.parquet")))
            .expect("parquet loads");
        let jsonl =
            FileTask::gsm8k(&jsonl_dir.join(format!("{split}.jsonl"))).expect("jsonl loads");
        assert_eq!(parquet.entries().len(), rows);
        assert_eq!(parquet.entries(), jsonl.entries(), "{split}");
    }
}
