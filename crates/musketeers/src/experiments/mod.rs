//! Experiments built on runs: the offline demo ([`demo`]) and the paper's grid ([`grid`]).

pub mod demo;
pub mod grid;
