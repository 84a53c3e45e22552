//! Q4_0: 32 4-bit weights with one f16 scale: x = d·(q − 8) (`block_q4_0`, ggml-common.h).

#[allow(unused_imports)]
use half::f16;

#[allow(unused_imports)]
use crate::{Block, GgmlType, QuantizeRef, SimdLevel, VecDot, QK_K};

/// `blockQ4_0` (Q4_0, ggml-common.h): 18 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ4_0 {
    /// Scale.
    pub d: f16,
    /// Nibbles: element j in the low nibble of qs[j], element j+16 in the high nibble.
    pub qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);

impl Block for BlockQ4_0 {
    const TYPE: GgmlType = GgmlType::Q4_0;
    const QK: usize = 32;

    fn dequantize_row(_src: &[Self], _dst: &mut [f32]) {
        todo!("Q4_0 dequantize_row")
    }
}

impl QuantizeRef for BlockQ4_0 {
    fn quantize_row_ref(_src: &[f32], _dst: &mut [Self]) {
        todo!("Q4_0 quantize_row_ref")
    }
}

impl VecDot for BlockQ4_0 {
    type Act = crate::q8_0::BlockQ8_0;

    fn vec_dot(_level: SimdLevel, _x: &[Self], _y: &[Self::Act]) -> f32 {
        todo!("Q4_0 vec_dot")
    }
}
