//! Q2_K: 256 2-bit weights in 16 sub-blocks with 4-bit scales and mins (`block_q2_K`, ggml-common.h).

#[allow(unused_imports)]
use half::f16;

#[allow(unused_imports)]
use crate::{Block, GgmlType, QuantizeRef, SimdLevel, VecDot, QK_K};

/// `blockQ2_K` (Q2_K, ggml-common.h): 84 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ2_K {
    /// Scales (low nibble) and mins (high nibble).
    pub scales: [u8; 16],
    /// Quants.
    pub qs: [u8; 64],
    /// Super-block scale for the scales.
    pub d: f16,
    /// Super-block scale for the mins.
    pub dmin: f16,
}
const _: () = assert!(std::mem::size_of::<BlockQ2_K>() == 84);

impl Block for BlockQ2_K {
    const TYPE: GgmlType = GgmlType::Q2_K;
    const QK: usize = QK_K;

    fn dequantize_row(_src: &[Self], _dst: &mut [f32]) {
        todo!("Q2_K dequantize_row")
    }
}

impl VecDot for BlockQ2_K {
    type Act = crate::k_quants::q8_k::BlockQ8_K;

    fn vec_dot(_level: SimdLevel, _x: &[Self], _y: &[Self::Act]) -> f32 {
        todo!("Q2_K vec_dot")
    }
}
