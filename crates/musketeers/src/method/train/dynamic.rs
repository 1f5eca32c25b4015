//! DAPO's dynamic sampling (Yu et al., 2025, section 3.2): a group whose completions all earn
//! the same reward has zero advantage everywhere and teaches GRPO nothing, so it is dropped
//! and the batch refilled from new prompts, a bounded number of rounds.

use serde::Serialize;

/// What dynamic sampling did in one step (logged in `metrics.jsonl`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DynamicSampling {
    /// Rounds of sampling (1: the first batch had enough signal).
    pub rounds: usize,
    /// Prompts sampled over all rounds.
    pub drawn: usize,
    /// Groups dropped for zero reward variance.
    pub dropped: usize,
    /// Prompts drawn after the first round to refill the batch.
    pub refilled: usize,
    /// Groups trained on.
    pub kept: usize,
    /// The bound on rounds ended sampling before the batch was full.
    pub bounded: bool,
    /// No group had signal: the step trained on the first round's groups (all zero
    /// advantage: only the KL term moves the policy).
    pub fell_back: bool,
}

/// The groups kept so far, as candidate indices, toward a batch of `batch`.
#[derive(Debug, Clone)]
pub struct Plan {
    batch: usize,
    kept: Vec<usize>,
    summary: DynamicSampling,
}

impl Plan {
    pub fn new(batch: usize) -> Self {
        Self {
            batch,
            kept: Vec::new(),
            summary: DynamicSampling::default(),
        }
    }

    /// Take a round of groups (candidates `first..`, `group` rewards each, prompt-major);
    /// `true` once the batch is full.
    pub fn add_round(&mut self, first: usize, rewards: &[f32], group: usize) -> bool {
        let group = group.max(1);
        let groups = rewards.len() / group;
        if self.summary.rounds > 0 {
            self.summary.refilled += groups;
        }
        self.summary.rounds += 1;
        self.summary.drawn += groups;
        for (i, rewards) in rewards.chunks(group).enumerate() {
            if has_signal(rewards) {
                self.kept.push(first + i);
            } else {
                self.summary.dropped += 1;
            }
        }
        self.kept.len() >= self.batch
    }

    /// The candidates to train on and the step's figures. At most `batch` groups, in the
    /// order they were drawn; the first round's `batch` when no group had signal.
    pub fn finish(mut self) -> (Vec<usize>, DynamicSampling) {
        self.summary.bounded = self.kept.len() < self.batch;
        if self.kept.is_empty() {
            self.summary.fell_back = true;
            self.kept = (0..self.batch.min(self.summary.drawn)).collect();
        }
        self.kept.truncate(self.batch);
        self.summary.kept = self.kept.len();
        (self.kept, self.summary)
    }
}

/// A group teaches something when its rewards differ (NaN never equals: it counts as signal,
/// and the advantage step reports it).
fn has_signal(rewards: &[f32]) -> bool {
    rewards.iter().any(|r| r.to_bits() != rewards[0].to_bits())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_first_round_needs_no_refill() {
        let mut plan = Plan::new(2);
        assert!(plan.add_round(0, &[0.0, 1.0, 1.0, 0.0], 2));
        let (kept, s) = plan.finish();
        assert_eq!(kept, vec![0, 1]);
        assert_eq!((s.rounds, s.drawn, s.dropped, s.refilled), (1, 2, 0, 0));
        assert!(!s.bounded && !s.fell_back);
    }

    #[test]
    fn zero_variance_groups_are_refilled_in_draw_order() {
        let mut plan = Plan::new(2);
        // Round 0: group 0 all wrong, group 1 has signal.
        assert!(!plan.add_round(0, &[0.0, 0.0, 0.0, 1.0], 2));
        // Round 1: candidates 2 and 3 both have signal; only one is needed.
        assert!(plan.add_round(2, &[1.0, 0.0, 0.5, 0.0], 2));
        let (kept, s) = plan.finish();
        assert_eq!(kept, vec![1, 2]);
        assert_eq!(
            (s.rounds, s.drawn, s.dropped, s.refilled, s.kept),
            (2, 4, 1, 2, 2)
        );
        assert!(!s.bounded);
    }

    #[test]
    fn the_bound_stops_a_batch_without_signal() {
        let mut plan = Plan::new(2);
        for round in 0..3 {
            assert!(!plan.add_round(round * 2, &[1.0; 4], 2));
        }
        let (kept, s) = plan.finish();
        assert_eq!(kept, vec![0, 1], "falls back to the first round");
        assert_eq!((s.rounds, s.drawn, s.dropped, s.refilled), (3, 6, 6, 4));
        assert!(s.bounded && s.fell_back);
    }

    #[test]
    fn a_short_batch_trains_on_what_has_signal() {
        let mut plan = Plan::new(3);
        plan.add_round(0, &[0.0, 0.0, 0.0, 1.0, 1.0, 1.0], 2);
        plan.add_round(3, &[1.0, 1.0, 0.0, 1.0, 1.0, 1.0], 2);
        let (kept, s) = plan.finish();
        assert_eq!(kept, vec![1, 4]);
        assert!(s.bounded && !s.fell_back);
    }
}
