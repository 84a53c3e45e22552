//! Golden tests: the crate against ggml, bit for bit.
//!
//! The files under `tests/golden/` (one JSON per ggml type) are written by
//! `tests/golden/make_golden.py` from two oracles, gguf-py and ggml's own C (`ggml-quants.c`);
//! its header says how to rerun it. They carry every input, so no model file is needed here.
//!
//! * `dequantize_<type>`: every case's bytes dequantize to exactly the oracle's f32 bits (NaN
//!   matches any NaN), from an aligned and from a misaligned buffer.
//! * `quantize_<type>`: the reference quantizer gives exactly ggml's bytes. For a type whose
//!   quantizer this crate does not offer, `UnsupportedType` is accepted (the goldens wait).
//! * `matmul_<type>`: `matvec`, `matmul` and `matmul_at` (every available SIMD level) against
//!   an f64 reference that quantizes the activations to the type's `vec_dot_type` with
//!   [`quant::quantize_row`], dequantizes both sides and dots them.
//! * errors: unsupported types and wrong lengths.

use std::path::PathBuf;

use quant::matmul::matmul_at;
use quant::{GgmlType, QMatrix, QuantError, SimdLevel};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// golden files

fn load(ty: GgmlType) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{}.json", ty.name()));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()));
    assert_eq!(
        v["type"].as_str(),
        Some(ty.name()),
        "{}: wrong type field",
        path.display()
    );
    assert_eq!(
        v["block_size"].as_u64(),
        Some(ty.block_size() as u64),
        "{ty}: block size in the golden file"
    );
    assert_eq!(
        v["type_size"].as_u64(),
        Some(ty.type_size() as u64),
        "{ty}: type size in the golden file"
    );
    v
}

fn hex(s: &Value) -> Vec<u8> {
    let s = s.as_str().expect("hex string");
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    assert!(bytes.len().is_multiple_of(4));
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn cases<'a>(g: &'a Value, key: &str) -> &'a [Value] {
    g[key].as_array().map(|a| a.as_slice()).unwrap_or(&[])
}

fn case_name(c: &Value) -> &str {
    c["case"].as_str().unwrap_or("?")
}

fn same_f32(got: f32, want: f32) -> bool {
    got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan())
}

/// The first mismatch and the number of mismatches, or `None` when all agree.
fn compare_f32(got: &[f32], want: &[f32]) -> Option<(usize, usize)> {
    let bad: Vec<usize> = (0..want.len()).filter(|&i| !same_f32(got[i], want[i])).collect();
    bad.first().map(|&i| (i, bad.len()))
}

fn block_note(c: &Value, block: usize) -> String {
    match c["blocks"]
        .as_array()
        .and_then(|b| b.get(block))
        .and_then(|v| v.as_str())
    {
        Some(s) => format!(" [{s}]"),
        None => String::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// dequantize

fn check_dequantize(ty: GgmlType) {
    let g = load(ty);
    let cs = cases(&g, "dequantize");
    assert!(!cs.is_empty(), "{ty}: no dequantize cases in the golden file");
    let mut failures = Vec::new();
    for c in cs {
        let name = case_name(c);
        let src = hex(&c["src"]);
        let want = f32s(&hex(&c["expected"]));
        let n = c["n"].as_u64().unwrap() as usize;
        assert_eq!(want.len(), n, "{ty} {name}: golden file inconsistent");

        // aligned (a Vec<u8> of blocks) and misaligned by one byte
        let mut shifted = vec![0u8; src.len() + 1];
        shifted[1..].copy_from_slice(&src);
        for (how, bytes) in [("aligned", &src[..]), ("misaligned", &shifted[1..])] {
            let mut got = vec![f32::from_bits(0x7fa5_a5a5); n];
            if let Err(e) = quant::dequantize_row(ty, bytes, &mut got) {
                failures.push(format!("{ty} dequantize '{name}' ({how}): error {e}"));
                continue;
            }
            if let Some((i, count)) = compare_f32(&got, &want) {
                let b = i / ty.block_size();
                failures.push(format!(
                    "{ty} dequantize '{name}' ({how}): {count}/{n} elements differ; first at element {i} \
                     (block {b}{}, index {} in block): got {:e} ({:#010x}), expected {:e} ({:#010x})",
                    block_note(c, b),
                    i % ty.block_size(),
                    got[i],
                    got[i].to_bits(),
                    want[i],
                    want[i].to_bits()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} {ty} dequantize checks failed:\n{}",
        failures.len(),
        2 * cs.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// quantize

/// The types whose reference quantizer this crate provides (`with_quantize_block!`).
const QUANTIZERS: [GgmlType; 11] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q5_0,
    GgmlType::Q8_0,
    GgmlType::Q8_1,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_K,
];

fn check_quantize(ty: GgmlType) {
    let g = load(ty);
    let cs = cases(&g, "quantize");
    assert!(!cs.is_empty(), "{ty}: no quantize cases in the golden file");
    let mut failures = Vec::new();
    for c in cs {
        let name = case_name(c);
        let input = f32s(&hex(&c["input"]));
        let want = hex(&c["expected"]);
        assert_eq!(
            input.len(),
            c["n"].as_u64().unwrap() as usize,
            "{ty} {name}: golden file inconsistent"
        );
        let mut got = vec![0xa5u8; want.len()];
        match quant::quantize_row(ty, &input, &mut got) {
            Err(QuantError::UnsupportedType { .. }) if !QUANTIZERS.contains(&ty) => {
                eprintln!(
                    "{ty}: no quantizer in this crate; {} golden quantize cases not checked",
                    cs.len()
                );
                return;
            }
            Err(e) => {
                failures.push(format!("{ty} quantize '{name}': error {e}"));
                continue;
            }
            Ok(()) => {}
        }
        let bad: Vec<usize> = (0..want.len()).filter(|&i| got[i] != want[i]).collect();
        if let Some(&i) = bad.first() {
            let ts = ty.type_size();
            let b = i / ts;
            let elems = b * ty.block_size()..(b + 1) * ty.block_size();
            let show = |v: &[u8]| {
                v[b * ts..(b + 1) * ts]
                    .iter()
                    .map(|x| format!("{x:02x}"))
                    .collect::<String>()
            };
            failures.push(format!(
                "{ty} quantize '{name}': {} of {} bytes differ; first at byte {i} (block {b}, byte {} in block, \
                 input elements {elems:?}): got {:#04x}, expected {:#04x}\n    got block      {}\n    expected block {}",
                bad.len(),
                want.len(),
                i % ts,
                got[i],
                want[i],
                show(&got),
                show(&want)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} {ty} quantize cases failed:\n{}",
        failures.len(),
        cs.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// matmul

/// splitmix64 with Box-Muller normals: deterministic activations without a rand dependency.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    }
}

fn f16_at(b: &[u8], off: usize) -> f64 {
    half::f16::from_le_bytes([b[off], b[off + 1]]).to_f64()
}

fn check_matmul(ty: GgmlType) {
    let g = load(ty);
    let m = &g["matrix"];
    let n_out = m["n_out"].as_u64().expect("matrix.n_out") as usize;
    let n_in = m["n_in"].as_u64().expect("matrix.n_in") as usize;
    let data = hex(&m["data"]);
    let act_ty = ty.vec_dot_type().expect("a weight type");
    let row_bytes = ty.row_bytes(n_in).unwrap();
    let act_bytes = act_ty.row_bytes(n_in).unwrap();
    let w = QMatrix::new(ty, &data, n_out, n_in).unwrap_or_else(|e| panic!("{ty}: QMatrix::new: {e}"));

    let mut wf = vec![0f32; n_out * n_in];
    for (o, row) in wf.chunks_exact_mut(n_in).enumerate() {
        quant::dequantize_row(ty, &data[o * row_bytes..][..row_bytes], row)
            .unwrap_or_else(|e| panic!("{ty}: dequantize weight row {o}: {e}"));
    }

    // Activations: a few tokens at different scales, one with an outlier.
    let n_tok = 4;
    let mut rng = Rng(0x5eed_0000 + ty.id() as u64);
    let mut x = vec![0f32; n_tok * n_in];
    for (t, xt) in x.chunks_exact_mut(n_in).enumerate() {
        let scale = [1.0f32, 0.01, 30.0, 1.0][t];
        for v in xt.iter_mut() {
            *v = rng.normal() * scale;
        }
        if t == 3 {
            xt[n_in / 3] = 200.0;
        }
    }

    // Reference: quantize activations to vec_dot_type, dequantize both, dot in f64.
    let mut reference = vec![0f64; n_tok * n_out];
    let mut tol = vec![0f64; n_tok * n_out];
    for t in 0..n_tok {
        let xt = &x[t * n_in..][..n_in];
        let mut qa = vec![0u8; act_bytes];
        quant::quantize_row(act_ty, xt, &mut qa)
            .unwrap_or_else(|e| panic!("{ty}: quantize activations to {act_ty}: {e}"));
        let mut xa = vec![0f32; n_in];
        quant::dequantize_row(act_ty, &qa, &mut xa)
            .unwrap_or_else(|e| panic!("{ty}: dequantize {act_ty} activations: {e}"));
        let sum_abs_x: f64 = xa.iter().map(|v| v.abs() as f64).sum();
        for o in 0..n_out {
            let wr = &wf[o * n_in..][..n_in];
            let mut dot = 0f64;
            let mut abs = 0f64;
            let mut wmax = 0f64;
            for (a, b) in wr.iter().zip(&xa) {
                dot += *a as f64 * *b as f64;
                abs += (*a as f64 * *b as f64).abs();
                wmax = wmax.max(a.abs() as f64);
            }
            if act_ty == GgmlType::Q8_1 {
                // ggml's Q4_1/Q5_1 dot adds m_x * s_y with s_y = f16(d_y * sum(q_y)) as stored in
                // the Q8_1 block, not the exact d_y * sum(q_y) that dequantization implies.
                let wrow = &data[o * row_bytes..][..row_bytes];
                for (bw, ba) in wrow.chunks_exact(ty.type_size()).zip(qa.chunks_exact(36)) {
                    let m_x = f16_at(bw, 2);
                    let (d_y, s_y) = (f16_at(ba, 0) as f32, f16_at(ba, 2));
                    let sum_q: i32 = ba[4..36].iter().map(|&q| q as i8 as i32).sum();
                    dot += m_x * (s_y - (d_y * sum_q as f32) as f64);
                }
            }
            // f32 rounding inside the kernels: relative to the size of the terms they add up;
            // with mins (Q4_1, Q5_1, Q2_K, Q4_K, Q5_K) the scaled and the min parts are summed
            // separately, each up to ~max|w| * sum|x|.
            let with_mins = matches!(
                ty,
                GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q2_K | GgmlType::Q4_K | GgmlType::Q5_K
            );
            let scale = if with_mins { abs + 3.0 * wmax * sum_abs_x } else { abs };
            reference[t * n_out + o] = dot;
            tol[t * n_out + o] = 2e-6 * scale + 1e-30;
        }
    }

    let mut failures = Vec::new();
    let mut worst = 0f64; // largest |diff| / tol seen, printed for calibration
    let mut check = |what: &str, t: usize, y: &[f32]| {
        for o in 0..n_out {
            let (r, tl) = (reference[t * n_out + o], tol[t * n_out + o]);
            let err = (y[o] as f64 - r).abs();
            worst = worst.max(err / tl);
            // `!(≤)` so that a NaN result fails too.
            #[allow(clippy::neg_cmp_op_on_partial_ord)]
            if !(err <= tl) {
                failures.push(format!(
                    "{ty} {what}: token {t} output {o}: got {:e}, reference {r:e}, |diff| {err:e} > tol {tl:e}",
                    y[o]
                ));
            }
        }
    };

    // matvec, one token at a time
    for t in 0..n_tok {
        let mut y = vec![f32::NAN; n_out];
        match quant::matvec(&w, &x[t * n_in..][..n_in], &mut y) {
            Ok(()) => check("matvec", t, &y),
            Err(e) => panic!("{ty}: matvec: {e}"),
        }
    }
    // matmul over all tokens, with the detected level and then every available one
    let mut levels = vec![None];
    levels.extend(SimdLevel::available().into_iter().map(Some));
    for level in levels {
        let mut y = vec![f32::NAN; n_tok * n_out];
        let res = match level {
            None => quant::matmul(&w, &x, n_tok, &mut y),
            Some(l) => matmul_at(l, &w, &x, n_tok, &mut y),
        };
        let what = match level {
            None => "matmul".to_string(),
            Some(l) => format!("matmul_at({l:?})"),
        };
        res.unwrap_or_else(|e| panic!("{ty}: {what}: {e}"));
        for t in 0..n_tok {
            check(&what, t, &y[t * n_out..][..n_out]);
        }
    }
    // vec_dot directly, per level, on the first row and token
    let mut qa = vec![0u8; act_bytes];
    quant::quantize_row(act_ty, &x[..n_in], &mut qa).unwrap();
    for l in SimdLevel::available() {
        let d = quant::vec_dot(ty, l, n_in, &data[..row_bytes], &qa)
            .unwrap_or_else(|e| panic!("{ty}: vec_dot({l:?}): {e}"));
        let err = (d as f64 - reference[0]).abs();
        worst = worst.max(err / tol[0]);
        // `!(≤)` so that a NaN result fails too.
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        if !(err <= tol[0]) {
            failures.push(format!(
                "{ty} vec_dot({l:?}): token 0 row 0: got {d:e}, reference {:e}, |diff| {err:e} > tol {:e}",
                reference[0], tol[0]
            ));
        }
    }
    eprintln!("{ty}: matmul worst |diff|/tol = {worst:.3}");
    assert!(
        failures.is_empty(),
        "{} {ty} matmul checks failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// one test per type

macro_rules! golden_tests {
    ($($ty:ident: $deq:ident, $q:ident $(, $mm:ident)?;)*) => {$(
        #[test]
        fn $deq() { check_dequantize(GgmlType::$ty) }
        #[test]
        fn $q() { check_quantize(GgmlType::$ty) }
        $(
        #[test]
        fn $mm() { check_matmul(GgmlType::$ty) }
        )?
    )*};
}

golden_tests! {
    F32: dequantize_f32, quantize_f32, matmul_f32;
    F16: dequantize_f16, quantize_f16, matmul_f16;
    BF16: dequantize_bf16, quantize_bf16, matmul_bf16;
    Q4_0: dequantize_q4_0, quantize_q4_0, matmul_q4_0;
    Q4_1: dequantize_q4_1, quantize_q4_1, matmul_q4_1;
    Q5_0: dequantize_q5_0, quantize_q5_0, matmul_q5_0;
    Q5_1: dequantize_q5_1, quantize_q5_1, matmul_q5_1;
    Q8_0: dequantize_q8_0, quantize_q8_0, matmul_q8_0;
    Q8_1: dequantize_q8_1, quantize_q8_1;
    Q2_K: dequantize_q2_k, quantize_q2_k, matmul_q2_k;
    Q3_K: dequantize_q3_k, quantize_q3_k, matmul_q3_k;
    Q4_K: dequantize_q4_k, quantize_q4_k, matmul_q4_k;
    Q5_K: dequantize_q5_k, quantize_q5_k, matmul_q5_k;
    Q6_K: dequantize_q6_k, quantize_q6_k, matmul_q6_k;
    Q8_K: dequantize_q8_k, quantize_q8_k;
    IQ4_NL: dequantize_iq4_nl, quantize_iq4_nl, matmul_iq4_nl;
    IQ4_XS: dequantize_iq4_xs, quantize_iq4_xs, matmul_iq4_xs;
}

/// Every supported type has a golden file, and every weight type a matrix in it.
#[test]
fn golden_files_cover_every_supported_type() {
    for ty in GgmlType::SUPPORTED {
        let g = load(ty);
        assert!(!cases(&g, "dequantize").is_empty(), "{ty}: no dequantize cases");
        if ty.vec_dot_type().is_some() {
            assert!(g["matrix"].is_object(), "{ty}: no matrix");
        }
        if QUANTIZERS.contains(&ty) {
            assert!(!cases(&g, "quantize").is_empty(), "{ty}: no quantize cases");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// errors

#[test]
fn unsupported_types_are_refused() {
    for ty in GgmlType::ALL.into_iter().filter(|t| !t.is_supported()) {
        // Right sizes, so that only the type is wrong.
        let n = ty.block_size();
        let bytes = vec![0u8; ty.type_size()];
        let mut out = vec![0f32; n];
        match quant::dequantize_row(ty, &bytes, &mut out) {
            Err(QuantError::UnsupportedType { ty: t, .. }) => assert_eq!(t, ty),
            other => panic!("dequantize_row({ty}): expected UnsupportedType, got {other:?}"),
        }
        let src = vec![0f32; n];
        let mut dst = vec![0u8; ty.type_size()];
        match quant::quantize_row(ty, &src, &mut dst) {
            Err(QuantError::UnsupportedType { ty: t, .. }) => assert_eq!(t, ty),
            other => panic!("quantize_row({ty}): expected UnsupportedType, got {other:?}"),
        }
        match quant::vec_dot(ty, SimdLevel::Scalar, n, &bytes, &bytes) {
            Err(QuantError::UnsupportedType { ty: t, .. }) => assert_eq!(t, ty),
            other => panic!("vec_dot({ty}): expected UnsupportedType, got {other:?}"),
        }
        match QMatrix::new(ty, &bytes, 1, n) {
            Err(QuantError::UnsupportedType { ty: t, .. }) => assert_eq!(t, ty),
            other => panic!("QMatrix::new({ty}): expected UnsupportedType, got {other:?}"),
        }
    }
    // IQ2_XXS by name, as the brief has it.
    let mut out = vec![0f32; 256];
    assert!(matches!(
        quant::dequantize_row(GgmlType::IQ2_XXS, &[0u8; 66], &mut out),
        Err(QuantError::UnsupportedType {
            ty: GgmlType::IQ2_XXS,
            ..
        })
    ));
    // Activation-only types are not weight types.
    for ty in [GgmlType::Q8_1, GgmlType::Q8_K] {
        let bytes = vec![0u8; ty.type_size()];
        assert!(
            matches!(
                QMatrix::new(ty, &bytes, 1, ty.block_size()),
                Err(QuantError::UnsupportedType { .. })
            ),
            "QMatrix::new({ty}) should be refused"
        );
        assert!(
            matches!(
                quant::vec_dot(ty, SimdLevel::Scalar, ty.block_size(), &bytes, &bytes),
                Err(QuantError::UnsupportedType { .. })
            ),
            "vec_dot({ty}) should be refused"
        );
    }
}

#[test]
fn wrong_lengths_are_refused() {
    use GgmlType::*;
    for ty in GgmlType::SUPPORTED {
        let (bs, ts) = (ty.block_size(), ty.type_size());
        let n = 2 * bs;
        // byte count off by one
        let mut out = vec![0f32; n];
        match quant::dequantize_row(ty, &vec![0u8; 2 * ts - 1], &mut out) {
            Err(QuantError::LengthMismatch { expected, got, .. }) => {
                assert_eq!((expected, got), (2 * ts, 2 * ts - 1), "{ty}")
            }
            other => panic!("dequantize_row({ty}) short source: expected LengthMismatch, got {other:?}"),
        }
        match quant::dequantize_row(ty, &vec![0u8; 2 * ts + 1], &mut out) {
            Err(QuantError::LengthMismatch { expected, got, .. }) => {
                assert_eq!((expected, got), (2 * ts, 2 * ts + 1), "{ty}")
            }
            other => panic!("dequantize_row({ty}) long source: expected LengthMismatch, got {other:?}"),
        }
        // element count not a whole number of blocks
        if bs > 1 {
            let mut out = vec![0f32; n - 1];
            match quant::dequantize_row(ty, &vec![0u8; 2 * ts], &mut out) {
                Err(QuantError::NotBlockMultiple { ty: t, n: got_n, block }) => {
                    assert_eq!((t, got_n, block), (ty, n - 1, bs))
                }
                other => panic!("dequantize_row({ty}) partial block: expected NotBlockMultiple, got {other:?}"),
            }
            let src = vec![0f32; n + 1];
            let mut dst = vec![0u8; 2 * ts];
            match quant::quantize_row(ty, &src, &mut dst) {
                Err(QuantError::NotBlockMultiple { .. }) => {}
                other => panic!("quantize_row({ty}) partial block: expected NotBlockMultiple, got {other:?}"),
            }
        }
        let src = vec![0f32; n];
        let mut dst = vec![0u8; 2 * ts + 1];
        match quant::quantize_row(ty, &src, &mut dst) {
            Err(QuantError::LengthMismatch { .. }) => {}
            other => panic!("quantize_row({ty}) wrong destination: expected LengthMismatch, got {other:?}"),
        }
        // empty rows are fine
        quant::dequantize_row(ty, &[], &mut []).unwrap_or_else(|e| panic!("dequantize_row({ty}) empty: {e}"));
    }

    // vec_dot: weight or activation row of the wrong size
    let w = vec![0u8; Q4_0.type_size() * 2];
    let a = vec![0u8; Q8_0.type_size() * 2];
    assert!(matches!(
        quant::vec_dot(Q4_0, SimdLevel::Scalar, 64, &w[..35], &a),
        Err(QuantError::LengthMismatch { .. })
    ));
    assert!(matches!(
        quant::vec_dot(Q4_0, SimdLevel::Scalar, 64, &w, &a[..67]),
        Err(QuantError::LengthMismatch { .. })
    ));
    assert!(matches!(
        quant::vec_dot(Q4_0, SimdLevel::Scalar, 48, &w, &a),
        Err(QuantError::NotBlockMultiple { .. })
    ));
    // a K-quant row of 128 elements is half a super-block
    assert!(matches!(
        quant::dequantize_row(Q4_K, &[0u8; 144], &mut [0f32; 128]),
        Err(QuantError::NotBlockMultiple {
            ty: Q4_K,
            n: 128,
            block: 256
        })
    ));

    // QMatrix and the products
    let data = vec![0u8; Q8_0.type_size() * 2 * 3]; // 3 rows of 64
    assert!(matches!(
        QMatrix::new(Q8_0, &data[1..], 3, 64),
        Err(QuantError::LengthMismatch { .. })
    ));
    assert!(matches!(
        QMatrix::new(Q8_0, &data, 4, 64),
        Err(QuantError::LengthMismatch { .. })
    ));
    assert!(matches!(
        QMatrix::new(Q8_0, &data, 3, 48),
        Err(QuantError::NotBlockMultiple { .. })
    ));
    let w = QMatrix::new(Q8_0, &data, 3, 64).unwrap();
    let mut y = vec![0f32; 3];
    assert!(matches!(
        quant::matvec(&w, &[0f32; 63], &mut y),
        Err(QuantError::LengthMismatch { .. })
    ));
    assert!(matches!(
        quant::matvec(&w, &[0f32; 64], &mut [0f32; 2]),
        Err(QuantError::LengthMismatch { .. })
    ));
    assert!(matches!(
        quant::matmul(&w, &[0f32; 128], 2, &mut [0f32; 3]),
        Err(QuantError::LengthMismatch { .. })
    ));
    assert!(matches!(
        quant::matmul(&w, &[0f32; 64], 2, &mut [0f32; 6]),
        Err(QuantError::LengthMismatch { .. })
    ));
    quant::matvec(&w, &[0f32; 64], &mut y).unwrap();
    assert_eq!(y, [0.0; 3]);
}
