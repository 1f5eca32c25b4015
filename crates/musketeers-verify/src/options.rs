//! `KEY=VALUE` settings for generators, with errors that name the key.

use crate::error::TaskError;
use std::collections::BTreeMap;
use std::str::FromStr;

/// Settings given by the user; each generator takes the keys it knows and [`Options::finish`]
/// rejects the rest, so a typo is an error, not a silent default.
#[derive(Debug, Clone, Default)]
pub struct Options {
    task: String,
    values: BTreeMap<String, String>,
}

impl Options {
    pub fn new(task: &str) -> Self {
        Self {
            task: task.to_string(),
            values: BTreeMap::new(),
        }
    }

    /// Parse `KEY=VALUE` pairs.
    pub fn parse<'a>(
        task: &str,
        pairs: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, TaskError> {
        let mut options = Self::new(task);
        for pair in pairs {
            let (key, value) = pair.split_once('=').ok_or_else(|| TaskError::BadOption {
                task: task.into(),
                key: pair.into(),
                reason: "expected KEY=VALUE".into(),
            })?;
            options
                .values
                .insert(key.trim().to_string(), value.trim().to_string());
        }
        Ok(options)
    }

    pub fn set(mut self, key: &str, value: impl ToString) -> Self {
        self.values.insert(key.to_string(), value.to_string());
        self
    }

    /// Take `key`, or `default` when it was not given.
    pub fn take<T: FromStr>(&mut self, key: &str, default: T) -> Result<T, TaskError>
    where
        T::Err: std::fmt::Display,
    {
        match self.values.remove(key) {
            None => Ok(default),
            Some(raw) => raw.parse().map_err(|e: T::Err| TaskError::BadOption {
                task: self.task.clone(),
                key: key.to_string(),
                reason: format!("{raw:?}: {e}"),
            }),
        }
    }

    /// Fail on keys nobody took.
    pub fn finish(self) -> Result<(), TaskError> {
        match self.values.into_keys().next() {
            None => Ok(()),
            Some(key) => Err(TaskError::BadOption {
                task: self.task,
                key,
                reason: "unknown setting".into(),
            }),
        }
    }

    /// An error about a range of settings (`min_x` > `max_x` and the like).
    pub fn invalid(&self, key: &str, reason: impl Into<String>) -> TaskError {
        TaskError::BadOption {
            task: self.task.clone(),
            key: key.to_string(),
            reason: reason.into(),
        }
    }
}
