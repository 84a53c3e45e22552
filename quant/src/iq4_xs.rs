//! IQ4_XS: 256 4-bit non-linear indices in 8 sub-blocks of 32 with 6-bit scales (`block_iq4_xs`, ggml-common.h).

#[allow(unused_imports)]
use half::f16;

#[allow(unused_imports)]
use crate::{Block, GgmlType, QuantizeRef, SimdLevel, VecDot, QK_K};

/// `blockIQ4_XS` (IQ4_XS, ggml-common.h): 136 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockIQ4_XS {
    /// Super-block scale.
    pub d: f16,
    /// High 2 bits of the 8 sub-block scales.
    pub scales_h: u16,
    /// Low 4 bits of the 8 sub-block scales.
    pub scales_l: [u8; 4],
    /// Nibble indices.
    pub qs: [u8; 128],
}
const _: () = assert!(std::mem::size_of::<BlockIQ4_XS>() == 136);

impl Block for BlockIQ4_XS {
    const TYPE: GgmlType = GgmlType::IQ4_XS;
    const QK: usize = QK_K;

    fn dequantize_row(_src: &[Self], _dst: &mut [f32]) {
        todo!("IQ4_XS dequantize_row")
    }
}

impl VecDot for BlockIQ4_XS {
    type Act = crate::k_quants::q8_k::BlockQ8_K;

    fn vec_dot(_level: SimdLevel, _x: &[Self], _y: &[Self::Act]) -> f32 {
        todo!("IQ4_XS vec_dot")
    }
}
