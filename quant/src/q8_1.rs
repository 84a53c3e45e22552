//! Q8_1: 32 int8 activations with f16 scale d and f16 s = d·Σq (`block_q8_1`, ggml-common.h); the activation format of Q4_1 and Q5_1.

#[allow(unused_imports)]
use half::f16;

#[allow(unused_imports)]
use crate::{Block, GgmlType, QuantizeRef, SimdLevel, VecDot, QK_K};

/// `blockQ8_1` (Q8_1, ggml-common.h): 36 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ8_1 {
    /// Scale.
    pub d: f16,
    /// d · sum(qs).
    pub s: f16,
    /// Quants.
    pub qs: [i8; 32],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 36);

impl Block for BlockQ8_1 {
    const TYPE: GgmlType = GgmlType::Q8_1;
    const QK: usize = 32;

    fn dequantize_row(_src: &[Self], _dst: &mut [f32]) {
        todo!("Q8_1 dequantize_row")
    }
}

impl QuantizeRef for BlockQ8_1 {
    fn quantize_row_ref(_src: &[f32], _dst: &mut [Self]) {
        todo!("Q8_1 quantize_row_ref")
    }
}
