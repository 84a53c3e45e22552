//! Prompt processing over repacked operands with AVX-512 VNNI, for the weight formats whose
//! activations are Q8_0 and whose blocks are one scale times small signed integers (Q4_0,
//! Q5_0, Q8_0, IQ4_NL).
//!
//! The per-pair kernels ([`crate::q5_0`]'s `vec_dot_avx512` and its kin) unpack two weight
//! blocks, load two activation blocks and convert their scales at every step. In a prompt
//! batch every weight pair meets every token and every token pair meets every weight row, so
//! here both sides are brought once into the form `vpdpbusd` takes:
//! - activations ([`ActPair`]): per token and pair of Q8_0 blocks, the 64 quants as unsigned
//!   bytes q_y + 128 and the two scales spread over 16 f32 lanes; made once per product;
//! - weights ([`WeightPair`]): per row and pair of blocks, the 64 values as signed bytes q_x,
//!   the two scales in 16 lanes, and per lane −128·Σ q_x of its four bytes; made once per four
//!   rows for all tokens.
//!
//! `vpdpbusd` started from −128·Σ q_x leaves in each lane exactly Σ q_x·q_y over its four
//! bytes, the integer the per-pair kernels have there; the float steps are theirs too (d_x·d_y
//! as an f32 product, one fused multiply-add per pair, `_mm512_reduce_add_ps`, then the odd last
//! block through the same kernel), so every value is bit-identical to `vec_dot` at
//! [`SimdLevel::Avx512`] (tested in [`crate::matmul`]).
#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;
use std::cell::RefCell;

use rayon::prelude::*;

use crate::q8_0::BlockQ8_0;
use crate::x86_util::*;
use crate::{Block, GgmlType, SimdLevel, VecDot};

/// Two Q8_0 activation blocks as the packed kernel reads them: `q` holds q_y + 128 for the 64
/// quants (block 0 in bytes 0..32), `d` the scale of block 0 in lanes 0..8 and of block 1 in
/// lanes 8..16. 128 bytes.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub struct ActPair {
    q: [u8; 64],
    d: [f32; 16],
}

/// Two weight blocks as the packed kernel reads them: `q` the 64 values' signed integers (the
/// weight is d·q), `d` the two scales as in [`ActPair`], `corr` per 32-bit lane −128 times the
/// sum of its four `q`. 192 bytes.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
pub struct WeightPair {
    q: [i8; 64],
    d: [f32; 16],
    corr: [i32; 16],
}

impl WeightPair {
    const ZERO: Self = Self {
        q: [0; 64],
        d: [0.0; 16],
        corr: [0; 16],
    };

    /// Fill from two blocks' signed integers `q` (block 0 in the low 32 bytes) and scales.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
    pub(crate) fn set(&mut self, q: __m512i, d0: f32, d1: f32) {
        let sum128 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(i8::MIN), q);
        // SAFETY: each field is 64 bytes inside `self`, 64-byte aligned by the repr.
        unsafe {
            _mm512_store_si512(self.q.as_mut_ptr() as *mut __m512i, q);
            _mm512_store_ps(self.d.as_mut_ptr(), scales_2x8(d0, d1));
            _mm512_store_si512(
                self.corr.as_mut_ptr() as *mut __m512i,
                _mm512_sub_epi32(_mm512_setzero_si512(), sum128),
            );
        }
    }
}

/// How a weight format packs two of its blocks into a [`WeightPair`]
/// ([`VecDot::PACK_I8_PAIR`]).
///
/// # Safety
/// The function needs AVX-512 F/BW/VL/DQ + VNNI.
pub type PackPair<B> = unsafe fn(&B, &B, &mut WeightPair);

/// Activation rows packed for the kernel, when `B` has a packed kernel, `level` is AVX-512 on
/// this CPU and a row holds at least one pair of blocks; `act` is `[n_tok, per_row]` Q8_0
/// blocks as [`crate::matmul::quantize_activations`] makes them.
pub(crate) fn pack_activations<B: VecDot>(level: SimdLevel, act: &[B::Act], per_row: usize) -> Option<Vec<ActPair>> {
    B::PACK_I8_PAIR?;
    let pairs = per_row / 2;
    if level != SimdLevel::Avx512 || !level.is_available() || <B::Act as Block>::TYPE != GgmlType::Q8_0 || pairs == 0 {
        return None;
    }
    let act: &[BlockQ8_0] = bytemuck::try_cast_slice(act).ok()?;
    let mut out = vec![
        ActPair {
            q: [0; 64],
            d: [0.0; 16]
        };
        pairs * (act.len() / per_row)
    ];
    out.par_chunks_mut(pairs)
        .zip(act.par_chunks_exact(per_row))
        // SAFETY: AVX-512 + VNNI checked above.
        .for_each(|(o, a)| unsafe { pack_activation_row(a, o) });
    Some(out)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
fn pack_activation_row(a: &[BlockQ8_0], out: &mut [ActPair]) {
    for (o, y) in out.iter_mut().zip(a.chunks_exact(2)) {
        let q = _mm512_xor_si512(
            join_256(load_i8_32(&y[0].qs), load_i8_32(&y[1].qs)),
            _mm512_set1_epi8(i8::MIN),
        );
        // SAFETY: each field is 64 bytes inside `o`, 64-byte aligned by the repr.
        unsafe {
            _mm512_store_si512(o.q.as_mut_ptr() as *mut __m512i, q);
            _mm512_store_ps(o.d.as_mut_ptr(), scales_2x8(fp16_to_f32(y[0].d), fp16_to_f32(y[1].d)));
        }
    }
}

thread_local! {
    /// Four packed weight rows, reused across the products a worker runs.
    static ROWS: RefCell<Vec<WeightPair>> = const { RefCell::new(Vec::new()) };
}

/// `outs[r][t]` = `vec_dot(xs[r], act row t)` at [`SimdLevel::Avx512`] for four weight rows
/// and all `n_tok` tokens: `xs[r]` are whole rows of `B` blocks, `packed` the
/// [`pack_activations`] of `act` (`[n_tok, per_row]`), each `outs[r]` `n_tok` long.
pub(crate) fn four_rows<B: VecDot>(
    pack: PackPair<B>,
    xs: [&[B]; 4],
    act: &[B::Act],
    packed: &[ActPair],
    outs: [&mut [f32]; 4],
) {
    let per_row = xs[0].len();
    let pairs = per_row / 2;
    let n_tok = packed.len() / pairs;
    ROWS.with_borrow_mut(|w| {
        w.clear();
        w.resize(4 * pairs, WeightPair::ZERO);
        for (i, quad) in w.chunks_exact_mut(4).enumerate() {
            for (x, p) in xs.iter().zip(quad) {
                // SAFETY: `pack_activations` only gives packed activations where AVX-512 +
                // VNNI is available.
                unsafe { pack(&x[2 * i], &x[2 * i + 1], p) };
            }
        }
        let mut outs = outs;
        let mut t0 = 0;
        while t0 < n_tok {
            // SAFETY: as above.
            t0 += unsafe {
                match n_tok - t0 {
                    1 => group::<B, 1>(w, &xs, act, packed, t0, &mut outs),
                    2 => group::<B, 2>(w, &xs, act, packed, t0, &mut outs),
                    3 => group::<B, 3>(w, &xs, act, packed, t0, &mut outs),
                    _ => group::<B, 4>(w, &xs, act, packed, t0, &mut outs),
                }
            };
        }
    });
}

/// Tokens `t0..t0 + NT` of [`four_rows`] (`w` the packed rows); returns `NT`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
fn group<B: VecDot, const NT: usize>(
    w: &[WeightPair],
    xs: &[&[B]; 4],
    act: &[B::Act],
    packed: &[ActPair],
    t0: usize,
    outs: &mut [&mut [f32]; 4],
) -> usize {
    let per_row = xs[0].len();
    let pairs = per_row / 2;
    let sums = tile::<NT>(w, std::array::from_fn(|j| &packed[(t0 + j) * pairs..][..pairs]));
    for (r, (out, s)) in outs.iter_mut().zip(sums).enumerate() {
        for (j, v) in s.into_iter().enumerate() {
            let t = t0 + j;
            // The odd last block as the per-pair kernels add it: their AVX2 kernel.
            out[t] = if per_row % 2 == 1 {
                let a = &act[t * per_row..][..per_row];
                v + B::vec_dot(SimdLevel::Avx2, &xs[r][per_row - 1..], &a[per_row - 1..])
            } else {
                v
            };
        }
    }
    NT
}

/// The sums over all pairs of four packed weight rows (`w`: pair i of row r at 4·i + r) with
/// `NT` packed activation rows, each reduced with `_mm512_reduce_add_ps`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
fn tile<const NT: usize>(w: &[WeightPair], acts: [&[ActPair]; NT]) -> [[f32; NT]; 4] {
    let mut acc = [[_mm512_setzero_ps(); NT]; 4];
    let load_i = |p: &[i8; 64]| unsafe { _mm512_load_si512(p.as_ptr() as *const __m512i) };
    for (i, wp) in w.chunks_exact(4).enumerate() {
        // SAFETY (all loads): 64-byte fields, 64-byte aligned by the reprs.
        let qw: [__m512i; 4] = std::array::from_fn(|r| load_i(&wp[r].q));
        let dw: [__m512; 4] = std::array::from_fn(|r| unsafe { _mm512_load_ps(wp[r].d.as_ptr()) });
        for t in 0..NT {
            let a = &acts[t][i];
            let qa = unsafe { _mm512_load_si512(a.q.as_ptr() as *const __m512i) };
            let da = unsafe { _mm512_load_ps(a.d.as_ptr()) };
            for r in 0..4 {
                let corr = unsafe { _mm512_load_si512(wp[r].corr.as_ptr() as *const __m512i) };
                let s = _mm512_dpbusd_epi32(corr, qa, qw[r]);
                acc[r][t] = _mm512_fmadd_ps(_mm512_mul_ps(dw[r], da), _mm512_cvtepi32_ps(s), acc[r][t]);
            }
        }
    }
    acc.map(|row| row.map(|a| _mm512_reduce_add_ps(a)))
}

/// For the formats' property tests: [`four_rows`] against `vec_dot` at
/// [`SimdLevel::Avx512`] for four weight rows and the activation rows `ys` (all as long as
/// the rows), bit for bit; `Err` names the first difference. Nothing to check (`Ok`) where
/// this CPU lacks AVX-512 + VNNI.
#[cfg(test)]
pub(crate) fn check_four_rows<B: VecDot>(xs: [&[B]; 4], ys: &[&[B::Act]]) -> Result<(), String> {
    let per_row = xs[0].len();
    let act: Vec<B::Act> = ys.iter().flat_map(|y| y.iter().copied()).collect();
    let Some(packed) = pack_activations::<B>(SimdLevel::Avx512, &act, per_row) else {
        return Ok(());
    };
    let mut out = vec![vec![0f32; ys.len()]; 4];
    let [o0, o1, o2, o3] = &mut out[..] else { unreachable!() };
    four_rows(B::PACK_I8_PAIR.unwrap(), xs, &act, &packed, [o0, o1, o2, o3]);
    for (r, x) in xs.iter().enumerate() {
        for (t, y) in ys.iter().enumerate() {
            let want = B::vec_dot(SimdLevel::Avx512, x, y);
            if out[r][t].to_bits() != want.to_bits() {
                return Err(format!("row {r} token {t}: packed {} vec_dot {want}", out[r][t]));
            }
        }
    }
    Ok(())
}
