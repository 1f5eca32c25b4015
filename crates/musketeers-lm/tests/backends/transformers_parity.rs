//! Logits and every hidden state against Hugging Face `transformers` (f32, eager, CPU) on tiny
//! random-weight models of each architecture. Fixtures: `scripts/fixtures/make-tiny-models.sh`.

// The measured errors belong in the test output (the generic bodies are not `#[test]`
// functions, which clippy exempts).
#![allow(clippy::print_stderr)]

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use burn_flex::Flex;
use musketeers_lm::weights;

use crate::common;
use common::{expected, fixture, input_ids, relative_error};
use musketeers_testkit::TINY_MODELS;

musketeers_testkit::backend_tests!(
    logits_and_hidden_states_match_transformers,
    left_padded_batch_matches_unpadded_rows,
    embeddings_input_equals_ids_and_soft_prefix_is_attended,
);

fn logits_and_hidden_states_match_transformers<B: Backend>(device: &B::Device) {
    for name in TINY_MODELS {
        let dir = fixture(name);
        let (config, model) =
            weights::load::<B>(&dir, device).unwrap_or_else(|e| panic!("{name}: {e}"));
        let ids = input_ids(&dir);
        let t = ids.len();
        let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, t]), device);
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

fn left_padded_batch_matches_unpadded_rows<B: Backend>(device: &B::Device) {
    let dir = fixture("qwen3-qk-norm");
    let (_, model) = weights::load::<B>(&dir, device).expect("load");
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
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(batch, [2, t]), device);
    let mask = Tensor::<B, 2, Int>::from_data(TensorData::new(mask, [2, t]), device);
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
                Tensor::from_data(TensorData::new(row, [1, n]), device),
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
    let err = weights::load::<Flex>(&truncated, &device)
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
    let err = weights::load::<Flex>(&wrong, &device)
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
    let err = weights::load::<Flex>(&unsupported, &device)
        .expect_err("model type")
        .to_string();
    assert!(
        err.contains("mamba") && err.contains("config.json"),
        "{err}"
    );

    let missing = tmp.join("missing");
    std::fs::create_dir_all(&missing).expect("dir");
    let err = weights::load::<Flex>(&missing, &device)
        .expect_err("no files")
        .to_string();
    assert!(err.contains("config.json"), "{err}");
    std::fs::remove_dir_all(&tmp).ok();
}

fn embeddings_input_equals_ids_and_soft_prefix_is_attended<B: Backend>(device: &B::Device) {
    let (config, model) = weights::load::<B>(&fixture("llama-gqa"), device).expect("load");
    let ids = Tensor::<B, 2, Int>::from_data(
        TensorData::new(vec![4i64, 8, 15, 16, 23, 42], [1, 6]),
        device,
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
        device,
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

#[test]
fn hidden_state_by_index_runs_only_the_layers_it_needs() {
    let device = Default::default();
    let dir = fixture("llama-gqa");
    let (config, model) = weights::load::<Flex>(&dir, &device).expect("load");
    let ids = input_ids(&dir);
    let t = ids.len();
    let (_, want) = expected(&dir, "hidden_states");
    let per_layer = t * config.hidden_size;
    let layers = config.num_layers as isize;
    let input = || Tensor::<Flex, 2, Int>::from_data(TensorData::new(ids.clone(), [1, t]), &device);
    let full = model.forward(input(), None, true);
    for layer in -(layers + 1)..=layers {
        let index = if layer < 0 { layers + 1 + layer } else { layer } as usize;
        let want = &want[index * per_layer..(index + 1) * per_layer];
        let got = model
            .hidden_state(model.embed(input()), None, layer)
            .expect("valid layer")
            .into_data()
            .to_vec::<f32>()
            .expect("f32");
        assert!(relative_error(&got, want) < 1e-4, "layer {layer}");
        let from_output = full.hidden_state(layer).expect("valid layer");
        let from_output = from_output.into_data().to_vec::<f32>().expect("f32");
        assert!(
            relative_error(&from_output, want) < 1e-4,
            "output layer {layer}"
        );
    }
    for bad in [layers + 1, -(layers + 2)] {
        let err = model
            .hidden_state(model.embed(input()), None, bad)
            .expect_err("out of range")
            .to_string();
        assert!(err.contains(&bad.to_string()), "{err}");
    }
}

#[test]
fn pooling_ignores_padding_on_either_side() {
    use musketeers_lm::pooling::{Pooling, pool};
    let device = Default::default();
    let (config, model) = weights::load::<Flex>(&fixture("qwen3-qk-norm"), &device).expect("load");
    let short: Vec<i64> = vec![5, 17, 42, 8];
    let ids = Tensor::<Flex, 2, Int>::from_data(TensorData::new(short.clone(), [1, 4]), &device);
    let alone = model
        .hidden_state(model.embed(ids), None, -1)
        .expect("state");
    let d = config.hidden_size;
    let rows = alone.clone().into_data().to_vec::<f32>().expect("f32"); // [4, d]
    let first = rows[..d].to_vec();
    let last = rows[3 * d..].to_vec();
    let mean: Vec<f32> = (0..d)
        .map(|j| (0..4).map(|i| rows[i * d + j]).sum::<f32>() / 4.0)
        .collect();

    // Row 0 left-padded by 2 (as generation pads); row 1 all padding.
    let padded: Vec<i64> = [0, 0].into_iter().chain(short).chain([0; 6]).collect();
    let mask: Vec<i64> = vec![0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0];
    let ids = Tensor::<Flex, 2, Int>::from_data(TensorData::new(padded, [2, 6]), &device);
    let mask = Tensor::<Flex, 2, Int>::from_data(TensorData::new(mask, [2, 6]), &device);
    let states = model
        .hidden_state(model.embed(ids), Some(mask.clone()), -1)
        .expect("state");
    for (how, want) in [
        (Pooling::First, &first),
        (Pooling::Last, &last),
        (Pooling::Mean, &mean),
    ] {
        let got = pool(states.clone(), mask.clone(), how)
            .into_data()
            .to_vec::<f32>()
            .expect("f32");
        assert!(relative_error(&got[..d], want) < 1e-5, "{how:?}");
        assert!(got[d..].iter().all(|v| *v == 0.0), "{how:?}: empty row");
    }

    // Right padding: pooling reads the mask, not the layout.
    let right = Tensor::<Flex, 3>::cat(
        vec![
            alone.clone().reshape([1, 4, d]),
            Tensor::ones([1, 3, d], &device) * 100.0,
        ],
        1,
    );
    let mask = Tensor::<Flex, 2, Int>::from_data(
        TensorData::new(vec![1i64, 1, 1, 1, 0, 0, 0], [1, 7]),
        &device,
    );
    for (how, want) in [
        (Pooling::First, &first),
        (Pooling::Last, &last),
        (Pooling::Mean, &mean),
    ] {
        let got = pool(right.clone(), mask.clone(), how)
            .into_data()
            .to_vec::<f32>()
            .expect("f32");
        assert!(relative_error(&got, want) < 1e-6, "right-padded {how:?}");
    }
}

#[test]
fn saved_directories_load_back_to_the_same_logits() {
    use musketeers_lm::{Pretrained, export::save_pretrained};
    let device = Default::default();
    for name in TINY_MODELS {
        let dir = fixture(name);
        let loaded = Pretrained::<Flex>::load(&dir, &device).expect("load");
        let out = tempfile::tempdir().expect("temp dir");
        save_pretrained(&loaded, out.path()).expect("save");
        let again = Pretrained::<Flex>::load(out.path(), &device).expect("reload");
        assert_eq!(again.config, loaded.config, "{name}");
        let ids = input_ids(&dir);
        let t = ids.len();
        let logits = |m: &musketeers_lm::Llama<Flex>| {
            let input =
                Tensor::<Flex, 2, Int>::from_data(TensorData::new(ids.clone(), [1, t]), &device);
            m.forward(input, None, false)
                .logits
                .into_data()
                .to_vec::<f32>()
                .expect("f32")
        };
        let (_, want) = expected(&dir, "logits");
        let err = relative_error(&logits(&again.model), &want);
        assert!(err < 1e-4, "{name}: reloaded logits relative error {err}");
    }
}
