//! The offline demo: a tiny team trained from scratch, a warm-started tiny policy, and
//! `fused` against `single` GRPO on an arithmetic task and a logic task, over several seeds.
//!
//! Everything is made here, nothing is downloaded: an arithmetic specialist (words and
//! punctuation as tokens) and a logic specialist (whitespace-separated tokens, punctuation
//! kept on its word) learn their task by supervised training, a "naive" expert
//! (character-level) keeps its random weights, and the policy learns only
//! the answer format (its warm-start answers are drawn at random, so it knows the format but
//! not the answers). The models are written as Hugging Face directories and every GRPO run is
//! an ordinary [`crate::running::run::run`] over a [`RunConfig`], so the demo exercises the same code a
//! user's run does.

pub mod vocab;

use crate::error::TrainError;
use crate::method::sft::{Example, SftSettings};
use crate::method::team::ExpertReadout;
use crate::run_config::{
    AnswerExtraction, CollabConfig, EvalConfig, GrpoConfig, InterfaceConfig, MemberConfig, Mode,
    PolicyConfig, RunConfig, TaskConfig,
};
use crate::running::run::RunOutcome;
use burn::tensor::backend::AutodiffBackend;
use musketeers_lm::config::LlamaConfig;
use musketeers_lm::tokenizer::TextTokenizer;
use musketeers_lm::{LoraConfig, Pretrained};
use musketeers_rl::{LossType, LrSchedulerType, ScaleRewards};
use musketeers_verify::entry::Entry;
use musketeers_verify::options::Options;
use musketeers_verify::task::Task;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use vocab::Segmentation;

/// A task of the demo and the expert that knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoTask {
    pub label: &'static str,
    pub generator: &'static str,
    pub options: &'static [(&'static str, &'static str)],
    pub specialist: &'static str,
    /// GRPO steps of the full demo on this task (see [`DemoSettings::grpo_steps`]).
    pub grpo_steps: u64,
}

pub const ARITHMETIC: DemoTask = DemoTask {
    label: "arithmetic",
    generator: "chain_sum",
    // 2,000 distinct problems, answers -17..=27: enough that held-out problems exist.
    options: &[
        ("min_terms", "3"),
        ("max_terms", "3"),
        ("min_digits", "1"),
        ("max_digits", "1"),
    ],
    specialist: "arithmetic",
    // 45 possible answers: far fewer sampled groups hold a right one than on logic's two, and
    // the fused reward still rises at 300 steps (measured); see the README.
    grpo_steps: 600,
};

pub const LOGIC: DemoTask = DemoTask {
    label: "logic",
    generator: "syllogism",
    options: &[],
    specialist: "logic",
    grpo_steps: 300,
};

pub const TASKS: [DemoTask; 2] = [ARITHMETIC, LOGIC];

/// The team's member names, in interface order.
pub const TEAM: [&str; 3] = ["arithmetic", "logic", "naive"];

/// `text-collab`: the specialists answer in a few tokens; the naive expert's noise is cut
/// short.
const COLLAB_TOKENS: usize = 6;

/// The data seeds: supervised corpora and the runs' evaluation problems are disjoint streams.
const CORPUS_SEED: u64 = 0xC0_4905;

/// How big the demo is. [`DemoSettings::full`] is `cargo xtask demo`; [`DemoSettings::quick`]
/// is the CI integration test.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoSettings {
    pub out_dir: PathBuf,
    pub seeds: Vec<u64>,
    pub tasks: Vec<DemoTask>,
    /// The systems compared; `single` and `fused` are the table's point, `hard-route` and
    /// `text-collab` the paper's baselines.
    pub modes: Vec<Mode>,
    /// Supervised examples per task (experts and the warm start).
    pub corpus_size: usize,
    /// Supervised steps of the arithmetic expert; the logic expert learns faster and takes
    /// half as many.
    pub specialist_steps: usize,
    pub warm_start_steps: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    /// GRPO steps of every run; `None`: each task's own [`DemoTask::grpo_steps`].
    pub grpo_steps: Option<u64>,
    pub prompts_per_step: usize,
    pub num_generations: usize,
    pub learning_rate: f64,
    /// KL weight to the warm-started policy.
    pub beta: f64,
    /// What each expert passes to the interface (the ablation of first / last / mean token).
    pub readout: ExpertReadout,
    /// Which hidden state each expert passes on (`hidden_states` index, negative from the end).
    pub expert_layer: isize,
    /// Where the team and policy are built or reused (default `out_dir/models`).
    pub models_dir: Option<PathBuf>,
    pub eval_problems: usize,
    /// Run-config overrides applied to every GRPO run (`--set KEY=VALUE`).
    pub overrides: Vec<String>,
}

impl DemoSettings {
    pub fn full(out_dir: PathBuf) -> Self {
        Self {
            out_dir,
            seeds: vec![1, 2, 3],
            tasks: TASKS.to_vec(),
            modes: vec![Mode::Single, Mode::Fused, Mode::HardRoute, Mode::TextCollab],
            corpus_size: 4000,
            specialist_steps: 1500,
            warm_start_steps: 150,
            hidden_size: 64,
            num_layers: 2,
            grpo_steps: None,
            prompts_per_step: 8,
            // 16, not 8: more groups hold a right answer on arithmetic's 45 answers
            // (measured: fused 0.20 vs 0.13 held-out after 150 steps, 3 seeds).
            num_generations: 16,
            // 1e-3 collapsed one logic seed of three (fused) to a constant answer; measured.
            learning_rate: 5e-4,
            beta: 0.04,
            readout: ExpertReadout::Last,
            expert_layer: -1,
            models_dir: None,
            eval_problems: 256,
            overrides: Vec::new(),
        }
    }

    /// The GRPO steps of a run on `task`.
    pub fn steps_for(&self, task: &DemoTask) -> u64 {
        self.grpo_steps.unwrap_or(task.grpo_steps)
    }

    pub fn quick(out_dir: PathBuf) -> Self {
        Self {
            seeds: vec![1],
            corpus_size: 500,
            specialist_steps: 60,
            warm_start_steps: 30,
            hidden_size: 32,
            grpo_steps: Some(4),
            prompts_per_step: 4,
            num_generations: 4,
            eval_problems: 32,
            ..Self::full(out_dir)
        }
    }
}

/// One row of the results table.
#[derive(Debug, Clone, Serialize)]
pub struct DemoRow {
    pub task: String,
    pub system: String,
    /// Per seed.
    pub accuracies: Vec<f64>,
    pub mean: f64,
    pub std: f64,
}

/// What the demo measured.
#[derive(Debug, Clone, Serialize)]
pub struct DemoResults {
    pub rows: Vec<DemoRow>,
    /// Per "task mode" (fused, hard-route): the relevant specialist's share (of the
    /// interface's attention; of the routed prompts), first and last 10% of steps, mean over
    /// seeds.
    pub specialist_utilization: BTreeMap<String, (f64, f64)>,
    /// Per "task mode", per team member: the share over the last 10% of steps, mean over seeds.
    pub final_utilization: BTreeMap<String, Vec<f64>>,
    pub report: PathBuf,
}

fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len().max(1) as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 {
        xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

fn task_of(task: &DemoTask) -> Result<Box<dyn Task>, TrainError> {
    let mut options = Options::new(task.generator);
    for (k, v) in task.options {
        options = options.set(k, *v);
    }
    musketeers_verify::generators::create(task.generator, options)
        .map_err(|e| TrainError::BadInput(format!("task {}: {e}", task.generator)))
}

fn corpus(task: &DemoTask, size: usize) -> Result<Vec<Entry>, TrainError> {
    let generator = task_of(task)?;
    (0..size as u64)
        .map(|i| {
            generator
                .entry(CORPUS_SEED, i)
                .map_err(|e| TrainError::BadInput(e.to_string()))
        })
        .collect()
}

fn tiny_config(vocab: usize, hidden: usize, layers: usize) -> LlamaConfig {
    LlamaConfig {
        eos_token_ids: vec![1],
        ..LlamaConfig::llama(vocab, hidden, hidden * 3, layers, 4, 4, 10_000.0)
    }
}

fn examples(
    tokenizer: &TextTokenizer,
    pairs: impl Iterator<Item = (String, String)>,
) -> Result<Vec<Example>, TrainError> {
    let eos = tokenizer.eos_token_id().unwrap_or(1);
    pairs
        .map(|(prompt, target)| {
            let mut target = tokenizer.encode(&target, false)?;
            target.push(eos);
            Ok(Example {
                prompt: tokenizer.encode(&prompt, false)?,
                target,
            })
        })
        .collect()
}

/// Train (or, with `steps == 0`, only initialise) a tiny model and write it as a Hugging
/// Face directory. Returns the share of held-out examples it answers exactly.
#[allow(clippy::too_many_arguments)]
fn make_model<B: AutodiffBackend>(
    dir: &Path,
    tokenizer: TextTokenizer,
    train: &[Example],
    held_out: &[Example],
    settings: &DemoSettings,
    steps: usize,
    seed: u64,
    device: &B::Device,
    progress: &mut dyn FnMut(&str),
) -> Result<f32, TrainError> {
    let config = tiny_config(
        tokenizer.vocab_size(),
        settings.hidden_size,
        settings.num_layers,
    );
    let mut model = crate::method::model::seeded_init(device, seed, || config.init::<B>(device));
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if steps > 0 {
        let sft = SftSettings {
            steps,
            batch_size: 64,
            learning_rate: 3e-3,
            // Decayed to 0 by the last step: at a constant 3e-3 the arithmetic expert's final
            // accuracy swung from 0.64 to 0.90 with the matmul kernels (AVX2 or AVX-512).
            schedule: LrSchedulerType::Cosine,
            warmup_steps: steps / 20,
            weight_decay: 0.0,
            max_grad_norm: 1.0,
            seed,
        };
        let mut last = None;
        model = crate::method::sft::train(model, train, &sft, &mut |s| {
            if s.step % 50 == 0 || s.step == steps {
                last = Some(*s);
            }
            if s.step % 100 == 0 {
                progress(&format!(
                    "  {name}: step {}/{steps}, loss {:.3}, token accuracy {:.3}",
                    s.step, s.loss, s.token_accuracy
                ));
            }
        })?;
    }
    let exact = crate::method::sft::exact_match(&model, held_out);
    let pretrained = Pretrained {
        dir: dir.to_path_buf(),
        eos_token_ids: config.eos_token_ids.clone(),
        config,
        model,
        tokenizer: Some(tokenizer),
    };
    musketeers_lm::export::save_pretrained(&pretrained, dir)?;
    Ok(exact)
}

/// The GRPO run of one (task, mode, seed) cell.
fn run_config(
    settings: &DemoSettings,
    models: &Path,
    task: &DemoTask,
    mode: Mode,
    seed: u64,
) -> Result<RunConfig, TrainError> {
    let model = |name: &str| models.join(name).to_string_lossy().into_owned();
    RunConfig {
        mode,
        answer_extraction: AnswerExtraction::Tag,
        policy: PolicyConfig {
            model: model("policy"),
            // Rank 32 of the policy's width 64 (alpha / rank = 2 as at rank 8): at rank 8 the
            // adapters learn to read C too slowly for the step budget (measured, arithmetic,
            // 300 steps, 3 seeds: 0.20 ± 0.03 at rank 8, 0.30 ± 0.03 at 32, 0.37 ± 0.04 at 64).
            lora: LoraConfig {
                rank: 32,
                alpha: 64.0,
                ..LoraConfig::default()
            },
            chat: false,
            prompt_template: "{question}".into(),
            weights: musketeers_lm::Precision::F32,
        },
        team: TEAM
            .iter()
            .map(|name| MemberConfig {
                name: (*name).into(),
                model: model(name),
                layer: settings.expert_layer,
                readout: settings.readout,
                readout_suffix: String::new(),
            })
            .collect(),
        interface: InterfaceConfig {
            latent_dim: settings.hidden_size,
            num_latents: 4,
            num_heads: 4,
            self_attention_blocks: 0,
            ffn_multiplier: 2,
            ..InterfaceConfig::default()
        },
        grpo: grpo_config(settings, task, seed),
        tasks: vec![task_config(task)],
        eval: EvalConfig {
            problems: settings.eval_problems,
            ..EvalConfig::default()
        },
        collab: CollabConfig {
            max_new_tokens: COLLAB_TOKENS,
        },
        out_dir: None,
        dtype: musketeers_lm::Precision::F32,
        // The demo's experts are a few megabytes: compact storage would save nothing, and the
        // demo's figures were measured in f32 (`--set team_weights="f16"` runs it compact).
        team_weights: musketeers_lm::Precision::F32,
        rewards: Vec::new(),
        tensorboard: true,
    }
    .with_overrides(&settings.overrides)
}

/// The GRPO settings of a run on `task` with `seed`.
fn grpo_config(settings: &DemoSettings, task: &DemoTask, seed: u64) -> GrpoConfig {
    GrpoConfig {
        steps: settings.steps_for(task),
        prompts_per_step: settings.prompts_per_step,
        num_generations: settings.num_generations,
        max_completion_length: 8,
        temperature: 1.0,
        learning_rate: settings.learning_rate,
        lr_scheduler_type: LrSchedulerType::Linear,
        warmup_steps: 0,
        beta: settings.beta,
        epsilon: 0.2,
        epsilon_high: Some(0.28),
        loss_type: LossType::Dapo,
        scale_rewards: ScaleRewards::Group,
        mask_truncated_completions: false,
        max_grad_norm: 1.0,
        seed,
        save_steps: settings.steps_for(task).max(1),
        micro_batch_prompts: None,
        micro_batch_completions: None,
        ..GrpoConfig::default()
    }
}

/// `task`'s generator with its options, as a run config's task.
fn task_config(task: &DemoTask) -> TaskConfig {
    TaskConfig {
        options: task
            .options
            .iter()
            .map(|(k, v)| ((*k).to_string(), toml::Value::String((*v).into())))
            .collect(),
        ..TaskConfig::generator(task.generator)
    }
}

/// Train the experts and warm-start the policy into `models`; returns each specialist's
/// held-out exact-answer rate by task.
fn build_models<B: AutodiffBackend>(
    settings: &DemoSettings,
    models: &Path,
    device: &B::Device,
    progress: &mut dyn FnMut(&str),
) -> Result<BTreeMap<String, (String, f32)>, TrainError> {
    // Supervised corpora; the last tenth of each is held out to check the experts.
    // The whole team is built whichever tasks the runs train on.
    let corpora: Vec<(DemoTask, Vec<Entry>)> = TASKS
        .iter()
        .map(|t| Ok((*t, corpus(t, settings.corpus_size)?)))
        .collect::<Result<_, TrainError>>()?;
    let all_text = corpus_text(&corpora, "");
    let expert_accuracy = train_specialists::<B>(settings, models, &corpora, device, progress)?;
    // The naive expert: random weights, its own character vocabulary.
    let naive_tokenizer = vocab::build(
        all_text.iter().map(String::as_str),
        Segmentation::Characters,
        &[],
    )?;
    make_model::<B>(
        &models.join("naive"),
        naive_tokenizer,
        &[],
        &[],
        settings,
        0,
        13,
        device,
        progress,
    )?;

    // The policy learns the format `<answer>X</answer>` with X drawn from the task's answers
    // at random: the answer space without the answers. Half of its prompts carry the notes
    // `text-collab` pastes in: the experts' real answers, but to another question of the
    // task, so that the prompt shape (the naive expert's noise included) is familiar while
    // the notes tell nothing.
    let notes_by_expert = collab_notes::<B>(models, &corpora, device)?;
    let pairs = warm_start_pairs(&corpora, &notes_by_expert);
    warm_start_policy::<B>(settings, models, &all_text, pairs, device, progress)?;

    Ok(expert_accuracy)
}

/// The questions and answers of `task`'s corpus (of every corpus for `""`), in order.
fn corpus_text(corpora: &[(DemoTask, Vec<Entry>)], task: &str) -> Vec<String> {
    corpora
        .iter()
        .filter(|(t, _)| task.is_empty() || t.label == task)
        .flat_map(|(_, entries)| {
            entries
                .iter()
                .flat_map(|e| [e.question.clone(), e.answer.clone().unwrap_or_default()])
        })
        .collect()
}

/// The first nine tenths of `examples` to train on and the last tenth held out.
fn split_held_out(examples: Vec<Example>) -> (Vec<Example>, Vec<Example>) {
    let cut = examples.len() * 9 / 10;
    let held = examples[cut..].to_vec();
    (examples[..cut].to_vec(), held)
}

/// Train the arithmetic and logic experts from scratch, each with its own vocabulary;
/// returns each one's held-out exact-answer rate by task.
fn train_specialists<B: AutodiffBackend>(
    settings: &DemoSettings,
    models: &Path,
    corpora: &[(DemoTask, Vec<Entry>)],
    device: &B::Device,
    progress: &mut dyn FnMut(&str),
) -> Result<BTreeMap<String, (String, f32)>, TrainError> {
    let mut expert_accuracy = BTreeMap::new();
    for (name, segmentation, task, steps) in [
        (
            "arithmetic",
            Segmentation::Words,
            ARITHMETIC.label,
            settings.specialist_steps,
        ),
        (
            "logic",
            Segmentation::WhitespaceSplit,
            LOGIC.label,
            settings.specialist_steps / 2,
        ),
    ] {
        let task_text = corpus_text(corpora, task);
        let tokenizer = vocab::build(task_text.iter().map(String::as_str), segmentation, &[])?;
        let pairs = corpora
            .iter()
            .filter(|(t, _)| t.label == task)
            .flat_map(|(_, entries)| entries.iter())
            .map(|e| (e.question.clone(), e.answer.clone().unwrap_or_default()));
        let (train, held) = split_held_out(examples(&tokenizer, pairs)?);
        if train.is_empty() {
            continue;
        }
        progress(&format!(
            "training the {name} expert from scratch ({} examples, {} steps)",
            train.len(),
            steps
        ));
        let exact = make_model::<B>(
            &models.join(name),
            tokenizer,
            &train,
            &held,
            settings,
            steps,
            11,
            device,
            progress,
        )?;
        progress(&format!(
            "  {name} expert: held-out exact answers {exact:.3}"
        ));
        expert_accuracy.insert(task.to_string(), (name.to_string(), exact));
    }
    Ok(expert_accuracy)
}

/// Every team member's `text-collab` note to every question of the corpora, by member in
/// team order.
fn collab_notes<B: AutodiffBackend>(
    models: &Path,
    corpora: &[(DemoTask, Vec<Entry>)],
    device: &B::Device,
) -> Result<Vec<Vec<String>>, TrainError> {
    let inner_device = burn::tensor::Tensor::<B, 1>::zeros([1], device)
        .inner()
        .device();
    let questions: Vec<String> = corpora
        .iter()
        .flat_map(|(_, entries)| entries.iter().map(|e| e.question.clone()))
        .collect();
    let mut notes_by_expert = Vec::new();
    for name in TEAM {
        let mut expert = Pretrained::<B::InnerBackend>::load(&models.join(name), &inner_device)?;
        let tokenizer = expert
            .tokenizer
            .take()
            .ok_or_else(|| TrainError::BadInput(format!("demo expert {name} has no tokenizer")))?;
        let text_expert = crate::method::team::TeamMember {
            name: name.to_string(),
            model: expert.model,
            tokenizer,
            layer: -1,
            readout: ExpertReadout::Last,
            readout_suffix: String::new(),
            eos_token_ids: expert.eos_token_ids,
        };
        let mut notes = Vec::with_capacity(questions.len());
        for chunk in questions.chunks(256) {
            notes.extend(crate::method::system::text_collab::suggest(
                &text_expert,
                chunk,
                false,
                COLLAB_TOKENS,
                &inner_device,
            )?);
        }
        notes_by_expert.push(notes);
    }
    Ok(notes_by_expert)
}

/// The policy's warm-start (prompt, target) pairs: per question, the plain prompt and the
/// prompt with the experts' notes to another question, each with a random answer of the task.
fn warm_start_pairs(
    corpora: &[(DemoTask, Vec<Entry>)],
    notes_by_expert: &[Vec<String>],
) -> Vec<(String, String)> {
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let mut pairs = Vec::new();
    let mut offset = 0;
    for (_, entries) in corpora {
        let n = entries.len();
        for e in entries {
            let answer = entries[rng.random_range(0..n)]
                .answer
                .clone()
                .unwrap_or_default();
            let target = format!("{}{answer}{}", vocab::ANSWER_OPEN, vocab::ANSWER_CLOSE);
            pairs.push((e.question.clone(), target.clone()));
            let other = offset + rng.random_range(0..n);
            let named: Vec<(&str, &str)> = TEAM
                .iter()
                .zip(notes_by_expert)
                .map(|(name, notes)| (*name, notes[other].as_str()))
                .collect();
            pairs.push((
                crate::method::system::text_collab::with_suggestions(&e.question, &named),
                target,
            ));
        }
        offset += n;
    }
    pairs
}

/// Build the policy's vocabulary (the corpora, the warm-start prompts and the answer tags)
/// and warm-start it on `pairs`.
fn warm_start_policy<B: AutodiffBackend>(
    settings: &DemoSettings,
    models: &Path,
    all_text: &[String],
    pairs: Vec<(String, String)>,
    device: &B::Device,
    progress: &mut dyn FnMut(&str),
) -> Result<(), TrainError> {
    let policy_tokenizer = vocab::build(
        all_text
            .iter()
            .map(String::as_str)
            .chain(pairs.iter().map(|(p, _)| p.as_str())),
        Segmentation::Words,
        &[vocab::ANSWER_OPEN, vocab::ANSWER_CLOSE],
    )?;
    let warm = examples(&policy_tokenizer, pairs.into_iter())?;
    progress(&format!(
        "warm-starting the policy on the answer format ({} examples, {} steps)",
        warm.len(),
        settings.warm_start_steps
    ));
    make_model::<B>(
        &models.join("policy"),
        policy_tokenizer,
        &warm,
        &[],
        settings,
        settings.warm_start_steps,
        19,
        device,
        progress,
    )?;
    Ok(())
}

/// Build the team and the policy under `out_dir/models`, then train and evaluate every
/// (task, mode, seed) cell; writes `out_dir/report.md` and `out_dir/results.json`.
pub fn run_demo<B: AutodiffBackend>(
    settings: &DemoSettings,
    device: &B::Device,
    progress: &mut dyn FnMut(&str),
) -> Result<DemoResults, TrainError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e: std::io::Error| TrainError::BadInput(format!("{}: {e}", p.display()))
    };
    let models = settings
        .models_dir
        .clone()
        .unwrap_or_else(|| settings.out_dir.join("models"));
    std::fs::create_dir_all(&models).map_err(io(&models))?;

    // The team and the policy depend only on the model settings: rebuilt when those change,
    // reused otherwise (re-running the GRPO part costs minutes less).
    let fingerprint = serde_json::json!({
        "corpus_size": settings.corpus_size,
        "specialist_steps": settings.specialist_steps,
        "warm_start_steps": settings.warm_start_steps,
        "hidden_size": settings.hidden_size,
        "num_layers": settings.num_layers,
        "version": 4,
    });
    let built = models.join("built.json");
    let previous = std::fs::read_to_string(&built)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok());
    let expert_accuracy: BTreeMap<String, (String, f32)> = match previous {
        Some(p) if p["settings"] == fingerprint => {
            progress(&format!(
                "reusing the team and policy in {}",
                models.display()
            ));
            serde_json::from_value(p["expert_accuracy"].clone()).unwrap_or_default()
        }
        _ => {
            let accuracy = build_models::<B>(settings, &models, device, progress)?;
            let record = serde_json::json!({"settings": fingerprint, "expert_accuracy": accuracy});
            std::fs::write(&built, record.to_string()).map_err(io(&built))?;
            accuracy
        }
    };

    // GRPO: every task, both modes, every seed.
    let mut outcomes: Vec<Outcome> = Vec::new();
    for task in &settings.tasks {
        for &mode in &settings.modes {
            for &seed in &settings.seeds {
                let label = format!("{}-{}-seed{seed}", task.label, mode.name());
                let config = run_config(settings, &models, task, mode, seed)?;
                let dir = settings.out_dir.join("runs").join(&label);
                let started = std::time::Instant::now();
                let outcome = crate::running::run::run::<B>(
                    &config,
                    &dir,
                    None,
                    false,
                    device,
                    &mut crate::running::run::Unobserved,
                )?;
                progress(&format!(
                    "{label}: {} steps in {:.0} s, held-out accuracy {:.3}{}",
                    outcome.steps,
                    started.elapsed().as_secs_f64(),
                    outcome.eval.as_ref().map_or(f64::NAN, |e| e.accuracy),
                    outcome
                        .eval
                        .as_ref()
                        .and_then(|e| e.accuracy_without_context)
                        .map_or(String::new(), |a| format!(" ({a:.3} without C)"))
                ));
                outcomes.push((*task, mode, seed, outcome));
            }
        }
    }
    let results = summarize(settings, &outcomes, &expert_accuracy)?;
    Ok(results)
}

/// The demo table's row label of a system: its name, with what it is for the paper's four.
fn system_name(mode: Mode) -> String {
    let what = match mode {
        Mode::Single => "policy alone",
        Mode::Fused => "n-Musketeers",
        Mode::HardRoute => "one expert per prompt",
        Mode::TextCollab => "experts' answers in the prompt",
    };
    format!("{} ({what})", mode.name())
}

/// One finished GRPO run of the demo: its task, mode and seed.
type Outcome = (DemoTask, Mode, u64, RunOutcome);

fn summarize(
    settings: &DemoSettings,
    outcomes: &[Outcome],
    expert_accuracy: &BTreeMap<String, (String, f32)>,
) -> Result<DemoResults, TrainError> {
    let mut rows = Vec::new();
    let mut specialist_utilization = BTreeMap::new();
    let mut final_utilization = BTreeMap::new();
    for task in &settings.tasks {
        accuracy_rows(settings, task, outcomes, expert_accuracy, &mut rows);
        let specialist = TEAM.iter().position(|m| *m == task.specialist).unwrap_or(0);
        for mode in [Mode::Fused, Mode::HardRoute] {
            if !settings.modes.contains(&mode) {
                continue;
            }
            let (first, last_mean) = cell_utilization(outcomes, task, mode, specialist)?;
            let key = format!("{} {}", task.label, mode.name());
            specialist_utilization.insert(key.clone(), (first, last_mean[specialist]));
            final_utilization.insert(key, last_mean);
        }
    }
    let report = settings.out_dir.join("report.md");
    let results = DemoResults {
        rows,
        specialist_utilization,
        final_utilization,
        report: report.clone(),
    };
    write_demo_report(settings, outcomes, &results)?;
    write_results_json(settings, &results)?;
    Ok(results)
}

/// The runs of one (task, mode) cell, in seed order.
fn cell_outcomes<'a>(
    outcomes: &'a [Outcome],
    task: &'a DemoTask,
    mode: Mode,
) -> impl Iterator<Item = &'a Outcome> + 'a {
    outcomes.iter().filter(move |o| o.0 == *task && o.1 == mode)
}

/// `task`'s table rows: every mode (fused also without C), then its specialist alone.
fn accuracy_rows(
    settings: &DemoSettings,
    task: &DemoTask,
    outcomes: &[Outcome],
    expert_accuracy: &BTreeMap<String, (String, f32)>,
    rows: &mut Vec<DemoRow>,
) {
    let cell = |mode: Mode| cell_outcomes(outcomes, task, mode);
    let mut push = |system: &str, accuracies: Vec<f64>| {
        let (mean, std) = mean_std(&accuracies);
        rows.push(DemoRow {
            task: task.label.into(),
            system: system.into(),
            accuracies,
            mean,
            std,
        });
    };
    let acc = |o: &Outcome| o.3.eval.as_ref().map_or(f64::NAN, |e| e.accuracy);
    for &mode in &settings.modes {
        push(&system_name(mode), cell(mode).map(acc).collect());
        if mode == Mode::Fused {
            push(
                "fused, C removed at evaluation",
                cell(Mode::Fused)
                    .map(|o| {
                        o.3.eval
                            .as_ref()
                            .and_then(|e| e.accuracy_without_context)
                            .unwrap_or(f64::NAN)
                    })
                    .collect(),
            );
        }
    }
    if let Some((name, exact)) = expert_accuracy.get(task.label) {
        push(
            &format!("{name} expert alone (supervised, exact answer)"),
            vec![f64::from(*exact)],
        );
    }
}

/// The (task, mode) cell's utilization, mean over seeds: the specialist's share over the
/// first 10% of steps, and every member's share over the last 10%.
fn cell_utilization(
    outcomes: &[Outcome],
    task: &DemoTask,
    mode: Mode,
    specialist: usize,
) -> Result<(f64, Vec<f64>), TrainError> {
    let mut firsts = Vec::new();
    let mut lasts: Vec<Vec<f64>> = Vec::new();
    for o in cell_outcomes(outcomes, task, mode) {
        let curves = crate::running::report::read_curves(&o.3.dir.join("metrics.jsonl"))?;
        let series = |e: usize| -> Vec<f64> {
            curves
                .utilization
                .iter()
                .map(|u| u.get(e).copied().unwrap_or(f64::NAN))
                .collect()
        };
        firsts.push(crate::running::report::first_last(&series(specialist), 0.1).0);
        lasts.push(
            (0..TEAM.len())
                .map(|e| crate::running::report::first_last(&series(e), 0.1).1)
                .collect(),
        );
    }
    let last_mean: Vec<f64> = (0..TEAM.len())
        .map(|e| mean_std(&lasts.iter().map(|l| l[e]).collect::<Vec<_>>()).0)
        .collect();
    Ok((mean_std(&firsts).0, last_mean))
}

/// `out_dir/results.json`.
fn write_results_json(settings: &DemoSettings, results: &DemoResults) -> Result<(), TrainError> {
    let path = settings.out_dir.join("results.json");
    let text = serde_json::to_string_pretty(results)
        .map_err(|e| TrainError::BadInput(format!("results: {e}")))?;
    std::fs::write(&path, text)
        .map_err(|e| TrainError::BadInput(format!("{}: {e}", path.display())))?;
    Ok(())
}

/// The results table as Markdown (the layout of the paper's Table 1).
pub fn table(results: &DemoResults) -> String {
    let mut md = String::from(
        "| task | system | accuracy (mean ± std over seeds) | per seed |\n|---|---|---|---|\n",
    );
    for r in &results.rows {
        let per: Vec<String> = r.accuracies.iter().map(|a| format!("{a:.3}")).collect();
        let _ = writeln!(
            md,
            "| {} | {} | {:.3} ± {:.3} | {} |",
            r.task,
            r.system,
            r.mean,
            r.std,
            per.join(", ")
        );
    }
    md
}

fn write_demo_report(
    settings: &DemoSettings,
    outcomes: &[Outcome],
    results: &DemoResults,
) -> Result<(), TrainError> {
    let mut md = String::from("# n-Musketeers demo\n\n");
    write_demo_settings(settings, &mut md);
    md.push_str(&table(results));
    write_verdicts(settings, results, &mut md);
    write_utilization_table(settings, results, &mut md);
    write_run_links(settings, outcomes, &mut md);
    let path = settings.out_dir.join("report.md");
    std::fs::write(&path, md).map_err(|e| TrainError::BadInput(format!("{}: {e}", path.display())))
}

/// The paragraph that says what was trained and how.
fn write_demo_settings(settings: &DemoSettings, md: &mut String) {
    let _ = writeln!(
        md,
        "Team: {} (the naive expert is untrained). Policy: a tiny Llama warm-started on the \
         answer format with random answers. GRPO: {} steps × {} prompts × {} samples, LoRA rank 32, \
         seeds {:?}, lr {} (linear decay), beta {}. Experts pass the {:?} token of hidden state {}. Held-out \
         problems: {} per run, greedy.\n",
        TEAM.join(", "),
        settings
            .tasks
            .iter()
            .map(|t| format!("{} ({})", settings.steps_for(t), t.label))
            .collect::<Vec<_>>()
            .join(", "),
        settings.prompts_per_step,
        settings.num_generations,
        settings.seeds,
        settings.learning_rate,
        settings.beta,
        settings.readout,
        settings.expert_layer,
        settings.eval_problems
    );
}

/// Per task: does fused beat single, by more than one standard deviation?
fn write_verdicts(settings: &DemoSettings, results: &DemoResults, md: &mut String) {
    md.push_str("\n## Does the fused team beat the single policy?\n\n");
    for task in &settings.tasks {
        let get = |s: &str| {
            results
                .rows
                .iter()
                .find(|r| r.task == task.label && r.system.starts_with(s))
        };
        if let (Some(f), Some(s)) = (get("fused (n"), get("single")) {
            let verdict = if f.mean - f.std > s.mean + s.std {
                "yes, by more than one standard deviation"
            } else if f.mean > s.mean {
                "higher on average, within one standard deviation"
            } else {
                "no"
            };
            let _ = writeln!(
                md,
                "- {}: fused {:.3} vs single {:.3}: {verdict}.",
                task.label, f.mean, s.mean
            );
        }
    }
}

/// The specialist's share, first and last 10% of steps, and every member's at the end.
fn write_utilization_table(settings: &DemoSettings, results: &DemoResults, md: &mut String) {
    md.push_str("\n## Does utilization concentrate on the relevant expert?\n\nFused: share of the latent interface's attention; hard-route: share of prompts routed.\n\n| task, mode | specialist | share, first 10% of steps | share, last 10% | last 10%, every member |\n|---|---|---|---|---|\n");
    for (key, (a, b)) in &results.specialist_utilization {
        let task = settings.tasks.iter().find(|t| key.starts_with(t.label));
        let all: Vec<String> = TEAM
            .iter()
            .zip(results.final_utilization.get(key).into_iter().flatten())
            .map(|(n, u)| format!("{n} {u:.3}"))
            .collect();
        let _ = writeln!(
            md,
            "| {key} | {} | {a:.3} | {b:.3} | {} |",
            task.map_or("", |t| t.specialist),
            all.join(", ")
        );
    }
    md.push_str("\nUniform attention over three experts is 0.333.\n\n");
}

/// Links to every run's own report.
fn write_run_links(settings: &DemoSettings, outcomes: &[Outcome], md: &mut String) {
    md.push_str("## Runs\n\n");
    for (task, mode, seed, o) in outcomes {
        let rel = o.dir.strip_prefix(&settings.out_dir).unwrap_or(&o.dir);
        let _ = writeln!(
            md,
            "- [{} {} seed {seed}]({}/report.md)",
            task.label,
            mode.name(),
            rel.display()
        );
    }
}
