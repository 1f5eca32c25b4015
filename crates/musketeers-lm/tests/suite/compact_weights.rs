//! Compact frozen weights (weight matrices stored in f16 or bf16, computed against in f32) on
//! every tiny architecture: what loading holds is what was estimated before loading, and the
//! model stays the model.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};
use burn_flex::Flex;
use musketeers_lm::pretrained::{load_config, load_model_with_weights};
use musketeers_lm::{Llama, Precision};
use musketeers_testkit::{TINY_MODELS, tiny_model};

type B = Flex;

/// Bytes every float parameter of a module holds, each in its own dtype.
struct HeldBytes(u64);

impl<Bk: Backend> ModuleVisitor<Bk> for HeldBytes {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<Bk, D>>) {
        let tensor = param.val();
        self.0 += (tensor.shape().num_elements() * tensor.dtype().size()) as u64;
    }
}

fn held_bytes(model: &Llama<B>) -> u64 {
    let mut held = HeldBytes(0);
    model.visit(&mut held);
    held.0
}

fn logits(model: &Llama<B>, ids: &[i64]) -> Vec<f32> {
    let ids = Tensor::<B, 2, Int>::from_data(
        TensorData::new(ids.to_vec(), [1, ids.len()]),
        &Default::default(),
    );
    let out = model.forward(ids, None, false).logits;
    out.into_data().to_vec().expect("f32 logits")
}

#[test]
fn the_estimate_before_loading_is_what_loading_holds() {
    for name in TINY_MODELS {
        let path = tiny_model(name);
        let config = load_config(&path).expect("config");
        for weights in [Precision::F32, Precision::F16, Precision::Bf16] {
            let (_, model) =
                load_model_with_weights::<B>(&path, &Default::default(), weights).expect(name);
            assert_eq!(
                held_bytes(&model),
                config.parameter_bytes(weights),
                "{name} with {weights} weights"
            );
        }
    }
}

#[test]
fn compact_weights_compute_in_f32_and_stay_close_to_it() {
    let ids: Vec<i64> = vec![1, 17, 42, 5, 90, 3, 64];
    for name in TINY_MODELS {
        let path = tiny_model(name);
        let (_, full) =
            load_model_with_weights::<B>(&path, &Default::default(), Precision::F32).expect(name);
        let (_, compact) =
            load_model_with_weights::<B>(&path, &Default::default(), Precision::F16).expect(name);
        assert_eq!(compact.weight_dtype(), DType::F16, "{name}");
        assert_eq!(compact.float_dtype(), DType::F32, "{name}");
        // f32 "precision" must not expand compact weights.
        let compact = compact.with_precision(Precision::F32);
        assert_eq!(compact.weight_dtype(), DType::F16, "{name}");
        let (want, got) = (logits(&full, &ids), logits(&compact, &ids));
        let scale = want.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
        let worst = want
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst <= 1e-2 * scale.max(1.0),
            "{name}: largest logit change {worst} (largest logit {scale})"
        );
        // A reduced compute precision still casts everything.
        let bf16 = compact.with_precision(Precision::Bf16);
        assert_eq!(bf16.float_dtype(), DType::BF16, "{name}");
        assert_eq!(bf16.weight_dtype(), DType::BF16, "{name}");
    }
}

#[test]
fn an_expert_loaded_for_hidden_states_holds_no_untied_head_and_gives_the_same_states() {
    let ids = Tensor::<B, 2, Int>::from_data(
        TensorData::new(vec![1i64, 17, 42, 5, 90, 3, 64], [1, 7]),
        &Default::default(),
    );
    let mut untied = 0;
    for name in TINY_MODELS {
        let path = tiny_model(name);
        let config = load_config(&path).expect("config");
        let weights = Precision::F16;
        let whole =
            musketeers_lm::Pretrained::<B>::load_with_weights(&path, &Default::default(), weights)
                .expect(name);
        let expert = musketeers_lm::Pretrained::<B>::load_for_hidden_states(
            &path,
            &Default::default(),
            weights,
        )
        .expect(name);
        let head = config.untied_head_bytes(weights);
        untied += usize::from(head > 0);
        assert_eq!(
            held_bytes(&expert.model),
            config.parameter_bytes(weights) - head,
            "{name}"
        );
        assert_eq!(expert.model.headless, head > 0, "{name}");
        for layer in [-1, 1] {
            let states = |model: &Llama<B>| -> Vec<f32> {
                model
                    .hidden_state(model.embed(ids.clone()), None, layer)
                    .expect("state")
                    .into_data()
                    .convert::<f32>()
                    .to_vec()
                    .expect("f32")
            };
            assert_eq!(
                states(&whole.model),
                states(&expert.model),
                "{name} {layer}"
            );
        }
        if head > 0 {
            // Logits would need the head it does not have: no silent tied fallback.
            assert!(expert.model.frozen_head().is_none(), "{name}");
            let asked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                expert.model.forward(ids.clone(), None, false)
            }));
            assert!(asked.is_err(), "{name}: logits from a headless model");
            let dir = tempfile::tempdir().expect("temp");
            let err = musketeers_lm::export::save_pretrained(&expert, dir.path())
                .expect_err("nothing to write as the head");
            assert!(err.to_string().contains("output layer"), "{err}");
        }
    }
    assert!(untied >= 2, "the tiny models include untied heads");
}
