//! Type-erased row operations: the dispatch table from a [`GgmlType`] to its block format.
//!
//! A new format is one line in each macro below.

use std::borrow::Cow;

use crate::{Block, GgmlType, QuantError, QuantizeRef, SimdLevel, VecDot};

/// The match behind [`with_block!`], [`with_weight_block!`] and [`with_quantize_block!`]: one
/// arm per listed `GgmlType` variant, binding `$B` to its block type.
#[doc(hidden)]
#[macro_export]
macro_rules! dispatch_block {
    ($ty:expr, $B:ident => $body:expr, else $other:expr; $($v:ident => $blk:ty),* $(,)?) => {{
        match $ty {
            $($crate::GgmlType::$v => {
                type $B = $blk;
                $body
            })*
            _ => $other,
        }
    }};
}

/// Run `$body` with `$B` bound to the block type of `$ty`, for every type this crate can
/// dequantize; `$other` otherwise.
#[macro_export]
macro_rules! with_block {
    ($ty:expr, $B:ident => $body:expr, else $other:expr) => {
        $crate::dispatch_block!($ty, $B => $body, else $other;
            F32 => f32, F16 => half::f16, BF16 => half::bf16,
            Q4_0 => $crate::q4_0::BlockQ4_0, Q4_1 => $crate::q4_1::BlockQ4_1,
            Q5_0 => $crate::q5_0::BlockQ5_0, Q5_1 => $crate::q5_1::BlockQ5_1,
            Q8_0 => $crate::q8_0::BlockQ8_0, Q8_1 => $crate::q8_1::BlockQ8_1,
            Q2_K => $crate::k_quants::q2_k::BlockQ2_K, Q3_K => $crate::k_quants::q3_k::BlockQ3_K,
            Q4_K => $crate::k_quants::q4_k::BlockQ4_K, Q5_K => $crate::k_quants::q5_k::BlockQ5_K,
            Q6_K => $crate::k_quants::q6_k::BlockQ6_K, Q8_K => $crate::k_quants::q8_k::BlockQ8_K,
            IQ4_NL => $crate::iq4_nl::BlockIQ4_NL, IQ4_XS => $crate::iq4_xs::BlockIQ4_XS)
    };
}

/// Like [`with_block!`], for the weight types (those with a fused `vec_dot`).
#[macro_export]
macro_rules! with_weight_block {
    ($ty:expr, $B:ident => $body:expr, else $other:expr) => {
        $crate::dispatch_block!($ty, $B => $body, else $other;
            F32 => f32, F16 => half::f16, BF16 => half::bf16,
            Q4_0 => $crate::q4_0::BlockQ4_0, Q4_1 => $crate::q4_1::BlockQ4_1,
            Q5_0 => $crate::q5_0::BlockQ5_0, Q5_1 => $crate::q5_1::BlockQ5_1,
            Q8_0 => $crate::q8_0::BlockQ8_0,
            Q2_K => $crate::k_quants::q2_k::BlockQ2_K, Q3_K => $crate::k_quants::q3_k::BlockQ3_K,
            Q4_K => $crate::k_quants::q4_k::BlockQ4_K, Q5_K => $crate::k_quants::q5_k::BlockQ5_K,
            Q6_K => $crate::k_quants::q6_k::BlockQ6_K,
            IQ4_NL => $crate::iq4_nl::BlockIQ4_NL, IQ4_XS => $crate::iq4_xs::BlockIQ4_XS)
    };
}

/// Like [`with_block!`], for the types with a reference quantizer.
#[macro_export]
macro_rules! with_quantize_block {
    ($ty:expr, $B:ident => $body:expr, else $other:expr) => {
        $crate::dispatch_block!($ty, $B => $body, else $other;
            F32 => f32, F16 => half::f16, BF16 => half::bf16,
            Q4_0 => $crate::q4_0::BlockQ4_0, Q5_0 => $crate::q5_0::BlockQ5_0,
            Q8_0 => $crate::q8_0::BlockQ8_0, Q8_1 => $crate::q8_1::BlockQ8_1,
            Q4_K => $crate::k_quants::q4_k::BlockQ4_K, Q5_K => $crate::k_quants::q5_k::BlockQ5_K,
            Q6_K => $crate::k_quants::q6_k::BlockQ6_K, Q8_K => $crate::k_quants::q8_k::BlockQ8_K)
    };
}

/// View `bytes` as blocks: borrowed when aligned, copied otherwise (never a misaligned read).
/// Contract: `bytes.len()` is a multiple of `size_of::<B>()`.
pub fn cast_blocks<B: Block>(bytes: &[u8]) -> Cow<'_, [B]> {
    match bytemuck::try_cast_slice(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(bytemuck::pod_collect_to_vec(bytes)),
    }
}

/// Check that `n` elements of `ty` take `got` bytes; returns the block count.
pub fn check_row(ty: GgmlType, n: usize, got: usize, what: &'static str) -> Result<usize, QuantError> {
    if !n.is_multiple_of(ty.block_size()) {
        return Err(QuantError::NotBlockMultiple {
            ty,
            n,
            block: ty.block_size(),
        });
    }
    let expected = (n / ty.block_size())
        .checked_mul(ty.type_size())
        .ok_or(QuantError::LengthMismatch {
            what,
            expected: usize::MAX,
            got,
            unit: "bytes",
        })?;
    if expected != got {
        return Err(QuantError::LengthMismatch {
            what,
            expected,
            got,
            unit: "bytes",
        });
    }
    Ok(n / ty.block_size())
}

fn dequantize_typed<B: Block>(src: &[u8], dst: &mut [f32]) {
    B::dequantize_row(&cast_blocks::<B>(src), dst)
}

fn quantize_typed<B: QuantizeRef>(src: &[f32], dst: &mut [u8]) {
    let mut blocks = vec![B::zeroed(); src.len() / B::QK];
    B::quantize_row_ref(src, &mut blocks);
    dst.copy_from_slice(bytemuck::cast_slice(&blocks));
}

fn vec_dot_typed<B: VecDot>(level: SimdLevel, w: &[u8], a: &[u8]) -> f32 {
    B::vec_dot(level, &cast_blocks::<B>(w), &cast_blocks::<B::Act>(a))
}

/// Dequantize one row of `dst.len()` elements of type `ty` from its raw bytes
/// (`dequantize_row_*`, ggml-quants.c).
///
/// Errors: [`QuantError::UnsupportedType`] for a type this crate does not implement,
/// [`QuantError::NotBlockMultiple`] / [`QuantError::LengthMismatch`] when the sizes disagree.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    check_row(ty, dst.len(), src.len(), "dequantize_row source")?;
    with_block!(ty, B => dequantize_typed::<B>(src, dst),
        else return Err(QuantError::UnsupportedType { ty, op: "dequantize" }));
    Ok(())
}

/// Quantize one row of `src.len()` floats into `dst` with ggml's reference quantizer for `ty`
/// (`quantize_row_*_ref`, ggml-quants.c).
///
/// Errors: [`QuantError::UnsupportedType`] for a type without a quantizer here, size errors
/// as for [`dequantize_row`].
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    check_row(ty, src.len(), dst.len(), "quantize_row destination")?;
    with_quantize_block!(ty, B => quantize_typed::<B>(src, dst),
        else return Err(QuantError::UnsupportedType { ty, op: "quantize" }));
    Ok(())
}

/// Whether `ty` has a reference quantizer here ([`quantize_row`] accepts it).
pub fn can_quantize(ty: GgmlType) -> bool {
    with_quantize_block!(ty, _B => true, else false)
}

/// Fused dot product of `n` elements: a weight row of type `ty` against an activation row
/// already in `ty.vec_dot_type()` (`ggml_vec_dot_*`, ggml-cpu), with the kernel for `level`.
pub fn vec_dot(ty: GgmlType, level: SimdLevel, n: usize, w: &[u8], act: &[u8]) -> Result<f32, QuantError> {
    let Some(act_ty) = ty.vec_dot_type() else {
        return Err(QuantError::UnsupportedType { ty, op: "vec_dot" });
    };
    check_row(ty, n, w.len(), "vec_dot weight row")?;
    check_row(act_ty, n, act.len(), "vec_dot activation row")?;
    Ok(with_weight_block!(ty, B => vec_dot_typed::<B>(level, w, act),
        else return Err(QuantError::UnsupportedType { ty, op: "vec_dot" })))
}
