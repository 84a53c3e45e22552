//! The tokenizer described by GGUF `tokenizer.*` metadata, read as llama.cpp reads it
//! (`llama_vocab::impl::load`, llama-vocab.cpp; keys in llama-arch.cpp / gguf-py constants).

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Vocab as BpeVocab};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::detok::{PieceStyle, Pieces, attr};
use super::partition::Partitioner;
use super::{Inner, Source, SpecialIds, TokenizerError, pre, spm};
use crate::gguf::{GgufArray, GgufError, Metadata};

const KEY_MODEL: &str = "tokenizer.ggml.model";
const KEY_PRE: &str = "tokenizer.ggml.pre";
const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
const KEY_SCORES: &str = "tokenizer.ggml.scores";
const KEY_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
const KEY_MERGES: &str = "tokenizer.ggml.merges";
const KEY_ADD_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
const KEY_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
const KEY_ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
const KEY_BOS: &str = "tokenizer.ggml.bos_token_id";
const KEY_EOS: &str = "tokenizer.ggml.eos_token_id";

/// The vocabulary kinds llama.cpp calls `LLAMA_VOCAB_TYPE_SPM` and `_BPE`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum VocabType {
    Spm,
    Bpe,
}

/// Builds the tokenizer of `md`. See [`super::Tokenizer::from_gguf`].
pub(super) fn load(md: &Metadata) -> Result<Inner, TokenizerError> {
    let model = md.get_str(KEY_MODEL)?;
    let vocab_type = match model {
        "llama" => VocabType::Spm,
        "gpt2" => VocabType::Bpe,
        _ => {
            return Err(TokenizerError::UnsupportedModel {
                model: model.to_string(),
            });
        }
    };
    let pre_name = optional(md, KEY_PRE, Metadata::get_str)?;

    // Defaults by vocabulary type, then the pre-tokenizer, then the metadata flags.
    let (pre, mut add_space_prefix, clean_spaces, mut add_bos) = match vocab_type {
        VocabType::Spm => (None, true, false, true),
        VocabType::Bpe => {
            let name = pre_name.unwrap_or("default");
            let pre = pre::lookup(name).ok_or_else(|| TokenizerError::UnsupportedPreTokenizer {
                pre: name.to_string(),
                supported: pre::SUPPORTED.to_string(),
            })?;
            (Some(pre), false, pre.clean_spaces, pre.add_bos)
        }
    };
    let mut add_eos = false;
    if let Some(v) = optional(md, KEY_ADD_PREFIX, Metadata::get_bool)? {
        add_space_prefix = v;
    }

    // Tokens, scores, types.
    let mut texts = string_array(md, KEY_TOKENS)?.to_vec();
    let n = texts.len();
    if n == 0 {
        return Err(TokenizerError::EmptyVocab);
    }
    let scores = match md.get(KEY_SCORES) {
        None => vec![0.0; n],
        Some(_) => match md.get_array(KEY_SCORES)? {
            GgufArray::F32(v) => v.clone(),
            GgufArray::I32(v) => v.iter().map(|&s| s as f32).collect(),
            other => return Err(array_type(KEY_SCORES, "array of float32 or int32", other)),
        },
    };
    check_len(KEY_SCORES, scores.len(), n)?;
    let mut attrs = match md.get(KEY_TOKEN_TYPE) {
        None => vec![attr::NORMAL; n],
        Some(_) => match md.get_array(KEY_TOKEN_TYPE)? {
            GgufArray::I32(v) => v.iter().map(|&t| attr::from_token_type(t as i64)).collect(),
            other => return Err(array_type(KEY_TOKEN_TYPE, "array of int32", other)),
        },
    };
    check_len(KEY_TOKEN_TYPE, attrs.len(), n)?;

    // Text -> id; it becomes the `tokenizers` BPE vocabulary.
    let mut ids = BpeVocab::with_capacity(n);
    for (i, text) in texts.iter_mut().enumerate() {
        if text.is_empty() {
            // llama.cpp names empty tokens so they stay unique.
            *text = format!("[EMPTY_{i}]");
        }
        if let Some(&first) = ids.get(text.as_str()) {
            return Err(TokenizerError::DuplicateToken {
                text: text.clone(),
                first,
                second: i as u32,
            });
        }
        ids.insert(text.clone(), i as u32);
    }

    // Special token ids: llama.cpp's defaults per vocabulary type, replaced by the metadata
    // where it names a token of the vocabulary.
    let mut special = match vocab_type {
        VocabType::Spm => SpecialIds {
            bos: Some(1),
            eos: Some(2),
            unk: Some(0),
            ..SpecialIds::default()
        },
        VocabType::Bpe => SpecialIds {
            bos: Some(11),
            eos: Some(11),
            ..SpecialIds::default()
        },
    };
    read_special_ids(md, &mut special, n)?;
    if let Some(v) = optional(md, KEY_ADD_BOS, Metadata::get_bool)? {
        add_bos = v;
    }
    if let Some(v) = optional(md, KEY_ADD_EOS, Metadata::get_bool)? {
        add_eos = v;
    }
    if add_bos && special.bos.is_none() {
        return Err(TokenizerError::MissingSpecialToken {
            flag: KEY_ADD_BOS,
            id_key: KEY_BOS,
        });
    }
    if add_eos && special.eos.is_none() {
        return Err(TokenizerError::MissingSpecialToken {
            flag: KEY_ADD_EOS,
            id_key: KEY_EOS,
        });
    }

    let eog = detect_by_text(&texts, &mut attrs, &mut special, &|t| ids.get(t).copied());

    let mut hf = match vocab_type {
        VocabType::Spm => build_spm(&texts, &scores, ids, add_space_prefix, special.unk)?,
        VocabType::Bpe => build_bpe(md, ids, pre.expect("BPE has a pre-tokenizer"))?,
    };

    // llama.cpp's special-token cache: control, user-defined and unknown tokens.
    let specials: Vec<(u32, String)> = (0..n)
        .filter(|&i| attrs[i] & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0)
        .map(|i| (i as u32, texts[i].clone()))
        .collect();
    register_added_tokens(&mut hf, &specials, &attrs)?;
    let partition = Partitioner::new(specials);

    let style = match vocab_type {
        VocabType::Spm => PieceStyle::Spm,
        VocabType::Bpe => PieceStyle::ByteLevel,
    };
    let pieces = Pieces::new(&texts, &attrs, style);
    Ok(Inner {
        hf,
        source: Source::Gguf {
            model: model.to_string(),
            pre: pre.map(|p| p.name),
        },
        texts,
        attrs,
        pieces,
        special,
        eog,
        add_bos,
        add_eos,
        add_space_prefix,
        clean_spaces,
        partition: Some(partition),
    })
}

/// `Some(value)` of an optional key, `None` if it is absent; a present key of the wrong type is
/// an error (as in llama.cpp's `get_key(..., required = false)`).
fn optional<'a, T>(
    md: &'a Metadata,
    key: &str,
    get: impl Fn(&'a Metadata, &str) -> Result<T, GgufError>,
) -> Result<Option<T>, TokenizerError> {
    match md.get(key) {
        None => Ok(None),
        Some(_) => Ok(Some(get(md, key)?)),
    }
}

fn string_array<'a>(md: &'a Metadata, key: &str) -> Result<&'a [String], TokenizerError> {
    match md.get_array(key)? {
        GgufArray::String(v) => Ok(v),
        other => Err(array_type(key, "array of string", other)),
    }
}

fn array_type(key: &str, expected: &'static str, found: &GgufArray) -> TokenizerError {
    TokenizerError::Metadata(GgufError::WrongValueType {
        key: key.to_string(),
        expected,
        found: format!("array of {}", found.elem_type()),
    })
}

fn check_len(key: &'static str, len: usize, n_tokens: usize) -> Result<(), TokenizerError> {
    if len == n_tokens {
        Ok(())
    } else {
        Err(TokenizerError::ArrayLength { key, len, n_tokens })
    }
}

/// Reads the `tokenizer.ggml.*_token_id` keys into `special`. As in llama.cpp, a default outside
/// the vocabulary is dropped and an id outside the vocabulary keeps the default.
fn read_special_ids(md: &Metadata, special: &mut SpecialIds, n: usize) -> Result<(), TokenizerError> {
    type Slot = fn(&mut SpecialIds) -> &mut Option<u32>;
    let keys: [(&str, Slot); 17] = [
        (KEY_BOS, |s| &mut s.bos),
        (KEY_EOS, |s| &mut s.eos),
        ("tokenizer.ggml.eot_token_id", |s| &mut s.eot),
        ("tokenizer.ggml.eom_token_id", |s| &mut s.eom),
        ("tokenizer.ggml.unknown_token_id", |s| &mut s.unk),
        ("tokenizer.ggml.seperator_token_id", |s| &mut s.sep),
        ("tokenizer.ggml.padding_token_id", |s| &mut s.pad),
        ("tokenizer.ggml.mask_token_id", |s| &mut s.mask),
        ("tokenizer.ggml.fim_pre_token_id", |s| &mut s.fim_pre),
        ("tokenizer.ggml.fim_suf_token_id", |s| &mut s.fim_suf),
        ("tokenizer.ggml.fim_mid_token_id", |s| &mut s.fim_mid),
        ("tokenizer.ggml.fim_pad_token_id", |s| &mut s.fim_pad),
        ("tokenizer.ggml.fim_rep_token_id", |s| &mut s.fim_rep),
        ("tokenizer.ggml.fim_sep_token_id", |s| &mut s.fim_sep),
        // deprecated spellings of the FIM ids
        ("tokenizer.ggml.prefix_token_id", |s| &mut s.fim_pre),
        ("tokenizer.ggml.suffix_token_id", |s| &mut s.fim_suf),
        ("tokenizer.ggml.middle_token_id", |s| &mut s.fim_mid),
    ];
    for (key, slot) in keys {
        let slot = slot(special);
        if slot.is_some_and(|id| id as usize >= n) {
            *slot = None;
        }
        if let Some(id) = optional(md, key, Metadata::get_u64)?
            && id < n as u64
        {
            *slot = Some(id as u32);
        }
    }
    Ok(())
}

/// llama.cpp's by-text fix-ups: end-of-turn, end-of-message and FIM tokens found by their text
/// (when the metadata names none) become control tokens; control tokens named `unused` are
/// marked unused; and the end-of-generation set is assembled. Returns the sorted EOG ids.
///
/// One deviation: llama.cpp also takes any token spelled `</s>` as end-of-generation (for
/// PaddleOCR) and forces it to a control token. In Gemma 3 (and PLaMo) `</s>` is the HTML
/// strikethrough closing tag, an ordinary piece of text; here `</s>` counts only where the
/// model itself marks it as a control token.
pub(super) fn detect_by_text(
    texts: &[String],
    attrs: &mut [u32],
    special: &mut SpecialIds,
    id_of: &dyn Fn(&str) -> Option<u32>,
) -> Vec<u32> {
    const EOT: &[&str] = &[
        "<|eot_id|>",
        "<|im_end|>",
        "<|end|>",
        "<end_of_turn>",
        "<|endoftext|>",
        "<|end_of_text|>",
        "<EOT>",
        "_<EOT>",
        "[EOT]",
        "<｜end▁of▁sentence｜>",
        "<end_of_utterance>",
    ];
    const FIM_PRE: &[&str] = &[
        "<|fim_prefix|>",
        "<fim-prefix>",
        "<fim_prefix>",
        "<｜fim▁begin｜>",
        "<PRE>",
        "▁<PRE>",
        "<|code_prefix|>",
        "<|prefix|>",
    ];
    const FIM_SUF: &[&str] = &[
        "<|fim_suffix|>",
        "<fim-suffix>",
        "<fim_suffix>",
        "<｜fim▁hole｜>",
        "<SUF>",
        "▁<SUF>",
        "<|code_suffix|>",
        "<|suffix|>",
    ];
    const FIM_MID: &[&str] = &[
        "<|fim_middle|>",
        "<fim-middle>",
        "<fim_middle>",
        "<｜fim▁end｜>",
        "<MID>",
        "▁<MID>",
        "<|code_middle|>",
        "<|middle|>",
    ];
    const FIM_PAD: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
    const FIM_REP: &[&str] = &["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"];
    const FIM_SEP: &[&str] = &["<|file_sep|>"];
    const EOG: &[&str] = &[
        "<|eot_id|>",
        "<|im_end|>",
        "<|end|>",
        "<|return|>",
        "<|call|>",
        "<|flush|>",
        "<|calls|>",
        "<end_of_turn>",
        "<|endoftext|>",
        "<|eom_id|>",
        "<EOT>",
        "_<EOT>",
        "[EOT]",
        "[EOS]",
        "<|end_of_text|>",
        "<end_of_utterance>",
        "<eos>",
        "<turn|>",
        "<|tool_response>",
        "<｜end▁of▁sentence｜>",
        "[e~[",
    ];

    // llama.cpp walks an unordered map, so which of several matches wins is unspecified there;
    // here the lowest id wins.
    let by_text = |list: &[&str]| list.iter().filter_map(|t| id_of(t)).min();
    let mut control = |id: Option<u32>| {
        if let Some(id) = id {
            attrs[id as usize] |= attr::CONTROL;
        }
    };
    for (slot, list) in [
        (&mut special.eot, EOT),
        (&mut special.eom, &["<|eom_id|>"][..]),
        (&mut special.fim_pre, FIM_PRE),
        (&mut special.fim_suf, FIM_SUF),
        (&mut special.fim_mid, FIM_MID),
        (&mut special.fim_pad, FIM_PAD),
        (&mut special.fim_rep, FIM_REP),
        (&mut special.fim_sep, FIM_SEP),
    ] {
        if slot.is_none() {
            *slot = by_text(list);
            control(*slot);
        }
    }
    for (a, t) in attrs.iter_mut().zip(texts) {
        if *a & attr::CONTROL != 0 && t.contains("unused") {
            *a |= attr::UNUSED;
        }
    }

    let mut eog: Vec<u32> = [special.fim_pad, special.fim_rep, special.fim_sep]
        .into_iter()
        .flatten()
        .collect();
    let closing_s = id_of("</s>").filter(|&id| attrs[id as usize] & attr::CONTROL != 0);
    for id in EOG.iter().filter_map(|t| id_of(t)).chain(closing_s) {
        eog.push(id);
        attrs[id as usize] |= attr::CONTROL;
    }
    // gpt-oss: these structure tokens always render.
    for id in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"]
        .iter()
        .filter_map(|t| id_of(t))
    {
        attrs[id as usize] = attr::USER_DEFINED;
    }
    eog.extend([special.eos, special.eot, special.eom].into_iter().flatten());
    eog.sort_unstable();
    eog.dedup();
    // o200k_harmony and solar-open: with `<|return|>`/`<|call|>` (or `<|calls|>`/`<|flush|>`),
    // `<|end|>` ends a message, not the generation.
    let has = |name: &str| eog.iter().any(|&id| texts[id as usize] == name);
    let end_is_not_eog =
        (has("<|return|>") && has("<|call|>")) || ((has("<|call|>") || has("<|calls|>")) && has("<|flush|>"));
    if end_is_not_eog && let Some(pos) = eog.iter().position(|&id| texts[id as usize] == "<|end|>") {
        attrs[eog[pos] as usize] = attr::USER_DEFINED;
        eog.remove(pos);
    }
    eog
}

/// SentencePiece as BPE (see [`spm`]): byte fallback to `<0xXX>`, spaces as U+2581, and a
/// U+2581 prepended to each run of raw text when `add_space_prefix`.
fn build_spm(
    texts: &[String],
    scores: &[f32],
    vocab: BpeVocab,
    add_space_prefix: bool,
    unk: Option<u32>,
) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let build_err = |e: tokenizers::Error| TokenizerError::Build {
        what: "SentencePiece",
        message: e.to_string(),
    };
    let merges = spm::merges_from_scores(texts, scores, &vocab);
    let mut builder = BPE::builder().vocab_and_merges(vocab, merges).byte_fallback(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(texts[unk as usize].clone());
    }
    let mut tk = tokenizers::Tokenizer::new(builder.build().map_err(build_err)?);
    let mut normalizers: Vec<NormalizerWrapper> = vec![Replace::new(" ", "\u{2581}").map_err(build_err)?.into()];
    if add_space_prefix {
        normalizers.push(Prepend::new("\u{2581}".to_string()).into());
    }
    tk.with_normalizer(Some(NormalizerSequence::new(normalizers)))
        .map_err(build_err)?;
    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new("\u{2581}", " ").map_err(build_err)?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tk.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tk)
}

/// GPT-2 style byte-level BPE with `tokenizer.ggml.merges` and the pre-tokenizer's regexes.
fn build_bpe(md: &Metadata, vocab: BpeVocab, pre: pre::PreTokenizer) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let build_err = |e: tokenizers::Error| TokenizerError::Build {
        what: "BPE",
        message: e.to_string(),
    };
    // llama.cpp splits each merge at its first space after the first byte and keeps the first
    // rank of a repeated pair. A merge whose parts or result are not tokens can never produce
    // a token; the `tokenizers` BPE refuses those, so they are left out.
    let mut seen = std::collections::HashSet::new();
    let mut merges = Vec::new();
    for m in string_array(md, KEY_MERGES)? {
        let Some(pos) = m.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1) else {
            continue;
        };
        let (a, b) = (&m[..pos], &m[pos + 1..]);
        let (Some(&ia), Some(&ib)) = (vocab.get(a), vocab.get(b)) else {
            continue;
        };
        if !vocab.contains_key(&format!("{a}{b}")) || !seen.insert((ia, ib)) {
            continue;
        }
        merges.push((a.to_string(), b.to_string()));
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(pre.ignore_merges)
        .build()
        .map_err(build_err)?;
    let mut tk = tokenizers::Tokenizer::new(bpe);
    let mut steps: Vec<PreTokenizerWrapper> = Vec::new();
    for re in pre.regexes {
        steps.push(
            Split::new(
                SplitPattern::Regex(re.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(build_err)?
            .into(),
        );
    }
    steps.push(ByteLevel::new(false, false, false).into());
    tk.with_pre_tokenizer(Some(PreTokenizerSequence::new(steps)));
    tk.with_decoder(Some(ByteLevel::new(false, false, false)));
    Ok(tk)
}

/// Registers the control and user-defined tokens with the `tokenizers` model as added tokens,
/// matched verbatim in raw text (control and unknown ones as special).
fn register_added_tokens(
    tk: &mut tokenizers::Tokenizer,
    specials: &[(u32, String)],
    attrs: &[u32],
) -> Result<(), TokenizerError> {
    let err = |e: tokenizers::Error| TokenizerError::Build {
        what: "added-token",
        message: e.to_string(),
    };
    let is_special = |id: u32| attrs[id as usize] & (attr::CONTROL | attr::UNKNOWN) != 0;
    let added = |special: bool| {
        specials
            .iter()
            .filter(move |(id, _)| is_special(*id) == special)
            .map(move |(_, t)| AddedToken::from(t.clone(), special).normalized(false))
    };
    tk.add_special_tokens(added(true)).map_err(err)?;
    tk.add_tokens(added(false)).map_err(err)?;
    Ok(())
}
