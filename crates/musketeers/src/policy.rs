//! The policy as GRPO sees it: a language model that, given context tokens `C` and a prompt,
//! scores completion tokens. Rows are laid out `[C | padding | prompt | completion | padding]`,
//! the layout `musketeers_lm::generate::generate_with_prefix` samples in, so the scores of
//! freshly sampled tokens equal their sampling log-probabilities.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use musketeers_lm::Llama;
use musketeers_rl::logprobs::token_logprobs;
use musketeers_rl::{RlError, Rollouts, TokenScorer};

#[derive(Debug)]
pub struct PrefixedPolicy<'a, B: Backend> {
    pub model: &'a Llama<B>,
    /// `[completions, K, hidden]`: each completion's context tokens (its prompt's `C`,
    /// repeated over the group); `None` for a policy without context (`single` mode).
    pub context: Option<Tensor<B, 3>>,
    /// The sampling temperature: scores are under `softmax(logits / temperature)`.
    pub temperature: f64,
}

impl<B: Backend> TokenScorer<B> for PrefixedPolicy<'_, B> {
    fn score(
        &self,
        rollouts: &Rollouts,
        width: usize,
    ) -> Result<(Tensor<B, 2>, Tensor<B, 2>), RlError> {
        let n = rollouts.completion_ids.len();
        let device = self.model.embed_tokens.weight.device();
        let soft = match &self.context {
            Some(c) => {
                let [rows, k, _] = c.dims();
                if rows != n {
                    return Err(RlError::BadInput(format!(
                        "context for {rows} completions, rollouts have {n}"
                    )));
                }
                k
            }
            None => 0,
        };
        let prompt_width = rollouts.prompt_ids.iter().map(Vec::len).max().unwrap_or(0);
        if soft + prompt_width == 0 {
            return Err(RlError::BadInput(
                "nothing precedes the completions: no context tokens and empty prompts".into(),
            ));
        }
        let mut ids = Vec::with_capacity(n * (prompt_width + width));
        let mut mask = Vec::with_capacity(n * (soft + prompt_width + width));
        let mut targets = Vec::with_capacity(n * width);
        for (prompt, completion) in rollouts.prompt_ids.iter().zip(&rollouts.completion_ids) {
            if completion.len() > width {
                return Err(RlError::BadInput(format!(
                    "a completion of {} tokens in a batch {width} wide",
                    completion.len()
                )));
            }
            let (left, right) = (prompt_width - prompt.len(), width - completion.len());
            ids.extend(std::iter::repeat_n(0i64, left));
            ids.extend(prompt.iter().chain(completion).map(|&t| i64::from(t)));
            ids.extend(std::iter::repeat_n(0i64, right));
            mask.extend(std::iter::repeat_n(1i64, soft));
            mask.extend(std::iter::repeat_n(0i64, left));
            mask.extend(std::iter::repeat_n(1i64, prompt.len() + completion.len()));
            mask.extend(std::iter::repeat_n(0i64, right));
            targets.extend(completion.iter().map(|&t| i64::from(t)));
            targets.extend(std::iter::repeat_n(0i64, right));
        }
        let tokens = prompt_width + width;
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [n, tokens]), &device);
        let embedded = match &self.context {
            Some(c) => Tensor::cat(vec![c.clone(), self.model.embed(ids)], 1),
            None => self.model.embed(ids),
        };
        let total = soft + tokens;
        let mask = Tensor::<B, 2, Int>::from_data(TensorData::new(mask, [n, total]), &device);
        let hidden = self
            .model
            .hidden_state(embedded, Some(mask), -1)
            .map_err(|e| RlError::BadInput(e.to_string()))?;
        // Position p predicts token p + 1: the completion's tokens are predicted from the
        // last prompt position onwards. Only those positions go through the head, which
        // saves the head's work and memory on the prompt positions.
        let start = soft + prompt_width - 1;
        let d = hidden.dims()[2];
        let logits = self
            .model
            .head(hidden.slice([0..n, start..start + width, 0..d]));
        let targets = Tensor::<B, 2, Int>::from_data(TensorData::new(targets, [n, width]), &device);
        Ok(token_logprobs(logits, targets, self.temperature))
    }
}
