use std::path::PathBuf;

/// What went wrong loading or running a model; each variant names the file or tensor.
#[derive(Debug, thiserror::Error)]
pub enum LmError {
    #[error(transparent)]
    Catalog(#[from] musketeers_catalog::CatalogError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "{path}: unsupported model_type {model_type:?} (supported: llama, mistral, qwen2, qwen3, gemma3_text)"
    )]
    UnsupportedModel { path: PathBuf, model_type: String },
    #[error("{path}: invalid config: {reason}")]
    BadConfig { path: PathBuf, reason: String },
    #[error("{path}: not a valid safetensors file: {reason}")]
    BadSafetensors { path: PathBuf, reason: String },
    #[error("tensor {name:?} is missing from the checkpoint in {dir}")]
    MissingTensor { name: String, dir: PathBuf },
    #[error("{path}: tensor {name:?} has shape {actual:?}, expected {expected:?}")]
    WrongShape {
        path: PathBuf,
        name: String,
        actual: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("{path}: tensor {name:?} has dtype {dtype}; supported: F32, F16, BF16")]
    UnsupportedDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("{path}: not a valid GGUF file: {reason}")]
    BadGguf { path: PathBuf, reason: String },
    #[error("input: {0}")]
    BadInput(String),
}
