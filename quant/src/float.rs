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
    fn vec_dot(_level: SimdLevel, x: &[Self], y: &[Self]) -> f32 {
        let mut s = 0f64;
        for (a, b) in x.iter().zip(y) {
            s += (*a * *b) as f64;
        }
        s as f32
    }
}

impl VecDot for f16 {
    type Act = f16;
    fn vec_dot(_level: SimdLevel, x: &[Self], y: &[Self]) -> f32 {
        let mut s = 0f64;
        for (a, b) in x.iter().zip(y) {
            s += (a.to_f32() * b.to_f32()) as f64;
        }
        s as f32
    }
}

impl VecDot for bf16 {
    type Act = bf16;
    fn vec_dot(_level: SimdLevel, x: &[Self], y: &[Self]) -> f32 {
        let mut s = 0f64;
        for (a, b) in x.iter().zip(y) {
            s += (f32::from_bits((a.to_bits() as u32) << 16) * f32::from_bits((b.to_bits() as u32) << 16)) as f64;
        }
        s as f32
    }
}
