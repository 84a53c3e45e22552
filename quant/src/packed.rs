//! Prompt processing over repacked operands, for the weight formats whose activations are Q8_0
//! and whose blocks are one scale times small signed integers: with AVX-512 VNNI for Q4_0,
//! Q5_0, Q8_0 and IQ4_NL, with AVX2 for Q4_0 and Q5_0.
//!
//! ## AVX-512
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
//! [`SimdLevel::Avx512`] (tested in [`crate::matmul`] and per format).
//!
//! ## AVX2
//! The same idea with `vpmaddubsw`, whose pairs of products saturate at 16 bits, so only for
//! formats with small weights (Q4_0, Q5_0): per block the weights as unsigned bytes
//! q_x + bias (0..=15, 0..=31) and their scale in 8 lanes ([`WeightBlock`]); the activations
//! as they are with their scale in 8 lanes and per lane bias·Σ q_y of its four bytes
//! ([`ActBlock`]). `vpmaddubsw` + `vpmaddwd` give Σ (q_x + bias)·q_y per four bytes (at most
//! 2·31·128 per pair: no saturation); less bias·Σ q_y that is the integer of `vec_dot_avx2`'s
//! `mul_sum_i8_pairs_float`, and its float steps follow (one fused multiply-add of d_x·d_y per
//! block, `hsum_float_8`), so every value is bit-identical to `vec_dot` at
//! [`SimdLevel::Avx2`].
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

/// Activation rows packed for one of the kernels. Only [`pack_activations`] makes one: where
/// its level is available on this CPU and the weight format has a packing for it.
pub(crate) enum PackedActs {
    /// Per token, `per_row / 2` pairs.
    Avx512(Vec<ActPair>),
    /// Per token, `per_row` blocks.
    Avx2(Vec<ActBlock>),
}

/// Activation rows packed for a kernel, when `B` has a packed kernel at `level` (and `level`
/// is available on this CPU) and a row is long enough for it; `act` is `[n_tok, per_row]`
/// Q8_0 blocks as [`crate::matmul::quantize_activations`] makes them.
pub(crate) fn pack_activations<B: VecDot>(level: SimdLevel, act: &[B::Act], per_row: usize) -> Option<PackedActs> {
    // A weight block spans one activation block, so `per_row` counts both.
    if !level.is_available()
        || <B::Act as Block>::TYPE != GgmlType::Q8_0
        || B::QK != <B::Act as Block>::QK
        || per_row == 0
    {
        return None;
    }
    let act: &[BlockQ8_0] = bytemuck::try_cast_slice(act).ok()?;
    match level {
        SimdLevel::Avx512 if per_row >= 2 => {
            B::PACK_I8_PAIR?;
            let pairs = per_row / 2;
            let zero = ActPair {
                q: [0; 64],
                d: [0.0; 16],
            };
            let mut out = vec![zero; pairs * (act.len() / per_row)];
            out.par_chunks_mut(pairs)
                .zip(act.par_chunks_exact(per_row))
                // SAFETY: AVX-512 + VNNI checked above.
                .for_each(|(o, a)| unsafe { pack_activation_row_avx512(a, o) });
            Some(PackedActs::Avx512(out))
        }
        SimdLevel::Avx2 => {
            let (_, bias) = B::PACK_U8_BLOCK?;
            let zero = ActBlock {
                q: [0; 32],
                d: [0.0; 8],
                corr: [0; 8],
            };
            let mut out = vec![zero; act.len()];
            out.par_chunks_mut(per_row)
                .zip(act.par_chunks_exact(per_row))
                // SAFETY: AVX2 checked above.
                .for_each(|(o, a)| unsafe { pack_activation_row_avx2(a, bias, o) });
            Some(PackedActs::Avx2(out))
        }
        _ => None,
    }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
fn pack_activation_row_avx512(a: &[BlockQ8_0], out: &mut [ActPair]) {
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

/// `outs[r][t]` = `vec_dot(xs[r], act row t)` at the level `packed` was made for, for four
/// weight rows and all `n_tok` tokens: `xs[r]` are whole rows of `B` blocks, `packed` the
/// [`pack_activations`] of `act` (`[n_tok, per_row]`), each `outs[r]` `n_tok` long.
pub(crate) fn four_rows<B: VecDot>(xs: [&[B]; 4], act: &[B::Act], packed: &PackedActs, outs: [&mut [f32]; 4]) {
    match packed {
        // SAFETY: AVX-512 + VNNI checked (as `pack_activations` did).
        PackedActs::Avx512(p) if SimdLevel::Avx512.is_available() => unsafe { four_rows_avx512(xs, act, p, outs) },
        // SAFETY: AVX2 checked.
        PackedActs::Avx2(p) if SimdLevel::Avx2.is_available() => unsafe { four_rows_avx2(xs, p, outs) },
        _ => unreachable!("packed activations exist only where their level is available"),
    }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
fn four_rows_avx512<B: VecDot>(xs: [&[B]; 4], act: &[B::Act], packed: &[ActPair], outs: [&mut [f32]; 4]) {
    let per_row = xs[0].len();
    let pairs = per_row / 2;
    let n_tok = packed.len() / pairs;
    ROWS.with_borrow_mut(|w| {
        w.resize(4 * pairs, WeightPair::ZERO);
        pack_rows(&xs, w);
        let mut outs = outs;
        let mut t0 = 0;
        while t0 < n_tok {
            t0 += match n_tok - t0 {
                1 => group::<B, 1>(w, &xs, act, packed, t0, &mut outs),
                2 => group::<B, 2>(w, &xs, act, packed, t0, &mut outs),
                3 => group::<B, 3>(w, &xs, act, packed, t0, &mut outs),
                _ => group::<B, 4>(w, &xs, act, packed, t0, &mut outs),
            };
        }
    });
}

/// Four weight rows into `w` (pair i of row r at 4·i + r).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
fn pack_rows<B: VecDot>(xs: &[&[B]; 4], w: &mut [WeightPair]) {
    // The constant, not a pointer carried along: the compiler inlines the format's packing.
    let pack = B::PACK_I8_PAIR.expect("AVX-512 packed activations only for formats with a packing");
    for (i, quad) in w.chunks_exact_mut(4).enumerate() {
        for (x, p) in xs.iter().zip(quad) {
            // SAFETY: AVX-512 + VNNI, as this function.
            unsafe { pack(&x[2 * i], &x[2 * i + 1], p) };
        }
    }
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
    let sums = tile_avx512::<NT>(w, std::array::from_fn(|j| &packed[(t0 + j) * pairs..][..pairs]));
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
fn tile_avx512<const NT: usize>(w: &[WeightPair], acts: [&[ActPair]; NT]) -> [[f32; NT]; 4] {
    let mut acc = [[_mm512_setzero_ps(); NT]; 4];
    for (i, wp) in w.chunks_exact(4).enumerate() {
        // SAFETY (all loads): 64-byte fields, 64-byte aligned by the reprs.
        let qw: [__m512i; 4] =
            std::array::from_fn(|r| unsafe { _mm512_load_si512(wp[r].q.as_ptr() as *const __m512i) });
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

/// One Q8_0 activation block as the AVX2 kernel reads it: `q` the quants, `d` the scale in 8
/// lanes, `corr` per 32-bit lane bias·Σ q_y of its four quants (the weight format's bias).
/// 96 bytes.
#[repr(C, align(32))]
#[derive(Clone, Copy)]
pub struct ActBlock {
    q: [i8; 32],
    d: [f32; 8],
    corr: [i32; 8],
}

/// One weight block as the AVX2 kernel reads it: `q` the values' integers plus the format's
/// bias as unsigned bytes, `d` the scale in 8 lanes. 64 bytes.
#[repr(C, align(32))]
#[derive(Clone, Copy)]
pub struct WeightBlock {
    q: [u8; 32],
    d: [f32; 8],
}

impl WeightBlock {
    const ZERO: Self = Self {
        q: [0; 32],
        d: [0.0; 8],
    };

    /// Fill from a block's unsigned integers q_x + bias and its scale.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) fn set(&mut self, q: __m256i, d: f32) {
        // SAFETY: each field is 32 bytes inside `self`, 32-byte aligned by the repr.
        unsafe {
            _mm256_store_si256(self.q.as_mut_ptr() as *mut __m256i, q);
            _mm256_store_ps(self.d.as_mut_ptr(), _mm256_set1_ps(d));
        }
    }
}

/// How a weight format packs one block into a [`WeightBlock`], and its bias
/// ([`VecDot::PACK_U8_BLOCK`]); the bias keeps q_x + bias within 0..=31.
///
/// # Safety
/// The function needs AVX2 + FMA + F16C.
pub type PackBlock<B> = (unsafe fn(&B, &mut WeightBlock), i32);

#[target_feature(enable = "avx2,fma,f16c")]
fn pack_activation_row_avx2(a: &[BlockQ8_0], bias: i32, out: &mut [ActBlock]) {
    for (o, y) in out.iter_mut().zip(a) {
        let q = load_i8_32(&y.qs);
        // Σ q_y per four bytes, times the bias.
        let sums = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), q), _mm256_set1_epi16(1));
        // SAFETY: each field is 32 bytes inside `o`, 32-byte aligned by the repr.
        unsafe {
            _mm256_store_si256(o.q.as_mut_ptr() as *mut __m256i, q);
            _mm256_store_ps(o.d.as_mut_ptr(), _mm256_set1_ps(fp16_to_f32(y.d)));
            _mm256_store_si256(
                o.corr.as_mut_ptr() as *mut __m256i,
                _mm256_mullo_epi32(sums, _mm256_set1_epi32(bias)),
            );
        }
    }
}

thread_local! {
    /// Four packed weight rows for the AVX2 kernel.
    static BLOCKS: RefCell<Vec<WeightBlock>> = const { RefCell::new(Vec::new()) };
}

#[target_feature(enable = "avx2,fma,f16c")]
fn four_rows_avx2<B: VecDot>(xs: [&[B]; 4], packed: &[ActBlock], outs: [&mut [f32]; 4]) {
    let (pack, _) = B::PACK_U8_BLOCK.expect("AVX2 packed activations only for formats with a packing");
    let per_row = xs[0].len();
    let n_tok = packed.len() / per_row;
    BLOCKS.with_borrow_mut(|w| {
        w.resize(4 * per_row, WeightBlock::ZERO);
        for (r, x) in xs.iter().enumerate() {
            for (b, p) in x.iter().zip(&mut w[r * per_row..][..per_row]) {
                // SAFETY: AVX2, as this function.
                unsafe { pack(b, p) };
            }
        }
        let mut outs = outs;
        for half in 0..2 {
            let rows = [
                &w[2 * half * per_row..][..per_row],
                &w[(2 * half + 1) * per_row..][..per_row],
            ];
            let mut t0 = 0;
            while t0 < n_tok {
                let tok = |j: usize| &packed[(t0 + j).min(n_tok - 1) * per_row..][..per_row];
                let nt = (n_tok - t0).min(4);
                let sums = tile_avx2(rows, [tok(0), tok(1), tok(2), tok(3)]);
                for (out, s) in outs[2 * half..2 * half + 2].iter_mut().zip(sums) {
                    out[t0..t0 + nt].copy_from_slice(&s[..nt]);
                }
                t0 += nt;
            }
        }
    });
}

/// Two packed weight rows against four packed activation rows (a short last group repeats
/// its last token), each sum reduced with `hsum_float_8` as `vec_dot_avx2` does.
#[target_feature(enable = "avx2,fma,f16c")]
fn tile_avx2(w: [&[WeightBlock]; 2], acts: [&[ActBlock]; 4]) -> [[f32; 4]; 2] {
    let mut acc = [[_mm256_setzero_ps(); 4]; 2];
    let ones = _mm256_set1_epi16(1);
    for i in 0..w[0].len() {
        // SAFETY (all loads): 32-byte fields, 32-byte aligned by the reprs.
        let qw: [__m256i; 2] =
            std::array::from_fn(|r| unsafe { _mm256_load_si256(w[r][i].q.as_ptr() as *const __m256i) });
        let dw: [__m256; 2] = std::array::from_fn(|r| unsafe { _mm256_load_ps(w[r][i].d.as_ptr()) });
        for t in 0..4 {
            let a = &acts[t][i];
            let qa = unsafe { _mm256_load_si256(a.q.as_ptr() as *const __m256i) };
            let da = unsafe { _mm256_load_ps(a.d.as_ptr()) };
            let corr = unsafe { _mm256_load_si256(a.corr.as_ptr() as *const __m256i) };
            for r in 0..2 {
                let s = _mm256_sub_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(qw[r], qa), ones), corr);
                acc[r][t] = _mm256_fmadd_ps(_mm256_mul_ps(dw[r], da), _mm256_cvtepi32_ps(s), acc[r][t]);
            }
        }
    }
    acc.map(|row| row.map(|a| hsum_float_8(a)))
}

/// [`check_four_rows`] for a property test's draws: weight rows `x` and `more[..3]`,
/// activation rows `y` and `extra`, all cut to `x.len()` blocks, the first `nt` activation rows.
#[cfg(test)]
pub(crate) fn check_drawn_rows<B: VecDot>(
    x: &[B],
    more: &[Vec<B>],
    y: &[B::Act],
    extra: &[Vec<B::Act>],
    nt: usize,
) -> Result<(), String> {
    let n = x.len();
    let xs: [&[B]; 4] = [x, &more[0][..n], &more[1][..n], &more[2][..n]];
    let ys: Vec<&[B::Act]> = std::iter::once(y)
        .chain(extra.iter().map(|r| &r[..n]))
        .take(nt)
        .collect();
    check_four_rows(xs, &ys)
}

/// For the formats' property tests: [`four_rows`] against `vec_dot` at each level with a
/// packed kernel for `B`, for four weight rows and the activation rows `ys` (all as long as
/// the rows), bit for bit; `Err` names the first difference, or a level available on this CPU
/// whose kernel did not take the rows.
#[cfg(test)]
pub(crate) fn check_four_rows<B: VecDot>(xs: [&[B]; 4], ys: &[&[B::Act]]) -> Result<(), String> {
    let per_row = xs[0].len();
    let act: Vec<B::Act> = ys.iter().flat_map(|y| y.iter().copied()).collect();
    let levels = [
        (SimdLevel::Avx512, B::PACK_I8_PAIR.is_some() && per_row >= 2),
        (SimdLevel::Avx2, B::PACK_U8_BLOCK.is_some()),
    ];
    for (level, has_kernel) in levels {
        let Some(packed) = pack_activations::<B>(level, &act, per_row) else {
            if has_kernel && level.is_available() {
                return Err(format!("{level:?}: activations not packed"));
            }
            continue;
        };
        let mut out = vec![vec![0f32; ys.len()]; 4];
        let [o0, o1, o2, o3] = &mut out[..] else { unreachable!() };
        four_rows(xs, &act, &packed, [o0, o1, o2, o3]);
        for (r, x) in xs.iter().enumerate() {
            for (t, y) in ys.iter().enumerate() {
                let want = B::vec_dot(level, x, y);
                if out[r][t].to_bits() != want.to_bits() {
                    return Err(format!(
                        "{level:?} row {r} token {t}: packed {} vec_dot {want}",
                        out[r][t]
                    ));
                }
            }
        }
    }
    Ok(())
}
