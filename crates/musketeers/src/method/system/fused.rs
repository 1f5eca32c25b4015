//! `fused` (n-Musketeers): every expert reads each prompt once; the latent interface turns
//! their hidden states into the context tokens `C`, with gradient.

use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use musketeers_fusion::ExpertInput;

use super::{Context, Infer, InferenceParts, Inferred, Needs, Parts, System};
use crate::error::TrainError;

#[derive(Debug, Clone, Copy, Default)]
pub struct Fused;

impl<B: Backend> Infer<B> for Fused {
    fn name(&self) -> &'static str {
        "fused"
    }

    fn needs(&self) -> Needs {
        Needs {
            team: true,
            interface: true,
            team_generates: false,
            router: false,
        }
    }

    fn infer(
        &self,
        parts: &InferenceParts<'_, B>,
        prompts: &[String],
        _: &[Vec<u32>],
    ) -> Result<Inferred<B>, TrainError> {
        let device = parts.policy.embed_tokens.weight.device();
        let readings = parts
            .team
            .iter()
            .map(|m| m.read(prompts, &device))
            .collect::<Result<Vec<_>, TrainError>>()?;
        infer_interface(parts, &readings, None)
    }
}

impl<B: AutodiffBackend> System<B> for Fused {
    fn context(
        &self,
        parts: &Parts<'_, B>,
        prompts: &[String],
        _: &[Vec<u32>],
        _: Option<u64>,
    ) -> Result<Context<B>, TrainError> {
        let device = parts.policy.embed_tokens.weight.val().inner().device();
        let readings = parts
            .team
            .iter()
            .map(|m| m.read(prompts, &device))
            .collect::<Result<Vec<_>, TrainError>>()?;
        interface_context(parts, readings, None)
    }
}

/// The interface over the team's readings at inference.
pub(crate) fn infer_interface<B: Backend>(
    parts: &InferenceParts<'_, B>,
    readings: &[ExpertInput<B>],
    router_entropy: Option<f32>,
) -> Result<Inferred<B>, TrainError> {
    let Some(interface) = parts.interface else {
        return Err(TrainError::BadInput(
            "this system needs a latent interface and the run has none".into(),
        ));
    };
    Ok(Inferred {
        fused: Some(interface.forward(readings)?),
        router_entropy,
    })
}

/// The interface over the team's readings (taken onto the autodiff backend as constants).
pub(crate) fn interface_context<B: AutodiffBackend>(
    parts: &Parts<'_, B>,
    readings: Vec<ExpertInput<B::InnerBackend>>,
    routing: Option<(Tensor<B, 2>, Vec<usize>)>,
) -> Result<Context<B>, TrainError> {
    let Some(interface) = parts.interface else {
        return Err(TrainError::BadInput(
            "this system needs a latent interface and the run has none".into(),
        ));
    };
    let readings: Vec<ExpertInput<B>> = readings
        .into_iter()
        .map(|read| ExpertInput {
            hidden: Tensor::from_inner(read.hidden),
            mask: read.mask.map(Tensor::from_inner),
        })
        .collect();
    Ok(Context {
        fused: Some(interface.forward(&readings)?),
        readings,
        routing,
    })
}
