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
/// q = round-half-even(x · (127 / amax)). Compiled for AVX2 where the CPU has it (the same
/// arithmetic, vectorized by the compiler: bit-identical, see the tests).
fn quantize_row_act_q8_0(src: &[f32], dst: &mut [BlockQ8_0]) {
    #[cfg(target_arch = "x86_64")]
    if SimdLevel::detect() != SimdLevel::Scalar && SimdLevel::Avx2.is_available() {
        // SAFETY: AVX2, FMA and F16C were detected.
        unsafe { x86::quantize_row_act_avx2(src, dst) };
        return;
    }
    quantize_row_act_body(src, dst, crate::round_half_even_small)
}

/// The body of [`quantize_row_act_q8_0`]: `round` is round-half-even (either spelling).
#[inline(always)]
fn quantize_row_act_body(src: &[f32], dst: &mut [BlockQ8_0], round: impl Fn(f32) -> f32) {
    for (x, b) in src.chunks_exact(QK8_0).zip(dst.iter_mut()) {
        // The largest magnitude, in eight lanes (max is exact in any order; NaN is skipped
        // as by a sequential `f32::max`).
        let mut lanes = [0f32; 8];
        for c in x.chunks_exact(8) {
            for (m, v) in lanes.iter_mut().zip(c) {
                *m = m.max(v.abs());
            }
        }
        let amax = lanes.iter().fold(0f32, |m, &v| m.max(v));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        b.d = f16::from_f32(d);
        for (q, &v) in b.qs.iter_mut().zip(x) {
            *q = round(v * id) as i8;
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

    #[cfg(target_arch = "x86_64")]
    fn vec_dot_residual(level: SimdLevel, x: &[Self], y: &[Self::Act], r: &[Self::Act]) -> f32 {
        crate::residual_avx512_or_each(level, x, y, r, x86::vec_dot_residual_avx512)
    }

    #[cfg(target_arch = "x86_64")]
    const PACK_I8_PAIR: Option<crate::packed::PackPair<Self>> = Some(x86::pack_pair_avx512);
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

    /// [`super::quantize_row_act_q8_0`] compiled for AVX2 (`vroundps` for the rounding).
    ///
    /// # Safety
    /// Requires AVX2 + FMA + F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn quantize_row_act_avx2(src: &[f32], dst: &mut [BlockQ8_0]) {
        super::quantize_row_act_body(src, dst, f32::round_ties_even)
    }

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

    /// [`super::VecDot::vec_dot_residual`] with VNNI: each pair of weight blocks unpacked as in
    /// [`vec_dot_avx512`], then dotted with the activation pair and the remainder pair
    /// ([`residual_dot_512`]). An odd last block goes through the AVX2 kernel for each.
    ///
    /// # Safety
    /// Requires AVX-512 F/BW/VL/DQ + VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    pub unsafe fn vec_dot_residual_avx512(x: &[BlockQ8_0], y: &[BlockQ8_0], r: &[BlockQ8_0]) -> f32 {
        let unpack = |xs: &[BlockQ8_0]| {
            let q = join_256(load_i8_32(&xs[0].qs), load_i8_32(&xs[1].qs));
            (q, fp16_to_f32(xs[0].d), fp16_to_f32(xs[1].d))
        };
        residual_dot_512(x, y, r, unpack, |x, y| unsafe { vec_dot_avx2(x, y) })
    }

    /// Two blocks as [`crate::packed`]'s kernel takes them: the quants as they are.
    ///
    /// # Safety
    /// Requires AVX-512 F/BW/VL/DQ + VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    pub unsafe fn pack_pair_avx512(x0: &BlockQ8_0, x1: &BlockQ8_0, out: &mut crate::packed::WeightPair) {
        out.set(
            join_256(load_i8_32(&x0.qs), load_i8_32(&x1.qs)),
            fp16_to_f32(x0.d),
            fp16_to_f32(x1.d),
        );
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

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use bytemuck::Zeroable;

    #[test]
    fn act_quantizer_avx2_build_is_bit_identical() {
        if SimdLevel::Avx2.is_available() {
            // Random values, exact halves (ties), zeros, NaN and infinities.
            let mut st = 0x9E37_79B9_7F4A_7C15u64;
            let mut x: Vec<f32> = (0..QK8_0 * 64)
                .map(|_| {
                    st ^= st << 13;
                    st ^= st >> 7;
                    st ^= st << 17;
                    ((st >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 40.0
                })
                .collect();
            for (i, v) in x[..QK8_0].iter_mut().enumerate() {
                *v = (i as f32 - 13.0) * 0.5;
            }
            x[QK8_0 * 2..QK8_0 * 3].fill(0.0);
            x[QK8_0 * 4 + 3] = f32::NAN;
            x[QK8_0 * 5 + 1] = f32::INFINITY;
            let mut a = vec![BlockQ8_0::zeroed(); 64];
            let mut b = vec![BlockQ8_0::zeroed(); 64];
            quantize_row_act_body(&x, &mut a, crate::round_half_even_small);
            // SAFETY: AVX2 was detected just above.
            unsafe { x86::quantize_row_act_avx2(&x, &mut b) };
            assert_eq!(a, b);
        }
    }

    fn block(q: std::ops::RangeInclusive<i8>) -> impl proptest::strategy::Strategy<Value = BlockQ8_0> {
        use proptest::prelude::*;
        ((-1f32..1.0).prop_map(f16::from_f32), prop::array::uniform32(q)).prop_map(|(d, qs)| BlockQ8_0 { d, qs })
    }

    proptest::proptest! {
        /// The packed prompt kernel against the per-pair one, for every row and token, an odd
        /// block count included. Any weights; activations in −127..=127, as the activation
        /// quantizer makes them: a −128 against a negative weight wraps in the per-pair
        /// kernel's sign trick (ggml's `mul_sum_i8_pairs_float`), not in the packed kernel.
        #[test]
        fn packed_is_bit_identical(
            n in 1usize..=9,
            w in proptest::collection::vec(proptest::collection::vec(block(i8::MIN..=i8::MAX), 9), 4),
            a in proptest::collection::vec(proptest::collection::vec(block(-127..=127), 9), 1..=6),
        ) {
            let xs: [&[BlockQ8_0]; 4] = std::array::from_fn(|r| &w[r][..n]);
            let ys: Vec<&[BlockQ8_0]> = a.iter().map(|y| &y[..n]).collect();
            proptest::prop_assert_eq!(crate::packed::check_four_rows(xs, &ys), Ok(()));
        }
    }
}
