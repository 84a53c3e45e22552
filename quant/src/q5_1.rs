//! Q5_1: 32 5-bit weights with f16 scale and minimum: x = d·q + m (`block_q5_1`, ggml-common.h).
//!
//! The low four bits of each quant are nibbles laid out as in Q4_0, the fifth bits are packed
//! in `qh`. Multiplied against Q8_1 activations (`ggml_vec_dot_q5_1_q8_1`): per block
//! Σ (d_x·q_x + m)·d_y·q_y = d_x·d_y·Σ q_x·q_y + m·s, with s = d_y·Σ q_y stored in the Q8_1 block.

use half::f16;

use crate::q8_1::BlockQ8_1;
use crate::{Block, GgmlType, SimdLevel, VecDot};

/// Elements per Q5_1 block (`QK5_1`).
pub const QK5_1: usize = 32;

/// `block_q5_1` (ggml-common.h): 24 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ5_1 {
    /// Scale.
    pub d: f16,
    /// Minimum.
    pub m: f16,
    /// Fifth bits, little-endian u32.
    pub qh: [u8; 4],
    /// Low nibbles.
    pub qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);

impl Block for BlockQ5_1 {
    const TYPE: GgmlType = GgmlType::Q5_1;
    const QK: usize = QK5_1;

    /// `dequantize_row_q5_1`, ggml-quants.c: y = q·d + m (a rounded multiply, then a rounded
    /// add; no fused multiply-add).
    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK5_1)) {
            let d = b.d.to_f32();
            let m = b.m.to_f32();
            // `memcpy(&qh, x[i].qh, 4)` on a little-endian host.
            let qh = u32::from_le_bytes(b.qh);
            for j in 0..QK5_1 / 2 {
                let xh_0 = (((qh >> j) << 4) & 0x10) as u8;
                let xh_1 = ((qh >> (j + 12)) & 0x10) as u8;
                let x0 = (b.qs[j] & 0x0F) | xh_0;
                let x1 = (b.qs[j] >> 4) | xh_1;
                y[j] = x0 as f32 * d + m;
                y[j + QK5_1 / 2] = x1 as f32 * d + m;
            }
        }
    }
}

impl VecDot for BlockQ5_1 {
    type Act = BlockQ8_1;

    fn vec_dot(level: SimdLevel, x: &[Self], y: &[Self::Act]) -> f32 {
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

/// Scalar reference of `ggml_vec_dot_q5_1_q8_1_generic` (ggml-cpu/quants.c): per block an
/// exact integer dot of the unsigned 5-bit quants with the Q8_1 quants, then
/// `sumf += (d_x·d_y)·sumi + m·s` in f32.
pub fn vec_dot_scalar(x: &[BlockQ5_1], y: &[BlockQ8_1]) -> f32 {
    let mut sumf = 0f32;
    for (bx, by) in x.iter().zip(y) {
        let qh = u32::from_le_bytes(bx.qh);
        let mut sumi0 = 0i32;
        let mut sumi1 = 0i32;
        for j in 0..QK5_1 / 2 {
            let xh_0 = (((qh >> j) << 4) & 0x10) as u8;
            let xh_1 = ((qh >> (j + 12)) & 0x10) as u8;
            let v0 = ((bx.qs[j] & 0x0F) | xh_0) as i32;
            let v1 = ((bx.qs[j] >> 4) | xh_1) as i32;
            sumi0 += v0 * by.qs[j] as i32;
            sumi1 += v1 * by.qs[j + QK5_1 / 2] as i32;
        }
        let sumi = sumi0 + sumi1;
        sumf += (bx.d.to_f32() * by.d.to_f32()) * sumi as f32 + bx.m.to_f32() * by.s.to_f32();
    }
    sumf
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::BlockQ5_1;
    use crate::q8_1::BlockQ8_1;
    use crate::x86_util::*;
    use std::arch::x86_64::*;

    /// One block per step (`ggml_vec_dot_q5_1_q8_1`, ggml-cpu/arch/x86/quants.c, AVX2 path):
    /// the fifth bit OR-ed in as 0x10, the unsigned quants straight into `maddubs`, the m·s
    /// terms summed on the side.
    ///
    /// # Safety
    /// Requires AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn vec_dot_avx2(x: &[BlockQ5_1], y: &[BlockQ8_1]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut summs = 0f32;
        let bit5 = _mm256_set1_epi8(0x10);
        for (bx, by) in x.iter().zip(y) {
            summs += fp16_to_f32(bx.m) * fp16_to_f32(by.s);
            let d0d1 = _mm256_set1_ps(fp16_to_f32(bx.d) * fp16_to_f32(by.d));
            let bxhi = _mm256_and_si256(bytes_from_bits_32(u32::from_le_bytes(bx.qh)), bit5);
            let qx = _mm256_or_si256(bytes_from_nibbles_32(&bx.qs), bxhi);
            let qy = load_i8_32(&by.qs);
            let xy = mul_sum_us8_pairs_float(qx, qy);
            acc = _mm256_fmadd_ps(d0d1, xy, acc);
        }
        hsum_float_8(acc) + summs
    }

    /// Two blocks per 512-bit step with VNNI (`vpdpbusd` takes the unsigned quants as they
    /// are); the fifth bits of both blocks form one 64-bit byte mask. An odd last block goes
    /// through the AVX2 kernel.
    ///
    /// # Safety
    /// Requires AVX-512 F/BW/VL/DQ + VNNI.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    pub unsafe fn vec_dot_avx512(x: &[BlockQ5_1], y: &[BlockQ8_1]) -> f32 {
        let mut acc = _mm512_setzero_ps();
        let mut summs = 0f32;
        let bit5 = _mm512_set1_epi8(0x10);
        for (xs, ys) in x.chunks_exact(2).zip(y.chunks_exact(2)) {
            summs += fp16_to_f32(xs[0].m) * fp16_to_f32(ys[0].s);
            summs += fp16_to_f32(xs[1].m) * fp16_to_f32(ys[1].s);
            let nib = join_256(bytes_from_nibbles_32(&xs[0].qs), bytes_from_nibbles_32(&xs[1].qs));
            // Byte j of the register is element j % 32 of block j / 32: bit j of this mask.
            let k = u32::from_le_bytes(xs[0].qh) as u64 | ((u32::from_le_bytes(xs[1].qh) as u64) << 32);
            let qx = _mm512_mask_blend_epi8(k, nib, _mm512_or_si512(nib, bit5));
            let qy = join_256(load_i8_32(&ys[0].qs), load_i8_32(&ys[1].qs));
            let q = _mm512_cvtepi32_ps(mul_sum_us8_pairs_i32_512(qx, qy));
            let d = scales_2x8(
                fp16_to_f32(xs[0].d) * fp16_to_f32(ys[0].d),
                fp16_to_f32(xs[1].d) * fp16_to_f32(ys[1].d),
            );
            acc = _mm512_fmadd_ps(d, q, acc);
        }
        let mut sum = _mm512_reduce_add_ps(acc) + summs;
        let n = x.len().min(y.len());
        if n % 2 == 1 {
            sum += unsafe { vec_dot_avx2(&x[n - 1..n], &y[n - 1..n]) };
        }
        sum
    }
}

#[cfg(target_arch = "aarch64")]
pub(crate) mod neon {
    use super::BlockQ5_1;
    use crate::neon_util::*;
    use crate::q8_1::BlockQ8_1;
    use std::arch::aarch64::*;

    /// One block per step (`ggml_vec_dot_q5_1_q8_1`, ggml-cpu/arch/arm/quants.c), with
    /// widening multiplies instead of the dot-product extension (quants 0..=31 are valid
    /// signed bytes) and a bit test instead of ggml's 64-bit lookup table for the fifth bits.
    ///
    /// # Safety
    /// Requires NEON.
    #[target_feature(enable = "neon")]
    pub unsafe fn vec_dot_neon(x: &[BlockQ5_1], y: &[BlockQ8_1]) -> f32 {
        let mut acc = vdupq_n_f32(0.0);
        let mut summs = 0f32;
        let bit5 = vdupq_n_u8(0x10);
        for (bx, by) in x.iter().zip(y) {
            summs += fp16_to_f32(bx.m) * fp16_to_f32(by.s);
            let (lo_n, hi_n) = nibbles_32(&bx.qs);
            let (lo_b, hi_b) = bits_32(&bx.qh);
            let lo = vorrq_u8(lo_n, vandq_u8(lo_b, bit5));
            let hi = vorrq_u8(hi_n, vandq_u8(hi_b, bit5));
            // SAFETY: `by.qs` is 32 readable bytes.
            let y0 = unsafe { vld1q_s8(by.qs.as_ptr()) };
            let y1 = unsafe { vld1q_s8(by.qs.as_ptr().add(16)) };
            let p = vaddq_s32(
                dot_i8x16(vreinterpretq_s8_u8(lo), y0),
                dot_i8x16(vreinterpretq_s8_u8(hi), y1),
            );
            acc = fmla_i32(acc, p, fp16_to_f32(bx.d) * fp16_to_f32(by.d));
        }
        vaddvq_f32(acc) + summs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::dequant;
    use proptest::prelude::*;

    fn scale() -> impl Strategy<Value = f16> {
        (-1f32..1.0).prop_map(f16::from_f32)
    }

    fn block() -> impl Strategy<Value = BlockQ5_1> {
        (
            scale(),
            scale(),
            prop::array::uniform4(any::<u8>()),
            prop::array::uniform16(any::<u8>()),
        )
            .prop_map(|(d, m, qh, qs)| BlockQ5_1 { d, m, qh, qs })
    }

    /// A Q8_1 block with random quants whose `s` is consistent with them, as the quantizer
    /// writes it.
    fn act() -> impl Strategy<Value = BlockQ8_1> {
        (scale(), prop::array::uniform32(any::<i8>())).prop_map(|(d, qs)| {
            let sum: i32 = qs.iter().map(|&q| q as i32).sum();
            BlockQ8_1 {
                d,
                s: f16::from_f32(sum as f32 * d.to_f32()),
                qs,
            }
        })
    }

    fn rows() -> impl Strategy<Value = (Vec<BlockQ5_1>, Vec<BlockQ8_1>)> {
        (1usize..=9).prop_flat_map(|n| (prop::collection::vec(block(), n), prop::collection::vec(act(), n)))
    }

    /// Σ over blocks of Σ|d_x·q_x|·|d_y·q_y| + |m·s|: the scale of the float rounding error.
    fn abs_terms(x: &[BlockQ5_1], y: &[BlockQ8_1]) -> f64 {
        let mut t = 0f64;
        for (bx, by) in x.iter().zip(y) {
            let dx = bx.d.to_f32() as f64;
            let dy = by.d.to_f32() as f64;
            // Every 5-bit quant is ≤ 31: a bound that ignores qh is enough here.
            for j in 0..QK5_1 {
                t += (dx * 31.0 * dy * by.qs[j] as f64).abs();
            }
            t += (bx.m.to_f32() as f64 * by.s.to_f32() as f64).abs();
        }
        t
    }

    proptest! {
        #[test]
        fn simd_levels_match_scalar((x, y) in rows()) {
            let want = vec_dot_scalar(&x, &y);
            let tol = 1e-5 * abs_terms(&x, &y) + 1e-30;
            for level in SimdLevel::available() {
                let got = BlockQ5_1::vec_dot(level, &x, &y);
                prop_assert!(((got - want) as f64).abs() <= tol, "{level:?}: {got} vs {want}");
            }
        }

        #[test]
        fn scalar_matches_dequantized_dot((x, y) in rows()) {
            let dx = dequant(&x);
            let dy = dequant(&y);
            let want: f64 = dx.iter().zip(&dy).map(|(a, b)| *a as f64 * *b as f64).sum();
            let got = vec_dot_scalar(&x, &y) as f64;
            // The kernel uses s, d_y·Σq_y rounded to f16 (2^-11 relative, or up to 2^-25
            // absolute where it is subnormal); the dequantized dot uses the exact Σ; and
            // q·d + m rounds once per element.
            let s_err: f64 = x
                .iter()
                .zip(&y)
                .map(|(bx, by)| (bx.m.to_f32().abs() * (by.s.to_f32().abs() / 1024.0 + 3e-8)) as f64)
                .sum();
            let deq_err: f64 = dx.iter().zip(&dy).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
            let tol = 1e-5 * abs_terms(&x, &y) + s_err + deq_err * 1e-6 + 1e-30;
            prop_assert!((got - want).abs() <= tol, "{got} vs {want}, tol {tol}");
        }
    }

    #[test]
    fn dequantize_matches_hand_computed() {
        // Fifth bits on elements 0 and 31.
        let qh = (1u32 | 1 << 31).to_le_bytes();
        let b = BlockQ5_1 {
            d: f16::from_f32(0.5),
            m: f16::from_f32(-1.0),
            qh,
            qs: [0x3F; 16],
        };
        let y = dequant(&[b]);
        assert_eq!(y[0], 14.5); // 31·0.5 − 1
        assert!(y[1..16].iter().all(|&v| v == 6.5)); // 15·0.5 − 1
        assert!(y[16..31].iter().all(|&v| v == 0.5)); // 3·0.5 − 1
        assert_eq!(y[31], 8.5); // 19·0.5 − 1
    }

    #[test]
    fn extreme_activations_are_exact() {
        // −128 activations, every level: the integer sums must not wrap or saturate, so with
        // unit scales every level gives the scalar result exactly.
        let x = vec![
            BlockQ5_1 {
                d: f16::ONE,
                m: f16::ONE,
                qh: [0x0F, 0, 0xF0, 0x55],
                qs: [0xFF; 16]
            };
            3
        ];
        let y = vec![
            BlockQ8_1 {
                d: f16::ONE,
                s: f16::from_f32(-4096.0),
                qs: [-128; 32]
            };
            3
        ];
        let want = vec_dot_scalar(&x, &y);
        for level in SimdLevel::available() {
            assert_eq!(BlockQ5_1::vec_dot(level, &x, &y), want, "{level:?}");
        }
    }

    #[test]
    fn empty_rows() {
        for level in SimdLevel::available() {
            assert_eq!(BlockQ5_1::vec_dot(level, &[], &[]), 0.0);
        }
    }
}
