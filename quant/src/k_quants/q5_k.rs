//! Q5_K: 256 5-bit weights in 8 sub-blocks of 32 with 6-bit scales and mins (`block_q5_K`, ggml-common.h).

#[allow(unused_imports)]
use half::f16;

#[allow(unused_imports)]
use crate::{Block, GgmlType, QuantizeRef, SimdLevel, VecDot, QK_K};

/// `blockQ5_K` (Q5_K, ggml-common.h): 176 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ5_K {
    /// Super-block scale for the scales.
    pub d: f16,
    /// Super-block scale for the mins.
    pub dmin: f16,
    /// Scales and mins, 6 bits each.
    pub scales: [u8; 12],
    /// High bits.
    pub qh: [u8; 32],
    /// Low nibbles.
    pub qs: [u8; 128],
}
const _: () = assert!(std::mem::size_of::<BlockQ5_K>() == 176);

impl Block for BlockQ5_K {
    const TYPE: GgmlType = GgmlType::Q5_K;
    const QK: usize = QK_K;

    fn dequantize_row(_src: &[Self], _dst: &mut [f32]) {
        todo!("Q5_K dequantize_row")
    }
}

impl QuantizeRef for BlockQ5_K {
    fn quantize_row_ref(_src: &[f32], _dst: &mut [Self]) {
        todo!("Q5_K quantize_row_ref")
    }
}

impl VecDot for BlockQ5_K {
    type Act = crate::k_quants::q8_k::BlockQ8_K;

    fn vec_dot(_level: SimdLevel, _x: &[Self], _y: &[Self::Act]) -> f32 {
        todo!("Q5_K vec_dot")
    }
}
