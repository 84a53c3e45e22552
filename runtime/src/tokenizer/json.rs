//! A Hugging Face `tokenizer.json` (the `--tokenizer` override), loaded by the `tokenizers`
//! crate; its own added tokens, normalizer, pre-tokenizer and post-processor apply.

use std::path::Path;

use super::detok::{PieceStyle, Pieces, attr};
use super::{Inner, Source, SpecialIds, TokenizerError, gguf};

/// BOS spellings to fall back on when the post-processor adds no BOS.
const BOS_TEXTS: &[&str] = &["<|begin_of_text|>", "<bos>", "<s>", "<|startoftext|>"];
/// EOS spellings to fall back on when the post-processor adds no EOS.
const EOS_TEXTS: &[&str] = &["<|end_of_text|>", "<eos>", "</s>", "<|endoftext|>", "<|im_end|>"];

/// Builds the tokenizer of the `tokenizer.json` at `path`. See [`super::Tokenizer::from_file`].
pub(super) fn load(path: &Path) -> Result<Inner, TokenizerError> {
    let file_err = |message: String| TokenizerError::File {
        path: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|e| file_err(e.to_string()))?;
    let hf =
        tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| file_err(format!("not a valid tokenizer.json: {e}")))?;

    let vocab = hf.get_vocab(true);
    let n = vocab.values().max().map_or(0, |&m| m as usize + 1);
    if n == 0 {
        return Err(file_err("the vocabulary is empty".to_string()));
    }
    let mut texts = vec![String::new(); n];
    for (text, id) in vocab {
        texts[id as usize] = text;
    }

    let json = |v: Option<String>| v.unwrap_or_default();
    let decoder = json(hf.get_decoder().and_then(|d| serde_json::to_string(d).ok()));
    let pre_tokenizer = json(hf.get_pre_tokenizer().and_then(|p| serde_json::to_string(p).ok()));
    let byte_level = decoder.contains("ByteLevel") || pre_tokenizer.contains("ByteLevel");
    let byte_fallback = decoder.contains("ByteFallback");
    // SentencePiece-style decoders drop the space the normalizer prepended.
    let add_space_prefix = !byte_level
        && (decoder.contains("\"Strip\"") || (decoder.contains("Metaspace") && !decoder.contains("\"never\"")));

    let mut attrs: Vec<u32> = texts
        .iter()
        .map(|t| {
            if t.is_empty() {
                attr::UNDEFINED
            } else if byte_fallback && is_byte_token(t) {
                attr::BYTE
            } else {
                attr::NORMAL
            }
        })
        .collect();
    for (id, token) in hf.get_added_tokens_decoder() {
        attrs[id as usize] = if token.special {
            attr::CONTROL
        } else {
            attr::USER_DEFINED
        };
    }

    // What the post-processor adds around a text is the BOS/EOS the model adds.
    let encode = |add: bool| hf.encode_fast("a", add).map(|e| e.get_ids().to_vec());
    let (with, without) = match (encode(true), encode(false)) {
        (Ok(w), Ok(wo)) => (w, wo),
        (Err(e), _) | (_, Err(e)) => return Err(file_err(format!("cannot encode a test text: {e}"))),
    };
    let prefix = (0..=with.len().saturating_sub(without.len()))
        .find(|&p| with[p..].starts_with(&without))
        .unwrap_or(0);
    let suffix = &with[(prefix + without.len()).min(with.len())..];
    let find = |list: &[&str]| {
        list.iter()
            .find_map(|name| texts.iter().position(|t| t == name))
            .map(|i| i as u32)
    };
    let mut special = SpecialIds {
        bos: with[..prefix].first().copied().or_else(|| find(BOS_TEXTS)),
        eos: suffix.last().copied().or_else(|| find(EOS_TEXTS)),
        ..SpecialIds::default()
    };
    let eog = gguf::detect_by_text(&texts, &mut attrs, &mut special, &|t| hf.token_to_id(t));
    let pieces = Pieces::new(
        &texts,
        &attrs,
        if byte_level {
            PieceStyle::ByteLevel
        } else {
            PieceStyle::Spm
        },
    );
    Ok(Inner {
        hf,
        source: Source::File(path.to_path_buf()),
        texts,
        attrs,
        pieces,
        special,
        eog,
        add_bos: prefix > 0,
        add_eos: !suffix.is_empty(),
        add_space_prefix,
        clean_spaces: false,
        partition: None,
    })
}

/// `<0xXX>` with two upper-case hex digits: a byte-fallback token.
fn is_byte_token(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() == 6 && t.starts_with("<0x") && b[5] == b'>' && b[3..5].iter().all(|c| c.is_ascii_hexdigit())
}
