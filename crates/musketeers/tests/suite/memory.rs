//! A run whose models cannot fit is refused before loading any, with the figures.

use crate::common::{tiny_run_config, write_tiny_run};
use musketeers::memory::{MEMORY_LIMIT_ENV, check_fits, estimate};
use musketeers::system::Needs;
use std::process::Command;

#[test]
fn a_team_too_large_for_the_limit_is_refused_with_the_figures() {
    let temp = tempfile::tempdir().expect("temp dir");
    let mut config = tiny_run_config(temp.path(), "fused");
    let needs = Needs {
        team: true,
        team_generates: false,
        interface: true,
        router: false,
    };
    config.team_weights = musketeers_lm::Precision::F32;
    let full = estimate(&config, needs).expect("estimate");
    config.team_weights = musketeers_lm::Precision::F16;
    let compact = estimate(&config, needs).expect("estimate");
    assert_eq!(full.parts.len(), 1 + config.team.len(), "{full:?}");
    // The policy is the same; every expert holds less in f16.
    assert_eq!(full.parts[0], compact.parts[0]);
    for (f, c) in full.parts[1..].iter().zip(&compact.parts[1..]) {
        assert!(c.1 < f.1, "{f:?} vs {c:?}");
    }
    let without_team = estimate(
        &config,
        Needs {
            team: false,
            ..needs
        },
    )
    .expect("estimate");
    assert_eq!(without_team.parts.len(), 1);
    // Experts that write text (text-collab) hold their untied heads; others do not.
    let writing = estimate(
        &config,
        Needs {
            team_generates: true,
            ..needs
        },
    )
    .expect("estimate");
    for (w, c) in writing.parts.iter().zip(&compact.parts) {
        assert!(w.1 >= c.1, "{w:?} vs {c:?}");
    }

    check_fits(&compact, Some(compact.total())).expect("fits exactly");
    let refused = check_fits(&compact, Some(compact.total() - 1))
        .expect_err("one byte short")
        .to_string();
    assert!(refused.contains("needs about"), "{refused}");
    assert!(refused.contains("expert"), "{refused}");
    assert!(refused.contains("available"), "{refused}");
}

#[test]
fn train_refuses_a_run_over_the_memory_limit_before_loading() {
    let temp = tempfile::tempdir().expect("temp dir");
    let config = write_tiny_run(temp.path(), "run.toml", "mode = \"fused\"");
    let out = temp.path().join("out");
    let output = Command::new(env!("CARGO_BIN_EXE_musketeers"))
        .args(["train", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&out)
        .env(MEMORY_LIMIT_ENV, "0.000001")
        .output()
        .expect("run musketeers train");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("needs about"), "{stderr}");
    assert!(stderr.contains(MEMORY_LIMIT_ENV), "{stderr}");
    assert!(
        !out.join("metrics.jsonl").exists(),
        "no step may run once the run is refused"
    );
}
