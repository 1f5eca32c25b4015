//! Run configs: the shipped ones parse, defaults fill in, and mistakes are errors that name
//! the key.

use musketeers::run_config::{Mode, RunConfig};
use std::path::PathBuf;

fn configs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs")
}

#[test]
fn shipped_configs_parse_with_defaults() {
    let team = RunConfig::from_file(&configs().join("smollm2-team.toml")).expect("team config");
    assert_eq!(team.mode, Mode::Fused);
    assert_eq!(team.team.len(), 2);
    assert_eq!(team.policy.lora.rank, 8);
    assert_eq!(team.grpo.num_generations, 8);
    assert_eq!(team.interface.latent_dim, 512, "default");
    assert!(
        team.policy.prompt_template.contains("<answer>"),
        "default template"
    );
    let single =
        RunConfig::from_file(&configs().join("smollm2-single.toml")).expect("single config");
    assert_eq!(single.mode, Mode::Single);
}

#[test]
fn unknown_keys_and_bad_values_are_named() {
    let dir = tempfile::tempdir().expect("temp");
    let write = |text: &str| {
        let path = dir.path().join("run.toml");
        std::fs::write(&path, text).expect("write");
        RunConfig::from_file(&path)
            .expect_err("invalid")
            .to_string()
    };
    let base = "[policy]\nmodel = \"x\"\n[[tasks]]\nname = \"chain_sum\"\n";
    let err = write(&format!("{base}[grpo]\nnum_generation = 8\n"));
    assert!(
        err.contains("num_generation") && err.contains("run.toml"),
        "{err}"
    );
    let err = write(&format!("mode = \"fused\"\n{base}"));
    assert!(err.contains("[[team]]"), "{err}");
    let err = write(&format!(
        "mode = \"single\"\n{base}[grpo]\nnum_generations = 1\n"
    ));
    assert!(err.contains("num_generations"), "{err}");
    let err = write(&format!("mode = \"solo\"\n{base}"));
    assert!(err.contains("solo"), "{err}");
}
