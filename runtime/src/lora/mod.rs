//! LoRA adapters: PEFT `adapter_model.safetensors` and llama.cpp GGUF LoRA files, loaded
//! once, validated against the base model, applied on the fly (`y = W·x + Σᵢ sᵢ·Bᵢ(Aᵢ·x)`)
//! or baked into the weights.
//!
//! Semantics follow PEFT (`peft/tuners/lora/layer.py`): scale = lora_alpha / r, or
//! lora_alpha / √r with `use_rslora`; `rank_pattern` / `alpha_pattern` override per module;
//! DoRA (`use_dora`) rescales each output row by m / ‖W + s·B·A‖ (DoraLinearLayer).

pub mod apply;
pub mod bake;
pub mod calibrate;
mod error;
pub mod gguf_lora;
mod load;
pub mod mapping;
pub mod merge;
pub mod peft;

use std::path::PathBuf;

pub use apply::{AdapterHandle, LoraPlan};
pub use error::LoraError;
pub use load::{default_adapter_name, load_adapter, peft_folder_of};

/// How to load an adapter.
#[derive(Clone, Debug, Default)]
pub struct AdapterOptions {
    /// Name to register it under (default: the file or folder name).
    pub name: Option<String>,
    /// `lora_alpha` when neither a config file nor the safetensors metadata gives it.
    pub lora_alpha: Option<f32>,
}

/// Where an adapter came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AdapterFormat {
    /// PEFT `adapter_model.safetensors` + `adapter_config.json`.
    Peft,
    /// llama.cpp GGUF LoRA (`general.type = adapter`).
    Gguf,
}

/// The low-rank delta on one base weight matrix `W` (`[n_out, n_in]`):
/// `ΔW = scale · B·A`, with `A`: `[r, n_in]` and `B`: `[n_out, r]` row-major (PEFT's
/// `lora_A.weight` / `lora_B.weight` layouts), kept unquantized in f32.
#[derive(Clone, Debug)]
pub struct LoraTarget {
    /// The GGUF tensor it modifies, e.g. `blk.0.attn_q.weight` or `output.weight`.
    pub tensor: String,
    pub r: usize,
    pub n_in: usize,
    pub n_out: usize,
    /// `[r, n_in]`.
    pub a: Vec<f32>,
    /// `[n_out, r]` (for llama's q/k already permuted to llama.cpp's rope row order).
    pub b: Vec<f32>,
    /// The adapter's own scale for this module (alpha / r, or alpha / √r with rsLoRA); a
    /// generation's adapter scale multiplies it (PEFT `set_scale`).
    pub scale: f32,
    /// DoRA magnitude `m` (`[n_out]`, PEFT `lora_magnitude_vector`), if the adapter is DoRA.
    pub dora_magnitude: Option<Vec<f32>>,
}

/// LoRA on the input embedding (PEFT `lora_embedding_A` `[r, n_vocab]`, `lora_embedding_B`
/// `[n_embd, r]`): the row of token t gains `scale · B · A[:, t]`. Applied to the input
/// embedding only, also when the output head is tied to it (as PEFT does).
#[derive(Clone, Debug)]
pub struct EmbeddingLora {
    pub r: usize,
    pub n_vocab: usize,
    pub n_embd: usize,
    /// `[r, n_vocab]`.
    pub a: Vec<f32>,
    /// `[n_embd, r]`.
    pub b: Vec<f32>,
    pub scale: f32,
}

/// A loaded, validated adapter.
#[derive(Clone, Debug)]
pub struct LoraAdapter {
    /// Display name (file stem or folder name unless given).
    pub name: String,
    pub path: PathBuf,
    pub format: AdapterFormat,
    /// lora_alpha (the default one; per-module values are folded into each target's scale).
    pub alpha: f32,
    /// Whether scales use alpha / √r.
    pub use_rslora: bool,
    pub targets: Vec<LoraTarget>,
    pub embedding: Option<EmbeddingLora>,
    /// A full replacement embedding saved with the adapter (PEFT `save_embedding_layers`):
    /// `[n_vocab, n_embd]`, used as the input embedding while the adapter is active.
    pub embedding_replacement: Option<Vec<f32>>,
    /// A full replacement output head saved with the adapter (PEFT `save_embedding_layers`
    /// with `lm_head` targeted): `[n_vocab, n_embd]` f32, the head's base weight while the
    /// adapter is active (an `lm_head` LoRA applies on top of it, as in PEFT).
    pub head_replacement: Option<Vec<f32>>,
    /// Settings accepted with a caveat (e.g. `fan_in_fan_out` forced off, alpha overridden,
    /// no config file): one sentence each, for the user to see.
    pub warnings: Vec<String>,
}

impl LoraAdapter {
    /// Trainable parameters: the elements of every A and B, and DoRA's magnitude vectors (as
    /// PEFT counts them).
    pub fn n_params(&self) -> usize {
        self.targets
            .iter()
            .map(|t| t.a.len() + t.b.len() + t.dora_magnitude.as_ref().map_or(0, |m| m.len()))
            .sum::<usize>()
            + self.embedding.as_ref().map_or(0, |e| e.a.len() + e.b.len())
    }

    /// Bytes held in memory.
    pub fn n_bytes(&self) -> usize {
        4 * (self.n_params()
            + self.embedding_replacement.as_ref().map_or(0, |e| e.len())
            + self.head_replacement.as_ref().map_or(0, |e| e.len()))
    }

    /// Distinct ranks, ascending.
    pub fn ranks(&self) -> Vec<usize> {
        let mut r: Vec<usize> = self
            .targets
            .iter()
            .map(|t| t.r)
            .chain(self.embedding.iter().map(|e| e.r))
            .collect();
        r.sort_unstable();
        r.dedup();
        r
    }

    /// One-line summary: modules, rank(s), scale(s), parameters, bytes.
    pub fn summary(&self) -> String {
        let mut scales: Vec<f32> = self.targets.iter().map(|t| t.scale).collect();
        scales.sort_by(f32::total_cmp);
        scales.dedup();
        let ranks: Vec<String> = self.ranks().iter().map(|r| r.to_string()).collect();
        let scales: Vec<String> = scales.iter().map(|s| format!("{s}")).collect();
        let mut parts = vec![format!("{} modules", self.targets.len())];
        if self.embedding.is_some() {
            parts[0].push_str(" + embedding");
        }
        if !ranks.is_empty() {
            parts.push(format!("rank {}", ranks.join("/")));
        }
        if !scales.is_empty() {
            parts.push(format!(
                "scale {}{}",
                scales.join("/"),
                if self.use_rslora { " (rsLoRA)" } else { "" }
            ));
        }
        if self.targets.iter().any(|t| t.dora_magnitude.is_some()) {
            parts.push("DoRA".into());
        }
        if self.embedding_replacement.is_some() {
            parts.push("replaces the input embedding".into());
        }
        if self.head_replacement.is_some() {
            parts.push("replaces the output head".into());
        }
        parts.push(format!("{} parameters", self.n_params()));
        parts.push(format!("{} bytes", self.n_bytes()));
        format!("adapter {} ({:?}): {}", self.name, self.format, parts.join(", "))
    }
}
