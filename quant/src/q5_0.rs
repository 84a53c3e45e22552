//! Q5_0: 32 5-bit weights with one f16 scale: x = d·(q − 16) (`block_q5_0`, ggml-common.h).

#[allow(unused_imports)]
use half::f16;

#[allow(unused_imports)]
use crate::{Block, GgmlType, QuantizeRef, SimdLevel, VecDot, QK_K};

/// `blockQ5_0` (Q5_0, ggml-common.h): 22 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ5_0 {
    /// Scale.
    pub d: f16,
    /// Fifth bits, little-endian u32: bit j for element j.
    pub qh: [u8; 4],
    /// Low nibbles, laid out as in Q4_0.
    pub qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);

impl Block for BlockQ5_0 {
    const TYPE: GgmlType = GgmlType::Q5_0;
    const QK: usize = 32;

    fn dequantize_row(_src: &[Self], _dst: &mut [f32]) {
        todo!("Q5_0 dequantize_row")
    }
}

impl QuantizeRef for BlockQ5_0 {
    fn quantize_row_ref(_src: &[f32], _dst: &mut [Self]) {
        todo!("Q5_0 quantize_row_ref")
    }
}

impl VecDot for BlockQ5_0 {
    type Act = crate::q8_0::BlockQ8_0;

    fn vec_dot(_level: SimdLevel, _x: &[Self], _y: &[Self::Act]) -> f32 {
        todo!("Q5_0 vec_dot")
    }
}
