//! Token pieces and detokenization: llama.cpp's `token_to_piece` and `detokenize`
//! (llama-vocab.cpp).

/// `llama_token_attr` bits (llama.h). A token's attributes come from its GGUF token type and
/// from llama.cpp's by-text fix-ups at load time.
pub(super) mod attr {
    pub const UNDEFINED: u32 = 0;
    pub const UNKNOWN: u32 = 1 << 0;
    pub const UNUSED: u32 = 1 << 1;
    pub const NORMAL: u32 = 1 << 2;
    pub const CONTROL: u32 = 1 << 3;
    pub const USER_DEFINED: u32 = 1 << 4;
    pub const BYTE: u32 = 1 << 5;

    /// The attribute of a GGUF `tokenizer.ggml.token_type` value (`llama_token_type`).
    pub fn from_token_type(t: i64) -> u32 {
        match t {
            1 => NORMAL,
            2 => UNKNOWN,
            3 => CONTROL,
            4 => USER_DEFINED,
            5 => UNUSED,
            6 => BYTE,
            _ => UNDEFINED,
        }
    }
}

/// How a normal token's text maps to bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PieceStyle {
    /// SentencePiece: U+2581 stands for a space.
    Spm,
    /// GPT-2 byte-level BPE: each character stands for one byte (`bytes_to_unicode`).
    ByteLevel,
}

/// Every token's piece, as llama.cpp's `token_to_piece(special = true)` gives it, packed in one
/// buffer; plus which pieces `special = false` hides (control and unknown tokens).
pub(super) struct Pieces {
    bytes: Vec<u8>,
    /// `offsets[id]..offsets[id + 1]` is token `id`'s piece.
    offsets: Vec<usize>,
    hidden: Vec<bool>,
}

impl Pieces {
    pub fn new(texts: &[String], attrs: &[u32], style: PieceStyle) -> Pieces {
        let byte_decoder = byte_level_decoder();
        let mut bytes = Vec::with_capacity(texts.iter().map(String::len).sum());
        let mut offsets = Vec::with_capacity(texts.len() + 1);
        offsets.push(0);
        for (text, &a) in texts.iter().zip(attrs) {
            if a & (attr::UNKNOWN | attr::CONTROL | attr::USER_DEFINED) != 0 {
                bytes.extend_from_slice(text.as_bytes());
            } else if a & attr::NORMAL != 0 {
                match style {
                    PieceStyle::Spm => bytes.extend_from_slice(text.replace('\u{2581}', " ").as_bytes()),
                    PieceStyle::ByteLevel => decode_byte_level(text, &byte_decoder, &mut bytes),
                }
            } else if a & attr::BYTE != 0 {
                // `<0xXX>`: llama.cpp's `token_to_byte` reads the two hex digits.
                match text.get(3..5).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => bytes.push(b),
                    None => bytes.extend_from_slice(text.as_bytes()),
                }
            }
            // Unused and undefined tokens print nothing.
            offsets.push(bytes.len());
        }
        let hidden = attrs.iter().map(|a| a & (attr::UNKNOWN | attr::CONTROL) != 0).collect();
        Pieces { bytes, offsets, hidden }
    }

    /// Token `id`'s piece; with `special == false`, control and unknown tokens give nothing.
    /// Ids outside the vocabulary give nothing.
    pub fn get(&self, id: u32, special: bool) -> &[u8] {
        let i = id as usize;
        if i + 1 >= self.offsets.len() || (!special && self.hidden[i]) {
            return &[];
        }
        &self.bytes[self.offsets[i]..self.offsets[i + 1]]
    }
}

/// GPT-2's `bytes_to_unicode` (llama.cpp `unicode_byte_to_utf8_map`), reversed: the byte each
/// of the 256 characters stands for, indexed by code point (all are below U+0144).
fn byte_level_decoder() -> [Option<u8>; 324] {
    let mut map = [None; 324];
    let mut n = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
        let cp = if printable {
            b as u32
        } else {
            n += 1;
            255 + n
        };
        map[cp as usize] = Some(b);
    }
    map
}

/// llama.cpp's `llama_decode_text`: each character of a byte-level token becomes its byte; a
/// character outside the map is written as `[UNK_BYTE_0x..<text>]`, as llama.cpp does.
fn decode_byte_level(text: &str, map: &[Option<u8>; 324], out: &mut Vec<u8>) {
    for c in text.chars() {
        match map.get(c as usize).copied().flatten() {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text.as_bytes());
                out.push(b']');
            }
        }
    }
}

/// llama.cpp's `clean_spaces` pass of `detokenize`, ported literally (in place, on bytes):
/// drop a space before `?!.,`, drop the spaces around a lone `'`, and drop the space before the
/// contractions `'s 'm 're 've`.
pub(super) fn clean_spaces(text: &mut Vec<u8>) {
    // first pass: " ?", " !", " .", " ,"
    let total1 = text.len();
    let mut total = usize::from(total1 > 0);
    for i in 1..total1 {
        let x = text[i];
        if text[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            total -= 1;
        }
        text[total] = x;
        total += 1;
    }
    // second pass: strip a single apostrophe between spaces, " ' "
    let total2 = total;
    total = usize::from(total2 > 0);
    let mut i = 1;
    while i < total2 {
        let x = text[i];
        if x == b'\'' && i + 1 < total2 && text[i - 1] == b' ' && text[i + 1] == b' ' {
            total -= 1;
            i += 1;
            text[i] = 0;
        }
        text[total] = x;
        total += 1;
        i += 1;
    }
    // third pass: " 's", " 'm", " 're", " 've"
    let total3 = total;
    total = usize::from(total3 > 0);
    for i in 1..total3 {
        let x = text[i];
        if text[i - 1] == b' ' && x == b'\'' && i + 1 < total3 {
            let x1 = text[i + 1];
            if x1 == b's' || x1 == b'm' {
                total -= 1;
            } else if x1 != b't' && x1 != b'd' && i + 2 < total3 {
                let x2 = text[i + 2];
                if matches!((x1, x2), (b'r' | b'v', b'e')) {
                    total -= 1;
                }
            }
        }
        text[total] = x;
        total += 1;
    }
    text.truncate(total);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_map_is_gpt2() {
        let map = byte_level_decoder();
        assert_eq!(map['A' as usize], Some(b'A'));
        assert_eq!(map['\u{120}' as usize], Some(b' ')); // 'Ġ'
        assert_eq!(map['\u{10A}' as usize], Some(b'\n')); // 'Ċ'
        assert_eq!(map.iter().flatten().count(), 256);
    }

    #[test]
    fn clean_spaces_like_llama_cpp() {
        let clean = |s: &str| {
            let mut v = s.as_bytes().to_vec();
            clean_spaces(&mut v);
            String::from_utf8(v).unwrap()
        };
        assert_eq!(clean("Hello , world !"), "Hello, world!");
        assert_eq!(clean("it ' s"), "it's");
        assert_eq!(clean("he 's and we 're but don 't"), "he's and we're but don 't");
        assert_eq!(clean(""), "");
    }
}
