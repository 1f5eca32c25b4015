//! Everything that can go wrong with a task: a name, an option, a file, a row, a mix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("unknown dataset {0:?}; known: {known}", known = crate::scorers::DATASETS.join(", ") + ", gsm8k")]
    UnknownDataset(String),
    #[error("no generator for task {0:?}; generators: {known}", known = crate::generators::names::NAMES.join(", "))]
    UnknownGenerator(String),
    #[error("task {task}: setting {key:?}: {reason}")]
    BadOption {
        task: String,
        key: String,
        reason: String,
    },
    #[error("task {task}: could not generate entry {index}: {reason}")]
    Generation {
        task: String,
        index: u64,
        reason: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}")]
    BadLine {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    /// A Parquet row (counted from 0, as pandas and the Hugging Face viewer count).
    #[error("{path}: row {row}: {reason}")]
    BadRow {
        path: PathBuf,
        row: usize,
        reason: String,
    },
    /// A file that cannot be read as a task file at all: not Parquet, or a missing column.
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("{path}: no entries")]
    Empty { path: PathBuf },
    #[error("mix: {0}")]
    BadMix(String),
}
