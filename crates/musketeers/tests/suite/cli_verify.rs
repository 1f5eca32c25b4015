//! The `musketeers verify` command-line contract, exactly as users and scripts rely on it.

use std::io::Write;
use std::process::{Command, Stdio};

fn musketeers() -> Command {
    Command::new(env!("CARGO_BIN_EXE_musketeers"))
}

#[test]
fn score_prints_one_object_per_line_in_order_and_survives_bad_lines() {
    let entry =
        r#"{"question":"Find the GCD of 12, 18.","answer":"6","metadata":{"numbers":[12,18]}}"#;
    let input = [
        format!(r#"{{"dataset":"gcd","entry":{entry},"answer":"6"}}"#),
        "this is not json".to_string(),
        format!(r#"{{"dataset":"gcd","entry":{entry},"completion":"hmm <answer>6</answer>"}}"#),
        format!(r#"{{"dataset":"no_such_task","entry":{entry},"answer":"6"}}"#),
        format!(r#"{{"dataset":"gcd","entry":{entry},"answer":null}}"#),
        r##"{"dataset":"gsm8k","entry":{"question":"q","answer":"steps\n#### 1,080"},"completion":"The answer is $1080."}"##.to_string(),
        format!(r#"{{"dataset":"gcd","entry":{entry},"answer":"x6"}}"#),
    ]
    .join("\n");
    let dir = std::env::temp_dir().join(format!("musketeers-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("in.jsonl");
    std::fs::write(&path, input).expect("write input");
    let out = musketeers()
        .args(["verify", "score", "--input"])
        .arg(&path)
        .output()
        .expect("run musketeers");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("each output line is JSON"))
        .collect();
    assert_eq!(lines.len(), 7);
    assert_eq!(lines[0], serde_json::json!({"score": 1.0}));
    assert!(
        lines[1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("bad input line"))
    );
    assert_eq!(lines[2], serde_json::json!({"score": 1.0}));
    assert!(
        lines[3]["error"]
            .as_str()
            .is_some_and(|e| e.contains("no_such_task"))
    );
    assert_eq!(lines[4], serde_json::json!({"score": 0.0}));
    assert_eq!(lines[5], serde_json::json!({"score": 1.0}));
    assert_eq!(lines[6], serde_json::json!({"score": 0.5}));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn sample_then_score_round_trips_through_stdin() {
    let out = musketeers()
        .args([
            "verify",
            "sample",
            "--task",
            "chain_sum",
            "--n",
            "4",
            "--seed",
            "3",
            "--config",
            "min_terms=3",
            "--config",
            "max_terms=3",
        ])
        .output()
        .expect("run sample");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entries: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(entries.len(), 4);
    let mut child = musketeers()
        .args(["verify", "score", "--input", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn score");
    let mut stdin = child.stdin.take().expect("stdin");
    for entry in &entries {
        assert_eq!(entry["metadata"]["num_terms"], 3);
        let line =
            serde_json::json!({"dataset": "chain_sum", "entry": entry, "answer": entry["answer"]});
        writeln!(stdin, "{line}").expect("write");
    }
    drop(stdin);
    let out = child.wait_with_output().expect("score output");
    let scores: Vec<&str> = std::str::from_utf8(&out.stdout)
        .expect("utf-8")
        .lines()
        .collect();
    assert_eq!(scores, vec![r#"{"score":1.0}"#; 4]);
}

#[test]
fn sample_rejects_unknown_settings_with_a_named_error() {
    let out = musketeers()
        .args([
            "verify",
            "sample",
            "--task",
            "gcd",
            "--config",
            "max_vlaue=5",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("max_vlaue") && stderr.contains("unknown setting"),
        "{stderr}"
    );
}
