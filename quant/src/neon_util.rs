//! Shared AArch64 NEON helpers.
#![cfg(target_arch = "aarch64")]

use std::arch::aarch64::*;

/// Products of 16 signed byte pairs summed into 4 i32 lanes (4 adjacent products each),
/// without the dot-product extension.
#[inline]
#[target_feature(enable = "neon")]
pub fn dot_i8x16(a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    let hi = vmull_high_s8(a, b);
    vpaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi))
}

/// The 32 nibbles of a 16-byte legacy-quant `qs`: (low nibbles = elements 0..16,
/// high nibbles = elements 16..32), each byte 0..=15.
#[inline]
#[target_feature(enable = "neon")]
pub fn nibbles_32(qs: &[u8; 16]) -> (uint8x16_t, uint8x16_t) {
    // SAFETY: `qs` is 16 readable bytes.
    let v = unsafe { vld1q_u8(qs.as_ptr()) };
    (vandq_u8(v, vdupq_n_u8(0x0F)), vshrq_n_u8::<4>(v))
}

/// The 32 bits of a little-endian `qh` as 32 bytes, 0xFF where the bit is set:
/// (elements 0..16, elements 16..32). The fifth bits of Q5_0 / Q5_1.
#[inline]
#[target_feature(enable = "neon")]
pub fn bits_32(qh: &[u8; 4]) -> (uint8x16_t, uint8x16_t) {
    // Byte j of each half repeats qh byte j / 8; testing it against 1 << (j % 8) isolates bit j.
    const SEL: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
    // SAFETY: SEL is 16 readable bytes.
    let sel = unsafe { vld1q_u8(SEL.as_ptr()) };
    let lo = vcombine_u8(vdup_n_u8(qh[0]), vdup_n_u8(qh[1]));
    let hi = vcombine_u8(vdup_n_u8(qh[2]), vdup_n_u8(qh[3]));
    (vtstq_u8(lo, sel), vtstq_u8(hi, sel))
}

/// `acc + d · (a as f32)`, lane by lane (one block's integer partial sums into the float
/// accumulator).
#[inline]
#[target_feature(enable = "neon")]
pub fn fmla_i32(acc: float32x4_t, a: int32x4_t, d: f32) -> float32x4_t {
    vmlaq_n_f32(acc, vcvtq_f32_s32(a), d)
}

/// f16 → f32 with one `fcvt` (exact; base ARMv8 floating point). `half::f16::to_f32`
/// re-detects the FP16 extension at run time on every call, which costs more than the
/// conversion in a per-block loop; the conversion itself needs no extension.
#[inline]
#[target_feature(enable = "neon")]
pub fn fp16_to_f32(h: half::f16) -> f32 {
    let out: f32;
    // SAFETY: a register-only conversion.
    unsafe {
        std::arch::asm!("fcvt {o:s}, {i:h}", o = lateout(vreg) out, i = in(vreg) h.to_bits(),
            options(pure, nomem, nostack, preserves_flags));
    }
    out
}
