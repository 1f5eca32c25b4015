//! An experiment grid (tasks × systems × seeds, at a scale) as one TOML file, expanded into
//! run configs, and the paper's Table 1 and Figures 1/4 from the finished cells.
//!
//! The grid file is the single source of the settings: `base` is a run config without its
//! mode, team and tasks; each task, system and scale adds its own `set = ["KEY=VALUE", ...]`
//! overrides (the syntax of `musketeers train --set`), applied in that order. A scale may
//! `extends` another: the other's overrides come first.

use crate::error::TrainError;
use crate::method::team::ExpertReadout;
use crate::run_config::{MemberConfig, Mode, RunConfig, TaskConfig};
use crate::running::eval::EvalReport;
use crate::running::report::{line_chart, read_curves};
use musketeers_fusion::stats::spearman;
use serde::Deserialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// `configs/paper/grid.toml` and its kind.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grid {
    pub seeds: Vec<u64>,
    /// A run config without `mode`, `team` and `tasks`.
    pub base: toml::Table,
    #[serde(rename = "team")]
    pub teams: Vec<GridTeam>,
    #[serde(rename = "task")]
    pub tasks: Vec<GridTask>,
    #[serde(rename = "system")]
    pub systems: Vec<GridSystem>,
    #[serde(rename = "scale", default)]
    pub scales: Vec<GridScale>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridTeam {
    pub name: String,
    /// What the team is, for the report.
    #[serde(default)]
    pub description: String,
    pub members: Vec<MemberConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridTask {
    pub name: String,
    /// The training tasks (generators or files), as `[[tasks]]` of a run config.
    pub tasks: Vec<TaskConfig>,
    /// Held-out evaluation tasks (`eval.tasks`), e.g. GSM8K's test file.
    #[serde(default)]
    pub eval_tasks: Vec<TaskConfig>,
    #[serde(default)]
    pub set: Vec<String>,
    /// Run by default (without `--tasks`).
    #[serde(default = "yes")]
    pub default: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridSystem {
    pub name: String,
    pub mode: Mode,
    /// The team it reads (a `[[team]]` name; default: the first team). Ignored by `single`.
    #[serde(default)]
    pub team: Option<String>,
    /// Every member's readout (the first-token ablation sets `first`).
    #[serde(default)]
    pub readout: Option<ExpertReadout>,
    #[serde(default)]
    pub set: Vec<String>,
    /// Run by default (without `--systems`).
    #[serde(default = "yes")]
    pub default: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridScale {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Another scale whose overrides come first, so that a scale which changes one setting of
    /// another says only that setting (its own `set` wins where both name a key).
    #[serde(default)]
    pub extends: Option<String>,
    #[serde(default)]
    pub set: Vec<String>,
}

/// Which part of the grid to run; empty lists mean everything (default systems only).
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub scale: Option<String>,
    pub tasks: Vec<String>,
    pub systems: Vec<String>,
    pub seeds: Vec<u64>,
}

/// One run of the grid.
#[derive(Debug, Clone)]
pub struct Cell {
    pub task: String,
    pub system: String,
    pub seed: u64,
    pub config: RunConfig,
    pub dir: PathBuf,
}

impl Cell {
    pub fn label(&self) -> String {
        format!("{}/{}/seed-{}", self.task, self.system, self.seed)
    }
}

/// Where a cell stands on disk.
#[derive(Debug, Clone, PartialEq)]
pub enum CellState {
    New,
    /// Checkpointed at this step, not evaluated.
    Partial(u64),
    Done(EvalReport),
}

fn bad(m: String) -> TrainError {
    TrainError::BadInput(m)
}

impl Grid {
    pub fn from_file(path: &Path) -> Result<Self, TrainError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
        let grid: Self =
            toml::from_str(&text).map_err(|e| bad(format!("{}: {e}", path.display())))?;
        grid.check()
            .map_err(|e| bad(format!("{}: {e}", path.display())))?;
        Ok(grid)
    }

    fn check(&self) -> Result<(), String> {
        if self.teams.is_empty() || self.tasks.is_empty() || self.systems.is_empty() {
            return Err("a grid needs at least one [[team]], [[task]] and [[system]]".into());
        }
        for key in ["mode", "team", "tasks"] {
            if self.base.contains_key(key) {
                return Err(format!(
                    "base.{key}: set by the grid's [[{}]] entries, not in base",
                    if key == "tasks" { "task" } else { "system" }
                ));
            }
        }
        for system in &self.systems {
            if let Some(team) = &system.team
                && !self.teams.iter().any(|t| &t.name == team)
            {
                return Err(format!(
                    "system {}: no [[team]] named {team:?}",
                    system.name
                ));
            }
        }
        for scale in &self.scales {
            self.scale_overrides(scale)?;
        }
        Ok(())
    }

    /// A scale's overrides after those of the scales it extends, outermost first.
    fn scale_overrides(&self, scale: &GridScale) -> Result<Vec<String>, String> {
        let mut chain = vec![scale];
        let mut current = scale;
        while let Some(parent) = &current.extends {
            let found = self
                .scales
                .iter()
                .find(|s| &s.name == parent)
                .ok_or_else(|| {
                    format!(
                        "scale {}: extends {parent:?}, which is not a [[scale]] of this grid",
                        current.name
                    )
                })?;
            if chain.iter().any(|s| s.name == found.name) {
                let mut names: Vec<&str> = chain.iter().map(|s| s.name.as_str()).collect();
                names.push(&found.name);
                return Err(format!(
                    "scale {}: extends itself through {}",
                    scale.name,
                    names.join(" -> ")
                ));
            }
            chain.push(found);
            current = found;
        }
        Ok(chain.iter().rev().flat_map(|s| s.set.clone()).collect())
    }

    /// The scale a selection names (none: the grid's settings as written).
    fn scale(&self, name: Option<&str>) -> Result<Option<&GridScale>, TrainError> {
        let Some(name) = name else { return Ok(None) };
        self.scales
            .iter()
            .find(|s| s.name == name)
            .map(Some)
            .ok_or_else(|| {
                bad(format!(
                    "--scale {name:?}: the grid has {}",
                    names(self.scales.iter().map(|s| &s.name))
                ))
            })
    }

    /// The run config of one cell.
    pub fn cell_config(
        &self,
        task: &GridTask,
        system: &GridSystem,
        scale: Option<&GridScale>,
        seed: u64,
    ) -> Result<RunConfig, TrainError> {
        let mut root = self.base.clone();
        root.insert("mode".into(), to_toml(&system.mode)?);
        if system.mode != Mode::Single {
            let team = match &system.team {
                Some(name) => self.teams.iter().find(|t| &t.name == name),
                None => self.teams.first(),
            }
            .ok_or_else(|| bad(format!("system {}: its team is missing", system.name)))?;
            let mut members = team.members.clone();
            if let Some(readout) = system.readout {
                for member in &mut members {
                    member.readout = readout;
                }
            }
            root.insert("team".into(), to_toml(&members)?);
        }
        root.insert("tasks".into(), to_toml(&task.tasks)?);
        if !task.eval_tasks.is_empty() {
            let eval = root
                .entry("eval")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let eval = eval
                .as_table_mut()
                .ok_or_else(|| bad("base.eval is not a table".into()))?;
            eval.insert("tasks".into(), to_toml(&task.eval_tasks)?);
        }
        let config: RunConfig = toml::Value::Table(root)
            .try_into()
            .map_err(|e| bad(format!("cell {}/{}: {e}", task.name, system.name)))?;
        let scale_set = match scale {
            Some(scale) => self.scale_overrides(scale).map_err(bad)?,
            None => Vec::new(),
        };
        let overrides: Vec<String> = task
            .set
            .iter()
            .chain(&system.set)
            .chain(&scale_set)
            .cloned()
            .chain([format!("grpo.seed={seed}")])
            .collect();
        config
            .with_overrides(&overrides)
            .map_err(|e| bad(format!("cell {}/{}: {e}", task.name, system.name)))
    }

    /// The selected cells, in table order (task, system, seed), under `out`.
    pub fn cells(&self, selection: &Selection, out: &Path) -> Result<Vec<Cell>, TrainError> {
        let scale = self.scale(selection.scale.as_deref())?;
        let pick = |wanted: &[String], have: Vec<&String>, what: &str| -> Result<(), TrainError> {
            match wanted.iter().find(|w| !have.contains(w)) {
                Some(w) => Err(bad(format!(
                    "--{what}: no {what} {w:?} in the grid (it has {})",
                    names(have.into_iter())
                ))),
                None => Ok(()),
            }
        };
        pick(
            &selection.tasks,
            self.tasks.iter().map(|t| &t.name).collect(),
            "tasks",
        )?;
        pick(
            &selection.systems,
            self.systems.iter().map(|s| &s.name).collect(),
            "systems",
        )?;
        let seeds = if selection.seeds.is_empty() {
            &self.seeds
        } else {
            &selection.seeds
        };
        let mut cells = Vec::new();
        for task in &self.tasks {
            let chosen = if selection.tasks.is_empty() {
                task.default
            } else {
                selection.tasks.contains(&task.name)
            };
            if !chosen {
                continue;
            }
            for system in &self.systems {
                let chosen = if selection.systems.is_empty() {
                    system.default
                } else {
                    selection.systems.contains(&system.name)
                };
                if !chosen {
                    continue;
                }
                for &seed in seeds {
                    let dir = out
                        .join(&task.name)
                        .join(&system.name)
                        .join(format!("seed-{seed}"));
                    let mut config = self.cell_config(task, system, scale, seed)?;
                    config.out_dir = Some(dir.clone());
                    cells.push(Cell {
                        task: task.name.clone(),
                        system: system.name.clone(),
                        seed,
                        config,
                        dir,
                    });
                }
            }
        }
        Ok(cells)
    }
}

fn names<'a>(items: impl Iterator<Item = &'a String>) -> String {
    let list: Vec<&str> = items.map(String::as_str).collect();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

/// A piece of the grid as a TOML value, to place into a cell's config.
fn to_toml<T: serde::Serialize>(value: &T) -> Result<toml::Value, TrainError> {
    toml::Value::try_from(value).map_err(|e| bad(format!("grid: {e}")))
}

/// Where `cell` stands: done (evaluated, with the same settings), partial or new. A directory
/// that holds a run with other settings is an error: its checkpoint cannot be resumed as this
/// cell, and overwriting it would lose it.
pub fn cell_state(cell: &Cell) -> Result<CellState, TrainError> {
    let saved = cell.dir.join("config.toml");
    if !saved.exists() {
        return Ok(CellState::New);
    }
    let text =
        std::fs::read_to_string(&saved).map_err(|e| bad(format!("{}: {e}", saved.display())))?;
    // How a step is split into backward passes does not change what it computes.
    let what = |c: &RunConfig| {
        let mut c = c.clone();
        c.grpo.micro_batch_prompts = None;
        c.grpo.micro_batch_completions = None;
        c
    };
    let same = toml::from_str::<RunConfig>(&text).is_ok_and(|c| what(&c) == what(&cell.config));
    // A checkpoint that exists but does not verify is an error, never a fresh start.
    let checkpoint = crate::running::rundir::find(&cell.dir)?.map(|(_, step)| step);
    if !same {
        if checkpoint.is_none() && !cell.dir.join("eval.json").exists() {
            return Ok(CellState::New);
        }
        return Err(bad(format!(
            "{}: holds a run with other settings than cell {} (the grid or scale changed); \
             move it away or choose another --out",
            cell.dir.display(),
            cell.label()
        )));
    }
    let eval = cell.dir.join("eval.json");
    if let Ok(text) = std::fs::read_to_string(&eval) {
        let report: EvalReport =
            serde_json::from_str(&text).map_err(|e| bad(format!("{}: {e}", eval.display())))?;
        if report.step == cell.config.grpo.steps {
            return Ok(CellState::Done(report));
        }
    }
    Ok(match checkpoint {
        Some(step) => CellState::Partial(step),
        None => CellState::New,
    })
}

/// Mean and sample standard deviation (n - 1; 0 for one value).
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n.max(1.0);
    let var = if values.len() > 1 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// Write `table.md` (Table 1: accuracy per task and system, mean ± std over seeds, plus the
/// fused runs' accuracy without C), the utilization and entropy/reward figures, and
/// `summary.json`, from the finished cells among `cells`. Returns the markdown.
pub fn write_summary(grid: &Grid, cells: &[Cell], out: &Path) -> Result<String, TrainError> {
    std::fs::create_dir_all(out).map_err(|e| bad(format!("{}: {e}", out.display())))?;
    let done = finished_cells(cells)?;
    let tasks: Vec<&str> = dedup(cells.iter().map(|c| c.task.as_str()));
    let systems: Vec<&str> = dedup(cells.iter().map(|c| c.system.as_str()));
    let fused_systems = fused_systems(grid, &systems);
    let mut md = table_header(&systems, &fused_systems);
    let mut summary = serde_json::Map::new();
    for task in &tasks {
        let row = write_task_row(task, &systems, &fused_systems, &done, &mut md);
        summary.insert((*task).into(), serde_json::Value::Object(row));
        for system in &fused_systems {
            write_figures(task, system, &runs_of(&done, task, system), out)?;
        }
    }
    let missing = cells.len() - done.len();
    if missing > 0 {
        let _ = writeln!(md, "\n{missing} of {} cells not finished yet.", cells.len());
    }
    md.push_str("\nFigures: `fig-utilization-<task>-<system>.svg` (mean utilization per expert over steps), `fig-entropy-reward-<task>-<system>.svg`.\n");
    write_text(out, "table.md", &md)?;
    write_text(
        out,
        "summary.json",
        &serde_json::to_string_pretty(&summary).map_err(|e| bad(e.to_string()))?,
    )?;
    Ok(md)
}

/// The finished cells among `cells`, with their evaluation, in order.
fn finished_cells(cells: &[Cell]) -> Result<Vec<(&Cell, EvalReport)>, TrainError> {
    let mut done: Vec<(&Cell, EvalReport)> = Vec::new();
    for cell in cells {
        if let CellState::Done(report) = cell_state(cell)? {
            done.push((cell, report));
        }
    }
    Ok(done)
}

/// The systems among `systems` that the grid runs in fused mode.
fn fused_systems<'a>(grid: &Grid, systems: &[&'a str]) -> Vec<&'a str> {
    systems
        .iter()
        .copied()
        .filter(|s| {
            grid.systems
                .iter()
                .any(|g| g.name == *s && g.mode == Mode::Fused)
        })
        .collect()
}

/// The table's title and header: a column per system, per fused system without C, and ρ.
fn table_header(systems: &[&str], fused_systems: &[&str]) -> String {
    let mut md =
        String::from("# Accuracy (greedy, held-out), mean ± sample std (n − 1) over seeds\n\n");
    let _ = write!(md, "| task |");
    for s in systems {
        let _ = write!(md, " {s} |");
    }
    for s in fused_systems {
        let _ = write!(md, " {s} without C |");
    }
    let _ = write!(md, " ρ(entropy, reward) |\n|---|");
    for _ in 0..systems.len() + fused_systems.len() + 1 {
        md.push_str("---|");
    }
    md.push('\n');
    md
}

/// The finished runs of one (task, system).
fn runs_of<'a, 'c>(
    done: &'a [(&'c Cell, EvalReport)],
    task: &str,
    system: &str,
) -> Vec<&'a (&'c Cell, EvalReport)> {
    done.iter()
        .filter(|(c, _)| c.task == task && c.system == system)
        .collect()
}

/// A table cell: mean ± std and the count, or a dash without values.
fn cell_text(values: &[f64]) -> String {
    if values.is_empty() {
        return "–".into();
    }
    let (m, s) = mean_std(values);
    format!("{m:.3} ± {s:.3} (n={})", values.len())
}

/// Write `task`'s table row into `md`; returns its values for `summary.json`.
fn write_task_row(
    task: &str,
    systems: &[&str],
    fused_systems: &[&str],
    done: &[(&Cell, EvalReport)],
    md: &mut String,
) -> serde_json::Map<String, serde_json::Value> {
    let _ = write!(md, "| {task} |");
    let of = |system: &str| runs_of(done, task, system);
    let mut row = serde_json::Map::new();
    for system in systems {
        let values: Vec<f64> = of(system).iter().map(|(_, r)| r.accuracy).collect();
        let _ = write!(md, " {} |", cell_text(&values));
        row.insert((*system).into(), serde_json::json!(values));
    }
    for system in fused_systems {
        let values: Vec<f64> = of(system)
            .iter()
            .filter_map(|(_, r)| r.accuracy_without_context)
            .collect();
        let _ = write!(md, " {} |", cell_text(&values));
        row.insert(format!("{system} without C"), serde_json::json!(values));
    }
    // Routing entropy against reward over the steps of each fused run (the paper's
    // Figure 4 statistic), averaged over runs.
    let rhos: Vec<f64> = fused_systems
        .iter()
        .flat_map(|s| of(s))
        .filter_map(|(c, _)| {
            let curves = read_curves(&c.dir.join("metrics.jsonl")).ok()?;
            spearman(&curves.routing_entropy, &curves.reward)
        })
        .collect();
    let _ = writeln!(md, " {} |", cell_text(&rhos));
    row.insert("spearman_entropy_reward".into(), serde_json::json!(rhos));
    row
}

/// Write `text` to `out/name`.
fn write_text(out: &Path, name: &str, text: &str) -> Result<(), TrainError> {
    let path = out.join(name);
    std::fs::write(&path, text).map_err(|e| bad(format!("{}: {e}", path.display())))
}

fn dedup<'a>(items: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// Mean over runs of per-step series (runs cut to the shortest).
fn mean_series(series: &[Vec<f64>]) -> Vec<f64> {
    let n = series.iter().map(Vec::len).min().unwrap_or(0);
    (0..n)
        .map(|i| series.iter().map(|s| s[i]).sum::<f64>() / series.len() as f64)
        .collect()
}

fn write_figures(
    task: &str,
    system: &str,
    runs: &[&(&Cell, EvalReport)],
    out: &Path,
) -> Result<(), TrainError> {
    let Some((first, _)) = runs.first() else {
        return Ok(());
    };
    let curves: Vec<_> = runs
        .iter()
        .map(|(c, _)| read_curves(&c.dir.join("metrics.jsonl")))
        .collect::<Result<_, _>>()?;
    let steps = curves.iter().map(|c| c.steps.len()).min().unwrap_or(0);
    let x: Vec<f64> = (1..=steps).map(|s| s as f64).collect();
    let experts: Vec<String> = first.config.team.iter().map(|m| m.name.clone()).collect();
    let utilization: Vec<(String, Vec<f64>)> = experts
        .iter()
        .enumerate()
        .map(|(e, name)| {
            let per_run: Vec<Vec<f64>> = curves
                .iter()
                .map(|c| {
                    c.utilization
                        .iter()
                        .map(|row| row.get(e).copied().unwrap_or(f64::NAN))
                        .collect()
                })
                .collect();
            (name.clone(), mean_series(&per_run))
        })
        .collect();
    line_chart(
        &out.join(format!("fig-utilization-{task}-{system}.svg")),
        &format!(
            "{task}, {system}: expert utilization (mean of {} runs)",
            runs.len()
        ),
        &x,
        &utilization,
    )?;
    let reward = mean_series(&curves.iter().map(|c| c.reward.clone()).collect::<Vec<_>>());
    let entropy = mean_series(
        &curves
            .iter()
            .map(|c| c.routing_entropy.clone())
            .collect::<Vec<_>>(),
    );
    line_chart(
        &out.join(format!("fig-entropy-reward-{task}-{system}.svg")),
        &format!("{task}, {system}: reward and routing entropy (normalised)"),
        &x,
        &[
            ("reward".into(), reward),
            ("routing entropy".into(), entropy),
        ],
    )
}
