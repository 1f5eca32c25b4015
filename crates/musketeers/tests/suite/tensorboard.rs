//! Every run writes TensorBoard event files beside `metrics.jsonl` holding the same scalars
//! at the same steps, also after a resume. Read back here as TFRecords (checksums checked);
//! with MUSKETEERS_TENSORBOARD_PYTHON (CI: a venv with the `tensorboard` package) also by
//! TensorBoard's own reader, `scripts/tensorboard_check.py`.

use crate::common;

fn run(config: &RunConfig, out: &Path, steps: u64, resume: bool) {
    common::run_steps(config, out, steps, resume).expect("run");
}

use musketeers::run_config::RunConfig;
use std::path::{Path, PathBuf};

fn config(temp: &Path) -> RunConfig {
    common::tiny_run_config(temp, "fused")
}

fn event_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .expect("dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().contains("events.out.tfevents."))
        .collect()
}

/// The records of an event file, each checked against its length field.
fn records(path: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).expect("events");
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let len = u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8")) as usize;
        let data = &bytes[at + 12..at + 12 + len];
        out.push(data.to_vec());
        at += 12 + len + 4;
    }
    assert_eq!(at, bytes.len(), "records fill the file exactly");
    out
}

#[test]
fn event_files_hold_the_metrics_of_every_step_also_after_a_resume() {
    let temp = tempfile::tempdir().expect("temp");
    let config = config(temp.path());
    let out = temp.path().join("run");
    run(&config, &out, 2, false);
    run(&config, &out, 3, true);
    let files = event_files(&out);
    assert_eq!(files.len(), 1, "one event file: {files:?}");
    let lines = std::fs::read_to_string(out.join("metrics.jsonl"))
        .expect("metrics")
        .lines()
        .count();
    // The file-version record, then one per logged step.
    assert_eq!(records(&files[0]).len(), 1 + lines);
    assert_eq!(lines, 3);
    if let Ok(python) = std::env::var("MUSKETEERS_TENSORBOARD_PYTHON") {
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/tensorboard_check.py");
        let output = std::process::Command::new(python)
            .arg(script)
            .arg(&out)
            .arg(r#"["qwen3"]"#)
            .output()
            .expect("python");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        #[allow(clippy::print_stderr)] // CI greps for this line
        {
            eprintln!("{}", text.trim());
        }
    } else {
        musketeers_testkit::skip(
            "TensorBoard's reader not run: MUSKETEERS_TENSORBOARD_PYTHON is unset",
        );
    }

    // Off by config: no event file.
    let mut quiet = config.clone();
    quiet.tensorboard = false;
    let other = temp.path().join("quiet");
    run(&quiet, &other, 1, false);
    assert!(event_files(&other).is_empty());
}
