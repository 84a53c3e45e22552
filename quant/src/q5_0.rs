//! Q5_0: 32 5-bit weights with one f16 scale: x = d·(q − 16) (`block_q5_0`, ggml-common.h).
//!
//! The low four bits of each quant are nibbles laid out as in Q4_0, the fifth bits are packed
//! in `qh`. Multiplied against Q8_0 activations (`ggml_vec_dot_q5_0_q8_0`).

use half::f16;

use crate::q8_0::BlockQ8_0;
use crate::{Block, GgmlType, QuantizeRef, SimdLevel, VecDot};

/// Elements per Q5_0 block (`QK5_0`).
pub const QK5_0: usize = 32;

/// `block_q5_0` (ggml-common.h): 22 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ5_0 {
    /// Scale.
    pub d: f16,
    /// Fifth bits, little-endian u32: bit j for element j.
    pub qh: [u8; 4],
    /// Low nibbles, laid out as in Q4_0.
    pub qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);

impl Block for BlockQ5_0 {
    const TYPE: GgmlType = GgmlType::Q5_0;
    const QK: usize = QK5_0;

    /// `dequantize_row_q5_0`, ggml-quants.c: y = (q − 16)·d.
    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK5_0)) {
            let d = b.d.to_f32();
            // `memcpy(&qh, x[i].qh, 4)` on a little-endian host.
            let qh = u32::from_le_bytes(b.qh);
            for j in 0..QK5_0 / 2 {
                let xh_0 = (((qh >> j) << 4) & 0x10) as u8;
                let xh_1 = ((qh >> (j + 12)) & 0x10) as u8;
                let x0 = ((b.qs[j] & 0x0F) | xh_0) as i32 - 16;
                let x1 = ((b.qs[j] >> 4) | xh_1) as i32 - 16;
                y[j] = x0 as f32 * d;
                y[j + QK5_0 / 2] = x1 as f32 * d;
            }
        }
    }
}

impl QuantizeRef for BlockQ5_0 {
    /// `quantize_row_q5_0_ref`, ggml-quants.c: d = max / −16 where max is the element of
    /// largest magnitude (the first one on ties), q = MIN(31, (int8_t)(x/d + 16.5)).
    fn quantize_row_ref(src: &[f32], dst: &mut [Self]) {
        for (x, b) in src.chunks_exact(QK5_0).zip(dst.iter_mut()) {
            let mut amax = 0f32;
            let mut max = 0f32;
            for &v in x {
                // Strict `<`: the first element reaching the largest |v| wins, as in the C.
                if amax < v.abs() {
                    amax = v.abs();
                    max = v;
                }
            }
            // The signed max maps to q = 0 (x = −16·d): the full −16..=15 range on its side.
            let d = max / -16.0;
            // `d ? 1.0f/d : 0.0f`: NaN is truthy in C and `!= 0.0` in Rust alike.
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            b.d = f16::from_f32(d);
            let mut qh = 0u32;
            for j in 0..QK5_0 / 2 {
                let xi0 = code(x[j] * id);
                let xi1 = code(x[QK5_0 / 2 + j] * id);
                b.qs[j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
                qh |= (((xi0 & 0x10) >> 4) as u32) << j;
                qh |= (((xi1 & 0x10) >> 4) as u32) << (j + QK5_0 / 2);
            }
            b.qh = qh.to_le_bytes();
        }
    }
}

/// `(uint8_t)MIN(31, (int8_t)(v + 16.5f))`: truncation toward zero, then the int8 → uint8
/// wrap of the C. For finite input v ∈ [−16, 16], so the (otherwise undefined in C) float →
/// int8 conversion is in range and Rust's saturating `as i8` agrees.
#[inline]
fn code(v: f32) -> u8 {
    31i32.min((v + 16.5) as i8 as i32) as u8
}

impl VecDot for BlockQ5_0 {
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
    const PACK_U8_BLOCK: Option<crate::packed::PackBlock<Self>> = Some((x86::pack_block_avx2, 16));
}

/// Scalar reference of `ggml_vec_dot_q5_0_q8_0_generic` (ggml-cpu/quants.c): per block an
/// exact integer dot of (q − 16) with the Q8_0 quants, then `sumf += (d_x·d_y)·sumi` in f32.
pub fn vec_dot_scalar(x: &[BlockQ5_0], y: &[BlockQ8_0]) -> f32 {
    let mut sumf = 0f32;
    for (bx, by) in x.iter().zip(y) {
        let qh = u32::from_le_bytes(bx.qh);
        let mut sumi0 = 0i32;
        let mut sumi1 = 0i32;
        for j in 0..QK5_0 / 2 {
            let xh_0 = (((qh & (1 << j)) >> j) << 4) as u8;
            let xh_1 = ((qh & (1 << (j + 16))) >> (j + 12)) as u8;
            let x0 = (((bx.qs[j] & 0x0F) | xh_0) as i32 - 16) as i8 as i32;
            let x1 = (((bx.qs[j] >> 4) | xh_1) as i32 - 16) as i8 as i32;
            sumi0 += x0 * by.qs[j] as i32;
            sumi1 += x1 * by.qs[j + QK5_0 / 2] as i32;
        }
        let sumi = sumi0 + sumi1;
        sumf += (bx.d.to_f32() * by.d.to_f32()) * sumi as f32;
    }
    sumf
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::BlockQ5_0;
    use crate::q8_0::BlockQ8_0;
    use crate::x86_util::*;
    use std::arch::x86_64::*;

    /// One block per step (`ggml_vec_dot_q5_0_q8_0`, ggml-cpu/arch/x86/quants.c, AVX2 path).
    ///
    /// q − 16 as a signed byte is the nibble with 0xF0 OR-ed in where the fifth bit is clear
    /// (nibble − 16 in two's complement) and the bare nibble where it is set. The Q8 quants
    /// go first into `mul_sum_i8_pairs_float`, which negates its second operand: q − 16 is
    /// never −128, an arbitrary Q8 quant may be, so the integer dot is exact for every input.
    ///
    /// # Safety
    /// Requires AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn vec_dot_avx2(x: &[BlockQ5_0], y: &[BlockQ8_0]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let hi = _mm256_set1_epi8(0xF0u8 as i8);
        for (bx, by) in x.iter().zip(y) {
            let d = _mm256_set1_ps(fp16_to_f32(bx.d) * fp16_to_f32(by.d));
            let bxhi = _mm256_andnot_si256(bytes_from_bits_32(u32::from_le_bytes(bx.qh)), hi);
            let qx = _mm256_or_si256(bytes_from_nibbles_32(&bx.qs), bxhi);
            let qy = load_i8_32(&by.qs);
            let q = mul_sum_i8_pairs_float(qy, qx);
            acc = _mm256_fmadd_ps(d, q, acc);
        }
        hsum_float_8(acc)
    }

    /// Two blocks per 512-bit step with VNNI (`vpdpbusd`); the fifth bits of both blocks
    /// form one 64-bit byte mask. An odd last block goes through the AVX2 kernel.
    ///
    /// # Safety
    /// Requires AVX-512 F/BW/VL/DQ + VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    pub unsafe fn vec_dot_avx512(x: &[BlockQ5_0], y: &[BlockQ8_0]) -> f32 {
        let mut acc = _mm512_setzero_ps();
        let hi = _mm512_set1_epi8(0xF0u8 as i8);
        for (xs, ys) in x.chunks_exact(2).zip(y.chunks_exact(2)) {
            let nib = join_256(bytes_from_nibbles_32(&xs[0].qs), bytes_from_nibbles_32(&xs[1].qs));
            // Byte j of the register is element j % 32 of block j / 32: bit j of this mask.
            let k = u32::from_le_bytes(xs[0].qh) as u64 | ((u32::from_le_bytes(xs[1].qh) as u64) << 32);
            // Fifth bit set: the nibble; clear: nibble | 0xF0 = nibble − 16.
            let qx = _mm512_mask_blend_epi8(k, _mm512_or_si512(nib, hi), nib);
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
    pub unsafe fn vec_dot_residual_avx512(x: &[BlockQ5_0], y: &[BlockQ8_0], r: &[BlockQ8_0]) -> f32 {
        let hi = _mm512_set1_epi8(0xF0u8 as i8);
        let unpack = |xs: &[BlockQ5_0]| unpack_pair(&xs[0], &xs[1], hi);
        residual_dot_512(x, y, r, unpack, |x, y| unsafe { vec_dot_avx2(x, y) })
    }

    /// Two Q5_0 blocks as 64 signed bytes (q − 16, as in [`vec_dot_avx512`]) and their scales.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    fn unpack_pair(x0: &BlockQ5_0, x1: &BlockQ5_0, hi: __m512i) -> (__m512i, f32, f32) {
        let nib = join_256(bytes_from_nibbles_32(&x0.qs), bytes_from_nibbles_32(&x1.qs));
        let k = u32::from_le_bytes(x0.qh) as u64 | ((u32::from_le_bytes(x1.qh) as u64) << 32);
        let q = _mm512_mask_blend_epi8(k, _mm512_or_si512(nib, hi), nib);
        (q, fp16_to_f32(x0.d), fp16_to_f32(x1.d))
    }

    /// One block as [`crate::packed`]'s AVX2 kernel takes it: q ∈ 0..=31 as it is stored (bias 16).
    ///
    /// # Safety
    /// Requires AVX2 + FMA + F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn pack_block_avx2(x: &BlockQ5_0, out: &mut crate::packed::WeightBlock) {
        let fifth = _mm256_and_si256(bytes_from_bits_32(u32::from_le_bytes(x.qh)), _mm256_set1_epi8(16));
        out.set(_mm256_or_si256(bytes_from_nibbles_32(&x.qs), fifth), fp16_to_f32(x.d));
    }

    /// Two blocks as [`crate::packed`]'s kernel takes them: q − 16 as signed bytes.
    ///
    /// # Safety
    /// Requires AVX-512 F/BW/VL/DQ + VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    pub unsafe fn pack_pair_avx512(x0: &BlockQ5_0, x1: &BlockQ5_0, out: &mut crate::packed::WeightPair) {
        let (q, d0, d1) = unpack_pair(x0, x1, _mm512_set1_epi8(0xF0u8 as i8));
        out.set(q, d0, d1);
    }
}

#[cfg(target_arch = "aarch64")]
pub(crate) mod neon {
    use super::BlockQ5_0;
    use crate::neon_util::*;
    use crate::q8_0::BlockQ8_0;
    use std::arch::aarch64::*;

    /// One block per step (`ggml_vec_dot_q5_0_q8_0`, ggml-cpu/arch/arm/quants.c), with
    /// widening multiplies instead of the dot-product extension and a bit test instead of
    /// ggml's 64-bit lookup table for the fifth bits.
    ///
    /// # Safety
    /// Requires NEON.
    #[target_feature(enable = "neon")]
    pub unsafe fn vec_dot_neon(x: &[BlockQ5_0], y: &[BlockQ8_0]) -> f32 {
        let mut acc = vdupq_n_f32(0.0);
        let hi = vdupq_n_u8(0xF0);
        for (bx, by) in x.iter().zip(y) {
            let (lo_n, hi_n) = nibbles_32(&bx.qs);
            let (lo_b, hi_b) = bits_32(&bx.qh);
            // Fifth bit clear: nibble | 0xF0 = nibble − 16 as a signed byte; set: the nibble.
            let x0 = vreinterpretq_s8_u8(vorrq_u8(lo_n, vbicq_u8(hi, lo_b)));
            let x1 = vreinterpretq_s8_u8(vorrq_u8(hi_n, vbicq_u8(hi, hi_b)));
            // SAFETY: `by.qs` is 32 readable bytes.
            let y0 = unsafe { vld1q_s8(by.qs.as_ptr()) };
            let y1 = unsafe { vld1q_s8(by.qs.as_ptr().add(16)) };
            let p = vaddq_s32(dot_i8x16(x0, y0), dot_i8x16(x1, y1));
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

    fn block() -> impl Strategy<Value = BlockQ5_0> {
        (
            scale(),
            prop::array::uniform4(any::<u8>()),
            prop::array::uniform16(any::<u8>()),
        )
            .prop_map(|(d, qh, qs)| BlockQ5_0 { d, qh, qs })
    }

    fn act() -> impl Strategy<Value = BlockQ8_0> {
        (scale(), prop::array::uniform32(any::<i8>())).prop_map(|(d, qs)| BlockQ8_0 { d, qs })
    }

    fn rows() -> impl Strategy<Value = (Vec<BlockQ5_0>, Vec<BlockQ8_0>)> {
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
                let got = BlockQ5_0::vec_dot(level, &x, &y);
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
            let n = v.len() / QK5_0 * QK5_0;
            let x = &v[..n];
            let mut q = vec![BlockQ5_0::zeroed(); n / QK5_0];
            BlockQ5_0::quantize_row_ref(x, &mut q);
            let y = dequant(&q);
            for (xb, yb) in x.chunks(QK5_0).zip(y.chunks(QK5_0)) {
                let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
                // Step |d| = amax/16: half a step of rounding, except that the top code (16 on
                // the side opposite the max) is clamped to 15, at most a whole step; plus the
                // f16 rounding of d (2^-11 relative) times |q − 16| ≤ 16.
                let step = amax / 16.0;
                let tol = step + amax * 16.0 / 2048.0 + 1e-6;
                for (a, b) in xb.iter().zip(yb) {
                    prop_assert!((a - b).abs() <= tol, "{a} vs {b}, tol {tol}");
                }
            }
        }
    }

    #[test]
    fn quantize_matches_hand_computed() {
        // max = 16 → d = −1, id = −1: q = 16.5 − x truncated, clamped to 31.
        let mut x = [0f32; 32];
        x[0] = 16.0; // 0.5 → 0
        x[1] = -16.0; // 32.5 → 32 → 31
        x[2] = 0.6; // 15.9 → 15
        x[16] = -3.0; // 19.5 → 19 (fifth bit set)
        let mut b = [BlockQ5_0::zeroed()];
        BlockQ5_0::quantize_row_ref(&x, &mut b);
        assert_eq!(b[0].d, f16::from_f32(-1.0));
        // Elements 3..16 and 17..32 are 0 → 16.5 → 16: fifth bit set, nibble 0.
        assert_eq!(b[0].qs[0], 3 << 4); // codes 0 and 19 (low nibble 3)
        assert_eq!(b[0].qs[1], 15);
        assert_eq!(b[0].qs[2], 15);
        let qh = u32::from_le_bytes(b[0].qh);
        // Codes 0 (element 0) and 15 (element 2) lack the fifth bit; every other code has it.
        assert_eq!(qh, !0b101u32, "{qh:032b}");
        let y = dequant(&b);
        assert_eq!(&y[..3], &[16.0, -15.0, 1.0]);
        assert_eq!(y[16], -3.0);
    }

    #[test]
    fn dequantize_matches_hand_computed() {
        // qh = element 0 and element 31 have the fifth bit.
        let b = BlockQ5_0 {
            d: f16::from_f32(0.5),
            qh: (1u32 | 1 << 31).to_le_bytes(),
            qs: [0x0F; 16],
        };
        let y = dequant(&[b]);
        assert_eq!(y[0], 7.5); // (31 − 16)·0.5
        assert_eq!(y[1], -0.5); // 15 − 16
        assert_eq!(y[16], -8.0); // 0 − 16
        assert_eq!(y[31], 0.0); // 16 − 16
    }

    #[test]
    fn extreme_activations_are_exact() {
        // −128 activations, every level: the integer sums must not wrap or saturate, so with
        // unit scales every level gives the scalar result exactly.
        let x = vec![
            BlockQ5_0 {
                d: f16::ONE,
                qh: [0x0F, 0, 0xF0, 0x55],
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
            assert_eq!(BlockQ5_0::vec_dot(level, &x, &y), want, "{level:?}");
        }
    }

    #[test]
    fn empty_rows() {
        for level in SimdLevel::available() {
            assert_eq!(BlockQ5_0::vec_dot(level, &[], &[]), 0.0);
        }
    }
}
