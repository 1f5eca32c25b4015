//! A training run from a [`RunConfig`]: models resolved and loaded, the task mix built, steps
//! taken, and the run directory written (resolved config, `metrics.jsonl`, `samples.jsonl`,
//! checkpoints replaced atomically).

use crate::method::model::{PromptFormat, load_modules};
use crate::method::train::StepReport;
use crate::method::train::collective::{Alone, Collective, share};
use crate::method::train::params::AdamSettings;
use crate::method::train::reward::{Reward, Scored};
use crate::method::train::{StepSettings, TrainError, Trainer};
use crate::progress::Progress;
use crate::run_config::RunConfig;
use crate::running::eval::EvalReport;
use crate::running::reward_program::{RewardItem, RewardProgram};
use crate::running::rundir::{self, io};
use crate::running::tasks::{score, training_mix};
use crate::running::tensorboard::EventWriter;
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::backend::AutodiffBackend;
use musketeers_verify::entry::Entry;
use musketeers_verify::task::{Mix, Task};
use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

/// What a training run tells its caller: each finished step (the answer decides whether the
/// run goes on), and the progress of the waits between steps. Any
/// `FnMut(&StepReport) -> ControlFlow<()>` is one that ignores the waits.
pub trait RunObserver {
    fn step(&mut self, report: &StepReport) -> ControlFlow<()>;

    fn waiting(&mut self, _progress: Progress<'_>) {}
}

/// An observer that shows nothing and never stops the run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unobserved;

impl RunObserver for Unobserved {
    fn step(&mut self, _: &StepReport) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

impl<F: FnMut(&StepReport) -> ControlFlow<()>> RunObserver for F {
    fn step(&mut self, report: &StepReport) -> ControlFlow<()> {
        self(report)
    }
}

/// The run's reward programs, by name (started on first use).
fn reward_programs(config: &RunConfig) -> std::collections::BTreeMap<String, RewardProgram> {
    config
        .rewards
        .iter()
        .filter_map(|r| {
            let command = r.command.clone()?;
            let timeout = std::time::Duration::from_secs_f64(r.timeout_seconds);
            Some((
                r.name.clone(),
                RewardProgram::new(&r.name, command, timeout),
            ))
        })
        .collect()
}

/// A step's reward: the task's verifier alone, or the config's weighted reward functions
/// (verifiers and programs), each kept for the log.
struct StepReward<'a> {
    config: &'a RunConfig,
    tasks: &'a Mix,
    entries: &'a [Entry],
    prompts: &'a [String],
    programs: &'a std::collections::BTreeMap<String, RewardProgram>,
}

impl StepReward<'_> {
    fn verifier(&self, items: &[(usize, &str)]) -> Vec<f32> {
        use rayon::prelude::*;
        items
            .par_iter()
            .map(|&(i, text)| {
                score(
                    self.tasks,
                    self.config.answer_extraction,
                    text,
                    &self.entries[i],
                )
            })
            .collect()
    }
}

impl Reward for StepReward<'_> {
    fn score_batch(&self, items: &[(usize, &str)]) -> Result<Scored, TrainError> {
        if self.config.rewards.is_empty() {
            return Ok(Scored {
                total: self.verifier(items),
                parts: Vec::new(),
            });
        }
        let mut total = vec![0.0f32; items.len()];
        let mut parts = Vec::with_capacity(self.config.rewards.len());
        for r in &self.config.rewards {
            let values = match self.programs.get(&r.name) {
                Some(program) => {
                    let batch: Vec<RewardItem<'_>> = items
                        .iter()
                        .map(|&(i, text)| {
                            let entry = &self.entries[i];
                            RewardItem {
                                prompt: &self.prompts[i],
                                completion: text,
                                question: &entry.question,
                                answer: entry.answer.as_deref(),
                                task: entry
                                    .metadata
                                    .get("source_dataset")
                                    .and_then(|v| v.as_str())
                                    .unwrap_or(&self.config.tasks[0].name),
                                metadata: &entry.metadata,
                            }
                        })
                        .collect();
                    program.score(&batch)?
                }
                None => self.verifier(items),
            };
            for (t, v) in total.iter_mut().zip(&values) {
                *t += r.weight as f32 * v;
            }
            parts.push((r.name.clone(), values));
        }
        Ok(Scored { total, parts })
    }
}

fn questions(entries: &[Entry]) -> Vec<String> {
    entries.iter().map(|e| e.question.clone()).collect()
}

/// Save the run's checkpoint (`out_dir/checkpoint`) through [`rundir`]: written aside,
/// hashed, verified, then put in place; a kill at any moment leaves a complete checkpoint.
fn save_checkpoint<B: AutodiffBackend>(
    trainer: &Trainer<B>,
    config: &RunConfig,
    out_dir: &Path,
) -> Result<(), TrainError> {
    let staging = rundir::staging(out_dir)?;
    trainer.policy.save_adapters(
        &staging.join("adapter"),
        &config.policy.lora,
        &config.policy.model,
    )?;
    if let Some(interface) = &trainer.interface {
        let path = staging.join("interface.safetensors");
        let mut store = SafetensorsStore::from_file(&path);
        interface
            .save_into(&mut store)
            .map_err(|e| TrainError::BadInput(format!("{}: {e}", path.display())))?;
    }
    trainer.save_state(&staging)?;
    let text =
        toml::to_string_pretty(config).map_err(|e| TrainError::BadInput(format!("config: {e}")))?;
    let path = staging.join(rundir::CONFIG_FILE);
    std::fs::write(&path, text).map_err(io(&path))?;
    rundir::seal(&staging, trainer.step)?;
    rundir::install(out_dir)
}

/// The trainer of `config`: the policy with fresh LoRA adapters, or with those of the
/// checkpoint in `out_dir` when `resume_from` is set (the interface, router and optimizer
/// state are loaded by [`Trainer::load_state`]), the team, the interface and the system.
/// `steps`: the run's length, which the learning-rate schedule spans.
pub fn build_trainer<B: AutodiffBackend>(
    config: &RunConfig,
    out_dir: &Path,
    resume_from: Option<u64>,
    steps: Option<u64>,
    device: &B::Device,
) -> Result<Trainer<B>, TrainError> {
    let system = crate::method::system::build_trainable::<B>(config);
    let adapters = resume_from.map(|_| out_dir.join("checkpoint").join("adapter"));
    // The team stays off the autodiff backend: it is frozen.
    let (modules, load_peak) = musketeers_lm::perf::phase_peak(|| {
        load_modules::<B, B::InnerBackend>(
            config,
            system.needs(),
            adapters.as_deref(),
            device,
            device,
        )
    });
    let modules = modules?;
    let settings = StepSettings::from_config(config, steps, modules.eos_token_ids);
    let mut trainer = Trainer::new(
        modules.policy,
        modules.tokenizer,
        modules.interface,
        modules.team,
        settings,
    )?
    .with_precision(config.dtype)?
    .with_system(system)
    .with_prompt_format(PromptFormat::of(config));
    trainer.router = modules.router;
    trainer.load_peak_bytes = load_peak;
    let g = &config.grpo;
    Ok(trainer.with_optimizer(AdamSettings {
        beta_1: g.adam_beta1,
        beta_2: g.adam_beta2,
        epsilon: g.adam_epsilon,
        weight_decay: g.weight_decay,
    }))
}

/// A stable fingerprint of `value` (the same in every process of one build).
fn fingerprint<T: std::hash::Hash>(value: &T) -> u64 {
    use std::hash::Hasher;
    let mut hasher = std::hash::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// Every process must run the same run: compare each `(what, fingerprint)` with process 0's.
fn same_run_everywhere(
    collective: &dyn Collective,
    checks: &[(&str, u64)],
) -> Result<(), TrainError> {
    for (what, value) in checks {
        let all = collective.gather_u64(*value)?;
        if let Some(rank) = all.iter().position(|v| v != &all[0]) {
            return Err(TrainError::BadInput(format!(
                "process {rank} has another {what} than process 0: every process of a \
                 data-parallel run must be started with the same config, steps and run directory"
            )));
        }
    }
    Ok(())
}

/// The step of the run's newest complete checkpoint; `None` when it has none, or none that
/// verifies ([`rundir::find`] says what is wrong).
pub fn checkpoint_step(out_dir: &Path) -> Option<u64> {
    rundir::find(out_dir).ok().flatten().map(|(_, step)| step)
}

/// The step to resume `out_dir` from, after checking its checkpoint and that `config` keeps
/// what it holds (settings that may change are recorded in `config-changes.jsonl`). Only
/// the writing process (`recover`) repairs a checkpoint left between a save's renames.
fn resume_step(out_dir: &Path, config: &RunConfig, recover: bool) -> Result<u64, TrainError> {
    let step = if recover {
        rundir::recover(out_dir)?
    } else {
        rundir::find(out_dir)?.map(|(_, step)| step)
    };
    let Some(step) = step else {
        return Err(TrainError::BadInput(format!(
            "nothing to resume: {} holds no checkpoint (a run that never saved one starts \
             again without --resume)",
            out_dir.display()
        )));
    };
    let previous = std::fs::read_to_string(out_dir.join("config.toml")).ok();
    let saved = rundir::saved_config(&out_dir.join("checkpoint"), previous.as_deref())?;
    let changes = rundir::check_resume(&saved, config)?;
    if recover && !changes.is_empty() {
        let path = out_dir.join("config-changes.jsonl");
        let line = serde_json::json!({"resumed_at_step": step, "changes": changes});
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        writeln!(file, "{line}").map_err(io(&path))?;
    }
    Ok(step)
}

/// What a finished run left behind.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub dir: PathBuf,
    pub steps: u64,
    /// Stopped early by `progress` (checkpointed, not evaluated).
    pub stopped: bool,
    /// The held-out evaluation (also in `eval.json`), when `eval.problems > 0`.
    pub eval: Option<EvalReport>,
}

/// Run `config` for `steps` (default: the config's), calling `progress` after every step,
/// then evaluate on held-out problems (`eval.json`) and write `report.md`. `progress`
/// returning `Break` stops the run after that step: it is checkpointed (so `resume`
/// continues it), reported, and not evaluated.
/// With `resume`, a checkpoint in `out_dir` is loaded and the run continues from it exactly
/// (same adapters, interface, optimizer state and sampling seeds).
pub fn run<B: AutodiffBackend>(
    config: &RunConfig,
    out_dir: &Path,
    steps: Option<u64>,
    resume: bool,
    device: &B::Device,
    progress: &mut dyn RunObserver,
) -> Result<RunOutcome, TrainError> {
    run_with::<B>(
        config,
        out_dir,
        steps,
        resume,
        device,
        progress,
        Box::new(Alone),
    )
}

/// [`run`] as one of the processes of `collective` (data parallelism: `mpirun -np N`): every
/// process holds the team and the policy and trains on its share of each step's prompts; all
/// apply the same update. Process 0 alone writes the run directory and evaluates.
pub fn run_with<B: AutodiffBackend>(
    config: &RunConfig,
    out_dir: &Path,
    steps: Option<u64>,
    resume: bool,
    device: &B::Device,
    progress: &mut dyn RunObserver,
    collective: Box<dyn Collective>,
) -> Result<RunOutcome, TrainError> {
    config.validate()?;
    let writes = collective.rank() == 0;
    // The run directory's lock is held until this function returns.
    let (_lock, resume_from) = open_run_dir(config, out_dir, resume, writes)?;
    let mut trainer = build_trainer::<B>(config, out_dir, resume_from, steps, device)?;
    let steps = steps.unwrap_or(config.grpo.steps);
    check_processes(config, collective.as_ref(), &trainer, steps, resume_from)?;
    trainer = trainer.with_collective(collective);
    let first = start_from(&mut trainer, out_dir, resume_from, writes)?;
    let tasks = training_mix(config)?;
    // Started once, on first use, and kept for the whole run.
    let programs = reward_programs(config);
    let mut logs = if writes {
        Some(RunLogs::open(config, out_dir)?)
    } else {
        None
    };
    let mut stopped = false;
    for step in first..steps {
        let (entries, prompts, report) =
            train_one_step(&mut trainer, config, &tasks, &programs, step)?;
        let flow = progress.step(&report);
        // Every process stops after the same step, whichever was asked to.
        let mut stop = [f64::from(u8::from(flow.is_break()))];
        trainer.collective().sum_f64(&mut stop)?;
        let stop = stop[0] > 0.0;
        if let Some(logs) = logs.as_mut() {
            logs.write(&report, &entries, &prompts)?;
            let g = &config.grpo;
            if (step + 1) % g.save_steps.max(1) == 0 || step + 1 == steps || stop {
                save_checkpoint(&trainer, config, out_dir)?;
            }
        }
        if stop {
            stopped = true;
            break;
        }
    }
    let eval = if writes && config.eval.problems > 0 && !stopped {
        Some(evaluate_run(&trainer, config, &tasks, out_dir, progress)?)
    } else {
        None
    };
    if writes {
        crate::running::report::write_run_report(out_dir)?;
    }
    Ok(RunOutcome {
        dir: out_dir.to_path_buf(),
        steps: trainer.step,
        stopped,
        eval,
    })
}

/// Lock the run directory (the writing process), find the step to resume from and write the
/// resolved config.
fn open_run_dir(
    config: &RunConfig,
    out_dir: &Path,
    resume: bool,
    writes: bool,
) -> Result<(Option<rundir::RunLock>, Option<u64>), TrainError> {
    if resume && !out_dir.is_dir() {
        return Err(TrainError::BadInput(format!(
            "nothing to resume: {} does not exist",
            out_dir.display()
        )));
    }
    let lock = if writes {
        std::fs::create_dir_all(out_dir).map_err(io(out_dir))?;
        Some(rundir::lock(out_dir)?)
    } else {
        None
    };
    let resume_from = if resume {
        Some(resume_step(out_dir, config, writes)?)
    } else {
        None
    };
    if writes {
        let resolved = out_dir.join("config.toml");
        std::fs::write(&resolved, config_text(config)?).map_err(io(&resolved))?;
    }
    Ok((lock, resume_from))
}

fn config_text(config: &RunConfig) -> Result<String, TrainError> {
    toml::to_string_pretty(config).map_err(|e| TrainError::BadInput(format!("config: {e}")))
}

/// Every process must run the same run, and each needs a prompt of every step.
fn check_processes<B: AutodiffBackend>(
    config: &RunConfig,
    collective: &dyn Collective,
    trainer: &Trainer<B>,
    steps: u64,
    resume_from: Option<u64>,
) -> Result<(), TrainError> {
    same_run_everywhere(
        collective,
        &[
            ("config", fingerprint(&config_text(config)?)),
            ("steps and checkpoint", fingerprint(&(steps, resume_from))),
            (
                "trained parameters",
                fingerprint(&trainer.trained().layout()),
            ),
        ],
    )?;
    let processes = collective.size();
    if processes > config.grpo.prompts_per_step {
        return Err(TrainError::BadInput(format!(
            "{processes} processes for grpo.prompts_per_step = {}: each needs a prompt",
            config.grpo.prompts_per_step
        )));
    }
    Ok(())
}

/// The first step to train: the checkpoint's (its state loaded, the logs cut back to it), or
/// 0 with fresh logs.
fn start_from<B: AutodiffBackend>(
    trainer: &mut Trainer<B>,
    out_dir: &Path,
    resume_from: Option<u64>,
    writes: bool,
) -> Result<u64, TrainError> {
    let logs = ["metrics.jsonl", "samples.jsonl"].map(|log| out_dir.join(log));
    match resume_from {
        Some(step) => {
            trainer.load_state(&out_dir.join("checkpoint"), step)?;
            if writes {
                for log in &logs {
                    rundir::truncate_log(log, step)?;
                }
            }
            Ok(step)
        }
        None => {
            if writes {
                for path in logs.iter().filter(|p| p.exists()) {
                    std::fs::remove_file(path).map_err(io(path))?;
                }
            }
            Ok(0)
        }
    }
}

/// Draw step `step`'s problems, render this process's prompts and train on them.
fn train_one_step<B: AutodiffBackend>(
    trainer: &mut Trainer<B>,
    config: &RunConfig,
    tasks: &Mix,
    programs: &std::collections::BTreeMap<String, RewardProgram>,
    step: u64,
) -> Result<(Vec<Entry>, Vec<String>, StepReport), TrainError> {
    let g = &config.grpo;
    let entries = (0..g.candidates_per_step())
        .map(|i| tasks.entry(g.seed, g.candidate_index(step, i)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TrainError::BadInput(e.to_string()))?;
    let collective = trainer.collective();
    let mine = if g.dynamic_sampling {
        0..entries.len()
    } else {
        share(g.prompts_per_step, collective.rank(), collective.size())
    };
    // Only this process's share is rendered (text-collab asks the team): the trainer reads
    // no other.
    let mut prompts = vec![String::new(); entries.len()];
    for (slot, prompt) in prompts[mine.clone()]
        .iter_mut()
        .zip(trainer.model().prompts(&questions(&entries[mine]))?)
    {
        *slot = prompt;
    }
    let reward = StepReward {
        config,
        tasks,
        entries: &entries,
        prompts: &prompts,
        programs,
    };
    let report = if g.dynamic_sampling {
        trainer.train_step_dynamic(&prompts, g.prompts_per_step, &reward)?
    } else {
        trainer.train_step(&prompts, &reward)?
    };
    Ok((entries, prompts, report))
}

/// The writing process's logs: `metrics.jsonl`, `samples.jsonl` and, when asked for,
/// TensorBoard's event file.
struct RunLogs {
    metrics: std::fs::File,
    metrics_path: PathBuf,
    samples: std::fs::File,
    samples_path: PathBuf,
    events: Option<EventWriter>,
}

impl RunLogs {
    fn open(config: &RunConfig, out_dir: &Path) -> Result<Self, TrainError> {
        let open = |p: &Path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(io(p))
        };
        let metrics_path = out_dir.join("metrics.jsonl");
        let samples_path = out_dir.join("samples.jsonl");
        let events = if config.tensorboard {
            let experts = config.team.iter().map(|m| m.name.clone()).collect();
            Some(EventWriter::create(out_dir, experts, &metrics_path)?)
        } else {
            None
        };
        Ok(Self {
            metrics: open(&metrics_path)?,
            samples: open(&samples_path)?,
            metrics_path,
            samples_path,
            events,
        })
    }

    /// A step's metrics line (and event), and the completions it logged.
    fn write(
        &mut self,
        report: &StepReport,
        entries: &[Entry],
        prompts: &[String],
    ) -> Result<(), TrainError> {
        let mut line = serde_json::to_value(report)
            .map_err(|e| TrainError::BadInput(format!("metrics: {e}")))?;
        if let Some(object) = line.as_object_mut() {
            object.remove("samples");
        }
        writeln!(self.metrics, "{line}").map_err(io(&self.metrics_path))?;
        if let Some(events) = self.events.as_mut() {
            events.write(&line)?;
        }
        // The prompts this process trained on (all of them when it runs alone).
        for (sample, &i) in report.samples.iter().zip(&report.prompt_indices) {
            let line = serde_json::json!({"step": report.step, "prompt": prompts[i],
                "question": entries[i].question,
                "answer": entries[i].answer, "completion": sample.completion,
                "reward": sample.reward, "advantage": sample.advantage});
            writeln!(self.samples, "{line}").map_err(io(&self.samples_path))?;
        }
        Ok(())
    }
}

/// The held-out evaluation of the trained model, written to `eval.json`.
fn evaluate_run<B: AutodiffBackend>(
    trainer: &Trainer<B>,
    config: &RunConfig,
    tasks: &Mix,
    out_dir: &Path,
    progress: &mut dyn RunObserver,
) -> Result<EvalReport, TrainError> {
    let model = trainer.model();
    let report = crate::running::eval::evaluate(
        &model,
        config,
        tasks,
        &|entries| model.prompts(&questions(entries)),
        &mut |p| progress.waiting(p),
    )?;
    let path = out_dir.join("eval.json");
    let text = serde_json::to_string_pretty(&report)
        .map_err(|e| TrainError::BadInput(format!("eval: {e}")))?;
    std::fs::write(&path, text).map_err(io(&path))?;
    Ok(report)
}
