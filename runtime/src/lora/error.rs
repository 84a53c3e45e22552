//! Errors of adapter loading: each names the file and the tensor or field.

use std::path::PathBuf;

/// A bad, unsupported or mismatched adapter.
///
/// Every loading error carries the file (`path`) and the tensor (as the adapter file names it)
/// or the config field it is about, so the message alone tells the user what to fix.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error("cannot read adapter {path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("{message}")]
    Plan { message: String },
    /// Nothing at the path, or a PEFT folder without its weights file.
    #[error("adapter {path} not found{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    NotFound { path: PathBuf, message: String },
    /// The path is neither a PEFT folder, a `.safetensors` file nor a GGUF file.
    #[error("{path} is not a LoRA adapter: {message}")]
    UnknownFormat { path: PathBuf, message: String },
    /// Malformed safetensors bytes (header, offsets, sizes), as the safetensors crate reports them.
    #[error("{path} is not a valid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    /// Malformed GGUF.
    #[error("{path}: {source}")]
    Gguf {
        path: PathBuf,
        #[source]
        source: crate::gguf::GgufError,
    },
    /// A config field (or metadata key) with a value of the wrong type or out of range.
    #[error("{path}: invalid `{field}`: {message}")]
    Config {
        path: PathBuf,
        field: String,
        message: String,
    },
    /// A setting lora-run does not implement (it would change the math), refused rather than
    /// ignored.
    #[error("{path}: `{field}` is not supported: {message}")]
    Unsupported {
        path: PathBuf,
        field: String,
        message: String,
    },
    /// No `lora_alpha` in any config, metadata or option.
    #[error(
        "{path}: no lora_alpha: the adapter has no config (looked for {looked_for}) and its safetensors metadata \
         has no `lora_alpha`; pass --lora-alpha (in the library: AdapterOptions's lora_alpha)"
    )]
    MissingAlpha { path: PathBuf, looked_for: String },
    /// A tensor whose name is not a LoRA tensor of any module of this architecture.
    #[error("{path}: tensor `{tensor}` matches no LoRA-capable module: {message}")]
    UnknownTensor {
        path: PathBuf,
        tensor: String,
        message: String,
    },
    /// A tensor of a module the config does not target.
    #[error(
        "{path}: tensor `{tensor}` belongs to module `{module}`, which the adapter config does not target ({message})"
    )]
    NotTargeted {
        path: PathBuf,
        tensor: String,
        module: String,
        message: String,
    },
    /// An A without its B (or the reverse), or a DoRA magnitude without its pair.
    #[error("{path}: tensor `{tensor}` has no partner `{missing}`")]
    Unpaired {
        path: PathBuf,
        tensor: String,
        missing: String,
    },
    /// Two tensors filling the same slot (e.g. `lora_A.weight` and `lora_A.default.weight`).
    #[error("{path}: tensor `{tensor}` duplicates `{other}`")]
    Duplicate {
        path: PathBuf,
        tensor: String,
        other: String,
    },
    /// A tensor mapped to a base weight this model lacks (e.g. a layer index past the last).
    #[error("{path}: tensor `{tensor}` targets `{weight}`, which this model does not have ({message})")]
    NoSuchWeight {
        path: PathBuf,
        tensor: String,
        weight: String,
        message: String,
    },
    /// A tensor whose shape does not fit the base weight (or its partner).
    #[error("{path}: tensor `{tensor}` has shape {got:?}, expected {expected:?} ({message})")]
    ShapeMismatch {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        got: Vec<usize>,
        message: String,
    },
    /// The rank in the tensors differs from the config's `r` / `rank_pattern`.
    #[error("{path}: tensor `{tensor}` has rank {got}, but `{field}` says {expected}")]
    RankMismatch {
        path: PathBuf,
        tensor: String,
        field: String,
        expected: usize,
        got: usize,
    },
    /// The adapter was made for another base model (architecture or sizes).
    #[error("{path}: adapter made for another model: {message}")]
    WrongBaseModel { path: PathBuf, message: String },
    /// A NaN or infinite value.
    #[error("{path}: tensor `{tensor}` holds {value} at element {index}")]
    NonFinite {
        path: PathBuf,
        tensor: String,
        index: usize,
        value: f32,
    },
    /// A tensor element type lora-run does not read.
    #[error("{path}: tensor `{tensor}` has element type {dtype} (supported: {supported})")]
    UnsupportedDtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
        supported: &'static str,
    },
    /// An adapter file with no LoRA tensor at all.
    #[error("{path}: the adapter holds no LoRA tensors")]
    Empty { path: PathBuf },
}
