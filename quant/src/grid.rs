//! A quantized row's grid: the values each element can take while the block scales stay as
//! they are. Requantizing on this grid ([`set_row_quants`]) rewrites only the quants, so a row
//! whose target is unchanged comes back with the same values (the same bytes, except in a
//! block whose scale is zero, where every quant gives the same value), and a small change
//! moves only the elements it must.
//!
//! Element `i` takes `scale[i] · q + offset[i]` for an integer `q` in `lo..=hi`, with the
//! scales and offsets of the dequantizers (`dequantize_row_*`, ggml-quants.c): Q4_0
//! `d·(q − 8)`, Q5_0 `d·(q − 16)`, Q8_0 `d·q` (q in −127..=127, as ggml's quantizer writes
//! them; a −128 from another quantizer is read as it is but not written), Q4_K `d·sc_j·q − dmin·m_j`, Q6_K `d·sc_j·(q − 32)`.

use crate::k_quants::common::get_scale_min_k4;
use crate::k_quants::q4_k::BlockQ4_K;
use crate::k_quants::q6_k::BlockQ6_K;
use crate::q4_0::BlockQ4_0;
use crate::q5_0::BlockQ5_0;
use crate::q8_0::BlockQ8_0;
use crate::row::{cast_blocks, check_row};
use crate::{Block, GgmlType, QK_K, QuantError};

/// A block format whose grid [`row_grid`] reads and whose quants [`set_row_quants`] writes.
trait FixedGrid: Block {
    /// The range of the integer `q`.
    const RANGE: (i32, i32);
    /// `scale[i]` and `offset[i]` for the block's `QK` elements.
    fn grid(&self, scale: &mut [f32], offset: &mut [f32]);
    /// Store `q` (each in [`FixedGrid::RANGE`]) as the block's quants; the scales stay.
    fn set_quants(&mut self, q: &[i32]);
}

impl FixedGrid for BlockQ4_0 {
    const RANGE: (i32, i32) = (0, 15);
    fn grid(&self, scale: &mut [f32], offset: &mut [f32]) {
        let d = self.d.to_f32();
        scale.fill(d);
        offset.fill(-8.0 * d);
    }
    fn set_quants(&mut self, q: &[i32]) {
        for j in 0..16 {
            self.qs[j] = q[j] as u8 | (q[j + 16] as u8) << 4;
        }
    }
}

impl FixedGrid for BlockQ5_0 {
    const RANGE: (i32, i32) = (0, 31);
    fn grid(&self, scale: &mut [f32], offset: &mut [f32]) {
        let d = self.d.to_f32();
        scale.fill(d);
        offset.fill(-16.0 * d);
    }
    fn set_quants(&mut self, q: &[i32]) {
        let mut qh = 0u32;
        for j in 0..16 {
            self.qs[j] = (q[j] & 0xF) as u8 | ((q[j + 16] & 0xF) as u8) << 4;
            qh |= ((q[j] >> 4) as u32 & 1) << j | ((q[j + 16] >> 4) as u32 & 1) << (j + 16);
        }
        self.qh = qh.to_le_bytes();
    }
}

impl FixedGrid for BlockQ8_0 {
    const RANGE: (i32, i32) = (-127, 127);
    fn grid(&self, scale: &mut [f32], offset: &mut [f32]) {
        scale.fill(self.d.to_f32());
        offset.fill(0.0);
    }
    fn set_quants(&mut self, q: &[i32]) {
        for (d, &q) in self.qs.iter_mut().zip(q) {
            *d = q as i8;
        }
    }
}

impl FixedGrid for BlockQ4_K {
    const RANGE: (i32, i32) = (0, 15);
    fn grid(&self, scale: &mut [f32], offset: &mut [f32]) {
        let (d, min) = (self.d.to_f32(), self.dmin.to_f32());
        for j in 0..QK_K / 32 {
            let (sc, m) = get_scale_min_k4(j, &self.scales);
            scale[32 * j..][..32].fill(d * sc as f32);
            offset[32 * j..][..32].fill(-(min * m as f32));
        }
    }
    fn set_quants(&mut self, q: &[i32]) {
        for k in 0..QK_K / 64 {
            for l in 0..32 {
                self.qs[32 * k + l] = q[64 * k + l] as u8 | (q[64 * k + 32 + l] as u8) << 4;
            }
        }
    }
}

impl FixedGrid for BlockQ6_K {
    const RANGE: (i32, i32) = (0, 63);
    fn grid(&self, scale: &mut [f32], offset: &mut [f32]) {
        let d = self.d.to_f32();
        for j in 0..QK_K / 16 {
            let s = d * self.scales[j] as f32;
            scale[16 * j..][..16].fill(s);
            offset[16 * j..][..16].fill(-32.0 * s);
        }
    }
    fn set_quants(&mut self, q: &[i32]) {
        // The inverse of the unpacking in `dequantize_row_q6_K`.
        for n in 0..2 {
            let q = &q[128 * n..][..128];
            for l in 0..32 {
                let (a, b, c, e) = (q[l] as u8, q[l + 32] as u8, q[l + 64] as u8, q[l + 96] as u8);
                self.ql[64 * n + l] = (a & 0xF) | (c & 0xF) << 4;
                self.ql[64 * n + l + 32] = (b & 0xF) | (e & 0xF) << 4;
                self.qh[32 * n + l] = (a >> 4) | (b >> 4) << 2 | (c >> 4) << 4 | (e >> 4) << 6;
            }
        }
    }
}

macro_rules! with_grid_block {
    ($ty:expr, $B:ident => $body:expr, else $other:expr) => {
        $crate::dispatch_block!($ty, $B => $body, else $other;
            Q4_0 => BlockQ4_0, Q5_0 => BlockQ5_0, Q8_0 => BlockQ8_0,
            Q4_K => BlockQ4_K, Q6_K => BlockQ6_K)
    };
}

/// Whether [`row_grid`] and [`set_row_quants`] take `ty` (Q4_0, Q5_0, Q8_0, Q4_K, Q6_K).
pub fn has_fixed_grid(ty: GgmlType) -> bool {
    with_grid_block!(ty, _B => true, else false)
}

fn grid_typed<B: FixedGrid>(src: &[u8], scale: &mut [f32], offset: &mut [f32]) -> (i32, i32) {
    for ((b, s), o) in cast_blocks::<B>(src)
        .iter()
        .zip(scale.chunks_exact_mut(B::QK))
        .zip(offset.chunks_exact_mut(B::QK))
    {
        b.grid(s, o);
    }
    B::RANGE
}

fn set_typed<B: FixedGrid>(dst: &mut [u8], q: &[i32]) {
    let mut blocks = cast_blocks::<B>(dst).into_owned();
    for (b, q) in blocks.iter_mut().zip(q.chunks_exact(B::QK)) {
        b.set_quants(q);
    }
    dst.copy_from_slice(bytemuck::cast_slice(&blocks));
}

/// The grid of one row of type `ty` (`src`, its raw bytes): fills `scale` and `offset`
/// (`[n]` each, `n` the row's elements) and returns the range `(lo, hi)` of the integer quants,
/// so that element `i` can take `scale[i] · q + offset[i]` for `q` in `lo..=hi`.
///
/// Errors: [`QuantError::UnsupportedType`] for a type without one here ([`has_fixed_grid`]),
/// size errors as for [`crate::dequantize_row`].
pub fn row_grid(ty: GgmlType, src: &[u8], scale: &mut [f32], offset: &mut [f32]) -> Result<(i32, i32), QuantError> {
    check_row(ty, scale.len(), src.len(), "row_grid source")?;
    if offset.len() != scale.len() {
        return Err(QuantError::LengthMismatch {
            what: "row_grid offsets",
            expected: scale.len(),
            got: offset.len(),
            unit: "elements",
        });
    }
    Ok(with_grid_block!(ty, B => grid_typed::<B>(src, scale, offset),
        else return Err(QuantError::UnsupportedType { ty, op: "row_grid" })))
}

/// Overwrite the quants of one row of type `ty` (`dst`, its raw bytes) with `q` (`[n]`, each
/// in the range [`row_grid`] returns), keeping its scales: element `i` then dequantizes to
/// `scale[i] · q[i] + offset[i]`.
///
/// Errors: as for [`row_grid`].
pub fn set_row_quants(ty: GgmlType, dst: &mut [u8], q: &[i32]) -> Result<(), QuantError> {
    check_row(ty, q.len(), dst.len(), "set_row_quants destination")?;
    with_grid_block!(ty, B => set_typed::<B>(dst, q),
        else return Err(QuantError::UnsupportedType { ty, op: "set_row_quants" }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row of `ty` quantized from varied values, with its dequantization.
    fn sample(ty: GgmlType, n: usize) -> (Vec<u8>, Vec<f32>) {
        let x: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013 + (i as f32 * 0.7).sin())
            .collect();
        let mut bytes = vec![0u8; ty.row_bytes(n).unwrap()];
        crate::quantize_row(ty, &x, &mut bytes).unwrap();
        let mut y = vec![0f32; n];
        crate::dequantize_row(ty, &bytes, &mut y).unwrap();
        (bytes, y)
    }

    #[test]
    fn grid_and_quants_reproduce_the_dequantizer() {
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q5_0,
            GgmlType::Q8_0,
            GgmlType::Q4_K,
            GgmlType::Q6_K,
        ] {
            let n = 2 * QK_K;
            let (bytes, y) = sample(ty, n);
            let (mut scale, mut offset) = (vec![0f32; n], vec![0f32; n]);
            let (lo, hi) = row_grid(ty, &bytes, &mut scale, &mut offset).unwrap();
            // Each value is on its grid, at an integer q in range; writing those q back gives
            // the same bytes.
            let q: Vec<i32> = (0..n)
                .map(|i| {
                    let q = ((y[i] - offset[i]) / scale[i]).round();
                    assert!(
                        (scale[i] * q + offset[i] - y[i]).abs() <= 1e-5 * y[i].abs().max(1.0),
                        "{ty} {i}"
                    );
                    assert!((lo as f32..=hi as f32).contains(&q), "{ty} {i}: q {q}");
                    q as i32
                })
                .collect();
            let mut back = bytes.clone();
            set_row_quants(ty, &mut back, &q).unwrap();
            assert_eq!(back, bytes, "{ty}");
            // Every quant in range is stored and read back where the dequantizer finds it.
            let q2: Vec<i32> = (0..n).map(|i| lo + (i as i32 * 7) % (hi - lo + 1)).collect();
            set_row_quants(ty, &mut back, &q2).unwrap();
            let mut z = vec![0f32; n];
            crate::dequantize_row(ty, &back, &mut z).unwrap();
            for i in 0..n {
                let want = scale[i] * q2[i] as f32 + offset[i];
                assert!(
                    (z[i] - want).abs() <= 1e-5 * want.abs().max(1.0),
                    "{ty} {i}: {} vs {want}",
                    z[i]
                );
            }
        }
    }

    #[test]
    fn other_types_are_refused() {
        let mut s = vec![0f32; 32];
        let mut o = vec![0f32; 32];
        let bytes = vec![0u8; GgmlType::Q4_1.row_bytes(32).unwrap()];
        assert!(matches!(
            row_grid(GgmlType::Q4_1, &bytes, &mut s, &mut o),
            Err(QuantError::UnsupportedType { .. })
        ));
        assert!(!has_fixed_grid(GgmlType::Q5_K));
        assert!(has_fixed_grid(GgmlType::Q4_K));
    }
}
