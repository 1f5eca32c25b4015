//! Live training progress through burn-train's metric renderers: its TUI dashboard when
//! stdout is a terminal, one plain line per step otherwise.
//!
//! burn-train's own non-terminal renderer prints the `Debug` form of its progress struct and
//! drops the metrics, so the plain side here is our own [`MetricsRenderer`] over the same
//! metric entries the dashboard gets: both see exactly the same numbers.

use burn::data::dataloader::Progress;
use burn::train::Interrupter;
use burn::train::metric::{
    MetricAttributes, MetricDefinition, MetricEntry, MetricId, NumericAttributes, NumericEntry,
    SerializedEntry,
};
use burn::train::renderer::{
    EvaluationName, EvaluationProgress, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining, ProgressType, TrainingProgress,
};
use musketeers::progress::Progress as WaitProgress;
use musketeers::train::StepReport;
use std::io::{IsTerminal, Write};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;

/// How progress is shown (`--progress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressDisplay {
    /// The dashboard when stdout is a terminal and training runs on a GPU; plain lines
    /// otherwise. Burn 0.21's dashboard thread polls without sleeping and keeps a core busy:
    /// on a 2-core CPU run that made steps 30-40% slower (fixed after 0.21 by
    /// tracel-ai/burn#5021).
    Auto,
    /// burn-train's TUI dashboard (needs a terminal; `q` then `s` stops and checkpoints;
    /// Ctrl-C reaches the dashboard as a key, not a signal).
    Tui,
    /// One line per step on stderr.
    Plain,
    /// Nothing (the other processes of a data-parallel run; process 0 shows progress).
    Quiet,
}

/// One numeric metric of a step, as the renderers see it.
struct StepMetric {
    name: String,
    value: f64,
    formatted: String,
    higher_is_better: bool,
}

impl StepMetric {
    fn new(name: impl Into<String>, value: f64, formatted: String, higher_is_better: bool) -> Self {
        Self {
            name: name.into(),
            value,
            formatted,
            higher_is_better,
        }
    }
}

/// The live metrics of one step, in display order. Utilization comes one metric per expert,
/// named after the team member, so the dashboard plots each expert's share over steps.
fn step_metrics(r: &StepReport, experts: &[String]) -> Vec<StepMetric> {
    let tokens_per_second = r.sampled_tokens as f64 / r.sample_seconds.max(1e-9);
    let mut metrics = vec![
        StepMetric::new(
            "reward",
            r.rollouts.reward_mean.into(),
            format!("{:.3}±{:.3}", r.rollouts.reward_mean, r.rollouts.reward_std),
            true,
        ),
        StepMetric::new("loss", r.loss.loss, format!("{:+.4}", r.loss.loss), false),
    ];
    if let Some(kl) = r.loss.kl {
        metrics.push(StepMetric::new("kl", kl, format!("{kl:.4}"), false));
    }
    if let Some(entropy) = r.loss.entropy {
        metrics.push(StepMetric::new(
            "entropy",
            entropy,
            format!("{entropy:.3}"),
            true,
        ));
    }
    metrics.push(StepMetric::new(
        "len",
        r.rollouts.mean_completion_length,
        format!("{:.1}", r.rollouts.mean_completion_length),
        false,
    ));
    for (i, &share) in r.utilization.iter().enumerate() {
        let name = experts
            .get(i)
            .map_or_else(|| format!("expert {i}"), Clone::clone);
        metrics.push(StepMetric::new(
            format!("util {name}"),
            share.into(),
            format!("{share:.2}"),
            true,
        ));
    }
    if let Some(h) = r.routing_entropy_normalized {
        metrics.push(StepMetric::new(
            "routing entropy",
            h.into(),
            format!("{h:.3}"),
            false,
        ));
    }
    metrics.push(StepMetric::new(
        "grad norm",
        r.grad_norm,
        format!("{:.3}", r.grad_norm),
        false,
    ));
    metrics.push(StepMetric::new(
        "tok/s",
        tokens_per_second,
        format!("{tokens_per_second:.0}"),
        true,
    ));
    metrics.push(StepMetric::new(
        "s/step",
        r.step_seconds,
        format!("{:.1}", r.step_seconds),
        false,
    ));
    if let Some(bytes) = r.peak_memory_bytes {
        let gb = bytes as f64 / 1e9;
        metrics.push(StepMetric::new("peak GB", gb, format!("{gb:.2}"), false));
    }
    metrics
}

/// Feeds each step's report to a burn-train renderer and turns a stop request (Ctrl-C, or the
/// dashboard's `q`) into [`ControlFlow::Break`], which the run loop answers with a checkpoint.
pub struct LiveProgress {
    renderer: Option<Box<dyn MetricsRenderer>>,
    registered: Vec<String>,
    experts: Vec<String>,
    total_steps: u64,
    interrupter: Interrupter,
    /// Step and instant of the first report seen, for the ETA (a resumed run starts late).
    first: Option<(u64, Instant)>,
    waits: WaitDisplay,
}

impl std::fmt::Debug for LiveProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveProgress")
            .field("experts", &self.experts)
            .field("total_steps", &self.total_steps)
            .finish_non_exhaustive()
    }
}

impl LiveProgress {
    /// `display` picks the renderer (see [`ProgressDisplay::Auto`]).
    pub fn new(
        display: ProgressDisplay,
        on_cpu: bool,
        total_steps: u64,
        experts: Vec<String>,
        interrupter: Interrupter,
    ) -> Self {
        let dashboard = match display {
            ProgressDisplay::Auto => !on_cpu && std::io::stdout().is_terminal(),
            ProgressDisplay::Tui => true,
            ProgressDisplay::Plain | ProgressDisplay::Quiet => false,
        };
        let renderer: Box<dyn MetricsRenderer> = if display == ProgressDisplay::Quiet {
            Box::new(PlainRenderer::new(Box::new(std::io::sink())))
        } else if dashboard {
            Box::new(burn::train::renderer::tui::TuiMetricsRendererWrapper::new(
                interrupter.clone(),
                None,
            ))
        } else {
            Box::new(PlainRenderer::new(Box::new(std::io::stderr())))
        };
        let mut live = Self::with_renderer(renderer, total_steps, experts, interrupter);
        live.waits = match display {
            ProgressDisplay::Quiet => WaitDisplay::Quiet,
            _ if std::io::stderr().is_terminal() && display != ProgressDisplay::Plain => {
                WaitDisplay::Bar(None)
            }
            _ => WaitDisplay::lines(Box::new(std::io::stderr())),
        };
        live
    }

    pub fn with_renderer(
        renderer: Box<dyn MetricsRenderer>,
        total_steps: u64,
        experts: Vec<String>,
        interrupter: Interrupter,
    ) -> Self {
        Self {
            renderer: Some(renderer),
            registered: Vec::new(),
            experts,
            total_steps,
            interrupter,
            first: None,
            waits: WaitDisplay::Quiet,
        }
    }

    /// Shows one finished step; `Break` when the user asked to stop.
    pub fn step(&mut self, report: &StepReport) -> ControlFlow<()> {
        let first = *self.first.get_or_insert((report.step, Instant::now()));
        if let Some(renderer) = self.renderer.as_mut() {
            for metric in step_metrics(report, &self.experts) {
                let id = MetricId::new(Arc::new(metric.name.clone()));
                if !self.registered.contains(&metric.name) {
                    renderer.register_metric(MetricDefinition {
                        metric_id: id.clone(),
                        name: metric.name.clone(),
                        description: None,
                        attributes: MetricAttributes::Numeric(NumericAttributes {
                            unit: None,
                            higher_is_better: metric.higher_is_better,
                        }),
                    });
                    self.registered.push(metric.name.clone());
                }
                let entry = MetricEntry::new(
                    id,
                    SerializedEntry::new(metric.formatted, metric.value.to_string()),
                );
                renderer.update_train(MetricState::Numeric(
                    entry,
                    NumericEntry::Value(metric.value),
                ));
            }
            let done = report.step.min(self.total_steps) as usize;
            let total = self.total_steps.max(1) as usize;
            // The run is one "epoch" of `total` steps: burn-train's progress maths counts
            // epochs from 1.
            let progress = TrainingProgress {
                progress: Some(Progress {
                    items_processed: done,
                    items_total: total,
                }),
                global_progress: Progress {
                    items_processed: 1,
                    items_total: 1,
                },
                iteration: Some(done),
            };
            let steps_timed = report.step.saturating_sub(first.0) as f64;
            let eta = (steps_timed > 0.0).then(|| {
                first.1.elapsed().as_secs_f64() / steps_timed
                    * self.total_steps.saturating_sub(report.step) as f64
            });
            let mut indicators = vec![ProgressType::Detailed {
                tag: "step".into(),
                progress: Progress {
                    items_processed: done,
                    items_total: total,
                },
            }];
            if let Some(eta) = eta {
                indicators.push(ProgressType::Value {
                    tag: "eta s".into(),
                    value: eta.round() as usize,
                });
            }
            renderer.render_train(progress, indicators);
        }
        if self.interrupter.should_stop() {
            self.finish();
            return ControlFlow::Break(());
        }
        if report.step >= self.total_steps {
            // Training is over; evaluation follows and reports on stdout.
            self.finish();
        }
        ControlFlow::Continue(())
    }

    /// Closes the renderer (the dashboard gives the terminal back).
    pub fn finish(&mut self) {
        if let Some(mut renderer) = self.renderer.take() {
            // The summary is burn-train's Learner's; a custom loop has none.
            let _ = renderer.on_train_end(None);
        }
    }
}

impl musketeers::run::RunObserver for LiveProgress {
    fn step(&mut self, report: &StepReport) -> ControlFlow<()> {
        LiveProgress::step(self, report)
    }

    fn waiting(&mut self, progress: WaitProgress<'_>) {
        self.waits.show(progress);
    }
}

/// Progress of the waits after training (evaluation): indicatif's bar with its ETA on a
/// terminal, otherwise a plain line when a task starts, at every tenth of it (at most one
/// line per 10 s in between) and when it ends.
pub enum WaitDisplay {
    Quiet,
    Bar(Option<(String, indicatif::ProgressBar)>),
    Lines {
        out: Box<dyn Write + Send + Sync>,
        current: Option<LinesShown>,
    },
}

/// What the line display last printed for the task it is showing.
pub struct LinesShown {
    task: String,
    started: Instant,
    last_tenth: u64,
    last_line: Instant,
    /// The end line is out: a repeated final report prints nothing more.
    ended: bool,
}

impl WaitDisplay {
    pub fn lines(out: Box<dyn Write + Send + Sync>) -> Self {
        Self::Lines { out, current: None }
    }

    pub fn show(&mut self, p: WaitProgress<'_>) {
        match self {
            Self::Quiet => {}
            Self::Bar(bar) => {
                if bar.as_ref().is_none_or(|(task, _)| task != p.task) {
                    let style = indicatif::ProgressStyle::with_template(&format!(
                        "{{msg}} [{{bar:30}}] {{pos}}/{{len}} {}, {{elapsed}} elapsed, eta {{eta}}",
                        p.unit
                    ))
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
                    let new = indicatif::ProgressBar::new(p.total.ceil() as u64)
                        .with_style(style)
                        .with_message(p.task.to_string());
                    if let Some((_, old)) = bar.replace((p.task.to_string(), new)) {
                        old.finish();
                    }
                }
                if let Some((_, bar)) = bar {
                    bar.set_position(p.done.floor() as u64);
                    if p.done >= p.total {
                        bar.finish();
                    }
                }
            }
            Self::Lines { out, current } => {
                let now = Instant::now();
                let total = p.total.max(1e-9);
                let tenth = ((p.done / total) * 10.0).floor() as u64;
                if current.as_ref().is_none_or(|shown| shown.task != p.task) {
                    *current = None;
                }
                let starting = current.is_none();
                let shown = current.get_or_insert_with(|| LinesShown {
                    task: p.task.to_string(),
                    started: now,
                    last_tenth: 0,
                    last_line: now,
                    ended: false,
                });
                let ending = p.done >= p.total;
                let due = starting
                    || (ending && !shown.ended)
                    || (tenth > shown.last_tenth
                        && now.duration_since(shown.last_line).as_secs() >= 10);
                if !due {
                    return;
                }
                let elapsed = now.duration_since(shown.started).as_secs_f64();
                // A rate measured over less than a second is noise, not an estimate.
                let eta = if !ending && p.done > 0.0 && elapsed >= 1.0 {
                    format!(", eta {:.0}s", elapsed / p.done * (p.total - p.done))
                } else {
                    String::new()
                };
                let done = p.done.floor().min(p.total);
                let _ = writeln!(
                    out,
                    "{}: {done:.0}/{:.0} {} ({:.0}%), {elapsed:.0}s elapsed{eta}",
                    p.task,
                    p.total,
                    p.unit,
                    100.0 * done / total
                );
                shown.last_tenth = tenth;
                shown.last_line = now;
                shown.ended = ending;
            }
        }
    }
}

impl Drop for LiveProgress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// One line per step: `step 12/150  reward 0.312±0.201  loss ...  eta 85s`.
pub struct PlainRenderer {
    out: Box<dyn Write + Send + Sync>,
    names: Vec<(MetricId, String)>,
    latest: Vec<(MetricId, String)>,
}

impl PlainRenderer {
    pub fn new(out: Box<dyn Write + Send + Sync>) -> Self {
        Self {
            out,
            names: Vec::new(),
            latest: Vec::new(),
        }
    }

    fn name(&self, id: &MetricId) -> Option<&str> {
        self.names
            .iter()
            .find(|(known, _)| known == id)
            .map(|(_, name)| name.as_str())
    }

    fn record(&mut self, state: MetricState) {
        let entry = match state {
            MetricState::Generic(entry) | MetricState::Numeric(entry, _) => entry,
        };
        let formatted = entry.serialized_entry.formatted;
        match self
            .latest
            .iter_mut()
            .find(|(id, _)| *id == entry.metric_id)
        {
            Some((_, value)) => *value = formatted,
            None => self.latest.push((entry.metric_id, formatted)),
        }
    }
}

impl MetricsRendererTraining for PlainRenderer {
    fn update_train(&mut self, state: MetricState) {
        self.record(state);
    }

    fn update_valid(&mut self, state: MetricState) {
        self.record(state);
    }

    fn render_train(&mut self, _item: TrainingProgress, indicators: Vec<ProgressType>) {
        let mut line = String::new();
        for indicator in &indicators {
            match indicator {
                ProgressType::Detailed { tag, progress } => line.push_str(&format!(
                    "{tag} {}/{}",
                    progress.items_processed, progress.items_total
                )),
                ProgressType::Value { tag, value } => {
                    continue_line(&mut line);
                    line.push_str(&format!("{tag} {value}"));
                    continue;
                }
            }
        }
        for (id, value) in &self.latest {
            continue_line(&mut line);
            let name = self.name(id).unwrap_or("?");
            line.push_str(&format!("{name} {value}"));
        }
        // Progress is best effort: a closed stderr must not stop training.
        let _ = writeln!(self.out, "{line}");
    }

    fn render_valid(&mut self, item: TrainingProgress, indicators: Vec<ProgressType>) {
        self.render_train(item, indicators);
    }
}

fn continue_line(line: &mut String) {
    if !line.is_empty() {
        line.push_str("  ");
    }
}

impl MetricsRendererEvaluation for PlainRenderer {
    fn update_test(&mut self, _name: EvaluationName, state: MetricState) {
        self.record(state);
    }

    fn render_test(&mut self, item: EvaluationProgress, indicators: Vec<ProgressType>) {
        self.render_train((&item).into(), indicators);
    }
}

impl MetricsRenderer for PlainRenderer {
    fn manual_close(&mut self) {}

    fn register_metric(&mut self, definition: MetricDefinition) {
        self.names.push((definition.metric_id, definition.name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use musketeers::train::Sample;
    use musketeers_rl::loss::GrpoMetrics;
    use musketeers_rl::rollout::RolloutStats;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("capture lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn report(step: u64, reward: f32, utilization: Vec<f32>) -> StepReport {
        StepReport {
            step,
            loss: GrpoMetrics {
                loss: 0.25,
                kl: Some(0.0123),
                entropy: Some(1.5),
                ..Default::default()
            },
            rollouts: RolloutStats {
                reward_mean: reward,
                reward_std: 0.5,
                frac_reward_zero_std: 0.0,
                mean_completion_length: 7.0,
                truncation_rate: 0.0,
            },
            utilization,
            routing_entropy: Some(1.0),
            routing_entropy_normalized: Some(0.91),
            grad_norm: 2.0,
            sampled_tokens: 640,
            sample_seconds: 2.0,
            team_seconds: 0.1,
            reference_seconds: 0.4,
            loss_seconds: 0.5,
            update_seconds: 1.0,
            communication_seconds: 0.0,
            diagnostics: Default::default(),
            step_seconds: 4.0,
            peak_memory_bytes: Some(3 << 30),
            phase_peak_bytes: Default::default(),
            samples: vec![Sample {
                completion: "<answer>3</answer>".into(),
                reward,
                advantage: 0.0,
            }],
            dynamic_sampling: None,
            prompt_indices: vec![0],
            reward_functions: Default::default(),
        }
    }

    fn plain(total: u64, interrupter: Interrupter) -> (LiveProgress, Captured) {
        let captured = Captured::default();
        let live = LiveProgress::with_renderer(
            Box::new(PlainRenderer::new(Box::new(captured.clone()))),
            total,
            vec!["arithmetic".into(), "logic".into()],
            interrupter,
        );
        (live, captured)
    }

    #[test]
    fn waits_print_a_line_at_start_at_each_tenth_due_and_at_the_end() {
        let captured = Captured::default();
        let mut waits = WaitDisplay::lines(Box::new(captured.clone()));
        let show = |waits: &mut WaitDisplay, task: &str, done: f64| {
            waits.show(WaitProgress {
                task,
                done,
                total: 50.0,
                unit: "problems",
            });
        };
        show(&mut waits, "evaluation", 0.0);
        // A batch part-way decoded: the count shown is whole problems, as the percentage.
        show(&mut waits, "evaluation", 0.4);
        for i in 1..=50 {
            show(&mut waits, "evaluation", f64::from(i));
        }
        // A final report repeated (the evaluator's last batch, then its summary) prints once.
        show(&mut waits, "evaluation", 50.0);
        show(&mut waits, "evaluation without C", 0.0);
        show(&mut waits, "evaluation without C", 25.5);
        let text = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        // Start and end; the tenths in between come at most every 10 s, so not in this test.
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            lines[0].starts_with("evaluation: 0/50 problems (0%)"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("evaluation: 50/50 problems (100%)"),
            "{text}"
        );
        assert!(lines[2].starts_with("evaluation without C: 0/50"), "{text}");
        assert!(!lines[0].contains("eta"), "no rate measured yet: {text}");
        assert!(!lines[1].contains("eta"), "{text}");
    }

    #[test]
    fn plain_lines_carry_each_steps_metrics_and_per_expert_utilization() {
        let (mut live, captured) = plain(3, Interrupter::new());
        assert!(live.step(&report(1, 0.25, vec![0.3, 0.7])).is_continue());
        assert!(live.step(&report(2, 0.75, vec![0.6, 0.4])).is_continue());
        let text = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].starts_with("step 1/3  "), "{}", lines[0]);
        assert!(lines[0].contains("reward 0.250±0.500"), "{}", lines[0]);
        assert!(lines[0].contains("util arithmetic 0.30"), "{}", lines[0]);
        assert!(lines[0].contains("util logic 0.70"), "{}", lines[0]);
        assert!(lines[0].contains("tok/s 320"), "{}", lines[0]);
        assert!(lines[0].contains("peak GB 3.22"), "{}", lines[0]);
        assert!(!lines[0].contains("eta"), "no ETA before a step is timed");
        // The second line shows the second step's values, not the first's.
        assert!(lines[1].starts_with("step 2/3  eta "), "{}", lines[1]);
        assert!(lines[1].contains("reward 0.750±0.500"), "{}", lines[1]);
        assert!(lines[1].contains("util arithmetic 0.60"), "{}", lines[1]);
    }

    #[test]
    fn a_stop_request_breaks_after_the_step_and_closes_the_renderer() {
        let interrupter = Interrupter::new();
        let (mut live, captured) = plain(10, interrupter.clone());
        assert!(live.step(&report(1, 0.0, vec![])).is_continue());
        interrupter.stop(Some("test"));
        assert!(live.step(&report(2, 0.0, vec![])).is_break());
        assert!(live.renderer.is_none());
        let lines = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8");
        assert_eq!(lines.lines().count(), 2, "the stopping step is still shown");
    }

    #[test]
    fn the_renderer_closes_after_the_last_step_so_evaluation_gets_the_terminal() {
        let (mut live, _) = plain(2, Interrupter::new());
        assert!(live.step(&report(1, 0.0, vec![])).is_continue());
        assert!(live.renderer.is_some());
        assert!(live.step(&report(2, 0.0, vec![])).is_continue());
        assert!(live.renderer.is_none());
    }
}
