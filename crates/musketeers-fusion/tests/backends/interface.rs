//! The latent interface's contract: zero-initialised output, utilization that sums to one,
//! padding that changes nothing, expert order that does not matter, and gradients that agree
//! with finite differences.

use burn::backend::Autodiff;
use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use burn_flex::Flex;
use musketeers_fusion::InitRng;
use musketeers_fusion::stats::{expert_utilization, routing_entropy};
use musketeers_fusion::{ExpertInput, LatentInterface, LatentInterfaceConfig};

musketeers_testkit::backend_tests!(
    utilization_sums_to_one_and_entropy_is_bounded,
    masked_padding_changes_nothing,
    permuting_the_experts_permutes_utilization_and_keeps_the_context,
);

fn config() -> LatentInterfaceConfig {
    LatentInterfaceConfig {
        latent_dim: 16,
        num_latents: 3,
        num_heads: 4,
        self_attention_blocks: 1,
        ffn_multiplier: 2,
        ..LatentInterfaceConfig::new(vec![6, 10, 4], 12)
    }
}

fn random<Bk: Backend, const D: usize>(shape: [usize; D], device: &Bk::Device) -> Tensor<Bk, D> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
}

/// The interface with a random (non-zero) output projection, so C depends on everything.
fn live<Bk: Backend>(config: &LatentInterfaceConfig, device: &Bk::Device) -> LatentInterface<Bk> {
    let mut interface = config
        .init::<Bk>(&mut InitRng::new(0), device)
        .expect("valid config");
    interface.output.weight =
        Param::from_tensor(random([config.latent_dim, config.policy_dim], device));
    interface
}

fn inputs<Bk: Backend>(
    batch: usize,
    tokens: [usize; 3],
    dims: [usize; 3],
    device: &Bk::Device,
) -> Vec<ExpertInput<Bk>> {
    tokens
        .iter()
        .zip(dims)
        .map(|(&t, d)| ExpertInput {
            hidden: random([batch, t, d], device),
            mask: None,
        })
        .collect()
}

fn values<Bk: Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().expect("f32")
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn zero_initialised_output_gives_exactly_zero_context() {
    let interface = config()
        .init::<Flex>(&mut InitRng::new(0), &Default::default())
        .expect("init");
    let out = interface
        .forward(&inputs(2, [1, 5, 3], [6, 10, 4], &Default::default()))
        .expect("forward");
    assert_eq!(out.context.dims(), [2, 3, 12]);
    assert!(values(out.context).iter().all(|v| *v == 0.0));
}

#[test]
fn a_context_start_sets_every_context_token_and_checks_its_width() {
    let device = Default::default();
    let start: Vec<f32> = (0..12).map(|i| i as f32 / 10.0 - 0.5).collect();
    let interface = config()
        .init::<Flex>(&mut InitRng::new(0), &device)
        .expect("init")
        .with_context_start(Tensor::from_data(
            TensorData::new(start.clone(), [12]),
            &device,
        ))
        .expect("start");
    let out = interface
        .forward(&inputs(2, [1, 5, 3], [6, 10, 4], &Default::default()))
        .expect("forward");
    let context = values(out.context);
    for token in context.chunks(12) {
        assert_eq!(token, start.as_slice());
    }
    let err = config()
        .init::<Flex>(&mut InitRng::new(0), &device)
        .expect("init")
        .with_context_start(Tensor::zeros([7], &device))
        .expect_err("wrong width");
    assert!(err.to_string().contains("7 values"), "{err}");
}

fn utilization_sums_to_one_and_entropy_is_bounded<B: Backend>(device: &B::Device) {
    let interface = live::<B>(&config(), device);
    let out = interface
        .forward(&inputs(4, [1, 5, 3], [6, 10, 4], device))
        .expect("forward");
    let util = expert_utilization(&out.attention, &out.expert_spans);
    assert_eq!(util.dims(), [4, 3]);
    let rows = values(util.clone());
    for row in rows.chunks(3) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{row:?}");
        assert!(row.iter().all(|p| (0.0..=1.0).contains(p)));
    }
    let (entropy, normalised) = routing_entropy(&util);
    for (h, n) in values(entropy).into_iter().zip(values(normalised)) {
        assert!((0.0..=3f32.ln() + 1e-5).contains(&h), "{h}");
        assert!((n - h / 3f32.ln()).abs() < 1e-6);
    }
    // One expert holding all the mass has entropy 0; a uniform team has normalised entropy 1.
    let onehot = Tensor::<B, 2>::from_data(
        TensorData::new(
            vec![1f32, 0.0, 0.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0],
            [2, 3],
        ),
        device,
    );
    let (h, n) = routing_entropy(&onehot);
    let (h, n) = (values(h), values(n));
    assert_eq!(h[0], 0.0);
    assert!((n[1] - 1.0).abs() < 1e-6);
}

fn masked_padding_changes_nothing<B: Backend>(device: &B::Device) {
    let interface = live::<B>(&config(), device);
    let plain = inputs::<B>(2, [1, 3, 2], [6, 10, 4], device);
    let reference = interface.forward(&plain).expect("forward");
    // Expert 1 gets two padding tokens of garbage after its three real ones (right padding)
    // and expert 2 one before its two (left padding).
    let mut padded = plain.clone();
    padded[1] = ExpertInput {
        hidden: Tensor::cat(
            vec![
                plain[1].hidden.clone(),
                random::<B, 3>([2, 2, 10], device) * 50.0,
            ],
            1,
        ),
        mask: Some(Tensor::<B, 2, Int>::from_data(
            TensorData::new(vec![1i64, 1, 1, 0, 0, 1, 1, 1, 0, 0], [2, 5]),
            device,
        )),
    };
    padded[2] = ExpertInput {
        hidden: Tensor::cat(
            vec![
                random::<B, 3>([2, 1, 4], device) * 50.0,
                plain[2].hidden.clone(),
            ],
            1,
        ),
        mask: Some(Tensor::<B, 2, Int>::from_data(
            TensorData::new(vec![0i64, 1, 1, 0, 1, 1], [2, 3]),
            device,
        )),
    };
    let out = interface.forward(&padded).expect("forward");
    assert!(max_diff(&values(out.context), &values(reference.context)) < 1e-5);
    let u = values(expert_utilization(&out.attention, &out.expert_spans));
    let r = values(expert_utilization(
        &reference.attention,
        &reference.expert_spans,
    ));
    assert!(max_diff(&u, &r) < 1e-6);
}

fn permuting_the_experts_permutes_utilization_and_keeps_the_context<B: Backend>(
    device: &B::Device,
) {
    let config = config();
    let interface = live::<B>(&config, device);
    let plain = inputs::<B>(2, [1, 4, 2], [6, 10, 4], device);
    let reference = interface.forward(&plain).expect("forward");
    let order = [2, 0, 1];
    let mut permuted = interface.clone();
    permuted.projections = order
        .iter()
        .map(|&i| interface.projections[i].clone())
        .collect();
    let inputs: Vec<_> = order.iter().map(|&i| plain[i].clone()).collect();
    let out = permuted.forward(&inputs).expect("forward");
    assert!(max_diff(&values(out.context), &values(reference.context)) < 1e-5);
    let u = values(expert_utilization(&out.attention, &out.expert_spans));
    let r = values(expert_utilization(
        &reference.attention,
        &reference.expert_spans,
    ));
    for row in 0..2 {
        for (slot, &expert) in order.iter().enumerate() {
            assert!((u[row * 3 + slot] - r[row * 3 + expert]).abs() < 1e-6);
        }
    }
}

#[test]
fn gradients_agree_with_finite_differences() {
    type Ad = Autodiff<Flex>;
    // Deterministic values; the check itself passes for any (15 of 15 unseeded runs).
    <Ad as Backend>::seed(&Default::default(), 7);
    let config = config();
    let interface = live::<Ad>(&config, &Default::default());
    let experts = inputs::<Ad>(2, [1, 3, 2], [6, 10, 4], &Default::default());
    let target = random::<Ad, 3>([2, 3, 12], &Default::default());
    let loss_of = |m: &LatentInterface<Ad>| {
        let out = m.forward(&experts).expect("forward");
        (out.context * target.clone()).sum()
    };
    let grads = loss_of(&interface).backward();
    // Checked parameters: the latent queries, expert 1's projection, a cross-attention key
    // projection, the output projection.
    let params: Vec<(&str, Param<Tensor<Ad, 2>>)> = vec![
        ("latents", interface.latents.clone()),
        (
            "projection[1]",
            interface.projections[1].linear.weight.clone(),
        ),
        ("cross.key", interface.cross.attention.key.weight.clone()),
        ("output", interface.output.weight.clone()),
    ];
    for (name, param) in params {
        let analytic = values(param.val().grad(&grads).expect("has a gradient"));
        let base = values(param.val().inner());
        let shape = param.dims();
        // A few entries per parameter, central differences in f32.
        for &index in &[0, base.len() / 2, base.len() - 1] {
            let eps = 3e-3f32;
            let loss_at = |delta: f32| {
                let mut moved = base.clone();
                moved[index] += delta;
                let mut m = interface.clone();
                let tensor =
                    Tensor::<Ad, 2>::from_data(TensorData::new(moved, shape), &Default::default());
                match name {
                    "latents" => m.latents = Param::from_tensor(tensor),
                    "projection[1]" => m.projections[1].linear.weight = Param::from_tensor(tensor),
                    "cross.key" => m.cross.attention.key.weight = Param::from_tensor(tensor),
                    _ => m.output.weight = Param::from_tensor(tensor),
                }
                f64::from(values(loss_of(&m))[0])
            };
            let numeric = (loss_at(eps) - loss_at(-eps)) / (2.0 * f64::from(eps));
            let a = f64::from(analytic[index]);
            // 2% relative, plus the f32 forward's own noise (~1e-6 of the loss) divided by
            // the step: below that no finite difference in f32 can resolve a gradient.
            let noise = 4e-6 * loss_at(0.0).abs() / f64::from(eps);
            let tolerance = 2e-2 * a.abs().max(numeric.abs()) + noise;
            assert!(
                (a - numeric).abs() <= tolerance,
                "{name}[{index}]: analytic {a}, numeric {numeric}"
            );
        }
    }
}

#[test]
fn bad_inputs_and_configs_are_errors() {
    let interface = config()
        .init::<Flex>(&mut InitRng::new(0), &Default::default())
        .expect("init");
    let two = inputs::<Flex>(1, [1, 1, 1], [6, 10, 4], &Default::default())[..2].to_vec();
    assert!(
        interface
            .forward(&two)
            .expect_err("count")
            .to_string()
            .contains("2 experts")
    );
    let wrong = inputs::<Flex>(1, [1, 1, 1], [6, 11, 4], &Default::default());
    let err = interface.forward(&wrong).expect_err("width").to_string();
    assert!(err.contains("expert 1") && err.contains("11"), "{err}");
    let bad = LatentInterfaceConfig {
        num_heads: 5,
        ..config()
    };
    assert!(
        bad.init::<Flex>(&mut InitRng::new(0), &Default::default())
            .is_err()
    );
    assert!(LatentInterfaceConfig::new(vec![], 8).validate().is_err());
}

#[test]
fn context_norm_gives_every_token_the_target_rms_and_trains_its_gain() {
    let start = random::<Autodiff<Flex>, 1>([12], &Default::default());
    let interface = live::<Autodiff<Flex>>(&config(), &Default::default())
        .with_context_start(start)
        .expect("start")
        .with_context_norm(0.7)
        .expect("norm");
    let out = interface
        .forward(&inputs(3, [1, 5, 3], [6, 10, 4], &Default::default()))
        .expect("forward");
    let context = out.context;
    let rms = values(context.clone().inner().powi_scalar(2).mean_dim(2).sqrt());
    assert_eq!(rms.len(), 3 * 3, "one RMS per context token");
    assert!(rms.iter().all(|r| (r - 0.7).abs() < 1e-4), "{rms:?}");
    // The gain is a parameter: the loss reaches it.
    let grads = context.sum().backward();
    let gain = interface.context_gain.as_ref().expect("gain");
    assert!(gain.grad(&grads).is_some(), "the gain has a gradient");
    for bad in [0.0, -1.0, f32::NAN] {
        assert!(
            config()
                .init::<Flex>(&mut InitRng::new(0), &Default::default())
                .expect("init")
                .with_context_norm(bad)
                .is_err()
        );
    }
}

#[test]
fn a_random_output_starts_c_prompt_dependent_at_the_spread_asked() {
    let device = Default::default();
    let rms = 0.3;
    // Asked in the config (drawn at initialisation) or of a built interface: the same spread.
    let drawn_at_init = LatentInterfaceConfig {
        output_rms: Some(rms),
        ..config()
    }
    .init::<Flex>(&mut InitRng::new(0), &device)
    .expect("init");
    let drawn_after = config()
        .init::<Flex>(&mut InitRng::new(0), &device)
        .expect("init")
        .with_random_output(rms, &mut InitRng::new(1))
        .expect("random output");
    for interface in [drawn_at_init, drawn_after] {
        random_output_has_spread(&interface, rms);
    }
    for bad in [0.0, -1.0, f32::NAN] {
        assert!(
            config()
                .init::<Flex>(&mut InitRng::new(0), &device)
                .expect("init")
                .with_random_output(bad, &mut InitRng::new(1))
                .is_err()
        );
        let config = LatentInterfaceConfig {
            output_rms: Some(bad),
            ..config()
        };
        let err = config
            .init::<Flex>(&mut InitRng::new(0), &device)
            .expect_err("bad output_rms");
        assert!(err.to_string().contains("output_rms"), "{err}");
    }
}

fn random_output_has_spread(interface: &LatentInterface<Flex>, rms: f32) {
    let device = Default::default();
    let context = interface
        .forward(&inputs(64, [1, 5, 3], [6, 10, 4], &device))
        .expect("forward")
        .context;
    // The bias starts at zero here: C is the projection of the layer-normalised latents, unit
    // RMS per channel, by weights of std rms / sqrt(width).
    let size = values(context.clone().powi_scalar(2).mean().sqrt())[0];
    assert!(
        size > 0.5 * rms && size < 1.5 * rms,
        "C: RMS {size} for {rms}"
    );
    // Part of it depends on the prompt (none does with the zero projection); the latents'
    // shared part is the rest.
    let spread = values(
        (context.clone() - context.mean_dim(0))
            .powi_scalar(2)
            .mean()
            .sqrt(),
    )[0];
    assert!(
        spread > 0.1 * rms,
        "prompt-dependent part of C: RMS {spread}"
    );
}
