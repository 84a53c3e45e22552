//! Shared x86-64 SIMD helpers (ggml-cpu's `mul_sum_i8_pairs_float`, `hsum_float_8`, ...).
//! Each is `#[inline]` with the target features of its callers.
#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use crate::q8_0::BlockQ8_0;

/// Horizontal sum of 8 floats.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn hsum_float_8(x: __m256) -> f32 {
    let mut res = _mm256_extractf128_ps(x, 1);
    res = _mm_add_ps(res, _mm256_castps256_ps128(x));
    res = _mm_add_ps(res, _mm_movehl_ps(res, res));
    res = _mm_add_ss(res, _mm_movehdup_ps(res));
    _mm_cvtss_f32(res)
}

/// Horizontal sum of 8 i32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn hsum_i32_8(a: __m256i) -> i32 {
    let sum128 = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extractf128_si256(a, 1));
    let hi64 = _mm_unpackhi_epi64(sum128, sum128);
    let sum64 = _mm_add_epi32(hi64, sum128);
    let hi32 = _mm_shuffle_epi32(sum64, 0b10_11_00_01);
    _mm_cvtsi128_si32(_mm_add_epi32(sum64, hi32))
}

/// Sum of products of unsigned `ax` (0..=255) and signed `sy` bytes, in 8 i32 lanes
/// (4 adjacent products each).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn mul_sum_us8_pairs_i32(ax: __m256i, sy: __m256i) -> __m256i {
    let dot = _mm256_maddubs_epi16(ax, sy);
    _mm256_madd_epi16(_mm256_set1_epi16(1), dot)
}

/// Sum of products of signed bytes `x`·`y`, 4 adjacent products per lane, as 8 floats.
/// (`mul_sum_i8_pairs_float`, ggml-cpu: |x| times y with x's sign, through maddubs.)
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn mul_sum_i8_pairs_float(x: __m256i, y: __m256i) -> __m256 {
    let ax = _mm256_sign_epi8(x, x);
    let sy = _mm256_sign_epi8(y, x);
    _mm256_cvtepi32_ps(mul_sum_us8_pairs_i32(ax, sy))
}

/// Sum of products of unsigned bytes `ax` and signed bytes `sy`, 4 adjacent products per lane,
/// as 16 i32 (VNNI `vpdpbusd`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub fn mul_sum_us8_pairs_i32_512(ax: __m512i, sy: __m512i) -> __m512i {
    _mm512_dpbusd_epi32(_mm512_setzero_si512(), ax, sy)
}

/// Signed bytes `x`·`y`, 4 adjacent products per lane, as 16 floats (VNNI).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub fn mul_sum_i8_pairs_float_512(x: __m512i, y: __m512i) -> __m512 {
    let ax = _mm512_abs_epi8(x);
    // y with the sign of x: negate y where x < 0 (x == 0 contributes 0 through |x| anyway).
    let neg = _mm512_movepi8_mask(x);
    let sy = _mm512_mask_sub_epi8(y, neg, _mm512_setzero_si512(), y);
    _mm512_cvtepi32_ps(mul_sum_us8_pairs_i32_512(ax, sy))
}

/// 16 floats: `a` in lanes 0..8, `b` in lanes 8..16.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub fn scales_2x8(a: f32, b: f32) -> __m512 {
    _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set1_ps(a)), _mm256_set1_ps(b), 1)
}

/// The 32 nibbles of a 16-byte legacy-quant `qs` as 32 bytes 0..=15: the low nibbles
/// (elements 0..16) in the low 128 bits, the high nibbles (elements 16..32) in the high 128
/// (`bytes_from_nibbles_32`, ggml-cpu/arch/x86/quants.c). That puts element j in byte j, the
/// order the Q8 activation stores its quants in.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn bytes_from_nibbles_32(qs: &[u8; 16]) -> __m256i {
    // SAFETY: `qs` is 16 readable bytes; `loadu` has no alignment requirement.
    let tmp = unsafe { _mm_loadu_si128(qs.as_ptr() as *const __m128i) };
    let both = _mm256_set_m128i(_mm_srli_epi16(tmp, 4), tmp);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// The 32 bits of `x` as 32 bytes: 0xFF in byte j where bit j is set, 0 elsewhere
/// (`bytes_from_bits_32`, ggml-cpu/arch/x86/quants.c): the fifth bits of Q5_0 / Q5_1.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn bytes_from_bits_32(x: u32) -> __m256i {
    // Byte j of the broadcast picks source byte j / 8 of `x`; OR-ing every bit but bit j % 8
    // then comparing with all-ones leaves 0xFF exactly where bit j was set.
    let shuf = _mm256_set_epi64x(
        0x0303_0303_0303_0303,
        0x0202_0202_0202_0202,
        0x0101_0101_0101_0101,
        0x0000_0000_0000_0000,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x as i32), shuf);
    let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe));
    _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
}

/// Unsigned bytes `ax` times signed bytes `sy`, 4 adjacent products per lane, as 8 floats
/// (`mul_sum_us8_pairs_float`, ggml-cpu). Exact when `ax` ≤ 127 (no `maddubs` saturation).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn mul_sum_us8_pairs_float(ax: __m256i, sy: __m256i) -> __m256 {
    _mm256_cvtepi32_ps(mul_sum_us8_pairs_i32(ax, sy))
}

/// `lo` in the low 256 bits, `hi` in the high 256 bits.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub fn join_256(lo: __m256i, hi: __m256i) -> __m512i {
    _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1)
}

/// 32 bytes from `p` (a Q8 block's quants).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn load_i8_32(p: &[i8; 32]) -> __m256i {
    // SAFETY: `p` is 32 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_si256(p.as_ptr() as *const __m256i) }
}

/// f16 → f32 with the F16C instruction inline (exact). `half::f16::to_f32` re-detects F16C
/// at run time on every call unless the whole crate is compiled with it, which costs more
/// than the conversion in a per-block loop.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub fn fp16_to_f32(h: half::f16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h.to_bits() as i32)))
}

/// An AVX-512 residual dot product ([`crate::VecDot::vec_dot_residual`]) for a format whose
/// weight blocks pair up into 64 signed bytes and two scales (`unpack`), against Q8_0
/// activations `y` and their remainders `r`. Each pair is unpacked once and dotted with the
/// activation pair and the remainder pair, each scaled as in the format's `vec_dot` (|qx|
/// times the activation with qx's sign, through `vpdpbusd`); an odd last block goes through
/// `one` (the format's AVX2 `vec_dot`) for each.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub fn residual_dot_512<B>(
    x: &[B],
    y: &[BlockQ8_0],
    r: &[BlockQ8_0],
    unpack: impl Fn(&[B]) -> (__m512i, f32, f32),
    one: impl Fn(&[B], &[BlockQ8_0]) -> f32,
) -> f32 {
    let mut acc = _mm512_setzero_ps();
    for ((xs, ys), rs) in x.chunks_exact(2).zip(y.chunks_exact(2)).zip(r.chunks_exact(2)) {
        let (qx, dx0, dx1) = unpack(xs);
        let ax = _mm512_abs_epi8(qx);
        let neg = _mm512_movepi8_mask(qx);
        for b in [ys, rs] {
            let q = join_256(load_i8_32(&b[0].qs), load_i8_32(&b[1].qs));
            let sq = _mm512_mask_sub_epi8(q, neg, _mm512_setzero_si512(), q);
            let d = scales_2x8(dx0 * fp16_to_f32(b[0].d), dx1 * fp16_to_f32(b[1].d));
            acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(mul_sum_us8_pairs_i32_512(ax, sq)), acc);
        }
    }
    let mut sum = _mm512_reduce_add_ps(acc);
    let n = x.len();
    if n % 2 == 1 {
        let last = &x[n - 1..];
        sum += one(last, &y[n - 1..n]) + one(last, &r[n - 1..n]);
    }
    sum
}
