//! Q4_0: 32 4-bit weights with one f16 scale: x = d·(q − 8) (`block_q4_0`, ggml-common.h).
//!
//! Multiplied against Q8_0 activations (`ggml_vec_dot_q4_0_q8_0`).

use half::f16;

use crate::q8_0::BlockQ8_0;
use crate::{Block, GgmlType, QuantizeRef, SimdLevel, VecDot};

/// Elements per Q4_0 block (`QK4_0`).
pub const QK4_0: usize = 32;

/// `block_q4_0` (ggml-common.h): 18 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ4_0 {
    /// Scale.
    pub d: f16,
    /// Nibbles: element j in the low nibble of qs[j], element j+16 in the high nibble.
    pub qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);

impl Block for BlockQ4_0 {
    const TYPE: GgmlType = GgmlType::Q4_0;
    const QK: usize = QK4_0;

    /// `dequantize_row_q4_0`, ggml-quants.c: y = (q − 8)·d.
    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK4_0)) {
            let d = b.d.to_f32();
            let (y0, y1) = y.split_at_mut(QK4_0 / 2);
            for ((y0, y1), &q) in y0.iter_mut().zip(y1.iter_mut()).zip(&b.qs) {
                *y0 = ((q & 0x0F) as i32 - 8) as f32 * d;
                *y1 = ((q >> 4) as i32 - 8) as f32 * d;
            }
        }
    }
}

impl QuantizeRef for BlockQ4_0 {
    /// `quantize_row_q4_0_ref`, ggml-quants.c: d = max / −8 where max is the element of
    /// largest magnitude (the first one on ties), q = MIN(15, (int8_t)(x/d + 8.5)).
    fn quantize_row_ref(src: &[f32], dst: &mut [Self]) {
        for (x, b) in src.chunks_exact(QK4_0).zip(dst.iter_mut()) {
            let mut amax = 0f32;
            let mut max = 0f32;
            for &v in x {
                // Strict `<`: the first element reaching the largest |v| wins, as in the C.
                if amax < v.abs() {
                    amax = v.abs();
                    max = v;
                }
            }
            // Dividing the signed max by −8 maps it to q = 0 (x = −8·d), using the full
            // −8..=7 range on the side of the largest magnitude.
            let d = max / -8.0;
            // `d ? 1.0f/d : 0.0f`: NaN is truthy in C and `!= 0.0` in Rust alike.
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            b.d = f16::from_f32(d);
            for j in 0..QK4_0 / 2 {
                let x0 = x[j] * id;
                let x1 = x[QK4_0 / 2 + j] * id;
                b.qs[j] = nibble(x0) | (nibble(x1) << 4);
            }
        }
    }
}

/// `(uint8_t)MIN(15, (int8_t)(v + 8.5f))`: truncation toward zero, then the int8 → uint8
/// wrap of the C. For finite input v ∈ [−8, 8], so the (otherwise undefined in C) float →
/// int8 conversion is in range and Rust's saturating `as i8` agrees.
#[inline]
fn nibble(v: f32) -> u8 {
    15i32.min((v + 8.5) as i8 as i32) as u8
}

impl VecDot for BlockQ4_0 {
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

    #[cfg(target_arch = "x86_64")]
    const PACK_U8_BLOCK: Option<crate::packed::PackBlock<Self>> = Some((x86::pack_block_avx2, 8));
}

/// Scalar reference of `ggml_vec_dot_q4_0_q8_0_generic` (ggml-cpu/quants.c): per block an
/// exact integer dot of (q − 8) with the Q8_0 quants, then `sumf += sumi·d_x·d_y` in f32,
/// left to right (the integer sum is multiplied by d_x first, unlike Q8_0's d_x·d_y first).
pub fn vec_dot_scalar(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    let mut sumf = 0f32;
    for (bx, by) in x.iter().zip(y) {
        let mut sumi0 = 0i32;
        let mut sumi1 = 0i32;
        for j in 0..QK4_0 / 2 {
            let v0 = (bx.qs[j] & 0x0F) as i32 - 8;
            let v1 = (bx.qs[j] >> 4) as i32 - 8;
            sumi0 += v0 * by.qs[j] as i32;
            sumi1 += v1 * by.qs[j + QK4_0 / 2] as i32;
        }
        let sumi = sumi0 + sumi1;
        sumf += sumi as f32 * bx.d.to_f32() * by.d.to_f32();
    }
    sumf
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::BlockQ4_0;
    use crate::q8_0::BlockQ8_0;
    use crate::x86_util::*;
    use std::arch::x86_64::*;

    /// One block per step (`ggml_vec_dot_q4_0_q8_0`, ggml-cpu/arch/x86/quants.c, AVX2 path).
    ///
    /// The Q8 quants go first into `mul_sum_i8_pairs_float`, which negates its second
    /// operand: q − 8 is never −128, while an arbitrary Q8 quant may be, so the integer dot
    /// is exact for every input.
    ///
    /// # Safety
    /// Requires AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn vec_dot_avx2(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let off = _mm256_set1_epi8(8);
        for (bx, by) in x.iter().zip(y) {
            let d = _mm256_set1_ps(fp16_to_f32(bx.d) * fp16_to_f32(by.d));
            let qx = _mm256_sub_epi8(bytes_from_nibbles_32(&bx.qs), off);
            let qy = load_i8_32(&by.qs);
            let q = mul_sum_i8_pairs_float(qy, qx);
            acc = _mm256_fmadd_ps(d, q, acc);
        }
        hsum_float_8(acc)
    }

    /// Two blocks per 512-bit step with VNNI (`vpdpbusd`); an odd last block goes through
    /// the AVX2 kernel.
    ///
    /// # Safety
    /// Requires AVX-512 F/BW/VL/DQ + VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    pub unsafe fn vec_dot_avx512(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
        let mut acc = _mm512_setzero_ps();
        let off = _mm512_set1_epi8(8);
        for (xs, ys) in x.chunks_exact(2).zip(y.chunks_exact(2)) {
            let qx = join_256(bytes_from_nibbles_32(&xs[0].qs), bytes_from_nibbles_32(&xs[1].qs));
            let qx = _mm512_sub_epi8(qx, off);
            let qy = join_256(load_i8_32(&ys[0].qs), load_i8_32(&ys[1].qs));
            // Q8 first, as in the AVX2 kernel: only the weight side is ever negated.
            let q = mul_sum_i8_pairs_float_512(qy, qx);
            let d = scales_2x8(
                fp16_to_f32(xs[0].d) * fp16_to_f32(ys[0].d),
                fp16_to_f32(xs[1].d) * fp16_to_f32(ys[1].d),
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
    pub unsafe fn vec_dot_residual_avx512(x: &[BlockQ4_0], y: &[BlockQ8_0], r: &[BlockQ8_0]) -> f32 {
        let off = _mm512_set1_epi8(8);
        let unpack = |xs: &[BlockQ4_0]| {
            let q = join_256(bytes_from_nibbles_32(&xs[0].qs), bytes_from_nibbles_32(&xs[1].qs));
            (_mm512_sub_epi8(q, off), fp16_to_f32(xs[0].d), fp16_to_f32(xs[1].d))
        };
        residual_dot_512(x, y, r, unpack, |x, y| unsafe { vec_dot_avx2(x, y) })
    }

    /// One block as [`crate::packed`]'s AVX2 kernel takes it: the nibbles q as they are (bias 8).
    ///
    /// # Safety
    /// Requires AVX2 + FMA + F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn pack_block_avx2(x: &BlockQ4_0, out: &mut crate::packed::WeightBlock) {
        out.set(bytes_from_nibbles_32(&x.qs), fp16_to_f32(x.d));
    }

    /// Two blocks as [`crate::packed`]'s kernel takes them: q − 8 as signed bytes.
    ///
    /// # Safety
    /// Requires AVX-512 F/BW/VL/DQ + VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    pub unsafe fn pack_pair_avx512(x0: &BlockQ4_0, x1: &BlockQ4_0, out: &mut crate::packed::WeightPair) {
        let q = _mm512_sub_epi8(
            join_256(bytes_from_nibbles_32(&x0.qs), bytes_from_nibbles_32(&x1.qs)),
            _mm512_set1_epi8(8),
        );
        out.set(q, fp16_to_f32(x0.d), fp16_to_f32(x1.d));
    }
}

#[cfg(target_arch = "aarch64")]
pub(crate) mod neon {
    use super::BlockQ4_0;
    use crate::neon_util::*;
    use crate::q8_0::BlockQ8_0;
    use std::arch::aarch64::*;

    /// One block per step (`ggml_vec_dot_q4_0_q8_0`, ggml-cpu/arch/arm/quants.c), with
    /// widening multiplies instead of the dot-product extension.
    ///
    /// # Safety
    /// Requires NEON.
    #[target_feature(enable = "neon")]
    pub unsafe fn vec_dot_neon(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
        let mut acc = vdupq_n_f32(0.0);
        let off = vdupq_n_s8(8);
        for (bx, by) in x.iter().zip(y) {
            let (lo, hi) = nibbles_32(&bx.qs);
            let lo = vsubq_s8(vreinterpretq_s8_u8(lo), off);
            let hi = vsubq_s8(vreinterpretq_s8_u8(hi), off);
            // SAFETY: `by.qs` is 32 readable bytes.
            let y0 = unsafe { vld1q_s8(by.qs.as_ptr()) };
            let y1 = unsafe { vld1q_s8(by.qs.as_ptr().add(16)) };
            let p = vaddq_s32(dot_i8x16(lo, y0), dot_i8x16(hi, y1));
            acc = fmla_i32(acc, p, fp16_to_f32(bx.d) * fp16_to_f32(by.d));
        }
        vaddvq_f32(acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{abs_terms, dequant};
    use bytemuck::Zeroable;
    use proptest::prelude::*;

    fn scale() -> impl Strategy<Value = f16> {
        (-1f32..1.0).prop_map(f16::from_f32)
    }

    fn block() -> impl Strategy<Value = BlockQ4_0> {
        (scale(), prop::array::uniform16(any::<u8>())).prop_map(|(d, qs)| BlockQ4_0 { d, qs })
    }

    fn act() -> impl Strategy<Value = BlockQ8_0> {
        (scale(), prop::array::uniform32(any::<i8>())).prop_map(|(d, qs)| BlockQ8_0 { d, qs })
    }

    fn rows() -> impl Strategy<Value = (Vec<BlockQ4_0>, Vec<BlockQ8_0>)> {
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
                let got = BlockQ4_0::vec_dot(level, &x, &y);
                prop_assert!(((got - want) as f64).abs() <= tol, "{level:?}: {got} vs {want}");
            }
        }

        #[test]
        fn scalar_matches_dequantized_dot((x, y) in rows()) {
            let want: f64 = dequant(&x).iter().zip(dequant(&y)).map(|(a, b)| *a as f64 * b as f64).sum();
            let got = vec_dot_scalar(&x, &y) as f64;
            prop_assert!((got - want).abs() <= 1e-5 * abs_terms(&x, &y) + 1e-30, "{got} vs {want}");
        }

        #[test]
        fn quantize_roundtrip(v in prop::collection::vec(-100f32..100.0, 32..=32 * 9)) {
            let n = v.len() / QK4_0 * QK4_0;
            let x = &v[..n];
            let mut q = vec![BlockQ4_0::zeroed(); n / QK4_0];
            BlockQ4_0::quantize_row_ref(x, &mut q);
            let y = dequant(&q);
            for (xb, yb) in x.chunks(QK4_0).zip(y.chunks(QK4_0)) {
                let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
                // Step |d| = amax/8: half a step of rounding, except that the top code (8 on
                // the side opposite the max) is clamped to 7, at most a whole step; plus the
                // f16 rounding of d (2^-11 relative) times |q − 8| ≤ 8.
                let step = amax / 8.0;
                let tol = step + amax * 8.0 / 2048.0 + 1e-6;
                for (a, b) in xb.iter().zip(yb) {
                    prop_assert!((a - b).abs() <= tol, "{a} vs {b}, tol {tol}");
                }
            }
        }
    }

    #[test]
    fn quantize_matches_hand_computed() {
        // max = −8 (the first of the largest magnitude) → d = 1, id = 1, q = x + 8.
        let mut x = [0f32; 32];
        x[0] = -8.0;
        x[1] = 8.0; // same magnitude, later: does not replace max; 16.5 → clamped to 15
        x[2] = 0.49; // 8.99 → 8
        x[16] = -7.6; // 0.9 → 0
        x[17] = 3.0; // 11.5 → 11
        let mut b = [BlockQ4_0::zeroed()];
        BlockQ4_0::quantize_row_ref(&x, &mut b);
        assert_eq!(b[0].d, f16::ONE);
        assert_eq!(b[0].qs[0], 0); // codes 0 and 0
        assert_eq!(b[0].qs[1], 15 | (11 << 4));
        assert_eq!(b[0].qs[2], 8 | (8 << 4));
        assert_eq!(b[0].qs[3], 8 | (8 << 4));
        // All zeros: d = 0, id = 0, every code 8.
        BlockQ4_0::quantize_row_ref(&[0.0; 32], &mut b);
        assert_eq!(
            b[0],
            BlockQ4_0 {
                d: f16::ZERO,
                qs: [0x88; 16]
            }
        );
    }

    #[test]
    fn dequantize_matches_hand_computed() {
        let b = BlockQ4_0 {
            d: f16::from_f32(0.5),
            qs: [0x0F; 16],
        };
        let y = dequant(&[b]);
        assert!(y[..16].iter().all(|&v| v == 3.5));
        assert!(y[16..].iter().all(|&v| v == -4.0));
    }

    #[test]
    fn extreme_activations_are_exact() {
        // −128 activations, every level: the integer sums must not wrap or saturate, so with
        // unit scales every level gives the scalar result exactly.
        let x = vec![
            BlockQ4_0 {
                d: f16::ONE,
                qs: [0x0F; 16]
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
        let want = vec_dot_scalar(&x, &y);
        for level in SimdLevel::available() {
            assert_eq!(BlockQ4_0::vec_dot(level, &x, &y), want, "{level:?}");
        }
    }

    #[test]
    fn empty_rows() {
        for level in SimdLevel::available() {
            assert_eq!(BlockQ4_0::vec_dot(level, &[], &[]), 0.0);
        }
    }
}
