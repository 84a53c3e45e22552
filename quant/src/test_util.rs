//! Helpers the formats' unit tests share.

use crate::Block;

/// `b` dequantized to f32.
pub fn dequant<B: Block>(b: &[B]) -> Vec<f32> {
    let mut v = vec![0f32; b.len() * B::QK];
    B::dequantize_row(b, &mut v);
    v
}

/// Σ|x_i·y_i| over the dequantized rows: the scale of a dot product's float rounding error.
pub fn abs_terms<W: Block, A: Block>(x: &[W], y: &[A]) -> f64 {
    dequant(x)
        .iter()
        .zip(dequant(y))
        .map(|(a, b)| (*a as f64 * b as f64).abs())
        .sum()
}
