//! Language-model backbones for n-Musketeers experts and policies, generic over the Burn
//! backend.
//!
//! - [`config`]: `config.json` as Hugging Face writes it, resolved into [`LlamaConfig`].
//! - [`llama`]: the Llama family (Llama 2/3, SmolLM2, Qwen2/2.5, Qwen3) in one implementation.
//! - [`lora`]: LoRA adapters on a frozen base, in PEFT's file layout.
//! - [`gguf`], [`quants`]: GGUF files and ggml's block formats, dequantized to f32.
//! - [`rope`]: rotary embeddings (rotate-half, per-row positions, Llama 3 scaling).
//! - [`weights`]: safetensors checkpoints (single or sharded; f32, f16, bf16).

pub mod adapters;
pub mod allocator;
pub mod batch;
pub mod cache;
/// The model catalog (its own Burn-free crate, re-exported).
pub use musketeers_catalog as catalog;
pub mod config;
pub mod context;
pub mod error;
pub mod export;
pub mod few_queries;
pub mod few_rows;
mod flex;
pub mod fused;
pub mod generate;
pub mod gguf;
pub mod gguf_llama;
pub mod head;
pub mod llama;
pub mod lora;
mod param;
pub mod perf;
pub mod pooling;
pub mod precision;
pub mod pretrained;
pub mod quants;
pub mod rope;
pub mod sampling;
pub mod tokenizer;
pub mod tokenizer_gguf;
pub mod weights;

pub use config::LlamaConfig;
pub use context::SoftContext;
pub use error::LmError;
pub use llama::{Llama, ModelOutput};
pub use lora::LoraConfig;
pub use precision::Precision;
pub use pretrained::Pretrained;
