//! Logits and every hidden state against Hugging Face `transformers` (f32, eager, CPU) on tiny
//! random-weight models of each architecture. Fixtures: `scripts/fixtures/make-tiny-models.sh`.

use burn::tensor::{Int, Tensor, TensorData};
use burn_flex::Flex;
use musketeers_lm::weights;

mod common;
use common::{expected, fixture, input_ids, relative_error};

type B = Flex;

const MODELS: [&str; 5] = [
    "llama-gqa",
    "llama-tied",
    "llama3-rope-scaling",
    "qwen2-bias",
    "qwen3-qk-norm",
];

#[test]
fn logits_and_hidden_states_match_transformers() {
    let device = Default::default();
    for name in MODELS {
        let dir = fixture(name);
        let (config, model) =
            weights::load::<B>(&dir, &device).unwrap_or_else(|e| panic!("{name}: {e}"));
        let ids = input_ids(&dir);
        let t = ids.len();
        let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, t]), &device);
        let out = model.forward(input, None, true);
        let (shape, want) = expected(&dir, "logits");
        assert_eq!(shape, vec![t, config.vocab_size]);
        let got = out.logits.into_data().to_vec::<f32>().expect("f32");
        let err = relative_error(&got, &want);
        eprintln!("{name}: logits relative error {err:.2e}");
        assert!(err < 1e-4, "{name}: logits relative error {err}");
        let (shape, want) = expected(&dir, "hidden_states");
        assert_eq!(shape, vec![config.num_layers + 1, t, config.hidden_size]);
        assert_eq!(out.hidden_states.len(), config.num_layers + 1);
        let per_layer = t * config.hidden_size;
        for (i, state) in out.hidden_states.into_iter().enumerate() {
            let got = state.into_data().to_vec::<f32>().expect("f32");
            let err = relative_error(&got, &want[i * per_layer..(i + 1) * per_layer]);
            assert!(err < 1e-4, "{name}: hidden state {i} relative error {err}");
        }
    }
}

#[test]
fn left_padded_batch_matches_unpadded_rows() {
    let device = Default::default();
    let dir = fixture("qwen3-qk-norm");
    let (_, model) = weights::load::<B>(&dir, &device).expect("load");
    let long: Vec<i64> = (0..9).map(|i| (i * 7 + 3) % 96).collect();
    let short: Vec<i64> = vec![5, 17, 42, 8];
    let pad = long.len() - short.len();
    let mut batch = long.clone();
    batch.extend(std::iter::repeat_n(0, pad).chain(short.iter().copied()));
    let mask: Vec<i64> = std::iter::repeat_n(1, long.len())
        .chain(std::iter::repeat_n(0, pad))
        .chain(std::iter::repeat_n(1, short.len()))
        .collect();
    let t = long.len();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(batch, [2, t]), &device);
    let mask = Tensor::<B, 2, Int>::from_data(TensorData::new(mask, [2, t]), &device);
    let padded = model
        .forward(ids, Some(mask), false)
        .logits
        .into_data()
        .to_vec::<f32>()
        .expect("f32");
    let single = |row: Vec<i64>| {
        let n = row.len();
        model
            .forward(
                Tensor::from_data(TensorData::new(row, [1, n]), &device),
                None,
                false,
            )
            .logits
            .into_data()
            .to_vec::<f32>()
            .expect("f32")
    };
    let vocab = padded.len() / (2 * t);
    assert!(relative_error(&padded[..t * vocab], &single(long)) < 1e-5);
    assert!(relative_error(&padded[(t + pad) * vocab..], &single(short)) < 1e-5);
}

#[test]
fn bad_checkpoints_are_named_errors() {
    let device = Default::default();
    let tmp = std::env::temp_dir().join(format!("musketeers-lm-{}", std::process::id()));
    let copy = |to: &str| {
        let dir = tmp.join(to);
        std::fs::create_dir_all(&dir).expect("dir");
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(fixture("llama-gqa").join(f), dir.join(f)).expect("copy");
        }
        dir
    };
    let truncated = copy("truncated");
    let bytes = std::fs::read(truncated.join("model.safetensors")).expect("read");
    std::fs::write(
        truncated.join("model.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .expect("write");
    let err = weights::load::<B>(&truncated, &device)
        .expect_err("truncated")
        .to_string();
    assert!(
        err.contains("model.safetensors") && err.contains("not a valid safetensors"),
        "{err}"
    );

    let wrong = copy("wrong-shape");
    let config = std::fs::read_to_string(wrong.join("config.json"))
        .expect("read")
        .replace("\"intermediate_size\": 112", "\"intermediate_size\": 100");
    std::fs::write(wrong.join("config.json"), config).expect("write");
    let err = weights::load::<B>(&wrong, &device)
        .expect_err("shape")
        .to_string();
    assert!(
        err.contains("mlp.gate_proj.weight") && err.contains("[112, 64]"),
        "{err}"
    );

    let unsupported = copy("unsupported");
    let config = std::fs::read_to_string(unsupported.join("config.json"))
        .expect("read")
        .replace("\"llama\"", "\"mamba\"");
    std::fs::write(unsupported.join("config.json"), config).expect("write");
    let err = weights::load::<B>(&unsupported, &device)
        .expect_err("model type")
        .to_string();
    assert!(
        err.contains("mamba") && err.contains("config.json"),
        "{err}"
    );

    let missing = tmp.join("missing");
    std::fs::create_dir_all(&missing).expect("dir");
    let err = weights::load::<B>(&missing, &device)
        .expect_err("no files")
        .to_string();
    assert!(err.contains("config.json"), "{err}");
    std::fs::remove_dir_all(&tmp).ok();
}

#[test]
fn embeddings_input_equals_ids_and_soft_prefix_is_attended() {
    let device = Default::default();
    let (config, model) = weights::load::<B>(&fixture("llama-gqa"), &device).expect("load");
    let ids = Tensor::<B, 2, Int>::from_data(
        TensorData::new(vec![4i64, 8, 15, 16, 23, 42], [1, 6]),
        &device,
    );
    let by_ids = model
        .forward(ids.clone(), None, false)
        .logits
        .into_data()
        .to_vec::<f32>()
        .expect("f32");
    let by_embeddings = model
        .forward_embeddings(model.embed(ids.clone()), None, false)
        .logits
        .into_data()
        .to_vec::<f32>()
        .expect("f32");
    assert_eq!(by_ids, by_embeddings);
    // Two soft context tokens in front of the prompt: the prompt's logits must change.
    let prefix = Tensor::<B, 3>::random(
        [1, 2, config.hidden_size],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let with_prefix = model
        .forward_embeddings(Tensor::cat(vec![prefix, model.embed(ids)], 1), None, false)
        .logits;
    let tail = with_prefix
        .slice([0..1, 2..8, 0..config.vocab_size])
        .into_data()
        .to_vec::<f32>()
        .expect("f32");
    assert!(
        relative_error(&tail, &by_ids) > 1e-3,
        "the soft prefix had no effect"
    );
}
