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
