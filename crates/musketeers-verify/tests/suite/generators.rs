//! The native generators: deterministic, scorable by the parity-tested scorers, validated.

use musketeers_verify::generators::{self, NAMES};
use musketeers_verify::options::Options;
use musketeers_verify::{Task, TaskError};

fn task(name: &str) -> Box<dyn Task> {
    generators::create(name, Options::new(name)).expect("default settings are valid")
}

#[test]
fn oracle_answers_score_full_marks() {
    for name in NAMES {
        let task = task(name);
        let mut full = 0;
        for index in 0..200 {
            let entry = task.entry(11, index).expect("entry");
            let answer = match &entry.answer {
                Some(a) => a.clone(),
                None => entry.metadata["example_answer"]
                    .as_str()
                    .expect("example answer")
                    .to_string(),
            };
            let score = task.score(Some(&answer), &entry);
            // propositional_logic falls back to a bare variable (0.25) when no non-trivial
            // conclusion is found, as reasoning-gym does.
            assert!(
                score >= 0.25,
                "{name} #{index}: oracle {answer:?} scored {score}"
            );
            full += usize::from(score == 1.0);
            let wrapped = format!("thinking...\n<answer>{answer}</answer>");
            assert_eq!(
                task.score_completion(&wrapped, &entry),
                score,
                "{name}: extraction changed the score"
            );
        }
        assert!(
            full >= 180,
            "{name}: only {full}/200 oracle answers got 1.0"
        );
    }
}

#[test]
fn same_seed_same_entries_other_seed_other_entries() {
    for name in NAMES {
        let (a, b) = (task(name), task(name));
        let first: Vec<_> = (0..20).map(|i| a.entry(5, i).expect("entry")).collect();
        let again: Vec<_> = (0..20)
            .rev()
            .map(|i| b.entry(5, i).expect("entry"))
            .rev()
            .collect();
        assert_eq!(first, again, "{name}: entries depend on draw order");
        let other: Vec<_> = (0..20).map(|i| a.entry(6, i).expect("entry")).collect();
        assert_ne!(first, other, "{name}: seed has no effect");
        let distinct: std::collections::HashSet<_> =
            first.iter().map(|e| e.question.clone()).collect();
        assert!(
            distinct.len() >= 5,
            "{name}: only {} distinct questions in 20",
            distinct.len()
        );
    }
}

/// Entries are pinned: the same seed gives these exact items on every platform. Regenerate
/// with `MUSKETEERS_BLESS=1 cargo test -p musketeers-verify --test suite generators::` after an
/// intended change to a generator.
#[test]
fn entries_match_golden_file() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/generator_golden.jsonl");
    let mut lines = String::new();
    for name in NAMES {
        for index in 0..3 {
            let entry = task(name).entry(42, index).expect("entry");
            lines += &serde_json::to_string(&entry).expect("entries serialise");
            lines.push('\n');
        }
    }
    if std::env::var_os("MUSKETEERS_BLESS").is_some() {
        std::fs::write(&path, &lines).expect("write golden file");
    }
    let golden = std::fs::read_to_string(&path).expect("golden file exists (bless to create)");
    for (got, want) in lines.lines().zip(golden.lines()) {
        assert_eq!(got, want);
    }
    assert_eq!(lines.lines().count(), golden.lines().count());
}

#[test]
fn settings_change_difficulty_and_bad_settings_are_named() {
    let hard = generators::create(
        "chain_sum",
        Options::new("chain_sum")
            .set("min_terms", 5)
            .set("max_terms", 5)
            .set("min_digits", 3)
            .set("max_digits", 3),
    )
    .expect("valid settings");
    let entry = hard.entry(1, 0).expect("entry");
    assert_eq!(entry.metadata["num_terms"], 5);
    assert_eq!(
        entry.metadata["expression"]
            .as_str()
            .expect("expression")
            .split(' ')
            .count(),
        9
    );

    let unknown = generators::create("gcd", Options::new("gcd").set("max_vlaue", 10));
    let unknown = unknown.err();
    assert!(
        matches!(&unknown, Some(TaskError::BadOption { key, .. }) if key == "max_vlaue"),
        "{unknown:?}"
    );
    let inverted = generators::create(
        "lcm",
        Options::new("lcm")
            .set("min_value", 50)
            .set("max_value", 10),
    );
    assert!(inverted.as_ref().err().is_some_and(|e| {
        e.to_string()
            .contains("min_value = 50 exceeds max_value = 10")
    }));
    let not_number = generators::create(
        "products",
        Options::new("products").set("max_digits", "many"),
    );
    assert!(
        not_number
            .as_ref()
            .err()
            .is_some_and(|e| e.to_string().contains("max_digits"))
    );
    assert!(matches!(
        generators::create("nope", Options::new("nope")),
        Err(TaskError::UnknownGenerator(_))
    ));
    let impossible = generators::create(
        "countdown",
        Options::new("countdown")
            .set("min_target", 100_000)
            .set("max_target", 100_001)
            .set("max_value", 2),
    )
    .expect("settings parse");
    assert!(matches!(
        impossible.entry(0, 0),
        Err(TaskError::Generation { .. })
    ));
}
