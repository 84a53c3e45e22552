//! Token sampling as llama.cpp's default chain does it (common/sampling.cpp,
//! src/llama-sampling.cpp): repetition penalty → top-k → top-p → min-p → temperature →
//! draw; temperature ≤ 0 is greedy (argmax).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Sampling settings. The defaults are llama.cpp's.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingOptions {
    /// Temperature; ≤ 0 picks the most likely token (greedy).
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `top_p` (1: all).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` × the most likely one (0: none).
    pub min_p: f32,
    /// Divide positive logits by (multiply negative ones by) this for tokens seen in the last
    /// `repeat_last_n` tokens (1: off) — llama.cpp's `penalty_repeat`.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    /// RNG seed; the same seed gives the same output.
    pub seed: u64,
}

impl Default for SamplingOptions {
    fn default() -> Self {
        SamplingOptions {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplingOptions {
    /// Check the values: temperature, top-p, min-p and the penalty finite, top-p and min-p in
    /// [0, 1], the penalty positive. (Temperature ≤ 0 is greedy, as in llama.cpp.)
    ///
    /// Errors: a message naming the option.
    pub fn validate(&self) -> Result<(), String> {
        if !self.temperature.is_finite() {
            return Err(format!("temperature {} is not a finite number", self.temperature));
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return Err(format!("top-p {} is outside [0, 1]", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(format!("min-p {} is outside [0, 1]", self.min_p));
        }
        if !(self.repeat_penalty.is_finite() && self.repeat_penalty > 0.0) {
            return Err(format!(
                "repeat penalty {} must be a positive number",
                self.repeat_penalty
            ));
        }
        Ok(())
    }

    /// Greedy decoding.
    pub fn greedy() -> Self {
        SamplingOptions {
            temperature: 0.0,
            ..Default::default()
        }
    }
}

/// A sampler with its RNG state.
#[derive(Clone, Debug)]
pub struct Sampler {
    opts: SamplingOptions,
    rng: StdRng,
}

/// Index of the largest value (the first on ties, as llama.cpp's greedy sampler).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Ids of the `k` largest logits, largest first (lower id first on ties).
pub fn top_k(logits: &[f32], k: usize) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    idx.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

impl Sampler {
    /// A sampler seeded with `opts.seed`.
    pub fn new(opts: SamplingOptions) -> Sampler {
        let rng = StdRng::seed_from_u64(opts.seed);
        Sampler { opts, rng }
    }

    /// The options.
    pub fn options(&self) -> &SamplingOptions {
        &self.opts
    }

    /// Pick the next token from `logits` (`[n_vocab]`), given the tokens so far in `history`.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let o = &self.opts;
        let mut logits = logits.to_vec();
        if o.repeat_penalty != 1.0 && o.repeat_last_n > 0 {
            let start = history.len().saturating_sub(o.repeat_last_n);
            let mut seen = std::collections::HashSet::new();
            for &t in &history[start..] {
                if seen.insert(t)
                    && let Some(l) = logits.get_mut(t as usize)
                {
                    *l = if *l <= 0.0 {
                        *l * o.repeat_penalty
                    } else {
                        *l / o.repeat_penalty
                    };
                }
            }
        }
        if o.temperature <= 0.0 {
            return argmax(&logits);
        }
        // Candidates sorted by logit, descending.
        let mut cand: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).collect();
        let k = if o.top_k == 0 {
            cand.len()
        } else {
            o.top_k.min(cand.len())
        };
        if k < cand.len() {
            cand.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
            cand.truncate(k);
        }
        cand.sort_by(|a, b| b.1.total_cmp(&a.1));
        // top-p over the softmax of the remaining candidates.
        if o.top_p < 1.0 {
            let p = softmax_probs(&cand);
            let mut cum = 0.0;
            let mut keep = cand.len();
            for (i, pi) in p.iter().enumerate() {
                cum += pi;
                if cum >= o.top_p {
                    keep = i + 1;
                    break;
                }
            }
            cand.truncate(keep.max(1));
        }
        // min-p: keep logits within ln(min_p) of the best.
        if o.min_p > 0.0 && !cand.is_empty() {
            let threshold = cand[0].1 + o.min_p.ln();
            let n = cand.iter().take_while(|c| c.1 >= threshold).count();
            cand.truncate(n.max(1));
        }
        for c in cand.iter_mut() {
            c.1 /= o.temperature;
        }
        let p = softmax_probs(&cand);
        let r: f64 = self.rng.random::<f64>();
        let mut cum = 0.0f64;
        for (c, pi) in cand.iter().zip(&p) {
            cum += *pi as f64;
            if r < cum {
                return c.0;
            }
        }
        cand.last().map(|c| c.0).unwrap_or(0)
    }
}

fn softmax_probs(cand: &[(u32, f32)]) -> Vec<f32> {
    let max = cand.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = cand.iter().map(|c| (c.1 - max).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_argmax_first_on_ties() {
        let mut s = Sampler::new(SamplingOptions::greedy());
        assert_eq!(s.sample(&[0.0, 3.0, 1.0, 3.0], &[]), 1);
    }

    #[test]
    fn repeat_penalty_changes_greedy_choice() {
        let o = SamplingOptions {
            repeat_penalty: 2.0,
            ..SamplingOptions::greedy()
        };
        let mut s = Sampler::new(o);
        assert_eq!(s.sample(&[0.0, 3.0, 2.0], &[1]), 2);
        assert_eq!(s.sample(&[-1.0, -3.0, -1.5], &[0]), 2);
    }

    #[test]
    fn same_seed_same_draws_and_filters_apply() {
        let logits: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin() * 3.0).collect();
        let o = SamplingOptions {
            temperature: 1.0,
            top_k: 5,
            top_p: 1.0,
            min_p: 0.0,
            seed: 42,
            ..Default::default()
        };
        let a: Vec<u32> = {
            let mut s = Sampler::new(o.clone());
            (0..50).map(|_| s.sample(&logits, &[])).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(o.clone());
            (0..50).map(|_| s.sample(&logits, &[])).collect()
        };
        assert_eq!(a, b);
        let mut idx: Vec<u32> = (0..100).collect();
        idx.sort_by(|&x, &y| logits[y as usize].total_cmp(&logits[x as usize]));
        assert!(a.iter().all(|t| idx[..5].contains(t)), "top-k 5 respected");
        assert!(
            a.iter().collect::<std::collections::HashSet<_>>().len() > 1,
            "it samples"
        );
        // min-p 0.5 keeps only tokens within ln 2 of the best: here only the best.
        let mut peaked = logits.clone();
        peaked[idx[0] as usize] += 1.0;
        let mut s = Sampler::new(SamplingOptions {
            temperature: 1.0,
            min_p: 0.5,
            ..o
        });
        assert!((0..20).all(|_| s.sample(&peaked, &[]) == idx[0]));
    }
}
