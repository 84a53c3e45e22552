//! Q8_K: 256 int8 activations with an f32 scale and 16 partial sums (`block_q8_K`, ggml-common.h); the activation format of the K-quants and IQ4_XS.

#[allow(unused_imports)]
use half::f16;

#[allow(unused_imports)]
use crate::{Block, GgmlType, QuantizeRef, SimdLevel, VecDot, QK_K};

/// `blockQ8_K` (Q8_K, ggml-common.h): 292 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ8_K {
    /// Scale.
    pub d: f32,
    /// Quants.
    pub qs: [i8; 256],
    /// Sum of each group of 16 quants.
    pub bsums: [i16; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_K>() == 292);

impl Block for BlockQ8_K {
    const TYPE: GgmlType = GgmlType::Q8_K;
    const QK: usize = QK_K;

    fn dequantize_row(_src: &[Self], _dst: &mut [f32]) {
        todo!("Q8_K dequantize_row")
    }
}

impl QuantizeRef for BlockQ8_K {
    fn quantize_row_ref(_src: &[f32], _dst: &mut [Self]) {
        todo!("Q8_K quantize_row_ref")
    }
}
