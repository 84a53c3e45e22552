//! Text ↔ token ids, as llama.cpp tokenizes (llama-vocab.cpp), built on the `tokenizers` crate.
//!
//! [`Tokenizer::from_gguf`] reads the GGUF `tokenizer.*` metadata:
//! - `llama` (SentencePiece, llama.cpp `llm_tokenizer_spm`): a `tokenizers` BPE model whose
//!   merges are derived from the token scores (as Hugging Face's `SpmConverter` does), with
//!   byte fallback to `<0xXX>` tokens, spaces as U+2581, and a U+2581 prefix when
//!   `tokenizer.ggml.add_space_prefix` is true.
//! - `gpt2` (byte-level BPE, `llm_tokenizer_bpe`): a `tokenizers` BPE model with
//!   `tokenizer.ggml.merges`, pre-tokenized by the regexes llama.cpp uses for
//!   `tokenizer.ggml.pre` and byte-level encoded.
//!
//! Control, user-defined and unknown tokens written in a text are recognized as tokens before
//! the model runs, in llama.cpp's order (`tokenizer_st_partition` with `parse_special = true`,
//! the default of `llama-tokenize`, `llama-cli` and `llama-server`). Detokenization follows
//! llama.cpp's `token_to_piece` / `detokenize`.
//!
//! [`Tokenizer::from_file`] loads a Hugging Face `tokenizer.json` instead (the `--tokenizer`
//! override); that file's own rules then apply.

mod detok;
mod error;
mod gguf;
mod json;
mod partition;
mod pre;
mod spm;
mod stream;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use detok::{Pieces, attr};
pub use error::{SUPPORTED_MODELS, TokenizerError};
use partition::{Fragment, Partitioner};
pub use stream::StreamDecoder;

use crate::gguf::Metadata;

/// A token's type: GGUF `tokenizer.ggml.token_type` (llama.cpp `llama_token_type`), after
/// llama.cpp's load-time fix-ups (end-of-turn and FIM tokens found by their text become
/// control tokens).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenType {
    /// Ordinary text (type 1).
    Normal,
    /// The unknown token (type 2).
    Unknown,
    /// A control token such as BOS, EOS, `<start_of_turn>` (type 3): matched in text, printed
    /// only when asked for special tokens.
    Control,
    /// A token added to the vocabulary, matched verbatim in text and always printed (type 4).
    UserDefined,
    /// Reserved, unused (type 5).
    Unused,
    /// A byte-fallback token `<0xXX>` (type 6).
    Byte,
    /// Type 0 or unknown.
    Undefined,
}

/// The special token ids of a vocabulary (`special_*_id` in llama.cpp).
#[derive(Clone, Debug, Default)]
struct SpecialIds {
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    eom: Option<u32>,
    unk: Option<u32>,
    sep: Option<u32>,
    pad: Option<u32>,
    mask: Option<u32>,
    fim_pre: Option<u32>,
    fim_suf: Option<u32>,
    fim_mid: Option<u32>,
    fim_pad: Option<u32>,
    fim_rep: Option<u32>,
    fim_sep: Option<u32>,
}

/// Where a tokenizer came from.
#[derive(Clone, Debug)]
enum Source {
    Gguf { model: String, pre: Option<&'static str> },
    File(PathBuf),
}

struct Inner {
    /// The model: normalizer, pre-tokenizer, BPE, added tokens.
    hf: tokenizers::Tokenizer,
    source: Source,
    /// Token text by id, as in the vocabulary.
    texts: Vec<String>,
    /// `llama_token_attr` bits by id.
    attrs: Vec<u32>,
    pieces: Pieces,
    special: SpecialIds,
    /// End-of-generation ids, sorted.
    eog: Vec<u32>,
    add_bos: bool,
    add_eos: bool,
    /// SentencePiece: prefix raw text with a space; detokenize drops the first piece's space.
    add_space_prefix: bool,
    /// Detokenize removes spaces before punctuation (llama.cpp `clean_spaces`).
    clean_spaces: bool,
    /// llama.cpp's special-token split (GGUF tokenizers); `None`: the `tokenizers` added
    /// vocabulary does it (tokenizer.json).
    partition: Option<Partitioner>,
}

/// A tokenizer: text to token ids and back, matching llama.cpp on the same model.
///
/// Cheap to clone (shared, immutable); `Send + Sync`.
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.inner.source)
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos())
            .field("eos", &self.eos())
            .field("adds_bos", &self.adds_bos())
            .finish()
    }
}

impl Tokenizer {
    /// The tokenizer described by GGUF metadata, read as llama.cpp's `llama_vocab::load` does:
    /// `tokenizer.ggml.model` (`llama` or `gpt2`), `.tokens`, `.scores` and `.token_type`
    /// (optional, one entry per token), `.merges` (gpt2), `.pre` (gpt2; absent means
    /// `default`), `.add_space_prefix`, `.add_bos_token`, `.add_eos_token` and the
    /// `*_token_id` keys. Special ids outside the vocabulary are ignored, as in llama.cpp.
    ///
    /// Errors: [`TokenizerError::UnsupportedModel`], [`TokenizerError::UnsupportedPreTokenizer`],
    /// [`TokenizerError::Metadata`] (missing or mistyped key), [`TokenizerError::ArrayLength`]
    /// (scores or token types not one per token), [`TokenizerError::DuplicateToken`],
    /// [`TokenizerError::EmptyVocab`], [`TokenizerError::MissingSpecialToken`],
    /// [`TokenizerError::Build`].
    pub fn from_gguf(metadata: &Metadata) -> Result<Tokenizer, TokenizerError> {
        Ok(Tokenizer {
            inner: Arc::new(gguf::load(metadata)?),
        })
    }

    /// The tokenizer of a Hugging Face `tokenizer.json` (the `--tokenizer` override). Its added
    /// tokens (special ones count as control tokens), normalizer, pre-tokenizer and
    /// post-processor apply as the `tokenizers` crate implements them; BOS and EOS are what the
    /// post-processor adds (else the usual spellings such as `<s>`, `</s>`).
    ///
    /// Errors: [`TokenizerError::File`] naming the path when it cannot be read or parsed.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Tokenizer, TokenizerError> {
        Ok(Tokenizer {
            inner: Arc::new(json::load(path.as_ref())?),
        })
    }

    /// Token ids of `text`, with special tokens written in it recognized (llama.cpp's
    /// `parse_special = true`). With `add_bos`, the BOS the model adds (see
    /// [`adds_bos`](Self::adds_bos)) is put first, and the EOS too for the rare model whose
    /// metadata asks for it (`tokenizer.ggml.add_eos_token`): llama.cpp's `add_special`.
    /// The empty text gives `[BOS]` or nothing.
    ///
    /// Errors: [`TokenizerError::Encode`] if the `tokenizers` model fails (not expected).
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, TokenizerError> {
        let inner = &*self.inner;
        let encode_err = |e: tokenizers::Error| TokenizerError::Encode { message: e.to_string() };
        let Some(partition) = &inner.partition else {
            let enc = inner.hf.encode_fast(text, add_bos).map_err(encode_err)?;
            return Ok(enc.get_ids().to_vec());
        };
        let mut ids = Vec::with_capacity(text.len() / 3 + 2);
        if add_bos && inner.add_bos {
            ids.extend(inner.special.bos);
        }
        for fragment in partition.split(text) {
            match fragment {
                Fragment::Token(id) => ids.push(id),
                Fragment::Text(range) => {
                    let enc = inner.hf.encode_fast(&text[range], false).map_err(encode_err)?;
                    ids.extend_from_slice(enc.get_ids());
                }
            }
        }
        if add_bos && inner.add_eos {
            ids.extend(inner.special.eos);
        }
        Ok(ids)
    }

    /// Whether [`encode`](Self::encode) with `add_bos` puts a BOS first
    /// (`tokenizer.ggml.add_bos_token`; llama.cpp's default is true for SentencePiece).
    pub fn adds_bos(&self) -> bool {
        self.inner.add_bos && self.inner.special.bos.is_some()
    }

    /// The text of `ids`, as llama.cpp's `detokenize(remove_special = false,
    /// unparse_special = false)`: control and unknown tokens print nothing, user-defined tokens
    /// print their text, byte tokens their byte; with `add_space_prefix` the first piece loses
    /// one leading space; `clean_spaces` models drop spaces before punctuation. Bytes that are
    /// not UTF-8 become U+FFFD. Ids outside the vocabulary print nothing.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.detokenize(ids, false)
    }

    /// Like [`decode`](Self::decode), but control tokens print their text
    /// (`unparse_special = true`), e.g. `<start_of_turn>`.
    pub fn decode_special(&self, ids: &[u32]) -> String {
        self.detokenize(ids, true)
    }

    fn detokenize(&self, ids: &[u32], special: bool) -> String {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for (i, &id) in ids.iter().enumerate() {
            let piece = self.piece(id, special);
            bytes.extend_from_slice(if i == 0 { self.strip_first_space(piece) } else { piece });
        }
        if self.inner.clean_spaces {
            detok::clean_spaces(&mut bytes);
        }
        match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    /// Token `id`'s piece as llama.cpp's `token_to_piece(special)` gives it.
    fn piece(&self, id: u32, special: bool) -> &[u8] {
        self.inner.pieces.get(id, special)
    }

    /// The first piece of a detokenized sequence loses one leading space when the model
    /// prefixes text with one (llama.cpp `detokenize`, `remove_space`).
    fn strip_first_space<'a>(&self, piece: &'a [u8]) -> &'a [u8] {
        match piece {
            [b' ', rest @ ..] if self.inner.add_space_prefix => rest,
            _ => piece,
        }
    }

    /// The raw bytes of token `id`'s piece (llama.cpp `token_to_piece(special = true)`):
    /// SentencePiece U+2581 as a space, byte-level BPE characters as their bytes, a byte
    /// fallback token `<0xXX>` as its one byte, control and user-defined tokens as their text,
    /// unused tokens as nothing. A piece may be part of a UTF-8 character. Empty for ids
    /// outside the vocabulary.
    pub fn token_to_bytes(&self, id: u32) -> Vec<u8> {
        self.piece(id, true).to_vec()
    }

    /// The token's text as stored in the vocabulary (`tokenizer.ggml.tokens`), e.g. `▁Hello`,
    /// `ĠHello`, `<0x0A>`, `<end_of_turn>`.
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.inner.texts.get(id as usize).map(String::as_str)
    }

    /// The id of the token whose vocabulary text is `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.inner.hf.token_to_id(text)
    }

    /// The token's type, see [`TokenType`].
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        let a = *self.inner.attrs.get(id as usize)?;
        Some(if a & attr::CONTROL != 0 {
            TokenType::Control
        } else if a & attr::USER_DEFINED != 0 {
            TokenType::UserDefined
        } else if a & attr::BYTE != 0 {
            TokenType::Byte
        } else if a & attr::UNKNOWN != 0 {
            TokenType::Unknown
        } else if a & attr::UNUSED != 0 {
            TokenType::Unused
        } else if a & attr::NORMAL != 0 {
            TokenType::Normal
        } else {
            TokenType::Undefined
        })
    }

    /// Number of tokens in the vocabulary (ids are `0..vocab_size()`).
    pub fn vocab_size(&self) -> usize {
        self.inner.texts.len()
    }

    /// The BOS id (`tokenizer.ggml.bos_token_id`, or llama.cpp's default for the model).
    pub fn bos(&self) -> Option<u32> {
        self.inner.special.bos
    }

    /// The EOS id (`tokenizer.ggml.eos_token_id`, or llama.cpp's default for the model).
    pub fn eos(&self) -> Option<u32> {
        self.inner.special.eos
    }

    /// The end-of-turn id (`tokenizer.ggml.eot_token_id`, or found by its text such as
    /// `<end_of_turn>`, `<|im_end|>`, `<|eot_id|>`).
    pub fn eot(&self) -> Option<u32> {
        self.inner.special.eot
    }

    /// The padding id (`tokenizer.ggml.padding_token_id`).
    pub fn pad(&self) -> Option<u32> {
        self.inner.special.pad
    }

    /// The unknown-token id (`tokenizer.ggml.unknown_token_id`).
    pub fn unk(&self) -> Option<u32> {
        self.inner.special.unk
    }

    /// Whether generation ends at `id`: llama.cpp's `special_eog_ids` (EOS, EOT, EOM, FIM
    /// pad/repo/separator, and tokens spelled like `<end_of_turn>`, `<|im_end|>`,
    /// `<|endoftext|>`, `<|eot_id|>`, `<|eom_id|>`).
    pub fn is_eog(&self, id: u32) -> bool {
        self.inner.eog.binary_search(&id).is_ok()
    }

    /// All end-of-generation ids, ascending.
    pub fn eog_ids(&self) -> &[u32] {
        &self.inner.eog
    }

    /// `tokenizer.ggml.model` (`llama`, `gpt2`), or `tokenizer.json` for a file.
    pub fn model(&self) -> &str {
        match &self.inner.source {
            Source::Gguf { model, .. } => model,
            Source::File(_) => "tokenizer.json",
        }
    }

    /// The `tokenizer.json` this tokenizer was loaded from ([`from_file`](Self::from_file)).
    pub fn file(&self) -> Option<&Path> {
        match &self.inner.source {
            Source::Gguf { .. } => None,
            Source::File(path) => Some(path),
        }
    }

    /// The BPE pre-tokenizer in use (llama.cpp's group name, e.g. `qwen2`, `llama3`), if any.
    pub fn pre_tokenizer(&self) -> Option<&'static str> {
        match &self.inner.source {
            Source::Gguf { pre, .. } => *pre,
            Source::File(_) => None,
        }
    }

    /// A [`StreamDecoder`] over this tokenizer (control tokens hidden, like
    /// [`decode`](Self::decode)).
    pub fn stream_decoder(&self) -> StreamDecoder {
        StreamDecoder::new(self)
    }
}
