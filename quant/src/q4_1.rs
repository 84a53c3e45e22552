//! Q4_1: 32 4-bit weights with f16 scale and minimum: x = d·q + m (`block_q4_1`, ggml-common.h).

#[allow(unused_imports)]
use half::f16;

#[allow(unused_imports)]
use crate::{Block, GgmlType, QuantizeRef, SimdLevel, VecDot, QK_K};

/// `blockQ4_1` (Q4_1, ggml-common.h): 20 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ4_1 {
    /// Scale.
    pub d: f16,
    /// Minimum.
    pub m: f16,
    /// Nibbles, laid out as in Q4_0.
    pub qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);

impl Block for BlockQ4_1 {
    const TYPE: GgmlType = GgmlType::Q4_1;
    const QK: usize = 32;

    fn dequantize_row(_src: &[Self], _dst: &mut [f32]) {
        todo!("Q4_1 dequantize_row")
    }
}

impl VecDot for BlockQ4_1 {
    type Act = crate::q8_1::BlockQ8_1;

    fn vec_dot(_level: SimdLevel, _x: &[Self], _y: &[Self::Act]) -> f32 {
        todo!("Q4_1 vec_dot")
    }
}
