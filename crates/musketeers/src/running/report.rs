//! `report.md` for a run directory: what `metrics.jsonl` and `eval.json` say, with SVG plots
//! of reward, per-expert utilization (the paper's Figures 1 and 4) and routing entropy.

use crate::error::TrainError;
use crate::running::eval::EvalReport;
use musketeers_fusion::stats::spearman;
use plotters::prelude::*;
use serde_json::Value;
use std::fmt::Write as _;
use std::path::Path;

/// The per-step numbers a report draws.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunCurves {
    pub steps: Vec<f64>,
    pub reward: Vec<f64>,
    /// `[step][expert]`; empty rows without a team.
    pub utilization: Vec<Vec<f64>>,
    pub routing_entropy: Vec<f64>,
    pub kl: Vec<f64>,
    pub step_seconds: Vec<f64>,
    pub tokens_per_second: Vec<f64>,
    /// The diagnostics of learning (NaN where a step did not log one).
    pub policy_entropy: Vec<f64>,
    pub frac_zero_std: Vec<f64>,
    pub grad_norm_adapters: Vec<f64>,
    pub grad_norm_interface: Vec<f64>,
    pub embedding_rms: Vec<f64>,
    pub context_rms: Vec<f64>,
    pub context_prompt_rms: Vec<f64>,
    /// Gated injection: mean and largest gate `|tanh(scale * g)|` over layers and heads.
    pub context_gate_mean: Vec<f64>,
    pub context_gate_max: Vec<f64>,
    /// `[step][latent]`
    pub latent_attention_entropy: Vec<Vec<f64>>,
}

fn number(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// Read `metrics.jsonl`; a line that is not a step's JSON is an error naming the line.
pub fn read_curves(path: &Path) -> Result<RunCurves, TrainError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| TrainError::BadInput(format!("{}: {e}", path.display())))?;
    let mut c = RunCurves::default();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: Value = serde_json::from_str(line)
            .map_err(|e| TrainError::BadInput(format!("{}:{}: {e}", path.display(), i + 1)))?;
        c.steps.push(number(&v["step"]));
        c.reward.push(number(&v["rollouts"]["reward_mean"]));
        c.utilization.push(
            v["utilization"]
                .as_array()
                .map(|a| a.iter().map(number).collect())
                .unwrap_or_default(),
        );
        c.routing_entropy
            .push(number(&v["routing_entropy_normalized"]));
        c.kl.push(number(&v["loss"]["kl"]));
        c.step_seconds.push(number(&v["step_seconds"]));
        c.tokens_per_second
            .push(number(&v["sampled_tokens"]) / number(&v["sample_seconds"]));
        let d = &v["diagnostics"];
        c.policy_entropy.push(number(&v["loss"]["entropy"]));
        c.frac_zero_std
            .push(number(&v["rollouts"]["frac_reward_zero_std"]));
        c.grad_norm_adapters.push(number(&d["grad_norm_adapters"]));
        c.grad_norm_interface
            .push(number(&d["grad_norm_interface"]));
        c.embedding_rms.push(number(&d["embedding_rms"]));
        c.context_rms.push(number(&d["context_rms"]));
        c.context_prompt_rms.push(number(&d["context_prompt_rms"]));
        c.context_gate_mean.push(number(&d["context_gate_mean"]));
        c.context_gate_max.push(number(&d["context_gate_max"]));
        c.latent_attention_entropy.push(
            d["latent_attention_entropy"]
                .as_array()
                .map(|a| a.iter().map(number).collect())
                .unwrap_or_default(),
        );
    }
    Ok(c)
}

/// One line chart per named series, written as SVG.
pub fn line_chart(
    path: &Path,
    title: &str,
    x: &[f64],
    series: &[(String, Vec<f64>)],
) -> Result<(), TrainError> {
    let fail = |e: String| TrainError::BadInput(format!("{}: {e}", path.display()));
    let finite = series
        .iter()
        .flat_map(|(_, ys)| ys.iter().copied())
        .filter(|y| y.is_finite());
    let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
        (a.min(y), b.max(y))
    });
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let x_max = x.iter().copied().fold(1.0f64, f64::max);
    let root = SVGBackend::new(path, (720, 360)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(48)
        .build_cartesian_2d(0f64..x_max, (lo - pad)..(hi + pad))
        .map_err(|e| fail(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .draw()
        .map_err(|e| fail(e.to_string()))?;
    for (i, (name, ys)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points = x
            .iter()
            .zip(ys)
            .filter(|(_, y)| y.is_finite())
            .map(|(&x, &y)| (x, y));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| fail(e.to_string()))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
    }
    if series.len() > 1 {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| fail(e.to_string()))?;
    }
    root.present().map_err(|e| fail(e.to_string()))
}

/// Mean of the first and last `share` of a series (NaNs left out).
pub fn first_last(values: &[f64], share: f64) -> (f64, f64) {
    let n = values.len();
    let k = ((n as f64 * share).ceil() as usize).clamp(1, n.max(1));
    let mean = |s: &[f64]| {
        let f: Vec<f64> = s.iter().copied().filter(|v| v.is_finite()).collect();
        f.iter().sum::<f64>() / f.len().max(1) as f64
    };
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    (mean(&values[..k]), mean(&values[n - k..]))
}

/// Team member names from the resolved `config.toml`, in interface order.
fn team_names(dir: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(dir.join("config.toml")) else {
        return Vec::new();
    };
    let Ok(config) = toml::from_str::<crate::run_config::RunConfig>(&text) else {
        return Vec::new();
    };
    // Only systems with an interface log utilization; the names label those series.
    config.team.iter().map(|m| m.name.clone()).collect()
}

/// Write `report.md` and its plots into the run directory `dir`.
pub fn write_run_report(dir: &Path) -> Result<(), TrainError> {
    let curves = read_curves(&dir.join("metrics.jsonl"))?;
    let names = team_names(dir);
    let mut md = String::new();
    let _ = writeln!(md, "# Run report: {}\n", dir.display());
    write_overview(&curves, &mut md);
    write_evaluation(dir, &mut md);
    line_chart(
        &dir.join("reward.svg"),
        "training reward (mean per step)",
        &curves.steps,
        &[("reward".into(), curves.reward.clone())],
    )?;
    let _ = writeln!(md, "![reward](reward.svg)\n");
    write_team(dir, &curves, &names, &mut md)?;
    write_diagnostics(dir, &curves, &mut md)?;
    let path = dir.join("report.md");
    std::fs::write(&path, md).map_err(|e| TrainError::BadInput(format!("{}: {e}", path.display())))
}

/// The steps, the training reward's first and last 10%, and the speed.
fn write_overview(curves: &RunCurves, md: &mut String) {
    let n = curves.steps.len();
    let (r0, r1) = first_last(&curves.reward, 0.1);
    let _ = writeln!(
        md,
        "{n} steps. Training reward (mean of a step's samples): {r0:.3} over the first 10% of \
         steps, {r1:.3} over the last 10%."
    );
    let secs: f64 = curves.step_seconds.iter().sum();
    let _ = writeln!(
        md,
        "Seconds per step: {:.2} (mean); sampling {:.0} tokens/s (mean).\n",
        secs / n.max(1) as f64,
        curves
            .tokens_per_second
            .iter()
            .filter(|v| v.is_finite())
            .sum::<f64>()
            / n.max(1) as f64
    );
}

/// The held-out evaluation table, when the run directory has a readable `eval.json`.
fn write_evaluation(dir: &Path, md: &mut String) {
    if let Ok(text) = std::fs::read_to_string(dir.join("eval.json"))
        && let Ok(eval) = serde_json::from_str::<EvalReport>(&text)
    {
        let _ = writeln!(
            md,
            "## Held-out evaluation (greedy, {} problems after {} steps)\n",
            eval.problems, eval.step
        );
        let _ = writeln!(md, "| task | accuracy |\n|---|---|");
        for (task, acc) in &eval.per_task {
            let _ = writeln!(md, "| {task} | {acc:.3} |");
        }
        let _ = writeln!(md, "| all | {:.3} |", eval.accuracy);
        if let Some(a) = eval.accuracy_without_context {
            let _ = writeln!(md, "| all, context tokens removed | {a:.3} |");
        }
        let _ = writeln!(md);
    }
}

/// Per-expert utilization series, named after the team members (`expert {e}` past them).
fn utilization_series(curves: &RunCurves, names: &[String]) -> Vec<(String, Vec<f64>)> {
    let experts = curves.utilization.iter().map(Vec::len).max().unwrap_or(0);
    (0..experts)
        .map(|e| {
            let name = names
                .get(e)
                .cloned()
                .unwrap_or_else(|| format!("expert {e}"));
            let ys = curves
                .utilization
                .iter()
                .map(|u| u.get(e).copied().unwrap_or(f64::NAN))
                .collect();
            (name, ys)
        })
        .collect()
}

/// The team's utilization and routing entropy plots and table; nothing without a team.
fn write_team(
    dir: &Path,
    curves: &RunCurves,
    names: &[String],
    md: &mut String,
) -> Result<(), TrainError> {
    let series = utilization_series(curves, names);
    if series.is_empty() {
        return Ok(());
    }
    line_chart(
        &dir.join("utilization.svg"),
        "per-expert utilization (share of latent attention)",
        &curves.steps,
        &series,
    )?;
    line_chart(
        &dir.join("routing_entropy.svg"),
        "routing entropy / ln(experts)",
        &curves.steps,
        &[("routing entropy".into(), curves.routing_entropy.clone())],
    )?;
    let _ = writeln!(
        md,
        "## The team\n\n| expert | utilization, first 10% | last 10% |\n|---|---|---|"
    );
    for (name, ys) in &series {
        let (a, b) = first_last(ys, 0.1);
        let _ = writeln!(md, "| {name} | {a:.3} | {b:.3} |");
    }
    let rho = spearman(&curves.reward, &curves.routing_entropy);
    let _ = writeln!(
        md,
        "\nSpearman correlation between a step's mean reward and its mean normalised routing \
         entropy: {}.\n\n![utilization](utilization.svg)\n\n![routing entropy](routing_entropy.svg)\n",
        rho.map_or("undefined (constant series)".into(), |r| format!("{r:+.3}"))
    );
    Ok(())
}

fn any_finite(ys: &[f64]) -> bool {
    ys.iter().any(|y| y.is_finite())
}

/// The learning diagnostics: a first-vs-last table and plots of whatever the run logged.
fn write_diagnostics(dir: &Path, c: &RunCurves, md: &mut String) -> Result<(), TrainError> {
    let latent_series = latent_entropy_series(c);
    let rows = diagnostic_rows(c);
    if rows.is_empty() {
        return Ok(());
    }
    write_diagnostics_table(&rows, &latent_series, md);
    plot_diagnostics(dir, c, &latent_series, md)
}

/// Attention entropy per latent, one series each.
fn latent_entropy_series(c: &RunCurves) -> Vec<(String, Vec<f64>)> {
    let latents = c
        .latent_attention_entropy
        .iter()
        .map(Vec::len)
        .max()
        .unwrap_or(0);
    (0..latents)
        .map(|k| {
            let ys = c
                .latent_attention_entropy
                .iter()
                .map(|l| l.get(k).copied().unwrap_or(f64::NAN))
                .collect();
            (format!("latent {k}"), ys)
        })
        .collect()
}

/// The diagnostics the run logged (at least one finite value), named.
fn diagnostic_rows(c: &RunCurves) -> Vec<(&'static str, &[f64])> {
    let rows: Vec<(&str, &[f64])> = vec![
        ("policy entropy (nats per token)", &c.policy_entropy),
        ("groups with zero reward std (share)", &c.frac_zero_std),
        ("gradient norm, LoRA adapters", &c.grad_norm_adapters),
        ("gradient norm, interface", &c.grad_norm_interface),
        ("token embedding RMS", &c.embedding_rms),
        ("context C RMS", &c.context_rms),
        ("prompt-dependent part of C, RMS", &c.context_prompt_rms),
        (
            "context gate, mean over layers and heads",
            &c.context_gate_mean,
        ),
        ("context gate, largest", &c.context_gate_max),
    ];
    rows.into_iter().filter(|(_, y)| any_finite(y)).collect()
}

fn write_diagnostics_table(
    rows: &[(&str, &[f64])],
    latent_series: &[(String, Vec<f64>)],
    md: &mut String,
) {
    let _ = writeln!(
        md,
        "## Diagnostics

| quantity | first 10% of steps | last 10% |
|---|---|---|"
    );
    for (name, ys) in rows {
        let (a, b) = first_last(ys, 0.1);
        let _ = writeln!(md, "| {name} | {a:.4} | {b:.4} |");
    }
    for (name, ys) in latent_series {
        let (a, b) = first_last(ys, 0.1);
        let _ = writeln!(
            md,
            "| {name}: attention entropy / ln(tokens) | {a:.3} | {b:.3} |"
        );
    }
    md.push('\n');
}

/// The diagnostics' plots, each followed by its image link.
fn plot_diagnostics(
    dir: &Path,
    c: &RunCurves,
    latent_series: &[(String, Vec<f64>)],
    md: &mut String,
) -> Result<(), TrainError> {
    line_chart(
        &dir.join("learning.svg"),
        "policy entropy and share of zero-std groups",
        &c.steps,
        &[
            ("policy entropy".into(), c.policy_entropy.clone()),
            ("zero-std groups".into(), c.frac_zero_std.clone()),
        ],
    )?;
    let _ = writeln!(md, "![learning](learning.svg)\n");
    let mut grads = vec![("LoRA adapters".to_string(), c.grad_norm_adapters.clone())];
    if any_finite(&c.grad_norm_interface) {
        grads.push(("interface".into(), c.grad_norm_interface.clone()));
    }
    line_chart(
        &dir.join("gradients.svg"),
        "gradient norm before clipping",
        &c.steps,
        &grads,
    )?;
    let _ = writeln!(md, "![gradients](gradients.svg)\n");
    if any_finite(&c.context_rms) {
        line_chart(
            &dir.join("context.svg"),
            "RMS of C, its prompt-dependent part, and of token embeddings",
            &c.steps,
            &[
                ("C".into(), c.context_rms.clone()),
                ("C minus batch mean".into(), c.context_prompt_rms.clone()),
                ("token embeddings".into(), c.embedding_rms.clone()),
            ],
        )?;
        let _ = writeln!(md, "![context](context.svg)\n");
    }
    if !latent_series.is_empty() {
        line_chart(
            &dir.join("latent_entropy.svg"),
            "attention entropy per latent / ln(expert tokens)",
            &c.steps,
            latent_series,
        )?;
        let _ = writeln!(md, "![latent attention entropy](latent_entropy.svg)\n");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(step: u64, reward: f64, util: [f64; 2], entropy: f64) -> String {
        serde_json::json!({"step": step, "rollouts": {"reward_mean": reward},
            "utilization": util, "routing_entropy_normalized": entropy,
            "loss": {"kl": null, "entropy": 1.0 - reward},
            "step_seconds": 0.5, "sampled_tokens": 10, "sample_seconds": 0.1,
            "diagnostics": {"grad_norm_adapters": 0.5, "grad_norm_interface": reward,
                "embedding_rms": 1.0, "context_rms": 0.1, "context_prompt_rms": reward,
                "context_gate_mean": reward / 2.0, "context_gate_max": reward,
                "latent_attention_entropy": [entropy, 1.0]}})
        .to_string()
    }

    #[test]
    fn a_report_summarises_curves_and_draws_them() {
        let dir = tempfile::tempdir().expect("temp");
        let lines: Vec<String> = (1..=20)
            .map(|s| {
                let x = s as f64 / 20.0;
                line(s, x, [0.5 + 0.4 * x, 0.5 - 0.4 * x], 1.0 - x)
            })
            .collect();
        std::fs::write(dir.path().join("metrics.jsonl"), lines.join("\n")).expect("write");
        write_run_report(dir.path()).expect("report");
        let md = std::fs::read_to_string(dir.path().join("report.md")).expect("md");
        // Reward rises as entropy falls: rank correlation exactly -1.
        assert!(md.contains("entropy: -1.000"), "{md}");
        assert!(md.contains("| expert 0 | 0.530 | 0.890 |"), "{md}");
        // The diagnostics: interface gradient 0.05 -> 1.0 (means of the first and last 2 steps).
        assert!(
            md.contains("| gradient norm, interface | 0.0750 | 0.9750 |"),
            "{md}"
        );
        assert!(
            md.contains("| context gate, mean over layers and heads | 0.0375 | 0.4875 |"),
            "{md}"
        );
        assert!(
            md.contains("| latent 1: attention entropy / ln(tokens) | 1.000 | 1.000 |"),
            "{md}"
        );
        for svg in [
            "reward.svg",
            "utilization.svg",
            "routing_entropy.svg",
            "learning.svg",
            "gradients.svg",
            "context.svg",
            "latent_entropy.svg",
        ] {
            let text = std::fs::read_to_string(dir.path().join(svg)).expect(svg);
            assert!(
                text.starts_with("<svg") && text.contains("<polyline"),
                "{svg}"
            );
        }
    }

    #[test]
    fn a_bad_metrics_line_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("temp");
        let path = dir.path().join("metrics.jsonl");
        std::fs::write(
            &path,
            format!("{}\n{{not json\n", line(1, 0.0, [1.0, 0.0], 0.0)),
        )
        .expect("write");
        let err = read_curves(&path).expect_err("bad line").to_string();
        assert!(err.contains("metrics.jsonl:2"), "{err}");
    }
}
