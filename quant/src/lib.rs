//! GGUF block formats: every ggml type llama.cpp writes today, exactly as ggml computes it.
//!
//! Each format owns one file (`q4_0.rs`, `k_quants/q4_k.rs`, ...): its `#[repr(C)]` block
//! struct with a compile-time size check, a scalar `dequantize_row`, a reference quantizer where
//! one exists, and the fused `vec_dot` against the activation format ggml pairs it with (see
//! [`GgmlType::vec_dot_type`]), as a scalar reference plus AVX2, AVX-512 and NEON versions that
//! must agree with it. A new format is a new file plus one line in the dispatch table
//! ([`row`]). This crate knows nothing of models.

#![allow(non_camel_case_types)]

pub mod error;
pub mod float;
pub mod grid;
pub mod iq4_nl;
pub mod iq4_xs;
pub mod k_quants;
pub mod matmul;
#[cfg(target_arch = "aarch64")]
mod neon_util;
#[cfg(target_arch = "x86_64")]
pub mod packed;
pub mod q4_0;
pub mod q4_1;
pub mod q5_0;
pub mod q5_1;
pub mod q8_0;
pub mod q8_1;
pub mod row;
pub mod simd;
#[cfg(test)]
mod test_util;
pub mod types;
#[cfg(target_arch = "x86_64")]
mod x86_util;

pub use error::QuantError;
pub use matmul::{Activations, Epilogue, QMatrix, RowEpilogue, matmul, matmul_dequantized, matmul_epilogue, matvec};
pub use row::{can_quantize, dequantize_row, quantize_row, vec_dot};
pub use simd::SimdLevel;
pub use types::{GgmlType, QK_K};

/// One block of a ggml format: `QK` elements stored in `size_of::<Self>()` bytes.
///
/// Implemented by the `#[repr(C)]` block structs (and by `f32`, `half::f16`, `half::bf16`
/// for the plain float types, whose "block" is one element).
pub trait Block: bytemuck::Pod + Send + Sync + 'static {
    /// The ggml type this block belongs to.
    const TYPE: GgmlType;
    /// Elements per block (`QK4_0`, `QK_K`, ...).
    const QK: usize;

    /// Dequantize `src` into `dst` (`dequantize_row_*`, ggml-quants.c).
    ///
    /// Contract: `dst.len() == src.len() * Self::QK` (the dispatch layer [`row`] checks it).
    fn dequantize_row(src: &[Self], dst: &mut [f32]);
}

/// A format with a reference quantizer (`quantize_row_*_ref`, ggml-quants.c), reproduced bit
/// for bit.
pub trait QuantizeRef: Block {
    /// Quantize `src` into `dst`. Contract: `src.len() == dst.len() * Self::QK`.
    fn quantize_row_ref(src: &[f32], dst: &mut [Self]);

    /// Quantize activations before a fused dot product, as ggml-cpu's x86 `quantize_row_*`
    /// does (for Q8_0/Q8_1 it differs from the reference: `id = 127 / amax` and round half
    /// to even). Deterministic on every architecture. Defaults to [`QuantizeRef::quantize_row_ref`].
    fn quantize_row_act(src: &[f32], dst: &mut [Self]) {
        Self::quantize_row_ref(src, dst)
    }
}

/// A weight format with ggml's fused dot product against its activation format.
pub trait VecDot: Block {
    /// The activation block type (`vec_dot_type`, ggml-cpu.c).
    type Act: QuantizeRef;

    /// `sum_i dequant(x)_i * dequant(y)_i` as ggml's `ggml_vec_dot_*` computes it, with the
    /// kernel for `level` (the scalar reference when `level` is not available on this CPU).
    ///
    /// Contract: `x.len() * Self::QK == y.len() * Self::Act::QK`.
    fn vec_dot(level: SimdLevel, x: &[Self], y: &[Self::Act]) -> f32;

    /// `vec_dot(x, y) + vec_dot(x, r)`: the dot product of one weight row with an activation
    /// row and its remainder ([`matmul::Activations::Residual`]). Formats with a kernel that
    /// unpacks each weight block once for both override it (agreeing with this default to
    /// f32 rounding); the default makes the two calls.
    ///
    /// Contract: as [`VecDot::vec_dot`], for `y` and `r` alike; 8-bit activation quants
    /// within −127..=127, as the activation quantizers give them (the fused kernels take the
    /// weight's absolute value and the activation's sign, which −128 would break).
    fn vec_dot_residual(level: SimdLevel, x: &[Self], y: &[Self::Act], r: &[Self::Act]) -> f32 {
        residual_each(level, x, y, r)
    }

    /// The dot products of one weight row `x` with up to [`MULTI_TOKENS`] activation rows
    /// `ys[t]` into `out[t]`, each bit-identical to [`VecDot::vec_dot`] of that pair. Formats
    /// with a kernel that unpacks each weight block once for all rows override it (prompt
    /// processing); the default calls `vec_dot` per row.
    fn vec_dot_multi(level: SimdLevel, x: &[Self], ys: &[&[Self::Act]], out: &mut [f32]) {
        for (o, y) in out.iter_mut().zip(ys) {
            *o = Self::vec_dot(level, x, y);
        }
    }

    /// Four weight rows `xs[r]` against every activation row `ys[t]` into `outs[r][t]` (each
    /// at least `ys.len()` long), each value bit-identical to [`VecDot::vec_dot`] of its pair
    /// (prompt processing). Formats with a kernel that unpacks each weight row once for all
    /// tokens override it; the default is [`four_rows_each`].
    fn vec_dot_four_rows(level: SimdLevel, xs: [&[Self]; 4], ys: &[&[Self::Act]], outs: [&mut [f32]; 4]) {
        four_rows_each(level, xs, ys, outs)
    }

    /// How two blocks pack for [`packed`]'s AVX-512 prompt kernel, for formats whose
    /// activations are Q8_0 and whose weights are one scale times signed bytes (Q4_0, Q5_0,
    /// Q8_0, IQ4_NL); `None` for the others. The packed kernel is bit-identical to
    /// [`VecDot::vec_dot`] at [`SimdLevel::Avx512`], so a format sets this only where that
    /// kernel is the pairwise one `packed` mirrors: two blocks per step into one 16-lane
    /// accumulator, `_mm512_reduce_add_ps`, then an odd last block added through the format's
    /// `vec_dot` at [`SimdLevel::Avx2`].
    #[cfg(target_arch = "x86_64")]
    const PACK_I8_PAIR: Option<packed::PackPair<Self>> = None;

    /// How one block packs for [`packed`]'s AVX2 prompt kernel, and its bias: for formats
    /// whose activations are Q8_0 and whose weights are one scale times integers within
    /// −16..=15 (Q4_0, Q5_0), bit-identical to [`VecDot::vec_dot`] at [`SimdLevel::Avx2`];
    /// `None` for the others.
    #[cfg(target_arch = "x86_64")]
    const PACK_U8_BLOCK: Option<packed::PackBlock<Self>> = None;
}

/// [`VecDot::vec_dot_four_rows`] one row at a time, tokens in groups of [`MULTI_TOKENS`]
/// through [`VecDot::vec_dot_multi`].
pub fn four_rows_each<B: VecDot>(level: SimdLevel, xs: [&[B]; 4], ys: &[&[B::Act]], outs: [&mut [f32]; 4]) {
    for (x, out) in xs.into_iter().zip(outs) {
        for (y, vals) in ys.chunks(MULTI_TOKENS).zip(out.chunks_mut(MULTI_TOKENS)) {
            B::vec_dot_multi(level, x, y, &mut vals[..y.len()]);
        }
    }
}

/// [`VecDot::vec_dot_residual`] as two [`VecDot::vec_dot`] calls: `vec_dot(x, y) + vec_dot(x, r)`.
pub fn residual_each<B: VecDot>(level: SimdLevel, x: &[B], y: &[B::Act], r: &[B::Act]) -> f32 {
    B::vec_dot(level, x, y) + B::vec_dot(level, x, r)
}

/// A fused residual kernel ([`VecDot::vec_dot_residual`]'s shape) for one SIMD level.
#[cfg(target_arch = "x86_64")]
pub(crate) type ResidualKernel<B> = unsafe fn(&[B], &[<B as VecDot>::Act], &[<B as VecDot>::Act]) -> f32;

/// The [`VecDot::vec_dot_residual`] of formats with a fused AVX-512 kernel: `avx512` where
/// `level` is AVX-512 and available on this CPU, else [`residual_each`].
#[cfg(target_arch = "x86_64")]
pub(crate) fn residual_avx512_or_each<B: VecDot>(
    level: SimdLevel,
    x: &[B],
    y: &[B::Act],
    r: &[B::Act],
    avx512: ResidualKernel<B>,
) -> f32 {
    if level == SimdLevel::Avx512 && level.is_available() {
        // SAFETY: the kernel needs AVX-512 F/BW/VL/DQ + VNNI (with AVX2, FMA, F16C), which the
        // level stands for, checked here.
        unsafe { avx512(x, y, r) }
    } else {
        residual_each(level, x, y, r)
    }
}

/// A multi-token kernel ([`VecDot::vec_dot_multi`]'s shape) for one SIMD level.
#[cfg(target_arch = "x86_64")]
pub(crate) type MultiKernel<B> = unsafe fn(&[B], &[&[<B as VecDot>::Act]], &mut [f32]);

/// The [`VecDot::vec_dot_multi`] of formats with an AVX2 multi-token kernel: `avx2` where
/// `level` is AVX2 and available on this CPU and `ys` fits it, else one [`VecDot::vec_dot`]
/// per row. (At AVX-512 such formats take their rows in fours through
/// [`VecDot::vec_dot_four_rows`] instead.)
#[cfg(target_arch = "x86_64")]
pub(crate) fn multi_avx2_or_each<B: VecDot>(
    level: SimdLevel,
    x: &[B],
    ys: &[&[B::Act]],
    out: &mut [f32],
    avx2: MultiKernel<B>,
) {
    if level == SimdLevel::Avx2 && level.is_available() && ys.len() <= MULTI_TOKENS {
        // SAFETY: the kernel needs AVX2 + FMA + F16C, which the level stands for, checked
        // here, and takes up to MULTI_TOKENS rows.
        unsafe { avx2(x, ys, out) }
    } else {
        for (o, y) in out.iter_mut().zip(ys) {
            *o = B::vec_dot(level, x, y);
        }
    }
}

/// Most activation rows one [`VecDot::vec_dot_multi`] call takes.
pub const MULTI_TOKENS: usize = 4;

/// Round half to even for |x| < 2²² (what `rintf` / `_mm256_round_ps(_MM_ROUND_NEAREST)` give
/// under the default rounding mode), without a libm call: adding and subtracting 1.5·2²³ leaves
/// the integer part, rounded to nearest even by the f32 addition itself.
#[inline(always)]
pub(crate) fn round_half_even_small(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23
    if x.abs() < 4_194_304.0 {
        (x + MAGIC) - MAGIC
    } else {
        x.round_ties_even()
    }
}

#[cfg(test)]
mod round_tests {
    use super::round_half_even_small;

    #[test]
    fn magic_rounding_equals_round_ties_even() {
        // Every f32 in [-200, 200] on a fine grid, the exact halves, and large values.
        let mut x = -200.0f32;
        while x <= 200.0 {
            assert_eq!(round_half_even_small(x), x.round_ties_even(), "{x}");
            x += 0.0371;
        }
        for k in -300..300 {
            let h = k as f32 + 0.5;
            assert_eq!(round_half_even_small(h), h.round_ties_even(), "{h}");
        }
        for v in [5e6f32, -7e7, 1e30, 0.0, -0.0, 1e-40] {
            assert_eq!(round_half_even_small(v), v.round_ties_even(), "{v}");
        }
    }
}
