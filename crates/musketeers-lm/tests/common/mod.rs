//! Helpers shared by the integration tests: fixture paths, expected tensors, error metric.
#![allow(dead_code)]

use safetensors::SafeTensors;
use std::path::Path;

pub use musketeers_testkit::fixture;

/// The f32 tensor `name` of `dir/expected.safetensors`: shape and row-major values.
pub fn expected(dir: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(dir.join("expected.safetensors")).expect("expected outputs");
    let tensors = SafeTensors::deserialize(&bytes).expect("safetensors");
    let view = tensors.tensor(name).expect("tensor");
    let values = view
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (view.shape().to_vec(), values)
}

/// max |a - b| / max(max |b|, 1e-6): relative to the tensor's scale.
pub fn relative_error(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "compared tensors differ in size");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    got.iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

/// The token ids a fixture's expected outputs were computed for.
pub fn input_ids(dir: &Path) -> Vec<i64> {
    let text = std::fs::read_to_string(dir.join("input_ids.json")).expect("input_ids.json");
    serde_json::from_str(&text).expect("ids")
}
