//! IQ4_NL: 32 4-bit indices into the non-linear table `kvalues_iq4nl` with one f16 scale (`block_iq4_nl`, ggml-common.h).

#[allow(unused_imports)]
use half::f16;

#[allow(unused_imports)]
use crate::{Block, GgmlType, QuantizeRef, SimdLevel, VecDot, QK_K};

/// `blockIQ4_NL` (IQ4_NL, ggml-common.h): 18 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockIQ4_NL {
    /// Scale.
    pub d: f16,
    /// Nibble indices, laid out as in Q4_0.
    pub qs: [u8; 16],
}
const _: () = assert!(std::mem::size_of::<BlockIQ4_NL>() == 18);

impl Block for BlockIQ4_NL {
    const TYPE: GgmlType = GgmlType::IQ4_NL;
    const QK: usize = 32;

    fn dequantize_row(_src: &[Self], _dst: &mut [f32]) {
        todo!("IQ4_NL dequantize_row")
    }
}

impl VecDot for BlockIQ4_NL {
    type Act = crate::q8_0::BlockQ8_0;

    fn vec_dot(_level: SimdLevel, _x: &[Self], _y: &[Self::Act]) -> f32 {
        todo!("IQ4_NL vec_dot")
    }
}
