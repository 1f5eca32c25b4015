//! How far a long wait has come (evaluation's greedy decoding, ...), for whoever shows it:
//! the library reports, the binary renders (a bar on a terminal, plain lines otherwise).

use musketeers_lm::generate::StopCondition;
use std::cell::RefCell;

/// `done` of `total` units of `task` (fractions of a unit happen: a problem half decoded).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress<'a> {
    pub task: &'a str,
    pub done: f64,
    pub total: f64,
    /// What is counted, plural (`problems`).
    pub unit: &'a str,
}

/// Turns the decode steps of one greedy batch into progress in problems: a batch of `rows`
/// problems that may write `max_new_tokens` each counts as `rows * (step + 1) / max_new_tokens`
/// problems after step `step` (an upper bound on the time left: rows that finish early end
/// the batch early).
pub(crate) struct DecodeProgress<'a> {
    pub(crate) before: f64,
    pub(crate) rows: usize,
    pub(crate) max_new_tokens: usize,
    pub(crate) report: RefCell<&'a mut dyn FnMut(f64)>,
}

impl StopCondition for DecodeProgress<'_> {
    fn should_stop(&self, _new_tokens: &[u32]) -> bool {
        false
    }

    fn after_step(&self, step: usize, _rows_left: usize) {
        let share = (step + 1) as f64 / self.max_new_tokens.max(1) as f64;
        if let Ok(mut report) = self.report.try_borrow_mut() {
            report(self.before + self.rows as f64 * share.min(1.0));
        }
    }
}
