//! SentencePiece (llama.cpp `llm_tokenizer_spm`) as a BPE merge table.
//!
//! llama.cpp splits a text into characters and repeatedly merges the adjacent pair whose
//! concatenation is a token with the highest score, the leftmost on a tie. A BPE model whose
//! merge list holds, for every token, every split of it into two tokens, ranked by the token's
//! score (highest first), makes the same choices: the pair it merges at each step is the one
//! whose result ranks first, and `tokenizers` also breaks rank ties by position. This is how
//! Hugging Face's `SpmConverter` (SentencePieceExtractor) turns SentencePiece models into BPE.

use rayon::prelude::*;
use tokenizers::models::bpe::Vocab;

/// The merge list for a vocabulary with SentencePiece scores: `(left, right)` pairs of token
/// texts whose concatenation is a token, ordered by that token's score (descending), then its
/// id, then the split position. `texts` and `scores` have one entry per token id; `vocab` maps
/// each text to its id.
pub(super) fn merges_from_scores(texts: &[String], scores: &[f32], vocab: &Vocab) -> Vec<(String, String)> {
    // (score key, token id, byte offset of the split); the key orders f32 scores descending.
    // Read-only lookups over a large vocabulary: split across threads.
    let mut splits: Vec<(u32, u32, u32)> = texts
        .par_iter()
        .enumerate()
        .flat_map_iter(|(id, text)| {
            let key = descending_key(scores[id]);
            text.char_indices()
                .skip(1)
                .filter(|&(k, _)| vocab.contains_key(&text[..k]) && vocab.contains_key(&text[k..]))
                .map(move |(k, _)| (key, id as u32, k as u32))
        })
        .collect();
    splits.par_sort_unstable();
    splits
        .par_iter()
        .map(|&(_, id, k)| {
            let (left, right) = texts[id as usize].split_at(k as usize);
            (left.to_string(), right.to_string())
        })
        .collect()
}

/// A `u32` that sorts like `-score` (IEEE total order, as `f32::total_cmp`).
fn descending_key(score: f32) -> u32 {
    let bits = score.to_bits();
    // Map to an unsigned key ascending with the float, then flip.
    let ascending = if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    };
    !ascending
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_follow_scores() {
        let texts: Vec<String> = ["a", "b", "c", "ab", "bc", "abc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let scores = [0.0, 0.0, 0.0, -2.0, -1.0, -3.0];
        let vocab: Vocab = texts.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let merges = merges_from_scores(&texts, &scores, &vocab);
        let want: Vec<(String, String)> = [("b", "c"), ("a", "b"), ("a", "bc"), ("ab", "c")]
            .iter()
            .map(|(l, r)| (l.to_string(), r.to_string()))
            .collect();
        assert_eq!(merges, want);
    }

    #[test]
    fn descending_key_orders_scores() {
        let scores = [f32::INFINITY, 1.5, 0.0, -0.0, -1.0, -1000.0, f32::NEG_INFINITY];
        let keys: Vec<u32> = scores.iter().map(|&s| descending_key(s)).collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
    }
}
