//! IQ4_XS: 256 4-bit non-linear indices in 8 sub-blocks of 32 with 6-bit scales (`block_iq4_xs`, ggml-common.h).
//!
//! Sub-block `ib` (32 elements) has the 6-bit scale `ls = (scales_l[ib / 2] >> 4·(ib % 2)) & 0xF
//! | ((scales_h >> 2·ib) & 3) << 4`, stored offset by 32; its element `j` is the index in the
//! low nibble (`j < 16`) or high nibble (`j ≥ 16`) of `qs[16·ib + j % 16]`.
//! x = d·(ls − 32)·kvalues_iq4nl[index].

use half::f16;

use crate::k_quants::q8_k::BlockQ8_K;
use crate::{Block, GgmlType, QK_K, SimdLevel, VecDot};

/// `blockIQ4_XS` (IQ4_XS, ggml-common.h): 136 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockIQ4_XS {
    /// Super-block scale.
    pub d: f16,
    /// High 2 bits of the 8 sub-block scales.
    pub scales_h: u16,
    /// Low 4 bits of the 8 sub-block scales.
    pub scales_l: [u8; 4],
    /// Nibble indices.
    pub qs: [u8; 128],
}
const _: () = assert!(std::mem::size_of::<BlockIQ4_XS>() == 136);

/// `kvalues_iq4nl` (ggml-common.h): the 16 non-linear levels the indices select. A private
/// copy (IQ4_NL has its own) keeps the two formats' files independent.
const KVALUES_IQ4NL: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/// The scale of sub-block `ib` (0..8) minus 32 (−32..=31), as `dequantize_row_iq4_xs` reads it.
#[inline(always)]
fn sub_scale(b: &BlockIQ4_XS, ib: usize) -> i32 {
    let ls = ((b.scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF) as i32 | (((b.scales_h >> (2 * ib)) & 3) << 4) as i32;
    ls - 32
}

impl Block for BlockIQ4_XS {
    const TYPE: GgmlType = GgmlType::IQ4_XS;
    const QK: usize = QK_K;

    /// `dequantize_row_iq4_xs`, ggml-quants.c: `dl = d·(ls − 32)` per 32-element sub-block,
    /// then `y = dl·kvalues_iq4nl[index]`.
    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
            let d = b.d.to_f32();
            for (ib, (qs, y)) in b.qs.chunks_exact(16).zip(y.chunks_exact_mut(32)).enumerate() {
                let dl = d * sub_scale(b, ib) as f32;
                let (lo, hi) = y.split_at_mut(16);
                for ((lo, hi), &q) in lo.iter_mut().zip(hi).zip(qs) {
                    *lo = dl * KVALUES_IQ4NL[(q & 0xF) as usize] as f32;
                    *hi = dl * KVALUES_IQ4NL[(q >> 4) as usize] as f32;
                }
            }
        }
    }
}

impl VecDot for BlockIQ4_XS {
    type Act = BlockQ8_K;

    /// `ggml_vec_dot_iq4_xs_q8_K` (ggml-cpu/arch/x86/quants.c, arch/arm/quants.c).
    fn vec_dot(level: SimdLevel, x: &[Self], y: &[Self::Act]) -> f32 {
        match level {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the guard checked the CPU has the kernel's features.
            SimdLevel::Avx512 if level.is_available() => unsafe { x86::vec_dot_avx512(x, y) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            SimdLevel::Avx2 if level.is_available() => unsafe { x86::vec_dot_avx2(x, y) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: as above.
            SimdLevel::Neon if level.is_available() => unsafe { neon::vec_dot_neon(x, y) },
            _ => vec_dot_scalar(x, y),
        }
    }
}

/// Scalar reference of `ggml_vec_dot_iq4_xs_q8_K_generic` (ggml-cpu/quants.c).
///
/// Per 32-element sub-block an exact integer dot of the table values with the Q8_K quants,
/// then `sumf += (d_x·d_y·(ls − 32))·sumi`, sub-block by sub-block. The Q8_K `bsums` are not
/// used. Extra blocks in the longer slice are ignored.
pub fn vec_dot_scalar(x: &[BlockIQ4_XS], y: &[BlockQ8_K]) -> f32 {
    let mut sumf = 0f32;
    for (bx, by) in x.iter().zip(y) {
        let d4d8 = bx.d.to_f32() * by.d;
        for (ib, (qs, q8)) in bx.qs.chunks_exact(16).zip(by.qs.chunks_exact(32)).enumerate() {
            let dl = d4d8 * sub_scale(bx, ib) as f32;
            let mut sumi1 = 0i32;
            let mut sumi2 = 0i32;
            for (j, &q) in qs.iter().enumerate() {
                sumi1 += q8[j] as i32 * KVALUES_IQ4NL[(q & 0xF) as usize] as i32;
                sumi2 += q8[j + 16] as i32 * KVALUES_IQ4NL[(q >> 4) as usize] as i32;
            }
            sumf += dl * (sumi1 + sumi2) as f32;
        }
    }
    sumf
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::{BlockIQ4_XS, KVALUES_IQ4NL, sub_scale};
    use crate::k_quants::q8_k::BlockQ8_K;
    use crate::x86_util::hsum_float_8;
    use std::arch::x86_64::*;

    /// ggml's AVX2 kernel: `pshufb` looks the nibbles up in the table, `maddubs` forms pair
    /// sums, `madd` applies each sub-block's scale, one float multiply-add per block.
    ///
    /// ggml's `mul_add_epi8(x, y)` feeds `|x|` and `y` with x's sign to `maddubs`; when a
    /// Q8 quant is −128 and the table value negative, that sign flip wraps. Taking the
    /// sign from the Q8 side instead (`|q8|` is 128 as an unsigned byte, and the table values
    /// negate safely) is exact for every i8, and pair sums (≤ 2·128·127) cannot saturate.
    ///
    /// # Safety
    /// Requires AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn vec_dot_avx2(x: &[BlockIQ4_XS], y: &[BlockQ8_K]) -> f32 {
        // SAFETY: the table is 16 bytes.
        let values128 = unsafe { _mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i) };
        let m4b = _mm_set1_epi8(0x0F);
        let mut accum = _mm256_setzero_ps();
        for (bx, by) in x.iter().zip(y) {
            let mut sumi1 = _mm256_setzero_si256();
            let mut sumi2 = _mm256_setzero_si256();
            for (p, (qs, q8)) in bx.qs.chunks_exact(32).zip(by.qs.chunks_exact(64)).enumerate() {
                // SAFETY: `qs` is 32 bytes and `q8` 64; each load reads in bounds.
                let q4bits_1 = unsafe { _mm_loadu_si128(qs.as_ptr() as *const __m128i) };
                let q4bits_2 = unsafe { _mm_loadu_si128(qs.as_ptr().add(16) as *const __m128i) };
                let q8b_1 = unsafe { _mm256_loadu_si256(q8.as_ptr() as *const __m256i) };
                let q8b_2 = unsafe { _mm256_loadu_si256(q8.as_ptr().add(32) as *const __m256i) };
                // Low nibbles are elements 0..16 of the sub-block, high nibbles 16..32.
                let q4b_1 = _mm256_set_m128i(
                    _mm_shuffle_epi8(values128, _mm_and_si128(_mm_srli_epi16(q4bits_1, 4), m4b)),
                    _mm_shuffle_epi8(values128, _mm_and_si128(q4bits_1, m4b)),
                );
                let q4b_2 = _mm256_set_m128i(
                    _mm_shuffle_epi8(values128, _mm_and_si128(_mm_srli_epi16(q4bits_2, 4), m4b)),
                    _mm_shuffle_epi8(values128, _mm_and_si128(q4bits_2, m4b)),
                );
                let p16_1 = _mm256_maddubs_epi16(_mm256_abs_epi8(q8b_1), _mm256_sign_epi8(q4b_1, q8b_1));
                let p16_2 = _mm256_maddubs_epi16(_mm256_abs_epi8(q8b_2), _mm256_sign_epi8(q4b_2, q8b_2));
                let ls1 = sub_scale(bx, 2 * p) as i16;
                let ls2 = sub_scale(bx, 2 * p + 1) as i16;
                sumi1 = _mm256_add_epi32(_mm256_madd_epi16(p16_1, _mm256_set1_epi16(ls1)), sumi1);
                sumi2 = _mm256_add_epi32(_mm256_madd_epi16(p16_2, _mm256_set1_epi16(ls2)), sumi2);
            }
            accum = _mm256_fmadd_ps(
                _mm256_set1_ps(bx.d.to_f32() * by.d),
                _mm256_cvtepi32_ps(_mm256_add_epi32(sumi1, sumi2)),
                accum,
            );
        }
        hsum_float_8(accum)
    }

    /// AVX-512 with VNNI: two sub-blocks (64 elements) per step. Their 32 index bytes are
    /// spread to the four 128-bit lanes as [lo(A), hi(A), lo(B), hi(B)] with one lane shuffle
    /// and a per-lane shift (`vpsrlvq`), so they meet 64 contiguous Q8_K bytes; `vpshufb`
    /// looks up the table, `maddubs` forms exact pair sums (sign taken from the Q8 side, as
    /// in the AVX2 kernel) and VNNI `vpdpwssd` applies both scales and accumulates.
    ///
    /// # Safety
    /// Requires AVX-512 F/BW/VL/DQ + VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    pub unsafe fn vec_dot_avx512(x: &[BlockIQ4_XS], y: &[BlockQ8_K]) -> f32 {
        // SAFETY: the table is 16 bytes.
        let values = _mm512_broadcast_i32x4(unsafe { _mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i) });
        let m4b = _mm512_set1_epi8(0x0F);
        // Shift the odd 128-bit lanes (the high-nibble copies) by 4.
        let counts = _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0);
        let zero = _mm512_setzero_si512();
        let mut acc = _mm512_setzero_ps();
        for (bx, by) in x.iter().zip(y) {
            let mut sumi = _mm512_setzero_si512();
            for (p, (qs, q8)) in bx.qs.chunks_exact(32).zip(by.qs.chunks_exact(64)).enumerate() {
                // SAFETY: `qs` is 32 bytes and `q8` 64; each load reads in bounds.
                let q4 = _mm512_castsi256_si512(unsafe { _mm256_loadu_si256(qs.as_ptr() as *const __m256i) });
                let q8 = unsafe { _mm512_loadu_epi8(q8.as_ptr()) };
                // Lanes [0, 0, 1, 1] of the 256-bit load: [A, A, B, B].
                let q4 = _mm512_shuffle_i64x2(q4, q4, 0x50);
                let idx = _mm512_and_si512(_mm512_srlv_epi64(q4, counts), m4b);
                let k = _mm512_shuffle_epi8(values, idx);
                let neg = _mm512_movepi8_mask(q8);
                let sk = _mm512_mask_sub_epi8(k, neg, zero, k);
                let p16 = _mm512_maddubs_epi16(_mm512_abs_epi8(q8), sk);
                let ls1 = sub_scale(bx, 2 * p) as i16;
                let ls2 = sub_scale(bx, 2 * p + 1) as i16;
                let sc = _mm512_mask_blend_epi16(0xFFFF_0000, _mm512_set1_epi16(ls1), _mm512_set1_epi16(ls2));
                sumi = _mm512_dpwssd_epi32(sumi, p16, sc);
            }
            acc = _mm512_fmadd_ps(_mm512_set1_ps(bx.d.to_f32() * by.d), _mm512_cvtepi32_ps(sumi), acc);
        }
        _mm512_reduce_add_ps(acc)
    }
}

#[cfg(target_arch = "aarch64")]
pub(crate) mod neon {
    use super::{BlockIQ4_XS, KVALUES_IQ4NL, sub_scale};
    use crate::k_quants::q8_k::BlockQ8_K;
    use crate::neon_util::dot_i8x16;
    use std::arch::aarch64::*;

    /// ggml's NEON kernel: `tbl` looks the nibbles up, one integer dot product per
    /// sub-block times its scale, summed exactly per block, one float multiply per block.
    ///
    /// # Safety
    /// Requires NEON.
    #[target_feature(enable = "neon")]
    pub unsafe fn vec_dot_neon(x: &[BlockIQ4_XS], y: &[BlockQ8_K]) -> f32 {
        // SAFETY: the table is 16 bytes.
        let values = unsafe { vld1q_s8(KVALUES_IQ4NL.as_ptr()) };
        let m4b = vdupq_n_u8(0x0F);
        let mut sumf = 0f32;
        for (bx, by) in x.iter().zip(y) {
            let mut sumi = 0i32;
            for (ib, (qs, q8)) in bx.qs.chunks_exact(16).zip(by.qs.chunks_exact(32)).enumerate() {
                // SAFETY: `qs` is 16 bytes and `q8` 32; each load reads 16 in bounds.
                let q4bits = unsafe { vld1q_u8(qs.as_ptr()) };
                let q8lo = unsafe { vld1q_s8(q8.as_ptr()) };
                let q8hi = unsafe { vld1q_s8(q8.as_ptr().add(16)) };
                let lo = vqtbl1q_s8(values, vandq_u8(q4bits, m4b));
                let hi = vqtbl1q_s8(values, vshrq_n_u8::<4>(q4bits));
                let prod = vaddq_s32(dot_i8x16(lo, q8lo), dot_i8x16(hi, q8hi));
                sumi += vaddvq_s32(prod) * sub_scale(bx, ib);
            }
            sumf += bx.d.to_f32() * by.d * sumi as f32;
        }
        sumf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k_quants::q8_k::fill_bsums;
    use bytemuck::Zeroable;
    use proptest::prelude::*;

    /// Random IQ4_XS blocks: any index and scale bits, a finite f16 scale of sane size.
    fn iq4xs_blocks(n: usize) -> impl Strategy<Value = Vec<BlockIQ4_XS>> {
        prop::collection::vec(
            (prop::collection::vec(any::<u8>(), 132), any::<u16>(), -4.0f32..4.0).prop_map(|(bytes, h, d)| {
                let mut b = BlockIQ4_XS::zeroed();
                b.scales_l.copy_from_slice(&bytes[..4]);
                b.qs.copy_from_slice(&bytes[4..]);
                b.scales_h = h;
                b.d = f16::from_f32(d);
                b
            }),
            n,
        )
    }

    /// Random Q8_K blocks with consistent `bsums` (any i8 quant, -128 included).
    fn q8k_blocks(n: usize) -> impl Strategy<Value = Vec<BlockQ8_K>> {
        prop::collection::vec(
            (prop::collection::vec(any::<i8>(), QK_K), -2.0f32..2.0).prop_map(|(qs, d)| {
                let mut b = BlockQ8_K::zeroed();
                b.qs.copy_from_slice(&qs);
                b.d = d;
                fill_bsums(&mut b);
                b
            }),
            n,
        )
    }

    fn pair() -> impl Strategy<Value = (Vec<BlockIQ4_XS>, Vec<BlockQ8_K>)> {
        (1usize..=5).prop_flat_map(|n| (iq4xs_blocks(n), q8k_blocks(n)))
    }

    /// Element `e` of `b` from the format description.
    fn element(b: &BlockIQ4_XS, e: usize) -> f32 {
        let (ib, j) = (e / 32, e % 32);
        let byte = b.qs[16 * ib + j % 16];
        let idx = if j < 16 { byte & 0xF } else { byte >> 4 };
        let lo = (b.scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF;
        let hi = (b.scales_h >> (2 * ib)) & 3;
        let dl = b.d.to_f32() * ((lo as i32 | (hi as i32) << 4) - 32) as f32;
        dl * KVALUES_IQ4NL[idx as usize] as f32
    }

    fn magnitude(x: &[BlockIQ4_XS], y: &[BlockQ8_K]) -> f64 {
        let mut m = 0f64;
        for (bx, by) in x.iter().zip(y) {
            for e in 0..QK_K {
                m += (element(bx, e) as f64 * by.d as f64 * by.qs[e] as f64).abs();
            }
        }
        m
    }

    #[test]
    fn known_block_dequantizes_as_described() {
        let mut b = BlockIQ4_XS::zeroed();
        b.d = f16::from_f32(2.0);
        // Sub-block 0: ls = 1 | 0b10 << 4 = 33, so the factor is 2·(33 − 32) = 2.
        b.scales_l[0] = 0x01;
        b.scales_h = 0b10;
        for (j, q) in b.qs[..16].iter_mut().enumerate() {
            *q = j as u8 | ((15 - j as u8) << 4);
        }
        let mut out = vec![0f32; QK_K];
        BlockIQ4_XS::dequantize_row(&[b], &mut out);
        for j in 0..16 {
            assert_eq!(out[j], 2.0 * KVALUES_IQ4NL[j] as f32);
            assert_eq!(out[16 + j], 2.0 * KVALUES_IQ4NL[15 - j] as f32);
        }
        assert_eq!(out[0], -254.0);
        assert_eq!(out[16], 226.0);
        // Sub-block 1 has ls = 0, factor 2·(0 − 32) = −64; index 0 → −127.
        assert_eq!(out[32], -64.0 * -127.0);
        for (e, &v) in out.iter().enumerate() {
            assert_eq!(v.to_bits(), element(&b, e).to_bits(), "element {e}");
        }
    }

    #[test]
    fn extreme_activations_are_exact() {
        // Q8 quants of −128 against negative table values: the case where a sign flip on
        // the Q8 side would wrap.
        let mut b = BlockIQ4_XS::zeroed();
        b.d = f16::from_f32(1.0);
        b.scales_l = [0xFF; 4];
        b.scales_h = 0xFFFF;
        let mut a = BlockQ8_K::zeroed();
        a.d = 1.0;
        a.qs = [-128; QK_K];
        fill_bsums(&mut a);
        let want = vec_dot_scalar(&[b], &[a]);
        assert_eq!(want, 31.0 * 127.0 * 128.0 * QK_K as f32);
        for level in SimdLevel::available() {
            assert_eq!(BlockIQ4_XS::vec_dot(level, &[b], &[a]), want, "{level:?}");
        }
    }

    #[test]
    fn empty_input_is_zero() {
        for level in SimdLevel::available() {
            assert_eq!(BlockIQ4_XS::vec_dot(level, &[], &[]), 0.0);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn dequantize_matches_element_formula(x in iq4xs_blocks(3)) {
            let mut out = vec![0f32; x.len() * QK_K];
            BlockIQ4_XS::dequantize_row(&x, &mut out);
            for (i, &v) in out.iter().enumerate() {
                prop_assert_eq!(v.to_bits(), element(&x[i / QK_K], i % QK_K).to_bits(), "element {}", i);
            }
        }

        #[test]
        fn scalar_matches_dequantized_dot((x, y) in pair()) {
            let mut wx = vec![0f32; x.len() * QK_K];
            let mut wy = vec![0f32; y.len() * QK_K];
            BlockIQ4_XS::dequantize_row(&x, &mut wx);
            BlockQ8_K::dequantize_row(&y, &mut wy);
            let want: f64 = wx.iter().zip(&wy).map(|(&a, &b)| a as f64 * b as f64).sum();
            let got = vec_dot_scalar(&x, &y) as f64;
            let tol = 1e-5 * magnitude(&x, &y) + 1e-6;
            prop_assert!((got - want).abs() <= tol, "got {} want {} tol {}", got, want, tol);
        }

        #[test]
        fn every_level_matches_scalar((x, y) in pair()) {
            let want = vec_dot_scalar(&x, &y) as f64;
            let tol = 1e-5 * magnitude(&x, &y) + 1e-6;
            for level in SimdLevel::available() {
                let got = BlockIQ4_XS::vec_dot(level, &x, &y) as f64;
                prop_assert!((got - want).abs() <= tol, "{:?}: got {} want {} tol {}", level, got, want, tol);
            }
        }
    }
}
