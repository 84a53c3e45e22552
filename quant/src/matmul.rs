//! Matrix×vector and matrix×matrix products of a quantized weight with f32 activations,
//! parallel over output rows with rayon.
//!
//! As ggml's `mul_mat`: the activations are first quantized to the weight type's
//! `vec_dot_type` (Q8_0, Q8_1, Q8_K, or the float type itself), then every output element is
//! one fused `vec_dot` of a weight row with an activation row. [`Activations::Residual`] adds
//! a second activation row that quantizes what the first one missed.

use rayon::prelude::*;

use crate::row::{cast_blocks, check_row};
use crate::{Block, GgmlType, QuantError, QuantizeRef, SimdLevel, VecDot, with_weight_block};

/// A quantized weight matrix over borrowed bytes (e.g. a memory-mapped GGUF tensor).
///
/// Shape `[n_out, n_in]` row-major: each of the `n_out` rows holds `n_in` elements of `ty`.
/// In ggml's dims order this is `ne = [n_in, n_out]`.
#[derive(Clone, Copy, Debug)]
pub struct QMatrix<'a> {
    pub ty: GgmlType,
    pub data: &'a [u8],
    pub n_out: usize,
    pub n_in: usize,
}

impl<'a> QMatrix<'a> {
    /// Wrap `data` as a `[n_out, n_in]` matrix of `ty`.
    ///
    /// Errors: [`QuantError::UnsupportedType`] when `ty` has no `vec_dot` here,
    /// [`QuantError::NotBlockMultiple`] when `n_in` is not a whole number of blocks,
    /// [`QuantError::LengthMismatch`] when `data` is not exactly `n_out` rows.
    pub fn new(ty: GgmlType, data: &'a [u8], n_out: usize, n_in: usize) -> Result<Self, QuantError> {
        if ty.vec_dot_type().is_none() {
            return Err(QuantError::UnsupportedType { ty, op: "matmul" });
        }
        let row = ty.row_bytes(n_in).ok_or(QuantError::NotBlockMultiple {
            ty,
            n: n_in,
            block: ty.block_size(),
        })?;
        let expected = row.saturating_mul(n_out);
        if expected != data.len() {
            return Err(QuantError::LengthMismatch {
                what: "QMatrix data",
                expected,
                got: data.len(),
                unit: "bytes",
            });
        }
        Ok(QMatrix { ty, data, n_out, n_in })
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.data.len() / self.n_out.max(1)
    }
}

/// Output rows handed to one rayon task.
const ROWS_PER_TASK: usize = 16;

/// `y = W·x`: `x` has `n_in` elements, `y` has `n_out`.
///
/// Errors: [`QuantError::LengthMismatch`] when `x` or `y` has the wrong length.
pub fn matvec(w: &QMatrix<'_>, x: &[f32], y: &mut [f32]) -> Result<(), QuantError> {
    matmul(w, x, 1, y)
}

/// `Y = X·Wᵀ` for `n_tok` activation rows: `x` is `[n_tok, n_in]`, `y` is `[n_tok, n_out]`,
/// both row-major. A token whose inputs are not all finite gets NaN outputs (the 8-bit
/// activations would otherwise turn a NaN or infinity into ordinary numbers).
///
/// Errors: [`QuantError::LengthMismatch`] when `x` or `y` has the wrong length.
pub fn matmul(w: &QMatrix<'_>, x: &[f32], n_tok: usize, y: &mut [f32]) -> Result<(), QuantError> {
    matmul_at(SimdLevel::detect(), w, x, n_tok, y)
}

/// [`matmul`] with an explicit kernel level (for tests and benchmarks).
pub fn matmul_at(level: SimdLevel, w: &QMatrix<'_>, x: &[f32], n_tok: usize, y: &mut [f32]) -> Result<(), QuantError> {
    matmul_epilogue_at(level, w, x, n_tok, y, None, Activations::VecDotType)
}

/// How a matmul quantizes its f32 activations for the integer dot products.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Activations {
    /// One row of the weight format's `vec_dot_type` per token (Q8_0, Q8_1 or Q8_K: 8-bit
    /// integers and a scale per block), as ggml-cpu does. The rounding error is up to half a
    /// step of each block's scale (amax / 127, over 32 or 256 values).
    #[default]
    VecDotType,
    /// That row plus a second one of the same type quantizing the remainder
    /// `r = x − dequant(q(x))`, each dotted with the weight row and the two products added:
    /// `y = W·dequant(q(x)) + W·dequant(q(r))`. The remainder is at most half a step, so its
    /// own rounding error is about 1/254 of the first one's (8 more bits for the activations);
    /// twice the dot products. For formats whose `vec_dot_type` is f32 the remainder is zero
    /// and not computed.
    Residual,
}

impl Activations {
    /// What a one-token product (decoding) should take on this CPU: [`Activations::Residual`]
    /// where [`SimdLevel::detect`] is AVX-512 (VNNI), whose fused kernels unpack each weight
    /// block once for both rows (about 11–22% slower decode than one row on the real models);
    /// else [`Activations::VecDotType`], since there the remainder costs two full dot
    /// products (decode at AVX2 falls to about 0.6× llama.cpp's speed).
    pub fn decode_default() -> Activations {
        match SimdLevel::detect() {
            SimdLevel::Avx512 => Activations::Residual,
            _ => Activations::VecDotType,
        }
    }
}

/// Work fused into a matmul's parallel pass: lets callers add a cheap per-row term (a LoRA
/// delta) without a second pass over the output.
pub trait RowEpilogue: Sync {
    /// Called at the start of every parallel task that will call [`RowEpilogue::apply`]: a
    /// place to do a share of the work `apply` needs (e.g. one row of a LoRA `A·x`). In a
    /// single-token product the tasks are those of the dot products, so this overlaps the
    /// other tasks' dot products; in a batch it runs per token row, after them.
    fn begin_task(&self) {}
    /// Modify in place `vals`, the values `W·x` of output rows `first..first + vals.len()` for
    /// token `tok`.
    fn apply(&self, tok: usize, first: usize, vals: &mut [f32]);
}

/// An optional [`RowEpilogue`] as the matmul entries take it.
pub type Epilogue<'e> = &'e dyn RowEpilogue;

/// [`matmul`] with an optional [`Epilogue`] and a choice of [`Activations`].
pub fn matmul_epilogue(
    w: &QMatrix<'_>,
    x: &[f32],
    n_tok: usize,
    y: &mut [f32],
    epilogue: Option<Epilogue<'_>>,
    acts: Activations,
) -> Result<(), QuantError> {
    matmul_epilogue_at(SimdLevel::detect(), w, x, n_tok, y, epilogue, acts)
}

/// [`matmul_epilogue`] with an explicit kernel level (for tests and benchmarks).
pub fn matmul_epilogue_at(
    level: SimdLevel,
    w: &QMatrix<'_>,
    x: &[f32],
    n_tok: usize,
    y: &mut [f32],
    epilogue: Option<Epilogue<'_>>,
    acts: Activations,
) -> Result<(), QuantError> {
    check_matmul_shapes(w, x, n_tok, y)?;
    let ty = w.ty;
    with_weight_block!(ty, B => matmul_typed::<B>(level, w, x, n_tok, y, epilogue, acts),
        else return Err(QuantError::UnsupportedType { ty, op: "matmul" }));
    Ok(())
}

/// The lengths every matmul entry checks: `x` is `[n_tok, n_in]`, `y` is `[n_tok, n_out]`, and a
/// weight row is a whole number of blocks and the weights are `n_out` rows (the fields of a
/// [`QMatrix`] are public, so a hand-built one is checked here too). Returns the bytes of one
/// weight row.
fn check_matmul_shapes(w: &QMatrix<'_>, x: &[f32], n_tok: usize, y: &[f32]) -> Result<usize, QuantError> {
    let rb = check_row(w.ty, w.n_in, w.row_bytes(), "matmul weight row")? * w.ty.type_size();
    let checks = [
        ("matmul input", x.len(), n_tok.saturating_mul(w.n_in), "floats"),
        ("matmul output", y.len(), n_tok.saturating_mul(w.n_out), "floats"),
        ("matmul weights", w.data.len(), rb.saturating_mul(w.n_out), "bytes"),
    ];
    for (what, got, expected, unit) in checks {
        if got != expected {
            return Err(QuantError::LengthMismatch {
                what,
                expected,
                got,
                unit,
            });
        }
    }
    Ok(rb)
}

/// Quantize `n_tok` rows of `n_in` activations into `A` blocks, row after row, with ggml-cpu's
/// activation quantizer ([`QuantizeRef::quantize_row_act`]).
pub fn quantize_activations<A: QuantizeRef>(x: &[f32], n_in: usize) -> Vec<A> {
    quantize_rows(x, n_in, false).0
}

/// [`quantize_activations`], and the rows whose inputs are not all finite (found in the same
/// parallel pass over each row). With `residual`, also the [`Activations::Residual`] rows: each
/// row's remainder `x − dequant(q(x))`, quantized in the same way (else empty).
fn quantize_rows<A: QuantizeRef>(x: &[f32], n_in: usize, residual: bool) -> (Vec<A>, Vec<A>, Vec<usize>) {
    let per_row = n_in / A::QK;
    let n_tok = x.len() / n_in.max(1);
    let mut act = vec![A::zeroed(); per_row * n_tok];
    let mut res = vec![A::zeroed(); if residual { per_row * n_tok } else { 0 }];
    if per_row == 0 {
        return (act, res, Vec::new());
    }
    // One row: quantize it (and its remainder, into `r`), and say whether it is all finite.
    let row = |rem: &mut Vec<f32>, a: &mut [A], r: Option<&mut [A]>, xr: &[f32]| {
        A::quantize_row_act(xr, a);
        if let Some(r) = r {
            rem.resize(n_in, 0.0);
            A::dequantize_row(a, rem);
            for (rem, &x) in rem.iter_mut().zip(xr) {
                *rem = x - *rem;
            }
            A::quantize_row_act(rem, r);
        }
        all_finite(xr)
    };
    let rows = act.par_chunks_mut(per_row);
    let finite: Vec<bool> = if residual {
        rows.zip(res.par_chunks_mut(per_row))
            .zip(x.par_chunks(n_in))
            .map_init(Vec::new, |rem, ((a, r), xr)| row(rem, a, Some(r), xr))
            .collect()
    } else {
        rows.zip(x.par_chunks(n_in))
            .map_init(Vec::new, |rem, (a, xr)| row(rem, a, None, xr))
            .collect()
    };
    let not_finite = (0..n_tok).filter(|&t| !finite[t]).collect();
    (act, res, not_finite)
}

fn matmul_typed<B: VecDot>(
    level: SimdLevel,
    w: &QMatrix<'_>,
    x: &[f32],
    n_tok: usize,
    y: &mut [f32],
    epilogue: Option<Epilogue<'_>>,
    acts: Activations,
) {
    let (n_in, n_out) = (w.n_in, w.n_out);
    if n_out == 0 || n_tok == 0 {
        return;
    }
    let wb = cast_blocks::<B>(w.data);
    let w_per_row = n_in / B::QK;
    let a_per_row = n_in / <B::Act as Block>::QK;
    // The 8-bit activations would turn a NaN or infinity into ordinary numbers: a token whose
    // inputs are not all finite gets NaN outputs instead, so that it shows (ggml's kernels give
    // it garbage).
    let residual = acts == Activations::Residual && <B::Act as Block>::TYPE != GgmlType::F32;
    let (act, res, not_finite) = quantize_rows::<B::Act>(x, n_in, residual);
    let poison = |y: &mut [f32]| {
        for &t in &not_finite {
            y[t * n_out..][..n_out].fill(f32::NAN);
        }
    };
    let w_row = |o: usize| &wb[o * w_per_row..][..w_per_row];
    if n_tok == 1 {
        let dot = |o: usize| -> f32 {
            match residual {
                true => B::vec_dot_residual(level, w_row(o), &act, &res),
                false => B::vec_dot(level, w_row(o), &act),
            }
        };
        y.par_chunks_mut(ROWS_PER_TASK).enumerate().for_each(|(c, ys)| {
            if let Some(f) = epilogue {
                f.begin_task();
            }
            for (i, yo) in ys.iter_mut().enumerate() {
                *yo = dot(c * ROWS_PER_TASK + i);
            }
            if let Some(f) = epilogue {
                f.apply(0, c * ROWS_PER_TASK, ys);
            }
        });
        poison(y);
        return;
    }
    // tmp: [n_out, rows], so each task owns a contiguous run of output rows; each weight row
    // is read once and dotted with every activation row while it is in cache. With a residual
    // the activation rows are the tokens' first quantizations, then their remainders.
    let (act, n_rows) = if residual {
        ([act, res].concat(), 2 * n_tok)
    } else {
        (act, n_tok)
    };
    let mut tmp = vec![0f32; n_out * n_rows];
    let all_rows: Vec<&[B::Act]> = (0..n_rows).map(|t| &act[t * a_per_row..][..a_per_row]).collect();
    // Weight rows in fours against all activation rows: through the packed kernel where the
    // format has one at this level (activations packed once here), else the format's four-row
    // kernel. A last group of fewer than four rows repeats its last row, into scratch outputs.
    #[cfg(target_arch = "x86_64")]
    let packed = crate::packed::pack_activations::<B>(level, &act, a_per_row);
    tmp.par_chunks_mut(ROWS_PER_TASK * n_rows)
        .enumerate()
        .for_each(|(c, chunk)| {
            let mut scratch = Vec::new();
            for (i, rows) in chunk.chunks_mut(4 * n_rows).enumerate() {
                let k = rows.len() / n_rows;
                scratch.resize((4 - k) * n_rows, 0.0);
                let mut it = rows.chunks_mut(n_rows).chain(scratch.chunks_mut(n_rows));
                let outs = std::array::from_fn(|_| it.next().unwrap_or_default());
                let xs = std::array::from_fn(|r| w_row(c * ROWS_PER_TASK + 4 * i + r.min(k - 1)));
                #[cfg(target_arch = "x86_64")]
                if let Some(packed) = &packed {
                    crate::packed::four_rows(xs, &act, packed, outs);
                    continue;
                }
                B::vec_dot_four_rows(level, xs, &all_rows, outs);
            }
        });
    if residual {
        // Each output row's n_tok remainder products onto its first products.
        tmp = tmp
            .chunks_exact(n_rows)
            .flat_map(|r| {
                let (first, rest) = r.split_at(n_tok);
                first.iter().zip(rest).map(|(a, b)| a + b)
            })
            .collect();
    }
    transpose_to_tokens(&tmp, n_out, n_tok, y);
    if let Some(f) = epilogue {
        // A whole token row per call: the epilogue's per-call work (e.g. fetching a LoRA's
        // A·x) is paid once per token.
        y.par_chunks_mut(n_out).enumerate().for_each(|(t, row)| {
            f.begin_task();
            f.apply(t, 0, row);
        });
    }
    poison(y);
}

/// Whether every value of `x` is finite: no exponent of all ones (NaN or ±∞), tested without
/// branching so that it vectorizes.
fn all_finite(x: &[f32]) -> bool {
    const EXP: u32 = 0x7f80_0000;
    !x.iter().fold(false, |bad, v| bad | (v.to_bits() & EXP == EXP))
}

/// `Y = X·Wᵀ` with each weight row dequantized to f32 and the activations kept in f32 (no
/// activation quantization), summed in f64: the float computation that frameworks such as
/// transformers do on dequantized weights. Much slower than [`matmul`]; for checks against
/// float references. Shapes and errors as [`matmul`]; the [`Epilogue`] as
/// [`matmul_epilogue`].
pub fn matmul_dequantized(
    w: &QMatrix<'_>,
    x: &[f32],
    n_tok: usize,
    y: &mut [f32],
    epilogue: Option<Epilogue<'_>>,
) -> Result<(), QuantError> {
    let rb = check_matmul_shapes(w, x, n_tok, y)?;
    let (n_in, n_out) = (w.n_in, w.n_out);
    if n_out == 0 || n_tok == 0 {
        return Ok(());
    }
    let mut tmp = vec![0f32; n_out * n_tok];
    tmp.par_chunks_mut(n_tok.max(1)).enumerate().try_for_each_init(
        || vec![0f32; n_in],
        |wf, (o, row)| -> Result<(), QuantError> {
            crate::row::dequantize_row(w.ty, &w.data[o * rb..][..rb], wf)?;
            for (t, v) in row.iter_mut().enumerate() {
                *v = dot_f64(wf, &x[t * n_in..][..n_in]) as f32;
                if let Some(f) = epilogue {
                    f.begin_task();
                    f.apply(t, o, std::slice::from_mut(v));
                }
            }
            Ok(())
        },
    )?;
    transpose_to_tokens(&tmp, n_out, n_tok, y);
    Ok(())
}

/// `tmp` (`[n_out, n_tok]`, each output row's values for every token) into `y`
/// (`[n_tok, n_out]`), eight token rows per task: each output row's eight values are adjacent
/// in `tmp`, so it is read a cache line at a time.
fn transpose_to_tokens(tmp: &[f32], n_out: usize, n_tok: usize, y: &mut [f32]) {
    const TB: usize = 8;
    y.par_chunks_mut(n_out * TB).enumerate().for_each(|(b, rows)| {
        let t0 = b * TB;
        let nt = rows.len() / n_out;
        // Eight output rows at a time through a small block, so that the writes are runs of
        // eight adjacent values rather than single values a row apart.
        let mut blk = [[0f32; TB]; TB];
        for o0 in (0..n_out).step_by(TB) {
            let w = (n_out - o0).min(TB);
            for (k, b) in blk[..w].iter_mut().enumerate() {
                b[..nt].copy_from_slice(&tmp[(o0 + k) * n_tok + t0..][..nt]);
            }
            for (j, row) in rows.chunks_exact_mut(n_out).enumerate() {
                for (k, v) in row[o0..o0 + w].iter_mut().enumerate() {
                    *v = blk[k][j];
                }
            }
        }
    });
}

/// Σ a·b in f64, in eight interleaved partial sums (so that it vectorizes) added at the end.
fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| *x as f64 * *y as f64)
        .sum();
    for (x, y) in a8.zip(b8) {
        for k in 0..8 {
            acc[k] += x[k] as f64 * y[k] as f64;
        }
    }
    acc.iter().sum::<f64>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n_out` rows of `n_in` weights `value(row, i)`, quantized to `ty`.
    fn quantized(ty: GgmlType, n_in: usize, n_out: usize, mut value: impl FnMut(usize, usize) -> f32) -> Vec<u8> {
        let rb = ty.row_bytes(n_in).unwrap();
        let mut data = vec![0u8; rb * n_out];
        for (r, row) in data.chunks_mut(rb).enumerate() {
            let w: Vec<f32> = (0..n_in).map(|i| value(r, i)).collect();
            crate::quantize_row(ty, &w, row).unwrap();
        }
        data
    }

    /// A xorshift generator of floats in −0.5..0.5.
    fn xorshift(mut st: u64) -> impl FnMut() -> f32 {
        move || {
            st ^= st << 13;
            st ^= st >> 7;
            st ^= st << 17;
            (st >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        }
    }

    /// `n_out` rows of `n_in` random weights of `ty`: quantized from `rnd()` values, or for
    /// IQ4_NL (no quantizer here) random nibbles with each block's f16 scale 1/64.
    fn random_weights(ty: GgmlType, n_in: usize, n_out: usize, rnd: &mut impl FnMut() -> f32) -> Vec<u8> {
        if ty != GgmlType::IQ4_NL {
            return quantized(ty, n_in, n_out, |_, _| rnd());
        }
        let mut data = vec![0u8; ty.row_bytes(n_in).unwrap() * n_out];
        for (i, b) in data.iter_mut().enumerate() {
            *b = match i % 18 {
                0 => 0x00,
                1 => 0x24,
                _ => ((rnd() + 0.5) * 256.0) as u8,
            };
        }
        data
    }

    /// A token with a NaN or an infinity among its inputs gives NaN outputs (the 8-bit
    /// activations would hide it); the other tokens are untouched.
    #[test]
    fn non_finite_inputs_give_nan_outputs() {
        let (n_in, n_out) = (64, 8);
        for ty in [GgmlType::Q8_0, GgmlType::Q5_0, GgmlType::Q4_K, GgmlType::F16] {
            let n_in = if ty == GgmlType::Q4_K { 256 } else { n_in };
            let data = quantized(ty, n_in, n_out, |r, i| ((i * 7 + r * 3) % 11) as f32 / 11.0 - 0.5);
            let w = QMatrix {
                ty,
                data: &data,
                n_out,
                n_in,
            };
            let clean: Vec<f32> = (0..n_in).map(|i| (i % 5) as f32 - 2.0).collect();
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut x = [clean.clone(), clean.clone(), clean.clone()].concat();
                x[n_in + 3] = bad;
                for level in SimdLevel::available() {
                    let mut y = vec![0f32; 3 * n_out];
                    matmul_at(level, &w, &x, 3, &mut y).unwrap();
                    let mut one = vec![0f32; n_out];
                    matmul_at(level, &w, &x[n_in..2 * n_in], 1, &mut one).unwrap();
                    let mut want = vec![0f32; n_out];
                    matmul_at(level, &w, &clean, 1, &mut want).unwrap();
                    assert!(want.iter().all(|v| v.is_finite()), "{ty} {level:?}");
                    assert!(
                        y[n_out..2 * n_out].iter().chain(&one).all(|v| v.is_nan()),
                        "{ty} {level:?} {bad}"
                    );
                    assert_eq!(y[..n_out], want[..], "{ty} {level:?}");
                    assert_eq!(y[2 * n_out..], want[..], "{ty} {level:?}");
                }
            }
        }
    }

    /// Prompt batches (rows in fours, tokens in groups, leftover rows) give bit for bit what one
    /// token at a time gives: for the formats with the packed kernel, with multi-token kernels,
    /// and without either.
    #[test]
    fn batched_equals_token_by_token() {
        let mut rnd = xorshift(0x1234_5678_9ABC_DEF1);
        // 512 inputs are an even number of 32-element blocks, 544 an odd one, 32 a single one.
        let shapes = [
            (GgmlType::Q5_0, 512),
            (GgmlType::Q5_0, 544),
            (GgmlType::Q5_0, 32),
            (GgmlType::Q8_0, 512),
            (GgmlType::Q8_0, 544),
            (GgmlType::Q4_0, 512),
            (GgmlType::Q4_0, 544),
            (GgmlType::IQ4_NL, 544),
            (GgmlType::Q4_K, 512),
            (GgmlType::Q6_K, 512),
        ];
        for (ty, n_in) in shapes {
            for n_out in [1, 7, 33] {
                let data = random_weights(ty, n_in, n_out, &mut rnd);
                let w = QMatrix {
                    ty,
                    data: &data,
                    n_out,
                    n_in,
                };
                for n_tok in [2, 5, 9] {
                    let x: Vec<f32> = (0..n_tok * n_in).map(|_| rnd() * 4.0).collect();
                    for level in SimdLevel::available() {
                        let mut y = vec![0f32; n_tok * n_out];
                        matmul_at(level, &w, &x, n_tok, &mut y).unwrap();
                        for t in 0..n_tok {
                            let mut y1 = vec![0f32; n_out];
                            matmul_at(level, &w, &x[t * n_in..][..n_in], 1, &mut y1).unwrap();
                            for o in 0..n_out {
                                assert_eq!(
                                    y[t * n_out + o].to_bits(),
                                    y1[o].to_bits(),
                                    "{ty} {level:?} n_out {n_out} n_tok {n_tok}: token {t} row {o}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// [`Activations::Residual`]: at every SIMD level (the fused kernels) and in batches it
    /// agrees with the scalar reference (two plain dot products per output) to f32 rounding;
    /// its error from the float product (dequantized weights times f32 activations) is under
    /// 1/20 of one 8-bit row's; with f32 activations it changes nothing.
    #[test]
    fn residual_activations() {
        let mut rnd = xorshift(0x0DDB_1A5E_5BAD_5EED);
        let shapes = [
            (GgmlType::Q5_0, 544),
            (GgmlType::Q5_0, 32),
            (GgmlType::Q8_0, 544),
            (GgmlType::Q4_0, 544),
            (GgmlType::IQ4_NL, 544),
            (GgmlType::Q4_K, 512),
            (GgmlType::Q5_K, 512),
            (GgmlType::Q6_K, 512),
            (GgmlType::F16, 96),
            (GgmlType::F32, 96),
        ];
        let (n_out, n_tok) = (9, 3);
        for (ty, n_in) in shapes {
            let data = random_weights(ty, n_in, n_out, &mut rnd);
            let w = QMatrix {
                ty,
                data: &data,
                n_out,
                n_in,
            };
            // Activations with a few large values, as a transformer's have.
            let x: Vec<f32> = (0..n_tok * n_in)
                .map(|i| rnd() * if i % 37 == 5 { 40.0 } else { 2.0 })
                .collect();
            let run = |level, x: &[f32], n_tok, acts| {
                let mut y = vec![0f32; n_tok * n_out];
                matmul_epilogue_at(level, &w, x, n_tok, &mut y, None, acts).unwrap();
                y
            };
            let mut float = vec![0f32; n_tok * n_out];
            matmul_dequantized(&w, &x, n_tok, &mut float, None).unwrap();
            let mut wf = vec![0f32; n_in * n_out];
            for (o, row) in wf.chunks_mut(n_in).enumerate() {
                crate::dequantize_row(ty, &data[o * w.row_bytes()..][..w.row_bytes()], row).unwrap();
            }
            // Per output, Σ|w·x|: the scale of f32 rounding in its dot product.
            let terms = |t: usize, o: usize| -> f32 {
                let xr = &x[t * n_in..][..n_in];
                wf[o * n_in..][..n_in].iter().zip(xr).map(|(a, b)| (a * b).abs()).sum()
            };
            let reference: Vec<f32> = (0..n_tok)
                .flat_map(|t| run(SimdLevel::Scalar, &x[t * n_in..][..n_in], 1, Activations::Residual))
                .collect();
            for level in SimdLevel::available() {
                let batch = run(level, &x, n_tok, Activations::Residual);
                for t in 0..n_tok {
                    let one = run(level, &x[t * n_in..][..n_in], 1, Activations::Residual);
                    for o in 0..n_out {
                        let want = reference[t * n_out + o];
                        let tol = 1e-5 * terms(t, o);
                        for (what, got) in [("one token", one[o]), ("batch", batch[t * n_out + o])] {
                            assert!(
                                (got - want).abs() <= tol,
                                "{ty} {level:?} {what}: token {t} row {o}: {got} against the scalar {want}"
                            );
                        }
                    }
                }
            }
            let single = run(SimdLevel::Scalar, &x, n_tok, Activations::VecDotType);
            let err = |y: &[f32]| -> f64 {
                y.iter()
                    .zip(&float)
                    .map(|(a, b)| ((a - b) as f64).powi(2))
                    .sum::<f64>()
                    .sqrt()
            };
            let (e_res, e_single) = (err(&reference), err(&single));
            if ty == GgmlType::F32 {
                assert_eq!(reference, single, "{ty}: f32 activations have no remainder");
            } else {
                assert!(
                    e_res < e_single / 20.0,
                    "{ty}: error from the float product {e_res} with the remainder, {e_single} without"
                );
            }
        }
        // Rows of zero width: zero outputs in both modes, one token or a batch.
        for acts in [Activations::VecDotType, Activations::Residual] {
            for n_tok in [1, 3] {
                let w = QMatrix {
                    ty: GgmlType::Q8_0,
                    data: &[],
                    n_out: 4,
                    n_in: 0,
                };
                let mut y = vec![1f32; 4 * n_tok];
                matmul_epilogue_at(SimdLevel::detect(), &w, &[], n_tok, &mut y, None, acts).unwrap();
                assert!(y.iter().all(|&v| v == 0.0), "{acts:?} {n_tok}: {y:?}");
            }
        }
    }
}
