//! Q4_K: 256 4-bit weights in 8 sub-blocks of 32 with 6-bit scales and mins (`block_q4_K`, ggml-common.h).

#[allow(unused_imports)]
use half::f16;

#[allow(unused_imports)]
use crate::{Block, GgmlType, QuantizeRef, SimdLevel, VecDot, QK_K};

/// `blockQ4_K` (Q4_K, ggml-common.h): 144 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ4_K {
    /// Super-block scale for the scales.
    pub d: f16,
    /// Super-block scale for the mins.
    pub dmin: f16,
    /// Scales and mins, 6 bits each (`get_scale_min_k4`).
    pub scales: [u8; 12],
    /// Nibbles.
    pub qs: [u8; 128],
}
const _: () = assert!(std::mem::size_of::<BlockQ4_K>() == 144);

impl Block for BlockQ4_K {
    const TYPE: GgmlType = GgmlType::Q4_K;
    const QK: usize = QK_K;

    fn dequantize_row(_src: &[Self], _dst: &mut [f32]) {
        todo!("Q4_K dequantize_row")
    }
}

impl QuantizeRef for BlockQ4_K {
    fn quantize_row_ref(_src: &[f32], _dst: &mut [Self]) {
        todo!("Q4_K quantize_row_ref")
    }
}

impl VecDot for BlockQ4_K {
    type Act = crate::k_quants::q8_k::BlockQ8_K;

    fn vec_dot(_level: SimdLevel, _x: &[Self], _y: &[Self::Act]) -> f32 {
        todo!("Q4_K vec_dot")
    }
}
