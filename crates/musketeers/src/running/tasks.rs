//! The tasks of a run config: the training mix, the evaluation set, and how a completion is
//! scored under the run's answer-extraction rule.

use crate::error::TrainError;
use crate::run_config::{AnswerExtraction, RunConfig, TaskConfig};
use musketeers_verify::entry::Entry;
use musketeers_verify::extract;
use musketeers_verify::options::Options;
use musketeers_verify::task::{FileTask, Mix, Task};

/// The task (generator or file) a `[[tasks]]` entry names; a file served in file order
/// (`in_file_order`, for evaluation) or in seeded epochs.
fn build_task(task: &TaskConfig, in_file_order: bool) -> Result<Box<dyn Task>, TrainError> {
    let bad =
        |e: musketeers_verify::TaskError| TrainError::BadInput(format!("task {}: {e}", task.name));
    if let (Some(file), Some(format)) = (&task.file, task.file_format()?) {
        let loaded =
            FileTask::open_columns(&task.name, file, format, &task.columns()).map_err(bad)?;
        return Ok(Box::new(if in_file_order {
            loaded.in_file_order()
        } else {
            loaded
        }));
    }
    let mut options = Options::new(&task.name);
    for (key, value) in &task.options {
        let text = match value {
            toml::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        options = options.set(key, text);
    }
    musketeers_verify::generators::create(&task.name, options).map_err(bad)
}

/// The training tasks as one weighted mix.
pub fn training_mix(config: &RunConfig) -> Result<Mix, TrainError> {
    let parts = config
        .tasks
        .iter()
        .map(|t| Ok((build_task(t, false)?, t.weight)))
        .collect::<Result<Vec<_>, TrainError>>()?;
    Mix::new("tasks", parts).map_err(|e| TrainError::BadInput(e.to_string()))
}

/// `eval.tasks`, each on its own (files in file order); empty when the evaluation draws from
/// the training stream.
pub fn evaluation_tasks(config: &RunConfig) -> Result<Vec<Box<dyn Task>>, TrainError> {
    config
        .eval
        .tasks
        .iter()
        .map(|t| build_task(t, true))
        .collect()
}

/// A completion's reward under the run's answer-extraction rule.
pub fn score(task: &dyn Task, rule: AnswerExtraction, completion: &str, entry: &Entry) -> f32 {
    let reward = match rule {
        AnswerExtraction::Tag => task.score_completion(completion, entry),
        AnswerExtraction::TagOrLastNumber => {
            let answer = extract::extract_answer_tag(completion)
                .or_else(|| extract::extract_gsm8k_answer(completion));
            task.score(answer.as_deref(), entry)
        }
    };
    reward as f32
}
