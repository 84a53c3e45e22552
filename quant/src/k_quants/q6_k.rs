//! Q6_K: 256 6-bit weights in 16 sub-blocks of 16 with int8 scales (`block_q6_K`, ggml-common.h).
//!
//! x = d · sc_j · (q - 32) for sub-block j (16 elements), q in 0..=63. In each half of 128
//! elements (`ql` advancing by 64 bytes, `qh` by 32), for l in 0..32: element l is the low
//! nibble of `ql[l]`, l+32 the low nibble of `ql[l+32]`, l+64 the high nibble of `ql[l]` and
//! l+96 the high nibble of `ql[l+32]`; their top two bits are bits 0-1, 2-3, 4-5 and 6-7 of
//! `qh[l]`.

// Index loops mirror the C they reproduce, operation for operation.
#![allow(clippy::needless_range_loop)]

use half::f16;

use crate::k_quants::common::{GROUP_MAX_EPS, make_qx_quants_lanes, nearest_int};
use crate::k_quants::q8_k::BlockQ8_K;
use crate::{Block, GgmlType, QK_K, QuantizeRef, SimdLevel, VecDot};

/// `blockQ6_K` (Q6_K, ggml-common.h): 210 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ6_K {
    /// Low 4 bits.
    pub ql: [u8; 128],
    /// High 2 bits.
    pub qh: [u8; 64],
    /// Scales.
    pub scales: [i8; 16],
    /// Super-block scale.
    pub d: f16,
}
const _: () = assert!(std::mem::size_of::<BlockQ6_K>() == 210);

/// The 256 quants of `b` in element order, with the -32 offset applied (the `aux8` unpacking
/// of `ggml_vec_dot_q6_K_q8_K_generic`).
#[inline]
fn unpack_q6(b: &BlockQ6_K) -> [i8; QK_K] {
    let mut a = [0i8; QK_K];
    for n in 0..2 {
        let ql = &b.ql[64 * n..64 * n + 64];
        let qh = &b.qh[32 * n..32 * n + 32];
        let a = &mut a[128 * n..128 * n + 128];
        for l in 0..32 {
            a[l] = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
            a[l + 32] = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            a[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            a[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
        }
    }
    a
}

impl Block for BlockQ6_K {
    const TYPE: GgmlType = GgmlType::Q6_K;
    const QK: usize = QK_K;

    /// `dequantize_row_q6_K`, ggml-quants.c: `d * sc * q` (in that order, f32).
    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
            let d = b.d.to_f32();
            let q = unpack_q6(b);
            for (i, (y, &q)) in y.iter_mut().zip(q.iter()).enumerate() {
                *y = d * b.scales[i / 16] as f32 * q as f32;
            }
        }
    }
}

impl QuantizeRef for BlockQ6_K {
    /// `quantize_row_q6_K_ref`, ggml-quants.c: per sub-block of 16 a `make_qx_quants` fit
    /// (nmax 32, rmse_type 1, weights x²), the sub-block scales quantized to int8 against the
    /// one of largest magnitude (`iscale = -128/max_scale`), `d` rounded to f16, then every
    /// element re-quantized against the rounded scales.
    fn quantize_row_ref(src: &[f32], dst: &mut [Self]) {
        let mut l = [0i8; QK_K];
        for (x, y) in src.chunks_exact(QK_K).zip(dst.iter_mut()) {
            let mut max_scale = 0f32;
            let mut max_abs_scale = 0f32;
            // The sixteen sub-blocks' fits side by side ([`make_qx_quants_lanes`]), transposed.
            let mut xt = [[0f32; QK_K / 16]; 16];
            for (i, &v) in x.iter().enumerate() {
                xt[i % 16][i / 16] = v;
            }
            let mut lt = [[0i8; QK_K / 16]; 16];
            let scales = make_qx_quants_lanes::<{ QK_K / 16 }, 16>(32, &xt, &mut lt);
            for (i, v) in l.iter_mut().enumerate() {
                *v = lt[i % 16][i / 16];
            }
            for &scale in &scales {
                let abs_scale = scale.abs();
                if abs_scale > max_abs_scale {
                    max_abs_scale = abs_scale;
                    max_scale = scale;
                }
            }

            if max_abs_scale < GROUP_MAX_EPS {
                *y = bytemuck::Zeroable::zeroed();
                y.d = f16::from_f32(0.0);
                continue;
            }

            let iscale = -128.0f32 / max_scale;
            y.d = f16::from_f32(1.0 / iscale);
            for (s, &v) in y.scales.iter_mut().zip(&scales) {
                // MIN(127, nearest_int(...)) stored to int8_t: the low byte.
                *s = nearest_int(iscale * v).min(127) as i8;
            }

            for j in 0..QK_K / 16 {
                let d = y.d.to_f32() * y.scales[j] as f32;
                if d == 0.0 {
                    continue;
                }
                for ii in 0..16 {
                    let q = nearest_int(x[16 * j + ii] / d);
                    l[16 * j + ii] = ((-32).max(31.min(q)) + 32) as i8;
                }
            }

            // L holds 0..=63 here (make_qx_quants writes l + nmax with l in -32..32).
            let l = l.map(|v| v as u8);
            for n in 0..2 {
                let lb = &l[128 * n..128 * n + 128];
                let ql = &mut y.ql[64 * n..64 * n + 64];
                for i in 0..32 {
                    let q1 = lb[i] & 0xF;
                    let q2 = lb[i + 32] & 0xF;
                    let q3 = lb[i + 64] & 0xF;
                    let q4 = lb[i + 96] & 0xF;
                    ql[i] = q1 | (q3 << 4);
                    ql[i + 32] = q2 | (q4 << 4);
                }
                let qh = &mut y.qh[32 * n..32 * n + 32];
                for i in 0..32 {
                    qh[i] =
                        (lb[i] >> 4) | ((lb[i + 32] >> 4) << 2) | ((lb[i + 64] >> 4) << 4) | ((lb[i + 96] >> 4) << 6);
                }
            }
        }
    }
}

impl VecDot for BlockQ6_K {
    type Act = BlockQ8_K;

    /// `ggml_vec_dot_q6_K_q8_K` (ggml-cpu). The SIMD kernels apply the -32 offset through the
    /// activation's `bsums` (as ggml's NEON and AVX kernels do), which must be consistent with
    /// its quants.
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

    #[cfg(target_arch = "x86_64")]
    fn vec_dot_residual(level: SimdLevel, x: &[Self], y: &[Self::Act], r: &[Self::Act]) -> f32 {
        crate::residual_avx512_or_each(level, x, y, r, x86::vec_dot_residual_avx512)
    }

    #[cfg(target_arch = "x86_64")]
    fn vec_dot_multi(level: SimdLevel, x: &[Self], ys: &[&[BlockQ8_K]], out: &mut [f32]) {
        crate::multi_avx2_or_each(level, x, ys, out, x86::vec_dot_multi_avx2)
    }

    #[cfg(target_arch = "x86_64")]
    fn vec_dot_four_rows(level: SimdLevel, xs: [&[Self]; 4], ys: &[&[BlockQ8_K]], outs: [&mut [f32]; 4]) {
        if level == SimdLevel::Avx512 && level.is_available() {
            // SAFETY: AVX-512 + VNNI detected.
            unsafe { x86::four_rows_avx512(xs, ys, outs) }
        } else {
            crate::four_rows_each(level, xs, ys, outs)
        }
    }
}

/// Scalar reference of `ggml_vec_dot_q6_K_q8_K_generic` (ggml-cpu/quants.c): per super-block
/// exact integer sums in eight `aux32` lanes, scaled by `d_x · d_y` into eight f32 `sums`,
/// which are added at the end.
pub fn vec_dot_scalar(x: &[BlockQ6_K], y: &[BlockQ8_K]) -> f32 {
    let mut sums = [0f32; 8];
    for (bx, by) in x.iter().zip(y) {
        let a = unpack_q6(bx);
        let mut aux32 = [0i32; 8];
        for (j, (a, q8)) in a.chunks_exact(16).zip(by.qs.chunks_exact(16)).enumerate() {
            let scale = bx.scales[j] as i32;
            for (a, q8) in a.chunks_exact(8).zip(q8.chunks_exact(8)) {
                for l in 0..8 {
                    // aux16 = q8 * a fits i16 (|.| <= 32 * 128).
                    let aux16 = q8[l] as i16 * a[l] as i16;
                    aux32[l] += scale * aux16 as i32;
                }
            }
        }
        let d = bx.d.to_f32() * by.d;
        for l in 0..8 {
            sums[l] += d * aux32[l] as f32;
        }
    }
    let mut sumf = 0f32;
    for s in sums {
        sumf += s;
    }
    sumf
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::BlockQ6_K;
    use crate::k_quants::common::{four_rows_by_pairs, sumi_2x4};
    use crate::k_quants::q8_k::BlockQ8_K;
    use crate::x86_util::*;
    use std::arch::x86_64::*;

    /// `Σ_j sc_j · bsums[j]` of a block as 8 i32 lanes (pairs of sub-blocks): the -32 offset
    /// term, taken out of the main loop as ggml's AVX and NEON kernels do.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn offset_term(sc16: __m256i, by: &BlockQ8_K) -> __m256i {
        let bsums = unsafe { _mm256_loadu_si256(by.bsums.as_ptr() as *const __m256i) };
        _mm256_madd_epi16(bsums, sc16)
    }

    /// `get_scale_shuffle(i)` (ggml-cpu/arch/x86/quants.c): scale byte `2i` in bytes 0..8 and
    /// `2i + 1` in bytes 8..16, i.e. the scales of the two 16-element sub-blocks of a 32-byte run.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn get_scale_shuffle(i: i8) -> __m128i {
        let (a, b) = (2 * i, 2 * i + 1);
        _mm_set_epi8(b, b, b, b, b, b, b, b, a, a, a, a, a, a, a, a)
    }

    /// Following `ggml_vec_dot_q6_K_q8_K`'s AVX2 branch (ggml-cpu/arch/x86/quants.c): per 128
    /// elements, four 32-byte vectors of unsigned 6-bit quants (0..=63) against the
    /// activations with `maddubs`, each `madd`-ed with its two sub-block scales. Unlike ggml's
    /// AVX2 branch, which subtracts `32 · q8` with four more `maddubs` per 128 elements, the
    /// -32 offset is applied once per block through `bsums` (as its AVX branch does).
    ///
    /// # Safety
    /// Requires AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn vec_dot_avx2(x: &[BlockQ6_K], y: &[BlockQ8_K]) -> f32 {
        let m4 = _mm256_set1_epi8(0xF);
        let m3 = _mm256_set1_epi8(3);
        let mut sumf = 0f32;
        for (bx, by) in x.iter().zip(y) {
            let d = by.d * bx.d.to_f32();
            let scales = unsafe { _mm_loadu_si128(bx.scales.as_ptr() as *const __m128i) };
            let sc16 = _mm256_cvtepi8_epi16(scales);
            let ql = bx.ql.as_ptr();
            let qh = bx.qh.as_ptr();
            let q8 = by.qs.as_ptr();
            let mut sumi0 = _mm256_setzero_si256();
            let mut sumi1 = _mm256_setzero_si256();
            for n in 0..2 {
                let is = 4 * n as i8;
                let scale_0 = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, get_scale_shuffle(is)));
                let scale_1 = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, get_scale_shuffle(is + 1)));
                let scale_2 = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, get_scale_shuffle(is + 2)));
                let scale_3 = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, get_scale_shuffle(is + 3)));

                let q4bits1 = unsafe { _mm256_loadu_si256(ql.add(64 * n) as *const __m256i) };
                let q4bits2 = unsafe { _mm256_loadu_si256(ql.add(64 * n + 32) as *const __m256i) };
                let q4bits_h = unsafe { _mm256_loadu_si256(qh.add(32 * n) as *const __m256i) };

                let q4h_0 = _mm256_slli_epi16(_mm256_and_si256(q4bits_h, m3), 4);
                let q4h_1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(q4bits_h, 2), m3), 4);
                let q4h_2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(q4bits_h, 4), m3), 4);
                let q4h_3 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(q4bits_h, 6), m3), 4);

                let q4_0 = _mm256_or_si256(_mm256_and_si256(q4bits1, m4), q4h_0);
                let q4_1 = _mm256_or_si256(_mm256_and_si256(q4bits2, m4), q4h_1);
                let q4_2 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4bits1, 4), m4), q4h_2);
                let q4_3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4bits2, 4), m4), q4h_3);

                let q8_0 = unsafe { _mm256_loadu_si256(q8.add(128 * n) as *const __m256i) };
                let q8_1 = unsafe { _mm256_loadu_si256(q8.add(128 * n + 32) as *const __m256i) };
                let q8_2 = unsafe { _mm256_loadu_si256(q8.add(128 * n + 64) as *const __m256i) };
                let q8_3 = unsafe { _mm256_loadu_si256(q8.add(128 * n + 96) as *const __m256i) };

                // 0..=63 times -128..=127, pairwise: |.| <= 16128, no i16 saturation.
                let p16_0 = _mm256_madd_epi16(scale_0, _mm256_maddubs_epi16(q4_0, q8_0));
                let p16_1 = _mm256_madd_epi16(scale_1, _mm256_maddubs_epi16(q4_1, q8_1));
                let p16_2 = _mm256_madd_epi16(scale_2, _mm256_maddubs_epi16(q4_2, q8_2));
                let p16_3 = _mm256_madd_epi16(scale_3, _mm256_maddubs_epi16(q4_3, q8_3));

                sumi0 = _mm256_add_epi32(sumi0, _mm256_add_epi32(p16_0, p16_1));
                sumi1 = _mm256_add_epi32(sumi1, _mm256_add_epi32(p16_2, p16_3));
            }
            let offset = _mm256_slli_epi32(offset_term(sc16, by), 5);
            let sumi = _mm256_sub_epi32(_mm256_add_epi32(sumi0, sumi1), offset);
            // Reduced to one exact integer before going to float: the lanes hold sums of the
            // unsigned quants with the offset subtracted from other lanes, each much larger
            // than its share of the result when the weights sit near zero (q ≈ 32).
            sumf += d * hsum_i32_8(sumi) as f32;
        }
        sumf
    }

    /// [`vec_dot_avx2`] of one weight row against up to four activation rows (prompt
    /// processing): each super-block's scales and 6-bit quants are unpacked once for all of
    /// them, and every token's value goes through the same operations in the same order as in
    /// [`vec_dot_avx2`], so the results are bit-identical.
    ///
    /// # Safety
    /// Requires AVX2, FMA and F16C; `ys.len() <= 4`, `out.len() >= ys.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn vec_dot_multi_avx2(x: &[BlockQ6_K], ys: &[&[BlockQ8_K]], out: &mut [f32]) {
        let nt = ys.len().min(4);
        let m4 = _mm256_set1_epi8(0xF);
        let m3 = _mm256_set1_epi8(3);
        let mut sumf = [0f32; 4];
        let n = ys[..nt].iter().fold(x.len(), |m, y| m.min(y.len()));
        for (i, bx) in x[..n].iter().enumerate() {
            let xd = bx.d.to_f32();
            let scales = unsafe { _mm_loadu_si128(bx.scales.as_ptr() as *const __m128i) };
            let sc16 = _mm256_cvtepi8_epi16(scales);
            let ql = bx.ql.as_ptr();
            let qh = bx.qh.as_ptr();
            // Per 128 elements (n), four 32-element vectors of quants and their scales.
            let mut q = [_mm256_setzero_si256(); 8];
            let mut sc = [_mm256_setzero_si256(); 8];
            for n in 0..2 {
                for k in 0..4 {
                    let shuffle = get_scale_shuffle(4 * n as i8 + k as i8);
                    sc[4 * n + k] = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales, shuffle));
                }
                let q4bits1 = unsafe { _mm256_loadu_si256(ql.add(64 * n) as *const __m256i) };
                let q4bits2 = unsafe { _mm256_loadu_si256(ql.add(64 * n + 32) as *const __m256i) };
                let q4bits_h = unsafe { _mm256_loadu_si256(qh.add(32 * n) as *const __m256i) };
                let q4h_0 = _mm256_slli_epi16(_mm256_and_si256(q4bits_h, m3), 4);
                let q4h_1 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(q4bits_h, 2), m3), 4);
                let q4h_2 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(q4bits_h, 4), m3), 4);
                let q4h_3 = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(q4bits_h, 6), m3), 4);
                q[4 * n] = _mm256_or_si256(_mm256_and_si256(q4bits1, m4), q4h_0);
                q[4 * n + 1] = _mm256_or_si256(_mm256_and_si256(q4bits2, m4), q4h_1);
                q[4 * n + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4bits1, 4), m4), q4h_2);
                q[4 * n + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q4bits2, 4), m4), q4h_3);
            }
            for t in 0..nt {
                let by = &ys[t][i];
                let d = by.d * xd;
                let q8 = by.qs.as_ptr();
                let mut sumi0 = _mm256_setzero_si256();
                let mut sumi1 = _mm256_setzero_si256();
                for n in 0..2 {
                    let p16: [__m256i; 4] = std::array::from_fn(|k| {
                        let q8k = unsafe { _mm256_loadu_si256(q8.add(128 * n + 32 * k) as *const __m256i) };
                        _mm256_madd_epi16(sc[4 * n + k], _mm256_maddubs_epi16(q[4 * n + k], q8k))
                    });
                    sumi0 = _mm256_add_epi32(sumi0, _mm256_add_epi32(p16[0], p16[1]));
                    sumi1 = _mm256_add_epi32(sumi1, _mm256_add_epi32(p16[2], p16[3]));
                }
                let offset = _mm256_slli_epi32(offset_term(sc16, by), 5);
                let sumi = _mm256_sub_epi32(_mm256_add_epi32(sumi0, sumi1), offset);
                sumf[t] += d * hsum_i32_8(sumi) as f32;
            }
        }
        out[..nt].copy_from_slice(&sumf[..nt]);
    }

    /// AVX-512 + VNNI: 64 elements per `maddubs`. A 64-byte load of `ql` holds elements
    /// l and l+32 in its low nibbles and l+64, l+96 in its high nibbles; the 32 `qh` bytes,
    /// broadcast to both halves with the upper half shifted by 2, supply their top bits. Each
    /// 128-bit lane of the products is one sub-block of 16, multiplied by its scale with
    /// `vpdpwssd`; the -32 offset goes through `bsums`.
    ///
    /// # Safety
    /// Requires AVX-512 F/BW/VL/DQ + VNNI (and AVX2, FMA, F16C).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    pub unsafe fn vec_dot_avx512(x: &[BlockQ6_K], y: &[BlockQ8_K]) -> f32 {
        dot_rows_avx512(x, [y])
    }

    /// [`super::VecDot::vec_dot_residual`] as [`vec_dot_avx512`] computes each product, with
    /// each block's quants and scales unpacked once for the activation row `y` and its
    /// remainder `r`.
    ///
    /// # Safety
    /// Requires AVX-512 F/BW/VL/DQ + VNNI (and AVX2, FMA, F16C).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    pub unsafe fn vec_dot_residual_avx512(x: &[BlockQ6_K], y: &[BlockQ8_K], r: &[BlockQ8_K]) -> f32 {
        dot_rows_avx512(x, [y, r])
    }

    /// The sum over `ys` of [`vec_dot_avx512`]'s product of `x` with each activation row, each
    /// weight block unpacked once for all of them (with one row, exactly that kernel).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    fn dot_rows_avx512<const N: usize>(x: &[BlockQ6_K], ys: [&[BlockQ8_K]; N]) -> f32 {
        const UPPER_WORDS: __mmask32 = 0xFFFF_0000;
        let m4 = _mm512_set1_epi8(0xF);
        let m30 = _mm512_set1_epi8(0x30);
        // Word permutations putting scale 4t + k in every word of 128-bit lane k.
        let idx = [
            scale_lane_index(0),
            scale_lane_index(1),
            scale_lane_index(2),
            scale_lane_index(3),
        ];
        let n = ys.iter().fold(x.len(), |n, y| n.min(y.len()));
        let mut sumf = 0f32;
        for (i, bx) in x[..n].iter().enumerate() {
            let dx = bx.d.to_f32();
            let sc16 = _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(bx.scales.as_ptr() as *const __m128i) });
            // vpermw below only reads words 0..16, so the upper half may stay undefined.
            let sc512 = _mm512_castsi256_si512(sc16);
            let (ql, qh) = (bx.ql.as_ptr(), bx.qh.as_ptr());
            let mut sums = [[_mm512_setzero_si512(); 2]; N];
            for h in 0..2 {
                let qlv = unsafe { _mm512_loadu_si512(ql.add(64 * h) as *const _) };
                let qhb = _mm512_broadcast_i64x4(unsafe { _mm256_loadu_si256(qh.add(32 * h) as *const __m256i) });
                // Lower half: qh; upper half: qh >> 2. Bits 4-5 of each byte are then the top
                // bits of elements l+64 / l+96, and bits 0-1 (shifted up by 4) of l / l+32.
                let qhs = _mm512_mask_srli_epi16(qhb, UPPER_WORDS, qhb, 2);
                let ha = _mm512_and_si512(_mm512_slli_epi16(qhs, 4), m30);
                let hb = _mm512_and_si512(qhs, m30);
                let xa = _mm512_or_si512(_mm512_and_si512(qlv, m4), ha);
                let xb = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(qlv, 4), m4), hb);
                let sa = _mm512_permutexvar_epi16(idx[2 * h], sc512);
                let sb = _mm512_permutexvar_epi16(idx[2 * h + 1], sc512);
                for (sum, y) in sums.iter_mut().zip(&ys) {
                    let q8 = y[i].qs.as_ptr();
                    let q8a = unsafe { _mm512_loadu_si512(q8.add(128 * h) as *const _) };
                    let q8b = unsafe { _mm512_loadu_si512(q8.add(128 * h + 64) as *const _) };
                    sum[0] = _mm512_dpwssd_epi32(sum[0], _mm512_maddubs_epi16(xa, q8a), sa);
                    sum[1] = _mm512_dpwssd_epi32(sum[1], _mm512_maddubs_epi16(xb, q8b), sb);
                }
            }
            for (sum, y) in sums.iter().zip(&ys) {
                let sumi = _mm512_add_epi32(sum[0], sum[1]);
                let sumi = _mm256_add_epi32(_mm512_castsi512_si256(sumi), _mm512_extracti64x4_epi64(sumi, 1));
                let offset = _mm256_slli_epi32(offset_term(sc16, &y[i]), 5);
                // One exact integer per block before going to float, as in the AVX2 kernel.
                sumf += y[i].d * dx * hsum_i32_8(_mm256_sub_epi32(sumi, offset)) as f32;
            }
        }
        sumf
    }

    /// One super-block of a weight row unpacked for [`four_rows_avx512`]: the four 64-byte
    /// vectors of 6-bit quants and their i16 scales as [`vec_dot_avx512`] has them, the
    /// sixteen scales widened (for the offset term), and d.
    #[repr(C, align(64))]
    #[derive(Clone, Copy)]
    pub struct Unpacked {
        q: [[u8; 64]; 4],
        sc: [[i16; 32]; 4],
        sc16: [i16; 16],
        d: f32,
    }

    const UNPACKED_ZERO: Unpacked = Unpacked {
        q: [[0; 64]; 4],
        sc: [[0; 32]; 4],
        sc16: [0; 16],
        d: 0.0,
    };

    thread_local! {
        /// Four unpacked weight rows, reused across the products a worker runs.
        static ROWS: std::cell::RefCell<Vec<Unpacked>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// [`vec_dot_avx512`] of four weight rows against all of `ys` (prompt processing): each
    /// super-block is unpacked once for all tokens, then two rows meet four tokens at a time,
    /// each value through the operations of [`vec_dot_avx512`] in its order (the integer
    /// sums of its two accumulators in one, which is exact), so the results are bit-identical.
    ///
    /// # Safety
    /// Requires AVX-512 F/BW/VL/DQ + VNNI; every `outs[r]` at least `ys.len()` long.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    pub unsafe fn four_rows_avx512(xs: [&[BlockQ6_K]; 4], ys: &[&[BlockQ8_K]], outs: [&mut [f32]; 4]) {
        const UPPER_WORDS: __mmask32 = 0xFFFF_0000;
        let m4 = _mm512_set1_epi8(0xF);
        let m30 = _mm512_set1_epi8(0x30);
        let idx = [
            scale_lane_index(0),
            scale_lane_index(1),
            scale_lane_index(2),
            scale_lane_index(3),
        ];
        let unpack = |bx: &BlockQ6_K, u: &mut Unpacked| {
            // SAFETY (loads and stores): within the block's arrays; 64-byte stores into 64-byte
            // aligned fields.
            unsafe {
                let sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(bx.scales.as_ptr() as *const __m128i));
                _mm256_storeu_si256(u.sc16.as_mut_ptr() as *mut __m256i, sc16);
                let sc512 = _mm512_castsi256_si512(sc16);
                for n in 0..2 {
                    let qlv = _mm512_loadu_si512(bx.ql.as_ptr().add(64 * n) as *const _);
                    let qhb = _mm512_broadcast_i64x4(_mm256_loadu_si256(bx.qh.as_ptr().add(32 * n) as *const __m256i));
                    let qhs = _mm512_mask_srli_epi16(qhb, UPPER_WORDS, qhb, 2);
                    let ha = _mm512_and_si512(_mm512_slli_epi16(qhs, 4), m30);
                    let hb = _mm512_and_si512(qhs, m30);
                    let qa = _mm512_or_si512(_mm512_and_si512(qlv, m4), ha);
                    let qb = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(qlv, 4), m4), hb);
                    _mm512_store_si512(u.q[2 * n].as_mut_ptr() as *mut __m512i, qa);
                    _mm512_store_si512(u.q[2 * n + 1].as_mut_ptr() as *mut __m512i, qb);
                    let sa = _mm512_permutexvar_epi16(idx[2 * n], sc512);
                    let sb = _mm512_permutexvar_epi16(idx[2 * n + 1], sc512);
                    _mm512_store_si512(u.sc[2 * n].as_mut_ptr() as *mut __m512i, sa);
                    _mm512_store_si512(u.sc[2 * n + 1].as_mut_ptr() as *mut __m512i, sb);
                }
            }
            u.d = bx.d.to_f32();
        };
        four_rows_by_pairs(&ROWS, UNPACKED_ZERO, xs, ys, outs, unpack, |w, ys, n| {
            tile_2x4(w, ys, n)
        });
    }

    /// Two unpacked rows against four activation rows over `n` super-blocks: the values of
    /// [`vec_dot_avx512`].
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    fn tile_2x4(w: [&[Unpacked]; 2], ys: [&[BlockQ8_K]; 4], n: usize) -> [[f32; 4]; 2] {
        let mut sumf = [[0f32; 4]; 2];
        for i in 0..n {
            let sumi = sumi_2x4(
                [&w[0][i].q, &w[1][i].q],
                [&w[0][i].sc, &w[1][i].sc],
                std::array::from_fn(|t| &ys[t][i]),
            );
            for r in 0..2 {
                // SAFETY: the 32 bytes of `sc16`.
                let sc16 = unsafe { _mm256_loadu_si256(w[r][i].sc16.as_ptr() as *const __m256i) };
                for t in 0..4 {
                    let by = &ys[t][i];
                    let d = by.d * w[r][i].d;
                    let s = sumi[r][t];
                    let s = _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64(s, 1));
                    let offset = _mm256_slli_epi32(offset_term(sc16, by), 5);
                    sumf[r][t] += d * hsum_i32_8(_mm256_sub_epi32(s, offset)) as f32;
                }
            }
        }
        sumf
    }

    /// `vpermw` indices: word `4t + k` (scale of sub-block 4t + k) in every word of lane k.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    fn scale_lane_index(t: i32) -> __m512i {
        let b = 4 * t;
        _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_inserti128_si256(
                _mm256_castsi128_si256(_mm_set1_epi16(b as i16)),
                _mm_set1_epi16((b + 1) as i16),
                1,
            )),
            _mm256_inserti128_si256(
                _mm256_castsi128_si256(_mm_set1_epi16((b + 2) as i16)),
                _mm_set1_epi16((b + 3) as i16),
                1,
            ),
            1,
        )
    }
}

#[cfg(target_arch = "aarch64")]
pub(crate) mod neon {
    use super::BlockQ6_K;
    use crate::k_quants::q8_k::BlockQ8_K;
    use crate::neon_util::dot_i8x16;
    use std::arch::aarch64::*;

    /// `ggml_vec_dot_q6_K_q8_K`, NEON branch: the 6-bit quants rebuilt 16 at a time, dotted
    /// with the activations as unsigned 0..=63 values, each sub-block's partial sums scaled in
    /// i32; the -32 offset through `bsums` (`isum_mins` in ggml).
    ///
    /// # Safety
    /// Requires NEON.
    #[target_feature(enable = "neon")]
    pub unsafe fn vec_dot_neon(x: &[BlockQ6_K], y: &[BlockQ8_K]) -> f32 {
        let m4 = vdupq_n_u8(0xF);
        let m3 = vdupq_n_u8(3);
        let mut sum = 0f32;
        for (bx, by) in x.iter().zip(y) {
            let d_all = bx.d.to_f32() * by.d;
            let sc = &bx.scales;

            // Σ_j sc_j · bsums[j].
            let b0 = unsafe { vld1q_s16(by.bsums.as_ptr()) };
            let b1 = unsafe { vld1q_s16(by.bsums.as_ptr().add(8)) };
            let s8 = unsafe { vld1q_s8(sc.as_ptr()) };
            let s0 = vmovl_s8(vget_low_s8(s8));
            let s1 = vmovl_high_s8(s8);
            let prod = vaddq_s32(
                vaddq_s32(vmull_s16(vget_low_s16(b0), vget_low_s16(s0)), vmull_high_s16(b0, s0)),
                vaddq_s32(vmull_s16(vget_low_s16(b1), vget_low_s16(s1)), vmull_high_s16(b1, s1)),
            );
            let isum_mins = vaddvq_s32(prod);

            let mut isum = vdupq_n_s32(0);
            for n in 0..2 {
                let ql = unsafe { bx.ql.as_ptr().add(64 * n) };
                let qh = unsafe { bx.qh.as_ptr().add(32 * n) };
                let q8 = unsafe { by.qs.as_ptr().add(128 * n) };
                // Two runs of 16: l in 0..16 and 16..32.
                for h in 0..2 {
                    let qhb = unsafe { vld1q_u8(qh.add(16 * h)) };
                    let lo = unsafe { vld1q_u8(ql.add(16 * h)) };
                    let hi = unsafe { vld1q_u8(ql.add(32 + 16 * h)) };
                    let q1 = vorrq_u8(vandq_u8(lo, m4), vshlq_n_u8(vandq_u8(qhb, m3), 4));
                    let q2 = vorrq_u8(vandq_u8(hi, m4), vshlq_n_u8(vandq_u8(vshrq_n_u8(qhb, 2), m3), 4));
                    let q3 = vorrq_u8(vshrq_n_u8(lo, 4), vshlq_n_u8(vandq_u8(vshrq_n_u8(qhb, 4), m3), 4));
                    let q4 = vorrq_u8(vshrq_n_u8(hi, 4), vshlq_n_u8(vshrq_n_u8(qhb, 6), 4));
                    let y1 = unsafe { vld1q_s8(q8.add(16 * h)) };
                    let y2 = unsafe { vld1q_s8(q8.add(32 + 16 * h)) };
                    let y3 = unsafe { vld1q_s8(q8.add(64 + 16 * h)) };
                    let y4 = unsafe { vld1q_s8(q8.add(96 + 16 * h)) };
                    // Sub-blocks of 16: elements 16h.., 32+16h.., 64+16h.., 96+16h.. of this half.
                    let g = 8 * n + h;
                    isum = vmlaq_n_s32(isum, dot_i8x16(vreinterpretq_s8_u8(q1), y1), sc[g] as i32);
                    isum = vmlaq_n_s32(isum, dot_i8x16(vreinterpretq_s8_u8(q2), y2), sc[g + 2] as i32);
                    isum = vmlaq_n_s32(isum, dot_i8x16(vreinterpretq_s8_u8(q3), y3), sc[g + 4] as i32);
                    isum = vmlaq_n_s32(isum, dot_i8x16(vreinterpretq_s8_u8(q4), y4), sc[g + 6] as i32);
                }
            }
            // Wrapping: with consistent bsums nothing overflows; with arbitrary ones the result
            // is meaningless but must not panic.
            sum += d_all * vaddvq_s32(isum).wrapping_sub(isum_mins.wrapping_mul(32)) as f32;
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k_quants::common::testutil::*;
    use bytemuck::Zeroable;
    use proptest::prelude::*;

    fn fix(b: &mut BlockQ6_K, d: f16, _: f16) {
        b.d = d;
    }

    /// Σ |d·sc·(q-32)| · |y| over all elements.
    fn magnitude(x: &[BlockQ6_K], y: &[BlockQ8_K]) -> f64 {
        let mut s = 0f64;
        for (bx, by) in x.iter().zip(y) {
            let q = unpack_q6(bx);
            for i in 0..QK_K {
                let w = bx.d.to_f32() as f64 * bx.scales[i / 16] as f64 * q[i] as f64;
                s += (w * by.d as f64 * by.qs[i] as f64).abs();
            }
        }
        s
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn levels_agree_with_scalar((x, y) in blocks_and_act::<BlockQ6_K>(fix)) {
            check_vec_dot(&x, &y, vec_dot_scalar, magnitude(&x, &y))?;
        }

        /// The multi-token kernel gives exactly what the one-token kernel gives, token by token.
        #[test]
        fn multi_token_is_bit_identical((x, y) in blocks_and_act::<BlockQ6_K>(fix), nt in 1usize..=4) {
            check_multi_tokens(&x, &y, nt)?;
        }

        /// The four-row kernel gives exactly what the one-token kernel gives, row by row and
        /// token by token (a short last group of tokens included).
        #[test]
        fn four_rows_is_bit_identical((x, y) in blocks_and_act::<BlockQ6_K>(fix), nt in 1usize..=9) {
            check_four_rows(&x, &y, nt)?;
        }

        /// Real-looking rows (quantized from smooth data, most quants near the middle) are
        /// where a kernel that keeps large partial sums in float loses precision.
        #[test]
        fn levels_agree_on_quantized_rows(x in quant_input()) {
            let mut q = vec![BlockQ6_K::zeroed(); x.len() / QK_K];
            BlockQ6_K::quantize_row_ref(&x, &mut q);
            let y = act_for(x.len());
            check_vec_dot(&q, &y, vec_dot_scalar, magnitude(&q, &y))?;
        }

        #[test]
        fn quantize_roundtrip(x in quant_input()) {
            let mut q = vec![BlockQ6_K::zeroed(); x.len() / QK_K];
            BlockQ6_K::quantize_row_ref(&x, &mut q);
            let mut back = vec![0f32; x.len()];
            BlockQ6_K::dequantize_row(&q, &mut back);
            for (xs, ys) in x.chunks(QK_K).zip(back.chunks(QK_K)) {
                let amax = xs.iter().fold(0f32, |m, &v| m.max(v.abs()));
                // 64 levels over ±amax: a step is about amax/32; the int8 sub-scales and the
                // f16 super-scale add a little. 6e-5 covers f16 underflow for tiny inputs.
                let bound = 0.05 * amax + 6e-5;
                let mut sq = 0f64;
                for (a, r) in xs.iter().zip(ys) {
                    prop_assert!((a - r).abs() <= bound, "{a} vs {r}, bound {bound}");
                    sq += ((a - r) as f64).powi(2);
                }
                let rmse = (sq / QK_K as f64).sqrt();
                prop_assert!(rmse <= 0.015 * amax as f64 + 6e-5, "rmse {rmse}");
            }
        }
    }

    #[test]
    fn extreme_values_do_not_saturate() {
        // Quants 0 and 63 (-32 and +31), scales ±127/-128, activations at both int8 extremes.
        for (qbyte, hbyte, want_q) in [(0x00u8, 0x00u8, -32i64), (0xFF, 0xFF, 31)] {
            for sc in [127i8, -128] {
                let b = BlockQ6_K {
                    ql: [qbyte; 128],
                    qh: [hbyte; 64],
                    scales: [sc; 16],
                    d: f16::from_f32(1.0),
                };
                for v in [-128i8, 127] {
                    let x = vec![b; 2];
                    let y = act_blocks(&vec![v; 2 * QK_K], &[1.0; 2]);
                    let exact = (2 * 256 * sc as i64 * want_q * v as i64) as f64;
                    for level in SimdLevel::available() {
                        let got = BlockQ6_K::vec_dot(level, &x, &y) as f64;
                        assert!((got - exact).abs() <= 1e-6 * exact.abs(), "{level:?}: {got} vs {exact}");
                    }
                }
            }
        }
    }

    #[test]
    fn zero_input_quantizes_to_zero_block() {
        let mut q = [BlockQ6_K {
            ql: [1; 128],
            qh: [2; 64],
            scales: [3; 16],
            d: f16::ONE,
        }];
        BlockQ6_K::quantize_row_ref(&[0f32; QK_K], &mut q);
        assert_eq!(q[0], BlockQ6_K::zeroed());
    }

    #[test]
    fn non_finite_input_does_not_panic() {
        let mut x = [0.5f32; QK_K];
        x[7] = f32::NAN;
        x[100] = f32::INFINITY;
        let mut q = [BlockQ6_K::zeroed()];
        BlockQ6_K::quantize_row_ref(&x, &mut q);
    }
}
