//! Mixes and file-backed tasks, including the real GSM8K files when they are present.

use musketeers_verify::generators;
use musketeers_verify::options::Options;
use musketeers_verify::task::{FileFormat, FileTask, Mix};
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
        musketeers_testkit::skip(format_args!("GSM8K not found at {}", dir.display()));
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

fn temp_file(name: &str, text: &str) -> (tempdir::Dir, PathBuf) {
    let dir = tempdir::Dir::new(name);
    let path = dir.0.join(name);
    std::fs::write(&path, text).expect("write");
    (dir, path)
}

/// A scratch directory removed on drop (this crate has no tempfile dependency).
mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "musketeers-verify-{}-{tag}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            std::fs::create_dir_all(&dir).expect("temp dir");
            Self(dir)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            std::fs::remove_dir_all(&self.0).ok();
        }
    }
}

#[test]
fn file_tasks_draw_without_replacement_within_an_epoch() {
    let lines: String = (0..10)
        .map(|i| format!("{{\"question\":\"q{i}\",\"answer\":\"{i}\"}}\n"))
        .collect();
    let (_dir, path) = temp_file("qa.jsonl", &lines);
    let task = FileTask::open("mine", &path, FileFormat::QaNumeric).expect("loads");
    assert_eq!(task.len(), 10);
    let epoch = |seed: u64, k: u64| -> Vec<String> {
        (k * 10..(k + 1) * 10)
            .map(|i| task.entry(seed, i).expect("entry").question)
            .collect()
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let all: Vec<String> = sorted((0..10).map(|i| format!("q{i}")).collect());
    for (seed, k) in [(1, 0), (1, 1), (2, 0), (2, 5)] {
        assert_eq!(sorted(epoch(seed, k)), all, "seed {seed} epoch {k}");
    }
    assert_ne!(epoch(1, 0), epoch(2, 0), "the order depends on the seed");
    assert_ne!(epoch(1, 0), epoch(1, 1), "each epoch has its own order");
    assert_eq!(epoch(1, 0), epoch(1, 0), "the order is reproducible");
    // In file order: entry i is line i, whatever the seed.
    let ordered = task.clone().in_file_order();
    for i in 0..25 {
        assert_eq!(
            ordered.entry(i * 7, i).expect("entry").question,
            format!("q{}", i % 10)
        );
    }
    // Numeric answers score as numbers, through GSM8K's extraction.
    let entry = task.entry(0, 0).expect("entry");
    let answer = entry.answer.clone().expect("answer");
    assert_eq!(
        task.score_completion(&format!("... so it is {answer}.0"), &entry),
        1.0
    );
}

#[test]
fn question_answer_files_name_their_bad_lines() {
    let (_dir, path) = temp_file(
        "bad-qa.jsonl",
        "{\"question\":\"a\",\"answer\":\"x\"}\n{\"question\":\"b\",\"answer\":\"y\"}\n{\"question\":\"c\"}\n",
    );
    let err = FileTask::open("mine", &path, FileFormat::QaExact).expect_err("line 3");
    assert!(matches!(&err, TaskError::BadLine { line: 3, .. }), "{err}");
    assert!(err.to_string().contains("bad-qa.jsonl:3"), "{err}");
    let (_dir2, empty) = temp_file("empty.jsonl", "\n\n");
    assert!(matches!(
        FileTask::open("mine", &empty, FileFormat::QaExact),
        Err(TaskError::Empty { .. })
    ));
    let exact = FileTask::open("mine", &path, FileFormat::QaExact);
    assert!(exact.is_err());
    let (_dir3, good) = temp_file(
        "good.jsonl",
        "{\"question\":\"Capital?\",\"answer\":\"Paris\"}\n",
    );
    let task = FileTask::open("mine", &good, FileFormat::QaExact).expect("loads");
    let entry = task.entry(0, 0).expect("entry");
    assert_eq!(
        task.score_completion("<answer> paris </answer>", &entry),
        1.0
    );
    assert_eq!(task.score_completion("Paris", &entry), 0.0, "needs the tag");
}
