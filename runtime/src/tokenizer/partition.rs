//! Special tokens written in a prompt, split out before the model runs: llama.cpp's
//! `tokenizer_st_partition` (llama-vocab.cpp) with `parse_special = true`.
//!
//! llama.cpp takes the control, user-defined and unknown tokens longest text first, and for each
//! one cuts every occurrence out of the pieces of raw text that are left. That is not
//! leftmost-longest matching: a longer token wins wherever it occurs. An Aho-Corasick pass over
//! the prompt finds which of the (thousands of) special tokens occur at all, so only those are
//! searched for.

use std::ops::Range;

use aho_corasick::AhoCorasick;

/// A piece of a prompt: raw text (a byte range of it) or a special token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Fragment {
    Text(Range<usize>),
    Token(u32),
}

/// The special tokens of a vocabulary in llama.cpp's order (text length descending; ties by
/// id, where llama.cpp's unstable sort leaves the order unspecified).
pub(super) struct Partitioner {
    order: Vec<(u32, String)>,
    matcher: Option<AhoCorasick>,
}

impl Partitioner {
    /// `specials`: `(id, text)` of every token to split out. Empty texts are ignored.
    pub fn new(specials: impl IntoIterator<Item = (u32, String)>) -> Self {
        let mut order: Vec<(u32, String)> = specials.into_iter().filter(|(_, t)| !t.is_empty()).collect();
        order.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
        // Patterns are plain strings: building cannot fail short of absurd sizes, in which
        // case every token is searched for directly.
        let matcher = if order.is_empty() {
            None
        } else {
            AhoCorasick::new(order.iter().map(|(_, t)| t)).ok()
        };
        Partitioner { order, matcher }
    }

    /// `text` cut into raw text and special tokens, in order. An empty text gives nothing.
    pub fn split(&self, text: &str) -> Vec<Fragment> {
        if text.is_empty() {
            return Vec::new();
        }
        let mut fragments = vec![Fragment::Text(0..text.len())];
        let present: Vec<usize> = match &self.matcher {
            Some(m) => {
                let mut seen: Vec<usize> = m.find_overlapping_iter(text).map(|m| m.pattern().as_usize()).collect();
                seen.sort_unstable();
                seen.dedup();
                seen
            }
            None => (0..self.order.len()).collect(),
        };
        for index in present {
            let (id, token) = &self.order[index];
            let mut next = Vec::with_capacity(fragments.len() + 2);
            for fragment in fragments {
                let Fragment::Text(range) = fragment else {
                    next.push(fragment);
                    continue;
                };
                let mut start = range.start;
                while let Some(at) = text[start..range.end].find(token.as_str()) {
                    let at = start + at;
                    if at > start {
                        next.push(Fragment::Text(start..at));
                    }
                    next.push(Fragment::Token(*id));
                    start = at + token.len();
                }
                if start < range.end {
                    next.push(Fragment::Text(start..range.end));
                }
            }
            fragments = next;
        }
        fragments
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_token_first_not_leftmost() {
        let p = Partitioner::new([(1, "ab".to_string()), (2, "bcd".to_string())]);
        // llama.cpp cuts "bcd" first, though "ab" starts further left.
        assert_eq!(p.split("abcd"), vec![Fragment::Text(0..1), Fragment::Token(2)]);
        assert_eq!(
            p.split("ab ab"),
            vec![Fragment::Token(1), Fragment::Text(2..3), Fragment::Token(1)]
        );
        assert_eq!(p.split(""), vec![]);
        assert_eq!(p.split("xyz"), vec![Fragment::Text(0..3)]);
    }
}
