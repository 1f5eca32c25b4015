//! A whole run on tiny random models: the run directory holds the resolved config, one
//! metrics line per step, samples, and a checkpoint (PEFT adapter, interface, state).

mod common;

use burn::backend::Autodiff;
use burn_flex::Flex;
use common::fixture_with_tokenizer;
use musketeers::run_config::RunConfig;
use std::ops::ControlFlow;
use std::path::Path;

type Ad = Autodiff<Flex>;

fn fused_config(temp: &Path) -> RunConfig {
    let policy = fixture_with_tokenizer("llama-gqa", temp);
    let expert = fixture_with_tokenizer("qwen3-qk-norm", temp);
    toml::from_str(&format!(
        r#"
        mode = "fused"
        [policy]
        model = "{}"
        chat = false
        lora = {{ rank = 2, alpha = 4.0 }}
        [[team]]
        name = "qwen3"
        model = "{}"
        readout = "all"
        [interface]
        latent_dim = 16
        num_latents = 2
        num_heads = 2
        [grpo]
        steps = 3
        prompts_per_step = 2
        num_generations = 2
        max_completion_length = 4
        save_steps = 2
        [eval]
        problems = 8
        [[tasks]]
        name = "chain_sum"
        "#,
        policy.display(),
        expert.display()
    ))
    .expect("config parses")
}

#[test]
fn a_run_writes_metrics_samples_and_a_checkpoint() {
    let temp = tempfile::tempdir().expect("temp");
    let config = fused_config(temp.path());
    let out = temp.path().join("run");
    let mut seen = Vec::new();
    musketeers::run::run::<Ad>(&config, &out, None, false, &Default::default(), &mut |r| {
        seen.push(r.step);
        ControlFlow::Continue(())
    })
    .expect("run");
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
    let outcome =
        musketeers::run::run::<Ad>(&config, &out, None, false, &Default::default(), &mut |r| {
            if r.step == 1 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .expect("run");
    assert!(outcome.stopped && outcome.eval.is_none());
    assert_eq!(musketeers::run::checkpoint_step(&out), Some(1));
    assert!(!out.join("eval.json").exists());
    let outcome =
        musketeers::run::run::<Ad>(&config, &out, None, true, &Default::default(), &mut |_| {
            ControlFlow::Continue(())
        })
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
    let policy = fixture_with_tokenizer("llama-gqa", temp.path());
    let expert = fixture_with_tokenizer("qwen2-bias", temp.path());
    let other = fixture_with_tokenizer("qwen3-qk-norm", temp.path());
    let config: RunConfig = toml::from_str(&format!(
        r#"
        mode = "{mode}"
        [policy]
        model = "{}"
        chat = false
        lora = {{ rank = 2, alpha = 4.0 }}
        [[team]]
        name = "qwen2"
        model = "{}"
        [[team]]
        name = "qwen3"
        model = "{}"
        [interface]
        latent_dim = 16
        num_latents = 2
        num_heads = 2
        [eval]
        problems = 4
        [grpo]
        steps = 4
        prompts_per_step = 2
        num_generations = 3
        max_completion_length = 5
        temperature = 1.5
        learning_rate = 0.05
        save_steps = 2
        [[tasks]]
        name = "leg_counting"
        "#,
        policy.display(),
        expert.display(),
        other.display()
    ))
    .expect("config parses");
    let read = |dir: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .expect("metrics")
            .lines()
            .map(|l| deterministic(&serde_json::from_str(l).expect("json")))
            .collect()
    };
    let whole = temp.path().join("whole");
    musketeers::run::run::<Ad>(
        &config,
        &whole,
        None,
        false,
        &Default::default(),
        &mut |_| ControlFlow::Continue(()),
    )
    .expect("run");
    // The same run killed after step 3 (its last checkpoint is step 2), then resumed.
    let killed = temp.path().join("killed");
    musketeers::run::run::<Ad>(
        &config,
        &killed,
        Some(3),
        false,
        &Default::default(),
        &mut |_| ControlFlow::Continue(()),
    )
    .expect("run");
    assert_eq!(
        musketeers::run::checkpoint_step(&killed),
        Some(3),
        "the final step is saved"
    );
    // Roll the checkpoint back as if the kill came before step 3's save.
    musketeers::run::run::<Ad>(
        &config,
        &killed,
        Some(2),
        false,
        &Default::default(),
        &mut |_| ControlFlow::Continue(()),
    )
    .expect("run");
    let mut resumed_steps = Vec::new();
    musketeers::run::run::<Ad>(
        &config,
        &killed,
        None,
        true,
        &Default::default(),
        &mut |r| {
            resumed_steps.push(r.step);
            ControlFlow::Continue(())
        },
    )
    .expect("resume");
    assert_eq!(resumed_steps, vec![3, 4]);
    let (k, w) = (read(&killed), read(&whole));
    for (a, b) in k.iter().zip(&w) {
        assert_eq!(a, b, "first differing step");
    }
    assert_eq!(k.len(), w.len());
}
