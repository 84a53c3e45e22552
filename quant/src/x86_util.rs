//! Shared x86-64 SIMD helpers (ggml-cpu's `mul_sum_i8_pairs_float`, `hsum_float_8`, ...).
//! Each is `#[inline]` with the target features of its callers.
#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

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
