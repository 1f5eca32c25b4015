//! The GGUF reader and every block format against the `gguf` Python package
//! (`scripts/fixtures/make-gguf-blocks.sh`), and malformed files as errors, never panics.

use musketeers_lm::gguf::{GgufFile, Value};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::common;
use common::{expected, fixture};

fn blocks_path() -> std::path::PathBuf {
    fixture("gguf").join("blocks.gguf")
}

#[test]
fn metadata_of_every_value_type_reads_back() {
    let file = GgufFile::open(&blocks_path()).expect("fixture parses");
    assert_eq!(file.version, 3);
    assert_eq!(file.architecture().expect("arch"), "llama");
    let get = |k: &str| file.get(k).unwrap_or_else(|| panic!("{k}")).clone();
    assert_eq!(get("test.u8"), Value::U8(200));
    assert_eq!(get("test.i8"), Value::I8(-100));
    assert_eq!(get("test.u16"), Value::U16(60000));
    assert_eq!(get("test.i16"), Value::I16(-30000));
    assert_eq!(get("test.u32"), Value::U32(4_000_000_000));
    assert_eq!(get("test.i32"), Value::I32(-2_000_000_000));
    assert_eq!(get("test.u64"), Value::U64(1 << 60));
    assert_eq!(get("test.i64"), Value::I64(-(1 << 60)));
    assert_eq!(get("test.f32"), Value::F32(0.25));
    assert_eq!(get("test.f64"), Value::F64(-1.5e300));
    assert_eq!(get("test.bool"), Value::Bool(true));
    assert_eq!(get("test.string"), Value::String("héllo".into()));
    assert_eq!(
        get("test.strings"),
        Value::Array(
            vec!["a".into(), "".into(), "ccc".into()]
                .into_iter()
                .map(Value::String)
                .collect()
        )
    );
    let ints: Vec<i64> = get("test.ints")
        .as_array()
        .expect("array")
        .iter()
        .map(|v| match v {
            Value::I32(x) => i64::from(*x),
            Value::I64(x) => *x,
            Value::I8(x) => i64::from(*x),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(ints, vec![1, -2, 3]);
    assert!(file.require_u64("test.string").is_err());
    let err = file
        .require("no.such.key")
        .expect_err("missing")
        .to_string();
    assert!(
        err.contains("no.such.key") && err.contains("blocks.gguf"),
        "{err}"
    );
}

#[test]
fn every_block_format_dequantizes_as_gguf_py_does() {
    let file = GgufFile::open(&blocks_path()).expect("fixture parses");
    let dir = fixture("gguf");
    let names = [
        "t.f32", "t.f16", "t.bf16", "t.q4_0", "t.q4_1", "t.q5_0", "t.q8_0", "t.q4_k", "t.q5_k",
        "t.q6_k",
    ];
    assert_eq!(file.tensors.len(), names.len());
    for name in names {
        let (shape, got) = file
            .tensor_f32(name)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let (want_shape, want) = expected(&dir, name);
        assert_eq!(shape, want_shape, "{name}");
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs() / b.abs().max(1e-3))
            .fold(0f32, f32::max);
        assert!(worst <= 1e-6, "{name}: worst relative difference {worst}");
        assert!(
            want.iter().any(|v| *v != 0.0),
            "{name}: the fixture is not all zeros"
        );
    }
}

/// A file opened from disk reads its tensors on demand: the same values as the whole file
/// parsed in memory, and a file cut short (every length that parses in memory fails or
/// succeeds alike on disk) is an error naming it, not a panic.
#[test]
fn an_opened_file_reads_as_the_same_bytes_parsed_in_memory() {
    let bytes = std::fs::read(blocks_path()).expect("fixture");
    let whole = GgufFile::parse(&blocks_path(), bytes.clone()).expect("parses");
    let opened = GgufFile::open(&blocks_path()).expect("opens");
    assert_eq!(opened.metadata, whole.metadata);
    assert_eq!(opened.tensors, whole.tensors);
    for info in &whole.tensors {
        assert_eq!(
            opened.tensor_f32(&info.name).expect("reads"),
            whole.tensor_f32(&info.name).expect("reads"),
            "{}",
            info.name
        );
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let cut = dir.path().join("cut.gguf");
    for len in (0..bytes.len()).step_by(97).chain([bytes.len() - 40]) {
        std::fs::write(&cut, &bytes[..len]).expect("write");
        let in_memory = GgufFile::parse(&cut, bytes[..len].to_vec());
        match (GgufFile::open(&cut), in_memory) {
            (Ok(_), Ok(_)) => {}
            (Err(e), Err(_)) => assert!(e.to_string().contains("cut.gguf"), "{e}"),
            (opened, parsed) => panic!(
                "{len} bytes: opened {:?}, parsed {:?}",
                opened.map(|_| ()),
                parsed.map(|_| ())
            ),
        }
    }
}

#[test]
fn truncated_and_corrupted_files_are_errors_not_panics() {
    let bytes = std::fs::read(blocks_path()).expect("fixture");
    let path = blocks_path();
    // A strict prefix parses only when it cuts nothing but the final alignment padding, and
    // then every tensor still reads.
    let mut parsed = 0;
    for len in 0..bytes.len() {
        if let Ok(file) = GgufFile::parse(&path, bytes[..len].to_vec()) {
            parsed += 1;
            for info in &file.tensors {
                file.tensor_f32(&info.name)
                    .expect("a parsed file's tensors read");
            }
        }
    }
    assert!(
        parsed < 32,
        "{parsed} prefixes parsed: more than the padding"
    );
    let err = GgufFile::parse(&path, bytes[..bytes.len() - 40].to_vec())
        .expect_err("cut into the last tensor")
        .to_string();
    assert!(
        err.contains("truncated") && err.contains("blocks.gguf"),
        "{err}"
    );
    let mut not_gguf = bytes.clone();
    not_gguf[0] = b'X';
    let err = GgufFile::parse(&path, not_gguf)
        .expect_err("magic")
        .to_string();
    assert!(err.contains("magic"), "{err}");
    // Random byte corruptions: whatever parses must also dequantize without panicking.
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for _ in 0..3000 {
        let mut corrupt = bytes.clone();
        for _ in 0..rng.random_range(1..4) {
            let at = rng.random_range(0..corrupt.len());
            corrupt[at] = rng.random();
        }
        if let Ok(file) = GgufFile::parse(&path, corrupt) {
            for info in file.tensors.clone() {
                let _ = file.tensor_f32(&info.name);
            }
        }
    }
}
