//! IQ4_NL: 32 4-bit indices into the non-linear table `kvalues_iq4nl` with one f16 scale (`block_iq4_nl`, ggml-common.h).
//!
//! x = d · kvalues_iq4nl[q]. Multiplied against Q8_0 activations (`ggml_vec_dot_iq4_nl_q8_0`).

use half::f16;

use crate::q8_0::BlockQ8_0;
use crate::{Block, GgmlType, SimdLevel, VecDot};

/// Elements per IQ4_NL block (`QK4_NL`).
pub const QK4_NL: usize = 32;

/// The 16 levels a 4-bit IQ4_NL / IQ4_XS index selects (`kvalues_iq4nl`, ggml-common.h).
/// None is −128, which the SIMD kernels rely on (they negate these values).
pub const KVALUES_IQ4NL: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/// `block_iq4_nl` (ggml-common.h): 18 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockIQ4_NL {
    /// Scale.
    pub d: f16,
    /// Nibble indices, laid out as in Q4_0.
    pub qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockIQ4_NL>() == 18);

impl Block for BlockIQ4_NL {
    const TYPE: GgmlType = GgmlType::IQ4_NL;
    const QK: usize = QK4_NL;

    /// `dequantize_row_iq4_nl`, ggml-quants.c: y = d · kvalues_iq4nl[q].
    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK4_NL)) {
            let d = b.d.to_f32();
            let (y0, y1) = y.split_at_mut(QK4_NL / 2);
            for ((y0, y1), &q) in y0.iter_mut().zip(y1.iter_mut()).zip(&b.qs) {
                *y0 = d * KVALUES_IQ4NL[(q & 0x0F) as usize] as f32;
                *y1 = d * KVALUES_IQ4NL[(q >> 4) as usize] as f32;
            }
        }
    }
}

impl VecDot for BlockIQ4_NL {
    type Act = BlockQ8_0;

    fn vec_dot(level: SimdLevel, x: &[Self], y: &[Self::Act]) -> f32 {
        match level {
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 if level.is_available() => unsafe { x86::vec_dot_avx512(x, y) },
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 if level.is_available() => unsafe { x86::vec_dot_avx2(x, y) },
            #[cfg(target_arch = "aarch64")]
            SimdLevel::Neon if level.is_available() => unsafe { neon::vec_dot_neon(x, y) },
            _ => vec_dot_scalar(x, y),
        }
    }

    #[cfg(target_arch = "x86_64")]
    fn vec_dot_residual(level: SimdLevel, x: &[Self], y: &[Self::Act], r: &[Self::Act]) -> f32 {
        crate::residual_avx512_or_each(level, x, y, r, x86::vec_dot_residual_avx512)
    }

    #[cfg(target_arch = "x86_64")]
    const PACK_I8_PAIR: Option<crate::packed::PackPair<Self>> = Some(x86::pack_pair_avx512);
}

/// Scalar reference of `ggml_vec_dot_iq4_nl_q8_0_generic` (ggml-cpu/quants.c): per block an
/// exact integer dot of the table values with the Q8_0 quants, then
/// `sumf += (d_y·d_x)·sumi` in f32.
pub fn vec_dot_scalar(x: &[BlockIQ4_NL], y: &[BlockQ8_0]) -> f32 {
    let mut sumf = 0f32;
    for (bx, by) in x.iter().zip(y) {
        let d = by.d.to_f32() * bx.d.to_f32();
        let mut sumi1 = 0i32;
        let mut sumi2 = 0i32;
        for j in 0..QK4_NL / 2 {
            sumi1 += by.qs[j] as i32 * KVALUES_IQ4NL[(bx.qs[j] & 0x0F) as usize] as i32;
            sumi2 += by.qs[j + QK4_NL / 2] as i32 * KVALUES_IQ4NL[(bx.qs[j] >> 4) as usize] as i32;
        }
        sumf += d * (sumi1 + sumi2) as f32;
    }
    sumf
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::{BlockIQ4_NL, KVALUES_IQ4NL};
    use crate::q8_0::BlockQ8_0;
    use crate::x86_util::*;
    use std::arch::x86_64::*;

    /// One block per step (`ggml_vec_dot_iq4_nl_q8_0`, ggml-cpu/arch/x86/quants.c, AVX2
    /// path): `pshufb` looks the 32 nibbles up in the table.
    ///
    /// The Q8 quants go first into `mul_sum_i8_pairs_float`, which negates its second
    /// operand: no table value is −128 while an arbitrary Q8 quant may be, and
    /// 2·128·127 < 2^15 keeps `maddubs` from saturating, so the integer dot is exact.
    ///
    /// # Safety
    /// Requires AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn vec_dot_avx2(x: &[BlockIQ4_NL], y: &[BlockQ8_0]) -> f32 {
        // SAFETY: the table is 16 readable bytes.
        let values128 = unsafe { _mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i) };
        let values = _mm256_broadcastsi128_si256(values128);
        let mut acc = _mm256_setzero_ps();
        for (bx, by) in x.iter().zip(y) {
            let d = _mm256_set1_ps(fp16_to_f32(by.d) * fp16_to_f32(bx.d));
            // Indices are 0..=15 (top bit clear), so `pshufb` returns a table entry.
            let qx = _mm256_shuffle_epi8(values, bytes_from_nibbles_32(&bx.qs));
            let qy = load_i8_32(&by.qs);
            let q = mul_sum_i8_pairs_float(qy, qx);
            acc = _mm256_fmadd_ps(d, q, acc);
        }
        hsum_float_8(acc)
    }

    /// Two blocks per 512-bit step with VNNI (`vpdpbusd`), the table in every 128-bit lane;
    /// an odd last block goes through the AVX2 kernel.
    ///
    /// # Safety
    /// Requires AVX-512 F/BW/VL/DQ + VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    pub unsafe fn vec_dot_avx512(x: &[BlockIQ4_NL], y: &[BlockQ8_0]) -> f32 {
        // SAFETY: the table is 16 readable bytes.
        let values128 = unsafe { _mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i) };
        let values = _mm512_broadcast_i32x4(values128);
        let mut acc = _mm512_setzero_ps();
        for (xs, ys) in x.chunks_exact(2).zip(y.chunks_exact(2)) {
            let idx = join_256(bytes_from_nibbles_32(&xs[0].qs), bytes_from_nibbles_32(&xs[1].qs));
            let qx = _mm512_shuffle_epi8(values, idx);
            let qy = join_256(load_i8_32(&ys[0].qs), load_i8_32(&ys[1].qs));
            // Q8 first, as in the AVX2 kernel: only the table side is ever negated.
            let q = mul_sum_i8_pairs_float_512(qy, qx);
            let d = scales_2x8(
                fp16_to_f32(ys[0].d) * fp16_to_f32(xs[0].d),
                fp16_to_f32(ys[1].d) * fp16_to_f32(xs[1].d),
            );
            acc = _mm512_fmadd_ps(d, q, acc);
        }
        let mut sum = _mm512_reduce_add_ps(acc);
        let n = x.len().min(y.len());
        if n % 2 == 1 {
            sum += unsafe { vec_dot_avx2(&x[n - 1..n], &y[n - 1..n]) };
        }
        sum
    }

    /// [`super::VecDot::vec_dot_residual`] with VNNI: each pair of weight blocks unpacked as in
    /// [`vec_dot_avx512`], then dotted with the activation pair and the remainder pair
    /// ([`residual_dot_512`]). An odd last block goes through the AVX2 kernel for each.
    ///
    /// # Safety
    /// Requires AVX-512 F/BW/VL/DQ + VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    pub unsafe fn vec_dot_residual_avx512(x: &[BlockIQ4_NL], y: &[BlockQ8_0], r: &[BlockQ8_0]) -> f32 {
        // SAFETY: the table is 16 readable bytes.
        let values = _mm512_broadcast_i32x4(unsafe { _mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i) });
        let unpack = |xs: &[BlockIQ4_NL]| {
            let idx = join_256(bytes_from_nibbles_32(&xs[0].qs), bytes_from_nibbles_32(&xs[1].qs));
            (
                _mm512_shuffle_epi8(values, idx),
                fp16_to_f32(xs[0].d),
                fp16_to_f32(xs[1].d),
            )
        };
        residual_dot_512(x, y, r, unpack, |x, y| unsafe { vec_dot_avx2(x, y) })
    }

    /// Two blocks as [`crate::packed`]'s kernel takes them: their table values as signed bytes.
    ///
    /// # Safety
    /// Requires AVX-512 F/BW/VL/DQ + VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    pub unsafe fn pack_pair_avx512(x0: &BlockIQ4_NL, x1: &BlockIQ4_NL, out: &mut crate::packed::WeightPair) {
        // SAFETY: the table is 16 readable bytes.
        let values = _mm512_broadcast_i32x4(unsafe { _mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i) });
        let idx = join_256(bytes_from_nibbles_32(&x0.qs), bytes_from_nibbles_32(&x1.qs));
        out.set(_mm512_shuffle_epi8(values, idx), fp16_to_f32(x0.d), fp16_to_f32(x1.d));
    }
}

#[cfg(target_arch = "aarch64")]
pub(crate) mod neon {
    use super::{BlockIQ4_NL, KVALUES_IQ4NL};
    use crate::neon_util::*;
    use crate::q8_0::BlockQ8_0;
    use std::arch::aarch64::*;

    /// One block per step (`ggml_vec_dot_iq4_nl_q8_0`, ggml-cpu/arch/arm/quants.c): `tbl`
    /// looks the nibbles up, widening multiplies instead of the dot-product extension.
    ///
    /// # Safety
    /// Requires NEON.
    #[target_feature(enable = "neon")]
    pub unsafe fn vec_dot_neon(x: &[BlockIQ4_NL], y: &[BlockQ8_0]) -> f32 {
        // SAFETY: the table is 16 readable bytes.
        let values = unsafe { vld1q_s8(KVALUES_IQ4NL.as_ptr()) };
        let mut acc = vdupq_n_f32(0.0);
        for (bx, by) in x.iter().zip(y) {
            let (lo, hi) = nibbles_32(&bx.qs);
            let x0 = vqtbl1q_s8(values, lo);
            let x1 = vqtbl1q_s8(values, hi);
            // SAFETY: `by.qs` is 32 readable bytes.
            let y0 = unsafe { vld1q_s8(by.qs.as_ptr()) };
            let y1 = unsafe { vld1q_s8(by.qs.as_ptr().add(16)) };
            let p = vaddq_s32(dot_i8x16(x0, y0), dot_i8x16(x1, y1));
            acc = fmla_i32(acc, p, fp16_to_f32(by.d) * fp16_to_f32(bx.d));
        }
        vaddvq_f32(acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{abs_terms, dequant};
    use proptest::prelude::*;

    fn scale() -> impl Strategy<Value = f16> {
        (-1f32..1.0).prop_map(f16::from_f32)
    }

    fn block() -> impl Strategy<Value = BlockIQ4_NL> {
        (scale(), prop::array::uniform16(any::<u8>())).prop_map(|(d, qs)| BlockIQ4_NL { d, qs })
    }

    fn act() -> impl Strategy<Value = BlockQ8_0> {
        (scale(), prop::array::uniform32(any::<i8>())).prop_map(|(d, qs)| BlockQ8_0 { d, qs })
    }

    fn rows() -> impl Strategy<Value = (Vec<BlockIQ4_NL>, Vec<BlockQ8_0>)> {
        (1usize..=9).prop_flat_map(|n| (prop::collection::vec(block(), n), prop::collection::vec(act(), n)))
    }

    proptest! {
        /// The packed prompt kernel against the per-pair one, for every row and token (an
        /// odd block count included).
        #[cfg(target_arch = "x86_64")]
        #[test]
        fn packed_is_bit_identical((x, y) in rows(), more in prop::collection::vec(prop::collection::vec(block(), 9), 3), extra in prop::collection::vec(prop::collection::vec(act(), 9), 5), nt in 1usize..=6) {
            prop_assert_eq!(crate::packed::check_drawn_rows(&x, &more, &y, &extra, nt), Ok(()));
        }

        #[test]
        fn simd_levels_match_scalar((x, y) in rows()) {
            let want = vec_dot_scalar(&x, &y);
            let tol = 1e-5 * abs_terms(&x, &y) + 1e-30;
            for level in SimdLevel::available() {
                let got = BlockIQ4_NL::vec_dot(level, &x, &y);
                prop_assert!(((got - want) as f64).abs() <= tol, "{level:?}: {got} vs {want}");
            }
        }

        #[test]
        fn scalar_matches_dequantized_dot((x, y) in rows()) {
            let want: f64 = dequant(&x).iter().zip(dequant(&y)).map(|(a, b)| *a as f64 * b as f64).sum();
            let got = vec_dot_scalar(&x, &y) as f64;
            prop_assert!((got - want).abs() <= 1e-5 * abs_terms(&x, &y) + 1e-30, "{got} vs {want}");
        }
    }

    #[test]
    fn dequantize_matches_hand_computed() {
        // Low nibble 0 (−127), high nibble 15 (113).
        let b = BlockIQ4_NL {
            d: f16::from_f32(0.5),
            qs: [0xF0; 16],
        };
        let y = dequant(&[b]);
        assert!(y[..16].iter().all(|&v| v == -63.5));
        assert!(y[16..].iter().all(|&v| v == 56.5));
    }

    #[test]
    fn extreme_activations_are_exact() {
        // −128 activations against the largest-magnitude table values, every level: the
        // integer sums must not wrap or saturate.
        let x = vec![
            BlockIQ4_NL {
                d: f16::ONE,
                qs: [0xF0; 16]
            };
            3
        ];
        let y = vec![
            BlockQ8_0 {
                d: f16::ONE,
                qs: [-128; 32]
            };
            3
        ];
        let want = 3.0 * 16.0 * (-128.0 * -127.0 + -128.0 * 113.0);
        for level in SimdLevel::available() {
            assert_eq!(BlockIQ4_NL::vec_dot(level, &x, &y), want, "{level:?}");
        }
    }

    #[test]
    fn empty_rows() {
        for level in SimdLevel::available() {
            assert_eq!(BlockIQ4_NL::vec_dot(level, &[], &[]), 0.0);
        }
    }
}
