//! `lora-run merge`: write a GGUF model with adapters baked in, loadable by llama.cpp and
//! lora-run. All metadata is kept; `general.name` notes the adapters; the tensors keep their
//! order, the baked ones with their new bytes (and type).

use std::borrow::Cow;
use std::path::Path;

use crate::gguf::{GgufError, GgufValue, GgufWriter};
use crate::model::{Model, WeightData};

/// Write `baked` (a model from [`super::bake::bake`] over the file of `base`) to `out`.
/// `note` is appended to `general.name`, e.g. `"+ LoRA jargon:1"`. Returns bytes written.
///
/// Errors: [`GgufError`] from writing.
pub fn write_merged(baked: &Model, note: &str, out: &Path) -> Result<u64, GgufError> {
    let file = baked.file();
    let mut w = GgufWriter::new();
    w.metadata = file.metadata().clone();
    let name = file.metadata().get_str("general.name").unwrap_or("model").to_string();
    w.metadata
        .set("general.name", GgufValue::String(format!("{name} {note}")));
    // The baked weights: name → (type, shape, bytes).
    let mut baked_by_name: std::collections::HashMap<&str, (quant::GgmlType, Vec<u64>, &[u8])> = baked
        .linears()
        .filter_map(|l| match &l.w.data {
            WeightData::Owned(bytes) => Some((
                l.w.name.as_str(),
                (l.w.ty, vec![l.w.n_in as u64, l.w.n_out as u64], bytes.as_slice()),
            )),
            WeightData::Mapped { .. } => None,
        })
        .collect();
    for t in file.tensors() {
        match baked_by_name.remove(t.name.as_str()) {
            Some((ty, _, bytes)) => w.add_tensor(t.name.clone(), t.shape.clone(), ty, Cow::Borrowed(bytes)),
            None => w.add_tensor(t.name.clone(), t.shape.clone(), t.ty, Cow::Borrowed(file.view(t).data)),
        }
    }
    // What is left is an lm_head LoRA on a tied head: the merged file gets its own `output.weight`.
    for (name, (ty, shape, bytes)) in baked_by_name {
        w.add_tensor(name, shape, ty, Cow::Borrowed(bytes));
    }
    w.write_file(out)
}
