//! Mixes and file-backed tasks, including the real GSM8K files when they are present.

use musketeers_verify::generators;
use musketeers_verify::options::Options;
use musketeers_verify::task::{FileTask, Mix};
use musketeers_verify::{Task, TaskError};
use std::path::PathBuf;

fn gsm8k_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/gsm8k")
}

#[test]
fn mix_follows_weights_and_scores_by_source() {
    let parts: Vec<(Box<dyn Task>, f64)> = vec![
        (
            generators::create("gcd", Options::new("gcd")).expect("gcd"),
            3.0,
        ),
        (
            generators::create("spell_backward", Options::new("spell_backward")).expect("spell"),
            1.0,
        ),
    ];
    let mix = Mix::new("mix", parts).expect("mix");
    let mut gcd = 0;
    for index in 0..4000 {
        let entry = mix.entry(9, index).expect("entry");
        let source = entry.metadata["source_dataset"]
            .as_str()
            .expect("source")
            .to_string();
        gcd += usize::from(source == "gcd");
        let answer = entry.answer.clone().expect("answer");
        assert_eq!(mix.score(Some(&answer), &entry), 1.0, "{source}");
    }
    let share = gcd as f64 / 4000.0;
    assert!((share - 0.75).abs() < 0.03, "gcd share {share}");
    assert!(Mix::new("empty", vec![]).is_err());
    let zero: Vec<(Box<dyn Task>, f64)> = vec![(
        generators::create("gcd", Options::new("gcd")).expect("gcd"),
        0.0,
    )];
    assert!(Mix::new("zero", zero).is_err());
}

#[test]
fn bad_lines_name_file_and_line() {
    let dir = std::env::temp_dir().join(format!("musketeers-verify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("bad.jsonl");
    std::fs::write(&path, "{\"question\":\"q\",\"answer\":\"1\\n#### 1\"}\n\n{\"question\":\"q\",\"answer\":\"no final\"}\n").expect("write");
    let err = FileTask::gsm8k(&path).expect_err("line 3 has no ####");
    assert!(matches!(&err, TaskError::BadLine { line: 3, .. }), "{err}");
    assert!(err.to_string().contains("bad.jsonl:3"), "{err}");
    let rg = dir.join("rg.jsonl");
    std::fs::write(&rg, "{\"question\":\"q\",\"answer\":\"1\",\"metadata\":{\"source_dataset\":\"tower_of_hanoi\"}}\n").expect("write");
    let err = FileTask::reasoning_gym("rg", &rg).expect_err("no scorer for that dataset");
    assert!(err.to_string().contains("tower_of_hanoi"), "{err}");
    assert!(matches!(
        FileTask::gsm8k(&dir.join("missing.jsonl")),
        Err(TaskError::Io { .. })
    ));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn real_gsm8k_loads_and_reference_answers_score_one() {
    let dir = gsm8k_dir();
    if !dir.join("test.jsonl").exists() {
        eprintln!("skipped: GSM8K not found at {}", dir.display());
        return;
    }
    let train = FileTask::gsm8k(&dir.join("train.jsonl")).expect("train loads");
    let test = FileTask::gsm8k(&dir.join("test.jsonl")).expect("test loads");
    assert_eq!(train.entries().len(), 7473);
    assert_eq!(test.entries().len(), 1319);
    for entry in test.entries() {
        let solution = entry.metadata["solution"].as_str().expect("solution");
        // The reference solution itself, with its `#### N`, is a completion that must score 1.
        assert_eq!(test.score_completion(solution, entry), 1.0, "{solution}");
        let answer = entry.answer.as_deref().expect("answer");
        assert_eq!(
            test.score_completion(&format!("So the total is \\boxed{{{answer}}}."), entry),
            1.0
        );
        assert_eq!(test.score_completion("I do not know.", entry), 0.0);
    }
    // One epoch of the seeded order visits every problem once.
    let mut seen: Vec<String> = (0..1319)
        .map(|i| test.entry(3, i).expect("entry").question)
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen.len(),
        test.entries()
            .iter()
            .map(|e| e.question.clone())
            .collect::<std::collections::HashSet<_>>()
            .len()
    );
}
