//! `single`: the policy alone.

use burn::tensor::backend::AutodiffBackend;

use super::{Context, InferenceParts, Inferred, Parts, System};
use crate::error::TrainError;

#[derive(Debug, Clone, Copy, Default)]
pub struct Single;

impl<B: AutodiffBackend> System<B> for Single {
    fn name(&self) -> &'static str {
        "single"
    }

    fn context(
        &self,
        _: &Parts<'_, B>,
        _: &[String],
        _: &[Vec<u32>],
        _: Option<u64>,
    ) -> Result<Context<B>, TrainError> {
        Ok(Context::none())
    }

    fn infer(
        &self,
        _: &InferenceParts<'_, B::InnerBackend>,
        _: &[String],
        _: &[Vec<u32>],
    ) -> Result<Inferred<B::InnerBackend>, TrainError> {
        Ok(Inferred::none())
    }
}
