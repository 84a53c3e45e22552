//! Baking: folding active adapters into the weights (dequantize, add s·B·A, requantize to the
//! tensor's own type or to F16/Q8_0), as a copy of the model whose untouched tensors stay in
//! the memory map (copy-on-write of the touched tensors only). The file is never modified;
//! unbaking is going back to the original model, bit for bit.
//!
//! With DoRA the baked row is `f ⊙ (W + s·B·A)` (PEFT `merge` for DoRA).

use rayon::prelude::*;

use quant::GgmlType;

use super::apply::PlanEntry;
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

/// What a bake did.
#[derive(Clone, Debug, Default)]
pub struct BakeReport {
    /// Tensors rewritten, with their new type.
    pub tensors: Vec<(String, GgmlType)>,
    /// Bytes of the rewritten tensors.
    pub bytes: usize,
}

/// A copy of `model` with the adapters of `active` folded into the weights they target.
///
/// Errors: [`LoraError::Plan`] for an adapter with an embedding LoRA or embedding replacement
/// (baked embeddings would also change a tied output head), or a tensor type this runtime
/// cannot requantize (use [`BakeType::F16`]).
pub fn bake(model: &Model, active: &[(AdapterHandle, f32)], ty: BakeType) -> Result<(Model, BakeReport), LoraError> {
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
    let plan = LoraPlan::new(model, active)?;
    let mut baked = model.clone();
    let mut report = BakeReport::default();
    for lin in baked.linears_mut() {
        let entries = plan.entries(lin.id);
        if entries.is_empty() {
            continue;
        }
        let out_ty = match ty {
            BakeType::Same => lin.w.ty,
            BakeType::F16 => GgmlType::F16,
            BakeType::Q8_0 => GgmlType::Q8_0,
        };
        let bytes = bake_one(model, &lin.w, entries, out_ty)?;
        report.bytes += bytes.len();
        report.tensors.push((lin.w.name.clone(), out_ty));
        lin.w = lin.w.with_data(out_ty, bytes);
    }
    Ok((baked, report))
}

/// The baked bytes of one weight.
fn bake_one(
    model: &Model,
    w: &crate::model::WeightRef,
    entries: &[PlanEntry],
    out_ty: GgmlType,
) -> Result<Vec<u8>, LoraError> {
    let m = model.matrix(w);
    let in_rb = m.row_bytes();
    let out_rb = out_ty.row_bytes(w.n_in).ok_or_else(|| LoraError::Plan {
        message: format!(
            "`{}`: {} elements per row are not a whole number of {out_ty} blocks",
            w.name, w.n_in
        ),
    })?;
    if !quant::can_quantize(out_ty) {
        return Err(LoraError::Plan {
            message: format!(
                "`{}`: cannot requantize to {out_ty}; bake with --bake-type f16 (or q8_0)",
                w.name
            ),
        });
    }
    let mut out = vec![0u8; out_rb * w.n_out];
    out.par_chunks_mut(out_rb)
        .enumerate()
        .try_for_each(|(o, dst)| -> Result<(), LoraError> {
            let mut row = vec![0f32; w.n_in];
            quant::dequantize_row(w.ty, &m.data[o * in_rb..][..in_rb], &mut row).map_err(|e| LoraError::Plan {
                message: format!("`{}`: {e}", w.name),
            })?;
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
            if let Some(f) = dora {
                row.iter_mut().for_each(|x| *x *= f);
            }
            quant::quantize_row(out_ty, &row, dst).map_err(|e| LoraError::Plan {
                message: format!("`{}`: {e}", w.name),
            })
        })?;
    Ok(out)
}
