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
    w.metadata.set("general.name", GgufValue::String(format!("{name} {note}")));
    let baked_by_name: std::collections::HashMap<&str, &crate::model::WeightRef> =
        baked.linears().filter(|l| l.w.is_owned()).map(|l| (l.w.name.as_str(), &l.w)).collect();
    for t in file.tensors() {
        match baked_by_name.get(t.name.as_str()) {
            Some(b) => {
                let WeightData::Owned(bytes) = &b.data else { unreachable!("filtered on is_owned") };
                w.add_tensor(t.name.clone(), t.shape.clone(), b.ty, Cow::Borrowed(bytes.as_slice()));
            }
            None => w.add_tensor(t.name.clone(), t.shape.clone(), t.ty, Cow::Borrowed(file.view(t).data)),
        }
    }
    // An lm_head LoRA on a tied head: the merged file gets its own `output.weight`.
    if file.header().tensor_info("output.weight").is_none() {
        if let Some(b) = baked_by_name.get("output.weight") {
            let WeightData::Owned(bytes) = &b.data else { unreachable!("filtered on is_owned") };
            w.add_tensor("output.weight", vec![b.n_in as u64, b.n_out as u64], b.ty, Cow::Borrowed(bytes.as_slice()));
        }
    }
    w.write_file(out)
}
