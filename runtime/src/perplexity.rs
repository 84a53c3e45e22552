//! Perplexity by llama.cpp's method (tools/perplexity/perplexity.cpp, `perplexity()`), so the
//! numbers compare: the text is tokenized once (with BOS where the model adds it), cut into
//! chunks of `n_ctx` tokens, each chunk evaluated from an empty cache with its first token
//! replaced by BOS where the model adds BOS, and only the second half of each chunk scored:
//! positions `n_ctx/2 .. n_ctx-1` predict their next token. ppl = exp(mean NLL).

use serde::Serialize;

use crate::engine::{Engine, Error};

/// Result of a perplexity run.
#[derive(Clone, Debug, Serialize)]
pub struct PerplexityResult {
    /// exp of the mean negative log-likelihood over the scored tokens.
    pub ppl: f64,
    /// Tokens scored.
    pub tokens: usize,
    /// Chunks evaluated.
    pub chunks: usize,
    /// Tokens in the whole text.
    pub text_tokens: usize,
    pub n_ctx: usize,
    /// Running estimate after each chunk (as llama.cpp prints `[1]15.2,[2]...`).
    pub running: Vec<f64>,
}

/// Rows of the output head computed at once (bounds memory: rows × n_vocab floats).
const HEAD_ROWS: usize = 16;

/// Perplexity of `text` with chunks of `n_ctx` tokens, at most `max_chunks` of them, with
/// `adapters` (handle, scale) applied on the fly.
///
/// Errors: [`Error::Perplexity`] when the text holds fewer than `2 · n_ctx` tokens (as
/// llama.cpp requires) or `n_ctx < 8`; model errors.
pub fn perplexity(
    engine: &std::sync::Arc<Engine>,
    text: &str,
    n_ctx: usize,
    max_chunks: Option<usize>,
    adapters: &[(crate::lora::AdapterHandle, f32)],
    mut on_chunk: impl FnMut(usize, f64),
) -> Result<PerplexityResult, Error> {
    if max_chunks == Some(0) {
        return Err(Error::Perplexity("--chunks 0 evaluates nothing".into()));
    }
    if n_ctx < 8 {
        return Err(Error::Perplexity(format!(
            "context {n_ctx} is too small (at least 8 tokens)"
        )));
    }
    let tokens = engine.tokenize(text)?;
    if tokens.len() < 2 * n_ctx {
        return Err(Error::Perplexity(format!(
            "the text has {} tokens; at least 2·ctx = {} are needed (a smaller --ctx needs less)",
            tokens.len(),
            2 * n_ctx
        )));
    }
    let mut n_chunk = tokens.len() / n_ctx;
    if let Some(m) = max_chunks {
        n_chunk = n_chunk.min(m);
    }
    let add_bos = engine.tokenizer.adds_bos();
    let bos = engine.tokenizer.bos();
    let model = engine.model();
    let plan = crate::lora::LoraPlan::new(&model, adapters)?;
    let n_embd = model.config.n_embd;
    let first = n_ctx / 2;
    let mut nll = 0f64;
    let mut count = 0usize;
    let mut running = Vec::with_capacity(n_chunk);
    for i in 0..n_chunk {
        let start = i * n_ctx;
        let mut chunk = tokens[start..start + n_ctx].to_vec();
        if add_bos && let Some(b) = bos {
            chunk[0] = b;
        }
        let mut kv = model.new_kv_cache(n_ctx);
        let hidden = model.forward_hidden(&mut kv, &chunk, &plan)?;
        // Score positions first..n_ctx-1, each predicting the next token of the chunk.
        let positions: Vec<usize> = (first..n_ctx - 1).collect();
        for rows in positions.chunks(HEAD_ROWS) {
            let h = &hidden[rows[0] * n_embd..(rows[rows.len() - 1] + 1) * n_embd];
            let logits = model.logits_of(h, &plan)?;
            for (r, &pos) in rows.iter().enumerate() {
                let l = &logits[r * model.config.n_vocab..][..model.config.n_vocab];
                let target = tokens[start + pos + 1] as usize;
                let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum_exp: f64 = l.iter().map(|&v| (v - max).exp() as f64).sum();
                let prob = (l[target] - max).exp() as f64 / sum_exp;
                nll -= prob.ln();
                count += 1;
            }
        }
        let ppl = (nll / count as f64).exp();
        running.push(ppl);
        on_chunk(i, ppl);
    }
    Ok(PerplexityResult {
        ppl: (nll / count as f64).exp(),
        tokens: count,
        chunks: n_chunk,
        text_tokens: tokens.len(),
        n_ctx,
        running,
    })
}
