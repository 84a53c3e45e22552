//! Errors of the quant crate.

use crate::GgmlType;

/// What went wrong in a dequantize, quantize or product call. Every variant names the type
/// and the sizes involved.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum QuantError {
    /// The type exists in ggml but this crate does not implement the operation for it.
    #[error(
        "unsupported ggml type {ty} for {op} (supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, IQ4_NL, IQ4_XS)"
    )]
    UnsupportedType { ty: GgmlType, op: &'static str },
    /// `n` elements are not a whole number of `ty` blocks.
    #[error("{n} elements are not a multiple of the {ty} block size {block}")]
    NotBlockMultiple { ty: GgmlType, n: usize, block: usize },
    /// A buffer has the wrong length.
    #[error("{what}: expected {expected} {unit}, got {got}")]
    LengthMismatch {
        what: &'static str,
        expected: usize,
        got: usize,
        unit: &'static str,
    },
}
