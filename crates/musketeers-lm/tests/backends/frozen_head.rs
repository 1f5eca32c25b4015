//! The frozen head's token log-probabilities (`FrozenHead::token_logprobs`, which keeps no
//! `[tokens, vocab]` logits for backward) against the plain graph through the full logits:
//! same values, same entropies, same gradient to the hidden states, on tied and untied heads
//! (with a bias), with f32 and compact f16 weights; and no frozen head where the head trains.

use burn::backend::Autodiff;
use burn::module::Module;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use musketeers_lm::precision::to_f32;
use musketeers_lm::{Llama, LoraConfig, Precision, weights};

use crate::common::{fixture, relative_error};

musketeers_testkit::backend_tests!(
    the_frozen_head_scores_and_differentiates_as_the_full_logits,
    a_head_that_trains_has_no_frozen_form,
);

fn values<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    to_f32(t).into_data().to_vec::<f32>().expect("f32")
}

/// Log-probabilities and entropies through the whole `[n, T, vocab]` logits, as the graph
/// computes them without the frozen form.
fn through_logits<Bk: Backend>(
    model: &Llama<Bk>,
    hidden: Tensor<Bk, 3>,
    targets: Tensor<Bk, 2, Int>,
    temperature: f64,
) -> (Tensor<Bk, 2>, Tensor<Bk, 2>) {
    let [n, t, _] = hidden.dims();
    let logp = log_softmax(to_f32(model.head(hidden)) / temperature, 2);
    let picked = logp
        .clone()
        .gather(2, targets.reshape([n, t, 1]))
        .reshape([n, t]);
    let entropy = (logp.clone().exp() * logp).sum_dim(2).neg().reshape([n, t]);
    (picked, entropy)
}

fn the_frozen_head_scores_and_differentiates_as_the_full_logits<B: Backend>(device: &B::Device) {
    type A<B> = Autodiff<B>;
    let (n, t, temperature) = (3, 5, 0.7);
    // Tied (llama-tied, gemma3-sliding) and untied with a bias (qwen2-bias), f32 and f16
    // storage: f16 products round their inputs to 11 bits, hence its looser bound.
    for name in ["llama-tied", "gemma3-sliding", "qwen2-bias", "llama-gqa"] {
        for (storage, bound) in [(Precision::F32, 1e-5f32), (Precision::F16, 2e-3)] {
            let (config, model) =
                weights::load::<A<B>>(&fixture(name), device).expect("fixture loads");
            let model = model.no_grad().with_compact_weights(storage);
            let d = config.hidden_size;
            let head = model
                .frozen_head()
                .expect("a model without gradients has a frozen head");
            let hidden_value =
                Tensor::<B, 3>::random([n, t, d], Distribution::Normal(0.0, 1.0), device);
            let ids: Vec<i64> = (0..n * t)
                .map(|i| (i * 37 % config.vocab_size) as i64)
                .collect();
            let targets = Tensor::<A<B>, 2, Int>::from_data(TensorData::new(ids, [n, t]), device);
            // A weight per token, so that the gradient is not one row's.
            let weights_value =
                Tensor::<B, 2>::random([n, t], Distribution::Normal(0.0, 1.0), device);
            let weights = Tensor::<A<B>, 2>::from_inner(weights_value);

            let hidden = Tensor::<A<B>, 3>::from_inner(hidden_value.clone()).require_grad();
            let (want_logp, want_entropy) =
                through_logits(&model, hidden.clone(), targets.clone(), temperature);
            let grads = (want_logp.clone() * weights.clone()).sum().backward();
            let want_grad = values(hidden.grad(&grads).expect("gradient"));

            let hidden = Tensor::<A<B>, 3>::from_inner(hidden_value.clone()).require_grad();
            let (logp, entropy) =
                head.token_logprobs(hidden.clone(), targets.clone(), temperature, true);
            let grads = (logp.clone() * weights).sum().backward();
            let grad = values(hidden.grad(&grads).expect("gradient"));

            let (want_logp, want_entropy) = (values(want_logp), values(want_entropy));
            let logp = values(logp);
            let what = format!("{name} stored in {storage}");
            assert!(
                relative_error(&logp, &want_logp) < bound,
                "{what}: log-probabilities {logp:?} vs {want_logp:?}"
            );
            assert!(
                relative_error(&values(entropy), &want_entropy) < bound,
                "{what}: entropies"
            );
            let err = relative_error(&grad, &want_grad);
            assert!(
                err < bound,
                "{what}: gradient to the hidden states off by {err}"
            );

            // Without gradients: the same values to the bit.
            let hidden = Tensor::<A<B>, 3>::from_inner(hidden_value);
            let (plain, _) = head.token_logprobs(hidden, targets, temperature, false);
            assert_eq!(values(plain), logp, "{what}: with and without the gradient");

            // No rows: empty results, not a panic.
            let none = Tensor::<A<B>, 3>::zeros([0, t, d], device);
            let no_targets = Tensor::<A<B>, 2, Int>::zeros([0, t], device);
            let (logp, entropy) = head.token_logprobs(none, no_targets, temperature, true);
            assert_eq!((logp.dims(), entropy.dims()), ([0, t], [0, t]), "{what}");
        }
    }
}

fn a_head_that_trains_has_no_frozen_form<B: Backend>(device: &B::Device) {
    type A<B> = Autodiff<B>;
    // Untied (qwen2-bias) and tied to the embeddings (llama-tied).
    for name in ["qwen2-bias", "llama-tied"] {
        let (_, model) = weights::load::<A<B>>(&fixture(name), device).expect("loads");
        assert!(
            model.frozen_head().is_none(),
            "{name}: a loaded model's head has gradients until frozen"
        );
        assert!(
            model.clone().no_grad().frozen_head().is_some(),
            "{name}: frozen"
        );
        let with_adapters = model
            .with_lora(&LoraConfig::default(), 7)
            .expect("adapters attach");
        assert!(
            with_adapters.frozen_head().is_some(),
            "{name}: LoRA on the projections freezes the base, head included"
        );
    }
}
