//! The GGUF reader and writer on the two real models.

use std::io::Write;

use lora_run_tests::{GEMMA, QWEN, model};
use quant::GgmlType;
use runtime::gguf::{GgufFile, GgufHeader, GgufValue, GgufWriter};

/// Compares everything written against the original bytes, without holding a copy.
struct CompareWriter<'a> {
    expected: &'a [u8],
    pos: usize,
}

impl Write for CompareWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let end = self.pos + buf.len();
        assert!(
            end <= self.expected.len(),
            "writer output longer than the original ({end} bytes)"
        );
        if &self.expected[self.pos..end] != buf {
            let i = buf
                .iter()
                .zip(&self.expected[self.pos..end])
                .position(|(a, b)| a != b)
                .unwrap();
            panic!("writer output differs from the original at byte {}", self.pos + i);
        }
        self.pos = end;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn rewrite_is_identical(name: &str) {
    let f = GgufFile::open(model(name)).unwrap();
    let mut w = GgufWriter::new();
    w.metadata = f.metadata().clone();
    for t in f.tensors() {
        w.add_tensor(t.name.clone(), t.shape.clone(), t.ty, f.view(t).data);
    }
    let mut cmp = CompareWriter {
        expected: f.bytes(),
        pos: 0,
    };
    let n = w.write_to(&mut cmp).unwrap();
    assert_eq!(n as usize, f.bytes().len(), "{name}: rewritten size");
}

#[test]
fn gemma_rewrites_byte_for_byte() {
    rewrite_is_identical(GEMMA);
}

#[test]
fn qwen_rewrites_byte_for_byte() {
    rewrite_is_identical(QWEN);
}

#[test]
fn gemma_header_facts() {
    let f = GgufFile::open(model(GEMMA)).unwrap();
    let md = f.metadata();
    assert_eq!(f.version(), 3);
    assert_eq!(f.tensors().len(), 236);
    assert_eq!(md.get_str("general.architecture").unwrap(), "gemma3");
    assert_eq!(md.get_u64("gemma3.block_count").unwrap(), 18);
    assert_eq!(md.get_u64("gemma3.embedding_length").unwrap(), 640);
    assert_eq!(md.get_u64("gemma3.attention.sliding_window").unwrap(), 512);
    assert_eq!(md.get_f64("gemma3.rope.freq_base").unwrap(), 1e6);
    assert_eq!(md.get_array("tokenizer.ggml.tokens").unwrap().len(), 262_144);
    assert_eq!(md.get_array("tokenizer.ggml.scores").unwrap().len(), 262_144);
    let emb = f.tensor("token_embd.weight").unwrap();
    assert_eq!(emb.info.ty, GgmlType::Q8_0);
    assert_eq!(emb.info.shape, vec![640, 262_144]);
    // Zero-copy typed view over the map.
    let blocks = emb.blocks::<quant::q8_0::BlockQ8_0>().unwrap();
    assert_eq!(blocks.len(), 640 / 32 * 262_144);
    assert_eq!(blocks.as_ptr() as usize, emb.data.as_ptr() as usize);
    assert!(
        f.tensor("output.weight").is_err(),
        "gemma3's head is tied to token_embd"
    );
}

#[test]
fn qwen_header_facts() {
    let f = GgufFile::open(model(QWEN)).unwrap();
    let md = f.metadata();
    assert_eq!(f.tensors().len(), 291);
    assert_eq!(md.get_str("general.architecture").unwrap(), "qwen2");
    assert_eq!(md.get_u64("qwen2.block_count").unwrap(), 24);
    assert_eq!(md.get_u64("qwen2.attention.head_count_kv").unwrap(), 2);
    assert_eq!(md.get_array("tokenizer.ggml.merges").unwrap().len(), 151_387);
    assert_eq!(md.get_u64("tokenizer.ggml.eos_token_id").unwrap(), 151_645);
    assert!(matches!(md.get("tokenizer.chat_template"), Some(GgufValue::String(_))));
    assert_eq!(f.tensor("blk.0.attn_q.bias").unwrap().info.ty, GgmlType::F32);
    assert_eq!(f.tensor("output.weight").unwrap().info.ty, GgmlType::Q8_0);
}

mod props {
    use super::*;
    use proptest::prelude::*;
    use std::sync::OnceLock;

    /// The real qwen2 header (metadata + tensor infos) with only the first 64 KiB of data.
    fn qwen_prefix() -> &'static (Vec<u8>, u64) {
        static P: OnceLock<(Vec<u8>, u64)> = OnceLock::new();
        P.get_or_init(|| {
            let f = GgufFile::open(model(QWEN)).unwrap();
            let d = f.header().data_offset;
            (f.bytes()[..d as usize + 65536].to_vec(), d)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
        /// Byte edits anywhere in a real header (biased to its start and its tensor infos, where
        /// the structure is) never panic, and whatever still parses stays inside the buffer.
        #[test]
        fn mutated_real_header_never_panics(
            edits in proptest::collection::vec((0u8..3, any::<prop::sample::Index>(), any::<u8>()), 1..6),
        ) {
            let (prefix, data_offset) = qwen_prefix();
            let mut b = prefix.clone();
            let infos_len = 291 * 40;
            for (zone, i, v) in edits {
                let pos = match zone {
                    0 => i.index(64),
                    1 => *data_offset as usize - 1 - i.index(infos_len),
                    _ => i.index(b.len()),
                };
                b[pos] = v;
            }
            if let Ok(h) = GgufHeader::parse(&b) {
                for t in &h.tensors {
                    prop_assert!(h.data_offset + t.offset + t.size <= b.len() as u64);
                }
            }
        }
    }
}
