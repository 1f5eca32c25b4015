//! `hard-route`: a router picks one expert per prompt from a cheap sentence representation
//! (the mean of the policy's token embeddings: no layer runs), and only that expert reads the
//! prompt; its states reach the policy through the latent interface. The router learns by
//! REINFORCE on the mean reward of the prompt's group against the batch mean.

use burn::module::{AutodiffModule, Module};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use musketeers_fusion::ExpertInput;
use musketeers_lm::Llama;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::fused::{infer_interface, interface_context};
use super::{Context, ExtraLoss, Infer, InferenceParts, Inferred, Needs, Parts, System};
use crate::error::TrainError;
use crate::host::host_f32;
use crate::method::team::TeamMember;

#[derive(Debug, Clone, Copy, Default)]
pub struct HardRoute;

impl<B: Backend> Infer<B> for HardRoute {
    fn name(&self) -> &'static str {
        "hard-route"
    }

    fn needs(&self) -> Needs {
        Needs {
            team: true,
            interface: true,
            team_generates: false,
            router: true,
        }
    }

    /// The most likely expert per prompt (as evaluation chooses), its states through the
    /// interface.
    fn infer(
        &self,
        parts: &InferenceParts<'_, B>,
        prompts: &[String],
        ids: &[Vec<u32>],
    ) -> Result<Inferred<B>, TrainError> {
        let Some(router) = parts.router else {
            return Err(TrainError::BadInput(
                "hard-route needs a router and the run has none".into(),
            ));
        };
        let device = parts.policy.embed_tokens.weight.device();
        let log_probs = router.log_probs(sentence_embeddings(parts.policy, ids, &device));
        let entropy = (log_probs.clone().exp() * log_probs.clone())
            .sum_dim(1)
            .neg()
            .mean()
            .into_scalar()
            .elem::<f32>();
        let choice = choose(&host_f32(log_probs), parts.team.len(), None);
        let readings = routed_inputs(parts.team, prompts, &choice, &device)?;
        infer_interface(parts, &readings, Some(entropy))
    }
}

impl<B: AutodiffBackend> System<B> for HardRoute {
    /// The router samples each prompt's expert while training.
    fn deterministic_context(&self) -> bool {
        false
    }

    fn context(
        &self,
        parts: &Parts<'_, B>,
        prompts: &[String],
        ids: &[Vec<u32>],
        sample_seed: Option<u64>,
    ) -> Result<Context<B>, TrainError> {
        let Some(router) = parts.router else {
            return Err(TrainError::BadInput(
                "hard-route needs a router and the run has none".into(),
            ));
        };
        let device = parts.policy.embed_tokens.weight.val().inner().device();
        let sentences = sentence_embeddings(&parts.policy.valid(), ids, &device);
        let log_probs = router.log_probs(Tensor::from_inner(sentences));
        let choice = choose(
            &host_f32(log_probs.clone().inner()),
            parts.team.len(),
            sample_seed,
        );
        let readings = routed_inputs(parts.team, prompts, &choice, &device)?;
        interface_context(parts, readings, Some((log_probs, choice)))
    }

    /// REINFORCE: minus the mean over prompts of log p(chosen expert) times the prompt's
    /// mean reward less the batch mean.
    fn extra_loss(
        &self,
        context: &Context<B>,
        rewards: &[f32],
        group: usize,
    ) -> Option<ExtraLoss<B>> {
        let (log_probs, choice) = context.routing.as_ref()?;
        let device = log_probs.device();
        let p = choice.len();
        let means: Vec<f32> = rewards
            .chunks(group.max(1))
            .map(|g| g.iter().sum::<f32>() / g.len() as f32)
            .collect();
        let baseline = means.iter().sum::<f32>() / means.len().max(1) as f32;
        let advantage: Vec<f32> = means.iter().map(|m| m - baseline).collect();
        let advantage = Tensor::<B, 2>::from_data(TensorData::new(advantage, [p, 1]), &device);
        let picked: Vec<i64> = choice.iter().map(|&c| c as i64).collect();
        let picked = Tensor::<B, 2, Int>::from_data(TensorData::new(picked, [p, 1]), &device);
        let chosen = log_probs.clone().gather(1, picked);
        let probs = log_probs.clone().inner().exp();
        let entropy = (probs * log_probs.clone().inner())
            .sum_dim(1)
            .neg()
            .mean()
            .into_scalar()
            .elem::<f32>();
        Some(ExtraLoss {
            term: (chosen * advantage).mean().neg(),
            routing_entropy: Some(entropy),
        })
    }
}

#[derive(Module, Debug)]
pub struct Router<B: Backend> {
    pub scores: Linear<B>,
}

impl<B: Backend> Router<B> {
    /// Zero weights: every expert equally likely at the start.
    pub fn new(policy_dim: usize, experts: usize, device: &B::Device) -> Self {
        let scores = LinearConfig::new(policy_dim, experts)
            .with_initializer(burn::nn::Initializer::Zeros)
            .init(device);
        Self { scores }
    }

    /// Routing log-probabilities `[prompts, experts]`.
    pub fn log_probs(&self, sentences: Tensor<B, 2>) -> Tensor<B, 2> {
        log_softmax(self.scores.forward(sentences), 1)
    }
}

/// Mean token embedding of each prompt under the policy's embedding table: `[prompts, d]`.
pub fn sentence_embeddings<B: Backend>(
    policy: &Llama<B>,
    prompt_ids: &[Vec<u32>],
    device: &B::Device,
) -> Tensor<B, 2> {
    let rows: Vec<Tensor<B, 2>> = prompt_ids
        .iter()
        .map(|ids| {
            let ids: Vec<i64> = if ids.is_empty() {
                vec![0]
            } else {
                ids.iter().map(|&t| i64::from(t)).collect()
            };
            let n = ids.len();
            let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [1, n]), device);
            policy.embed(ids).mean_dim(1).squeeze_dim::<2>(1)
        })
        .collect();
    Tensor::cat(rows, 0)
}

/// One expert per row: sampled from the routing distribution (training, seeded) or its
/// argmax (evaluation).
pub fn choose(log_probs: &[f32], experts: usize, sample: Option<u64>) -> Vec<usize> {
    let mut rng = sample.map(ChaCha8Rng::seed_from_u64);
    log_probs
        .chunks(experts.max(1))
        .map(|row| match rng.as_mut() {
            Some(rng) => {
                let u: f32 = rng.random();
                let mut acc = 0.0;
                for (i, lp) in row.iter().enumerate() {
                    acc += lp.exp();
                    if u < acc {
                        return i;
                    }
                }
                row.len() - 1
            }
            None => {
                row.iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
                        if v > best.1 { (i, v) } else { best }
                    })
                    .0
            }
        })
        .collect()
}

/// Each expert reads only the prompts routed to it; every other row is masked out, so the
/// interface attends to exactly the chosen expert of each prompt.
pub fn routed_inputs<B: Backend>(
    team: &[TeamMember<B>],
    prompts: &[String],
    choice: &[usize],
    device: &B::Device,
) -> Result<Vec<ExpertInput<B>>, TrainError> {
    let n = prompts.len();
    team.iter()
        .enumerate()
        .map(|(e, member)| {
            let rows: Vec<usize> = (0..n).filter(|&r| choice[r] == e).collect();
            let width = member.model.embed_tokens.weight.dims()[1];
            if rows.is_empty() {
                return Ok(ExpertInput {
                    hidden: Tensor::zeros([n, 1, width], device),
                    mask: Some(Tensor::zeros([n, 1], device)),
                });
            }
            let subset: Vec<String> = rows.iter().map(|&r| prompts[r].clone()).collect();
            let read = member.read(&subset, device)?;
            let [_, t, d] = read.hidden.dims();
            let sub_mask = read
                .mask
                .unwrap_or_else(|| Tensor::ones([rows.len(), t], device));
            let mut hidden = Vec::with_capacity(n);
            let mut mask = Vec::with_capacity(n);
            let mut next = 0;
            for r in 0..n {
                if rows.get(next) == Some(&r) {
                    hidden.push(read.hidden.clone().slice([next..next + 1, 0..t, 0..d]));
                    mask.push(sub_mask.clone().slice([next..next + 1, 0..t]));
                    next += 1;
                } else {
                    hidden.push(Tensor::zeros([1, t, d], device));
                    mask.push(Tensor::zeros([1, t], device));
                }
            }
            Ok(ExpertInput {
                hidden: Tensor::cat(hidden, 0),
                mask: Some(Tensor::cat(mask, 0)),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_router_is_uniform_and_trainable() {
        use burn::backend::Autodiff;
        use burn::optim::GradientsParams;
        type Ad = Autodiff<burn_flex::Flex>;
        let device = Default::default();
        let _graphs = crate::method::autodiff_lock::hold();
        let router = Router::<Ad>::new(4, 3, &device);
        let x = Tensor::<Ad, 2>::from_floats([[1.0, 0.5, -1.0, 2.0]], &device);
        let lp = router.log_probs(x);
        let values = lp.clone().into_data().to_vec::<f32>().expect("f32");
        for v in values {
            assert!((v - (1.0f32 / 3.0).ln()).abs() < 1e-6);
        }
        let grads = GradientsParams::from_grads(lp.slice([0..1, 1..2]).sum().backward(), &router);
        assert_eq!(grads.len(), 2, "weight and bias get gradients");
    }

    #[test]
    fn argmax_and_seeded_sampling_pick_valid_experts() {
        let lp = [
            0.1f32.ln(),
            0.7f32.ln(),
            0.2f32.ln(),
            0.8f32.ln(),
            0.1f32.ln(),
            0.1f32.ln(),
        ];
        assert_eq!(choose(&lp, 3, None), vec![1, 0]);
        let a = choose(&lp, 3, Some(5));
        assert_eq!(a, choose(&lp, 3, Some(5)), "seeded");
        assert!(a.iter().all(|&e| e < 3));
        // Over many rows the sampled shares follow the distribution.
        let many: Vec<f32> = lp[..3].iter().copied().cycle().take(3 * 4000).collect();
        let picks = choose(&many, 3, Some(9));
        let share = picks.iter().filter(|&&e| e == 1).count() as f64 / 4000.0;
        assert!((share - 0.7).abs() < 0.03, "{share}");
    }
}
