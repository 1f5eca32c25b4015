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
    assert_eq!(team.team.len(), 3);
    assert_eq!(team.team[2].model, "runs/demo/models/arithmetic");
    assert_eq!(team.eval.problems, 64);
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
    let gsm8k = RunConfig::from_file(&configs().join("qwen-gsm8k.toml")).expect("gsm8k config");
    assert_eq!(
        gsm8k.tasks[0].file_format().expect("format"),
        Some(musketeers_verify::task::FileFormat::Gsm8k),
        "a task named gsm8k reads GSM8K's layout"
    );
    assert_eq!(gsm8k.eval.tasks.len(), 1);
    assert_eq!(gsm8k.grpo.micro_batch_prompts, Some(1));
}

#[test]
fn every_mode_parses_and_needs_a_team_except_single() {
    let base = "[policy]\nmodel = \"x\"\n[[tasks]]\nname = \"chain_sum\"\n";
    let member = "[[team]]\nname = \"a\"\nmodel = \"y\"\n";
    for (name, mode) in [
        ("fused", Mode::Fused),
        ("hard-route", Mode::HardRoute),
        ("text-collab", Mode::TextCollab),
    ] {
        let config: RunConfig =
            toml::from_str(&format!("mode = \"{name}\"\n{base}{member}")).expect("parses");
        assert_eq!(config.mode, mode);
        config.validate().expect("valid with a team");
        let alone: RunConfig =
            toml::from_str(&format!("mode = \"{name}\"\n{base}")).expect("parses");
        let err = alone.validate().expect_err("no team").to_string();
        assert!(err.contains("[[team]]"), "{err}");
    }
    let err = toml::from_str::<RunConfig>(&format!("mode = \"soft-route\"\n{base}"))
        .expect_err("unknown mode")
        .to_string();
    assert!(err.contains("soft-route"), "{err}");
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

#[test]
fn lenient_extraction_scores_untagged_answers() {
    use musketeers::run_config::AnswerExtraction;
    use musketeers::tasks::score;
    use musketeers_verify::task::{Mix, Task};
    let task = musketeers_verify::generators::create(
        "chain_sum",
        musketeers_verify::options::Options::new("chain_sum"),
    )
    .expect("task");
    let mix = Mix::new("tasks", vec![(task, 1.0)]).expect("mix");
    let entry = mix.entry(0, 0).expect("entry");
    let answer = entry.answer.clone().expect("answer");
    let untagged = format!("The sum is {answer}");
    let tagged = format!("<answer>{answer}</answer>");
    assert_eq!(score(&mix, AnswerExtraction::Tag, &untagged, &entry), 0.0);
    assert_eq!(
        score(&mix, AnswerExtraction::TagOrLastNumber, &untagged, &entry),
        1.0
    );
    assert_eq!(score(&mix, AnswerExtraction::Tag, &tagged, &entry), 1.0);
    // A tag wins over later numbers.
    let both = format!("<answer>{answer}</answer> (or maybe 12345)");
    assert_eq!(
        score(&mix, AnswerExtraction::TagOrLastNumber, &both, &entry),
        1.0
    );
}

#[test]
fn overrides_set_keys_and_name_what_is_wrong() {
    use musketeers::run_config::ContextNorm;
    use musketeers_rl::LrSchedulerType;
    let base: RunConfig = toml::from_str(
        "[policy]\nmodel = \"x\"\n[[team]]\nname = \"a\"\nmodel = \"y\"\n[[tasks]]\nname = \"chain_sum\"\n",
    )
    .expect("parses");
    assert_eq!(
        base.grpo.lr_scheduler_type,
        LrSchedulerType::Linear,
        "TRL's default"
    );
    assert_eq!(base.interface.learning_rate, None);
    let set = |items: &[&str]| {
        base.with_overrides(&items.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    };
    let changed = set(&[
        "grpo.learning_rate=2e-3",
        "grpo.lr_scheduler_type=cosine",
        "interface.learning_rate=5e-4",
        "interface.context_norm=embedding-rms",
        "policy.lora.rank=32",
        "eval.problems=7",
        "dtype=bf16",
    ])
    .expect("valid overrides");
    assert_eq!(
        base.dtype,
        musketeers_lm::Precision::F32,
        "f32 unless asked"
    );
    assert_eq!(changed.dtype, musketeers_lm::Precision::Bf16);
    // The f32 default is not written out: configs and grid cells keep their identity.
    assert!(
        !toml::to_string(&base)
            .expect("serializes")
            .contains("dtype")
    );
    assert_eq!(changed.grpo.learning_rate, 2e-3);
    assert_eq!(changed.grpo.lr_scheduler_type, LrSchedulerType::Cosine);
    assert_eq!(changed.interface.learning_rate, Some(5e-4));
    assert_eq!(changed.interface.context_norm, ContextNorm::EmbeddingRms);
    assert_eq!(changed.policy.lora.rank, 32);
    assert_eq!(changed.eval.problems, 7);
    assert_eq!(set(&[]).expect("nothing to set"), base);

    for (item, named) in [
        ("grpo.learning_rat=1", "learning_rat"),
        ("grpo.num_generations=many", "num_generations"),
        ("grpo.lr_scheduler_type=sometimes", "sometimes"),
        ("interface.learning_rate=-1", "interface.learning_rate"),
        ("grpo.num_generations=1", "num_generations"),
        ("no-equals-sign", "KEY=VALUE"),
        ("policy.model.deeper=1", "model"),
        ("dtype=fp8", "fp8"),
        (
            "grpo.micro_batch_completions=3",
            "divisor of grpo.num_generations = 8",
        ),
        ("grpo.micro_batch_completions=0", "micro_batch_completions"),
    ] {
        let err = set(&[item]).expect_err(item).to_string();
        assert!(err.contains(named), "{item}: {err}");
    }
    for valid in [
        "grpo.micro_batch_completions=4",
        "grpo.micro_batch_completions=16",
    ] {
        set(&[valid]).expect(valid);
    }
    // Both set is valid (completions win), so a scale can override a config that sets
    // prompts.
    set(&[
        "grpo.micro_batch_prompts=1",
        "grpo.micro_batch_completions=4",
    ])
    .expect("both set");
}

#[test]
fn file_tasks_name_what_they_lack() {
    let config = |task: &str| {
        toml::from_str::<RunConfig>(&format!(
            "mode = \"single\"\n[policy]\nmodel = \"x\"\n[[tasks]]\n{task}\n"
        ))
        .expect("parses")
        .validate()
    };
    let err = config("name = \"mine\"\nfile = \"q.jsonl\"").expect_err("no format");
    assert!(err.to_string().contains("needs a `format`"), "{err}");
    let err = config("name = \"mine\"\nformat = \"qa-exact\"").expect_err("no file");
    assert!(err.to_string().contains("needs a `file`"), "{err}");
    let err = config("name = \"gsm8k\"\nfile = \"t.jsonl\"\noptions = { min_terms = 2 }")
        .expect_err("options on a file");
    assert!(err.to_string().contains("options"), "{err}");
    assert!(config("name = \"gsm8k\"\nfile = \"t.jsonl\"").is_ok());
}
