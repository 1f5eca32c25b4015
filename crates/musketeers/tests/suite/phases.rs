//! The GRPO step's phases one by one (`musketeers::train::phases`) and the parameter set
//! they train (`musketeers::train::params`), on the tiny random fixtures.

use crate::common::{tiny_model, word_tokenizer};
use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn_flex::Flex;
use musketeers::system::Context;
use musketeers::system::single::Single;
use musketeers::train::StepSettings;
use musketeers::train::params::{AdamSettings, Group, ParamOptimizer, Trained, TrainedRef};
use musketeers::train::phases::{self, BatchShare};
use musketeers_fusion::InitRng;
use musketeers_fusion::{LatentInterface, LatentInterfaceConfig};
use musketeers_lm::{Llama, LoraConfig, weights};
use musketeers_rl::rollout::{StepConfig, counted_tokens};
use musketeers_rl::{GrpoLossConfig, LossType, LrSchedule};
use std::path::Path;

type Ad = Autodiff<Flex>;

fn policy() -> Llama<Ad> {
    let device = Default::default();
    weights::load::<Ad>(&tiny_model("llama-gqa"), &device)
        .expect("policy")
        .1
        .with_lora(
            &LoraConfig {
                rank: 4,
                alpha: 8.0,
                ..LoraConfig::default()
            },
            1,
        )
        .expect("lora")
}

fn interface() -> LatentInterface<Ad> {
    LatentInterfaceConfig {
        latent_dim: 16,
        num_latents: 2,
        num_heads: 2,
        ..LatentInterfaceConfig::new(vec![64], 64)
    }
    .init::<Ad>(&mut InitRng::new(0), &Default::default())
    .expect("interface")
}

fn settings(loss_type: LossType) -> StepSettings {
    StepSettings {
        num_generations: 4,
        max_completion_length: 5,
        temperature: 1.0,
        learning_rate: 1e-2,
        max_grad_norm: 1.0,
        interface_learning_rate: 1e-2,
        schedule: LrSchedule::default(),
        grpo: StepConfig {
            loss: GrpoLossConfig {
                beta: 0.04,
                loss_type,
                max_completion_length: 5,
                ..GrpoLossConfig::default()
            },
            ..StepConfig::default()
        },
        seed: 9,
        micro_batch_prompts: None,
        micro_batch_completions: None,
    }
}

const PROMPTS: [&str; 4] = ["w3 w14 w15", "w9 w26", "w60 w61 w62 w63", "w7 w8 w9"];

fn prompt_ids(dir: &Path) -> Vec<Vec<u32>> {
    let prompts: Vec<String> = PROMPTS.iter().map(|p| p.to_string()).collect();
    phases::encode_prompts(&word_tokenizer(dir), &prompts).expect("encode")
}

#[test]
fn prompts_become_the_policys_token_ids() {
    let temp = tempfile::tempdir().expect("temp");
    let ids = prompt_ids(temp.path());
    assert_eq!(ids[0], vec![3, 14, 15]);
    assert_eq!(ids[1], vec![9, 26]);
    assert_eq!(ids.len(), PROMPTS.len());
}

#[test]
fn a_share_of_the_batch_samples_what_the_whole_batch_samples() {
    let temp = tempfile::tempdir().expect("temp");
    let ids = prompt_ids(temp.path());
    let sampler = policy().valid();
    let s = settings(LossType::Dapo);
    let device = Default::default();
    let whole = phases::sample_rollouts(&sampler, &ids, None, &s, 3, 0, &device).expect("whole");
    // Prompts 2 and 3 (the longest one among them, so the padding is the whole batch's).
    let part = phases::sample_rollouts(&sampler, &ids[2..], None, &s, 3, 2, &device).expect("part");
    assert_eq!(whole.tokens[2 * 4..], part.tokens[..]);
    // The stream depends on the place in the batch: from the start, other samples.
    let misplaced =
        phases::sample_rollouts(&sampler, &ids[2..], None, &s, 3, 0, &device).expect("part");
    assert_ne!(misplaced.tokens, part.tokens);
    let next_step = phases::sample_rollouts(&sampler, &ids, None, &s, 4, 0, &device).expect("next");
    assert_ne!(next_step.tokens, whole.tokens);
}

#[test]
fn rewards_score_each_completion_against_its_own_prompt() {
    let temp = tempfile::tempdir().expect("temp");
    let completions = vec![vec![5, 6], vec![7], vec![], vec![8, 9, 10]];
    let reward =
        |prompt: usize, text: &str| prompt as f32 * 10.0 + text.split_whitespace().count() as f32;
    let (texts, rewards) =
        phases::score_rewards(&word_tokenizer(temp.path()), &completions, 2, &reward)
            .expect("rewards");
    assert_eq!(texts, vec!["w5 w6", "w7", "", "w8 w9 w10"]);
    assert_eq!(rewards.total, vec![2.0, 1.0, 10.0, 13.0]);
    assert!(rewards.parts.is_empty());
}

/// Rollouts of `prompts` sampled by `policy`, with advantages and reference log-probs.
fn scored_rollouts(
    dir: &Path,
    policy: &Llama<Ad>,
    s: &StepSettings,
) -> (
    musketeers_rl::Rollouts,
    musketeers_rl::advantages::Advantages,
) {
    let ids = prompt_ids(dir);
    let device = Default::default();
    let generation =
        phases::sample_rollouts(&policy.valid(), &ids, None, s, 0, 0, &device).expect("sample");
    // Rewards with signal in every group: the completion's length and first token.
    let rewards: Vec<f32> = generation
        .tokens
        .iter()
        .map(|t| t.len() as f32 + t.first().map_or(0.0, |&f| f as f32 / 96.0))
        .collect();
    let advantages = phases::advantages(&rewards, s).expect("advantages");
    let mut rollouts = phases::group_rollouts(&ids, generation.tokens, &rewards, s.num_generations);
    rollouts.ref_logprobs = Some(
        phases::reference_logprobs(&policy.without_adapters(), None, &rollouts, s.temperature)
            .expect("reference"),
    );
    (rollouts, advantages)
}

#[test]
fn the_reference_is_the_policy_while_its_adapters_are_fresh() {
    let temp = tempfile::tempdir().expect("temp");
    let policy = policy();
    let s = settings(LossType::Dapo);
    let (rollouts, _) = scored_rollouts(temp.path(), &policy, &s);
    let with_fresh_adapters =
        phases::reference_logprobs(&policy, None, &rollouts, s.temperature).expect("policy");
    let reference = rollouts.ref_logprobs.as_ref().expect("reference");
    assert_eq!(
        &with_fresh_adapters, reference,
        "LoRA B is zero: the same bits"
    );
    for (row, completion) in reference.iter().zip(&rollouts.completion_ids) {
        assert_eq!(row.len(), completion.len());
        assert!(row.iter().all(|lp| lp.is_finite() && *lp <= 0.0));
    }
}

fn flat(trained: TrainedRef<'_, Ad>, grads: &GradientsParams) -> Vec<f32> {
    trained.flatten(grads)
}

/// The batch in two halves, each a process's share (its own loss normaliser share), sums to
/// the gradient of the batch in one, for every loss normalisation.
#[test]
fn halves_of_the_batch_sum_to_the_whole_batchs_gradient() {
    let temp = tempfile::tempdir().expect("temp");
    let device = Default::default();
    for loss_type in [
        LossType::Dapo,
        LossType::Grpo,
        LossType::Bnpo,
        LossType::DrGrpo,
    ] {
        let policy = policy();
        let s = settings(loss_type);
        let (rollouts, advantages) = scored_rollouts(temp.path(), &policy, &s);
        let trained = TrainedRef {
            policy: &policy,
            interface: None,
            router: None,
        };
        let context = Context::<Ad>::none();
        let tokens = counted_tokens(&rollouts, &advantages, &s.grpo);
        let whole = phases::loss_and_gradients(
            &Single,
            trained,
            &context,
            &rollouts,
            &advantages,
            &s,
            BatchShare {
                total_prompts: 4,
                total_tokens: tokens,
                split: false,
            },
            &device,
        )
        .expect("whole");
        let mut summed = vec![0.0f32; flat(trained, &whole.grads).len()];
        let mut loss = 0.0;
        for half in [0..8, 8..16] {
            let part = phases::loss_and_gradients(
                &Single,
                trained,
                &context,
                &rollouts.rows(half.clone()),
                &advantages.rows(half),
                &s,
                BatchShare {
                    total_prompts: 4,
                    total_tokens: tokens,
                    split: true,
                },
                &device,
            )
            .expect("half");
            loss += part.metrics.loss;
            for (sum, g) in summed.iter_mut().zip(flat(trained, &part.grads)) {
                *sum += g;
            }
        }
        // As the processes of a data-parallel run do: the presence flags summed too, then
        // read back as gradients.
        let summed = flat(trained, &trained.unflatten(&summed).expect("unflatten"));
        let expected = flat(trained, &whole.grads);
        let scale = expected.iter().fold(0.0f32, |m, g| m.max(g.abs()));
        assert!(scale > 0.0, "{loss_type:?}: a gradient");
        for (a, b) in expected.iter().zip(&summed) {
            assert!(
                (a - b).abs() <= 1e-4 * scale,
                "{loss_type:?}: {a} whole, {b} in halves"
            );
        }
        assert!(
            (loss - whole.metrics.loss).abs() <= 1e-5 * (1.0 + whole.metrics.loss.abs()),
            "{loss_type:?}: loss {loss} in halves, {} whole",
            whole.metrics.loss
        );
    }
}

/// Gradients of a fused-like set: adapters from a GRPO loss, the interface from a loss of
/// its own output (so both groups have gradients).
fn two_group_gradients(
    dir: &Path,
    policy: &Llama<Ad>,
    interface: &LatentInterface<Ad>,
) -> GradientsParams {
    let s = settings(LossType::Dapo);
    let (rollouts, advantages) = scored_rollouts(dir, policy, &s);
    let trained = TrainedRef {
        policy,
        interface: Some(interface),
        router: None,
    };
    let device = Default::default();
    let tokens = counted_tokens(&rollouts, &advantages, &s.grpo);
    let outcome = phases::loss_and_gradients(
        &Single,
        trained,
        &Context::none(),
        &rollouts,
        &advantages,
        &s,
        BatchShare {
            total_prompts: 4,
            total_tokens: tokens,
            split: false,
        },
        &device,
    )
    .expect("loss");
    let mut grads = outcome.grads;
    // A backward of our own, beside the other tests' steps: see `autodiff_lock`.
    let _graphs = musketeers::method::autodiff_lock::hold();
    let input = burn::tensor::Tensor::<Ad, 3>::ones([1, 3, 64], &device);
    let out = interface
        .forward(&[musketeers_fusion::ExpertInput {
            hidden: input,
            mask: None,
        }])
        .expect("interface");
    let mut backward = out.context.sum().backward();
    trained.accumulate(&mut grads, trained.gradients(&mut backward));
    grads
}

#[test]
fn clipping_scales_every_group_by_one_factor() {
    let temp = tempfile::tempdir().expect("temp");
    let (policy, interface) = (policy(), interface());
    let trained = TrainedRef {
        policy: &policy,
        interface: Some(&interface),
        router: None,
    };
    let mut grads = two_group_gradients(temp.path(), &policy, &interface);
    let before = trained.squared_norms(&grads);
    assert!(before[Group::Adapters as usize].is_some_and(|n| n > 0.0));
    assert!(before[Group::Interface as usize].is_some_and(|n| n > 0.0));
    assert_eq!(before[Group::Router as usize], None);
    let total: f64 = before.iter().flatten().sum::<f64>().sqrt();
    let max_norm = (total / 4.0) as f32;
    let norms = phases::clip_gradients(trained, &mut grads, max_norm, 1).expect("clip");
    assert!((norms.total - total).abs() <= 1e-9 * total);
    let after = trained.squared_norms(&grads);
    let after_total: f64 = after.iter().flatten().sum::<f64>().sqrt();
    assert!((after_total - f64::from(max_norm)).abs() <= 1e-4 * after_total);
    // One factor for both groups: their ratio is kept.
    let ratio = |n: [Option<f64>; 3]| n[0].unwrap_or(0.0) / n[1].unwrap_or(1.0);
    assert!((ratio(before) / ratio(after) - 1.0).abs() < 1e-4);
    // A norm under the limit is left alone.
    let mut small = two_group_gradients(temp.path(), &policy, &interface);
    let unchanged = flat(trained, &small);
    phases::clip_gradients(trained, &mut small, 1e9, 1).expect("clip");
    assert_eq!(flat(trained, &small), unchanged);
}

#[test]
fn a_flat_gradient_comes_back_as_the_same_gradients() {
    let temp = tempfile::tempdir().expect("temp");
    let (policy, interface) = (policy(), interface());
    let trained = TrainedRef {
        policy: &policy,
        interface: Some(&interface),
        router: None,
    };
    let grads = two_group_gradients(temp.path(), &policy, &interface);
    let buffer = trained.flatten(&grads);
    let layout = trained.layout();
    let values: usize = layout.iter().map(|s| s.iter().product::<usize>()).sum();
    assert_eq!(
        buffer.len(),
        values + layout.len(),
        "one presence flag per tensor"
    );
    let back = trained.unflatten(&buffer).expect("unflatten");
    assert_eq!(trained.flatten(&back), buffer);
    assert_eq!(back.len(), grads.len());
    // No gradient anywhere: nothing comes back (no Adam step on an absent gradient).
    let none = trained
        .unflatten(&vec![0.0; buffer.len()])
        .expect("unflatten");
    assert!(none.is_empty());
    assert!(trained.unflatten(&buffer[1..]).is_err(), "too short");
    let mut longer = buffer.clone();
    longer.push(0.0);
    assert!(trained.unflatten(&longer).is_err(), "too long");
}

#[test]
fn each_group_steps_at_its_own_learning_rate() {
    let temp = tempfile::tempdir().expect("temp");
    let (policy, interface) = (policy(), interface());
    let grads = two_group_gradients(temp.path(), &policy, &interface);
    let weights = |t: &Trained<Ad>| -> (Vec<f32>, Vec<f32>) {
        let adapter = t.policy.layers[0]
            .self_attn
            .q_proj
            .adapter
            .as_ref()
            .expect("adapter")
            .lora_b
            .val();
        let out = t.interface.as_ref().expect("interface").output.weight.val();
        (
            adapter.into_data().to_vec().expect("f32"),
            out.into_data().to_vec().expect("f32"),
        )
    };
    let start = Trained {
        policy,
        interface: Some(interface),
        router: None,
    };
    let (adapters_before, interface_before) = weights(&start);
    let mut optimizer = ParamOptimizer::<Ad>::new(AdamSettings::default());
    let mut rates = [0.0; 3];
    rates[Group::Adapters as usize] = 1e-2;
    let stepped = optimizer.step(start.clone(), grads, rates);
    let (adapters_after, interface_after) = weights(&stepped);
    assert_ne!(adapters_after, adapters_before, "the adapters moved");
    assert_eq!(
        interface_after, interface_before,
        "learning rate 0: unchanged"
    );
    // Adam's first step moves each entry with a gradient by about the learning rate.
    let biggest = adapters_after
        .iter()
        .zip(&adapters_before)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!((biggest - 1e-2).abs() < 1e-3, "{biggest}");
    // State saved by position loads into a fresh optimizer.
    let file = temp.path().join("optimizer");
    optimizer.save(&file).expect("save");
    let mut loaded = ParamOptimizer::<Ad>::new(AdamSettings::default());
    loaded.load(&file, &Default::default()).expect("load");
    assert!(
        ParamOptimizer::<Ad>::new(AdamSettings::default())
            .load(&temp.path().join("missing"), &Default::default())
            .is_err()
    );
}

#[test]
fn without_an_interface_there_is_no_utilization() {
    let (utilization, entropy, normalized) = phases::utilization(&Context::<Ad>::none(), None, 0);
    assert!(utilization.is_empty());
    assert_eq!((entropy, normalized), (None, None));
}

/// The seam: each system's context for the same prompts.
#[test]
fn each_system_gives_its_own_context_through_one_seam() {
    use musketeers::system::fused::Fused;
    use musketeers::system::hard_route::HardRoute;
    use musketeers::system::hard_route::Router;
    use musketeers::system::{Parts, System};
    use musketeers::train::{ExpertReadout, TeamMember};
    let temp = tempfile::tempdir().expect("temp");
    let device = Default::default();
    let policy = policy();
    let team: Vec<TeamMember<Flex>> = ["qwen2-bias", "gemma3-sliding"]
        .iter()
        .map(|name| TeamMember {
            name: name.to_string(),
            model: weights::load::<Flex>(&tiny_model(name), &device)
                .expect("expert")
                .1,
            tokenizer: word_tokenizer(temp.path()),
            layer: -1,
            readout: ExpertReadout::All,
            readout_suffix: String::new(),
            eos_token_ids: Vec::new(),
        })
        .collect();
    let interface = LatentInterfaceConfig {
        latent_dim: 16,
        num_latents: 2,
        num_heads: 2,
        ..LatentInterfaceConfig::new(vec![64, 64], 64)
    }
    .init::<Ad>(&mut InitRng::new(0), &device)
    .expect("interface");
    let router = Router::<Ad>::new(64, 2, &device);
    let parts = Parts {
        policy: &policy,
        interface: Some(&interface),
        router: Some(&router),
        team: &team,
    };
    let prompts: Vec<String> = PROMPTS.iter().map(|p| p.to_string()).collect();
    let ids = prompt_ids(temp.path());
    let rewards = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0];

    let single = Single
        .context(&parts, &prompts, &ids, Some(1))
        .expect("single");
    assert!(single.tokens().is_none());
    assert!(System::<Ad>::extra_loss(&Single, &single, &rewards, 2).is_none());

    let fused = Fused
        .context(&parts, &prompts, &ids, Some(1))
        .expect("fused");
    assert_eq!(fused.tokens().expect("C").tokens.dims(), [4, 2, 64]);
    assert_eq!(fused.readings.len(), 2, "every expert read");
    assert!(System::<Ad>::extra_loss(&Fused, &fused, &rewards, 2).is_none());
    // A micro-batch's rows of C are the batch's rows.
    let rows = fused
        .rows(Some(&interface), 1, 2)
        .expect("rows")
        .expect("C")
        .tokens;
    let whole = fused.tokens().expect("C").tokens.narrow(0, 1, 2);
    let gap = (rows - whole).abs().max().into_scalar();
    assert!(gap < 1e-5, "{gap}");

    let routed = HardRoute
        .context(&parts, &prompts, &ids, Some(1))
        .expect("route");
    let (log_probs, choice) = routed.routing.as_ref().expect("routing");
    assert_eq!(log_probs.dims(), [4, 2]);
    assert_eq!(choice.len(), 4);
    // Each prompt's readings: only its chosen expert's rows are unmasked.
    for (expert, reading) in routed.readings.iter().enumerate() {
        let mask = reading.mask.clone().expect("mask").inner();
        let kept: Vec<i64> = mask
            .sum_dim(1)
            .into_data()
            .convert::<i64>()
            .to_vec()
            .expect("i64");
        for (row, n) in kept.iter().enumerate() {
            assert_eq!(
                *n > 0,
                choice[row] == expert,
                "prompt {row}, expert {expert}"
            );
        }
    }
    let extra = HardRoute
        .extra_loss(&routed, &rewards[..8], 2)
        .expect("REINFORCE term");
    assert!(
        extra
            .routing_entropy
            .is_some_and(|h| (h - 2f32.ln()).abs() < 1e-5)
    );
    assert!(extra.term.into_scalar().is_finite());
}
