//! What scores a step's completions. A closure `Fn(prompt index, completion) -> f32` is a
//! reward; so is anything that scores a whole batch at once (a program in another language,
//! a remote reward model), with its parts (several reward functions, each logged) kept apart.

use super::TrainError;

/// A batch's rewards: the total per completion and, when the reward is a weighted sum of
/// named functions, each function's unweighted values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scored {
    pub total: Vec<f32>,
    pub parts: Vec<(String, Vec<f32>)>,
}

/// Scores completions; `items[i]` is (the index of its prompt in the step, its text).
pub trait Reward: Sync {
    fn score_batch(&self, items: &[(usize, &str)]) -> Result<Scored, TrainError>;
}

impl<F: Fn(usize, &str) -> f32 + Sync> Reward for F {
    fn score_batch(&self, items: &[(usize, &str)]) -> Result<Scored, TrainError> {
        use rayon::prelude::*;
        Ok(Scored {
            total: items.par_iter().map(|&(i, text)| self(i, text)).collect(),
            parts: Vec::new(),
        })
    }
}

/// `reward` with prompt indices shifted by `by` (a share or a round of a larger batch).
pub(crate) struct Shifted<'a> {
    pub reward: &'a dyn Reward,
    pub by: usize,
}

impl Reward for Shifted<'_> {
    fn score_batch(&self, items: &[(usize, &str)]) -> Result<Scored, TrainError> {
        let shifted: Vec<(usize, &str)> = items.iter().map(|&(i, t)| (i + self.by, t)).collect();
        self.reward.score_batch(&shifted)
    }
}
