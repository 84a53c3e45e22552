//! [`load_adapter`]: what the path is (PEFT folder, `.safetensors` file, GGUF LoRA file) and
//! the checks every format shares (finite values, shapes against the base model, order).

use std::path::{Path, PathBuf};

use super::{AdapterOptions, LoraAdapter, LoraError, LoraTarget};
use crate::gguf::GGUF_MAGIC;
use crate::model::Model;

/// The PEFT folder that a path to its `adapter_config.json` stands for (the file's folder, `.`
/// for a bare name), as [`load_adapter`] and `lora-run inspect` take such a path; `None` for
/// any other file name. Whether the file exists is the caller's check.
pub fn peft_folder_of(path: &Path) -> Option<&Path> {
    path.file_name().is_some_and(|n| n == "adapter_config.json").then(|| {
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
    })
}

/// Load the adapter at `path` and validate it against `model`.
///
/// `path` may be
/// - a PEFT folder (`adapter_config.json` + `adapter_model.safetensors`, as `save_pretrained`
///   writes it), or the `adapter_config.json` / `adapter_model.safetensors` inside one;
/// - a bare `.safetensors` file of PEFT tensors: its config is `<stem>.json`, else
///   `adapter_config.json` beside it, else its `__metadata__` (`lora_alpha`, `r`, …), else
///   `opts.lora_alpha` with the rank read from the shapes;
/// - a llama.cpp GGUF LoRA file (`convert_lora_to_gguf.py` output), recognized by its magic.
///
/// The adapter's name is `opts.name`, else the folder name (PEFT folder or
/// `adapter_model.safetensors`), else the file stem. Targets come out in the order of the
/// model's linear layers; the adapter's notes (settings accepted with a caveat) are in
/// [`LoraAdapter::warnings`].
///
/// Errors: [`LoraError::NotFound`] / [`LoraError::Io`] for an unreadable path,
/// [`LoraError::UnknownFormat`] for a file that is none of the three, then every error of
/// [`super::peft::load_safetensors`] and [`super::gguf_lora::load`]: each names the file and the tensor
/// or config field at fault. Never panics on malformed input.
pub fn load_adapter(path: &Path, model: &Model, opts: &AdapterOptions) -> Result<LoraAdapter, LoraError> {
    let meta = std::fs::metadata(path).map_err(|e| io_error(path, &e))?;
    let mut adapter = if meta.is_dir() {
        super::peft::load_dir(path, model, opts)?
    } else if starts_with_gguf_magic(path)? {
        super::gguf_lora::load(path, model, opts)?
    } else if let Some(dir) = peft_folder_of(path) {
        super::peft::load_dir(dir, model, opts)?
    } else if has_extension(path, "safetensors") {
        super::peft::load_file(path, model, opts)?
    } else if has_extension(path, "gguf") {
        // Let the GGUF reader say what is wrong with the magic.
        super::gguf_lora::load(path, model, opts)?
    } else {
        return Err(LoraError::UnknownFormat {
            path: path.to_path_buf(),
            message: "expected a PEFT folder (adapter_config.json + adapter_model.safetensors), a .safetensors \
                      file, or a GGUF LoRA file (magic \"GGUF\")"
                .into(),
        });
    };
    adapter.name = match &opts.name {
        Some(n) => n.clone(),
        None => default_name(path, meta.is_dir()),
    };
    Ok(adapter)
}

/// The name an adapter at `path` gets by default: the folder name for a PEFT folder (dots
/// included: `qwen2-0.5b-pirate`) or a file named like PEFT's (`adapter_model.safetensors`,
/// `adapter_config.json`), else the file stem (`jargon.safetensors` → `jargon`).
pub fn default_adapter_name(path: &Path) -> String {
    default_name(path, path.is_dir())
}

fn default_name(path: &Path, is_dir: bool) -> String {
    let folder_of = |p: &Path| -> Option<String> {
        let abs = std::path::absolute(p).ok()?;
        Some(abs.parent()?.file_name()?.to_string_lossy().into_owned())
    };
    let file_name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    if is_dir {
        if let Some(n) = std::path::absolute(path)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        {
            return n;
        }
    } else if matches!(
        file_name.as_deref(),
        Some("adapter_model.safetensors" | "adapter_config.json")
    ) && let Some(n) = folder_of(path)
    {
        return n;
    }
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "adapter".into())
}

fn has_extension(path: &Path, ext: &str) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

fn starts_with_gguf_magic(path: &Path) -> Result<bool, LoraError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| io_error(path, &e))?;
    let mut magic = [0u8; 4];
    let mut n = 0;
    while n < 4 {
        match f.read(&mut magic[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error(path, &e)),
        }
    }
    Ok(n == 4 && magic == GGUF_MAGIC)
}

/// [`LoraError::NotFound`] for a missing path, else [`LoraError::Io`].
pub(crate) fn io_error(path: &Path, e: &std::io::Error) -> LoraError {
    if e.kind() == std::io::ErrorKind::NotFound {
        LoraError::NotFound {
            path: path.to_path_buf(),
            message: String::new(),
        }
    } else {
        LoraError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    }
}

/// Errors on the first NaN or infinity of `data` (tensor `tensor` of `path`).
pub(crate) fn check_finite(path: &Path, tensor: &str, data: &[f32]) -> Result<(), LoraError> {
    match data.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(index) => Err(LoraError::NonFinite {
            path: path.to_path_buf(),
            tensor: tensor.to_string(),
            index,
            value: data[index],
        }),
    }
}

/// `(n_out, n_in)` of the base weight a LoRA pair targets: a linear layer by GGUF name
/// (`output.weight` is the head, tied or not), or `token_embd.weight` for an embedding LoRA,
/// whose `A` is `[r, n_vocab]` and `B` `[n_embd, r]` (so `n_in` = n_vocab, `n_out` = n_embd).
pub(crate) fn base_dims(model: &Model, weight: &str) -> Option<(usize, usize)> {
    if weight == "token_embd.weight" {
        return Some((model.config.n_embd, model.config.n_vocab));
    }
    model
        .linears()
        .find(|l| l.w.name == weight)
        .map(|l| (l.w.n_out, l.w.n_in))
}

/// Whether the model's output head reads the embedding (no `output.weight` in its file).
pub(crate) fn head_is_tied(model: &Model) -> bool {
    model.file().header().tensor_info("output.weight").is_none()
}

/// How a file writes the shapes of a pair, for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// Row-major, as PEFT (`lora_A` `[r, n_in]`, `lora_B` `[n_out, r]`).
    RowMajor,
    /// ggml order (innermost first): `lora_a` `[n_in, r]`, `lora_b` `[r, n_out]`; for
    /// `token_embd` llama.cpp stores `lora_a` transposed, `[r, n_vocab]` (`a_transposed`).
    Ggml { a_transposed: bool },
}

/// One A/B pair (and DoRA magnitude) as the file declares it, before any data is read.
/// Shapes are logical, row-major: `a` `[r, n_in]`, `b` `[n_out, r]`, `magnitude` `[n_out]`;
/// `layout` says how to show them as the file writes them.
pub(crate) struct PairShape {
    pub a_name: String,
    pub b_name: String,
    /// The base weight (GGUF name; `token_embd.weight` for an embedding LoRA).
    pub weight: String,
    pub a: Vec<usize>,
    pub b: Vec<usize>,
    pub magnitude: Option<(String, Vec<usize>)>,
    pub layout: Layout,
}

impl PairShape {
    /// The rank (`A`'s rows) once [`check_shapes`] passed.
    pub fn r(&self) -> usize {
        self.a[0]
    }
}

/// Check every pair against the model: the base weight exists, `A` is `[r, n_in]`, `B`
/// `[n_out, r]`, the magnitude `[n_out]`, r ≥ 1. When no pair fits at all, the adapter was
/// made for another model: [`LoraError::WrongBaseModel`]; otherwise the first misfit is a
/// [`LoraError::NoSuchWeight`] or [`LoraError::ShapeMismatch`] naming the tensor (shapes as
/// the file writes them).
pub(crate) fn check_shapes(path: &Path, model: &Model, pairs: &[PairShape], hint: &str) -> Result<(), LoraError> {
    let mut misfits = Vec::new();
    for p in pairs {
        // Shapes of A (is_a), B or the magnitude as the file writes them.
        let show = |s: &[usize], is_a: bool| -> Vec<usize> {
            let mut v = s.to_vec();
            if let Layout::Ggml { a_transposed } = p.layout
                && !(is_a && a_transposed)
            {
                v.reverse();
            }
            v
        };
        let mismatch =
            |tensor: &str, expected: Vec<usize>, got: &[usize], is_a: bool, message: String| LoraError::ShapeMismatch {
                path: path.to_path_buf(),
                tensor: tensor.to_string(),
                expected: show(&expected, is_a),
                got: show(got, is_a),
                message,
            };
        let Some((n_out, n_in)) = base_dims(model, &p.weight) else {
            let c = &model.config;
            misfits.push(LoraError::NoSuchWeight {
                path: path.to_path_buf(),
                tensor: p.a_name.clone(),
                weight: p.weight.clone(),
                message: format!("the {} model has {} layers", c.arch.name(), c.n_layer),
            });
            continue;
        };
        let what = if p.weight == "token_embd.weight" {
            format!("the model's embedding has n_vocab {n_in}, n_embd {n_out}")
        } else {
            format!("`{}` of the model is [n_out {n_out}, n_in {n_in}]", p.weight)
        };
        let embd = p.weight == "token_embd.weight";
        let (a_rule, b_rule) = match (p.layout, embd) {
            (Layout::RowMajor, false) => ("lora_A is [r, n_in]", "lora_B is [n_out, r]"),
            (Layout::RowMajor, true) => ("lora_embedding_A is [r, n_vocab]", "lora_embedding_B is [n_embd, r]"),
            (Layout::Ggml { a_transposed: false }, _) => (
                "lora_a is [n_in, r] in ggml order",
                "lora_b is [r, n_out] in ggml order",
            ),
            (Layout::Ggml { a_transposed: true }, _) => (
                "token_embd's lora_a is [r, n_vocab] in ggml order",
                "lora_b is [r, n_embd] in ggml order",
            ),
        };
        if p.a.len() != 2 || p.a[0] == 0 || p.a[1] != n_in {
            let r = if p.a.len() == 2 && p.a[0] > 0 {
                p.a[0]
            } else {
                p.b.last().copied().unwrap_or(0).max(1)
            };
            misfits.push(mismatch(
                &p.a_name,
                vec![r, n_in],
                &p.a,
                true,
                format!("{a_rule}; {what}"),
            ));
            continue;
        }
        let r = p.a[0];
        if p.b.len() != 2 || p.b[0] != n_out || p.b[1] != r {
            misfits.push(mismatch(
                &p.b_name,
                vec![n_out, r],
                &p.b,
                false,
                format!("{b_rule}, with the rank {r} of its A; {what}"),
            ));
            continue;
        }
        if let Some((m_name, m)) = &p.magnitude
            && m.as_slice() != [n_out]
        {
            misfits.push(mismatch(
                m_name,
                vec![n_out],
                m,
                false,
                format!("the DoRA magnitude is [n_out]; {what}"),
            ));
        }
    }
    if misfits.is_empty() {
        return Ok(());
    }
    if misfits.len() == pairs.len() && pairs.len() > 1 {
        let c = &model.config;
        let first = misfits.swap_remove(0).to_string();
        let first = first.strip_prefix(&format!("{}: ", path.display())).unwrap_or(&first);
        return Err(LoraError::WrongBaseModel {
            path: path.to_path_buf(),
            message: format!(
                "none of its {} LoRA pairs fits this {} model ({} layers, n_embd {}, n_ff {}); first: {}{hint}",
                pairs.len(),
                c.arch.name(),
                c.n_layer,
                c.n_embd,
                c.n_ff,
                first
            ),
        });
    }
    Err(misfits.swap_remove(0))
}

/// Sort targets in the order of the model's linear layers (forward order, the head last).
pub(crate) fn sort_targets(model: &Model, targets: &mut [LoraTarget]) {
    let ids = model.linear_ids();
    targets.sort_by_key(|t| ids.get(t.tensor.as_str()).copied().unwrap_or(usize::MAX));
}

/// `path`'s parent folder, `.` for a bare file name.
pub(crate) fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
