//! Backend-generic tests: each runs on Flex and again on every GPU backend compiled in
//! (`musketeers_testkit::backend_tests!`). One binary, so a backend's generic code is compiled
//! once per crate, not once per file: on wgpu each extra binary cost CI ~4 min of compiling.

#[path = "../common/mod.rs"]
mod common;

mod frozen_head;
mod gated_context;
mod generation;
mod lora;
mod precision;
mod transformers_parity;
