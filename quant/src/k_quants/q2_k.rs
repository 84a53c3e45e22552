//! Q2_K: 256 2-bit weights in 16 sub-blocks with 4-bit scales and mins (`block_q2_K`, ggml-common.h).
//!
//! Element `e` of a super-block: sub-block `j = e / 16` has scale `sc = scales[j] & 0xF` and
//! min `m = scales[j] >> 4`; its 2-bit quant `q` sits in `qs[32·(e / 128) + e % 32]` at bit
//! `2·((e % 128) / 32)`. x = d·sc·q − dmin·m.

use half::f16;

use crate::k_quants::q8_k::BlockQ8_K;
use crate::{Block, GgmlType, QK_K, SimdLevel, VecDot};

/// `blockQ2_K` (Q2_K, ggml-common.h): 84 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ2_K {
    /// Scales (low nibble) and mins (high nibble).
    pub scales: [u8; 16],
    /// Quants.
    pub qs: [u8; 64],
    /// Super-block scale for the scales.
    pub d: f16,
    /// Super-block scale for the mins.
    pub dmin: f16,
}
const _: () = assert!(std::mem::size_of::<BlockQ2_K>() == 84);

impl Block for BlockQ2_K {
    const TYPE: GgmlType = GgmlType::Q2_K;
    const QK: usize = QK_K;

    /// `dequantize_row_q2_K`, ggml-quants.c: per 16-element sub-block `dl = d·(sc & 0xF)`,
    /// `ml = dmin·(sc >> 4)`, then `y = dl·q − ml`, in that order (no fused multiply-add).
    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
            let d = b.d.to_f32();
            let min = b.dmin.to_f32();
            // Each 128-element half reads 32 quant bytes four times, two bits further each
            // time; each 32-element slice is two sub-blocks (bytes 0..16 and 16..32).
            for (half, (q, y)) in b.qs.chunks_exact(32).zip(y.chunks_exact_mut(128)).enumerate() {
                for (shift_i, y) in y.chunks_exact_mut(32).enumerate() {
                    let shift = 2 * shift_i;
                    let is = 8 * half + 2 * shift_i;
                    for (k, (q, y)) in q.chunks_exact(16).zip(y.chunks_exact_mut(16)).enumerate() {
                        let sc = b.scales[is + k];
                        let dl = d * (sc & 0xF) as f32;
                        let ml = min * (sc >> 4) as f32;
                        for (y, &q) in y.iter_mut().zip(q) {
                            *y = dl * ((q >> shift) & 3) as f32 - ml;
                        }
                    }
                }
            }
        }
    }
}

impl VecDot for BlockQ2_K {
    type Act = BlockQ8_K;

    /// `ggml_vec_dot_q2_K_q8_K` (ggml-cpu/arch/x86/quants.c, arch/arm/quants.c).
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

/// Scalar reference of `ggml_vec_dot_q2_K_q8_K_generic` (ggml-cpu/quants.c).
///
/// Per super-block the quant products are summed exactly in integers (`isum`, weighted by the
/// 4-bit scales), the mins are applied through the Q8_K partial sums
/// (`summs = Σ bsums[j]·(scales[j] >> 4)`), and `sumf += dall·isum − dmin·summs` with
/// `dall = d_y·d`, `dmin = d_y·dmin`. So, like ggml, the result relies on `y.bsums` matching
/// `y.qs`. Extra blocks in the longer slice are ignored.
pub fn vec_dot_scalar(x: &[BlockQ2_K], y: &[BlockQ8_K]) -> f32 {
    let mut sumf = 0f32;
    for (bx, by) in x.iter().zip(y) {
        let sc = &bx.scales;
        let summs: i32 = by.bsums.iter().zip(sc).map(|(&s, &c)| s as i32 * (c >> 4) as i32).sum();
        let dall = by.d * bx.d.to_f32();
        let dmin = by.d * bx.dmin.to_f32();

        let mut isum = 0i32;
        let mut is = 0;
        for (q2, q8) in bx.qs.chunks_exact(32).zip(by.qs.chunks_exact(128)) {
            for (j, q8) in q8.chunks_exact(32).enumerate() {
                let shift = 2 * j;
                for (q2, q8) in q2.chunks_exact(16).zip(q8.chunks_exact(16)) {
                    let d = (sc[is] & 0xF) as i32;
                    is += 1;
                    let isuml: i32 = q2
                        .iter()
                        .zip(q8)
                        .map(|(&q, &a)| a as i32 * ((q >> shift) & 3) as i32)
                        .sum();
                    isum += d * isuml;
                }
            }
        }
        sumf += dall * isum as f32 - dmin * summs as f32;
    }
    sumf
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::BlockQ2_K;
    use crate::k_quants::q8_k::BlockQ8_K;
    use crate::x86_util::hsum_float_8;
    use std::arch::x86_64::*;

    /// `get_scale_shuffle_q3k(i)` (ggml-cpu/arch/x86/quants.c) without the table: a
    /// `pshufb` control that, applied to 8 i16 scales repeated in both 128-bit lanes,
    /// broadcasts scale `2i` over the low lane and scale `2i + 1` over the high lane (the two
    /// 16-element sub-blocks a 32-byte quant vector covers).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn scale_shuffle_q3k(i: i32) -> __m256i {
        let w = |k: i32| ((4 * i + k) | ((4 * i + k + 1) << 8)) as i16;
        _mm256_set_m128i(_mm_set1_epi16(w(2)), _mm_set1_epi16(w(0)))
    }

    /// ggml's AVX2 kernel: the 2-bit quants are unsigned, so `maddubs` multiplies them with
    /// the Q8_K bytes directly; `madd` applies the per-sub-block scales; the mins go through
    /// `bsums` in one `madd`.
    ///
    /// # Safety
    /// Requires AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn vec_dot_avx2(x: &[BlockQ2_K], y: &[BlockQ8_K]) -> f32 {
        let m3 = _mm256_set1_epi8(3);
        let m4 = _mm_set1_epi8(0xF);
        let mut acc = _mm256_setzero_ps();
        for (bx, by) in x.iter().zip(y) {
            let d = by.d * bx.d.to_f32();
            let dmin = -by.d * bx.dmin.to_f32();

            // SAFETY: `scales` is 16 bytes and `bsums` 32 bytes; `loadu` needs no alignment.
            let mins_and_scales = unsafe { _mm_loadu_si128(bx.scales.as_ptr() as *const __m128i) };
            let bsums = unsafe { _mm256_loadu_si256(by.bsums.as_ptr() as *const __m256i) };
            let scales8 = _mm_and_si128(mins_and_scales, m4);
            let mins8 = _mm_and_si128(_mm_srli_epi16(mins_and_scales, 4), m4);
            let mins = _mm256_cvtepi8_epi16(mins8);
            let prod = _mm256_madd_epi16(mins, bsums);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(prod), acc);

            let all_scales = _mm256_cvtepi8_epi16(scales8);
            let l_scales = _mm256_castsi256_si128(all_scales);
            let h_scales = _mm256_extracti128_si256(all_scales, 1);
            let scales = [
                _mm256_set_m128i(l_scales, l_scales),
                _mm256_set_m128i(h_scales, h_scales),
            ];

            let mut sumi = _mm256_setzero_si256();
            for (j, (q2, q8)) in bx.qs.chunks_exact(32).zip(by.qs.chunks_exact(128)).enumerate() {
                // SAFETY: `q2` is 32 bytes, `q8` 128 bytes; each load reads 32 in bounds.
                let q2bits = unsafe { _mm256_loadu_si256(q2.as_ptr() as *const __m256i) };
                let ld = |k: usize| unsafe { _mm256_loadu_si256(q8.as_ptr().add(32 * k) as *const __m256i) };
                let (q8_0, q8_1, q8_2, q8_3) = (ld(0), ld(1), ld(2), ld(3));

                let q2_0 = _mm256_and_si256(q2bits, m3);
                let q2_1 = _mm256_and_si256(_mm256_srli_epi16(q2bits, 2), m3);
                let q2_2 = _mm256_and_si256(_mm256_srli_epi16(q2bits, 4), m3);
                let q2_3 = _mm256_and_si256(_mm256_srli_epi16(q2bits, 6), m3);

                let p0 = _mm256_maddubs_epi16(q2_0, q8_0);
                let p1 = _mm256_maddubs_epi16(q2_1, q8_1);
                let p2 = _mm256_maddubs_epi16(q2_2, q8_2);
                let p3 = _mm256_maddubs_epi16(q2_3, q8_3);

                let p0 = _mm256_madd_epi16(_mm256_shuffle_epi8(scales[j], scale_shuffle_q3k(0)), p0);
                let p1 = _mm256_madd_epi16(_mm256_shuffle_epi8(scales[j], scale_shuffle_q3k(1)), p1);
                let p2 = _mm256_madd_epi16(_mm256_shuffle_epi8(scales[j], scale_shuffle_q3k(2)), p2);
                let p3 = _mm256_madd_epi16(_mm256_shuffle_epi8(scales[j], scale_shuffle_q3k(3)), p3);

                sumi = _mm256_add_epi32(
                    sumi,
                    _mm256_add_epi32(_mm256_add_epi32(p0, p1), _mm256_add_epi32(p2, p3)),
                );
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum_float_8(acc)
    }

    /// Index vector for `vpermw`: word `w` selects scale `4t + w / 8`, i.e. one scale per
    /// 128-bit lane, for the four 16-element sub-blocks `4t..4t+4` that step `t` covers.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    pub(crate) fn scale_index_4(t: i64) -> __m512i {
        let r = |k: i64| (4 * t + k) * 0x0001_0001_0001_0001;
        _mm512_set_epi64(r(3), r(3), r(2), r(2), r(1), r(1), r(0), r(0))
    }

    /// AVX-512 with VNNI: 64 quants per step. The 32 quant bytes of a 128-element half are
    /// broadcast to both 256-bit halves and shifted by two different amounts (`vpsrlvw`), so
    /// the 64 weights line up with 64 *contiguous* Q8_K bytes; `maddubs` forms pair sums and
    /// VNNI `vpdpwssd` multiplies them by the per-sub-block scales (picked with `vpermw`) and
    /// accumulates in one instruction.
    ///
    /// # Safety
    /// Requires AVX-512 F/BW/VL/DQ + VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    pub unsafe fn vec_dot_avx512(x: &[BlockQ2_K], y: &[BlockQ8_K]) -> f32 {
        let m3 = _mm512_set1_epi8(3);
        let m4 = _mm_set1_epi8(0xF);
        let mut acc = _mm512_setzero_ps();
        let mut acc_m = _mm256_setzero_ps();
        for (bx, by) in x.iter().zip(y) {
            let d = by.d * bx.d.to_f32();
            let dmin = -by.d * bx.dmin.to_f32();

            // SAFETY: `scales` is 16 bytes and `bsums` 32 bytes; `loadu` needs no alignment.
            let mins_and_scales = unsafe { _mm_loadu_si128(bx.scales.as_ptr() as *const __m128i) };
            let bsums = unsafe { _mm256_loadu_si256(by.bsums.as_ptr() as *const __m256i) };
            let mins = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(mins_and_scales, 4), m4));
            let prod = _mm256_madd_epi16(mins, bsums);
            acc_m = _mm256_fmadd_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(prod), acc_m);

            let scales = _mm512_zextsi256_si512(_mm256_cvtepu8_epi16(_mm_and_si128(mins_and_scales, m4)));

            let mut sumi = _mm512_setzero_si512();
            for t in 0..4usize {
                let half = t / 2;
                // Shift pair (0, 2) for even steps, (4, 6) for odd ones.
                let s = 4 * (t % 2) as i16;
                // SAFETY: `qs` is 64 bytes, so 32 from 32·half ≤ 32 are in bounds.
                let q2 = unsafe { _mm256_loadu_si256(bx.qs.as_ptr().add(32 * half) as *const __m256i) };
                let q2 = _mm512_broadcast_i64x4(q2);
                let counts = _mm512_inserti64x4(
                    _mm512_castsi256_si512(_mm256_set1_epi16(s)),
                    _mm256_set1_epi16(s + 2),
                    1,
                );
                let q2 = _mm512_and_si512(_mm512_srlv_epi16(q2, counts), m3);
                // SAFETY: `qs` is 256 bytes, so 64 from 64·t ≤ 192 are in bounds.
                let q8 = unsafe { _mm512_loadu_epi8(by.qs.as_ptr().add(64 * t)) };
                let p16 = _mm512_maddubs_epi16(q2, q8);
                let sc = _mm512_permutexvar_epi16(scale_index_4(t as i64), scales);
                sumi = _mm512_dpwssd_epi32(sumi, p16, sc);
            }
            acc = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(sumi), acc);
        }
        _mm512_reduce_add_ps(acc) + hsum_float_8(acc_m)
    }
}

#[cfg(target_arch = "aarch64")]
pub(crate) mod neon {
    use super::BlockQ2_K;
    use crate::k_quants::q8_k::BlockQ8_K;
    use crate::neon_util::dot_i8x16;
    use std::arch::aarch64::*;

    /// The 2-bit quants at bit `SHIFT` of 16 bytes.
    #[inline]
    #[target_feature(enable = "neon")]
    fn bits2<const SHIFT: i32>(q: uint8x16_t) -> int8x16_t {
        vreinterpretq_s8_u8(vandq_u8(vshlq_u8(q, vdupq_n_s8(-(SHIFT as i8))), vdupq_n_u8(3)))
    }

    /// ggml's NEON kernel: mins through `bsums` with widening multiplies, then per 16-element
    /// sub-block an integer dot product times its 4-bit scale.
    ///
    /// # Safety
    /// Requires NEON.
    #[target_feature(enable = "neon")]
    pub unsafe fn vec_dot_neon(x: &[BlockQ2_K], y: &[BlockQ8_K]) -> f32 {
        let mut sum = 0f32;
        for (bx, by) in x.iter().zip(y) {
            let d = by.d * bx.d.to_f32();
            let dmin = -by.d * bx.dmin.to_f32();

            // SAFETY: `scales` is 16 bytes, `bsums` 16 i16.
            let mins_and_scales = unsafe { vld1q_u8(bx.scales.as_ptr()) };
            let mins = vshrq_n_u8::<4>(mins_and_scales);
            let q8s0 = unsafe { vld1q_s16(by.bsums.as_ptr()) };
            let q8s1 = unsafe { vld1q_s16(by.bsums.as_ptr().add(8)) };
            let mins0 = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(mins)));
            let mins1 = vreinterpretq_s16_u16(vmovl_high_u8(mins));
            let s0 = vaddq_s32(
                vmull_s16(vget_low_s16(mins0), vget_low_s16(q8s0)),
                vmull_high_s16(mins0, q8s0),
            );
            let s1 = vaddq_s32(
                vmull_s16(vget_low_s16(mins1), vget_low_s16(q8s1)),
                vmull_high_s16(mins1, q8s1),
            );
            sum += dmin * vaddvq_s32(vaddq_s32(s0, s1)) as f32;

            let mut isum = 0i32;
            for (half, (q2, q8)) in bx.qs.chunks_exact(32).zip(by.qs.chunks_exact(128)).enumerate() {
                // SAFETY: `q2` is 32 bytes, `q8` 128; every load below reads 16 in bounds.
                let q2b0 = unsafe { vld1q_u8(q2.as_ptr()) };
                let q2b1 = unsafe { vld1q_u8(q2.as_ptr().add(16)) };
                let ld = |k: usize| unsafe { vld1q_s8(q8.as_ptr().add(16 * k)) };
                let sc = &bx.scales[8 * half..8 * half + 8];
                let mut acc = |k: usize, a: int8x16_t, b: int8x16_t| {
                    isum += vaddvq_s32(dot_i8x16(a, ld(2 * k))) * (sc[2 * k] & 0xF) as i32;
                    isum += vaddvq_s32(dot_i8x16(b, ld(2 * k + 1))) * (sc[2 * k + 1] & 0xF) as i32;
                };
                acc(0, bits2::<0>(q2b0), bits2::<0>(q2b1));
                acc(1, bits2::<2>(q2b0), bits2::<2>(q2b1));
                acc(2, bits2::<4>(q2b0), bits2::<4>(q2b1));
                acc(3, bits2::<6>(q2b0), bits2::<6>(q2b1));
            }
            sum += d * isum as f32;
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k_quants::q8_k::fill_bsums;
    use proptest::prelude::*;

    /// Random Q2_K blocks: any quant and scale bytes, finite f16 super-scales of sane size.
    fn q2k_blocks(n: usize) -> impl Strategy<Value = Vec<BlockQ2_K>> {
        prop::collection::vec(
            (prop::collection::vec(any::<u8>(), 80), -4.0f32..4.0, -4.0f32..4.0).prop_map(|(bytes, d, m)| {
                let mut b = BlockQ2_K::zeroed();
                b.scales.copy_from_slice(&bytes[..16]);
                b.qs.copy_from_slice(&bytes[16..]);
                b.d = f16::from_f32(d);
                b.dmin = f16::from_f32(m);
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

    fn pair() -> impl Strategy<Value = (Vec<BlockQ2_K>, Vec<BlockQ8_K>)> {
        (1usize..=5).prop_flat_map(|n| (q2k_blocks(n), q8k_blocks(n)))
    }

    use bytemuck::Zeroable;

    /// Element `e` of `b` computed from the format description, independently of the loop
    /// structure of `dequantize_row`.
    fn element(b: &BlockQ2_K, e: usize) -> f32 {
        let q = (b.qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
        let sc = b.scales[e / 16];
        let dl = b.d.to_f32() * (sc & 0xF) as f32;
        let ml = b.dmin.to_f32() * (sc >> 4) as f32;
        dl * q as f32 - ml
    }

    /// Σ|a_i|·(|dl·q_i| + |ml|): the size of the terms the dot product sums, so tolerances
    /// hold even where the scale and min parts cancel.
    fn magnitude(x: &[BlockQ2_K], y: &[BlockQ8_K]) -> f64 {
        let mut m = 0f64;
        for (bx, by) in x.iter().zip(y) {
            for e in 0..QK_K {
                let q = (bx.qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
                let sc = bx.scales[e / 16];
                let dl = bx.d.to_f32() as f64 * (sc & 0xF) as f64;
                let ml = bx.dmin.to_f32() as f64 * (sc >> 4) as f64;
                m += (by.d as f64 * by.qs[e] as f64).abs() * ((dl * q as f64).abs() + ml.abs());
            }
        }
        m
    }

    #[test]
    fn known_block_dequantizes_as_described() {
        let mut b = BlockQ2_K::zeroed();
        b.d = f16::from_f32(0.5);
        b.dmin = f16::from_f32(0.25);
        for (i, s) in b.scales.iter_mut().enumerate() {
            *s = (i as u8 & 0xF) | (((15 - i) as u8) << 4);
        }
        for (i, q) in b.qs.iter_mut().enumerate() {
            *q = (i as u8).wrapping_mul(37).wrapping_add(11);
        }
        let mut out = vec![0f32; QK_K];
        BlockQ2_K::dequantize_row(&[b], &mut out);
        for (e, &v) in out.iter().enumerate() {
            assert_eq!(v.to_bits(), element(&b, e).to_bits(), "element {e}");
        }
        // Element 0: q = qs[0] & 3 = 11 & 3 = 3, sc = 0 | 15 << 4: 0.5·0·3 − 0.25·15.
        assert_eq!(out[0], -3.75);
        // Element 200: half 1, shift 2·((200 − 128) / 32) = 4, byte 32 + 200 % 32 = 40.
        let q = ((40u8.wrapping_mul(37).wrapping_add(11)) >> 4) & 3;
        let sc = b.scales[12];
        assert_eq!(out[200], 0.5 * (sc & 0xF) as f32 * q as f32 - 0.25 * (sc >> 4) as f32);
    }

    #[test]
    fn empty_input_is_zero() {
        for level in SimdLevel::available() {
            assert_eq!(BlockQ2_K::vec_dot(level, &[], &[]), 0.0);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn dequantize_matches_element_formula(x in q2k_blocks(3)) {
            let mut out = vec![0f32; x.len() * QK_K];
            BlockQ2_K::dequantize_row(&x, &mut out);
            for (i, &v) in out.iter().enumerate() {
                prop_assert_eq!(v.to_bits(), element(&x[i / QK_K], i % QK_K).to_bits(), "element {}", i);
            }
        }

        #[test]
        fn scalar_matches_dequantized_dot((x, y) in pair()) {
            let mut wx = vec![0f32; x.len() * QK_K];
            let mut wy = vec![0f32; y.len() * QK_K];
            BlockQ2_K::dequantize_row(&x, &mut wx);
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
                let got = BlockQ2_K::vec_dot(level, &x, &y) as f64;
                prop_assert!((got - want).abs() <= tol, "{:?}: got {} want {} tol {}", level, got, want, tol);
            }
        }
    }
}
