//! Q6_K: 256 6-bit weights in 16 sub-blocks of 16 with int8 scales (`block_q6_K`, ggml-common.h).

#[allow(unused_imports)]
use half::f16;

#[allow(unused_imports)]
use crate::{Block, GgmlType, QuantizeRef, SimdLevel, VecDot, QK_K};

/// `blockQ6_K` (Q6_K, ggml-common.h): 210 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ6_K {
    /// Low 4 bits.
    pub ql: [u8; 128],
    /// High 2 bits.
    pub qh: [u8; 64],
    /// Scales.
    pub scales: [i8; 16],
    /// Super-block scale.
    pub d: f16,
}
const _: () = assert!(std::mem::size_of::<BlockQ6_K>() == 210);

impl Block for BlockQ6_K {
    const TYPE: GgmlType = GgmlType::Q6_K;
    const QK: usize = QK_K;

    fn dequantize_row(_src: &[Self], _dst: &mut [f32]) {
        todo!("Q6_K dequantize_row")
    }
}

impl QuantizeRef for BlockQ6_K {
    fn quantize_row_ref(_src: &[f32], _dst: &mut [Self]) {
        todo!("Q6_K quantize_row_ref")
    }
}

impl VecDot for BlockQ6_K {
    type Act = crate::k_quants::q8_k::BlockQ8_K;

    fn vec_dot(_level: SimdLevel, _x: &[Self], _y: &[Self::Act]) -> f32 {
        todo!("Q6_K vec_dot")
    }
}
