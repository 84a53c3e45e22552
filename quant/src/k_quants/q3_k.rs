//! Q3_K: 256 3-bit weights in 16 sub-blocks with 6-bit scales (`block_q3_K`, ggml-common.h).

#[allow(unused_imports)]
use half::f16;

#[allow(unused_imports)]
use crate::{Block, GgmlType, QuantizeRef, SimdLevel, VecDot, QK_K};

/// `blockQ3_K` (Q3_K, ggml-common.h): 110 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ3_K {
    /// High bits.
    pub hmask: [u8; 32],
    /// Low 2 bits.
    pub qs: [u8; 64],
    /// Scales, 6 bits each, packed.
    pub scales: [u8; 12],
    /// Super-block scale.
    pub d: f16,
}
const _: () = assert!(std::mem::size_of::<BlockQ3_K>() == 110);

impl Block for BlockQ3_K {
    const TYPE: GgmlType = GgmlType::Q3_K;
    const QK: usize = QK_K;

    fn dequantize_row(_src: &[Self], _dst: &mut [f32]) {
        todo!("Q3_K dequantize_row")
    }
}

impl VecDot for BlockQ3_K {
    type Act = crate::k_quants::q8_k::BlockQ8_K;

    fn vec_dot(_level: SimdLevel, _x: &[Self], _y: &[Self::Act]) -> f32 {
        todo!("Q3_K vec_dot")
    }
}
