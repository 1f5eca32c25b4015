//! `single`: the policy alone.

use burn::tensor::backend::{AutodiffBackend, Backend};

use super::{Context, Infer, InferenceParts, Inferred, Needs, Parts, System};
use crate::error::TrainError;

#[derive(Debug, Clone, Copy, Default)]
pub struct Single;

impl<B: Backend> Infer<B> for Single {
    fn name(&self) -> &'static str {
        "single"
    }

    fn needs(&self) -> Needs {
        Needs::default()
    }

    fn infer(
        &self,
        _: &InferenceParts<'_, B>,
        _: &[String],
        _: &[Vec<u32>],
    ) -> Result<Inferred<B>, TrainError> {
        Ok(Inferred::none())
    }
}

impl<B: AutodiffBackend> System<B> for Single {
    fn context(
        &self,
        _: &Parts<'_, B>,
        _: &[String],
        _: &[Vec<u32>],
        _: Option<u64>,
    ) -> Result<Context<B>, TrainError> {
        Ok(Context::none())
    }
}
