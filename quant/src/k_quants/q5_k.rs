//! Q5_K: 256 5-bit weights in 8 sub-blocks of 32 with 6-bit scales and mins (`block_q5_K`, ggml-common.h).
//!
//! x = d · sc_j · q - dmin · m_j for sub-block j, q in 0..=31. The low 4 bits are laid out as
//! in Q4_K (`qs[32k + l]`: element `64k + l` low nibble, `64k + 32 + l` high nibble); the
//! fifth bit of element `32j + l` is bit j of `qh[l]`.

// Index loops mirror the C they reproduce, operation for operation.
#![allow(clippy::needless_range_loop)]

use half::f16;

use crate::k_quants::common::{get_scale_min_k4, quantize_scales_mins_k, unpack_scales_mins_k4};
use crate::k_quants::q8_k::BlockQ8_K;
use crate::{Block, GgmlType, QK_K, QuantizeRef, SimdLevel, VecDot};

/// `blockQ5_K` (Q5_K, ggml-common.h): 176 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ5_K {
    /// Super-block scale for the scales.
    pub d: f16,
    /// Super-block scale for the mins.
    pub dmin: f16,
    /// Scales and mins, 6 bits each.
    pub scales: [u8; 12],
    /// High bits.
    pub qh: [u8; 32],
    /// Low nibbles.
    pub qs: [u8; 128],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_K>() == 176);

impl Block for BlockQ5_K {
    const TYPE: GgmlType = GgmlType::Q5_K;
    const QK: usize = QK_K;

    /// `dequantize_row_q5_K`, ggml-quants.c: `d1 * q - m1` with `d1 = d * sc`, `m1 = dmin * m`.
    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
            let d = b.d.to_f32();
            let min = b.dmin.to_f32();
            for (k, (ql, y)) in b.qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
                let (sc, m) = get_scale_min_k4(2 * k, &b.scales);
                let (d1, m1) = (d * sc as f32, min * m as f32);
                let (sc, m) = get_scale_min_k4(2 * k + 1, &b.scales);
                let (d2, m2) = (d * sc as f32, min * m as f32);
                let (u1, u2) = (1u8 << (2 * k), 2u8 << (2 * k));
                let (lo, hi) = y.split_at_mut(32);
                for (l, (lo, hi)) in lo.iter_mut().zip(hi).enumerate() {
                    let (q, h) = (ql[l], b.qh[l]);
                    *lo = d1 * ((q & 0xF) + if h & u1 != 0 { 16 } else { 0 }) as f32 - m1;
                    *hi = d2 * ((q >> 4) + if h & u2 != 0 { 16 } else { 0 }) as f32 - m2;
                }
            }
        }
    }
}

impl QuantizeRef for BlockQ5_K {
    /// `quantize_row_q5_K_ref`, ggml-quants.c: as Q4_K with nmax 31 and the search
    /// `rmin -0.5, rdelta 0.1, 15 steps`; the fifth bits go to `qh`.
    fn quantize_row_ref(src: &[f32], dst: &mut [Self]) {
        let mut l = [0u8; QK_K];
        for (x, y) in src.chunks_exact(QK_K).zip(dst.iter_mut()) {
            (y.scales, y.d, y.dmin) = quantize_scales_mins_k(x, 31, -0.5, 15, &mut l);

            y.qh = [0; 32];
            let (mut m1, mut m2) = (1u8, 2u8);
            for (k, ql) in y.qs.chunks_exact_mut(32).enumerate() {
                for (j, ql) in ql.iter_mut().enumerate() {
                    let mut l1 = l[64 * k + j];
                    if l1 > 15 {
                        l1 -= 16;
                        y.qh[j] |= m1;
                    }
                    let mut l2 = l[64 * k + j + 32];
                    if l2 > 15 {
                        l2 -= 16;
                        y.qh[j] |= m2;
                    }
                    *ql = l1 | (l2 << 4);
                }
                m1 = m1.wrapping_shl(2);
                m2 = m2.wrapping_shl(2);
            }
        }
    }
}

impl VecDot for BlockQ5_K {
    type Act = BlockQ8_K;

    /// `ggml_vec_dot_q5_K_q8_K` (ggml-cpu). The mins are applied through the activation's
    /// `bsums`, which must be consistent with its quants.
    fn vec_dot(level: SimdLevel, x: &[Self], y: &[BlockQ8_K]) -> f32 {
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
}

/// Scalar reference of `ggml_vec_dot_q5_K_q8_K_generic` (ggml-cpu/quants.c): as Q4_K's, with
/// the fifth bit added to each quant.
pub fn vec_dot_scalar(x: &[BlockQ5_K], y: &[BlockQ8_K]) -> f32 {
    let mut sums = [0f32; 8];
    let mut sumf = 0f32;
    for (bx, by) in x.iter().zip(y) {
        let sm = unpack_scales_mins_k4(&bx.scales);
        let (scales, mins) = sm.split_at(8);
        let mut aux32 = [0i32; 8];
        let mut sumi = 0i32;
        for j in 0..QK_K / 16 {
            sumi += by.bsums[j] as i32 * mins[j / 2] as i32;
        }
        for j in 0..QK_K / 32 {
            let scale = scales[j] as i32;
            let q4 = &bx.qs[32 * (j / 2)..32 * (j / 2) + 32];
            let shift = 4 * (j % 2);
            let q8 = &by.qs[32 * j..32 * j + 32];
            for g in 0..4 {
                for l in 0..8 {
                    let i = 8 * g + l;
                    let a = ((q4[i] >> shift) & 0xF) + if bx.qh[i] & (1 << j) != 0 { 16 } else { 0 };
                    // aux16 = q8 * a fits i16 (|.| <= 31 * 128).
                    let aux16 = q8[i] as i16 * a as i16;
                    aux32[l] += scale * aux16 as i32;
                }
            }
        }
        let d = bx.d.to_f32() * by.d;
        for l in 0..8 {
            sums[l] += d * aux32[l] as f32;
        }
        let dmin = bx.dmin.to_f32() * by.d;
        sumf -= dmin * sumi as f32;
    }
    for s in sums {
        sumf += s;
    }
    sumf
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::BlockQ5_K;
    use crate::k_quants::q4_k::x86::{scale_pair_shuffle, unpack_scales_mins_k4_sse};
    use crate::k_quants::q8_k::BlockQ8_K;
    use crate::x86_util::*;
    use std::arch::x86_64::*;

    /// Scales (words 0..8) and mins (words 8..16) as i16, and `Σ_j m_j · bsum_j` as an i32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn scales_and_min_term(bx: &BlockQ5_K, by: &BlockQ8_K) -> (__m256i, i32) {
        let mins_and_scales = _mm256_cvtepu8_epi16(unpack_scales_mins_k4_sse(&bx.scales));
        let q8sums = unsafe { _mm256_loadu_si256(by.bsums.as_ptr() as *const __m256i) };
        let q8s = _mm_hadd_epi16(_mm256_castsi256_si128(q8sums), _mm256_extracti128_si256(q8sums, 1));
        let prod = _mm_madd_epi16(_mm256_extracti128_si256(mins_and_scales, 1), q8s);
        let zero = _mm_setzero_si128();
        let hsum = _mm_hadd_epi32(_mm_hadd_epi32(prod, zero), zero);
        (mins_and_scales, _mm_cvtsi128_si32(hsum))
    }

    /// `ggml_vec_dot_q5_K_q8_K`, AVX2 branch (ggml-cpu/arch/x86/quants.c): Q4_K's kernel with
    /// 16 added where the quant's `qh` bit is set; the min term accumulated in a scalar `summs`.
    ///
    /// # Safety
    /// Requires AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn vec_dot_avx2(x: &[BlockQ5_K], y: &[BlockQ8_K]) -> f32 {
        let m4 = _mm256_set1_epi8(0xF);
        let m16 = _mm256_set1_epi8(16);
        let mone = _mm256_set1_epi8(1);
        let mut acc = _mm256_setzero_ps();
        let mut summs = 0f32;
        for (bx, by) in x.iter().zip(y) {
            let d = by.d * bx.d.to_f32();
            let dmin = -by.d * bx.dmin.to_f32();
            let (ms, min_term) = scales_and_min_term(bx, by);
            summs += dmin * min_term as f32;

            let scales = _mm256_broadcastsi128_si256(_mm256_castsi256_si128(ms));
            let hbits = unsafe { _mm256_loadu_si256(bx.qh.as_ptr() as *const __m256i) };
            let mut hmask = mone;
            let q5 = bx.qs.as_ptr();
            let q8 = by.qs.as_ptr();
            let mut sumi = _mm256_setzero_si256();
            for j in 0..4 {
                let i0 = 2 * j as i16;
                let scale_0 = _mm256_shuffle_epi8(scales, _mm256_set1_epi16(((2 * i0 + 1) << 8) | (2 * i0)));
                let i1 = i0 + 1;
                let scale_1 = _mm256_shuffle_epi8(scales, _mm256_set1_epi16(((2 * i1 + 1) << 8) | (2 * i1)));

                let q5bits = unsafe { _mm256_loadu_si256(q5.add(32 * j) as *const __m256i) };
                // 16 where bit 2j (then 2j+1) of the qh byte is set. ggml shifts the masked bit
                // down by a running count and up by 4; a byte compare does the same without a
                // variable shift count.
                let q5l_0 = _mm256_and_si256(q5bits, m4);
                let q5h_0 = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hbits, hmask), hmask), m16);
                let q5_0 = _mm256_add_epi8(q5l_0, q5h_0);
                hmask = _mm256_slli_epi16(hmask, 1);

                let q5l_1 = _mm256_and_si256(_mm256_srli_epi16(q5bits, 4), m4);
                let q5h_1 = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hbits, hmask), hmask), m16);
                let q5_1 = _mm256_add_epi8(q5l_1, q5h_1);
                hmask = _mm256_slli_epi16(hmask, 1);

                let q8_0 = unsafe { _mm256_loadu_si256(q8.add(64 * j) as *const __m256i) };
                let q8_1 = unsafe { _mm256_loadu_si256(q8.add(64 * j + 32) as *const __m256i) };
                // 0..=31 times -128..=127, pairwise: |.| <= 7936, no i16 saturation.
                let p16_0 = _mm256_madd_epi16(scale_0, _mm256_maddubs_epi16(q5_0, q8_0));
                let p16_1 = _mm256_madd_epi16(scale_1, _mm256_maddubs_epi16(q5_1, q8_1));
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p16_0, p16_1));
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum_float_8(acc) + summs
    }

    /// AVX-512 + VNNI: Q4_K's 512-bit kernel (nibbles broadcast to both halves of a zmm, upper
    /// half shifted, `maddubs` + `vpdpwssd` with the sub-block scales), plus 16 added to the
    /// bytes whose `qh` bit is set, selected with a byte test mask.
    ///
    /// # Safety
    /// Requires AVX-512 F/BW/VL/DQ + VNNI (and AVX2, FMA, F16C).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    pub unsafe fn vec_dot_avx512(x: &[BlockQ5_K], y: &[BlockQ8_K]) -> f32 {
        const UPPER_WORDS: __mmask32 = 0xFFFF_0000;
        let m4 = _mm512_set1_epi8(0xF);
        let m16 = _mm512_set1_epi8(16);
        // Bit 0 in the lower half, bit 1 in the upper half: shifted left by 2k, the qh bits of
        // sub-blocks 2k and 2k+1.
        let bit_base = _mm512_mask_blend_epi16(UPPER_WORDS, _mm512_set1_epi8(1), _mm512_set1_epi8(2));
        let shuffles = [
            scale_pair_shuffle(0),
            scale_pair_shuffle(1),
            scale_pair_shuffle(2),
            scale_pair_shuffle(3),
        ];
        let bits = [
            bit_base,
            _mm512_slli_epi16(bit_base, 2),
            _mm512_slli_epi16(bit_base, 4),
            _mm512_slli_epi16(bit_base, 6),
        ];
        let mut acc = _mm512_setzero_ps();
        let mut summs = 0f32;
        for (bx, by) in x.iter().zip(y) {
            let d = by.d * bx.d.to_f32();
            let dmin = -by.d * bx.dmin.to_f32();
            let (ms, min_term) = scales_and_min_term(bx, by);
            summs += dmin * min_term as f32;

            let scales = _mm512_broadcast_i32x4(_mm256_castsi256_si128(ms));
            let qhb = _mm512_broadcast_i64x4(unsafe { _mm256_loadu_si256(bx.qh.as_ptr() as *const __m256i) });
            let q5 = bx.qs.as_ptr();
            let q8 = by.qs.as_ptr();
            let mut sumi0 = _mm512_setzero_si512();
            let mut sumi1 = _mm512_setzero_si512();
            for k in 0..4 {
                let b = _mm512_broadcast_i64x4(unsafe { _mm256_loadu_si256(q5.add(32 * k) as *const __m256i) });
                let q = _mm512_and_si512(_mm512_mask_srli_epi16(b, UPPER_WORDS, b, 4), m4);
                let high = _mm512_test_epi8_mask(qhb, bits[k]);
                let q = _mm512_mask_add_epi8(q, high, q, m16);
                let a = unsafe { _mm512_loadu_si512(q8.add(64 * k) as *const _) };
                let p16 = _mm512_maddubs_epi16(q, a);
                let sc = _mm512_shuffle_epi8(scales, shuffles[k]);
                if k % 2 == 0 {
                    sumi0 = _mm512_dpwssd_epi32(sumi0, p16, sc);
                } else {
                    sumi1 = _mm512_dpwssd_epi32(sumi1, p16, sc);
                }
            }
            let sumi = _mm512_add_epi32(sumi0, sumi1);
            acc = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(sumi), acc);
        }
        _mm512_reduce_add_ps(acc) + summs
    }
}

#[cfg(target_arch = "aarch64")]
pub(crate) mod neon {
    use super::BlockQ5_K;
    use crate::k_quants::common::unpack_scales_mins_k4;
    use crate::k_quants::q4_k::neon::mins_dot_bsums;
    use crate::k_quants::q8_k::BlockQ8_K;
    use crate::neon_util::dot_i8x16;
    use std::arch::aarch64::*;

    /// `ggml_vec_dot_q5_K_q8_K`, NEON branch: Q4_K's kernel with the fifth bits, two per
    /// 64 elements, taken from `qh` and shifted down between steps.
    ///
    /// # Safety
    /// Requires NEON.
    #[target_feature(enable = "neon")]
    pub unsafe fn vec_dot_neon(x: &[BlockQ5_K], y: &[BlockQ8_K]) -> f32 {
        let m4 = vdupq_n_u8(0xF);
        let mone = vdupq_n_u8(1);
        let mtwo = vdupq_n_u8(2);
        let mut sumf = 0f32;
        for (bx, by) in x.iter().zip(y) {
            let d = by.d * bx.d.to_f32();
            let dmin = by.d * bx.dmin.to_f32();
            let sm = unpack_scales_mins_k4(&bx.scales);
            sumf -= dmin * mins_dot_bsums(&sm, by) as f32;

            let mut qh0 = unsafe { vld1q_u8(bx.qh.as_ptr()) };
            let mut qh1 = unsafe { vld1q_u8(bx.qh.as_ptr().add(16)) };
            let q5 = bx.qs.as_ptr();
            let q8 = by.qs.as_ptr();
            let mut sumi = vdupq_n_s32(0);
            for j in 0..4 {
                let b0 = unsafe { vld1q_u8(q5.add(32 * j)) };
                let b1 = unsafe { vld1q_u8(q5.add(32 * j + 16)) };
                let y0 = unsafe { vld1q_s8(q8.add(64 * j)) };
                let y1 = unsafe { vld1q_s8(q8.add(64 * j + 16)) };
                let y2 = unsafe { vld1q_s8(q8.add(64 * j + 32)) };
                let y3 = unsafe { vld1q_s8(q8.add(64 * j + 48)) };
                // Bit 0 of the (shifted) qh -> 16, bit 1 -> 16.
                let h0l = vshlq_n_u8(vandq_u8(qh0, mone), 4);
                let h1l = vshlq_n_u8(vandq_u8(qh1, mone), 4);
                let h0h = vshlq_n_u8(vandq_u8(qh0, mtwo), 3);
                let h1h = vshlq_n_u8(vandq_u8(qh1, mtwo), 3);
                qh0 = vshrq_n_u8(qh0, 2);
                qh1 = vshrq_n_u8(qh1, 2);
                let l0 = vreinterpretq_s8_u8(vorrq_u8(vandq_u8(b0, m4), h0l));
                let l1 = vreinterpretq_s8_u8(vorrq_u8(vandq_u8(b1, m4), h1l));
                let h0 = vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(b0, 4), h0h));
                let h1 = vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(b1, 4), h1h));
                let pl = vaddq_s32(dot_i8x16(l0, y0), dot_i8x16(l1, y1));
                let ph = vaddq_s32(dot_i8x16(h0, y2), dot_i8x16(h1, y3));
                sumi = vmlaq_n_s32(sumi, pl, sm[2 * j] as i32);
                sumi = vmlaq_n_s32(sumi, ph, sm[2 * j + 1] as i32);
            }
            sumf += d * vaddvq_s32(sumi) as f32;
        }
        sumf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k_quants::common::pack_scale_min_k4;
    use crate::k_quants::common::testutil::*;
    use bytemuck::Zeroable;
    use proptest::prelude::*;

    fn fix(b: &mut BlockQ5_K, d: f16, dmin: f16) {
        b.d = d;
        b.dmin = dmin;
    }

    fn quant(b: &BlockQ5_K, i: usize) -> u8 {
        let low = (b.qs[32 * (i / 64) + i % 32] >> (4 * ((i / 32) % 2))) & 0xF;
        low | (((b.qh[i % 32] >> (i / 32)) & 1) << 4)
    }

    /// Σ (|d·sc·q| + |dmin·m|) · |y| over all elements.
    fn magnitude(x: &[BlockQ5_K], y: &[BlockQ8_K]) -> f64 {
        let mut s = 0f64;
        for (bx, by) in x.iter().zip(y) {
            for i in 0..QK_K {
                let (sc, m) = get_scale_min_k4(i / 32, &bx.scales);
                let w = (bx.d.to_f32() as f64 * sc as f64 * quant(bx, i) as f64).abs()
                    + (bx.dmin.to_f32() as f64 * m as f64).abs();
                s += w * (by.d as f64 * by.qs[i] as f64).abs();
            }
        }
        s
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn levels_agree_with_scalar((x, y) in blocks_and_act::<BlockQ5_K>(fix)) {
            check_vec_dot(&x, &y, vec_dot_scalar, magnitude(&x, &y))?;
        }

        #[test]
        fn dequantize_matches_element_formula((x, _y) in blocks_and_act::<BlockQ5_K>(fix)) {
            let mut out = vec![0f32; x.len() * QK_K];
            BlockQ5_K::dequantize_row(&x, &mut out);
            for (b, o) in x.iter().zip(out.chunks(QK_K)) {
                for i in 0..QK_K {
                    let (sc, m) = get_scale_min_k4(i / 32, &b.scales);
                    let want = b.d.to_f32() * sc as f32 * quant(b, i) as f32 - b.dmin.to_f32() * m as f32;
                    prop_assert_eq!(o[i].to_bits(), want.to_bits());
                }
            }
        }

        /// Real-looking rows (quantized from smooth data, most quants near the middle) are
        /// where a kernel that keeps large partial sums in float loses precision.
        #[test]
        fn levels_agree_on_quantized_rows(x in quant_input()) {
            let mut q = vec![BlockQ5_K::zeroed(); x.len() / QK_K];
            BlockQ5_K::quantize_row_ref(&x, &mut q);
            let y = act_for(x.len());
            check_vec_dot(&q, &y, vec_dot_scalar, magnitude(&q, &y))?;
        }

        #[test]
        fn quantize_roundtrip(x in quant_input()) {
            let mut q = vec![BlockQ5_K::zeroed(); x.len() / QK_K];
            BlockQ5_K::quantize_row_ref(&x, &mut q);
            let mut back = vec![0f32; x.len()];
            BlockQ5_K::dequantize_row(&q, &mut back);
            for (xs, ys) in x.chunks(QK_K).zip(back.chunks(QK_K)) {
                let max = xs.iter().fold(0f32, |m, &v| m.max(v));
                let min = xs.iter().fold(0f32, |m, &v| m.min(v));
                // 32 levels over the range: a step is range/31; the 6-bit sub-scales and the
                // f16 super-scales add a little. 6e-5 covers f16 underflow for tiny inputs.
                let bound = 0.06 * (max - min) + 6e-5;
                let mut sq = 0f64;
                for (a, r) in xs.iter().zip(ys) {
                    prop_assert!((a - r).abs() <= bound, "{a} vs {r}, bound {bound}");
                    sq += ((a - r) as f64).powi(2);
                }
                let rmse = (sq / QK_K as f64).sqrt();
                prop_assert!(rmse <= 0.02 * (max - min) as f64 + 6e-5, "rmse {rmse}");
            }
        }
    }

    #[test]
    fn extreme_values_do_not_saturate() {
        let b = BlockQ5_K {
            d: f16::from_f32(1.0),
            dmin: f16::from_f32(0.5),
            scales: pack_scale_min_k4(&[63; 8], &[63; 8]),
            qh: [0xFF; 32],
            qs: [0xFF; 128],
        };
        for v in [-128i8, 127] {
            let x = vec![b; 3];
            let y = act_blocks(&vec![v; 3 * QK_K], &[1.0; 3]);
            let exact = 3.0 * 256.0 * (63.0 * 31.0 - 0.5 * 63.0) * v as f64;
            for level in SimdLevel::available() {
                let got = BlockQ5_K::vec_dot(level, &x, &y) as f64;
                assert!((got - exact).abs() <= 1e-6 * exact.abs(), "{level:?}: {got} vs {exact}");
            }
        }
    }

    #[test]
    fn non_finite_input_does_not_panic() {
        let mut x = [0.5f32; QK_K];
        x[7] = f32::NAN;
        x[100] = f32::INFINITY;
        let mut q = [BlockQ5_K::zeroed()];
        BlockQ5_K::quantize_row_ref(&x, &mut q);
    }
}
