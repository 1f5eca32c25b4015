//! Data parallelism over MPI, end to end through the CLI: two ranks on localhost train the
//! run one process trains, to 1e-5; only rank 0 writes; a killed rank or a mismatched config
//! ends the job with a clear error. Needs `--features mpi` and Open MPI's `mpirun`.
#![cfg(feature = "mpi")]
#![allow(clippy::print_stderr)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A tokenizer for the policy whose 96 words each end in a digit, 0 or 1 (id i is letters
/// then `i % 2`), so that a random policy's last number is right half the time: rewards vary
/// within groups and GRPO has a gradient from the first step.
fn binary_words_tokenizer() -> String {
    let word = |i: usize| {
        let mut letters = String::new();
        let mut n = i;
        loop {
            letters.insert(0, char::from(b'a' + (n % 26) as u8));
            n /= 26;
            if n == 0 {
                break;
            }
        }
        format!("{letters}{}", i % 2)
    };
    let vocab: serde_json::Map<String, serde_json::Value> =
        (0..96).map(|i| (word(i), i.into())).collect();
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": word(0)}
    })
    .to_string()
}

fn config(temp: &Path, steps: u64, adam_epsilon: f64) -> PathBuf {
    let problems = temp.join("problems.jsonl");
    let lines: Vec<String> = (0..16)
        .map(|i| format!(r#"{{"question": "b1 c0 d1 e0 f{}", "answer": "1"}}"#, i % 2))
        .collect();
    std::fs::write(&problems, lines.join("\n")).expect("problems");
    let path = common::write_tiny_run(
        temp,
        &format!("run-{steps}-{adam_epsilon}.toml"),
        &format!(
            r#"
            answer_extraction = "tag-or-last-number"
            [policy]
            prompt_template = "{{question}}"
            [[team]]
            name = "qwen3"
            model = "fixture:qwen3-qk-norm"
            readout = "all"
            [interface]
            learning_rate = 0.01
            [grpo]
            steps = {steps}
            prompts_per_step = 4
            num_generations = 4
            learning_rate = 0.01
            adam_epsilon = {adam_epsilon}
            seed = 5
            [[tasks]]
            name = "last-digit"
            file = "{}"
            format = "qa-numeric"
            "#,
            problems.display()
        ),
    );
    // The policy reads the binary words of the problems, not the fixtures' "w{i}".
    std::fs::write(
        temp.join("llama-gqa/tokenizer.json"),
        binary_words_tokenizer(),
    )
    .expect("tokenizer");
    path
}

fn musketeers() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_musketeers"));
    command.env("RAYON_NUM_THREADS", "1");
    command
}

fn mpirun(ranks: &[(&Path, &Path)]) -> Command {
    let mut command = Command::new("mpirun");
    command.args([
        "--allow-run-as-root",
        "--oversubscribe",
        "-x",
        "RAYON_NUM_THREADS=1",
    ]);
    for (i, (config, out)) in ranks.iter().enumerate() {
        if i > 0 {
            command.arg(":");
        }
        command
            .args(["-np", "1"])
            .arg(env!("CARGO_BIN_EXE_musketeers"));
        command.args(["train", "--progress", "plain", "--config"]);
        command.arg(config).arg("--out").arg(out);
    }
    command
}

fn checked(output: Output, what: &str) -> Output {
    assert!(
        output.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Every tensor of a checkpoint's adapters and interface, by name.
fn trained(run: &Path) -> Vec<(String, Vec<f32>)> {
    let mut all = Vec::new();
    for file in ["adapter/adapter_model.safetensors", "interface.safetensors"] {
        let bytes = std::fs::read(run.join("checkpoint").join(file)).expect("checkpoint");
        let tensors = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
        let mut names: Vec<String> = tensors.names().into_iter().map(str::to_string).collect();
        names.sort();
        for name in names {
            let view = tensors.tensor(&name).expect("tensor");
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            all.push((format!("{file}:{name}"), values));
        }
    }
    all
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).expect("log").lines().count()
}

#[test]
fn two_ranks_train_what_one_process_trains() {
    let temp = tempfile::tempdir().expect("temp");
    // Burn's Adam epsilon (1e-5): the two runs differ by rounding alone (measured: 2e-7
    // for adapters of up to 0.02 after 3 steps).
    let config = config(temp.path(), 3, 1e-5);
    let (alone, shared) = (temp.path().join("alone"), temp.path().join("shared"));
    checked(
        musketeers()
            .args(["train", "--progress", "plain", "--config"])
            .arg(&config)
            .arg("--out")
            .arg(&alone)
            .output()
            .expect("musketeers"),
        "one process",
    );
    checked(
        mpirun(&[(&config, &shared), (&config, &shared)])
            .output()
            .expect("mpirun"),
        "two ranks",
    );
    let (a, b) = (trained(&alone), trained(&shared));
    assert_eq!(a.len(), b.len());
    let (mut moved, mut worst) = (0.0f32, 0.0f32);
    for ((name, x), (other, y)) in a.iter().zip(&b) {
        assert_eq!(name, other);
        assert_eq!(x.len(), y.len(), "{name}");
        for (u, v) in x.iter().zip(y) {
            assert!((u - v).abs() <= 1e-5, "{name}: {u} alone, {v} on two ranks");
            worst = worst.max((u - v).abs());
            if name.contains("lora_B") {
                moved = moved.max(u.abs());
            }
        }
    }
    eprintln!("two ranks vs one process: largest difference {worst:e} (largest value {moved})");
    assert!(moved > 1e-3, "the adapters trained ({moved})");
    // Rank 0 alone writes: one metrics line per step and one sample per rank-0 prompt (a
    // second writer would append its own).
    assert_eq!(lines(&shared.join("metrics.jsonl")), 3);
    assert_eq!(lines(&shared.join("samples.jsonl")), 3 * 2);
    assert_eq!(lines(&alone.join("samples.jsonl")), 3 * 4);
    // The step's figures are the whole batch's: the same as one process's.
    let metric = |run: &Path, key: &str| -> Vec<f64> {
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .expect("metrics")
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("json");
                v["rollouts"][key].as_f64().expect("number")
            })
            .collect()
    };
    assert_eq!(
        metric(&alone, "reward_mean"),
        metric(&shared, "reward_mean")
    );
}

#[test]
fn a_killed_rank_ends_the_run_with_an_error_naming_it() {
    let temp = tempfile::tempdir().expect("temp");
    let config = config(temp.path(), 100_000, 1e-5);
    let out = temp.path().join("run");
    let mut job = mpirun(&[(&config, &out), (&config, &out)])
        .env("MUSKETEERS_COLLECTIVE_TIMEOUT", "60")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun");
    // Wait for training to be under way, then kill rank 1.
    let started = Instant::now();
    while !out.join("metrics.jsonl").exists() || lines(&out.join("metrics.jsonl")) < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no step in 120 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let rank_one = rank_pid(1, &out).expect("rank 1 runs");
    Command::new("kill")
        .args(["-KILL", &rank_one.to_string()])
        .status()
        .expect("kill");
    let killed = Instant::now();
    let status = loop {
        if let Some(status) = job.try_wait().expect("wait") {
            break status;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(90),
            "the job still runs 90 s after rank 1 died"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = job.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!(
        "rank 1 killed; the job ended {:.1} s later:\n{stderr}",
        killed.elapsed().as_secs_f64()
    );
    assert!(!status.success(), "the job failed");
    assert!(
        format!("{stdout}{stderr}").contains("rank 1"),
        "the error names rank 1:\n{stdout}\n{stderr}"
    );
}

#[test]
fn ranks_with_different_configs_refuse_to_start() {
    let temp = tempfile::tempdir().expect("temp");
    let (a, b) = (config(temp.path(), 2, 1e-5), config(temp.path(), 2, 1e-3));
    let out = temp.path().join("run");
    let output = mpirun(&[(&a, &out), (&b, &out)])
        .env("MUSKETEERS_COLLECTIVE_TIMEOUT", "60")
        .output()
        .expect("mpirun");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success());
    assert!(
        text.contains("process 1 has another config than process 0"),
        "{text}"
    );
    assert!(!out.join("metrics.jsonl").exists(), "no step ran");
}

/// The PID of our binary running as MPI rank `rank` (Open MPI sets OMPI_COMM_WORLD_RANK)
/// of the job writing to `out`.
fn rank_pid(rank: usize, out: &Path) -> Option<u32> {
    let out = out.to_string_lossy().into_owned();
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_musketeers"));
    let wanted = format!("OMPI_COMM_WORLD_RANK={rank}");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let exe = std::fs::read_link(entry.path().join("exe")).ok();
        if exe.as_deref() != Some(binary.as_path()) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).contains(&out) {
            continue;
        }
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        if environ
            .split(|&b| b == 0)
            .any(|var| var == wanted.as_bytes())
        {
            return Some(pid);
        }
    }
    None
}
