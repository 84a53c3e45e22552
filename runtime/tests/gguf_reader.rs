//! The GGUF reader and writer on hand-built files: round trips, and every kind of malformed
//! file gives its typed error (never a panic).

use quant::GgmlType;
use runtime::gguf::{GgufArray, GgufError, GgufFile, GgufHeader, GgufValue, GgufWriter, Metadata};

/// Raw little-endian byte builder for files the writer refuses to make.
#[derive(Default)]
struct Raw(Vec<u8>);

impl Raw {
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    fn str(self, s: &str) -> Self {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    /// Header with the given counts.
    fn header(n_tensors: u64, n_kv: u64) -> Self {
        Raw::default().bytes(b"GGUF").u32(3).u64(n_tensors).u64(n_kv)
    }
    /// A tensor info.
    fn tensor(self, name: &str, shape: &[u64], ty: u32, offset: u64) -> Self {
        let mut r = self.str(name).u32(shape.len() as u32);
        for &d in shape {
            r = r.u64(d);
        }
        r.u32(ty).u64(offset)
    }
    /// Pad to 32 and append `n` data bytes.
    fn data(mut self, n: usize) -> Self {
        while !self.0.len().is_multiple_of(32) {
            self.0.push(0);
        }
        self.0.extend(std::iter::repeat_n(0x11u8, n));
        self
    }
}

fn parse(r: Raw) -> Result<GgufHeader, GgufError> {
    GgufHeader::parse(&r.0)
}

/// A small valid file with metadata of every type, including nested arrays, and three tensors.
fn sample_writer() -> GgufWriter<'static> {
    let mut md = Metadata::new();
    md.set("general.architecture", GgufValue::String("llama".into()));
    md.set("t.u8", GgufValue::U8(200));
    md.set("t.i8", GgufValue::I8(-100));
    md.set("t.u16", GgufValue::U16(60000));
    md.set("t.i16", GgufValue::I16(-30000));
    md.set("t.u32", GgufValue::U32(4_000_000_000));
    md.set("t.i32", GgufValue::I32(-2_000_000_000));
    md.set("t.f32", GgufValue::F32(1e-6));
    md.set("t.bool", GgufValue::Bool(true));
    md.set("t.u64", GgufValue::U64(u64::MAX));
    md.set("t.i64", GgufValue::I64(i64::MIN));
    md.set("t.f64", GgufValue::F64(-2.5e300));
    md.set("t.str", GgufValue::String("héllo ✓".into()));
    md.set(
        "t.arr_str",
        GgufValue::Array(GgufArray::String(vec!["a".into(), "".into(), "ü".into()])),
    );
    md.set("t.arr_f32", GgufValue::Array(GgufArray::F32(vec![1.0, -0.5, f32::MAX])));
    md.set("t.arr_bool", GgufValue::Array(GgufArray::Bool(vec![true, false])));
    md.set("t.arr_i64", GgufValue::Array(GgufArray::I64(vec![-1, 2])));
    md.set(
        "t.nested",
        GgufValue::Array(GgufArray::Array(vec![
            GgufArray::U16(vec![1, 2, 3]),
            GgufArray::Array(vec![GgufArray::String(vec!["deep".into()])]),
            GgufArray::empty(runtime::gguf::GgufValueType::U8),
        ])),
    );
    let mut w = GgufWriter::new();
    w.metadata = md;
    w.add_tensor("a.weight", vec![32, 2], GgmlType::Q8_0, vec![7u8; 2 * 34]);
    w.add_tensor("b.weight", vec![5], GgmlType::F32, vec![1u8; 20]);
    w.add_tensor("c.weight", vec![256, 1, 1, 1], GgmlType::Q4_K, vec![3u8; 144]);
    w
}

fn sample_bytes() -> Vec<u8> {
    let mut out = Vec::new();
    sample_writer().write_to(&mut out).unwrap();
    out
}

#[test]
fn write_read_round_trip() {
    let w = sample_writer();
    let bytes = sample_bytes();
    let f = GgufFile::from_bytes(bytes.clone()).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.metadata(), &w.metadata);
    assert_eq!(f.tensors().len(), 3);
    for (t, wt) in f.tensors().iter().zip(&w.tensors) {
        assert_eq!(t.name, wt.name);
        assert_eq!(t.shape, wt.shape);
        assert_eq!(t.ty, wt.ty);
        assert_eq!(t.offset % 32, 0);
        assert_eq!(f.view(t).data, &wt.data[..]);
    }
    // Writing what was read reproduces the bytes exactly.
    let mut again = GgufWriter::new();
    again.metadata = f.metadata().clone();
    for t in f.tensors() {
        again.add_tensor(t.name.clone(), t.shape.clone(), t.ty, f.view(t).data.to_vec());
    }
    let mut out = Vec::new();
    again.write_to(&mut out).unwrap();
    assert_eq!(out, bytes);
}

#[test]
fn custom_alignment_round_trip() {
    let mut w = sample_writer();
    w.metadata.set("general.alignment", GgufValue::U32(64));
    let mut out = Vec::new();
    w.write_to(&mut out).unwrap();
    let f = GgufFile::from_bytes(out).unwrap();
    assert_eq!(f.header().alignment, 64);
    assert_eq!(f.header().data_offset % 64, 0);
    assert!(f.tensors().iter().all(|t| t.offset % 64 == 0));
    assert_eq!(f.tensor("b.weight").unwrap().data, &[1u8; 20][..]);
}

#[test]
fn version_2_is_read() {
    let mut bytes = sample_bytes();
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    assert_eq!(GgufHeader::parse(&bytes).unwrap().version, 2);
}

#[test]
fn typed_views() {
    let f = GgufFile::from_bytes(sample_bytes()).unwrap();
    let v = f.tensor("a.weight").unwrap();
    let blocks = v.blocks::<quant::q8_0::BlockQ8_0>().unwrap();
    assert_eq!(blocks.len(), 2);
    assert_eq!(blocks[1].qs[0], 7);
    assert!(matches!(v.blocks::<f32>(), Err(GgufError::TensorView { .. })));
    assert_eq!(v.row(1).unwrap().len(), 34);
    assert!(v.row(2).is_none());
    assert!(matches!(f.tensor("nope"), Err(GgufError::MissingTensor { .. })));
    let b = f.tensor("b.weight").unwrap().to_f32().unwrap();
    assert_eq!(b[0], f32::from_le_bytes([1, 1, 1, 1]));
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = sample_bytes();
    // The file may end right after the last tensor's data (the trailing padding is optional).
    let h = GgufHeader::parse(&bytes).unwrap();
    let end = h
        .tensors
        .iter()
        .map(|t| h.data_offset + t.offset + t.size)
        .max()
        .unwrap() as usize;
    assert!(GgufHeader::parse(&bytes[..end]).is_ok());
    for len in 0..end {
        match GgufHeader::parse(&bytes[..len]) {
            Err(GgufError::Truncated { .. })
            | Err(GgufError::TensorOutOfBounds { .. })
            | Err(GgufError::AbsurdCount { .. }) => {}
            other => panic!("prefix of {len} bytes: expected a truncation error, got {other:?}"),
        }
    }
}

#[test]
fn bad_magic() {
    let mut b = sample_bytes();
    b[0..4].copy_from_slice(b"GGML");
    let e = GgufHeader::parse(&b).unwrap_err();
    assert!(matches!(e, GgufError::BadMagic { .. }), "{e}");
    assert!(e.to_string().contains("magic \"GGML\" at offset 0"), "{e}");
    // Bytes that are not text are escaped once.
    b[0..4].copy_from_slice(&[b'G', 0x10, 0x7f, 0]);
    let e = GgufHeader::parse(&b).unwrap_err();
    assert!(e.to_string().contains(r#"magic "G\u{10}\u{7f}\0" at offset 0"#), "{e}");
}

#[test]
fn unsupported_versions() {
    for v in [0u32, 1, 4, 99] {
        let mut b = sample_bytes();
        b[4..8].copy_from_slice(&v.to_le_bytes());
        assert!(matches!(GgufHeader::parse(&b), Err(GgufError::UnsupportedVersion { version }) if version == v));
    }
}

#[test]
fn big_endian_file() {
    let mut b = sample_bytes();
    b[4..8].copy_from_slice(&3u32.to_be_bytes());
    assert!(matches!(
        GgufHeader::parse(&b),
        Err(GgufError::BigEndian { version: 3 })
    ));
}

#[test]
fn string_length_past_end() {
    let e = parse(Raw::header(0, 1).u64(1 << 40).bytes(b"key and more")).unwrap_err();
    match e {
        GgufError::Truncated { offset, needed, .. } => {
            assert_eq!(offset, 32);
            assert_eq!(needed, 1 << 40);
        }
        e => panic!("{e:?}"),
    }
    // A value string.
    let e = parse(Raw::header(0, 1).str("k").u32(8).u64(u64::MAX)).unwrap_err();
    assert!(
        matches!(&e, GgufError::Truncated { what, .. } if what.contains("`k`")),
        "{e}"
    );
}

#[test]
fn array_length_past_end() {
    let e = parse(Raw::header(0, 1).str("arr").u32(9).u32(4).u64(u64::MAX / 2)).unwrap_err();
    assert!(
        matches!(
            e,
            GgufError::AbsurdCount {
                what: "array length",
                ..
            }
        ),
        "{e}"
    );
    // Strings need at least 8 bytes each.
    let e = parse(Raw::header(0, 1).str("arr").u32(9).u32(8).u64(3).u64(0).u64(0)).unwrap_err();
    assert!(matches!(e, GgufError::AbsurdCount { .. }), "{e}");
}

#[test]
fn absurd_counts() {
    let e = parse(Raw::header(u64::MAX, 0)).unwrap_err();
    assert!(
        matches!(
            e,
            GgufError::AbsurdCount {
                what: "tensor count",
                ..
            }
        ),
        "{e}"
    );
    let e = parse(Raw::header(0, 1 << 50)).unwrap_err();
    assert!(
        matches!(
            e,
            GgufError::AbsurdCount {
                what: "metadata key/value count",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn unknown_value_type() {
    let e = parse(Raw::header(0, 1).str("k").u32(13).u32(0)).unwrap_err();
    assert!(
        matches!(&e, GgufError::UnknownValueType { type_id: 13, what, .. } if what.contains("`k`")),
        "{e}"
    );
    let e = parse(Raw::header(0, 1).str("k").u32(9).u32(77).u64(0)).unwrap_err();
    assert!(matches!(e, GgufError::UnknownValueType { type_id: 77, .. }), "{e}");
}

#[test]
fn invalid_bool_and_utf8() {
    let e = parse(Raw::header(0, 1).str("k").u32(7).bytes(&[2])).unwrap_err();
    assert!(matches!(e, GgufError::InvalidBool { value: 2, .. }), "{e}");
    let e = parse(Raw::header(0, 1).u64(2).bytes(&[0xff, 0xfe]).u32(4).u32(0)).unwrap_err();
    assert!(matches!(e, GgufError::InvalidUtf8 { offset: 32, .. }), "{e}");
}

#[test]
fn nesting_too_deep() {
    let mut r = Raw::header(0, 1).str("deep").u32(9);
    for _ in 0..20 {
        r = r.u32(9).u64(1);
    }
    let e = parse(r.u32(0).u64(0)).unwrap_err();
    assert!(matches!(e, GgufError::NestingTooDeep { .. }), "{e}");
}

#[test]
fn duplicate_key() {
    let e = parse(Raw::header(0, 2).str("k").u32(4).u32(1).str("k").u32(4).u32(2)).unwrap_err();
    assert!(
        matches!(&e, GgufError::DuplicateKey { key, offset: 41 } if key == "k"),
        "{e}"
    );
}

#[test]
fn bad_alignment() {
    for a in [0u32, 3, 48] {
        let e = parse(Raw::header(0, 1).str("general.alignment").u32(4).u32(a)).unwrap_err();
        assert!(matches!(e, GgufError::BadAlignment { .. }), "{e}");
    }
    let e = parse(Raw::header(0, 1).str("general.alignment").u32(8).str("32")).unwrap_err();
    assert!(matches!(e, GgufError::WrongValueType { .. }), "{e}");
}

#[test]
fn too_many_dims() {
    let e = parse(Raw::header(1, 0).tensor("t", &[1, 1, 1, 1, 1], 0, 0).data(4)).unwrap_err();
    assert!(
        matches!(&e, GgufError::TooManyDims { tensor, n_dims: 5, .. } if tensor == "t"),
        "{e}"
    );
}

#[test]
fn zero_and_overflowing_dims() {
    let e = parse(Raw::header(1, 0).tensor("t", &[4, 0], 0, 0).data(16)).unwrap_err();
    assert!(matches!(e, GgufError::ZeroDim { .. }), "{e}");
    let e = parse(Raw::header(1, 0).tensor("t", &[1 << 32, 1 << 32, 2], 0, 0).data(16)).unwrap_err();
    assert!(matches!(e, GgufError::ShapeOverflow { .. }), "{e}");
    let e = parse(Raw::header(1, 0).tensor("t", &[1 << 62, 2], 0, 0).data(16)).unwrap_err();
    assert!(matches!(e, GgufError::ShapeOverflow { .. }), "{e}");
}

#[test]
fn unknown_ggml_type() {
    for ty in [4u32, 5, 31, 40, 1000] {
        let e = parse(Raw::header(1, 0).tensor("t", &[32], ty, 0).data(64)).unwrap_err();
        assert!(
            matches!(&e, GgufError::UnknownGgmlType { type_id, tensor, .. } if *type_id == ty && tensor == "t"),
            "{e}"
        );
    }
}

#[test]
fn not_a_block_multiple() {
    let e = parse(Raw::header(1, 0).tensor("t", &[33], 8, 0).data(64)).unwrap_err();
    assert!(
        matches!(e, GgufError::NotBlockMultiple { ne0: 33, block: 32, .. }),
        "{e}"
    );
}

#[test]
fn data_out_of_bounds() {
    let e = parse(Raw::header(1, 0).tensor("t", &[8], 0, 0).data(31)).unwrap_err();
    assert!(
        matches!(&e, GgufError::TensorOutOfBounds { tensor, .. } if tensor == "t"),
        "{e}"
    );
    let e = parse(Raw::header(1, 0).tensor("t", &[8], 0, u64::MAX - 31).data(64)).unwrap_err();
    assert!(matches!(e, GgufError::TensorOutOfBounds { .. }), "{e}");
}

#[test]
fn misaligned_offset() {
    let e = parse(Raw::header(1, 0).tensor("t", &[8], 0, 4).data(64)).unwrap_err();
    assert!(
        matches!(
            e,
            GgufError::TensorMisaligned {
                offset: 4,
                alignment: 32,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn overlapping_tensors() {
    let e = parse(
        Raw::header(2, 0)
            .tensor("a", &[16], 0, 0)
            .tensor("b", &[16], 0, 32)
            .data(128),
    )
    .unwrap_err();
    assert!(
        matches!(&e, GgufError::TensorOverlap { first, second, .. } if first == "a" && second == "b"),
        "{e}"
    );
}

#[test]
fn duplicate_tensor() {
    let e = parse(
        Raw::header(2, 0)
            .tensor("a", &[8], 0, 0)
            .tensor("a", &[8], 0, 32)
            .data(64),
    )
    .unwrap_err();
    assert!(
        matches!(&e, GgufError::DuplicateTensor { name, .. } if name == "a"),
        "{e}"
    );
}

#[test]
fn missing_file_and_empty_file() {
    let e = GgufFile::open("/nonexistent/model.gguf").unwrap_err();
    assert!(matches!(e, GgufError::Io { .. }));
    assert!(e.to_string().contains("/nonexistent/model.gguf"));
    let dir = std::env::temp_dir().join(format!("lora-run-empty-{}", std::process::id()));
    std::fs::write(&dir, b"").unwrap();
    let e = GgufFile::open(&dir).unwrap_err();
    std::fs::remove_file(&dir).ok();
    assert!(matches!(e, GgufError::Truncated { offset: 0, .. }), "{e}");
}

#[test]
fn typed_getters() {
    let f = GgufFile::from_bytes(sample_bytes()).unwrap();
    let md = f.metadata();
    assert_eq!(md.get_u64("t.u32").unwrap(), 4_000_000_000);
    assert_eq!(md.get_str("general.architecture").unwrap(), "llama");
    assert!((md.get_f64("t.f32").unwrap() - 1e-6).abs() < 1e-12);
    assert!(md.get_bool("t.bool").unwrap());
    assert!(matches!(md.get_u64("t.i8"), Err(GgufError::WrongValueType { .. })));
    assert!(matches!(md.get_str("t.u8"), Err(GgufError::WrongValueType { .. })));
    assert!(matches!(md.get_u64("absent"), Err(GgufError::MissingKey { .. })));
}

#[test]
fn writer_refuses_bad_tensors() {
    let mut w = GgufWriter::new();
    w.add_tensor("x", vec![32], GgmlType::Q8_0, vec![0u8; 33]);
    assert!(matches!(w.write_to(&mut Vec::new()), Err(GgufError::Write { .. })));
    let mut w = GgufWriter::new();
    w.add_tensor("x", vec![4], GgmlType::F32, vec![0u8; 16]);
    w.add_tensor("x", vec![4], GgmlType::F32, vec![0u8; 16]);
    assert!(matches!(w.write_to(&mut Vec::new()), Err(GgufError::Write { .. })));
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
        /// Random byte edits of a valid file never panic; a file that still parses has every
        /// tensor inside the buffer.
        #[test]
        fn mutated_sample_never_panics(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
                                       cut in any::<prop::sample::Index>(), do_cut in any::<bool>()) {
            let mut b = sample_bytes();
            for (i, v) in edits {
                let i = i.index(b.len());
                b[i] = v;
            }
            if do_cut {
                b.truncate(cut.index(b.len()));
            }
            if let Ok(h) = GgufHeader::parse(&b) {
                for t in &h.tensors {
                    prop_assert!(h.data_offset + t.offset + t.size <= b.len() as u64);
                }
            }
        }
    }
}
