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

/// A NaN, infinite or non-positive RMS epsilon or rope base, a rope scaling this runtime does
/// not compute, or a negative or NaN scaling factor: refused, naming the key (with a NaN
/// epsilon the 8-bit activations would turn every hidden state into zeros, silently).
#[test]
fn bad_float_hyperparameters_and_rope_scaling_are_refused() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/tinyllama/tinyllama-a-q8_0.gguf");
    let file = GgufFile::open(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let md = file.metadata();
    let eps = "llama.attention.layer_norm_rms_epsilon";
    let base = "llama.rope.freq_base";
    let factor = "llama.rope.scaling.factor";
    let legacy = "llama.rope.scale_linear";
    let positive = "is not a positive number";
    let f = GgufValue::F32;
    let cases = [
        (eps, f(f32::NAN), eps, positive),
        (eps, f(f32::INFINITY), eps, positive),
        (eps, f(-1.0), eps, positive),
        (eps, f(0.0), eps, positive),
        (base, f(f32::NAN), base, positive),
        (base, f(f32::INFINITY), base, positive),
        (base, f(-10000.0), base, positive),
        (base, f(0.0), base, positive),
        (
            "llama.rope.scaling.type",
            GgufValue::String("yarn".into()),
            "llama.rope.scaling.type",
            "`yarn` is not supported",
        ),
        (factor, f(-4.0), factor, "-4 is not a positive number (0: no scaling)"),
        (factor, f(f32::NAN), factor, positive),
        (legacy, f(-2.0), legacy, positive),
    ];
    for (key, value, names, says) in cases {
        let mut m = md.clone();
        m.set(key, value.clone());
        let err = ModelConfig::from_metadata(Arch::Llama, &m, 151936)
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(
            matches!(&err, ModelError::BadConfig { key: k, message } if k == names && message.contains(says)),
            "{key} = {value:?}: {err}"
        );
    }
    // A scaling type that is not a string: the reader's type error, naming the key.
    let mut m = md.clone();
    m.set("llama.rope.scaling.type", GgufValue::U32(1));
    let err = ModelConfig::from_metadata(Arch::Llama, &m, 151936).unwrap_err();
    assert!(err.to_string().contains("llama.rope.scaling.type"), "{err}");
    // As llama.cpp reads them: a factor without a type is linear, the older key counts too,
    // 0 means no scaling, and "none" still takes the factor.
    for (set, scale) in [
        (vec![(factor, f(4.0))], 0.25),
        (vec![(legacy, f(2.0))], 0.5),
        (vec![(factor, f(0.0))], 1.0),
        (
            vec![
                ("llama.rope.scaling.type", GgufValue::String("none".into())),
                (factor, f(8.0)),
            ],
            0.125,
        ),
        (
            vec![("llama.rope.scaling.type", GgufValue::String("linear".into()))],
            1.0,
        ),
    ] {
        let mut m = md.clone();
        for (k, v) in &set {
            m.set(*k, v.clone());
        }
        let c = ModelConfig::from_metadata(Arch::Llama, &m, 151936).unwrap();
        c.validate().unwrap();
        assert_eq!(c.rope_freq_scale, scale, "{set:?}");
    }
}

/// The tiny llama with `edit` applied to the bytes of tensor `name`, loaded from memory.
fn tinyllama_with(name: &str, edit: impl Fn(&mut [u8])) -> Result<runtime::model::Model, ModelError> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/tinyllama/tinyllama-a-q8_0.gguf");
    let f = GgufFile::open(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut w = runtime::gguf::GgufWriter::new();
    w.metadata = f.metadata().clone();
    for t in f.tensors() {
        let mut data = f.view(t).data.to_vec();
        if t.name == name {
            edit(&mut data);
        }
        w.add_tensor(t.name.clone(), t.shape.clone(), t.ty, data);
    }
    let mut bytes = Vec::new();
    w.write_to(&mut bytes).unwrap();
    runtime::model::Model::from_file(std::sync::Arc::new(GgufFile::from_bytes(bytes).unwrap()))
}

/// An output head with a NaN (a Q8_0 block scale of row 5) gives a non-finite logit there,
/// which a single position's logits name rather than hand to a sampler.
#[test]
fn non_finite_logit_is_named() {
    let m = tinyllama_with("output.weight", |d| {
        // Row 5's first block (8 blocks of 34 bytes a row): its f16 scale.
        d[5 * 8 * 34..5 * 8 * 34 + 2].copy_from_slice(&0x7e00u16.to_le_bytes());
    })
    .unwrap();
    let mut kv = m.new_kv_cache(16);
    let err = m
        .forward(&mut kv, &[1, 2, 3], runtime::model::Logits::Last)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the logits are not finite (logit NaN of token id 5): an activation overflowed, or a weight is not finite"
    );
}

/// A norm weight holding NaN is refused at load, naming the tensor and the element (it would
/// otherwise make every activation NaN, which the 8-bit activations used to hide).
#[test]
fn non_finite_norm_weight_is_refused() {
    let err = tinyllama_with("blk.1.ffn_norm.weight", |d| {
        d[4 * 5..4 * 6].copy_from_slice(&f32::NAN.to_le_bytes())
    })
    .unwrap_err();
    assert!(
        matches!(&err, ModelError::NonFiniteTensor { name, index: 5, .. } if name == "blk.1.ffn_norm.weight"),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "tensor `blk.1.ffn_norm.weight` holds a value that is not finite (NaN at index 5)"
    );
}
