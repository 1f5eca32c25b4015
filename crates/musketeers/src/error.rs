//! The one error type of a run: what a caller acts on has its own variant (a step refused
//! for a non-finite value; the lower crates' errors), the rest is a message naming the input.

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Lm(#[from] musketeers_lm::LmError),
    #[error(transparent)]
    Fusion(#[from] musketeers_fusion::FusionError),
    #[error(transparent)]
    Rl(#[from] musketeers_rl::RlError),
    #[error("{0}")]
    BadInput(String),
    /// A non-finite loss or gradient: the step is refused before any parameter changes, so
    /// the model and the last checkpoint stay good.
    #[error("step {step}: {what} is not finite ({value}); no parameter was updated")]
    NonFinite {
        step: u64,
        what: &'static str,
        value: f64,
    },
}
