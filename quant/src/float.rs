//! The plain float types F32, F16 and BF16: a "block" is one element.
//!
//! ggml multiplies each against activations of its own type (`vec_dot_type`, ggml-cpu.c) and
//! its scalar `ggml_vec_dot_{f32,f16,bf16}` accumulate in double (`ggml_float`, vec.cpp).

use half::{bf16, f16};

use crate::{Block, GgmlType, QuantizeRef, SimdLevel, VecDot};

impl Block for f32 {
    const TYPE: GgmlType = GgmlType::F32;
    const QK: usize = 1;
    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
}

impl QuantizeRef for f32 {
    fn quantize_row_ref(src: &[f32], dst: &mut [Self]) {
        dst.copy_from_slice(src);
    }
}

impl Block for f16 {
    const TYPE: GgmlType = GgmlType::F16;
    const QK: usize = 1;
    /// `ggml_fp16_to_fp32_row`.
    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        for (y, x) in dst.iter_mut().zip(src) {
            *y = x.to_f32();
        }
    }
}

impl QuantizeRef for f16 {
    /// `ggml_fp32_to_fp16_row`: round to nearest even.
    fn quantize_row_ref(src: &[f32], dst: &mut [Self]) {
        for (y, x) in dst.iter_mut().zip(src) {
            *y = f16::from_f32(*x);
        }
    }
}

impl Block for bf16 {
    const TYPE: GgmlType = GgmlType::BF16;
    const QK: usize = 1;
    /// `ggml_bf16_to_fp32_row`: the 16 bits become the high half of an f32.
    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        for (y, x) in dst.iter_mut().zip(src) {
            *y = f32::from_bits((x.to_bits() as u32) << 16);
        }
    }
}

impl QuantizeRef for bf16 {
    /// `ggml_compute_fp32_to_bf16`: NaN is quieted, everything else rounds to nearest even.
    fn quantize_row_ref(src: &[f32], dst: &mut [Self]) {
        for (y, x) in dst.iter_mut().zip(src) {
            *y = bf16::from_bits(fp32_to_bf16_bits(*x));
        }
    }
}

/// `ggml_compute_fp32_to_bf16` (ggml-impl.h).
pub fn fp32_to_bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        // NaN: keep the sign, force quiet.
        return ((u >> 16) | 64) as u16;
    }
    ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

impl VecDot for f32 {
    type Act = f32;
    /// `ggml_vec_dot_f32` (ggml-cpu/vec.cpp).
    fn vec_dot(level: SimdLevel, x: &[Self], y: &[Self]) -> f32 {
        match level {
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 if level.is_available() => unsafe { x86::dot_f32_avx512(x, y) },
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 if level.is_available() => unsafe { x86::dot_f32_avx2(x, y) },
            #[cfg(target_arch = "aarch64")]
            SimdLevel::Neon if level.is_available() => unsafe { neon::dot_f32_neon(x, y) },
            _ => vec_dot_f32_scalar(x, y),
        }
    }
}

impl VecDot for f16 {
    type Act = f16;
    /// `ggml_vec_dot_f16` (ggml-cpu/vec.cpp).
    fn vec_dot(level: SimdLevel, x: &[Self], y: &[Self]) -> f32 {
        match level {
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 if level.is_available() => unsafe { x86::dot_f16_avx512(x, y) },
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 if level.is_available() => unsafe { x86::dot_f16_avx2(x, y) },
            #[cfg(target_arch = "aarch64")]
            SimdLevel::Neon if level.is_available() => unsafe { neon::dot_f16_neon(x, y) },
            _ => vec_dot_f16_scalar(x, y),
        }
    }
}

impl VecDot for bf16 {
    type Act = bf16;
    /// `ggml_vec_dot_bf16` (ggml-cpu/vec.cpp).
    fn vec_dot(level: SimdLevel, x: &[Self], y: &[Self]) -> f32 {
        match level {
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 if level.is_available() => unsafe { x86::dot_bf16_avx512(x, y) },
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 if level.is_available() => unsafe { x86::dot_bf16_avx2(x, y) },
            #[cfg(target_arch = "aarch64")]
            SimdLevel::Neon if level.is_available() => unsafe { neon::dot_bf16_neon(x, y) },
            _ => vec_dot_bf16_scalar(x, y),
        }
    }
}

/// `bf16` → `f32`: the 16 bits become the high half (`GGML_BF16_TO_FP32`), exact.
#[inline]
fn bf16_to_f32(x: bf16) -> f32 {
    f32::from_bits((x.to_bits() as u32) << 16)
}

/// Scalar reference of `ggml_vec_dot_f32` (ggml-cpu/vec.cpp, no-SIMD path): each product
/// rounded in f32, summed in double (`ggml_float`).
pub fn vec_dot_f32_scalar(x: &[f32], y: &[f32]) -> f32 {
    let mut s = 0f64;
    for (a, b) in x.iter().zip(y) {
        s += (*a * *b) as f64;
    }
    s as f32
}

/// Scalar reference of `ggml_vec_dot_f16` (ggml-cpu/vec.cpp, no-SIMD path): both operands
/// widened to f32 (exact), each product rounded in f32, summed in double.
pub fn vec_dot_f16_scalar(x: &[f16], y: &[f16]) -> f32 {
    let mut s = 0f64;
    for (a, b) in x.iter().zip(y) {
        s += (a.to_f32() * b.to_f32()) as f64;
    }
    s as f32
}

/// Scalar reference of `ggml_vec_dot_bf16` (ggml-cpu/vec.cpp, no-SIMD path): both operands
/// widened to f32 (exact), each product rounded in f32, summed in double.
pub fn vec_dot_bf16_scalar(x: &[bf16], y: &[bf16]) -> f32 {
    let mut s = 0f64;
    for (a, b) in x.iter().zip(y) {
        s += (bf16_to_f32(*a) * bf16_to_f32(*b)) as f64;
    }
    s as f32
}

/// One SIMD dot kernel: as ggml's `GGML_F32_STEP` loop, four independent accumulators of
/// `lanes` floats (to hide the FMA latency), then single vectors, then the leftover
/// elements added in double to the reduced vector sum (ggml's tail loop into
/// `ggml_float sumf`).
#[allow(unused_macros)]
macro_rules! simd_dot {
    (
        $(#[$attr:meta])*
        fn $name:ident($T:ty, lanes = $lanes:literal) {
            zero: $zero:expr,
            load: $load:ident,
            fma: $fma:ident,
            add: $add:ident,
            reduce: $reduce:ident,
            to_f32: $cvt:path $(,)?
        }
    ) => {
        $(#[$attr])*
        pub unsafe fn $name(x: &[$T], y: &[$T]) -> f32 {
            const STEP: usize = 4 * $lanes;
            let n = x.len().min(y.len());
            let mut acc = [$zero; 4];
            let mut i = 0;
            while i + STEP <= n {
                for (j, acc) in acc.iter_mut().enumerate() {
                    // SAFETY: i + (j + 1)·lanes ≤ i + STEP ≤ n ≤ x.len(), y.len().
                    let a = unsafe { $load(x.as_ptr().add(i + j * $lanes)) };
                    let b = unsafe { $load(y.as_ptr().add(i + j * $lanes)) };
                    *acc = $fma(a, b, *acc);
                }
                i += STEP;
            }
            while i + $lanes <= n {
                // SAFETY: i + lanes ≤ n ≤ x.len(), y.len().
                let a = unsafe { $load(x.as_ptr().add(i)) };
                let b = unsafe { $load(y.as_ptr().add(i)) };
                acc[0] = $fma(a, b, acc[0]);
                i += $lanes;
            }
            let mut sum = $reduce($add($add(acc[0], acc[1]), $add(acc[2], acc[3]))) as f64;
            for (a, b) in x[i..n].iter().zip(&y[i..n]) {
                sum += ($cvt(*a) * $cvt(*b)) as f64;
            }
            sum as f32
        }
    };
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::bf16_to_f32;
    use crate::x86_util::hsum_float_8;
    use half::{bf16, f16};
    use std::arch::x86_64::*;

    #[inline]
    fn id(v: f32) -> f32 {
        v
    }

    /// # Safety
    /// `p` points to 8 readable f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_f32_8(p: *const f32) -> __m256 {
        unsafe { _mm256_loadu_ps(p) }
    }

    /// # Safety
    /// `p` points to 8 readable f16.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_f16_8(p: *const f16) -> __m256 {
        _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p as *const __m128i) })
    }

    /// # Safety
    /// `p` points to 8 readable bf16.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_bf16_8(p: *const bf16) -> __m256 {
        // Zero-extend to 32 bits and shift into the high half: exact, as GGML_BF16_TO_FP32.
        let w = _mm256_cvtepu16_epi32(unsafe { _mm_loadu_si128(p as *const __m128i) });
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(w))
    }

    /// # Safety
    /// `p` points to 16 readable f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn load_f32_16(p: *const f32) -> __m512 {
        unsafe { _mm512_loadu_ps(p) }
    }

    /// # Safety
    /// `p` points to 16 readable f16.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn load_f16_16(p: *const f16) -> __m512 {
        _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(p as *const __m256i) })
    }

    /// # Safety
    /// `p` points to 16 readable bf16.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    unsafe fn load_bf16_16(p: *const bf16) -> __m512 {
        // As the AVX2 load; the level does not include AVX512-BF16's `vdpbf16ps`, whose
        // different rounding ggml accepts but this crate's kernels need not.
        let w = _mm512_cvtepu16_epi32(unsafe { _mm256_loadu_si256(p as *const __m256i) });
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(w))
    }

    simd_dot! {
        /// F32·F32, 32 elements per step (`ggml_vec_dot_f32`, AVX path).
        ///
        /// # Safety
        /// Requires AVX2, FMA and F16C.
        #[target_feature(enable = "avx2,fma,f16c")]
        fn dot_f32_avx2(f32, lanes = 8) {
            zero: _mm256_setzero_ps(), load: load_f32_8, fma: _mm256_fmadd_ps,
            add: _mm256_add_ps, reduce: hsum_float_8, to_f32: id,
        }
    }

    simd_dot! {
        /// F16·F16, 32 elements per step, widened with F16C (`ggml_vec_dot_f16`, AVX path).
        ///
        /// # Safety
        /// Requires AVX2, FMA and F16C.
        #[target_feature(enable = "avx2,fma,f16c")]
        fn dot_f16_avx2(f16, lanes = 8) {
            zero: _mm256_setzero_ps(), load: load_f16_8, fma: _mm256_fmadd_ps,
            add: _mm256_add_ps, reduce: hsum_float_8, to_f32: f16::to_f32,
        }
    }

    simd_dot! {
        /// BF16·BF16, 32 elements per step (`ggml_vec_dot_bf16`, AVX2 path).
        ///
        /// # Safety
        /// Requires AVX2, FMA and F16C.
        #[target_feature(enable = "avx2,fma,f16c")]
        fn dot_bf16_avx2(bf16, lanes = 8) {
            zero: _mm256_setzero_ps(), load: load_bf16_8, fma: _mm256_fmadd_ps,
            add: _mm256_add_ps, reduce: hsum_float_8, to_f32: bf16_to_f32,
        }
    }

    simd_dot! {
        /// F32·F32, 64 elements per step (`ggml_vec_dot_f32`, AVX-512 path).
        ///
        /// # Safety
        /// Requires AVX-512 F/BW/VL/DQ + VNNI.
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
        fn dot_f32_avx512(f32, lanes = 16) {
            zero: _mm512_setzero_ps(), load: load_f32_16, fma: _mm512_fmadd_ps,
            add: _mm512_add_ps, reduce: _mm512_reduce_add_ps, to_f32: id,
        }
    }

    simd_dot! {
        /// F16·F16, 64 elements per step (`ggml_vec_dot_f16`, AVX-512 path).
        ///
        /// # Safety
        /// Requires AVX-512 F/BW/VL/DQ + VNNI.
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
        fn dot_f16_avx512(f16, lanes = 16) {
            zero: _mm512_setzero_ps(), load: load_f16_16, fma: _mm512_fmadd_ps,
            add: _mm512_add_ps, reduce: _mm512_reduce_add_ps, to_f32: f16::to_f32,
        }
    }

    simd_dot! {
        /// BF16·BF16, 64 elements per step (`ggml_vec_dot_bf16`, AVX-512F path).
        ///
        /// # Safety
        /// Requires AVX-512 F/BW/VL/DQ + VNNI.
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
        fn dot_bf16_avx512(bf16, lanes = 16) {
            zero: _mm512_setzero_ps(), load: load_bf16_16, fma: _mm512_fmadd_ps,
            add: _mm512_add_ps, reduce: _mm512_reduce_add_ps, to_f32: bf16_to_f32,
        }
    }
}

#[cfg(target_arch = "aarch64")]
pub(crate) mod neon {
    use super::bf16_to_f32;
    use half::{bf16, f16};
    use std::arch::aarch64::*;
    use std::arch::asm;

    #[inline]
    fn id(v: f32) -> f32 {
        v
    }

    /// `a·b + acc` (argument order of the x86 `fmadd` the macro is written for).
    #[inline]
    #[target_feature(enable = "neon")]
    fn fma(a: float32x4_t, b: float32x4_t, acc: float32x4_t) -> float32x4_t {
        vfmaq_f32(acc, a, b)
    }

    /// # Safety
    /// `p` points to 4 readable f32.
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn load_f32_4(p: *const f32) -> float32x4_t {
        unsafe { vld1q_f32(p) }
    }

    /// # Safety
    /// `p` points to 4 readable f16.
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn load_f16_4(p: *const f16) -> float32x4_t {
        let h = unsafe { vld1_u16(p as *const u16) };
        let out: float32x4_t;
        // `fcvtl` (half → single, exact) is base ARMv8 SIMD, but its intrinsic
        // `vcvt_f32_f16` takes `float16x4_t`, which stable Rust does not have.
        // SAFETY: a register-only conversion.
        unsafe {
            asm!("fcvtl {o:v}.4s, {i:v}.4h", o = lateout(vreg) out, i = in(vreg) h,
                 options(pure, nomem, nostack, preserves_flags));
        }
        out
    }

    /// # Safety
    /// `p` points to 4 readable bf16.
    #[inline]
    #[target_feature(enable = "neon")]
    unsafe fn load_bf16_4(p: *const bf16) -> float32x4_t {
        // Widen and shift into the high half: exact, as GGML_BF16_TO_FP32.
        let h = unsafe { vld1_u16(p as *const u16) };
        vreinterpretq_f32_u32(vshll_n_u16::<16>(h))
    }

    simd_dot! {
        /// F32·F32, 16 elements per step (`ggml_vec_dot_f32`, NEON path).
        ///
        /// # Safety
        /// Requires NEON.
        #[target_feature(enable = "neon")]
        fn dot_f32_neon(f32, lanes = 4) {
            zero: vdupq_n_f32(0.0), load: load_f32_4, fma: fma,
            add: vaddq_f32, reduce: vaddvq_f32, to_f32: id,
        }
    }

    simd_dot! {
        /// F16·F16, 16 elements per step, widened to f32 (`ggml_vec_dot_f16`; ggml's NEON
        /// path multiplies in half precision where the CPU has it, this one in single).
        ///
        /// # Safety
        /// Requires NEON.
        #[target_feature(enable = "neon")]
        fn dot_f16_neon(f16, lanes = 4) {
            zero: vdupq_n_f32(0.0), load: load_f16_4, fma: fma,
            add: vaddq_f32, reduce: vaddvq_f32, to_f32: f16::to_f32,
        }
    }

    simd_dot! {
        /// BF16·BF16, 16 elements per step, widened to f32 (`ggml_vec_dot_bf16`).
        ///
        /// # Safety
        /// Requires NEON.
        #[target_feature(enable = "neon")]
        fn dot_bf16_neon(bf16, lanes = 4) {
            zero: vdupq_n_f32(0.0), load: load_bf16_4, fma: fma,
            add: vaddq_f32, reduce: vaddvq_f32, to_f32: bf16_to_f32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Finite values of moderate range, as 2 rows of one random length 0..=300 (covering
    /// every tail length of every kernel).
    fn rows() -> impl Strategy<Value = (Vec<f32>, Vec<f32>)> {
        (0usize..=300).prop_flat_map(|n| {
            (
                prop::collection::vec(-100f32..100.0, n),
                prop::collection::vec(-100f32..100.0, n),
            )
        })
    }

    fn check<T: VecDot<Act = T>>(
        x: &[T],
        y: &[T],
        scalar: fn(&[T], &[T]) -> f32,
        abs: f64,
    ) -> Result<(), TestCaseError> {
        let want = scalar(x, y);
        prop_assert_eq!(want, T::vec_dot(SimdLevel::Scalar, x, y));
        for level in SimdLevel::available() {
            let got = T::vec_dot(level, x, y);
            prop_assert!(
                ((got - want) as f64).abs() <= 1e-5 * abs + 1e-30,
                "{:?}: {} vs {}",
                level,
                got,
                want
            );
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn f32_levels_match_scalar((x, y) in rows()) {
            let abs: f64 = x.iter().zip(&y).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
            check(&x, &y, vec_dot_f32_scalar, abs)?;
        }

        #[test]
        fn f16_levels_match_scalar((x, y) in rows()) {
            let x: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
            let y: Vec<f16> = y.iter().map(|&v| f16::from_f32(v)).collect();
            let abs: f64 = x.iter().zip(&y).map(|(a, b)| (a.to_f64() * b.to_f64()).abs()).sum();
            check(&x, &y, vec_dot_f16_scalar, abs)?;
        }

        #[test]
        fn bf16_levels_match_scalar((x, y) in rows()) {
            let x: Vec<bf16> = x.iter().map(|&v| bf16::from_bits(fp32_to_bf16_bits(v))).collect();
            let y: Vec<bf16> = y.iter().map(|&v| bf16::from_bits(fp32_to_bf16_bits(v))).collect();
            let abs: f64 = x.iter().zip(&y).map(|(a, b)| (a.to_f64() * b.to_f64()).abs()).sum();
            check(&x, &y, vec_dot_bf16_scalar, abs)?;
        }
    }

    #[test]
    fn scalar_accumulates_in_double() {
        // 1 + 2^-30 − 1 is 0 in f32 but 2^-30 in double.
        let x = [1.0f32, 2f32.powi(-30), -1.0];
        let y = [1.0f32; 3];
        assert_eq!(vec_dot_f32_scalar(&x, &y), 2f32.powi(-30));
    }

    #[test]
    fn half_conversions_are_exact() {
        // Subnormal, normal, largest finite and signed-zero halves, each repeated n times
        // against ones: every partial sum is exact, so every level must agree bit for bit
        // (a conversion that flushed subnormals or mangled the exponent would not).
        let vals = [
            f16::from_bits(0x0001),
            f16::from_bits(0x8400),
            f16::MAX,
            f16::NEG_ZERO,
            f16::ONE,
        ];
        for level in SimdLevel::available() {
            for v in vals {
                for n in [1, 4, 5, 8, 16, 17, 33, 64, 65] {
                    let x = vec![v; n];
                    let y = vec![f16::ONE; n];
                    assert_eq!(
                        f16::vec_dot(level, &x, &y),
                        n as f32 * v.to_f32(),
                        "{level:?} {v} n={n}"
                    );
                    let b = bf16::from_f32(v.to_f32());
                    let xb = vec![b; n];
                    let yb = vec![bf16::ONE; n];
                    assert_eq!(
                        bf16::vec_dot(level, &xb, &yb),
                        n as f32 * b.to_f32(),
                        "{level:?} {b} n={n}"
                    );
                }
            }
        }
    }

    #[test]
    fn simd_util_fp16_to_f32_is_exact() {
        // Every non-NaN half, through the inline conversion the quant kernels use.
        #[cfg(target_arch = "x86_64")]
        if SimdLevel::Avx2.is_available() {
            for bits in 0..=u16::MAX {
                let h = f16::from_bits(bits);
                if !h.is_nan() {
                    // SAFETY: AVX2 + F16C checked above.
                    let got = unsafe { crate::x86_util::fp16_to_f32(h) };
                    assert_eq!(got.to_bits(), h.to_f32().to_bits(), "{bits:#06x}");
                }
            }
        }
        #[cfg(target_arch = "aarch64")]
        if SimdLevel::Neon.is_available() {
            for bits in 0..=u16::MAX {
                let h = f16::from_bits(bits);
                if !h.is_nan() {
                    // SAFETY: NEON checked above.
                    let got = unsafe { crate::neon_util::fp16_to_f32(h) };
                    assert_eq!(got.to_bits(), h.to_f32().to_bits(), "{bits:#06x}");
                }
            }
        }
    }
}
