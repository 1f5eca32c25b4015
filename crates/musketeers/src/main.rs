//! The `musketeers` command line.

mod cli;
#[cfg(feature = "mpi")]
use cli::dp;
use cli::{backend, live, lm, serve_cli};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use musketeers::score_lines;
use musketeers_verify::generators;
use musketeers_verify::options::Options;
use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: musketeers_lm::allocator::MiMalloc = musketeers_lm::allocator::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "musketeers",
    version,
    about = "Frozen expert teams, a latent interface and GRPO for small language models"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Score answers and sample tasks (reasoning-gym parity).
    #[command(subcommand)]
    Verify(VerifyCommand),
    /// Run a language model: forward dump, tokenize, generate.
    #[command(subcommand)]
    Lm(lm::LmCommand),
    /// Show the compute backends compiled in and measure one matmul on the chosen device.
    Device(backend::DeviceArgs),
    /// Train with GRPO from a TOML run config (fused team or single policy), on the CPU.
    Train {
        #[arg(long)]
        config: PathBuf,
        /// Override the config's number of steps.
        #[arg(long)]
        steps: Option<u64>,
        /// Run directory (default: the config's out_dir, else runs/<config stem>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Continue from the run directory's last checkpoint, exactly.
        #[arg(long)]
        resume: bool,
        /// Override a config key, e.g. `--set grpo.learning_rate=1e-4` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Compute backend (cuda and wgpu need the cargo feature of that name).
        #[arg(long, value_enum, default_value_t = backend::DeviceKind::Cpu)]
        device: backend::DeviceKind,
        /// Float type of the team, rollout and reference passes (f32, bf16, f16): the same
        /// as `--set dtype=...`. Trained weights stay f32.
        #[arg(long)]
        dtype: Option<musketeers_lm::Precision>,
        /// Live progress: burn-train's dashboard, or one line per step (auto: the dashboard on
        /// a terminal for GPU runs; on the CPU its render thread would take a core).
        #[arg(long, value_enum, default_value_t = live::ProgressDisplay::Auto)]
        progress: live::ProgressDisplay,
    },
    /// The offline demo: train a tiny expert team and policy from scratch, then fused vs
    /// single GRPO on arithmetic and logic over several seeds; prints the table.
    Demo(DemoArgs),
    /// An experiment grid (default: the paper's, configs/paper/grid.toml): every selected cell
    /// trained and evaluated (finished cells skipped, killed ones resumed from their
    /// checkpoint), then OUT/table.md (Table 1) and the figures.
    Reproduce(ReproduceArgs),
    /// Serve a trained run (or a model) through an OpenAI-compatible HTTP API, with each
    /// expert's share of the interface's attention per request.
    Serve(serve_cli::ServeArgs),
    /// Rewrite a run directory's report.md and plots from its metrics.jsonl and eval.json.
    Report {
        #[arg(long)]
        run: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
struct DemoArgs {
    /// Where models, runs and the report go.
    #[arg(long, default_value = "runs/demo")]
    out: PathBuf,
    /// The small version (the CI integration test's size): minutes, not a result.
    #[arg(long)]
    quick: bool,
    /// Override the number of GRPO steps per run.
    #[arg(long)]
    steps: Option<u64>,
    /// Seeds, comma-separated (default 1,2,3).
    #[arg(long, value_delimiter = ',')]
    seeds: Vec<u64>,
    /// Tasks, comma-separated: arithmetic, logic (default both).
    #[arg(long, value_delimiter = ',')]
    tasks: Vec<String>,
    /// Override the supervised steps of the arithmetic expert (the logic expert takes half).
    #[arg(long)]
    expert_steps: Option<usize>,
    /// Systems to compare, comma-separated: single, fused, hard-route, text-collab (default all).
    #[arg(long, value_delimiter = ',')]
    modes: Vec<String>,
    /// Override the GRPO learning rate (LoRA and interface).
    #[arg(long)]
    lr: Option<f64>,
    /// Override the KL weight to the warm-started policy.
    #[arg(long)]
    beta: Option<f64>,
    /// What each expert passes on: last, first, mean, all (the readout ablation).
    #[arg(long)]
    readout: Option<String>,
    /// Which hidden state the experts pass on (negative from the end; the layer ablation).
    #[arg(long, allow_hyphen_values = true)]
    layer: Option<isize>,
    /// Build or reuse the team and policy here instead of OUT/models.
    #[arg(long)]
    models: Option<PathBuf>,
    /// Override a key of every GRPO run's config, e.g. `--set interface.learning_rate=1e-3`
    /// or `--set grpo.prompts_per_step=16` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Compute backend (cuda and wgpu need the cargo feature of that name).
    #[arg(long, value_enum, default_value_t = backend::DeviceKind::Cpu)]
    device: backend::DeviceKind,
}

#[derive(clap::Args, Debug)]
struct ReproduceArgs {
    /// The grid file.
    #[arg(long, default_value = "configs/paper/grid.toml")]
    grid: PathBuf,
    /// A `[[scale]]` of the grid (e.g. `cpu`); default: the settings as written.
    #[arg(long)]
    scale: Option<String>,
    /// Tasks, comma-separated (default: all of the grid's).
    #[arg(long, value_delimiter = ',')]
    tasks: Vec<String>,
    /// Systems, comma-separated (default: the grid's default systems).
    #[arg(long, value_delimiter = ',')]
    systems: Vec<String>,
    /// Seeds, comma-separated (default: the grid's).
    #[arg(long, value_delimiter = ',')]
    seeds: Vec<u64>,
    /// Where the cells and the table go (default runs/paper/<scale>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the cells and where each stands, run nothing.
    #[arg(long)]
    list: bool,
    /// Compute backend (cuda and wgpu need the cargo feature of that name).
    #[arg(long, value_enum, default_value_t = backend::DeviceKind::Cpu)]
    device: backend::DeviceKind,
}

#[derive(Subcommand, Debug)]
enum VerifyCommand {
    /// Score a JSONL file: one `{"score": f}` or `{"error": msg}` per input line, in order.
    Score {
        /// Lines of `{"dataset", "entry", "answer" | "completion"}`; `-` reads stdin.
        #[arg(long)]
        input: PathBuf,
    },
    /// Print generated entries of a task as JSON lines.
    Sample {
        /// Task name (see `musketeers verify sample --task list`).
        #[arg(long)]
        task: String,
        #[arg(long, default_value_t = 5)]
        n: u64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Generator settings as in reasoning-gym, e.g. `--config min_terms=3`.
        #[arg(long = "config", value_name = "KEY=VALUE")]
        config: Vec<String>,
    },
}

fn main() -> Result<()> {
    #[cfg(feature = "mimalloc")]
    musketeers_lm::allocator::keep_freed_memory();
    let cli = Cli::parse();
    match cli.command {
        Command::Verify(VerifyCommand::Score { input }) => score(&input),
        Command::Verify(VerifyCommand::Sample {
            task,
            n,
            seed,
            config,
        }) => sample(&task, n, seed, &config),
        Command::Device(args) => backend::run(&args),
        Command::Lm(command) => lm::run(command),
        Command::Train {
            config,
            steps,
            out,
            resume,
            mut overrides,
            device,
            dtype,
            progress,
        } => {
            overrides.extend(dtype.map(|d| format!("dtype=\"{d}\"")));
            train(&config, steps, out, resume, &overrides, device, progress)
        }
        Command::Demo(args) => demo(&args),
        Command::Serve(args) => serve_cli::run(&args),
        Command::Reproduce(args) => reproduce(&args),
        Command::Report { run } => {
            musketeers::report::write_run_report(&run)?;
            writeln!(std::io::stdout(), "{}", run.join("report.md").display())?;
            Ok(())
        }
    }
}

fn train(
    path: &std::path::Path,
    steps: Option<u64>,
    out: Option<PathBuf>,
    resume: bool,
    overrides: &[String],
    device: backend::DeviceKind,
    display: live::ProgressDisplay,
) -> Result<()> {
    use musketeers::run_config::RunConfig;
    let config = RunConfig::from_file(path)?.with_overrides(overrides)?;
    let out = out
        .or_else(|| config.out_dir.clone())
        .unwrap_or_else(|| PathBuf::from("runs").join(path.file_stem().unwrap_or_default()));
    #[cfg(feature = "mpi")]
    if let Some(launch) = dp::Launch::from_env()? {
        // One of several processes: each trains its share; process 0 writes and reports.
        let collective = launch.collective()?;
        let outcome = train_config(
            &config,
            &out,
            steps,
            resume,
            device,
            if launch.rank() == 0 {
                display
            } else {
                live::ProgressDisplay::Quiet
            },
            ctrl_c_interrupter()?,
            Box::new(collective),
        );
        return match outcome {
            Ok(outcome) if launch.rank() == 0 => report_outcome(&outcome),
            Ok(_) => Ok(()),
            Err(error) => launch.abort(&error),
        };
    }
    let outcome = train_config(
        &config,
        &out,
        steps,
        resume,
        device,
        display,
        ctrl_c_interrupter()?,
        Box::new(musketeers::train::collective::Alone),
    )?;
    report_outcome(&outcome)
}

fn report_outcome(outcome: &musketeers::run::RunOutcome) -> Result<()> {
    let mut stdout = std::io::stdout();
    if outcome.stopped {
        writeln!(
            stdout,
            "stopped after step {}; continue with --resume",
            outcome.steps
        )?;
    }
    if let Some(eval) = &outcome.eval {
        write!(
            stdout,
            "held-out accuracy after {} steps: {:.3} on {} problems",
            outcome.steps, eval.accuracy, eval.problems
        )?;
        match eval.accuracy_without_context {
            Some(a) => writeln!(stdout, " ({a:.3} without the team's context)")?,
            None => writeln!(stdout)?,
        }
    }
    writeln!(
        stdout,
        "run written to {} (report: {})",
        outcome.dir.display(),
        outcome.dir.join("report.md").display()
    )?;
    Ok(())
}

/// Ctrl-C (or the dashboard's `q`, `s`) asks a run to stop after the step in flight; it is
/// checkpointed, so `--resume` continues it. A second Ctrl-C exits at once. Installed once per
/// process.
fn ctrl_c_interrupter() -> Result<burn::train::Interrupter> {
    let interrupter = burn::train::Interrupter::new();
    let on_ctrl_c = interrupter.clone();
    ctrlc::set_handler(move || {
        if on_ctrl_c.should_stop() {
            std::process::exit(130);
        }
        on_ctrl_c.stop(Some("Ctrl-C"));
        let _ = writeln!(
            std::io::stderr(),
            "\nstopping after this step (checkpoint saved; running again resumes); Ctrl-C again quits now"
        );
    })
    .context("installing the Ctrl-C handler")?;
    Ok(interrupter)
}

/// Train one run config with live progress; Ctrl-C stops after the step in flight,
/// checkpointed.
#[allow(clippy::too_many_arguments)] // each is one of `musketeers train`'s settings
fn train_config(
    config: &musketeers::run_config::RunConfig,
    out: &std::path::Path,
    steps: Option<u64>,
    resume: bool,
    device: backend::DeviceKind,
    display: live::ProgressDisplay,
    interrupter: burn::train::Interrupter,
    collective: Box<dyn musketeers::train::collective::Collective>,
) -> Result<musketeers::run::RunOutcome> {
    let total = steps.unwrap_or(config.grpo.steps);
    // Modes without a latent interface or router report no utilization; the names go unused.
    let experts = config.team.iter().map(|m| m.name.clone()).collect();
    let on_cpu = device == backend::DeviceKind::Cpu;
    let mut live = live::LiveProgress::new(display, on_cpu, total, experts, interrupter);
    let outcome = backend::on_backend!(
        device,
        B = autodiff,
        musketeers::run::run_with::<B>(
            config,
            out,
            steps,
            resume,
            &Default::default(),
            &mut live,
            collective,
        )?
    );
    live.finish();
    Ok(outcome)
}

fn reproduce(args: &ReproduceArgs) -> Result<()> {
    use musketeers::grid::{CellState, Grid, Selection, cell_state, write_summary};
    let grid = Grid::from_file(&args.grid)?;
    let selection = Selection {
        scale: args.scale.clone(),
        tasks: args.tasks.clone(),
        systems: args.systems.clone(),
        seeds: args.seeds.clone(),
    };
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("runs/paper").join(args.scale.as_deref().unwrap_or("full"))
    });
    let cells = grid.cells(&selection, &out)?;
    let interrupter = ctrl_c_interrupter()?;
    let mut stdout = std::io::stdout();
    for (i, cell) in cells.iter().enumerate() {
        let state = cell_state(cell)?;
        let what = match &state {
            CellState::Done(report) => format!("done, accuracy {:.3}", report.accuracy),
            CellState::Partial(step) => format!("resumes at step {step}"),
            CellState::New => "new".into(),
        };
        writeln!(
            stdout,
            "[{}/{}] {}: {what} ({} steps, {})",
            i + 1,
            cells.len(),
            cell.label(),
            cell.config.grpo.steps,
            cell.dir.display()
        )?;
        if args.list || matches!(state, CellState::Done(_)) {
            continue;
        }
        let outcome = train_config(
            &cell.config,
            &cell.dir,
            None,
            matches!(state, CellState::Partial(_)),
            args.device,
            live::ProgressDisplay::Plain,
            interrupter.clone(),
            Box::new(musketeers::train::collective::Alone),
        )?;
        if outcome.stopped {
            writeln!(
                stdout,
                "stopped in {}; run the same command again to resume",
                cell.label()
            )?;
            return Ok(());
        }
        if let Some(eval) = &outcome.eval {
            writeln!(stdout, "{}: accuracy {:.3}", cell.label(), eval.accuracy)?;
        }
    }
    let table = write_summary(&grid, &cells, &out)?;
    writeln!(
        stdout,
        "\n{table}\nwritten to {}",
        out.join("table.md").display()
    )?;
    Ok(())
}

fn demo(args: &DemoArgs) -> Result<()> {
    use musketeers::demo::{run_demo, table};
    let settings = demo_settings(args)?;
    let started = std::time::Instant::now();
    let mut err = std::io::stderr();
    let mut log = |line: &str| {
        let _ = writeln!(err, "[{:>5.0}s] {line}", started.elapsed().as_secs_f64());
    };
    let results = backend::on_backend!(
        args.device,
        B = autodiff,
        run_demo::<B>(&settings, &Default::default(), &mut log)?
    );
    let mut out = std::io::stdout().lock();
    writeln!(out, "\n{}", table(&results))?;
    for (run, (first, last)) in &results.specialist_utilization {
        writeln!(
            out,
            "{run}: the task's specialist's share went from {first:.3} (first 10% of steps) to \
             {last:.3} (last 10%); uniform is 0.333"
        )?;
    }
    writeln!(
        out,
        "\nreport: {} ({:.0} s)",
        results.report.display(),
        started.elapsed().as_secs_f64()
    )?;
    Ok(())
}

/// The demo's settings: full or quick, with the command line's overrides.
fn demo_settings(args: &DemoArgs) -> Result<musketeers::demo::DemoSettings> {
    use musketeers::demo::DemoSettings;
    let mut settings = if args.quick {
        DemoSettings::quick(args.out.clone())
    } else {
        DemoSettings::full(args.out.clone())
    };
    if let Some(steps) = args.steps {
        settings.grpo_steps = Some(steps);
    }
    if !args.seeds.is_empty() {
        settings.seeds = args.seeds.clone();
    }
    if !args.modes.is_empty() {
        settings.modes = args
            .modes
            .iter()
            .map(|m| {
                serde_json::from_value(serde_json::Value::String(m.clone())).with_context(|| {
                    format!("--modes: no mode {m:?} (single, fused, hard-route, text-collab)")
                })
            })
            .collect::<Result<_>>()?;
    }
    if let Some(lr) = args.lr {
        settings.learning_rate = lr;
    }
    if let Some(beta) = args.beta {
        settings.beta = beta;
    }
    if let Some(readout) = &args.readout {
        settings.readout = serde_json::from_value(serde_json::Value::String(readout.clone()))
            .with_context(|| format!("--readout: {readout:?} is not last, first, mean or all"))?;
    }
    if let Some(layer) = args.layer {
        settings.expert_layer = layer;
    }
    settings.models_dir = args.models.clone();
    settings.overrides = args.overrides.clone();
    if let Some(steps) = args.expert_steps {
        settings.specialist_steps = steps;
    }
    if !args.tasks.is_empty() {
        settings.tasks = args
            .tasks
            .iter()
            .map(|name| {
                musketeers::demo::TASKS
                    .iter()
                    .find(|t| t.label == name)
                    .copied()
                    .with_context(|| format!("--tasks: no demo task {name:?} (arithmetic, logic)"))
            })
            .collect::<Result<_>>()?;
    }
    Ok(settings)
}

fn score(input: &PathBuf) -> Result<()> {
    let lines: Vec<String> = if input.as_os_str() == "-" {
        std::io::stdin()
            .lock()
            .lines()
            .collect::<Result<_, _>>()
            .context("reading stdin")?
    } else {
        let text = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
        // Invalid UTF-8 on one line must not lose the others.
        String::from_utf8_lossy(&text)
            .lines()
            .map(str::to_string)
            .collect()
    };
    let mut out = BufWriter::new(std::io::stdout().lock());
    for result in score_lines(&lines) {
        writeln!(out, "{result}")?;
    }
    out.flush()?;
    Ok(())
}

fn sample(task: &str, n: u64, seed: u64, config: &[String]) -> Result<()> {
    if task == "list" {
        let mut out = std::io::stdout().lock();
        for name in generators::NAMES {
            writeln!(out, "{name}")?;
        }
        return Ok(());
    }
    let options = Options::parse(task, config.iter().map(String::as_str))?;
    let generator = generators::create(task, options)?;
    if n == 0 {
        bail!("--n must be at least 1");
    }
    let mut out = BufWriter::new(std::io::stdout().lock());
    for index in 0..n {
        let entry = generator.entry(seed, index)?;
        writeln!(out, "{}", serde_json::to_string(&entry)?)?;
    }
    out.flush()?;
    Ok(())
}
