//! The task abstraction: a stream of entries and a scorer; mixes and file-backed tasks.

use crate::entry::Entry;
use crate::records::{Columns, read_records};
use crate::{extract_for_dataset, gsm8k, qa, score_answer};

pub use crate::error::TaskError;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;

/// A source of problems with a verifiable reward.
///
/// `entry(seed, index)` is a pure function: the same seed and index give the same entry on
/// every platform, so runs are reproducible and resumable without storing the data.
pub trait Task: Send + Sync {
    /// The dataset name entries are scored under (Reasoning Gym's, or `gsm8k`).
    fn name(&self) -> &str;

    fn entry(&self, seed: u64, index: u64) -> Result<Entry, TaskError>;

    /// How many distinct entries there are, when the task is a finite list (a file).
    fn len_hint(&self) -> Option<u64> {
        None
    }

    /// Score an extracted answer (`None`: the completion had none).
    fn score(&self, answer: Option<&str>, entry: &Entry) -> f64 {
        let dataset = entry
            .metadata
            .get("source_dataset")
            .and_then(|v| v.as_str())
            .unwrap_or(self.name());
        score_answer(dataset, answer, entry).unwrap_or(0.0)
    }

    /// Score a raw completion: the last `<answer>` for Reasoning Gym tasks, GSM8K's
    /// conventions for GSM8K.
    fn score_completion(&self, completion: &str, entry: &Entry) -> f64 {
        let dataset = entry
            .metadata
            .get("source_dataset")
            .and_then(|v| v.as_str())
            .unwrap_or(self.name());
        let answer = extract_for_dataset(dataset, completion);
        self.score(answer.as_deref(), entry)
    }
}

/// The random stream of entry `index` under `seed`: independent streams of one key.
pub fn entry_rng(seed: u64, index: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index);
    rng
}

/// The layout of a JSONL task file, and so how its entries are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileFormat {
    /// GSM8K's `{"question", "answer"}` with a worked answer ending `#### N`.
    Gsm8k,
    /// Reasoning Gym's export: `{"question", "answer", "metadata": {"source_dataset", ...}}`,
    /// each line scored by its dataset's scorer.
    ReasoningGym,
    /// `{"question", "answer"}`, exact match after [`qa::normalize_text`].
    QaExact,
    /// `{"question", "answer"}`, numeric equality.
    QaNumeric,
}

/// Entries read from a file, served in a seeded order (without replacement within an epoch)
/// or in file order.
#[derive(Debug, Clone)]
pub struct FileTask {
    name: String,
    entries: Vec<Entry>,
    shuffled: bool,
}

impl FileTask {
    pub fn new(name: impl Into<String>, entries: Vec<Entry>) -> Self {
        Self {
            name: name.into(),
            entries,
            shuffled: true,
        }
    }

    /// Read `path` as `format`; a bad line is an error naming the file and line.
    pub fn open(
        name: impl Into<String>,
        path: &Path,
        format: FileFormat,
    ) -> Result<Self, TaskError> {
        Self::open_columns(name, path, format, &Columns::default())
    }

    /// Read `path` (JSON lines, or Parquet by its `.parquet` extension) as `format`, the
    /// question and answer taken from `columns`; a bad record is an error naming the file and
    /// its line or row.
    pub fn open_columns(
        name: impl Into<String>,
        path: &Path,
        format: FileFormat,
        columns: &Columns,
    ) -> Result<Self, TaskError> {
        let entries = match format {
            FileFormat::Gsm8k => read_records(path, columns, gsm8k::parse_record)?,
            FileFormat::ReasoningGym => read_records(path, columns, reasoning_gym_entry)?,
            FileFormat::QaExact => read_records(path, columns, |r| qa::parse_record(r, qa::EXACT))?,
            FileFormat::QaNumeric => {
                read_records(path, columns, |r| qa::parse_record(r, qa::NUMERIC))?
            }
        };
        Ok(Self::new(name, entries))
    }

    /// Serve entry `index` as line `index` of the file (modulo its length) whatever the seed:
    /// "the first N problems of the test file".
    pub fn in_file_order(mut self) -> Self {
        self.shuffled = false;
        self
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// GSM8K JSONL (`{"question","answer"}` with `#### N`).
    pub fn gsm8k(path: &Path) -> Result<Self, TaskError> {
        Ok(Self::new(gsm8k::NAME, gsm8k::load(path)?))
    }

    /// JSONL as Reasoning Gym exports it: one `{"question","answer","metadata"}` per line,
    /// scored by `metadata.source_dataset`.
    pub fn reasoning_gym(name: impl Into<String>, path: &Path) -> Result<Self, TaskError> {
        Self::open(name, path, FileFormat::ReasoningGym)
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }
}

impl Task for FileTask {
    fn name(&self) -> &str {
        &self.name
    }

    fn len_hint(&self) -> Option<u64> {
        Some(self.entries.len() as u64)
    }

    /// Entry `index` of a seeded permutation of the file, one epoch after another: indices
    /// `k·n .. (k+1)·n` visit every line once (in file order when not shuffled).
    fn entry(&self, seed: u64, index: u64) -> Result<Entry, TaskError> {
        let n = self.entries.len() as u64;
        if n == 0 {
            return Err(TaskError::Generation {
                task: self.name.clone(),
                index,
                reason: "the task has no entries".into(),
            });
        }
        if !self.shuffled {
            return Ok(self.entries[(index % n) as usize].clone());
        }
        let epoch = index / n;
        let mut order: Vec<usize> = (0..self.entries.len()).collect();
        let mut rng = entry_rng(seed, u64::MAX - epoch);
        for i in (1..order.len()).rev() {
            order.swap(i, rng.random_range(0..=i as u64) as usize);
        }
        Ok(self.entries[order[(index % n) as usize]].clone())
    }
}

/// A Reasoning Gym entry whose `metadata.source_dataset` names a dataset we score.
fn reasoning_gym_entry(record: serde_json::Value) -> Result<Entry, String> {
    let entry: Entry =
        serde_json::from_value(record).map_err(|e| format!("not a Reasoning Gym entry: {e}"))?;
    match entry
        .metadata
        .get("source_dataset")
        .and_then(|v| v.as_str())
    {
        Some(d) if crate::scorers::scorer(d).is_some() => Ok(entry),
        Some(d) => Err(format!("metadata.source_dataset {d:?} has no scorer here")),
        None => Err("metadata.source_dataset is missing".into()),
    }
}

/// Several tasks sampled with weights; itself a task (entries keep their `source_dataset`).
pub struct Mix {
    name: String,
    parts: Vec<(Box<dyn Task>, f64)>,
    total: f64,
}

impl std::fmt::Debug for Mix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<_> = self
            .parts
            .iter()
            .map(|(t, w)| (t.name().to_string(), *w))
            .collect();
        f.debug_struct("Mix")
            .field("name", &self.name)
            .field("parts", &parts)
            .finish()
    }
}

impl Mix {
    pub fn new(
        name: impl Into<String>,
        parts: Vec<(Box<dyn Task>, f64)>,
    ) -> Result<Self, TaskError> {
        if parts.is_empty() {
            return Err(TaskError::BadMix("a mix needs at least one task".into()));
        }
        if let Some((task, w)) = parts.iter().find(|(_, w)| !(w.is_finite() && *w > 0.0)) {
            return Err(TaskError::BadMix(format!(
                "weight of {} must be positive and finite, got {w}",
                task.name()
            )));
        }
        let total = parts.iter().map(|(_, w)| w).sum();
        Ok(Self {
            name: name.into(),
            parts,
            total,
        })
    }

    /// Which part entry `index` comes from.
    pub fn part_of(&self, seed: u64, index: u64) -> &dyn Task {
        let mut pick = entry_rng(seed ^ 0x6d69_785f_7069_636b, index).random::<f64>() * self.total;
        for (task, weight) in &self.parts {
            if pick < *weight {
                return task.as_ref();
            }
            pick -= weight;
        }
        self.parts
            .last()
            .map(|(t, _)| t.as_ref())
            .expect("a mix is never empty (checked in new)")
    }
}

impl Task for Mix {
    fn name(&self) -> &str {
        &self.name
    }

    fn entry(&self, seed: u64, index: u64) -> Result<Entry, TaskError> {
        self.part_of(seed, index).entry(seed, index)
    }
}
