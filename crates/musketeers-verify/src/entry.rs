//! A task entry in Reasoning Gym's format.

use serde::{Deserialize, Serialize};

/// One problem: what the model reads, the oracle answer, and whatever the scorer needs.
///
/// This is the shape `reasoning_gym` produces (`question`, `answer`, `metadata`), so entries
/// exported by the Python package and entries from our generators score alike.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub question: String,
    /// `None` where any of several answers is right (propositional_logic).
    pub answer: Option<String>,
    #[serde(default)]
    pub metadata: serde_json::Value,
}
