//! Model hyperparameters the forward pass cannot work with are refused at load with a typed
//! error naming the GGUF key (the fixtures' tiny llama's metadata, one key changed at a time).

use std::path::Path;

use runtime::gguf::{GgufFile, GgufValue};
use runtime::model::{Arch, ModelConfig, ModelError};

#[test]
fn bad_head_and_rope_sizes_are_refused() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/tinyllama/tinyllama-a-q8_0.gguf");
    let file = GgufFile::open(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let md = file.metadata();
    let good = ModelConfig::from_metadata(Arch::Llama, md, 151936).unwrap();
    good.validate().unwrap();
    assert_eq!((good.n_head, good.n_head_kv, good.head_dim), (8, 2, 32));
    for (key, value, says) in [
        ("llama.attention.head_count_kv", 3u64, "do not divide 8 query heads"),
        ("llama.attention.head_count_kv", 0, "is 0"),
        ("llama.attention.head_count", 0, "is 0"),
        ("llama.rope.dimension_count", 31, "not an even number"),
        ("llama.rope.dimension_count", 34, "at most the head size 32"),
        ("llama.attention.key_length", 1 << 62, "out of range"),
        ("llama.block_count", 0, "is 0"),
    ] {
        let mut m = md.clone();
        m.set(key, GgufValue::U64(value));
        let err = ModelConfig::from_metadata(Arch::Llama, &m, 151936)
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(
            matches!(&err, ModelError::BadConfig { key: k, message } if k == key && message.contains(says)),
            "{key} = {value}: {err}"
        );
    }
}
