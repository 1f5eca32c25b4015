//! Tasks and reward verifiers for RLVR, with exact parity to `reasoning-gym==0.1.25`.
//!
//! - [`scorers`]: `score_answer` of 21 Reasoning Gym datasets, float for float.
//! - [`extract`]: the final answer from a raw completion (`<answer>` tags, GSM8K conventions).
//! - [`generators`]: native, seeded generators that emit entries in Reasoning Gym's format.
//! - [`task`]: the [`Task`] trait, weighted [`task::Mix`]es and file tasks (Reasoning Gym
//!   exports, GSM8K, plain question/answer records: [`qa`]) read from JSON lines or Parquet
//!   ([`records`]).
//!
//! No deep-learning dependency: a user can score saved completions with this crate alone.
//! Scorers never panic and stay bounded in time on arbitrary text (property-tested).
//!
//! # Known differences from Python
//! - Non-ASCII decimal digits (`١٢`), which CPython's `int()`/`Decimal()` accept, are rejected.
//! - number_sorting refuses NaN, which Python lets through both of its checks.
//! - countdown evaluates `+ - * / ** !`, parentheses, `nan`, `oo` and `zoo` exactly as sympy
//!   would; any other sympy syntax (names such as `pi`, function calls) scores as an error.
//! - propositional_logic refuses truth tables over more than 20 variables (Python would run
//!   for hours) and formulas nested deeper than 900 levels (Python hits its recursion limit).

pub mod arith;
pub mod entry;
pub mod error;
pub mod extract;
pub mod generators;
pub mod gsm8k;
pub mod options;
pub mod proplogic;
pub mod pynum;
pub mod qa;
pub mod records;
pub mod scorers;
pub mod task;

pub use entry::Entry;
pub use error::TaskError;
pub use task::Task;

/// Score an already extracted answer for an entry of `dataset` (a Reasoning Gym name or
/// `gsm8k`).
pub fn score_answer(dataset: &str, answer: Option<&str>, entry: &Entry) -> Result<f64, TaskError> {
    if dataset == gsm8k::NAME {
        return Ok(gsm8k::score(answer, entry));
    }
    if dataset == qa::EXACT || dataset == qa::NUMERIC {
        return Ok(qa::score(dataset, answer, entry));
    }
    let scorer =
        scorers::scorer(dataset).ok_or_else(|| TaskError::UnknownDataset(dataset.to_string()))?;
    Ok(scorer(answer, entry))
}

/// Score a raw completion: extract its answer by the dataset's convention, then score it.
pub fn score_completion(dataset: &str, completion: &str, entry: &Entry) -> Result<f64, TaskError> {
    let answer = extract_for_dataset(dataset, completion);
    score_answer(dataset, answer.as_deref(), entry)
}

/// The answer in a completion by the convention of `dataset`: GSM8K's for `gsm8k` and numeric
/// question/answer files, Reasoning Gym's last `<answer>` for everything else.
pub fn extract_for_dataset(dataset: &str, completion: &str) -> Option<String> {
    if dataset == gsm8k::NAME || dataset == qa::NUMERIC {
        extract::extract_gsm8k_answer(completion)
    } else {
        extract::extract_answer_tag(completion)
    }
}
