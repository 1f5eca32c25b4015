//! n-Musketeers orchestration: the pieces of the `musketeers` CLI that are worth reusing.
//!
//! Today: scoring saved completions in bulk ([`score_lines`]). The trainer, team config and
//! reports land here as they are built (see docs/ARCHITECTURE.md).

pub mod scoring;

pub use scoring::{ScoreLine, score_lines};
