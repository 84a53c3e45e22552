//! Q8_K: 256 int8 activations with an f32 scale and 16 partial sums (`block_q8_K`, ggml-common.h); the activation format of the K-quants and IQ4_XS.
//!
//! x = d · q. `bsums[j]` is the sum of `qs[16j..16j+16]`; the K-quant dot products use it to
//! apply a sub-block's min (or Q6_K's -32 offset) without touching the quants, so every
//! kernel assumes it is consistent with `qs`, as [`QuantizeRef::quantize_row_ref`] makes it.

use crate::k_quants::common::nearest_int;
use crate::{Block, GgmlType, QK_K, QuantizeRef};

/// `blockQ8_K` (Q8_K, ggml-common.h): 292 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ8_K {
    /// Scale.
    pub d: f32,
    /// Quants.
    pub qs: [i8; 256],
    /// Sum of each group of 16 quants.
    pub bsums: [i16; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_K>() == 292);

impl Block for BlockQ8_K {
    const TYPE: GgmlType = GgmlType::Q8_K;
    const QK: usize = QK_K;

    /// `dequantize_row_q8_K`, ggml-quants.c: `d * q`.
    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
            for (y, &q) in y.iter_mut().zip(b.qs.iter()) {
                *y = b.d * q as f32;
            }
        }
    }
}

impl QuantizeRef for BlockQ8_K {
    /// `quantize_row_q8_K_ref`, ggml-quants.c: the value of largest magnitude `max` maps to
    /// -127 (`iscale = -127/max`), `q = min(127, nearest_int(iscale · x))`, `d = 1/iscale`.
    ///
    /// An all-zero block gets `d = 0` and zero quants; ggml leaves its `bsums` untouched
    /// there, we zero them (the sums of the zero quants), so the output never depends on what
    /// `dst` held before.
    fn quantize_row_ref(src: &[f32], dst: &mut [Self]) {
        for (x, y) in src.chunks_exact(QK_K).zip(dst.iter_mut()) {
            let mut max = 0f32;
            let mut amax = 0f32;
            for &v in x {
                let ax = v.abs();
                if ax > amax {
                    amax = ax;
                    max = v;
                }
            }
            quantize_block(x, (amax != 0.0).then_some(max), y);
        }
    }

    /// [`QuantizeRef::quantize_row_ref`], bit for bit, in a form the compiler vectorizes, and
    /// compiled for AVX2 where the CPU has it.
    fn quantize_row_act(src: &[f32], dst: &mut [Self]) {
        #[cfg(target_arch = "x86_64")]
        if crate::SimdLevel::detect() != crate::SimdLevel::Scalar && crate::SimdLevel::Avx2.is_available() {
            // SAFETY: AVX2, FMA and F16C were detected.
            unsafe { quantize_row_act_avx2(src, dst) };
            return;
        }
        quantize_row_act_body(src, dst)
    }
}

/// [`BlockQ8_K::quantize_row_act`] compiled for AVX2.
///
/// # Safety
/// Requires AVX2 + FMA + F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_row_act_avx2(src: &[f32], dst: &mut [BlockQ8_K]) {
    quantize_row_act_body(src, dst)
}

/// `quantize_row_q8_K_ref` restated: the largest magnitude found in 16 lanes, then the first
/// element that has it (the sequential scan's `max`, sign included), then the same rounding.
#[inline(always)]
fn quantize_row_act_body(src: &[f32], dst: &mut [BlockQ8_K]) {
    for (x, y) in src.chunks_exact(QK_K).zip(dst.iter_mut()) {
        let mut lanes = [0f32; 16];
        for c in x.chunks_exact(16) {
            for (m, &v) in lanes.iter_mut().zip(c) {
                let ax = v.abs();
                *m = if ax > *m { ax } else { *m };
            }
        }
        let amax = lanes.iter().fold(0f32, |m, &v| if v > m { v } else { m });
        let max = x.iter().find(|v| v.abs() == amax).filter(|_| amax != 0.0);
        quantize_block(x, max.copied(), y);
    }
}

/// The rest of `quantize_row_q8_K_ref` for one block once `max` (the first element of the
/// largest magnitude, sign included; `None` when all are zero) is known: the quants, `bsums`
/// and `d`.
#[inline(always)]
fn quantize_block(x: &[f32], max: Option<f32>, y: &mut BlockQ8_K) {
    let Some(max) = max else {
        y.d = 0.0;
        y.qs = [0; QK_K];
        y.bsums = [0; 16];
        return;
    };
    // -127 rather than -128 keeps every quant in -127..=127 (ggml: "We need this change for
    // IQ2_XXS, else the AVX implementation becomes very awkward").
    let iscale = -127.0f32 / max;
    for (q, &v) in y.qs.iter_mut().zip(x) {
        // `y[i].qs[j] = MIN(127, v)`: int -> int8_t keeps the low byte.
        *q = nearest_int(iscale * v).min(127) as i8;
    }
    fill_bsums(y);
    y.d = 1.0 / iscale;
}

/// Recompute `bsums` (the sums of each 16 quants) from `qs`: the quantizers' last step, and a
/// helper for hand-built activation blocks in tests and benchmarks.
pub fn fill_bsums(b: &mut BlockQ8_K) {
    for (s, q) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
        *s = q.iter().map(|&q| q as i16).sum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn quantize(x: &[f32]) -> Vec<BlockQ8_K> {
        let mut out = vec![
            BlockQ8_K {
                d: 1.0,
                qs: [5; QK_K],
                bsums: [7; 16]
            };
            x.len() / QK_K
        ];
        BlockQ8_K::quantize_row_ref(x, &mut out);
        out
    }

    #[test]
    fn zero_block_is_all_zero() {
        let q = quantize(&[0.0; QK_K]);
        assert_eq!(q[0].d, 0.0);
        assert!(q[0].qs.iter().all(|&v| v == 0));
        assert!(q[0].bsums.iter().all(|&v| v == 0));
    }

    #[test]
    fn largest_magnitude_maps_to_minus_127() {
        // iscale = -127/max: the extreme value always lands on -127 and d takes the sign.
        for m in [-3.0f32, 3.0] {
            let mut x = [0.25f32; QK_K];
            x[17] = m;
            let q = quantize(&x);
            assert_eq!(q[0].qs[17], -127);
            assert_eq!(q[0].d, 1.0 / (-127.0f32 / m));
            assert_eq!(q[0].d < 0.0, m > 0.0);
        }
    }

    #[test]
    fn non_finite_input_does_not_panic() {
        let mut x = [1.0f32; QK_K];
        x[3] = f32::NAN;
        x[9] = f32::INFINITY;
        let _ = quantize(&x);
    }

    /// The activation quantizer (both the portable body and the AVX2 build) against the
    /// reference, bit for bit.
    fn act_matches_ref(x: &[f32]) {
        let want = quantize(x);
        type Body = fn(&[f32], &mut [BlockQ8_K]);
        #[allow(unused_mut)] // nothing is added on other architectures
        let mut bodies: Vec<(&str, Body)> = vec![("portable", quantize_row_act_body)];
        #[cfg(target_arch = "x86_64")]
        if crate::SimdLevel::Avx2.is_available() {
            // SAFETY: AVX2 was detected just above.
            bodies.push(("avx2", |x, y| unsafe { quantize_row_act_avx2(x, y) }));
        }
        for (name, f) in bodies {
            let mut got = vec![
                BlockQ8_K {
                    d: 9.0,
                    qs: [3; QK_K],
                    bsums: [1; 16]
                };
                want.len()
            ];
            f(x, &mut got);
            for (g, w) in got.iter().zip(&want) {
                assert!(
                    g.d.to_bits() == w.d.to_bits() && g.qs == w.qs && g.bsums == w.bsums,
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn act_quantizer_matches_ref_on_ties_zeros_and_non_finite_values() {
        // Equal magnitudes of both signs (the first one sets the sign), an all-zero block,
        // NaN and infinities.
        let mut x = vec![0.5f32; QK_K * 5];
        x[40] = -2.0;
        x[41] = 2.0;
        x[QK_K + 7] = 2.0;
        x[QK_K + 200] = -2.0;
        x[2 * QK_K..3 * QK_K].fill(0.0);
        x[3 * QK_K + 5] = f32::NAN;
        x[4 * QK_K + 9] = f32::INFINITY;
        x[4 * QK_K + 10] = f32::NEG_INFINITY;
        act_matches_ref(&x);
    }

    proptest! {
        #[test]
        fn act_quantizer_matches_ref(x in proptest::collection::vec(-100.0f32..100.0, QK_K * 3)) {
            act_matches_ref(&x);
        }

        #[test]
        fn roundtrip_error_is_within_half_a_step(
            x in proptest::collection::vec(-100.0f32..100.0, QK_K * 3)
        ) {
            let q = quantize(&x);
            let mut back = vec![0f32; x.len()];
            BlockQ8_K::dequantize_row(&q, &mut back);
            for (b, (xs, ys)) in q.iter().zip(x.chunks(QK_K).zip(back.chunks(QK_K))) {
                let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
                let step = amax / 127.0;
                for (a, r) in xs.iter().zip(ys) {
                    prop_assert!((a - r).abs() <= 0.5 * step * 1.0001 + 1e-30, "{a} vs {r}");
                }
                for j in 0..16 {
                    let s: i32 = b.qs[16 * j..16 * j + 16].iter().map(|&v| v as i32).sum();
                    prop_assert_eq!(s, b.bsums[j] as i32);
                }
            }
        }
    }
}
