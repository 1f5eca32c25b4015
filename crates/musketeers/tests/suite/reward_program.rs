//! Rewards from programs in another language (the shipped Python example), through a real
//! training run: their rewards reach `metrics.jsonl`; a program that crashes, hangs, prints
//! garbage, answers too few rewards or NaN ends the run with an error naming it, and the run
//! directory stays consistent and resumable.

use crate::common;

fn run(config: &RunConfig, out: &Path, steps: u64, resume: bool) -> Result<u64, String> {
    common::run_steps(config, out, steps, resume).map(|seen| seen.last().copied().unwrap_or(0))
}

use musketeers::run_config::{RewardConfig, RunConfig};
use std::path::{Path, PathBuf};

fn python() -> String {
    std::env::var("MUSKETEERS_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/rewards/answer_format.py")
}

fn config(temp: &Path, rewards: Vec<RewardConfig>) -> RunConfig {
    let mut config = common::tiny_run_config(temp, "single");
    config.rewards = rewards;
    config
}

fn program(name: &str, command: Vec<String>, timeout_seconds: f64) -> RewardConfig {
    RewardConfig {
        name: name.into(),
        weight: 1.0,
        command: Some(command),
        timeout_seconds,
    }
}

#[test]
fn a_python_reward_program_trains_a_run_and_is_logged() {
    let temp = tempfile::tempdir().expect("temp");
    let format = program(
        "answer_format",
        vec![python(), example().display().to_string()],
        60.0,
    );
    let verifier = RewardConfig {
        name: "correct".into(),
        weight: 2.0,
        command: None,
        timeout_seconds: 60.0,
    };
    let config = config(temp.path(), vec![format, verifier]);
    let out = temp.path().join("run");
    assert_eq!(run(&config, &out, 3, false).expect("run"), 3);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .expect("metrics")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.len(), 3);
    for line in &lines {
        let parts = &line["reward_functions"];
        let (format, correct) = (
            parts["answer_format"]
                .as_f64()
                .expect("the program's reward is logged"),
            parts["correct"]
                .as_f64()
                .expect("the verifier's reward is logged"),
        );
        assert!((0.0..=1.0).contains(&format) && (0.0..=1.0).contains(&correct));
        let mean = line["rollouts"]["reward_mean"].as_f64().expect("mean");
        assert!(
            (mean - (format + 2.0 * correct)).abs() < 1e-5,
            "the total is the weighted sum: {mean} vs {format} + 2 * {correct}"
        );
    }
}

/// Each misbehaviour is an error naming the program and what it did, raised before any
/// update: the checkpoint of the last good step stays, and the run resumes from it.
#[test]
fn misbehaving_programs_are_named_errors_and_the_run_resumes() {
    let temp = tempfile::tempdir().expect("temp");
    let py = |code: &str| vec![python(), "-c".into(), code.into()];
    // Each reads a request and then misbehaves on the second batch (step 2), so step 1 is
    // checkpointed first.
    let prelude = "import sys, json, time\nfor n, line in enumerate(sys.stdin):\n    k = len(json.loads(line)['batch'])\n    if n == 0:\n        print(json.dumps({'rewards': [0.5] * k}), flush=True)\n        continue\n";
    let cases = [
        (
            "crashes",
            format!("{prelude}    sys.exit('reward crashed on purpose')"),
            "exited",
            30.0,
        ),
        (
            "hangs",
            format!("{prelude}    time.sleep(60)"),
            "no answer",
            1.0,
        ),
        (
            "garbage",
            format!("{prelude}    print('hello', flush=True)"),
            "not JSON",
            30.0,
        ),
        (
            "too-few",
            format!("{prelude}    print(json.dumps({{'rewards': [1.0]}}), flush=True)"),
            "rewards for",
            30.0,
        ),
        (
            "nan",
            format!(
                "{prelude}    print(json.dumps({{'rewards': [float('nan')] * k}}), flush=True)"
            ),
            "not finite",
            30.0,
        ),
    ];
    for (name, code, says, timeout) in cases {
        let out = temp.path().join(name);
        let bad = config(temp.path(), vec![program(name, py(&code), timeout)]);
        let err = run(&bad, &out, 3, false).expect_err(name);
        assert!(err.contains(name) && err.contains(says), "{name}: {err}");
        assert_eq!(
            musketeers::run::checkpoint_step(&out),
            Some(1),
            "{name}: step 1 kept"
        );
        let logged = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics");
        assert_eq!(
            logged.lines().count(),
            1,
            "{name}: only the good step logged"
        );
        // The same run with a working program resumes from step 1.
        let good = config(
            temp.path(),
            vec![program(
                name,
                vec![python(), example().display().to_string()],
                60.0,
            )],
        );
        assert_eq!(run(&good, &out, 3, true).expect("resume"), 3, "{name}");
    }
}
