//! What only the `musketeers` binary uses: backend selection, data-parallel launch, the live
//! progress display, the `lm` tools and the `serve` command.

pub mod backend;
#[cfg(feature = "mpi")]
pub mod dp;
pub mod live;
pub mod lm;
pub mod serve_cli;
