//! BPE pre-tokenizers by `tokenizer.ggml.pre`: llama.cpp's regexes (`llm_tokenizer_bpe`,
//! llama-vocab.cpp) and flags (`llama_vocab::impl::load`).
//!
//! llama.cpp applies the regexes of a pre-tokenizer one after the other, each splitting the
//! pieces the previous one left (`unicode_regex_split`, unicode.cpp); a run of text no regex
//! matches stays a piece of its own. A `tokenizers` `Sequence` of `Split(regex, Isolated)` does
//! the same. For `gpt-2` and `llama3` llama.cpp runs hand-written equivalents of the regexes
//! below; for the rest it runs the regex itself.

/// GPT-2's regex (llama.cpp `LLAMA_VOCAB_PRE_TYPE_GPT2`).
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// Llama 3's regex with the case-insensitive group spelled out, as llama.cpp has it.
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's regex: Llama 3's with single digits.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// One BPE pre-tokenizer: the regexes and the flags llama.cpp sets with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PreTokenizer {
    /// The `tokenizer.ggml.pre` group name (the llama.cpp `LLAMA_VOCAB_PRE_TYPE_*`, lower case).
    pub name: &'static str,
    /// Applied in order, each to the pieces of the previous one.
    pub regexes: &'static [&'static str],
    /// A word that is itself a token is not merged (`tokenizer_ignore_merges`).
    pub ignore_merges: bool,
    /// Overrides the BPE default `add_bos = false` (before `tokenizer.ggml.add_bos_token`).
    pub add_bos: bool,
    /// Detokenization removes spaces before punctuation (`clean_spaces`).
    pub clean_spaces: bool,
}

const DEFAULT: PreTokenizer = PreTokenizer {
    name: "default",
    regexes: &[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
    ignore_merges: false,
    add_bos: false,
    clean_spaces: true,
};

/// The `tokenizer.ggml.pre` values this runtime supports, for error messages.
pub(super) const SUPPORTED: &str = "default; gpt-2, phi-2, jina-es, jina-de, gigachat, jina-v2-es, \
jina-v2-de, a.x-4.0, mellum, modern-bert, exaone4, mpt, olmo; llama3, llama-v3, llama-bpe, falcon3, \
falcon-h1, pixtral, midm-2.0, lfm2; dbrx, smaug-bpe; qwen2, deepseek-r1-qwen, kormo, f2llmv2, \
megrez, stablelm2; starcoder, refact, command-r, smollm, codeshell, exaone, minerva-7b";

/// The pre-tokenizer for `tokenizer.ggml.pre = name` (a missing key means `default`, as in
/// llama.cpp), or `None` for one this runtime does not implement.
pub(super) fn lookup(name: &str) -> Option<PreTokenizer> {
    let gpt2 = PreTokenizer {
        name: "gpt-2",
        regexes: &[GPT2],
        ..DEFAULT
    };
    let llama3 = PreTokenizer {
        name: "llama3",
        regexes: &[LLAMA3],
        ignore_merges: true,
        add_bos: true,
        ..DEFAULT
    };
    let qwen2 = PreTokenizer {
        name: "qwen2",
        regexes: &[QWEN2],
        ..DEFAULT
    };
    let starcoder = PreTokenizer {
        name: "starcoder",
        regexes: &[r"\p{N}", GPT2],
        ..DEFAULT
    };
    Some(match name {
        "" | "default" => DEFAULT,
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de" | "a.x-4.0" | "mellum"
        | "modern-bert" | "exaone4" | "mpt" | "olmo" => gpt2,
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2" => llama3,
        // Same regex as llama3, without its ignore_merges/add_bos.
        "dbrx" | "smaug-bpe" => PreTokenizer {
            name: "dbrx",
            regexes: &[LLAMA3],
            ..DEFAULT
        },
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" => PreTokenizer {
            clean_spaces: false,
            ..qwen2
        },
        // llama.cpp maps these to QWEN2 but leaves clean_spaces on.
        "megrez" | "stablelm2" => qwen2,
        "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" => starcoder,
        "command-r" | "smollm" => PreTokenizer {
            clean_spaces: false,
            ..starcoder
        },
        _ => return None,
    })
}
