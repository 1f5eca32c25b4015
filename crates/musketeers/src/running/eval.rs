//! Greedy evaluation on held-out problems: the accuracy column of the paper's Table 1.

use crate::error::TrainError;
use crate::method::model::TeamModel;
use crate::progress::Progress;
use crate::run_config::RunConfig;
use crate::running::tasks::score;
use burn::tensor::backend::Backend;
use musketeers_verify::entry::Entry;
use musketeers_verify::task::{Mix, Task};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

/// How a run turns problems into the policy's prompts (template, chat, text-collab notes).
pub type PromptsFor<'a> = dyn Fn(&[Entry]) -> Result<Vec<String>, TrainError> + 'a;

/// What `eval.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Training steps taken before the evaluation.
    pub step: u64,
    pub problems: usize,
    /// Share of problems answered right, greedy decoding.
    pub accuracy: f64,
    /// The same policy without its context tokens (fused runs only).
    pub accuracy_without_context: Option<f64>,
    /// Accuracy per task (by the dataset each entry is scored under).
    pub per_task: BTreeMap<String, f64>,
    /// Candidates skipped because their question was a training prompt of this run.
    pub skipped_seen: usize,
    /// The first completions, with their rewards.
    pub examples: Vec<EvalExample>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalExample {
    pub question: String,
    pub answer: Option<String>,
    pub completion: String,
    pub reward: f32,
}

/// `count` problems from the evaluation stream whose questions the run did not train on
/// (its first `trained_steps` steps); small problem spaces may yield fewer.
pub fn held_out(
    tasks: &Mix,
    config: &RunConfig,
    trained_steps: u64,
    count: usize,
) -> Result<(Vec<Entry>, usize), TrainError> {
    let g = &config.grpo;
    let mut seen = HashSet::new();
    for step in 0..trained_steps {
        for i in 0..g.candidates_per_step() {
            let index = g.candidate_index(step, i);
            seen.insert(tasks.entry(g.seed, index).map_err(bad_task)?.question);
        }
    }
    let (mut out, mut skipped) = (Vec::with_capacity(count), 0);
    // Twenty candidates per wanted problem bounds the search on tiny problem spaces.
    for i in 0..(count as u64) * 20 {
        if out.len() == count {
            break;
        }
        let entry = tasks.entry(config.eval.seed, i).map_err(bad_task)?;
        if seen.insert(entry.question.clone()) {
            out.push(entry);
        } else {
            skipped += 1;
        }
    }
    Ok((out, skipped))
}

fn bad_task(e: musketeers_verify::TaskError) -> TrainError {
    TrainError::BadInput(e.to_string())
}

/// The first `count` entries of each evaluation task (all of a shorter file), each with the
/// task it came from.
pub fn from_evaluation_tasks<'t>(
    tasks: &'t [Box<dyn Task>],
    config: &RunConfig,
    count: usize,
) -> Result<Vec<(Entry, &'t dyn Task)>, TrainError> {
    let mut out = Vec::new();
    for task in tasks {
        let n = task
            .len_hint()
            .map_or(count as u64, |len| len.min(count as u64));
        for i in 0..n {
            out.push((
                task.entry(config.eval.seed, i).map_err(bad_task)?,
                task.as_ref(),
            ));
        }
    }
    Ok(out)
}

fn dataset(entry: &Entry, task: &dyn Task) -> String {
    entry
        .metadata
        .get("source_dataset")
        .and_then(|v| v.as_str())
        .unwrap_or(task.name())
        .to_string()
}

/// Evaluate the model's policy greedily on the config's held-out problems (`eval.tasks`, else
/// the training stream minus what the run trained on), prompted as the run prompts
/// (`prompts_for`); `on_progress` follows the decoding.
pub fn evaluate<B: Backend>(
    model: &TeamModel<B>,
    config: &RunConfig,
    tasks: &Mix,
    prompts_for: &PromptsFor<'_>,
    on_progress: &mut dyn FnMut(Progress<'_>),
) -> Result<EvalReport, TrainError> {
    let evaluation_tasks = crate::running::tasks::evaluation_tasks(config)?;
    let (entries, task_of, skipped_seen) =
        evaluation_set(&evaluation_tasks, tasks, config, model.step)?;
    let prompts = prompts_for(&entries)?;
    let rewards_of = |completions: &[String]| -> Vec<f32> {
        completions
            .iter()
            .zip(&entries)
            .zip(&task_of)
            .map(|((c, e), task)| score(*task, config.answer_extraction, c, e))
            .collect()
    };
    let without_context = model.interface.is_some() && config.eval.without_context;
    let total = prompts.len() as f64;
    let mut decode = |task: &str, with_context: bool| {
        // Shown before the first batch decodes (which can take minutes on a real model).
        on_progress(Progress {
            task,
            done: 0.0,
            total,
            unit: "problems",
        });
        model.complete_greedy_observed(&prompts, with_context, &mut |done| {
            on_progress(Progress {
                task,
                done,
                total,
                unit: "problems",
            })
        })
    };
    let completions = decode("evaluation", true)?;
    let rewards = rewards_of(&completions);
    let accuracy_without_context = if without_context {
        Some(mean(&rewards_of(&decode("evaluation without C", false)?)))
    } else {
        None
    };
    Ok(EvalReport {
        step: model.step,
        problems: entries.len(),
        accuracy: mean(&rewards),
        accuracy_without_context,
        per_task: per_task(&entries, &rewards, &task_of),
        skipped_seen,
        examples: examples(&entries, &completions, &rewards),
    })
}

/// Problems, the task that scores each, and how many candidates were skipped as seen.
type EvaluationSet<'t> = (Vec<Entry>, Vec<&'t dyn Task>, usize);

/// The problems to evaluate on, each with the task that scores it, and how many were skipped
/// as seen in training: `eval.tasks` when the config has them, else the training stream minus
/// what the run trained on (`trained_steps`).
fn evaluation_set<'t>(
    evaluation_tasks: &'t [Box<dyn Task>],
    tasks: &'t Mix,
    config: &RunConfig,
    trained_steps: u64,
) -> Result<EvaluationSet<'t>, TrainError> {
    if evaluation_tasks.is_empty() {
        let (entries, skipped) = held_out(tasks, config, trained_steps, config.eval.problems)?;
        let owners = vec![tasks as &dyn Task; entries.len()];
        return Ok((entries, owners, skipped));
    }
    let (entries, owners) = from_evaluation_tasks(evaluation_tasks, config, config.eval.problems)?
        .into_iter()
        .unzip();
    Ok((entries, owners, 0))
}

/// Mean reward per task (by the dataset each entry is scored under).
fn per_task(entries: &[Entry], rewards: &[f32], task_of: &[&dyn Task]) -> BTreeMap<String, f64> {
    let mut by_task: BTreeMap<String, Vec<f32>> = BTreeMap::new();
    for ((entry, &r), task) in entries.iter().zip(rewards).zip(task_of) {
        by_task.entry(dataset(entry, *task)).or_default().push(r);
    }
    by_task.iter().map(|(k, v)| (k.clone(), mean(v))).collect()
}

fn mean(rewards: &[f32]) -> f64 {
    rewards.iter().map(|&x| f64::from(x)).sum::<f64>() / rewards.len().max(1) as f64
}

/// The first completions, with their rewards.
fn examples(entries: &[Entry], completions: &[String], rewards: &[f32]) -> Vec<EvalExample> {
    entries
        .iter()
        .zip(completions)
        .zip(rewards)
        .take(16)
        .map(|((e, c), &reward)| EvalExample {
            question: e.question.clone(),
            answer: e.answer.clone(),
            completion: c.clone(),
            reward,
        })
        .collect()
}
