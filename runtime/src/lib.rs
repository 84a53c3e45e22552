//! lora-run runtime: the library the CLI and apps share.
//!
//! - [`gguf`]: GGUF reader/writer over mmap; [`inspect`]: what a file holds.
//! - [`model`]: architectures configured from GGUF metadata, their forward passes, KV cache.
//! - [`tokenizer`], [`sampler`], [`chat`]: text in and out.
//! - [`engine`]: load a model once ([`Engine`]), open sessions, generate and stream.
//! - [`perplexity`]: llama.cpp's perplexity method.

pub mod bench;
pub mod chat;
pub mod engine;
pub mod gguf;
pub mod inspect;
pub mod lora;
pub mod model;
pub mod perplexity;
pub mod sampler;
pub mod tokenizer;

pub use engine::{
    Engine, Error, GenerateOptions, Generation, LoadOptions, Session, StopReason, Timings, TokenEvent, TokenStream,
};
pub use gguf::{GgufError, GgufFile};
pub use sampler::SamplingOptions;
