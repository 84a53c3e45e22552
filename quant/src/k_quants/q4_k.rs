//! Q4_K: 256 4-bit weights in 8 sub-blocks of 32 with 6-bit scales and mins (`block_q4_K`, ggml-common.h).
//!
//! x = d · sc_j · q - dmin · m_j for sub-block j, q in 0..=15. Byte `qs[32k + l]` holds element
//! `64k + l` in its low nibble and element `64k + 32 + l` in its high nibble.

// Index loops mirror the C they reproduce, operation for operation.
#![allow(clippy::needless_range_loop)]

use half::f16;

use crate::k_quants::common::{get_scale_min_k4, quantize_scales_mins_k, unpack_scales_mins_k4};
use crate::k_quants::q8_k::BlockQ8_K;
use crate::{Block, GgmlType, QK_K, QuantizeRef, SimdLevel, VecDot};

/// `blockQ4_K` (Q4_K, ggml-common.h): 144 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ4_K {
    /// Super-block scale for the scales.
    pub d: f16,
    /// Super-block scale for the mins.
    pub dmin: f16,
    /// Scales and mins, 6 bits each (`get_scale_min_k4`).
    pub scales: [u8; 12],
    /// Nibbles.
    pub qs: [u8; 128],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_K>() == 144);

impl Block for BlockQ4_K {
    const TYPE: GgmlType = GgmlType::Q4_K;
    const QK: usize = QK_K;

    /// `dequantize_row_q4_K`, ggml-quants.c: `d1 * q - m1` with `d1 = d * sc`, `m1 = dmin * m`.
    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK_K)) {
            let d = b.d.to_f32();
            let min = b.dmin.to_f32();
            for (k, (q, y)) in b.qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
                let (sc, m) = get_scale_min_k4(2 * k, &b.scales);
                let (d1, m1) = (d * sc as f32, min * m as f32);
                let (sc, m) = get_scale_min_k4(2 * k + 1, &b.scales);
                let (d2, m2) = (d * sc as f32, min * m as f32);
                let (lo, hi) = y.split_at_mut(32);
                for ((&q, lo), hi) in q.iter().zip(lo).zip(hi) {
                    *lo = d1 * (q & 0xF) as f32 - m1;
                    *hi = d2 * (q >> 4) as f32 - m2;
                }
            }
        }
    }
}

impl QuantizeRef for BlockQ4_K {
    /// `quantize_row_q4_K_ref`, ggml-quants.c: per sub-block of 32 a weighted `make_qkx2_quants`
    /// fit (weights `sqrt(mean x²) + |x|`, nmax 15, rmin -1, rdelta 0.1, 20 steps), the scales
    /// and mins quantized to 6 bits against their maxima, the super-block scales rounded to
    /// f16, then every element re-quantized against the rounded scales.
    fn quantize_row_ref(src: &[f32], dst: &mut [Self]) {
        let mut l = [0u8; QK_K];
        for (x, y) in src.chunks_exact(QK_K).zip(dst.iter_mut()) {
            (y.scales, y.d, y.dmin) = quantize_scales_mins_k(x, 15, -1.0, 20, &mut l);

            for (k, q) in y.qs.chunks_exact_mut(32).enumerate() {
                for (i, q) in q.iter_mut().enumerate() {
                    *q = l[64 * k + i] | (l[64 * k + i + 32] << 4);
                }
            }
        }
    }
}

impl VecDot for BlockQ4_K {
    type Act = BlockQ8_K;

    /// `ggml_vec_dot_q4_K_q8_K` (ggml-cpu). The mins are applied through the activation's
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

/// Scalar reference of `ggml_vec_dot_q4_K_q8_K_generic` (ggml-cpu/quants.c): per super-block
/// exact integer sums in eight `aux32` lanes, scaled by `d_x · d_y` into eight f32 `sums`;
/// the min term `dmin_x · d_y · Σ m_j · bsum` is subtracted from `sumf` block by block and the
/// lanes are added at the end, in the C's order.
pub fn vec_dot_scalar(x: &[BlockQ4_K], y: &[BlockQ8_K]) -> f32 {
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
            // Element 32j + i: low nibbles for even j, high nibbles for odd j.
            let q4 = &bx.qs[32 * (j / 2)..32 * (j / 2) + 32];
            let shift = 4 * (j % 2);
            let q8 = &by.qs[32 * j..32 * j + 32];
            for (a, b) in q4.chunks_exact(8).zip(q8.chunks_exact(8)) {
                for l in 0..8 {
                    // aux16 = q8 * a fits i16 (|.| <= 15 * 128).
                    let aux16 = (b[l] as i16) * (((a[l] >> shift) & 0xF) as i16);
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
    use super::BlockQ4_K;
    use crate::k_quants::common::{four_rows_by_pairs, sumi_2x4};
    use crate::k_quants::q8_k::BlockQ8_K;
    use crate::x86_util::*;
    use std::arch::x86_64::*;

    /// The 6-bit scales and mins of `b` widened to 16 × i16: scales in words 0..8, mins in
    /// words 8..16 (`mins_and_scales` of the ggml kernels, after the `utmp` shuffle).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn mins_and_scales(b: &BlockQ4_K) -> __m256i {
        _mm256_cvtepu8_epi16(unpack_scales_mins_k4_sse(&b.scales))
    }

    /// [`unpack_scales_mins_k4`](crate::k_quants::common::unpack_scales_mins_k4) in SSE
    /// registers: bytes 0..8 the scales, 8..16 the mins. Done with two byte shuffles instead
    /// of ggml's u32 `utmp` juggling, which would have to round-trip through memory.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn unpack_scales_mins_k4_sse(scales: &[u8; 12]) -> __m128i {
        // Only the 12 bytes are read: 8 as a u64, 4 as a u32.
        let lo = u64::from_le_bytes([
            scales[0], scales[1], scales[2], scales[3], scales[4], scales[5], scales[6], scales[7],
        ]);
        let hi = u32::from_le_bytes([scales[8], scales[9], scales[10], scales[11]]);
        let s = _mm_insert_epi32(_mm_cvtsi64_si128(lo as i64), hi as i32, 2);
        // a: s0..3 | s8..11 | s4..7 | s8..11 — the low parts of sc0..3, sc4..7, m0..3, m4..7.
        let a = _mm_shuffle_epi8(s, _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11));
        let mask_a = _mm_setr_epi8(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 0, 0, 0, 0);
        let mask_b = _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 15, 15, 15);
        let low = _mm_or_si128(_mm_and_si128(a, mask_a), _mm_and_si128(_mm_srli_epi16(a, 4), mask_b));
        // b: the bytes whose top two bits become bits 4-5 of sc4..7 (s0..3) and m4..7 (s4..7).
        let z = -128i8;
        let b = _mm_shuffle_epi8(s, _mm_setr_epi8(z, z, z, z, 0, 1, 2, 3, z, z, z, z, 4, 5, 6, 7));
        let high = _mm_and_si128(_mm_srli_epi16(b, 2), _mm_set1_epi8(0x30));
        _mm_or_si128(low, high)
    }

    /// `Σ_j m_j · (bsums[2j] + bsums[2j+1])` as 4 i32 lanes (the min term before scaling).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn mins_dot_bsums(mins_and_scales: __m256i, by: &BlockQ8_K) -> __m128i {
        mins_dot_q8sums(_mm256_extracti128_si256(mins_and_scales, 1), by)
    }

    /// [`mins_dot_bsums`] with the eight mins given as i16.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn mins_dot_q8sums(mins: __m128i, by: &BlockQ8_K) -> __m128i {
        // SAFETY: the 32 bytes of `bsums`.
        let q8sums = unsafe { _mm256_loadu_si256(by.bsums.as_ptr() as *const __m256i) };
        let q8s = _mm_hadd_epi16(_mm256_castsi256_si128(q8sums), _mm256_extracti128_si256(q8sums, 1));
        _mm_madd_epi16(mins, q8s)
    }

    /// Horizontal sum of 4 floats, in ggml's order.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum_float_4(acc_m: __m128) -> f32 {
        let acc_m = _mm_add_ps(acc_m, _mm_movehl_ps(acc_m, acc_m));
        let acc_m = _mm_add_ss(acc_m, _mm_movehdup_ps(acc_m));
        _mm_cvtss_f32(acc_m)
    }

    /// `ggml_vec_dot_q4_K_q8_K`, AVX2 branch (ggml-cpu/arch/x86/quants.c): per 64 elements one
    /// `maddubs` of the low and one of the high nibbles, each `madd`-ed with its sub-block
    /// scale broadcast as i16; mins through `bsums` in a separate 4-lane accumulator.
    ///
    /// # Safety
    /// Requires AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn vec_dot_avx2(x: &[BlockQ4_K], y: &[BlockQ8_K]) -> f32 {
        let m4 = _mm256_set1_epi8(0xF);
        let mut acc = _mm256_setzero_ps();
        let mut acc_m = _mm_setzero_ps();
        for (bx, by) in x.iter().zip(y) {
            let d = by.d * bx.d.to_f32();
            let dmin = -by.d * bx.dmin.to_f32();
            let ms = mins_and_scales(bx);
            let prod = mins_dot_bsums(ms, by);
            acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), acc_m);

            let sc128 = _mm256_castsi256_si128(ms);
            let scales = _mm256_broadcastsi128_si256(sc128);
            let q4 = bx.qs.as_ptr();
            let q8 = by.qs.as_ptr();
            let mut sumi = _mm256_setzero_si256();
            for j in 0..4 {
                // get_scale_shuffle_k4(i): the i16 scale of sub-block i in every word.
                let i0 = 2 * j as i16;
                let scale_l = _mm256_shuffle_epi8(scales, _mm256_set1_epi16(((2 * i0 + 1) << 8) | (2 * i0)));
                let i1 = i0 + 1;
                let scale_h = _mm256_shuffle_epi8(scales, _mm256_set1_epi16(((2 * i1 + 1) << 8) | (2 * i1)));

                let q4bits = unsafe { _mm256_loadu_si256(q4.add(32 * j) as *const __m256i) };
                let q4l = _mm256_and_si256(q4bits, m4);
                let q4h = _mm256_and_si256(_mm256_srli_epi16(q4bits, 4), m4);

                let q8l = unsafe { _mm256_loadu_si256(q8.add(64 * j) as *const __m256i) };
                let p16l = _mm256_madd_epi16(scale_l, _mm256_maddubs_epi16(q4l, q8l));
                let q8h = unsafe { _mm256_loadu_si256(q8.add(64 * j + 32) as *const __m256i) };
                let p16h = _mm256_madd_epi16(scale_h, _mm256_maddubs_epi16(q4h, q8h));
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p16l, p16h));
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum_float_8(acc) + hsum_float_4(acc_m)
    }

    /// [`vec_dot_avx2`] of one weight row against up to four activation rows (prompt
    /// processing): each super-block's scales, mins and nibbles are unpacked once for all of
    /// them, and every token's value goes through the same operations in the same order as in
    /// [`vec_dot_avx2`], so the results are bit-identical.
    ///
    /// # Safety
    /// Requires AVX2, FMA and F16C; `ys.len() <= 4`, `out.len() >= ys.len()`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn vec_dot_multi_avx2(x: &[BlockQ4_K], ys: &[&[BlockQ8_K]], out: &mut [f32]) {
        let nt = ys.len().min(4);
        let m4 = _mm256_set1_epi8(0xF);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut acc_m = [_mm_setzero_ps(); 4];
        let n = ys[..nt].iter().fold(x.len(), |m, y| m.min(y.len()));
        for (i, bx) in x[..n].iter().enumerate() {
            let (xd, xdmin) = (bx.d.to_f32(), bx.dmin.to_f32());
            let ms = mins_and_scales(bx);
            let scales = _mm256_broadcastsi128_si256(_mm256_castsi256_si128(ms));
            let q4 = bx.qs.as_ptr();
            // Sub-block k: its nibbles and its i16 scale in every word.
            let mut q = [_mm256_setzero_si256(); 8];
            let mut sc = [_mm256_setzero_si256(); 8];
            for j in 0..4 {
                let q4bits = unsafe { _mm256_loadu_si256(q4.add(32 * j) as *const __m256i) };
                q[2 * j] = _mm256_and_si256(q4bits, m4);
                q[2 * j + 1] = _mm256_and_si256(_mm256_srli_epi16(q4bits, 4), m4);
                for k in [2 * j, 2 * j + 1] {
                    let k = k as i16;
                    sc[k as usize] = _mm256_shuffle_epi8(scales, _mm256_set1_epi16(((2 * k + 1) << 8) | (2 * k)));
                }
            }
            for t in 0..nt {
                let by = &ys[t][i];
                let d = by.d * xd;
                let dmin = -by.d * xdmin;
                let prod = mins_dot_bsums(ms, by);
                acc_m[t] = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), acc_m[t]);
                let q8 = by.qs.as_ptr();
                let mut sumi = _mm256_setzero_si256();
                for j in 0..4 {
                    let q8l = unsafe { _mm256_loadu_si256(q8.add(64 * j) as *const __m256i) };
                    let p16l = _mm256_madd_epi16(sc[2 * j], _mm256_maddubs_epi16(q[2 * j], q8l));
                    let q8h = unsafe { _mm256_loadu_si256(q8.add(64 * j + 32) as *const __m256i) };
                    let p16h = _mm256_madd_epi16(sc[2 * j + 1], _mm256_maddubs_epi16(q[2 * j + 1], q8h));
                    sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p16l, p16h));
                }
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc[t]);
            }
        }
        for t in 0..nt {
            out[t] = hsum_float_8(acc[t]) + hsum_float_4(acc_m[t]);
        }
    }

    /// One super-block of a weight row unpacked for [`four_rows_avx512`]: per 64 elements
    /// (k) the nibbles as [`vec_dot_avx512`] has them (the low nibbles of 32 bytes, then their
    /// high nibbles) and the matching i16 scales, the eight mins, d and dmin.
    #[repr(C, align(64))]
    #[derive(Clone, Copy)]
    pub struct Unpacked {
        q: [[u8; 64]; 4],
        sc: [[i16; 32]; 4],
        mins: [i16; 8],
        d: f32,
        dmin: f32,
    }

    const UNPACKED_ZERO: Unpacked = Unpacked {
        q: [[0; 64]; 4],
        sc: [[0; 32]; 4],
        mins: [0; 8],
        d: 0.0,
        dmin: 0.0,
    };

    thread_local! {
        /// Four unpacked weight rows, reused across the products a worker runs.
        static ROWS: std::cell::RefCell<Vec<Unpacked>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// [`vec_dot_avx512`] of four weight rows against all of `ys` (prompt processing): each
    /// super-block is unpacked once for all tokens, then two rows meet four tokens at a time,
    /// each value through the same operations in the same order as [`vec_dot_avx512`] (the
    /// integer sums of both its accumulators in one, which is exact), so the results are
    /// bit-identical. The min terms run in a second pass with their own accumulators.
    ///
    /// # Safety
    /// Requires AVX-512 F/BW/VL/DQ + VNNI; every `outs[r]` at least `ys.len()` long.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    pub unsafe fn four_rows_avx512(xs: [&[BlockQ4_K]; 4], ys: &[&[BlockQ8_K]], outs: [&mut [f32]; 4]) {
        let m4 = _mm512_set1_epi8(0xF);
        const UPPER_WORDS: __mmask32 = 0xFFFF_0000;
        let shuffles = [
            scale_pair_shuffle(0),
            scale_pair_shuffle(1),
            scale_pair_shuffle(2),
            scale_pair_shuffle(3),
        ];
        let unpack = |bx: &BlockQ4_K, u: &mut Unpacked| {
            let ms = mins_and_scales(bx);
            let scales = _mm512_broadcast_i32x4(_mm256_castsi256_si128(ms));
            for k in 0..4 {
                // SAFETY: 32 bytes of `qs` from 32·k; 64-byte stores into 64-byte aligned
                // fields.
                unsafe {
                    let bits = _mm512_broadcast_i64x4(_mm256_loadu_si256(bx.qs.as_ptr().add(32 * k) as *const __m256i));
                    let q = _mm512_and_si512(_mm512_mask_srli_epi16(bits, UPPER_WORDS, bits, 4), m4);
                    _mm512_store_si512(u.q[k].as_mut_ptr() as *mut __m512i, q);
                    _mm512_store_si512(
                        u.sc[k].as_mut_ptr() as *mut __m512i,
                        _mm512_shuffle_epi8(scales, shuffles[k]),
                    );
                }
            }
            // SAFETY: 16 bytes into the 16-byte `mins`.
            unsafe { _mm_storeu_si128(u.mins.as_mut_ptr() as *mut __m128i, _mm256_extracti128_si256(ms, 1)) };
            (u.d, u.dmin) = (bx.d.to_f32(), bx.dmin.to_f32());
        };
        four_rows_by_pairs(&ROWS, UNPACKED_ZERO, xs, ys, outs, unpack, |w, ys, n| {
            tile_2x4(w, ys, n)
        });
    }

    /// Two unpacked rows against four activation rows over `n` super-blocks: the values of
    /// [`vec_dot_avx512`].
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    fn tile_2x4(w: [&[Unpacked]; 2], ys: [&[BlockQ8_K]; 4], n: usize) -> [[f32; 4]; 2] {
        let mut acc = [[_mm512_setzero_ps(); 4]; 2];
        for i in 0..n {
            let sumi = sumi_2x4(
                [&w[0][i].q, &w[1][i].q],
                [&w[0][i].sc, &w[1][i].sc],
                std::array::from_fn(|t| &ys[t][i]),
            );
            for r in 0..2 {
                for t in 0..4 {
                    let d = ys[t][i].d * w[r][i].d;
                    acc[r][t] = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(sumi[r][t]), acc[r][t]);
                }
            }
        }
        let mut acc_m = [[_mm_setzero_ps(); 4]; 2];
        for i in 0..n {
            for r in 0..2 {
                // SAFETY: the 16 bytes of `mins`.
                let mins = unsafe { _mm_loadu_si128(w[r][i].mins.as_ptr() as *const __m128i) };
                for t in 0..4 {
                    let by = &ys[t][i];
                    let dmin = -by.d * w[r][i].dmin;
                    let prod = mins_dot_q8sums(mins, by);
                    acc_m[r][t] = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), acc_m[r][t]);
                }
            }
        }
        std::array::from_fn(|r| std::array::from_fn(|t| _mm512_reduce_add_ps(acc[r][t]) + hsum_float_4(acc_m[r][t])))
    }

    /// Byte shuffle (within each 128-bit lane of a broadcast 8 × i16 scale vector) that puts
    /// the scale of sub-block `2k` in every word of the lower half and that of `2k + 1` in
    /// every word of the upper half.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    pub(crate) fn scale_pair_shuffle(k: i16) -> __m512i {
        let lo = 2 * k;
        let hi = 2 * k + 1;
        _mm512_mask_blend_epi16(
            0xFFFF_0000,
            _mm512_set1_epi16(((2 * lo + 1) << 8) | (2 * lo)),
            _mm512_set1_epi16(((2 * hi + 1) << 8) | (2 * hi)),
        )
    }

    /// AVX-512 + VNNI: 64 elements per step. The 32 nibble bytes of a 64-element run are
    /// broadcast to both halves of a zmm and only the upper half shifted, which puts the run's
    /// elements in order against one plain 64-byte load of the activations; `maddubs` then
    /// `vpdpwssd` with the two sub-block scales (i16) accumulates exactly in i32.
    ///
    /// # Safety
    /// Requires AVX-512 F/BW/VL/DQ + VNNI (and AVX2, FMA, F16C).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    pub unsafe fn vec_dot_avx512(x: &[BlockQ4_K], y: &[BlockQ8_K]) -> f32 {
        dot_rows_avx512(x, [y])
    }

    /// [`super::VecDot::vec_dot_residual`] as [`vec_dot_avx512`] computes each product, with
    /// each block's scales, mins and nibbles unpacked once for the activation row `y` and its
    /// remainder `r`.
    ///
    /// # Safety
    /// Requires AVX-512 F/BW/VL/DQ + VNNI (and AVX2, FMA, F16C).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    pub unsafe fn vec_dot_residual_avx512(x: &[BlockQ4_K], y: &[BlockQ8_K], r: &[BlockQ8_K]) -> f32 {
        dot_rows_avx512(x, [y, r])
    }

    /// The sum over `ys` of [`vec_dot_avx512`]'s product of `x` with each activation row, each
    /// weight block unpacked once for all of them (with one row, exactly that kernel).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    fn dot_rows_avx512<const N: usize>(x: &[BlockQ4_K], ys: [&[BlockQ8_K]; N]) -> f32 {
        let m4 = _mm512_set1_epi8(0xF);
        // Word masks: the upper 256 bits of a zmm.
        const UPPER_WORDS: __mmask32 = 0xFFFF_0000;
        let shuffles = [
            scale_pair_shuffle(0),
            scale_pair_shuffle(1),
            scale_pair_shuffle(2),
            scale_pair_shuffle(3),
        ];
        let n = ys.iter().fold(x.len(), |n, y| n.min(y.len()));
        let mut acc = _mm512_setzero_ps();
        let mut acc_m = _mm_setzero_ps();
        for (i, bx) in x[..n].iter().enumerate() {
            let (dx, dminx) = (bx.d.to_f32(), bx.dmin.to_f32());
            let ms = mins_and_scales(bx);
            for y in &ys {
                let prod = mins_dot_bsums(ms, &y[i]);
                acc_m = _mm_fmadd_ps(_mm_set1_ps(-y[i].d * dminx), _mm_cvtepi32_ps(prod), acc_m);
            }
            let scales = _mm512_broadcast_i32x4(_mm256_castsi256_si128(ms));
            let q4 = bx.qs.as_ptr();
            // Two accumulators per row halve the vpdpwssd dependency chain.
            let mut sums = [[_mm512_setzero_si512(); 2]; N];
            for k in 0..4 {
                let bits = _mm512_broadcast_i64x4(unsafe { _mm256_loadu_si256(q4.add(32 * k) as *const __m256i) });
                let q = _mm512_and_si512(_mm512_mask_srli_epi16(bits, UPPER_WORDS, bits, 4), m4);
                let sc = _mm512_shuffle_epi8(scales, shuffles[k]);
                for (sum, y) in sums.iter_mut().zip(&ys) {
                    let a = unsafe { _mm512_loadu_si512(y[i].qs.as_ptr().add(64 * k) as *const _) };
                    sum[k % 2] = _mm512_dpwssd_epi32(sum[k % 2], _mm512_maddubs_epi16(q, a), sc);
                }
            }
            for (sum, y) in sums.iter().zip(&ys) {
                let sumi = _mm512_add_epi32(sum[0], sum[1]);
                acc = _mm512_fmadd_ps(_mm512_set1_ps(y[i].d * dx), _mm512_cvtepi32_ps(sumi), acc);
            }
        }
        _mm512_reduce_add_ps(acc) + hsum_float_4(acc_m)
    }
}

#[cfg(target_arch = "aarch64")]
pub(crate) mod neon {
    use super::BlockQ4_K;
    use crate::k_quants::common::unpack_scales_mins_k4;
    use crate::k_quants::q8_k::BlockQ8_K;
    use crate::neon_util::dot_i8x16;
    use std::arch::aarch64::*;

    /// `Σ_j m_j · (bsums[2j] + bsums[2j+1])` for a Q4_K / Q5_K block's mins (bytes 8..16 of
    /// `sm`), as in ggml's NEON kernels.
    #[inline]
    #[target_feature(enable = "neon")]
    pub(crate) fn mins_dot_bsums(sm: &[u8; 16], by: &BlockQ8_K) -> i32 {
        let b0 = unsafe { vld1q_s16(by.bsums.as_ptr()) };
        let b1 = unsafe { vld1q_s16(by.bsums.as_ptr().add(8)) };
        let q8sums = vpaddq_s16(b0, b1);
        let mins = vreinterpretq_s16_u16(vmovl_u8(unsafe { vld1_u8(sm.as_ptr().add(8)) }));
        let prod = vaddq_s32(
            vmull_s16(vget_low_s16(q8sums), vget_low_s16(mins)),
            vmull_high_s16(q8sums, mins),
        );
        vaddvq_s32(prod)
    }

    /// `ggml_vec_dot_q4_K_q8_K`, NEON branch: nibbles against the activations with 16-byte
    /// dot products, each sub-block's four partial sums scaled in i32, mins through `bsums`.
    ///
    /// # Safety
    /// Requires NEON.
    #[target_feature(enable = "neon")]
    pub unsafe fn vec_dot_neon(x: &[BlockQ4_K], y: &[BlockQ8_K]) -> f32 {
        let m4 = vdupq_n_u8(0xF);
        let mut sumf = 0f32;
        for (bx, by) in x.iter().zip(y) {
            let d = by.d * bx.d.to_f32();
            let dmin = by.d * bx.dmin.to_f32();
            let sm = unpack_scales_mins_k4(&bx.scales);
            sumf -= dmin * mins_dot_bsums(&sm, by) as f32;

            let q4 = bx.qs.as_ptr();
            let q8 = by.qs.as_ptr();
            let mut sumi = vdupq_n_s32(0);
            for j in 0..4 {
                let b0 = unsafe { vld1q_u8(q4.add(32 * j)) };
                let b1 = unsafe { vld1q_u8(q4.add(32 * j + 16)) };
                let y0 = unsafe { vld1q_s8(q8.add(64 * j)) };
                let y1 = unsafe { vld1q_s8(q8.add(64 * j + 16)) };
                let y2 = unsafe { vld1q_s8(q8.add(64 * j + 32)) };
                let y3 = unsafe { vld1q_s8(q8.add(64 * j + 48)) };
                let l0 = vreinterpretq_s8_u8(vandq_u8(b0, m4));
                let l1 = vreinterpretq_s8_u8(vandq_u8(b1, m4));
                let h0 = vreinterpretq_s8_u8(vshrq_n_u8(b0, 4));
                let h1 = vreinterpretq_s8_u8(vshrq_n_u8(b1, 4));
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
    use proptest::prelude::*;

    fn fix(b: &mut BlockQ4_K, d: f16, dmin: f16) {
        b.d = d;
        b.dmin = dmin;
    }

    /// Σ (|d·sc·q| + |dmin·m|) · |y| over all elements: what the kernels' float error scales with.
    fn magnitude(x: &[BlockQ4_K], y: &[BlockQ8_K]) -> f64 {
        let mut s = 0f64;
        for (bx, by) in x.iter().zip(y) {
            for i in 0..QK_K {
                let (sc, m) = get_scale_min_k4(i / 32, &bx.scales);
                let q = (bx.qs[32 * (i / 64) + i % 32] >> (4 * ((i / 32) % 2))) & 0xF;
                let w =
                    (bx.d.to_f32() as f64 * sc as f64 * q as f64).abs() + (bx.dmin.to_f32() as f64 * m as f64).abs();
                s += w * (by.d as f64 * by.qs[i] as f64).abs();
            }
        }
        s
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn levels_agree_with_scalar((x, y) in blocks_and_act::<BlockQ4_K>(fix)) {
            check_vec_dot(&x, &y, vec_dot_scalar, magnitude(&x, &y))?;
        }

        /// The multi-token kernel gives exactly what the one-token kernel gives, token by token.
        #[test]
        fn multi_token_is_bit_identical((x, y) in blocks_and_act::<BlockQ4_K>(fix), nt in 1usize..=4) {
            check_multi_tokens(&x, &y, nt)?;
        }

        /// The four-row kernel gives exactly what the one-token kernel gives, row by row and
        /// token by token (a short last group of tokens included).
        #[test]
        fn four_rows_is_bit_identical((x, y) in blocks_and_act::<BlockQ4_K>(fix), nt in 1usize..=9) {
            check_four_rows(&x, &y, nt)?;
        }

        /// Real-looking rows (quantized from smooth data, most quants near the middle) are
        /// where a kernel that keeps large partial sums in float loses precision.
        #[test]
        fn levels_agree_on_quantized_rows(x in quant_input()) {
            let mut q = vec![BlockQ4_K::zeroed(); x.len() / QK_K];
            BlockQ4_K::quantize_row_ref(&x, &mut q);
            let y = act_for(x.len());
            check_vec_dot(&q, &y, vec_dot_scalar, magnitude(&q, &y))?;
        }

        #[test]
        fn quantize_roundtrip(x in quant_input()) {
            let mut q = vec![BlockQ4_K::zeroed(); x.len() / QK_K];
            BlockQ4_K::quantize_row_ref(&x, &mut q);
            let mut back = vec![0f32; x.len()];
            BlockQ4_K::dequantize_row(&q, &mut back);
            for (xs, ys) in x.chunks(QK_K).zip(back.chunks(QK_K)) {
                let max = xs.iter().fold(0f32, |m, &v| m.max(v));
                let min = xs.iter().fold(0f32, |m, &v| m.min(v));
                // 16 levels over the range: a step is range/15; the 6-bit sub-scales and the
                // f16 super-scales add a little.
                // 6e-5 covers f16 scales that are subnormal or underflow for tiny inputs.
                let bound = 0.12 * (max - min) + 6e-5;
                let mut sq = 0f64;
                for (a, r) in xs.iter().zip(ys) {
                    prop_assert!((a - r).abs() <= bound, "{a} vs {r}, bound {bound}");
                    sq += ((a - r) as f64).powi(2);
                }
                let rmse = (sq / QK_K as f64).sqrt();
                prop_assert!(rmse <= 0.04 * (max - min) as f64 + 6e-5, "rmse {rmse}");
            }
        }
    }

    use bytemuck::Zeroable;

    #[test]
    fn extreme_values_do_not_saturate() {
        // All nibbles 15, all scales 63, activations at both int8 extremes.
        let b = BlockQ4_K {
            d: f16::from_f32(1.0),
            dmin: f16::from_f32(0.5),
            scales: pack_scale_min_k4(&[63; 8], &[63; 8]),
            qs: [0xFF; 128],
        };
        for v in [-128i8, 127] {
            let x = vec![b; 3];
            let y = act_blocks(&vec![v; 3 * QK_K], &[1.0; 3]);
            let want = vec_dot_scalar(&x, &y);
            let exact = 3.0 * 256.0 * (63.0 * 15.0 - 0.5 * 63.0) * v as f64;
            assert!(((want as f64) - exact).abs() <= 1e-6 * exact.abs(), "{want} vs {exact}");
            for level in SimdLevel::available() {
                let got = BlockQ4_K::vec_dot(level, &x, &y);
                assert!(
                    ((got - want) as f64).abs() <= 1e-6 * exact.abs(),
                    "{level:?}: {got} vs {want}"
                );
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn sse_scale_unpack_matches_scalar() {
        if !SimdLevel::Avx2.is_available() {
            return;
        }
        for seed in 0..4096u32 {
            let s: [u8; 12] = std::array::from_fn(|i| {
                (seed.wrapping_mul(2654435761).rotate_left(i as u32 * 5) >> 7) as u8 ^ (i as u8).wrapping_mul(37)
            });
            let mut got = [0u8; 16];
            // SAFETY: AVX2 checked above.
            let v = unsafe { x86::unpack_scales_mins_k4_sse(&s) };
            unsafe { std::arch::x86_64::_mm_storeu_si128(got.as_mut_ptr() as *mut _, v) };
            assert_eq!(got, unpack_scales_mins_k4(&s), "{s:?}");
        }
    }

    #[test]
    fn zero_input_quantizes_to_zero() {
        let x = [0f32; QK_K];
        let mut q = [BlockQ4_K::zeroed()];
        BlockQ4_K::quantize_row_ref(&x, &mut q);
        let mut back = [1f32; QK_K];
        BlockQ4_K::dequantize_row(&q, &mut back);
        assert!(back.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn non_finite_input_does_not_panic() {
        let mut x = [0.5f32; QK_K];
        x[7] = f32::NAN;
        x[100] = f32::INFINITY;
        x[200] = f32::NEG_INFINITY;
        let mut q = [BlockQ4_K::zeroed()];
        BlockQ4_K::quantize_row_ref(&x, &mut q);
    }
}
