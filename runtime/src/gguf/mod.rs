//! GGUF: the llama.cpp model and adapter file format (ggml/docs/gguf.md).
//!
//! [`GgufFile`] reads versions 2 and 3 over a memory map, with zero-copy tensor views;
//! [`GgufWriter`] writes version 3. Both validate everything; see [`GgufError`].

mod error;
mod reader;
mod value;
mod writer;

pub use error::GgufError;
pub use reader::{
    GGML_MAX_DIMS, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GgufFile, GgufHeader, MAX_ARRAY_DEPTH, Metadata, TensorInfo,
    TensorView, align_up, tensor_size,
};
pub use value::{GgufArray, GgufValue, GgufValueType};
pub use writer::{GgufWriter, WriterTensor};
