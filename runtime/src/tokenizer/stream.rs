//! Incremental detokenization for streaming generated text.

use super::Tokenizer;

/// Turns token ids, fed one at a time, into text, returning only whole UTF-8 characters.
///
/// A token may end inside a multi-byte character (byte-fallback `<0xF0>` pieces, byte-level BPE
/// pieces of an emoji): those bytes are held back until the character is complete. Bytes that
/// can never form a character become U+FFFD, exactly as [`String::from_utf8_lossy`] would
/// place them, so the concatenation of every [`push`](Self::push) and [`finish`](Self::finish)
/// equals [`Tokenizer::decode`] of the same ids (or [`Tokenizer::decode_special`] with
/// [`with_special`](Self::with_special)), except for the space clean-up that llama.cpp applies to
/// whole texts of some BPE models (`clean_spaces`; off for SentencePiece and qwen2). That
/// clean-up needs look-ahead; like llama.cpp's own streaming (`token_to_piece` per token) the
/// stream decoder does not apply it.
#[derive(Clone)]
pub struct StreamDecoder {
    tokenizer: Tokenizer,
    special: bool,
    /// Bytes of an incomplete character at the end of what was pushed.
    pending: Vec<u8>,
    /// No token pushed yet (the first piece may lose its leading space, as in `decode`).
    first: bool,
}

impl StreamDecoder {
    /// A decoder for `tokenizer` that hides control tokens, like [`Tokenizer::decode`].
    pub fn new(tokenizer: &Tokenizer) -> StreamDecoder {
        StreamDecoder {
            tokenizer: tokenizer.clone(),
            special: false,
            pending: Vec::new(),
            first: true,
        }
    }

    /// Render control tokens as their text (like [`Tokenizer::decode_special`]) or not.
    pub fn with_special(mut self, special: bool) -> StreamDecoder {
        self.special = special;
        self
    }

    /// Add token `id`; returns the text completed by it (possibly empty). Never splits a
    /// character.
    pub fn push(&mut self, id: u32) -> String {
        let piece = self.tokenizer.piece(id, self.special);
        let piece = if std::mem::take(&mut self.first) {
            self.tokenizer.strip_first_space(piece)
        } else {
            piece
        };
        self.pending.extend_from_slice(piece);
        self.take_complete()
    }

    /// The text still held back (an incomplete character becomes U+FFFD), and a reset: the
    /// decoder can start a new stream.
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        self.first = true;
        rest
    }

    /// Whether bytes of an incomplete character are held back.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Everything in `pending` up to a trailing incomplete character, decoded; invalid bytes
    /// become U+FFFD (one per maximal invalid sequence, as in `from_utf8_lossy`).
    fn take_complete(&mut self) -> String {
        let mut out = String::new();
        let mut start = 0;
        while start < self.pending.len() {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // Valid by construction: `valid_up_to` bytes decode.
                    out.push_str(std::str::from_utf8(&self.pending[start..start + valid]).unwrap_or_default());
                    match e.error_len() {
                        Some(n) => {
                            out.push('\u{FFFD}');
                            start += valid + n;
                        }
                        None => {
                            // An incomplete character at the end: keep it for the next token.
                            start += valid;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }
}
