//! Q8_1: 32 int8 activations with f16 scale d and f16 s = d·Σq (`block_q8_1`, ggml-common.h); the activation format of Q4_1 and Q5_1.
//!
//! x = d · q. The precomputed `s` lets the Q4_1 / Q5_1 dot products fold the weight minimum
//! in with one multiply per block: Σ (d_x·q_x + m)·d_y·q_y = d_x·d_y·Σ q_x·q_y + m·s.

use half::f16;

use crate::{Block, GgmlType, QuantizeRef};

/// Elements per Q8_1 block (`QK8_1`).
pub const QK8_1: usize = 32;

/// `block_q8_1` (ggml-common.h): 36 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BlockQ8_1 {
    /// Scale.
    pub d: f16,
    /// d · sum(qs).
    pub s: f16,
    /// Quants.
    pub qs: [i8; 32],
}
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 36);

impl Block for BlockQ8_1 {
    const TYPE: GgmlType = GgmlType::Q8_1;
    const QK: usize = QK8_1;

    /// x = q · d, as `dequantize_row_q8_0` (ggml-quants.c) does for Q8_0; ggml has no
    /// `dequantize_row_q8_1` (Q8_1 is only ever an activation), `s` is not needed here.
    fn dequantize_row(src: &[Self], dst: &mut [f32]) {
        for (b, y) in src.iter().zip(dst.chunks_exact_mut(QK8_1)) {
            let d = b.d.to_f32();
            for (y, &q) in y.iter_mut().zip(b.qs.iter()) {
                *y = q as f32 * d;
            }
        }
    }
}

impl QuantizeRef for BlockQ8_1 {
    /// `quantize_row_q8_1_ref`, ggml-quants.c: d = amax / 127, q = roundf(x / d), and
    /// s = (float)Σq · d rounded to f16 (the f32 `d`, not its f16 rounding).
    fn quantize_row_ref(src: &[f32], dst: &mut [Self]) {
        for (x, b) in src.chunks_exact(QK8_1).zip(dst.iter_mut()) {
            // MAX(amax, fabsf(v)) keeps amax when the comparison is false, as f32::max does
            // for every non-NaN input.
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            b.d = f16::from_f32(d);
            let mut sum = 0i32;
            // The C walks the two halves in lockstep; the sum is an exact integer either way.
            for j in 0..QK8_1 / 2 {
                let v0 = x[j] * id;
                let v1 = x[QK8_1 / 2 + j] * id;
                // roundf then the implicit float → int8_t conversion: |v| ≤ 127 for finite
                // input, so `as i8` (saturating) agrees wherever the C is defined.
                b.qs[j] = v0.round() as i8;
                b.qs[QK8_1 / 2 + j] = v1.round() as i8;
                sum += b.qs[j] as i32;
                sum += b.qs[QK8_1 / 2 + j] as i32;
            }
            b.s = f16::from_f32(sum as f32 * d);
        }
    }

    /// ggml-cpu's x86 `quantize_row_q8_1` (arch/x86/quants.c): id = 127 / amax, round half
    /// to even, s = d · Σq.
    fn quantize_row_act(src: &[f32], dst: &mut [Self]) {
        for (x, b) in src.chunks_exact(QK8_1).zip(dst.iter_mut()) {
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            b.d = f16::from_f32(d);
            let mut sum = 0i32;
            for (q, &v) in b.qs.iter_mut().zip(x) {
                *q = crate::round_half_even_small(v * id) as i8;
                sum += *q as i32;
            }
            b.s = f16::from_f32(d * sum as f32);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytemuck::Zeroable;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn quantize_roundtrip(v in proptest::collection::vec(-100f32..100.0, 32..=32 * 9)) {
            let n = v.len() / QK8_1 * QK8_1;
            let x = &v[..n];
            let mut q = vec![BlockQ8_1::zeroed(); n / QK8_1];
            BlockQ8_1::quantize_row_ref(x, &mut q);
            let mut y = vec![0f32; n];
            BlockQ8_1::dequantize_row(&q, &mut y);
            for (xb, (yb, b)) in x.chunks(QK8_1).zip(y.chunks(QK8_1).zip(&q)) {
                let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
                // Half a step of d = amax/127, plus the f16 rounding of d (rel. 2^-11) at |q| ≤ 127.
                let tol = amax / 127.0 * 0.5 + amax * 1e-3 + 1e-6;
                for (a, b) in xb.iter().zip(yb) {
                    prop_assert!((a - b).abs() <= tol, "{a} vs {b}, tol {tol}");
                }
                let sum: i32 = b.qs.iter().map(|&q| q as i32).sum();
                prop_assert_eq!(b.s, f16::from_f32(sum as f32 * (amax / 127.0)));
            }
        }
    }

    #[test]
    fn quantize_matches_hand_computed() {
        // amax = 127 → d = 1, id = 1: q = round(x) half away from zero; s = Σq.
        let mut x = [0f32; 32];
        x[0] = 127.0;
        x[1] = -2.5;
        x[2] = 2.5;
        x[17] = -0.5;
        x[18] = 1.49;
        let mut b = [BlockQ8_1::zeroed()];
        BlockQ8_1::quantize_row_ref(&x, &mut b);
        assert_eq!(b[0].d, f16::ONE);
        assert_eq!(&b[0].qs[..3], &[127, -3, 3]);
        assert_eq!(b[0].qs[17], -1);
        assert_eq!(b[0].qs[18], 1);
        assert_eq!(b[0].s, f16::from_f32(127.0));
        // All zeros: d = 0, id = 0, everything 0.
        BlockQ8_1::quantize_row_ref(&[0.0; 32], &mut b);
        assert_eq!(b[0], BlockQ8_1::zeroed());
    }
}
