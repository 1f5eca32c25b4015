//! A task file in Parquet (written by pyarrow) trains and evaluates as the JSONL it was made
//! from: the same prompts, completions, rewards and evaluation, step for step.

use crate::common;

use musketeers::run_config::{RunConfig, TaskConfig};
use std::path::{Path, PathBuf};

fn gsm8k_task(file: PathBuf) -> TaskConfig {
    TaskConfig {
        file: Some(file),
        ..TaskConfig::generator("gsm8k")
    }
}

/// The run's record of what it saw and did, without its timings.
fn trace(out: &Path) -> (Vec<serde_json::Value>, String, serde_json::Value) {
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl"))
        .expect("metrics")
        .lines()
        .map(|l| {
            let line: serde_json::Value = serde_json::from_str(l).expect("json");
            serde_json::json!([
                line["step"],
                line["loss"],
                line["rollouts"],
                line["prompt_indices"]
            ])
        })
        .collect();
    let samples = std::fs::read_to_string(out.join("samples.jsonl")).expect("samples");
    let mut eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).expect("eval"))
            .expect("json");
    if let Some(fields) = eval.as_object_mut() {
        fields.retain(|k, _| !k.contains("seconds"));
    }
    (metrics, samples, eval)
}

/// Train `train` and evaluate on `test` (each a JSONL file and its Parquet twin): both runs
/// must leave the same trace.
fn same_run(temp: &Path, pairs: [(PathBuf, PathBuf); 2], eval_problems: usize) {
    let mut traces = Vec::new();
    for (i, pick) in [0, 1].into_iter().enumerate() {
        let [train, test] = pairs
            .clone()
            .map(|pair| if pick == 0 { pair.0 } else { pair.1 });
        let mut config: RunConfig = common::tiny_run_config(temp, "single");
        config.tasks = vec![gsm8k_task(train)];
        config.eval.tasks = vec![gsm8k_task(test)];
        config.eval.problems = eval_problems;
        let out = temp.join(format!("run{i}"));
        assert_eq!(
            common::run_steps(&config, &out, 2, false).expect("run"),
            vec![1, 2]
        );
        traces.push(trace(&out));
    }
    let (metrics, samples, eval) = &traces[0];
    assert_eq!(metrics.len(), 2);
    assert_eq!(
        samples.lines().count(),
        2 * 2,
        "one sample per prompt per step"
    );
    assert_eq!(eval["problems"], eval_problems);
    assert_eq!(
        traces[0], traces[1],
        "the Parquet run differs from the JSONL run"
    );
}

#[test]
fn a_parquet_task_file_trains_and_evaluates_as_its_jsonl() {
    let temp = tempfile::tempdir().expect("temp");
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../musketeers-verify/tests/fixtures/parquet");
    let pair = (
        fixtures.join("gsm8k_like.jsonl"),
        fixtures.join("gsm8k_like.parquet"),
    );
    same_run(temp.path(), [pair.clone(), pair], 3);
}

/// The real GSM8K converted by pyarrow (CI names the folder in MUSKETEERS_GSM8K_PARQUET).
#[test]
fn real_gsm8k_parquet_trains_and_evaluates_as_its_jsonl() {
    let Ok(dir) = std::env::var("MUSKETEERS_GSM8K_PARQUET") else {
        musketeers_testkit::skip(
            "MUSKETEERS_GSM8K_PARQUET does not name a folder of GSM8K Parquet files",
        );
        return;
    };
    let jsonl = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/gsm8k");
    let parquet = PathBuf::from(dir);
    let temp = tempfile::tempdir().expect("temp");
    same_run(
        temp.path(),
        ["train", "test"].map(|split| {
            (
                jsonl.join(format!("{split}.jsonl")),
                parquet.join(format!("{split}.parquet")),
            )
        }),
        4,
    );
}
