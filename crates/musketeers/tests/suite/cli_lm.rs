//! `musketeers lm forward` against the transformers outputs of musketeers-lm's fixtures.

use crate::common::tiny_model;
use safetensors::SafeTensors;
use std::process::Command;

fn tensor(bytes: &[u8], name: &str) -> (Vec<usize>, Vec<f32>) {
    let tensors = SafeTensors::deserialize(bytes).expect("safetensors");
    let view = tensors.tensor(name).expect("tensor present");
    (
        view.shape().to_vec(),
        view.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

#[test]
fn forward_dump_matches_transformers() {
    let dir = tiny_model("qwen2-bias");
    let ids: Vec<u32> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("input_ids.json")).expect("ids"))
            .expect("json");
    let ids = ids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let dump = std::env::temp_dir().join(format!(
        "musketeers-dump-{}.safetensors",
        std::process::id()
    ));
    let out = Command::new(env!("CARGO_BIN_EXE_musketeers"))
        .args(["lm", "forward", "--model"])
        .arg(&dir)
        .args(["--token-ids", &ids, "--dump"])
        .arg(&dump)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = std::fs::read(&dump).expect("dump written");
    let want = std::fs::read(dir.join("expected.safetensors")).expect("expected");
    for name in ["logits", "hidden_states"] {
        let ((gs, g), (ws, w)) = (tensor(&got, name), tensor(&want, name));
        assert_eq!(gs, ws, "{name} shape");
        let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = g
            .iter()
            .zip(&w)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
            / scale;
        assert!(err < 1e-4, "{name}: relative error {err}");
    }
    std::fs::remove_file(&dump).ok();
}

#[test]
fn forward_rejects_out_of_vocabulary_ids_and_missing_models() {
    let out = Command::new(env!("CARGO_BIN_EXE_musketeers"))
        .args(["lm", "forward", "--model"])
        .arg(tiny_model("llama-gqa"))
        .args(["--token-ids", "1,2,999", "--dump", "/dev/null"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("999"));
    let out = Command::new(env!("CARGO_BIN_EXE_musketeers"))
        .args([
            "lm",
            "forward",
            "--model",
            "/no/such/model",
            "--token-ids",
            "1",
            "--dump",
            "/dev/null",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/no/such/model") && err.contains("smollm2-135m"),
        "{err}"
    );
}
