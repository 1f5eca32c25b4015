//! `hard-route`: the router picks one expert per prompt and only that expert reads it; its
//! states reach the policy through the latent interface. The router learns by REINFORCE on
//! the mean reward of a prompt's group against the batch mean (see [`crate::route`]).

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};

use super::fused::{infer_interface, interface_context};
use super::{Context, ExtraLoss, InferenceParts, Inferred, Parts, System};
use crate::error::TrainError;
use crate::host::host_f32;
use crate::route::{choose, routed_inputs, sentence_embeddings};

#[derive(Debug, Clone, Copy, Default)]
pub struct HardRoute;

impl<B: AutodiffBackend> System<B> for HardRoute {
    fn name(&self) -> &'static str {
        "hard-route"
    }

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

    /// The most likely expert per prompt (as evaluation chooses), its states through the
    /// interface.
    fn infer(
        &self,
        parts: &InferenceParts<'_, B::InnerBackend>,
        prompts: &[String],
        ids: &[Vec<u32>],
    ) -> Result<Inferred<B::InnerBackend>, TrainError> {
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
