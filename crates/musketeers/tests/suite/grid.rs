//! The experiment grid: the paper's grid file expands into the cells the paper describes, and
//! a tiny grid runs end to end (file tasks, evaluation on a file, resume, skip, table).

use crate::common;

use burn::backend::Autodiff;
use burn_flex::Flex;
use musketeers::grid::{CellState, Grid, Selection, cell_state, write_summary};
use musketeers::run_config::Mode;
use musketeers::train::ExpertReadout;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

type Ad = Autodiff<Flex>;

fn paper_grid() -> Grid {
    Grid::from_file(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs/paper/grid.toml"),
    )
    .expect("the paper grid parses")
}

fn pick(tasks: &[&str], systems: &[&str], scale: Option<&str>) -> Selection {
    Selection {
        scale: scale.map(str::to_string),
        tasks: tasks.iter().map(|s| s.to_string()).collect(),
        systems: systems.iter().map(|s| s.to_string()).collect(),
        seeds: vec![],
    }
}

#[test]
fn the_paper_grid_expands_to_the_papers_settings() {
    let grid = paper_grid();
    let out = Path::new("runs/paper/full");
    let all = grid.cells(&Selection::default(), out).expect("cells");
    // 4 tasks x 7 systems (4 systems + 3 ablations) x 3 seeds.
    assert_eq!(all.len(), 4 * 7 * 3);
    let cell = |task: &str, system: &str, scale: Option<&str>| {
        grid.cells(&pick(&[task], &[system], scale), out)
            .expect("cells")
            .remove(0)
    };
    // The CPU's real experiment: a small policy, one expert that knows more, two-digit sums.
    let real = cell("sums", "fused-gated", Some("cpu-real"));
    assert_eq!(real.config.policy.model, "smollm2-135m");
    assert_eq!(real.config.team.len(), 1);
    assert_eq!(real.config.team[0].model, "qwen2.5-coder-0.5b");
    assert_eq!(
        real.config.interface.injection,
        musketeers::run_config::Injection::Gated
    );
    assert_eq!(
        (real.config.grpo.steps, real.config.eval.problems),
        (20, 128)
    );
    // The same with the expert read where it writes its answer, and gates that can open.
    let read = cell("sums", "fused-gated", Some("cpu-real-read"));
    assert_eq!(read.config.team[0].readout_suffix, "<answer>");
    assert_eq!(read.config.interface.gate_scale, 1000.0);
    assert_eq!(
        read.config.interface.output_init,
        musketeers::run_config::OutputInit::EmbeddingRms
    );
    assert_eq!(real.config.team[0].readout_suffix, "");
    // Those three and compact expert weights, nothing else changed.
    assert_ne!(read.config.team_weights, real.config.team_weights);
    let (mut a, b) = (read.config.clone(), real.config.clone());
    a.team[0].readout_suffix = String::new();
    a.team_weights = b.team_weights;
    (a.interface.gate_scale, a.interface.output_init) =
        (b.interface.gate_scale, b.interface.output_init);
    a.out_dir = b.out_dir.clone();
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
    // Twice the steps, nothing else changed.
    let longer = cell("sums", "fused-gated", Some("cpu-real-read-40"));
    assert_eq!(longer.config.grpo.steps, 40);
    let (mut a, mut b) = (longer.config.clone(), read.config.clone());
    (a.grpo.steps, b.grpo.steps) = (0, 0);
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
    // Slower gates, nothing else changed.
    let slow = cell("sums", "fused-gated", Some("cpu-real-read-40-slow-gates"));
    assert_eq!(slow.config.interface.gate_scale, 250.0);
    let (mut a, mut b) = (slow.config.clone(), longer.config.clone());
    (a.interface.gate_scale, b.interface.gate_scale) = (0.0, 0.0);
    a.out_dir = b.out_dir.clone();
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
    // Dynamic sampling as systems: each differs from its plain system by that switch alone.
    for (dynamic, plain) in [
        ("fused-gated-dynamic", "fused-gated"),
        ("single-dynamic", "single"),
    ] {
        let with = cell("sums", dynamic, Some("cpu-real-read-40"));
        let without = cell("sums", plain, Some("cpu-real-read-40"));
        assert!(with.config.grpo.dynamic_sampling, "{dynamic}");
        assert!(!without.config.grpo.dynamic_sampling, "{plain}");
        let mut with = with.config.clone();
        with.grpo.dynamic_sampling = false;
        with.out_dir = without.config.out_dir.clone();
        assert_eq!(
            format!("{with:?}"),
            format!("{:?}", without.config),
            "{dynamic}"
        );
    }
    let single = cell("sums", "single", Some("cpu-real-read"));
    assert_eq!(single.config.policy.model, "smollm2-135m");
    assert_eq!(single.config.mode, Mode::Single);
    let fused = cell("arithmetic", "fused", None);
    let g = &fused.config.grpo;
    assert_eq!(
        (
            g.steps,
            g.prompts_per_step,
            g.num_generations,
            g.max_completion_length
        ),
        (500, 32, 8, 128)
    );
    assert_eq!((g.learning_rate, g.beta, g.seed), (1e-4, 0.04, 1));
    assert_eq!(fused.config.mode, Mode::Fused);
    assert_eq!(fused.config.team.len(), 3);
    assert_eq!(fused.config.policy.lora.rank, 8);
    assert_eq!(fused.config.eval.problems, 256);
    assert_eq!(fused.dir, out.join("arithmetic/fused/seed-1"));
    assert!(cell("arithmetic", "single", None).config.team.is_empty());
    let first = cell("logic", "fused-first-token", None);
    assert!(
        first
            .config
            .team
            .iter()
            .all(|m| m.readout == ExpertReadout::First)
    );
    assert_eq!(cell("logic", "fused-naive-team", None).config.team.len(), 1);
    // GSM8K: one epoch of 7,473 problems at 32 per step, room to reason, the test file.
    let gsm8k = cell("gsm8k", "fused", None);
    assert_eq!(gsm8k.config.grpo.steps, 233);
    assert_eq!(gsm8k.config.grpo.max_completion_length, 256);
    assert!(
        gsm8k
            .config
            .policy
            .prompt_template
            .starts_with("{question}\nReason step by step"),
        "{:?}",
        gsm8k.config.policy.prompt_template
    );
    assert!(
        gsm8k.config.eval.tasks[0]
            .file
            .as_ref()
            .is_some_and(|f| f.ends_with("gsm8k/test.jsonl"))
    );
    // The CPU scale cuts steps and prompts but leaves GSM8K its completion length.
    let small = cell("gsm8k", "fused", Some("cpu"));
    assert_eq!(small.config.grpo.steps, 15);
    assert_eq!(small.config.grpo.prompts_per_step, 4);
    assert_eq!(small.config.grpo.max_completion_length, 256);
    for (selection, named) in [
        (pick(&["poetry"], &[], None), "poetry"),
        (pick(&[], &["oracle"], None), "oracle"),
        (pick(&[], &[], Some("huge")), "huge"),
    ] {
        let err = grid.cells(&selection, out).expect_err("unknown name");
        assert!(err.to_string().contains(named), "{err}");
    }
}

#[test]
fn a_scale_that_extends_a_missing_scale_or_itself_is_an_error_naming_it() {
    let paper = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs/paper/grid.toml"),
    )
    .expect("the paper grid");
    let temp = tempfile::tempdir().expect("temp");
    for (extra, named) in [
        (
            "[[scale]]\nname = \"orphan\"\nextends = \"nowhere\"\n",
            "scale orphan: extends \"nowhere\"",
        ),
        (
            "[[scale]]\nname = \"a\"\nextends = \"b\"\n[[scale]]\nname = \"b\"\nextends = \"a\"\n",
            "a -> b -> a",
        ),
    ] {
        let path = temp.path().join("grid.toml");
        std::fs::write(&path, format!("{paper}\n{extra}")).expect("grid");
        let err = Grid::from_file(&path).expect_err("a bad `extends`");
        assert!(err.to_string().contains(named), "{err}");
    }
}

fn tiny_grid(temp: &Path, learning_rate: f64) -> Grid {
    let train: String = (0..12)
        .map(|i| format!("{{\"question\":\"{i} plus {i}\",\"answer\":{}}}\n", 2 * i))
        .collect();
    std::fs::write(temp.join("train.jsonl"), train).expect("train file");
    std::fs::write(
        temp.join("test.jsonl"),
        "{\"question\":\"20 plus 1\",\"answer\":21}\n{\"question\":\"3 plus 4\",\"answer\":7}\n",
    )
    .expect("test file");
    // The grid's base is the tiny run without its mode, team and tasks, which cells set.
    let mut base = common::tiny_run_table(
        temp,
        &format!("[grpo]\nsteps = 2\nlearning_rate = {learning_rate}\n[eval]\nproblems = 5"),
    );
    for key in ["mode", "team", "tasks"] {
        base.remove(key);
    }
    let text = format!(
        r#"
        seeds = [1, 2]
        [[team]]
        name = "tiny"
        members = [{{ name = "qwen3", model = "{expert}" }}]
        [[task]]
        name = "sums"
        tasks = [{{ name = "sums", file = "{train}", format = "qa-numeric" }}]
        eval_tasks = [{{ name = "sums", file = "{test}", format = "qa-numeric" }}]
        [[system]]
        name = "single"
        mode = "single"
        [[system]]
        name = "fused"
        mode = "fused"
        {base}
        "#,
        expert = common::fixture_with_tokenizer("qwen3-qk-norm", temp).display(),
        train = temp.join("train.jsonl").display(),
        test = temp.join("test.jsonl").display(),
        base = toml::to_string(&toml::Table::from_iter([("base".to_string(), base.into())]))
            .expect("TOML"),
    );
    let path = temp.join("grid.toml");
    std::fs::write(&path, text).expect("grid");
    Grid::from_file(&path).expect("tiny grid parses")
}

#[test]
fn a_grid_runs_resumes_skips_and_tabulates() {
    let temp = tempfile::tempdir().expect("temp");
    let grid = tiny_grid(temp.path(), 1e-3);
    let out = temp.path().join("out");
    let cells = grid.cells(&Selection::default(), &out).expect("cells");
    assert_eq!(cells.len(), 4);
    // The first cell is killed after its first step, as a Ctrl-C would.
    let first = &cells[0];
    let outcome = musketeers::run::run::<Ad>(
        &first.config,
        &first.dir,
        None,
        false,
        &Default::default(),
        &mut |_: &musketeers::train::StepReport| ControlFlow::Break(()),
    )
    .expect("first step");
    assert!(outcome.stopped);
    assert_eq!(cell_state(first).expect("state"), CellState::Partial(1));
    for cell in &cells {
        let resume = match cell_state(cell).expect("state") {
            CellState::Done(_) => unreachable!("nothing is finished yet"),
            CellState::Partial(_) => true,
            CellState::New => false,
        };
        let outcome = musketeers::run::run::<Ad>(
            &cell.config,
            &cell.dir,
            None,
            resume,
            &Default::default(),
            &mut musketeers::run::Unobserved,
        )
        .expect("cell runs");
        let eval = outcome.eval.expect("evaluated");
        // Evaluated on the test file: both of its lines, scored by their source.
        assert_eq!(eval.problems, 2, "{}", cell.label());
        assert_eq!(eval.per_task.keys().collect::<Vec<_>>(), vec!["qa-numeric"]);
        assert_eq!(eval.examples[0].question, "20 plus 1");
        assert!(matches!(
            cell_state(cell).expect("state"),
            CellState::Done(_)
        ));
    }
    // The resumed cell logged each step once.
    let metrics = std::fs::read_to_string(first.dir.join("metrics.jsonl")).expect("metrics");
    assert_eq!(metrics.lines().count(), 2);
    // Training drew the file's questions.
    let samples = std::fs::read_to_string(first.dir.join("samples.jsonl")).expect("samples");
    assert!(samples.contains(" plus "), "{samples}");
    let table = write_summary(&grid, &cells, &out).expect("summary");
    assert!(table.contains("| sums |"), "{table}");
    assert!(table.contains("(n=2)"), "{table}");
    assert!(table.contains("fused without C"), "{table}");
    assert!(out.join("table.md").exists());
    assert!(out.join("fig-utilization-sums-fused.svg").exists());
    // Changed settings: the old cells are not taken for the new ones.
    let changed = tiny_grid(temp.path(), 2e-3);
    let cells = changed.cells(&Selection::default(), &out).expect("cells");
    let err = cell_state(&cells[0]).expect_err("other settings");
    assert!(err.to_string().contains("other settings"), "{err}");
}
