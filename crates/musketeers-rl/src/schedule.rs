//! Learning-rate schedules as `transformers` computes them for TRL (`lr_scheduler_type`,
//! `warmup_steps`): the multiplier of the peak learning rate for each optimizer step.

use serde::{Deserialize, Serialize};

/// TRL's `lr_scheduler_type` (`transformers.SchedulerType`), the kinds this trainer has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedulerType {
    /// Linear warmup, then linear decay to 0 at the last step (TRL's default).
    #[default]
    Linear,
    /// Linear warmup, then half a cosine period down to 0.
    Cosine,
    /// Linear warmup, then the peak learning rate throughout.
    Constant,
}

/// A schedule over a run of `total_steps` optimizer steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub kind: LrSchedulerType,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

/// The constant schedule (factor 1 at every step): a decaying default would need the run's
/// length, and one with `total_steps = 0` would silently train at a learning rate of 0.
impl Default for LrSchedule {
    fn default() -> Self {
        Self {
            kind: LrSchedulerType::Constant,
            warmup_steps: 0,
            total_steps: 0,
        }
    }
}

impl LrSchedule {
    /// The multiplier for the optimizer step with 0-based index `step`, as
    /// `get_{linear,cosine,constant}_schedule_with_warmup`'s `lr_lambda(step)`.
    pub fn factor(&self, step: u64) -> f64 {
        let (step, warmup, total) = (
            step as f64,
            self.warmup_steps as f64,
            self.total_steps as f64,
        );
        if step < warmup {
            return step / warmup.max(1.0);
        }
        let progress = (step - warmup) / (total - warmup).max(1.0);
        match self.kind {
            LrSchedulerType::Constant => 1.0,
            LrSchedulerType::Linear => ((total - step) / (total - warmup).max(1.0)).max(0.0),
            LrSchedulerType::Cosine => {
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(kind: LrSchedulerType, warmup_steps: u64) -> LrSchedule {
        LrSchedule {
            kind,
            warmup_steps,
            total_steps: 10,
        }
    }

    /// The values `transformers` 4.x gives over 10 steps (its `lr_lambda`, by hand):
    /// linear, no warmup: (10 - s) / 10; with 2 warmup steps: 0, 0.5, then (10 - s) / 8;
    /// cosine: 0.5 (1 + cos(pi s / 10)).
    #[test]
    fn factors_follow_the_transformers_schedules() {
        let linear = schedule(LrSchedulerType::Linear, 0);
        assert_eq!(linear.factor(0), 1.0);
        assert!((linear.factor(9) - 0.1).abs() < 1e-12);
        let warm = schedule(LrSchedulerType::Linear, 2);
        assert_eq!(warm.factor(0), 0.0);
        assert_eq!(warm.factor(1), 0.5);
        assert_eq!(warm.factor(2), 1.0);
        assert!((warm.factor(6) - 0.5).abs() < 1e-12);
        let cosine = schedule(LrSchedulerType::Cosine, 0);
        assert_eq!(cosine.factor(0), 1.0);
        assert!((cosine.factor(5) - 0.5).abs() < 1e-12);
        assert!(
            (cosine.factor(9) - 0.5 * (1.0 + (0.9 * std::f64::consts::PI).cos())).abs() < 1e-12
        );
        let constant = schedule(LrSchedulerType::Constant, 2);
        assert_eq!(constant.factor(1), 0.5);
        assert_eq!(constant.factor(9), 1.0);
        // Past the end (a run extended with --steps) the decaying schedules stay at 0.
        assert_eq!(linear.factor(12), 0.0);
        assert_eq!(
            LrSchedule::default().factor(7),
            1.0,
            "the default never zeroes the rate"
        );
    }
}
