//! `text-collab`: the baseline where experts talk in text. Each expert answers the question
//! briefly (see [`crate::collab`]) and the answers are pasted under it; there is no latent
//! context and no loss term of its own.

use burn::tensor::backend::AutodiffBackend;

use super::{Context, InferenceParts, Inferred, Notes, Parts, System};
use crate::collab::TextExpert;
use crate::error::TrainError;

#[derive(Debug)]
pub struct TextCollab<B: AutodiffBackend> {
    pub experts: Vec<TextExpert<B::InnerBackend>>,
    /// The run's prompt template (`{question}` marks the question), which the experts read
    /// the question in.
    pub prompt_template: String,
    /// Ask through each expert's chat template.
    pub chat: bool,
    pub max_new_tokens: usize,
    pub device: burn::tensor::Device<B::InnerBackend>,
}

impl<B: AutodiffBackend> System<B> for TextCollab<B> {
    fn name(&self) -> &'static str {
        "text-collab"
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

    fn notes(&self, questions: &[String]) -> Result<Option<Vec<Notes>>, TrainError> {
        let templated: Vec<String> = questions
            .iter()
            .map(|q| self.prompt_template.replace("{question}", q))
            .collect();
        let answers = self
            .experts
            .iter()
            .map(|x| x.suggest(&templated, self.chat, self.max_new_tokens, &self.device))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(
            (0..questions.len())
                .map(|i| {
                    self.experts
                        .iter()
                        .zip(&answers)
                        .map(|(x, a)| (x.member.name.clone(), a[i].clone()))
                        .collect()
                })
                .collect(),
        ))
    }
}
