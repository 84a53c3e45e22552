//! Errors of tokenizer loading and encoding: each names the key, file or token at fault.

use std::path::PathBuf;

use crate::gguf::GgufError;

/// Tokenizer models that [`super::Tokenizer::from_gguf`] reads (`tokenizer.ggml.model`).
pub const SUPPORTED_MODELS: &str = "llama (SentencePiece), gpt2 (byte-level BPE)";

/// A tokenizer that cannot be built from its GGUF metadata or `tokenizer.json`, or a text that
/// cannot be encoded.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// `tokenizer.ggml.model` names a tokenizer this runtime does not implement.
    #[error("unsupported tokenizer model `{model}` in tokenizer.ggml.model (supported: {SUPPORTED_MODELS})")]
    UnsupportedModel { model: String },
    /// `tokenizer.ggml.pre` names a BPE pre-tokenizer this runtime does not implement.
    #[error("unsupported pre-tokenizer `{pre}` in tokenizer.ggml.pre (supported: {supported})")]
    UnsupportedPreTokenizer { pre: String, supported: String },
    /// A tokenizer key is missing or has the wrong type ([`GgufError::MissingKey`],
    /// [`GgufError::WrongValueType`]); the inner error names the key.
    #[error("tokenizer metadata: {0}")]
    Metadata(#[from] GgufError),
    /// A per-token array (`tokenizer.ggml.scores`, `tokenizer.ggml.token_type`) does not have one
    /// entry per token of `tokenizer.ggml.tokens`.
    #[error("`{key}` has {len} entries but tokenizer.ggml.tokens has {n_tokens}")]
    ArrayLength {
        key: &'static str,
        len: usize,
        n_tokens: usize,
    },
    /// The same text appears twice in `tokenizer.ggml.tokens` (llama.cpp refuses this too).
    #[error("duplicate token {text:?} in tokenizer.ggml.tokens: ids {first} and {second}")]
    DuplicateToken { text: String, first: u32, second: u32 },
    /// The vocabulary is empty.
    #[error("tokenizer.ggml.tokens is empty")]
    EmptyVocab,
    /// `tokenizer.ggml.add_bos_token` (or add_eos) is true but there is no such token id.
    #[error("{flag} is true but {id_key} is not set to a token of the vocabulary")]
    MissingSpecialToken { flag: &'static str, id_key: &'static str },
    /// The `--tokenizer` file cannot be read or is not a valid `tokenizer.json`.
    #[error("tokenizer file {path}: {message}")]
    File { path: PathBuf, message: String },
    /// The `tokenizers` crate refused the model built from the metadata.
    #[error("cannot build the {what} tokenizer: {message}")]
    Build { what: &'static str, message: String },
    /// The `tokenizers` crate failed while encoding a text (not expected for valid models).
    #[error("cannot encode text: {message}")]
    Encode { message: String },
}
