//! Q8_0: 32 int8 weights with one f16 scale (`block_q8_0`, ggml-common.h).
//!
//! Also the activation format ggml pairs with Q4_0, Q5_0, Q8_0 and IQ4_NL weights.
//! x = d · q.

use half::f16;

use crate::{Block, GgmlType, QuantizeRef, SimdLevel, VecDot};

/// Elements per Q8_0 block (`QK8_0`).
pub const QK8_0: usize = 32;

/// `block_q8_0` (ggml-common.h): 34 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ8_0 {
    /// Scale.
    pub d: f16,
    /// Quants.
    pub qs: [i8; QK8_0],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 2 + QK8_0);

impl Block for BlockQ8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;
    const QK: usize = QK8_0;

    /// `dequantize_row_q8_0`, ggml-quants.c.
    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK8_0)) {
            let d = b.d.to_f32();
            for (y, &q) in y.iter_mut().zip(b.qs.iter()) {
                *y = q as f32 * d;
            }
        }
    }
}

impl QuantizeRef for BlockQ8_0 {
    /// `quantize_row_q8_0_ref`, ggml-quants.c: d = amax / 127, q = roundf(x / d).
    fn quantize_row_ref(src: &[f32], dst: &mut [Self]) {
        for (x, b) in src.chunks_exact(QK8_0).zip(dst.iter_mut()) {
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            b.d = f16::from_f32(d);
            for (q, &v) in b.qs.iter_mut().zip(x) {
                *q = (v * id).round() as i8;
            }
        }
    }

    fn quantize_row_act(src: &[f32], dst: &mut [Self]) {
        quantize_row_act_q8_0(src, dst)
    }
}

/// ggml-cpu's x86 `quantize_row_q8_0` (arch/x86/quants.c): d = amax / 127 stored as f16,
/// q = round-half-even(x · (127 / amax)).
fn quantize_row_act_q8_0(src: &[f32], dst: &mut [BlockQ8_0]) {
    for (x, b) in src.chunks_exact(QK8_0).zip(dst.iter_mut()) {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        b.d = f16::from_f32(d);
        for (q, &v) in b.qs.iter_mut().zip(x) {
            *q = crate::round_half_even_small(v * id) as i8;
        }
    }
}

impl VecDot for BlockQ8_0 {
    type Act = BlockQ8_0;

    fn vec_dot(level: SimdLevel, x: &[Self], y: &[Self]) -> f32 {
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

/// Scalar reference of `ggml_vec_dot_q8_0_q8_0` (ggml-cpu/quants.c): per block an exact
/// integer dot, times d_x·d_y, summed in f32.
pub fn vec_dot_scalar(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    let mut sumf = 0f32;
    for (bx, by) in x.iter().zip(y) {
        let sumi: i32 = bx.qs.iter().zip(&by.qs).map(|(&a, &b)| a as i32 * b as i32).sum();
        sumf += sumi as f32 * (bx.d.to_f32() * by.d.to_f32());
    }
    sumf
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::BlockQ8_0;
    use crate::x86_util::*;
    use std::arch::x86_64::*;

    /// # Safety
    /// Requires AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn vec_dot_avx2(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for (bx, by) in x.iter().zip(y) {
            let d = _mm256_set1_ps(bx.d.to_f32() * by.d.to_f32());
            let qx = unsafe { _mm256_loadu_si256(bx.qs.as_ptr() as *const __m256i) };
            let qy = unsafe { _mm256_loadu_si256(by.qs.as_ptr() as *const __m256i) };
            let q = mul_sum_i8_pairs_float(qx, qy);
            acc = _mm256_fmadd_ps(d, q, acc);
        }
        hsum_float_8(acc)
    }

    /// Two blocks per step with VNNI (`vpdpbusd`).
    ///
    /// # Safety
    /// Requires AVX-512 F/BW/VL/DQ + VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    pub unsafe fn vec_dot_avx512(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
        let mut acc = _mm512_setzero_ps();
        let pairs = x.len() / 2;
        for i in 0..pairs {
            let (x0, x1, y0, y1) = (&x[2 * i], &x[2 * i + 1], &y[2 * i], &y[2 * i + 1]);
            let qx = _mm512_inserti64x4(
                _mm512_castsi256_si512(unsafe { _mm256_loadu_si256(x0.qs.as_ptr() as *const __m256i) }),
                unsafe { _mm256_loadu_si256(x1.qs.as_ptr() as *const __m256i) },
                1,
            );
            let qy = _mm512_inserti64x4(
                _mm512_castsi256_si512(unsafe { _mm256_loadu_si256(y0.qs.as_ptr() as *const __m256i) }),
                unsafe { _mm256_loadu_si256(y1.qs.as_ptr() as *const __m256i) },
                1,
            );
            let q = mul_sum_i8_pairs_float_512(qx, qy);
            let d = scales_2x8(x0.d.to_f32() * y0.d.to_f32(), x1.d.to_f32() * y1.d.to_f32());
            acc = _mm512_fmadd_ps(d, q, acc);
        }
        let mut sum = _mm512_reduce_add_ps(acc);
        if x.len() % 2 == 1 {
            let n = x.len() - 1;
            sum += unsafe { vec_dot_avx2(&x[n..], &y[n..]) };
        }
        sum
    }
}

#[cfg(target_arch = "aarch64")]
pub(crate) mod neon {
    use super::BlockQ8_0;
    use std::arch::aarch64::*;

    /// # Safety
    /// Requires NEON.
    #[target_feature(enable = "neon")]
    pub unsafe fn vec_dot_neon(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
        let mut acc = vdupq_n_f32(0.0);
        for (bx, by) in x.iter().zip(y) {
            let x0 = unsafe { vld1q_s8(bx.qs.as_ptr()) };
            let x1 = unsafe { vld1q_s8(bx.qs.as_ptr().add(16)) };
            let y0 = unsafe { vld1q_s8(by.qs.as_ptr()) };
            let y1 = unsafe { vld1q_s8(by.qs.as_ptr().add(16)) };
            let p = crate::neon_util::dot_i8x16(x0, y0);
            let p = vaddq_s32(p, crate::neon_util::dot_i8x16(x1, y1));
            acc = vmlaq_n_f32(acc, vcvtq_f32_s32(p), bx.d.to_f32() * by.d.to_f32());
        }
        vaddvq_f32(acc)
    }
}
