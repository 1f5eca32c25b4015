//! A whole run on tiny random models: the run directory holds the resolved config, one
//! metrics line per step, samples, and a checkpoint (PEFT adapter, interface, state).

use crate::common;

use burn::backend::Autodiff;
use burn_flex::Flex;
use common::run_steps;
use musketeers::run_config::RunConfig;
use std::ops::ControlFlow;
use std::path::Path;

type Ad = Autodiff<Flex>;

fn fused_config(temp: &Path) -> RunConfig {
    common::tiny_run(
        temp,
        r#"
        [[team]]
        name = "qwen3"
        model = "fixture:qwen3-qk-norm"
        readout = "all"
        [grpo]
        save_steps = 2
        [eval]
        problems = 8
        "#,
    )
}

#[test]
fn a_run_writes_metrics_samples_and_a_checkpoint() {
    let temp = tempfile::tempdir().expect("temp");
    let config = fused_config(temp.path());
    let out = temp.path().join("run");
    let seen = run_steps(&config, &out, None, false).expect("run");
    assert_eq!(seen, vec![1, 2, 3]);
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics");
    let lines: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.len(), 3);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["step"], i as u64 + 1);
        assert!(line["loss"]["loss"].as_f64().is_some_and(f64::is_finite));
        assert_eq!(line["utilization"].as_array().map(Vec::len), Some(1));
        assert!(line["rollouts"]["reward_mean"].is_number());
    }
    let samples = std::fs::read_to_string(out.join("samples.jsonl")).expect("samples");
    assert_eq!(
        samples.lines().count(),
        3 * 2,
        "one sample per prompt per step"
    );
    let first: serde_json::Value =
        serde_json::from_str(samples.lines().next().expect("a sample")).expect("json");
    assert!(first["advantage"].is_number() && first["reward"].is_number());
    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).expect("eval"))
            .expect("json");
    assert_eq!(eval["step"], 3);
    assert!(eval["accuracy_without_context"].is_number());
    let report = std::fs::read_to_string(out.join("report.md")).expect("report");
    assert!(report.contains("| qwen3 |"), "{report}");
    let reread: RunConfig =
        toml::from_str(&std::fs::read_to_string(out.join("config.toml")).expect("config"))
            .expect("resolved config parses");
    assert_eq!(reread, config);
    let checkpoint = out.join("checkpoint");
    for file in [
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "interface.safetensors",
        "state.json",
    ] {
        assert!(checkpoint.join(file).exists(), "{file}");
    }
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(checkpoint.join("state.json")).expect("state"),
    )
    .expect("json");
    assert_eq!(state["step"], 3);
    assert!(!out.join("checkpoint.tmp").exists() && !out.join("checkpoint.old").exists());
}

#[test]
fn a_stopped_run_is_checkpointed_not_evaluated_and_resumes() {
    let temp = tempfile::tempdir().expect("temp");
    let config = fused_config(temp.path());
    let out = temp.path().join("run");
    let outcome = musketeers::run::run::<Ad>(
        &config,
        &out,
        None,
        false,
        &Default::default(),
        &mut |r: &musketeers::train::StepReport| {
            if r.step == 1 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        },
    )
    .expect("run");
    assert!(outcome.stopped && outcome.eval.is_none());
    assert_eq!(musketeers::run::checkpoint_step(&out), Some(1));
    assert!(!out.join("eval.json").exists());
    let outcome = musketeers::run::run::<Ad>(
        &config,
        &out,
        None,
        true,
        &Default::default(),
        &mut musketeers::run::Unobserved,
    )
    .expect("resumed");
    assert_eq!(outcome.steps, 3);
    assert!(!outcome.stopped && outcome.eval.is_some());
}

/// The fields of a metrics line that must repeat exactly (not the timings).
fn deterministic(line: &serde_json::Value) -> serde_json::Value {
    serde_json::json!([
        line["step"],
        line["loss"],
        line["rollouts"],
        line["utilization"],
        line["routing_entropy"]
    ])
}

#[test]
fn a_killed_run_resumes_exactly() {
    resumes_exactly("fused");
}

#[test]
fn a_killed_hard_route_run_resumes_exactly() {
    // The router and its optimizer state are part of the checkpoint.
    resumes_exactly("hard-route");
}

fn resumes_exactly(mode: &str) {
    let temp = tempfile::tempdir().expect("temp");
    let config = common::tiny_run(
        temp.path(),
        &format!(
            r#"
            mode = "{mode}"
            [[team]]
            name = "qwen2"
            model = "fixture:qwen2-bias"
            [[team]]
            name = "qwen3"
            model = "fixture:qwen3-qk-norm"
            [eval]
            problems = 4
            [grpo]
            steps = 4
            num_generations = 3
            max_completion_length = 5
            temperature = 1.5
            learning_rate = 0.05
            save_steps = 2
            [[tasks]]
            name = "leg_counting"
            "#
        ),
    );
    let read = |dir: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .expect("metrics")
            .lines()
            .map(|l| deterministic(&serde_json::from_str(l).expect("json")))
            .collect()
    };
    let whole = temp.path().join("whole");
    run_steps(&config, &whole, None, false).expect("run");
    // The same run killed after step 3 (its last checkpoint is step 2), then resumed.
    let killed = temp.path().join("killed");
    run_steps(&config, &killed, 3, false).expect("run");
    assert_eq!(
        musketeers::run::checkpoint_step(&killed),
        Some(3),
        "the final step is saved"
    );
    // Roll the checkpoint back as if the kill came before step 3's save.
    run_steps(&config, &killed, 2, false).expect("run");
    let resumed_steps = run_steps(&config, &killed, None, true).expect("resume");
    assert_eq!(resumed_steps, vec![3, 4]);
    let (k, w) = (read(&killed), read(&whole));
    for (a, b) in k.iter().zip(&w) {
        assert_eq!(a, b, "first differing step");
    }
    assert_eq!(k.len(), w.len());
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_default()
}

/// Every way a resume used to destroy a run directory ends in a clear error (naming what is
/// wrong) or a correct continuation; the checkpoint and the logged steps survive each.
#[test]
fn resume_edge_cases_end_in_errors_or_continue_and_lose_nothing() {
    let temp = tempfile::tempdir().expect("temp");
    let mut config = fused_config(temp.path());
    config.grpo.save_steps = 1;
    config.eval.problems = 0;
    let out = temp.path().join("run");

    // Nothing to resume: a missing directory, then one without a checkpoint.
    let err = run_steps(&config, &out, 2, true).expect_err("missing directory");
    assert!(err.contains("nothing to resume"), "{err}");
    std::fs::create_dir_all(&out).expect("dir");
    let err = run_steps(&config, &out, 2, true).expect_err("empty directory");
    assert!(err.contains("nothing to resume"), "{err}");

    assert_eq!(run_steps(&config, &out, 2, false).expect("run"), vec![1, 2]);
    let metrics = read(&out.join("metrics.jsonl"));
    let state_path = out.join("checkpoint/state.json");
    let state = read(&state_path);
    let interface = out.join("checkpoint/interface.safetensors");
    let weights = read(&interface);

    // A truncated state file is an error naming it, never a fresh start.
    std::fs::write(&state_path, &state[..state.len() / 2]).expect("truncate");
    let err = run_steps(&config, &out, 3, true).expect_err("truncated state");
    assert!(
        err.contains("state.json") && err.contains("truncated"),
        "{err}"
    );
    assert_eq!(read(&out.join("metrics.jsonl")), metrics, "logs untouched");
    std::fs::write(&state_path, &state).expect("restore");
    // A checkpoint file whose content changed is named.
    let mut corrupt = weights.clone();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x5a;
    std::fs::write(&interface, &corrupt).expect("corrupt");
    let err = run_steps(&config, &out, 3, true).expect_err("corrupt file");
    assert!(err.contains("interface.safetensors"), "{err}");
    std::fs::write(&interface, &weights).expect("restore");
    // A missing state file (the checkpoint directory gone too) is an error as well.
    std::fs::remove_file(&state_path).expect("remove");
    let err = run_steps(&config, &out, 3, true).expect_err("missing state");
    assert!(err.contains("state.json"), "{err}");
    std::fs::write(&state_path, &state).expect("restore");

    // A config that changes what the checkpoint holds is refused, naming the key.
    let mut wider = config.clone();
    wider.policy.lora.rank = 4;
    let err = run_steps(&wider, &out, 3, true).expect_err("changed rank");
    assert!(err.contains("policy.lora.rank"), "{err}");
    assert_eq!(read(&out.join("metrics.jsonl")), metrics, "logs untouched");

    // Another process holding the directory keeps this one out.
    {
        let _held = musketeers::rundir::lock(&out).expect("lock");
        let err = run_steps(&config, &out, 3, true).expect_err("locked");
        assert!(err.contains("in use"), "{err}");
    }

    // A save killed between its two renames left only `checkpoint.old`; a torn last
    // line ends the metrics. The resume recovers both and continues; settings that may
    // change (the learning rate) are allowed and recorded.
    std::fs::rename(out.join("checkpoint"), out.join("checkpoint.old")).expect("rename");
    let mut torn = metrics.clone();
    torn.extend_from_slice(b"{\"step\": 3, \"loss\": {\"lo");
    std::fs::write(out.join("metrics.jsonl"), &torn).expect("torn line");
    let mut faster = config.clone();
    faster.grpo.learning_rate *= 2.0;
    assert_eq!(run_steps(&faster, &out, 3, true).expect("resume"), vec![3]);
    assert!(!out.join("checkpoint.old").exists());
    assert_eq!(musketeers::run::checkpoint_step(&out), Some(3));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .expect("metrics")
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line parses"))
        .collect();
    assert_eq!(
        lines.iter().map(|l| l["step"].clone()).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let changes = std::fs::read_to_string(out.join("config-changes.jsonl")).expect("recorded");
    assert!(changes.contains("grpo.learning_rate"), "{changes}");
}

/// The CLI killed with SIGKILL at random moments (saves every step, so kills land in saves
/// too), resumed each time, ends where the uninterrupted run ends: the same metrics,
/// evaluation and checkpoint files.
#[cfg(unix)]
#[test]
fn sigkill_at_random_moments_then_resume_equals_the_uninterrupted_run() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let temp = tempfile::tempdir().expect("temp");
    let mut config = fused_config(temp.path());
    config.grpo.steps = 12;
    config.grpo.save_steps = 1;
    config.eval.problems = 4;
    let config_path = temp.path().join("run.toml");
    std::fs::write(&config_path, toml::to_string(&config).expect("toml")).expect("config");
    let train = |out: &Path, resume: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_musketeers"));
        command
            .args(["train", "--config"])
            .arg(&config_path)
            .arg("--out")
            .arg(out)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if resume {
            command.arg("--resume");
        }
        command.spawn().expect("spawn")
    };
    let whole = temp.path().join("whole");
    let started = Instant::now();
    let status = train(&whole, false).wait().expect("wait");
    assert!(status.success());
    let duration = started.elapsed();

    let killed = temp.path().join("killed");
    let logged = |dir: &Path| {
        std::fs::read_to_string(dir.join("metrics.jsonl")).map_or(0, |t| t.lines().count())
    };
    let step_time = duration / 12;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = move || {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    // Kill once at start-up, then at a random moment of steps 2, 4, 6, 8 and 10 (a random
    // offset into the step, so some kills land in its checkpoint save).
    let mut kills = 0;
    for target in [0, 2, 4, 6, 8, 10] {
        let resume = musketeers::run::checkpoint_step(&killed).is_some();
        let mut child = train(&killed, resume);
        let deadline = Instant::now() + Duration::from_secs(120);
        while logged(&killed) < target && Instant::now() < deadline {
            if child.try_wait().expect("poll").is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(step_time.mul_f64(random()));
        if child.try_wait().expect("poll").is_none() {
            child.kill().expect("SIGKILL");
            kills += 1;
        }
        child.wait().expect("reap");
    }
    let resume = musketeers::run::checkpoint_step(&killed).is_some();
    let status = train(&killed, resume).wait().expect("wait");
    assert!(
        status.success(),
        "the last resume failed after {kills} kills"
    );
    assert!(
        kills >= 5,
        "only {kills} kills landed before the run finished"
    );
    let metrics = |dir: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .expect("metrics")
            .lines()
            .map(|l| deterministic(&serde_json::from_str(l).expect("json")))
            .collect()
    };
    assert_eq!(metrics(&killed), metrics(&whole));
    let eval = |dir: &Path| -> serde_json::Value {
        serde_json::from_slice(&read(&dir.join("eval.json"))).expect("eval")
    };
    assert_eq!(eval(&killed), eval(&whole));
    for file in ["adapter/adapter_model.safetensors", "interface.safetensors"] {
        let (a, b) = (
            read(&killed.join("checkpoint").join(file)),
            read(&whole.join("checkpoint").join(file)),
        );
        let (a, b) = (
            safetensors::SafeTensors::deserialize(&a).expect("safetensors"),
            safetensors::SafeTensors::deserialize(&b).expect("safetensors"),
        );
        let mut names = a.names();
        names.sort();
        let mut other = b.names();
        other.sort();
        assert_eq!(names, other, "{file}");
        for name in names {
            assert_eq!(
                a.tensor(name).expect("tensor").data(),
                b.tensor(name).expect("tensor").data(),
                "{file}: {name}"
            );
        }
    }
}
