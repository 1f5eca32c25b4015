//! The integration tests that run on the CPU only, as one binary (one link, one copy of
//! the generic model code instead of one per file).

mod bandit;
mod trl_parity;
