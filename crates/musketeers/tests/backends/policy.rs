//! The policy's scores of freshly sampled completions equal the log-probabilities they were
//! sampled with (GRPO's importance ratio is 1 on the first iteration), with context tokens
//! in front and left-padded prompts of different lengths.

use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use burn_flex::Flex;
use musketeers::policy::PrefixedPolicy;
use musketeers_lm::SoftContext;
use musketeers_lm::generate::{GenerationConfig, generate_with_context};
use musketeers_lm::sampling::SamplingConfig;
use musketeers_lm::weights;
use musketeers_rl::{Rollouts, TokenScorer};

musketeers_testkit::backend_tests!(
    scores_of_sampled_completions_equal_their_sampling_logprobs,
    scores_under_a_zero_gate_equal_scores_without_context,
    a_shared_prefix_scores_and_differentiates_like_each_row_alone,
);

fn scores_of_sampled_completions_equal_their_sampling_logprobs<B: Backend>(device: &B::Device) {
    for name in ["llama-gqa", "gemma3-sliding"] {
        let dir = musketeers_testkit::tiny_model(name);
        let (config, model) = weights::load::<B>(&dir, device).expect("fixture loads");
        let prompts: Vec<Vec<u32>> = vec![vec![3, 14, 15, 92, 65, 35], vec![9, 26]];
        let g = 3;
        // No context, a plain prefix, and gated context with half-open gates (the gated
        // layout's positions must agree between sampling and scoring).
        for kind in ["none", "prefix", "gated"] {
            let with_context = kind != "none";
            let context = with_context.then(|| {
                let tokens = Tensor::<B, 3>::random(
                    [2, 4, config.hidden_size],
                    Distribution::Normal(0.0, 0.5),
                    device,
                );
                match kind {
                    "gated" => {
                        let (layers, heads, _) = model.context_shape();
                        SoftContext::gated(tokens, Tensor::full([layers, heads], 0.5, device))
                    }
                    _ => SoftContext::prefix(tokens),
                }
            });
            let temperature = 0.8;
            let generation = generate_with_context(
                &model,
                &prompts,
                context.clone(),
                &GenerationConfig {
                    max_new_tokens: 7,
                    num_return_sequences: g,
                    eos_token_ids: vec![5],
                    sampling: SamplingConfig {
                        temperature: temperature as f32,
                        top_k: None,
                        top_p: None,
                        seed: 11,
                    },
                },
                None,
                device,
            )
            .expect("generate");
            let rows: Vec<i64> = (0..2).flat_map(|p| std::iter::repeat_n(p, g)).collect();
            let n = rows.len();
            let rollouts = Rollouts {
                prompt_ids: rows.iter().map(|&p| prompts[p as usize].clone()).collect(),
                completion_ids: generation.tokens.clone(),
                num_generations: g,
                rewards: vec![0.0; n],
                old_logprobs: None,
                ref_logprobs: None,
            };
            let policy = PrefixedPolicy {
                model: &model,
                context,
                temperature,
                with_gradient: false,
            };
            let width = generation.tokens.iter().map(Vec::len).max().expect("rows");
            let (scores, _) = policy.score(&rollouts, width).expect("score");
            let scores = scores.into_data().to_vec::<f32>().expect("f32");
            for (row, sampled) in generation.logprobs.iter().enumerate() {
                for (j, want) in sampled.iter().enumerate() {
                    let got = scores[row * width + j];
                    assert!(
                        (got - want).abs() < 1e-4,
                        "{name} context={kind} row {row} token {j}: scored {got}, sampled {want}"
                    );
                }
            }
        }
    }
}

/// Gradients through the shared prefix (each prompt's keys and values computed once and
/// gathered for its group) equal those of scoring every row alone with a full forward over
/// `[C ; prompt ; completion]`: the context's gradient sums over the group either way.
fn a_shared_prefix_scores_and_differentiates_like_each_row_alone<B: Backend>(device: &B::Device) {
    use burn::backend::Autodiff;
    use burn::tensor::TensorData;
    use musketeers_rl::logprobs::token_logprobs;
    let dir = musketeers_testkit::tiny_model("gemma3-sliding");
    let (config, model) = weights::load::<Autodiff<B>>(&dir, device).expect("fixture loads");
    let prompts: Vec<Vec<u32>> = vec![vec![3, 14, 15, 92, 65, 35], vec![9, 26]];
    let completions: Vec<Vec<u32>> = vec![
        vec![7, 8, 9, 10],
        vec![11],
        vec![12, 13, 5],
        vec![4, 4, 4, 4],
        vec![6, 2],
        vec![30, 31, 32],
    ];
    let g = 3;
    let temperature = 0.7;
    let context_value = Tensor::<B, 3>::random(
        [2, 3, config.hidden_size],
        Distribution::Normal(0.0, 0.5),
        device,
    );
    let rollouts = Rollouts {
        prompt_ids: (0..6).map(|r| prompts[r / g].clone()).collect(),
        completion_ids: completions.clone(),
        num_generations: g,
        rewards: vec![0.0; 6],
        old_logprobs: None,
        ref_logprobs: None,
    };
    let width = 4;

    let context = Tensor::<Autodiff<B>, 3>::from_inner(context_value.clone()).require_grad();
    let policy = PrefixedPolicy {
        model: &model,
        context: Some(SoftContext::prefix(context.clone())),
        temperature,
        with_gradient: true,
    };
    let (scores, _) = policy.score(&rollouts, width).expect("score");
    let mut weights = vec![0.0f32; 6 * width];
    for (r, c) in completions.iter().enumerate() {
        for j in 0..c.len() {
            weights[r * width + j] = 1.0 + (r * width + j) as f32 / 10.0;
        }
    }
    let weights =
        Tensor::<Autodiff<B>, 2>::from_data(TensorData::new(weights.clone(), [6, width]), device);
    let shared_scores = scores
        .clone()
        .inner()
        .into_data()
        .to_vec::<f32>()
        .expect("f32");
    let grads = (scores * weights.clone()).sum().backward();
    let shared_grad = context.grad(&grads).expect("context gradient");

    let alone_context = Tensor::<Autodiff<B>, 3>::from_inner(context_value).require_grad();
    let mut total = Tensor::<Autodiff<B>, 1>::zeros([1], device);
    for (r, completion) in completions.iter().enumerate() {
        let prompt = &prompts[r / g];
        let tokens: Vec<i64> = prompt
            .iter()
            .chain(completion)
            .map(|&t| i64::from(t))
            .collect();
        let len = tokens.len();
        let ids = Tensor::from_data(TensorData::new(tokens, [1, len]), device);
        let c = alone_context.clone().narrow(0, r / g, 1);
        let embedded = Tensor::cat(vec![c, model.embed(ids)], 1);
        let logits = model.forward_embeddings(embedded, None, false).logits;
        let start = 3 + prompt.len() - 1;
        let k = completion.len();
        let vocab = logits.dims()[2];
        let logits = logits.slice([0..1, start..start + k, 0..vocab]);
        let targets: Vec<i64> = completion.iter().map(|&t| i64::from(t)).collect();
        let targets = Tensor::from_data(TensorData::new(targets, [1, k]), device);
        let (logps, _) = token_logprobs(logits, targets, temperature);
        let row_weights = weights.clone().slice([r..r + 1, 0..k]);
        let values = logps
            .clone()
            .inner()
            .into_data()
            .to_vec::<f32>()
            .expect("f32");
        for (j, want) in values.iter().enumerate() {
            let got = shared_scores[r * width + j];
            assert!(
                (got - want).abs() < 1e-4,
                "row {r} token {j}: {got} vs {want}"
            );
        }
        total = total + (logps * row_weights).sum();
    }
    let grads = total.backward();
    let alone_grad = alone_context.grad(&grads).expect("context gradient");
    let shared = shared_grad.into_data().to_vec::<f32>().expect("f32");
    let alone = alone_grad.into_data().to_vec::<f32>().expect("f32");
    let scale = alone.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(scale > 1e-3, "the context gets a gradient");
    for (i, (a, b)) in shared.iter().zip(&alone).enumerate() {
        assert!(
            (a - b).abs() < 1e-4 * scale.max(1.0),
            "grad {i}: shared {a}, alone {b}"
        );
    }
}

#[test]
fn groups_whose_rows_have_different_prompts_are_refused() {
    let device = Default::default();
    let dir = musketeers_testkit::tiny_model("llama-gqa");
    let (_, model) = weights::load::<Flex>(&dir, &device).expect("fixture loads");
    let rollouts = Rollouts {
        prompt_ids: vec![vec![1, 2], vec![1, 3]],
        completion_ids: vec![vec![4], vec![5]],
        num_generations: 2,
        rewards: vec![0.0; 2],
        old_logprobs: None,
        ref_logprobs: None,
    };
    let policy = PrefixedPolicy {
        model: &model,
        context: None,
        temperature: 1.0,
        with_gradient: true,
    };
    let err = policy.score(&rollouts, 1).expect_err("mixed group");
    assert!(err.to_string().contains("group 0"), "{err}");
}

/// Why the interface's context starts at the policy's mean token embedding: an all-zero `C`
/// is a fixed point of a bias-free RMSNorm decoder, and the gradient reaching it through many
/// layers overflows (SmolLM2's 30 layers: NaN on the first step). The mean embedding, a
/// typical-scale input, gives finite gradients through the same model.
#[test]
fn a_zero_context_overflows_the_gradient_of_a_deep_policy_and_the_mean_embedding_does_not() {
    use burn::backend::Autodiff;
    use musketeers_lm::LlamaConfig;
    type A = Autodiff<Flex>;
    let device = Default::default();
    <Flex as Backend>::seed(&device, 3);
    let model = LlamaConfig::llama(64, 32, 64, 24, 4, 2, 10_000.0).init::<A>(&device);
    let rollouts = Rollouts {
        prompt_ids: vec![vec![3, 4, 5], vec![3, 4, 5]],
        completion_ids: vec![vec![6, 7], vec![8]],
        num_generations: 2,
        rewards: vec![0.0; 2],
        old_logprobs: None,
        ref_logprobs: None,
    };
    let context_gradient = |start: Tensor<A, 1>| {
        let context = start
            .reshape([1, 1, 32])
            .repeat_dim(1, 2)
            .detach()
            .require_grad();
        let policy = PrefixedPolicy {
            model: &model,
            context: Some(SoftContext::prefix(context.clone())),
            temperature: 1.0,
            with_gradient: true,
        };
        let (scores, _) = policy.score(&rollouts, 2).expect("score");
        let grads = scores.sum().backward();
        context
            .grad(&grads)
            .expect("context gradient")
            .into_data()
            .to_vec::<f32>()
            .expect("f32")
    };
    let zero = context_gradient(Tensor::zeros([32], &device));
    let largest = |g: &[f32]| g.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(
        zero.iter().any(|g| !g.is_finite()) || largest(&zero) > 1e30,
        "a zero context's gradient stayed moderate: {zero:?}"
    );
    let mean = model.mean_token_embedding();
    let rms = mean.clone().square().mean().sqrt().into_scalar();
    assert!(
        rms > 1e-2,
        "the mean embedding is of typical scale: rms {rms}"
    );
    let from_mean = context_gradient(mean);
    assert!(
        from_mean.iter().all(|g| g.is_finite()) && largest(&from_mean) < 1e6,
        "the mean embedding's gradient: {from_mean:?}"
    );
}

/// GRPO's scores (the loss and the KL reference read these) under zero-gated context equal
/// the policy's scores without context, on every architecture, with left padding.
fn scores_under_a_zero_gate_equal_scores_without_context<B: Backend>(device: &B::Device) {
    for name in [
        "llama-gqa",
        "llama-tied",
        "qwen2-bias",
        "qwen3-qk-norm",
        "gemma3-sliding",
    ] {
        let dir = musketeers_testkit::tiny_model(name);
        let (config, model) = weights::load::<B>(&dir, device).expect("fixture loads");
        let prompts: Vec<Vec<u32>> = vec![vec![3, 14, 15, 92, 65, 35], vec![9, 26]];
        let completions: Vec<Vec<u32>> =
            vec![vec![7, 8, 9, 10], vec![11], vec![12, 13, 5], vec![4]];
        let rollouts = Rollouts {
            prompt_ids: (0..4).map(|r| prompts[r / 2].clone()).collect(),
            completion_ids: completions,
            num_generations: 2,
            rewards: vec![0.0; 4],
            old_logprobs: None,
            ref_logprobs: None,
        };
        let (layers, heads, _) = model.context_shape();
        let gated = SoftContext::gated(
            Tensor::<B, 3>::random(
                [2, 3, config.hidden_size],
                Distribution::Normal(0.0, 1.0),
                device,
            ),
            Tensor::zeros([layers, heads], device),
        );
        let score = |context: Option<SoftContext<B>>| {
            let policy = PrefixedPolicy {
                model: &model,
                context,
                temperature: 1.0,
                with_gradient: true,
            };
            let (scores, _) = policy.score(&rollouts, 4).expect("score");
            scores.into_data().to_vec::<f32>().expect("f32")
        };
        let (with, without) = (score(Some(gated)), score(None));
        let worst = with
            .iter()
            .zip(&without)
            .map(|(a, b)| (a - b).abs() / b.abs().max(1.0))
            .fold(0.0f32, f32::max);
        // Bit for bit at equal shapes (musketeers-lm's gated_context test); here C's slots
        // widen the attention matmuls and the kernels sum in another order (Flex: within 1e-6).
        assert!(worst <= 1e-5, "{name}: scores differ by {worst:e}");
    }
}
