//! llama.cpp GGUF LoRA adapters, as `convert_lora_to_gguf.py` writes them and
//! `llama_adapter_lora_init` (src/llama-adapter.cpp) reads them.
//!
//! Metadata: `general.type = "adapter"`, `adapter.type = "lora"`, `general.architecture`
//! (must be the base model's), `adapter.lora.alpha` (f32). Tensors come in pairs named after
//! the base weight: `<name>.lora_a` with ggml shape `[n_in, r]` (stored row-major as PEFT's
//! `A` `[r, n_in]`) and `<name>.lora_b` with ggml shape `[r, n_out]` (`B` `[n_out, r]`).
//! `token_embd.weight.lora_a` is stored transposed (ggml `[r, n_vocab]`, i.e. `Aᵀ`), as
//! llama.cpp's `build_inp_embd` reads it with `get_rows`.
//!
//! The converter already applied every tensor transformation of the base model's conversion
//! (llama's q/k row permutation included), so nothing is permuted here. The scale is
//! alpha / r, with r = `lora_b`'s ne0 (GGUF has no rsLoRA); llama.cpp takes alpha = 0 to mean
//! scale 1, and so does this loader.

use std::collections::BTreeMap;
use std::path::Path;

use super::load::{Layout, PairShape, check_finite, check_shapes, io_error, sort_targets};
use super::{AdapterFormat, AdapterOptions, EmbeddingLora, LoraAdapter, LoraError, LoraTarget};
use crate::gguf::{GgufError, GgufFile, TensorInfo};
use crate::model::Model;

/// Load the GGUF LoRA file at `path` and validate it against `model`.
///
/// Errors (each naming the file and the tensor or key): [`LoraError::NotFound`],
/// [`LoraError::Gguf`] for a malformed file; [`LoraError::UnknownFormat`] when
/// `general.type` is not `adapter`; [`LoraError::Unsupported`] for `adapter.type` other than
/// `lora` or an aLoRA (`adapter.alora.invocation_tokens`); [`LoraError::WrongBaseModel`] when
/// `general.architecture` differs from the model's or no pair fits; [`LoraError::Config`] for
/// a bad `adapter.lora.alpha`; [`LoraError::MissingAlpha`]; [`LoraError::UnknownTensor`] for a
/// tensor that is no `.lora_a` / `.lora_b`; [`LoraError::Unpaired`];
/// [`LoraError::NoSuchWeight`] / [`LoraError::ShapeMismatch`]; [`LoraError::NonFinite`];
/// [`LoraError::Empty`].
pub fn load(path: &Path, model: &Model, opts: &AdapterOptions) -> Result<LoraAdapter, LoraError> {
    let file = GgufFile::open(path).map_err(|e| match e {
        GgufError::Io { source, .. } => io_error(path, &source),
        source => LoraError::Gguf {
            path: path.to_path_buf(),
            source,
        },
    })?;
    let md = file.metadata();
    let gguf_err = |source: GgufError| LoraError::Gguf {
        path: path.to_path_buf(),
        source,
    };
    let string_key = |key: &str| -> Result<Option<String>, LoraError> {
        match md.get(key) {
            None => Ok(None),
            Some(_) => md.get_str(key).map(|s| Some(s.to_string())).map_err(gguf_err),
        }
    };

    match string_key("general.type")?.as_deref() {
        Some("adapter") => {}
        other => {
            return Err(LoraError::UnknownFormat {
                path: path.to_path_buf(),
                message: format!(
                    "a GGUF file with general.type = {} (a GGUF LoRA has \"adapter\"; is this a model?)",
                    other.map_or("(missing)".to_string(), |t| format!("{t:?}"))
                ),
            });
        }
    }
    match string_key("adapter.type")?.as_deref() {
        Some("lora") => {}
        other => {
            return Err(LoraError::Unsupported {
                path: path.to_path_buf(),
                field: "adapter.type".into(),
                message: format!(
                    "{} (only \"lora\" adapters are loaded)",
                    other.map_or("(missing)".to_string(), |t| format!("{t:?}"))
                ),
            });
        }
    }
    let model_arch = model.config.arch.name();
    match string_key("general.architecture")? {
        Some(a) if a == model_arch => {}
        other => {
            return Err(LoraError::WrongBaseModel {
                path: path.to_path_buf(),
                message: format!(
                    "general.architecture is {}, the model's is {model_arch:?}",
                    other.map_or("(missing)".to_string(), |a| format!("{a:?}"))
                ),
            });
        }
    }
    if md.get("adapter.alora.invocation_tokens").is_some() {
        return Err(LoraError::Unsupported {
            path: path.to_path_buf(),
            field: "adapter.alora.invocation_tokens".into(),
            message: "activated LoRA (applied only after its invocation tokens) is not implemented".into(),
        });
    }

    let mut warnings = Vec::new();
    let file_alpha = match md.get("adapter.lora.alpha") {
        None => None,
        Some(_) => {
            let a = md.get_f64("adapter.lora.alpha").map_err(gguf_err)? as f32;
            if !a.is_finite() {
                return Err(LoraError::Config {
                    path: path.to_path_buf(),
                    field: "adapter.lora.alpha".into(),
                    message: format!("{a} is not finite"),
                });
            }
            Some(a)
        }
    };
    let alpha = match (file_alpha, opts.lora_alpha) {
        (Some(a), Some(o)) if a != o => {
            warnings.push(format!(
                "the lora_alpha option ({o}) is not used: the adapter gives lora_alpha {a}"
            ));
            a
        }
        (Some(a), _) => a,
        (None, Some(o)) => o,
        (None, None) => {
            return Err(LoraError::MissingAlpha {
                path: path.to_path_buf(),
                looked_for: "adapter.lora.alpha".into(),
            });
        }
    };
    if alpha == 0.0 {
        warnings.push("adapter.lora.alpha is 0: scale 1, as llama.cpp does".into());
    }

    // Pair `<name>.lora_a` with `<name>.lora_b` (names are unique: the reader checked).
    let mut pairs: BTreeMap<&str, (Option<&TensorInfo>, Option<&TensorInfo>)> = BTreeMap::new();
    for t in file.tensors() {
        if let Some(base) = t.name.strip_suffix(".lora_a") {
            pairs.entry(base).or_default().0 = Some(t);
        } else if let Some(base) = t.name.strip_suffix(".lora_b") {
            pairs.entry(base).or_default().1 = Some(t);
        } else {
            let message = if t.name.ends_with("_norm.weight") {
                "a norm vector (mergekit-extract-lora) changes the base model beyond a LoRA delta; not supported \
                 (llama.cpp skips it)"
                    .to_string()
            } else {
                "not a `<base tensor>.lora_a` / `.lora_b` tensor".to_string()
            };
            return Err(LoraError::UnknownTensor {
                path: path.to_path_buf(),
                tensor: t.name.clone(),
                message,
            });
        }
    }
    if pairs.is_empty() {
        return Err(LoraError::Empty {
            path: path.to_path_buf(),
        });
    }
    let mut shapes = Vec::with_capacity(pairs.len());
    let mut infos = Vec::with_capacity(pairs.len());
    for (base, (a, b)) in &pairs {
        let (a, b) = match (a, b) {
            (Some(a), Some(b)) => (*a, *b),
            (Some(a), None) => {
                return Err(LoraError::Unpaired {
                    path: path.to_path_buf(),
                    tensor: a.name.clone(),
                    missing: format!("{base}.lora_b"),
                });
            }
            (None, Some(b)) => {
                return Err(LoraError::Unpaired {
                    path: path.to_path_buf(),
                    tensor: b.name.clone(),
                    missing: format!("{base}.lora_a"),
                });
            }
            (None, None) => unreachable!("a pair has a tensor"),
        };
        let embd = *base == "token_embd.weight";
        let dims = |t: &TensorInfo| -> Vec<usize> {
            t.shape
                .iter()
                .map(|&d| usize::try_from(d).unwrap_or(usize::MAX))
                .collect()
        };
        // Logical row-major shapes: A [r, n_in], B [n_out, r].
        let a_logical = if embd {
            dims(a)
        } else {
            dims(a).into_iter().rev().collect()
        };
        shapes.push(PairShape {
            a_name: a.name.clone(),
            b_name: b.name.clone(),
            weight: base.to_string(),
            a: a_logical,
            b: dims(b).into_iter().rev().collect(),
            magnitude: None,
            layout: Layout::Ggml { a_transposed: embd },
        });
        infos.push((embd, a, b));
    }
    check_shapes(path, model, &shapes, "")?;

    let read = |t: &TensorInfo| -> Result<Vec<f32>, LoraError> {
        let data = file.view(t).to_f32().map_err(gguf_err)?;
        check_finite(path, &t.name, &data)?;
        Ok(data)
    };
    let mut targets = Vec::with_capacity(shapes.len());
    let mut embedding = None;
    for (s, (embd, a_info, b_info)) in shapes.iter().zip(infos) {
        let (r, n_in, n_out) = (s.a[0], s.a[1], s.b[0]);
        // llama.cpp (llama-graph.cpp): scale = alpha ? adapter_scale * alpha / rank : adapter_scale.
        let scale = if alpha == 0.0 {
            1.0
        } else {
            (alpha as f64 / r as f64) as f32
        };
        let a = read(a_info)?;
        let b = read(b_info)?;
        if embd {
            // Stored Aᵀ ([n_vocab, r] row-major): transpose to [r, n_vocab].
            let mut at = vec![0f32; a.len()];
            for (v, row) in a.chunks_exact(r).enumerate() {
                for (k, &x) in row.iter().enumerate() {
                    at[k * n_in + v] = x;
                }
            }
            embedding = Some(EmbeddingLora {
                r,
                n_vocab: n_in,
                n_embd: n_out,
                a: at,
                b,
                scale,
            });
        } else {
            targets.push(LoraTarget {
                tensor: s.weight.clone(),
                r,
                n_in,
                n_out,
                a,
                b,
                scale,
                dora_magnitude: None,
            });
        }
    }
    sort_targets(model, &mut targets);
    Ok(LoraAdapter {
        name: String::new(),
        path: path.to_path_buf(),
        format: AdapterFormat::Gguf,
        alpha,
        use_rslora: false,
        targets,
        embedding,
        embedding_replacement: None,
        head_replacement: None,
        warnings,
    })
}
