//! Speed measurement in llama-bench's terms (tools/llama-bench): `pp` processes a batch of
//! prompt tokens, `tg` generates tokens one at a time, each on a cache that already holds
//! `depth` tokens (llama-bench's `-d`; 0: an empty cache), filled before the clock starts.
//! Random token ids, best of `reps` runs, tokens per second.

use std::time::Instant;

use crate::engine::{Engine, Error};
use crate::model::Logits;

/// Best-of-reps speeds (0 for a test not run).
#[derive(Clone, Copy, Debug)]
pub struct BenchResult {
    /// Prompt processing, tokens/s.
    pub pp_tps: f64,
    /// Token generation, tokens/s.
    pub tg_tps: f64,
}

/// Measure `n_prompt`-token prompt processing and `n_gen`-token generation, each after
/// `depth` tokens of context.
///
/// Errors: [`Error`] from the forward pass (e.g. `depth + n_prompt` or `depth + n_gen` beyond
/// what the model's context allows).
pub fn bench(
    engine: &std::sync::Arc<Engine>,
    n_prompt: usize,
    n_gen: usize,
    depth: usize,
    reps: usize,
    adapters: &[(crate::lora::AdapterHandle, f32)],
) -> Result<BenchResult, Error> {
    let model = engine.model();
    let plan = crate::lora::LoraPlan::new(&model, adapters)?;
    let n_vocab = model.config.n_vocab as u64;
    // Deterministic pseudo-random ids (xorshift), as llama-bench feeds random tokens.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n_vocab) as u32
    };
    let context: Vec<u32> = (0..depth).map(|_| next()).collect();
    let prompt: Vec<u32> = (0..n_prompt).map(|_| next()).collect();
    let gen_ids: Vec<u32> = (0..n_gen).map(|_| next()).collect();
    // One cache holding the context, filled once (in batches of 512, as llama.cpp's default
    // micro-batch) and cut back to it before each test.
    let mut kv = model.new_kv_cache(depth + n_prompt.max(n_gen) + 1);
    for chunk in context.chunks(512) {
        model.forward_with(&mut kv, chunk, Logits::None, &plan)?;
    }
    let (mut pp_best, mut tg_best) = (0f64, 0f64);
    // One warm-up, then the measured runs.
    for rep in 0..=reps {
        if n_prompt > 0 {
            kv.truncate(depth);
            let t0 = Instant::now();
            model.forward_with(&mut kv, &prompt, Logits::Last, &plan)?;
            let tps = n_prompt as f64 / t0.elapsed().as_secs_f64();
            if rep > 0 {
                pp_best = pp_best.max(tps);
            }
        }
        if n_gen > 0 {
            kv.truncate(depth);
            let t0 = Instant::now();
            for &t in &gen_ids {
                model.decode_with(&mut kv, t, &plan)?;
            }
            let tps = n_gen as f64 / t0.elapsed().as_secs_f64();
            if rep > 0 {
                tg_best = tg_best.max(tps);
            }
        }
    }
    Ok(BenchResult {
        pp_tps: pp_best,
        tg_tps: tg_best,
    })
}
