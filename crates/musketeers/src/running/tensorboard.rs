//! TensorBoard event files beside `metrics.jsonl`: every number of every step's metrics line
//! as a scalar (`loss/kl`, `rollouts/reward_mean`, `reward_functions/<name>`,
//! `utilization/<expert>`, `diagnostics/grad_norm_adapters`, ...), so that
//! `tensorboard --logdir runs/` shows runs side by side and tools that read event files
//! (W&B's sync) pick them up.
//!
//! Written by hand: an event file is a sequence of TFRecords (length, masked CRC-32C of the
//! length, data, masked CRC-32C of the data) holding three small protobuf messages
//! (`Event`, `Summary`, `Summary.Value`); a protobuf code generator and a TensorBoard crate
//! would each bring more than these sixty lines. `metrics.jsonl` stays the source of truth:
//! a resumed run writes its event file again from it, so the two always hold the same steps.

use crate::error::TrainError;
use crate::running::rundir::io;
use std::io::Write;
use std::path::{Path, PathBuf};

/// CRC-32C (Castagnoli), bitwise; records are a few hundred bytes a step.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// TFRecord's masked CRC.
fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
}

fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A length-delimited protobuf field.
fn bytes_field(field: u64, data: &[u8], out: &mut Vec<u8>) {
    varint((field << 3) | 2, out);
    varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

/// `Event { wall_time = 1 (double), step = 2 (int64), file_version = 3 | summary = 5 }`.
fn event(wall_time: f64, step: u64, body: (u64, &[u8])) -> Vec<u8> {
    let mut out = Vec::new();
    varint((1 << 3) | 1, &mut out);
    out.extend_from_slice(&wall_time.to_le_bytes());
    varint(2 << 3, &mut out);
    varint(step, &mut out);
    bytes_field(body.0, body.1, &mut out);
    out
}

/// `Summary { value = 1: Value { tag = 1 (string), simple_value = 2 (float) } }`.
fn summary(scalars: &[(String, f32)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (tag, value) in scalars {
        let mut v = Vec::new();
        bytes_field(1, tag.as_bytes(), &mut v);
        varint((2 << 3) | 5, &mut v);
        v.extend_from_slice(&value.to_le_bytes());
        bytes_field(1, &v, &mut out);
    }
    out
}

fn record(data: &[u8], out: &mut Vec<u8>) {
    let length = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&length);
    out.extend_from_slice(&masked_crc(&length).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
}

/// Every number in a metrics line, as `(tag, value)`; `experts` name the entries of
/// `utilization`. Skipped: the step itself, and values that are not finite.
pub fn scalars(line: &serde_json::Value, experts: &[String]) -> Vec<(String, f32)> {
    fn walk(
        prefix: &str,
        value: &serde_json::Value,
        experts: &[String],
        out: &mut Vec<(String, f32)>,
    ) {
        match value {
            serde_json::Value::Number(n) => {
                if let Some(v) = n.as_f64().filter(|v| v.is_finite()) {
                    out.push((prefix.to_string(), v as f32));
                }
            }
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    if prefix.is_empty() && key == "step" {
                        continue;
                    }
                    let tag = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}/{key}")
                    };
                    walk(&tag, v, experts, out);
                }
            }
            serde_json::Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    let name = match (prefix, experts.get(i)) {
                        ("utilization", Some(expert)) => expert.clone(),
                        _ => i.to_string(),
                    };
                    walk(&format!("{prefix}/{name}"), v, experts, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", line, experts, &mut out);
    out
}

/// The run's event file.
#[derive(Debug)]
pub struct EventWriter {
    file: std::fs::File,
    path: PathBuf,
    experts: Vec<String>,
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl EventWriter {
    /// A fresh event file in `dir` (earlier ones removed), holding the steps already in
    /// `metrics` (a resumed run's) first.
    pub fn create(dir: &Path, experts: Vec<String>, metrics: &Path) -> Result<Self, TrainError> {
        for entry in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with("events.out.tfevents.")
            {
                std::fs::remove_file(entry.path()).map_err(io(&entry.path()))?;
            }
        }
        let path = dir.join(format!(
            "events.out.tfevents.{}.musketeers",
            now().floor() as u64
        ));
        let file = std::fs::File::create(&path).map_err(io(&path))?;
        let mut writer = Self {
            file,
            path,
            experts,
        };
        let mut head = Vec::new();
        record(&event(now(), 0, (3, b"brain.Event:2")), &mut head);
        writer.file.write_all(&head).map_err(io(&writer.path))?;
        if let Ok(text) = std::fs::read_to_string(metrics) {
            for line in text.lines() {
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(line) {
                    writer.write(&value)?;
                }
            }
        }
        Ok(writer)
    }

    /// One step's metrics line.
    pub fn write(&mut self, line: &serde_json::Value) -> Result<(), TrainError> {
        let Some(step) = line["step"].as_u64() else {
            return Ok(());
        };
        let mut out = Vec::new();
        record(
            &event(now(), step, (5, &summary(&scalars(line, &self.experts)))),
            &mut out,
        );
        self.file.write_all(&out).map_err(io(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // The CRC-32C of "123456789" (RFC 3720's check value).
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn nested_metrics_become_tags_and_experts_name_utilization() {
        let line = serde_json::json!({"step": 3, "loss": {"kl": 0.5, "entropy": null},
            "utilization": [0.25, 0.75], "diagnostics": {"latent_attention_entropy": [1.0]}});
        let tags = scalars(&line, &["math".into(), "logic".into()]);
        assert_eq!(
            tags,
            vec![
                ("diagnostics/latent_attention_entropy/0".into(), 1.0),
                ("loss/kl".into(), 0.5),
                ("utilization/math".into(), 0.25),
                ("utilization/logic".into(), 0.75),
            ]
        );
    }
}
