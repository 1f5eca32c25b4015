//! The demo at its smallest (the CI size): a team and a policy trained from scratch, fused and
//! single GRPO on both tasks, evaluated, reported. Checks the run's products and its
//! invariants; the learning itself is measured by `cargo xtask demo` (see README).

use burn::backend::Autodiff;
use burn_flex::Flex;
use musketeers::demo::{DemoSettings, TEAM, run_demo};

type Ad = Autodiff<Flex>;

#[test]
fn the_quick_demo_trains_evaluates_and_reports_every_cell() {
    let temp = tempfile::tempdir().expect("temp");
    let settings = DemoSettings::quick(temp.path().to_path_buf());
    let mut log = Vec::new();
    let results = run_demo::<Ad>(&settings, &Default::default(), &mut |l| {
        log.push(l.to_string())
    })
    .expect("demo runs");

    // Per task: a row per mode, fused without C, the specialist alone.
    assert_eq!(
        results.rows.len(),
        (settings.modes.len() + 2) * settings.tasks.len()
    );
    for row in &results.rows {
        assert!(
            row.accuracies.iter().all(|a| (0.0..=1.0).contains(a)),
            "{row:?}"
        );
        assert!(row.mean.is_finite() && row.std >= 0.0, "{row:?}");
    }
    for task in &settings.tasks {
        for routed in ["fused", "hard-route"] {
            let shares = &results.final_utilization[&format!("{} {routed}", task.label)];
            assert_eq!(shares.len(), TEAM.len());
            let total: f64 = shares.iter().sum();
            assert!((total - 1.0).abs() < 1e-3, "utilization sums to {total}");
        }
        for mode in ["single", "fused", "hard-route", "text-collab"] {
            let dir = temp
                .path()
                .join("runs")
                .join(format!("{}-{mode}-seed1", task.label));
            for file in [
                "config.toml",
                "metrics.jsonl",
                "eval.json",
                "report.md",
                "reward.svg",
            ] {
                assert!(dir.join(file).exists(), "{} lacks {file}", dir.display());
            }
            let eval: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(dir.join("eval.json")).expect("eval.json"),
            )
            .expect("eval json");
            assert_eq!(eval["problems"], settings.eval_problems);
            assert_eq!(
                eval["accuracy_without_context"].is_null(),
                mode == "single" || mode == "text-collab",
                "only runs with an interface have the no-C ablation"
            );
        }
        let fused = temp
            .path()
            .join("runs")
            .join(format!("{}-fused-seed1", task.label));
        assert!(fused.join("utilization.svg").exists());
    }
    let report = std::fs::read_to_string(&results.report).expect("report");
    assert!(
        report.contains("| arithmetic | fused (n-Musketeers) |"),
        "{report}"
    );
    assert!(report.contains("Does utilization concentrate"), "{report}");

    // A second demo with the same model settings reuses the team instead of retraining it.
    let mut again = Vec::new();
    let settings = DemoSettings {
        tasks: vec![musketeers::demo::LOGIC],
        grpo_steps: Some(1),
        ..settings
    };
    run_demo::<Ad>(&settings, &Default::default(), &mut |l| {
        again.push(l.to_string())
    })
    .expect("second demo");
    assert!(
        again.iter().any(|l| l.contains("reusing the team")),
        "{again:?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("training the arithmetic expert"))
    );
}
