//! Baking: folding active adapters into the weights (dequantize, add s·B·A, requantize to the
//! tensor's own type or to F16/Q8_0), as a copy of the model whose untouched tensors stay in
//! the memory map (copy-on-write of the touched tensors only). The file is never modified;
//! unbaking is going back to the original model, bit for bit.
//!
//! With DoRA the baked row is `f ⊙ (W + s·B·A)` (PEFT `merge` for DoRA).

use rayon::prelude::*;

use quant::GgmlType;

use super::apply::PlanEntry;
use super::calibrate::{Calibration, GptqFactor, GroupGrid};
use super::{AdapterHandle, LoraError, LoraPlan};
use crate::model::Model;

/// The type of a baked tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BakeType {
    /// Requantize to the tensor's own ggml type.
    Same,
    /// F16 (exact up to f16 rounding: logits agree with the on-the-fly path).
    F16,
    /// Q8_0.
    Q8_0,
}

impl BakeType {
    /// Parse `same`, `f16` or `q8_0`.
    pub fn parse(s: &str) -> Option<BakeType> {
        match s.to_ascii_lowercase().as_str() {
            "same" => Some(BakeType::Same),
            "f16" => Some(BakeType::F16),
            "q8_0" => Some(BakeType::Q8_0),
            _ => None,
        }
    }
}

/// Below this [`BakeReport::kept`], [`BakeReport::warning`] speaks up.
pub const KEPT_WARN: f64 = 0.9;

/// What a bake did.
#[derive(Clone, Debug, Default)]
pub struct BakeReport {
    /// Tensors rewritten, with their new type.
    pub tensors: Vec<(String, GgmlType)>,
    /// Bytes of the rewritten tensors.
    pub bytes: usize,
    /// How much of the adapters' weight change reached the baked weights: Σ⟨W_baked − W, Δ⟩ /
    /// Σ‖Δ‖² over every baked row, with W the dequantized original and Δ the exact change
    /// (s·B·A, and the DoRA factor). 1 when nothing is lost (F16 up to its rounding); lower
    /// when requantizing to a coarse type rounds away the part of Δ that is small against the
    /// grid step (measured on gemma-3-270m + jargon: 0.87 at scale 1 and 0.53 at scale 0.5
    /// requantized to its own Q5_0/Q4_K/Q6_K/Q8_0 types; above 0.999 baked as Q8_0).
    pub kept: f64,
    /// Tensors requantized on their own grids over the calibration's inputs
    /// ([`bake_calibrated`]); the others in `tensors` were requantized as [`bake`] does.
    pub calibrated: usize,
    /// Rows of those tensors for which plain requantization was closer on the calibration's
    /// inputs, and kept.
    pub plain_rows: usize,
    /// Quantized tensors a calibrated bake requantized without the calibration, with why
    /// (a type without a fixed grid here, inputs not seen or all zero).
    pub not_calibrated: Vec<(String, String)>,
}

impl BakeReport {
    /// A warning for the user when less than [`KEPT_WARN`] of the change was kept, unless
    /// every quantized tensor was calibrated.
    pub fn warning(&self) -> Option<String> {
        (self.kept < KEPT_WARN && (self.calibrated == 0 || !self.not_calibrated.is_empty())).then(|| {
            format!(
                "the baked weights keep {:.0}% of the adapters' change: requantizing to the tensors' own types \
                 rounds away what is small against their quantization step, so the baked model's logits can differ \
                 from the on-the-fly ones by more than the base's quantization noise; a calibrated bake chooses the \
                 quants for the layers' outputs on real inputs, baking to Q8_0 or F16 keeps all of it (more memory), \
                 and applying the adapters on the fly loses nothing",
                100.0 * self.kept
            )
        })
    }
}

/// Refuse adapters a bake cannot fold in: those that change the input embedding or replace
/// the head.
///
/// Errors: [`LoraError::Plan`] naming the adapter.
pub fn check_bakeable(active: &[(AdapterHandle, f32)]) -> Result<(), LoraError> {
    for (h, _) in active {
        if h.adapter.embedding.is_some()
            || h.adapter.embedding_replacement.is_some()
            || h.adapter.head_replacement.is_some()
        {
            return Err(LoraError::Plan {
                message: format!(
                    "adapter {}: it changes the input embedding or the output head (an embedding LoRA or a \
                     replacement embedding / head), which baking and merging do not support; run it on the fly \
                     (without --bake)",
                    h.name
                ),
            });
        }
    }
    Ok(())
}

/// The type a weight of type `ty` is baked to with `bake`.
fn out_type(bake: BakeType, ty: GgmlType, n_in: usize) -> GgmlType {
    match bake {
        BakeType::Same => ty,
        BakeType::F16 => GgmlType::F16,
        // A row that is not a whole number of Q8_0 blocks stays a float (in the report).
        BakeType::Q8_0 if GgmlType::Q8_0.row_bytes(n_in).is_none() => GgmlType::F16,
        BakeType::Q8_0 => GgmlType::Q8_0,
    }
}

/// Refuse a bake of `plan`'s layers to `ty` that some layer's type cannot take (before any
/// slow work).
///
/// Errors: [`LoraError::Plan`] naming the tensor: a type this runtime cannot requantize, or a
/// row that is not a whole number of the baked type's blocks.
pub fn check_bake_types(model: &Model, plan: &LoraPlan, ty: BakeType) -> Result<(), LoraError> {
    for lin in model.linears().filter(|l| !plan.entries(l.id).is_empty()) {
        let out_ty = out_type(ty, lin.w.ty, lin.w.n_in);
        baked_row_bytes(&lin.w, out_ty)?;
        if !quant::can_quantize(out_ty) {
            return Err(LoraError::Plan {
                message: format!(
                    "`{}`: cannot requantize to {out_ty}; bake with --bake-type f16 (or q8_0)",
                    lin.w.name
                ),
            });
        }
    }
    Ok(())
}

/// Bytes of one row of `w` baked as `out_ty`.
///
/// Errors: [`LoraError::Plan`] when the row is not a whole number of `out_ty` blocks.
fn baked_row_bytes(w: &crate::model::WeightRef, out_ty: GgmlType) -> Result<usize, LoraError> {
    out_ty.row_bytes(w.n_in).ok_or_else(|| LoraError::Plan {
        message: format!(
            "`{}`: {} elements per row are not a whole number of {out_ty} blocks",
            w.name, w.n_in
        ),
    })
}

/// A copy of `model` with the adapters of `active` folded into the weights they target.
///
/// Errors: [`LoraError::Plan`] for an adapter with an embedding LoRA or embedding replacement
/// (baked embeddings would also change a tied output head), a tensor type this runtime
/// cannot requantize (use [`BakeType::F16`]), or a baked row that is not finite or does not
/// fit the baked type (naming the tensor and row: a huge adapter scale).
pub fn bake(model: &Model, active: &[(AdapterHandle, f32)], ty: BakeType) -> Result<(Model, BakeReport), LoraError> {
    bake_with(model, active, ty, None)
}

/// [`bake`], requantizing the tensors kept in their own type ([`BakeType::Same`]) on their
/// original grids with GPTQ's column-by-column update over the inputs `calibration` saw
/// ([`Calibration`], see [`super::calibrate`]): slower, and on those inputs the baked layers'
/// outputs are never further from the on-the-fly ones than a plain bake's. Quantized tensors
/// of a type without a fixed grid here ([`calibrates`]), or whose inputs the calibration did
/// not see or saw all zero, are requantized as [`bake`] does and listed in
/// [`BakeReport::not_calibrated`].
///
/// Errors: as for [`bake`]; [`LoraError::Plan`] for a type other than [`BakeType::Same`], or
/// a calibration collected on other weights.
pub fn bake_calibrated(
    model: &Model,
    active: &[(AdapterHandle, f32)],
    ty: BakeType,
    calibration: &Calibration,
) -> Result<(Model, BakeReport), LoraError> {
    bake_with(model, active, ty, Some(calibration))
}

fn bake_with(
    model: &Model,
    active: &[(AdapterHandle, f32)],
    ty: BakeType,
    calibration: Option<&Calibration>,
) -> Result<(Model, BakeReport), LoraError> {
    check_bakeable(active)?;
    if let Some(c) = calibration {
        if ty != BakeType::Same {
            return Err(LoraError::Plan {
                message: format!(
                    "a calibration is for a bake into the tensors' own types, not {ty:?} (which keeps the adapters' change without it)"
                ),
            });
        }
        if c.weights_id != model.weights_id {
            return Err(LoraError::Plan {
                message: "the calibration was collected on other weights (another model, or a baked copy); \
                          collect it on the model being baked"
                    .into(),
            });
        }
    }
    let plan = LoraPlan::new(model, active)?;
    check_bake_types(model, &plan, ty)?;
    let mut baked = model.clone();
    let mut report = BakeReport::default();
    let (mut kept, mut total) = (0f64, 0f64);
    // The last GPTQ factor, shared by the projections that read the same input.
    let mut factor: Option<(usize, Option<GptqFactor>)> = None;
    for lin in baked.linears_mut() {
        let entries = plan.entries(lin.id);
        if entries.is_empty() {
            continue;
        }
        let out_ty = out_type(ty, lin.w.ty, lin.w.n_in);
        let gptq = match calibration {
            Some(c) if calibrates(out_ty) => {
                let key = c.input_of(lin.id);
                if factor.as_ref().map(|f| f.0) != key {
                    factor = key.map(|k| (k, c.factor(lin.id, quant::SimdLevel::detect())));
                }
                let f = factor.as_ref().and_then(|f| f.1.as_ref());
                if f.is_none() {
                    let why = if key.is_none() {
                        "the calibration saw none of its inputs"
                    } else {
                        "its inputs over the calibration text were all zero"
                    };
                    report.not_calibrated.push((lin.w.name.clone(), why.into()));
                }
                f
            }
            Some(_) if !matches!(out_ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) => {
                report
                    .not_calibrated
                    .push((lin.w.name.clone(), format!("no fixed grid for {out_ty} here")));
                None
            }
            _ => None,
        };
        if let Some(f) = gptq
            && f.perm.len() != lin.w.n_in
        {
            return Err(LoraError::Plan {
                message: format!(
                    "`{}`: the calibration saw {} inputs, the weight has {}",
                    lin.w.name,
                    f.perm.len(),
                    lin.w.n_in
                ),
            });
        }
        report.calibrated += usize::from(gptq.is_some());
        let (bytes, sums) = bake_one(model, &lin.w, entries, out_ty, gptq)?;
        kept += sums.dot;
        total += sums.norm;
        report.plain_rows += sums.plain_rows;
        report.bytes += bytes.len();
        report.tensors.push((lin.w.name.clone(), out_ty));
        lin.w = lin.w.with_data(out_ty, bytes);
    }
    report.kept = if total > 0.0 { kept / total } else { 1.0 };
    Ok((baked, report))
}

/// Whether [`bake_calibrated`] requantizes a tensor of type `ty` on its own grid (Q4_0, Q5_0,
/// Q8_0, Q4_K, Q6_K); others are requantized as [`bake`] does.
pub fn calibrates(ty: GgmlType) -> bool {
    quant::grid::has_fixed_grid(ty)
}

/// Rows baked together: GPTQ updates them side by side, reading its factor once per group.
const GROUP: usize = 16;

/// The baked bytes of one weight, with what [`Baked`] adds up. With `gptq` (the factor of
/// [`Calibration::factor`]), `out_ty` is the weight's own type and the rows are requantized on
/// their own grids (see [`super::calibrate`]).
fn bake_one(
    model: &Model,
    w: &crate::model::WeightRef,
    entries: &[PlanEntry],
    out_ty: GgmlType,
    gptq: Option<&GptqFactor>,
) -> Result<(Vec<u8>, Baked), LoraError> {
    let m = model.matrix(w);
    let in_rb = m.row_bytes();
    let out_rb = baked_row_bytes(w, out_ty)?;
    let err = |e: quant::QuantError| LoraError::Plan {
        message: format!("`{}`: {e}", w.name),
    };
    let at_row = |row: usize, what: &str| LoraError::Plan {
        message: format!("`{}` row {row}: {what}", w.name),
    };
    let mut out = vec![0u8; out_rb * w.n_out];
    let n = w.n_in;
    let groups: Vec<Result<Baked, LoraError>> = out
        .par_chunks_mut(out_rb * GROUP)
        .enumerate()
        .map(|(gi, dst)| -> Result<Baked, LoraError> {
            let g = dst.len() / out_rb;
            // The dequantized rows W and their targets W + Δ, `[g, n]`.
            let (mut base, mut target) = (vec![0f32; g * n], vec![0f32; g * n]);
            for (r, (base, row)) in base.chunks_exact_mut(n).zip(target.chunks_exact_mut(n)).enumerate() {
                let o = gi * GROUP + r;
                quant::dequantize_row(w.ty, &m.data[o * in_rb..][..in_rb], base).map_err(err)?;
                if base.iter().any(|x| !x.is_finite()) {
                    return Err(at_row(
                        o,
                        "the base weight is not finite (a NaN or infinity in the file)",
                    ));
                }
                row.copy_from_slice(base);
                let mut dora = None;
                for e in entries {
                    let (t, s) = (e.target(), e.scale());
                    let b = &t.b[o * t.r..][..t.r];
                    for (k, &bk) in b.iter().enumerate() {
                        let c = s * bk;
                        for (x, &a) in row.iter_mut().zip(&t.a[k * t.n_in..][..t.n_in]) {
                            *x += c * a;
                        }
                    }
                    if let Some(f) = e.dora_factors() {
                        dora = Some(f[o]);
                    }
                }
                if row.iter().any(|x| !x.is_finite()) {
                    return Err(at_row(o, "W + s·B·A is not finite; is an adapter scale too large?"));
                }
                if let Some(f) = dora {
                    if !f.is_finite() {
                        return Err(at_row(o, &format!("the DoRA factor m / ‖W + s·B·A‖ is {f}")));
                    }
                    row.iter_mut().for_each(|x| *x *= f);
                }
            }
            // Rows kept as plain requantization (GPTQ's choice was further on the calibration).
            let plain_rows = match gptq {
                Some(f) => {
                    let original = &m.data[gi * GROUP * in_rb..][..g * in_rb];
                    calibrated_rows(w.ty, original, &target, f, dst).map_err(err)?
                }
                None => {
                    for (row, dst) in target.chunks_exact(n).zip(dst.chunks_exact_mut(out_rb)) {
                        quant::quantize_row(out_ty, row, dst).map_err(err)?;
                    }
                    0
                }
            };
            let (mut dot, mut norm) = (0f64, 0f64);
            let mut got = vec![0f32; n];
            for (r, dst) in dst.chunks_exact(out_rb).enumerate() {
                quant::dequantize_row(out_ty, dst, &mut got).map_err(err)?;
                if got.iter().any(|x| !x.is_finite()) {
                    return Err(at_row(
                        gi * GROUP + r,
                        &format!("W + s·B·A is too large for {out_ty}; is an adapter scale too large?"),
                    ));
                }
                for ((&b, &x), &g) in base[r * n..][..n].iter().zip(&target[r * n..][..n]).zip(&got) {
                    let d = (x - b) as f64;
                    dot += (g - b) as f64 * d;
                    norm += d * d;
                }
            }
            Ok(Baked { dot, norm, plain_rows })
        })
        .collect();
    // In row order: the first row at fault is the one named, and the sums do not depend on
    // how the rows were shared out.
    let mut sum = Baked::default();
    for r in groups {
        let r = r?;
        sum.dot += r.dot;
        sum.norm += r.norm;
        sum.plain_rows += r.plain_rows;
    }
    Ok((out, sum))
}

/// [`bake_one`]'s calibrated requantization of a group of rows of type `ty`: `original` their
/// bytes, `target` their values `W + Δ` (`[g, n]`), `f` the factor, into `dst` (same bytes
/// layout as `original`). Per row: the plain requantization, the original grid with each
/// block whose target leaves its range taking the plain one's scales instead, GPTQ on that
/// grid, and whichever of the two is closer on the calibration inputs. Returns the rows kept
/// plain.
fn calibrated_rows(
    ty: GgmlType,
    original: &[u8],
    target: &[f32],
    f: &GptqFactor,
    dst: &mut [u8],
) -> Result<usize, quant::QuantError> {
    let n = f.perm.len();
    let g = target.len() / n;
    let rb = original.len() / g;
    let (bs, ts) = (ty.block_size(), ty.type_size());
    let mut plain = vec![0u8; g * rb];
    // The grids GPTQ works on, built in `dst` from the original rows.
    dst.copy_from_slice(original);
    let mut grid = GroupGrid {
        scale: vec![0f32; g * n],
        offset: vec![0f32; g * n],
        range: (0, 0),
    };
    let (mut s_row, mut o_row, mut p_row) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
    // The rows side by side, in GPTQ's column order (`[n, g]`).
    let (mut wt, mut pt) = (vec![0f32; g * n], vec![0f32; g * n]);
    for r in 0..g {
        let t = &target[r * n..][..n];
        let plain_r = &mut plain[r * rb..][..rb];
        quant::quantize_row(ty, t, plain_r)?;
        quant::dequantize_row(ty, plain_r, &mut p_row)?;
        let grid_r = &mut dst[r * rb..][..rb];
        grid.range = quant::grid::row_grid(ty, grid_r, &mut s_row, &mut o_row)?;
        let (lo, hi) = grid.range;
        let mut refit = false;
        for b in 0..n / bs {
            let outside = (b * bs..(b + 1) * bs).any(|i| {
                let (s, o) = (s_row[i], o_row[i]);
                if s == 0.0 {
                    t[i] != o
                } else {
                    let x = (t[i] - o) / s;
                    !(x >= lo as f32 - 0.5 && x <= hi as f32 + 0.5)
                }
            });
            if outside {
                grid_r[b * ts..][..ts].copy_from_slice(&plain_r[b * ts..][..ts]);
                refit = true;
            }
        }
        if refit {
            quant::grid::row_grid(ty, grid_r, &mut s_row, &mut o_row)?;
        }
        for (k, &c) in f.perm.iter().enumerate() {
            grid.scale[k * g + r] = s_row[c];
            grid.offset[k * g + r] = o_row[c];
            wt[k * g + r] = t[c];
            pt[k * g + r] = p_row[c];
        }
    }
    let mut q = vec![0i32; g * n];
    let objective = super::calibrate::gptq_rows(&wt, &grid, &pt, f, g, &mut q, quant::SimdLevel::detect());
    let mut q_row = vec![0i32; n];
    let mut plain_rows = 0;
    for (r, dst) in dst.chunks_exact_mut(rb).enumerate() {
        let (ours, plain_o) = (objective[r][0], objective[r][1]);
        if ours <= plain_o || (plain_o.is_nan() && !ours.is_nan()) {
            for (k, &c) in f.perm.iter().enumerate() {
                q_row[c] = q[k * g + r];
            }
            quant::grid::set_row_quants(ty, dst, &q_row)?;
        } else {
            dst.copy_from_slice(&plain[r * rb..][..rb]);
            plain_rows += 1;
        }
    }
    Ok(plain_rows)
}

/// What [`bake_one`] adds up over a weight's rows.
#[derive(Default)]
struct Baked {
    /// Σ⟨W_baked − W, Δ⟩ and Σ‖Δ‖² (see [`BakeReport::kept`]).
    dot: f64,
    norm: f64,
    /// Rows of a calibrated bake kept as plain requantization.
    plain_rows: usize,
}
