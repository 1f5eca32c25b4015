//! The integration tests that run on the CPU only, as one binary (one link, one copy of
//! the generic model code instead of one per file).

#[path = "../common/mod.rs"]
mod common;

mod batching;
mod compact_weights;
mod few_queries;
mod few_rows;
mod fused;
mod gguf;
mod llama_vocab;
mod real_models;
mod tokenizer;
