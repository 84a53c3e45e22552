//! lora-run runtime: GGUF reader/writer over mmap and the model inspection that the CLI and
//! apps share. (Architectures, sessions and LoRA adapters build on this.)

pub mod gguf;
pub mod inspect;
pub mod model;

pub use gguf::{GgufError, GgufFile};
