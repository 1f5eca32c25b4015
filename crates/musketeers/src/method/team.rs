//! The frozen team: each expert with its own tokenizer, and which of its hidden states it
//! hands the interface.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use musketeers_fusion::ExpertInput;
use musketeers_lm::Llama;
use musketeers_lm::pooling::{Pooling, pool};
use musketeers_lm::precision::to_f32;
use musketeers_lm::tokenizer::TextTokenizer;

use crate::error::TrainError;
pub use crate::run_config::ExpertReadout;

/// A frozen expert: its model, its own tokenizer, which hidden state it passes on and how.
#[derive(Debug)]
pub struct TeamMember<B: Backend> {
    pub name: String,
    pub model: Llama<B>,
    pub tokenizer: TextTokenizer,
    /// `hidden_states` index, negative from the end.
    pub layer: isize,
    pub readout: ExpertReadout,
    /// Appended to each prompt before the expert reads it (`MemberConfig::readout_suffix`).
    pub readout_suffix: String,
    /// The tokens that end its text (`text-collab` asks it to answer).
    pub eos_token_ids: Vec<u32>,
}

impl<B: Backend> TeamMember<B> {
    /// The expert running in `precision` (f32 changes nothing).
    pub fn with_precision(self, precision: musketeers_lm::Precision) -> Self {
        Self {
            model: self.model.with_precision(precision),
            ..self
        }
    }

    /// Hidden states for `prompts` (left-padded), `[prompts, 1 or T, width]` and their mask.
    pub fn read(
        &self,
        prompts: &[String],
        device: &B::Device,
    ) -> Result<ExpertInput<B>, TrainError> {
        let ids = prompts
            .iter()
            .map(|p| {
                self.tokenizer
                    .encode(&format!("{p}{}", self.readout_suffix), true)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let width = ids.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let n = prompts.len();
        let mut flat = Vec::with_capacity(n * width);
        let mut mask = Vec::with_capacity(n * width);
        for row in &ids {
            let pad = width - row.len();
            flat.extend(std::iter::repeat_n(0i64, pad).chain(row.iter().map(|&t| i64::from(t))));
            mask.extend(std::iter::repeat_n(0i64, pad).chain(std::iter::repeat_n(1i64, row.len())));
        }
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [n, width]), device);
        let mask = Tensor::<B, 2, Int>::from_data(TensorData::new(mask, [n, width]), device);
        // The interface is f32 whatever precision the expert runs in.
        let hidden = to_f32(self.model.hidden_state(
            self.model.embed(ids),
            Some(mask.clone()),
            self.layer,
        )?);
        let pooled = |how| {
            let d = hidden.dims()[2];
            pool(hidden.clone(), mask.clone(), how).reshape([n, 1, d])
        };
        Ok(match self.readout {
            ExpertReadout::Last => ExpertInput {
                hidden: pooled(Pooling::Last),
                mask: None,
            },
            ExpertReadout::First => ExpertInput {
                hidden: pooled(Pooling::First),
                mask: None,
            },
            ExpertReadout::Mean => ExpertInput {
                hidden: pooled(Pooling::Mean),
                mask: None,
            },
            ExpertReadout::All => ExpertInput {
                hidden,
                mask: Some(mask),
            },
        })
    }
}
