//! Hyperparameters of a model, read from GGUF metadata (`{arch}.*` keys, llama-arch.cpp).

use crate::gguf::{GgufError, Metadata};

/// A supported architecture (`general.architecture`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2/3, Mistral, TinyLlama, SmolLM: normal rope, optional `rope_freqs`.
    Llama,
    /// Qwen2 / Qwen2.5: Q/K/V biases, NeoX rope.
    Qwen2,
    /// Qwen3: Q/K RMS norms, NeoX rope.
    Qwen3,
    /// Gemma 3: scaled embeddings, Q/K norms, post-attention and post-FFN norms, GELU-tanh
    /// gated FFN, sliding-window attention on five of every six layers, tied output head.
    Gemma3,
}

/// The architectures lora-run runs, as `general.architecture` names them.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["llama", "qwen2", "qwen3", "gemma3"];

impl Arch {
    /// The architecture named `name`, or `None`.
    pub fn from_name(name: &str) -> Option<Arch> {
        Some(match name {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            "gemma3" => Arch::Gemma3,
            _ => return None,
        })
    }

    /// The GGUF name.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
            Arch::Gemma3 => "gemma3",
        }
    }

    /// The rope layout llama.cpp assigns (`llama_model_rope_type`): normal (adjacent pairs)
    /// for llama, NeoX (halves) for the others.
    pub fn rope_type(self) -> RopeType {
        match self {
            Arch::Llama => RopeType::Norm,
            Arch::Qwen2 | Arch::Qwen3 | Arch::Gemma3 => RopeType::Neox,
        }
    }
}

/// How rope pairs the dimensions of a head (ggml `GGML_ROPE_TYPE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeType {
    /// Pairs (2i, 2i+1).
    Norm,
    /// Pairs (i, i + n_rot/2).
    Neox,
}

/// Typed hyperparameters.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    /// Vocabulary size (rows of `token_embd`).
    pub n_vocab: usize,
    /// Training context length.
    pub n_ctx_train: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Key head size (`attention.key_length`, default n_embd / n_head).
    pub head_dim: usize,
    /// Value head size (`attention.value_length`, default head_dim).
    pub head_dim_v: usize,
    /// Rotated dimensions per head (`rope.dimension_count`, default head_dim).
    pub n_rot: usize,
    pub rms_eps: f32,
    /// `rope.freq_base` (global layers).
    pub rope_freq_base: f32,
    /// 1 / the rope scaling factor (`rope.scaling.factor`, or the older `rope.scale_linear`),
    /// 1 without one, as llama.cpp's `rope_freq_scale_train`.
    pub rope_freq_scale: f32,
    /// Sliding window of the local layers (gemma3), if any.
    pub sliding_window: Option<usize>,
    /// Rope base of the sliding-window layers (gemma3: 10000, llama.cpp's
    /// `rope_freq_base_train_swa`).
    pub rope_freq_base_swa: f32,
    /// `rope.scaling.type` (llama.cpp's default: `linear`; `none` and `linear` are supported).
    pub rope_scaling: String,
    /// The rope scaling factor and the key it came from, when the file gives a nonzero one.
    pub rope_scaling_factor: Option<(String, f32)>,
}

impl ModelConfig {
    /// Read the hyperparameters of `arch` from `md`; `n_vocab` comes from the embedding.
    ///
    /// Errors: [`GgufError::MissingKey`] / [`GgufError::WrongValueType`] naming the key.
    pub fn from_metadata(arch: Arch, md: &Metadata, n_vocab: usize) -> Result<ModelConfig, GgufError> {
        let a = arch.name();
        let key = |k: &str| format!("{a}.{k}");
        let usize_of = |k: &str| md.get_u64(&key(k)).map(|v| v as usize);
        let opt_usize = |k: &str| -> Result<Option<usize>, GgufError> {
            match md.get(&key(k)) {
                None => Ok(None),
                Some(_) => usize_of(k).map(Some),
            }
        };
        let opt_f32 = |k: &str| -> Result<Option<f32>, GgufError> {
            match md.get(&key(k)) {
                None => Ok(None),
                Some(_) => md.get_f64(&key(k)).map(|v| v as f32).map(Some),
            }
        };
        let n_embd = usize_of("embedding_length")?;
        let n_head = usize_of("attention.head_count")?;
        let n_head_kv = opt_usize("attention.head_count_kv")?.unwrap_or(n_head);
        let head_dim = opt_usize("attention.key_length")?.unwrap_or(n_embd / n_head.max(1));
        let head_dim_v = opt_usize("attention.value_length")?.unwrap_or(head_dim);
        // As llama.cpp reads them: the type defaults to linear; the factor comes from
        // `rope.scaling.factor`, else the older `rope.scale_linear`, and 0 or none means 1.
        let rope_scaling = match md.get(&key("rope.scaling.type")) {
            Some(_) => md.get_str(&key("rope.scaling.type"))?.to_string(),
            None => "linear".to_string(),
        };
        let rope_scaling_factor = match opt_f32("rope.scaling.factor")? {
            Some(f) => Some(("rope.scaling.factor", f)),
            None => opt_f32("rope.scale_linear")?.map(|f| ("rope.scale_linear", f)),
        }
        .filter(|&(_, f)| f != 0.0);
        let rope_freq_scale = rope_scaling_factor.map_or(1.0, |(_, f)| 1.0 / f);
        Ok(ModelConfig {
            arch,
            n_vocab,
            n_ctx_train: usize_of("context_length")?,
            n_embd,
            n_layer: usize_of("block_count")?,
            n_ff: usize_of("feed_forward_length")?,
            n_head,
            n_head_kv,
            head_dim,
            head_dim_v,
            n_rot: opt_usize("rope.dimension_count")?.unwrap_or(head_dim),
            rms_eps: md.get_f64(&key("attention.layer_norm_rms_epsilon"))? as f32,
            rope_freq_base: opt_f32("rope.freq_base")?.unwrap_or(10000.0),
            rope_freq_scale,
            sliding_window: if arch == Arch::Gemma3 {
                opt_usize("attention.sliding_window")?
            } else {
                None
            },
            rope_freq_base_swa: 10000.0,
            rope_scaling,
            rope_scaling_factor: rope_scaling_factor.map(|(k, f)| (k.to_string(), f)),
        })
    }

    /// Checks what the forward pass relies on: nonzero sizes, query heads a multiple of the
    /// key/value heads, head sizes whose products fit, a positive finite RMS epsilon, rope
    /// base and rope scale, a rope scaling this runtime computes (none or linear), and a rope
    /// dimension that is even and at most the head size.
    ///
    /// Errors: [`super::ModelError::BadConfig`] naming the GGUF key.
    pub fn validate(&self) -> Result<(), super::ModelError> {
        let a = self.arch.name();
        let bad = |k: &str, message: String| super::ModelError::BadConfig {
            key: format!("{a}.{k}"),
            message,
        };
        for (k, v) in [
            ("embedding_length", self.n_embd),
            ("block_count", self.n_layer),
            ("feed_forward_length", self.n_ff),
            ("attention.head_count", self.n_head),
            ("attention.head_count_kv", self.n_head_kv),
            ("attention.key_length", self.head_dim),
            ("attention.value_length", self.head_dim_v),
            ("context_length", self.n_ctx_train),
        ] {
            if v == 0 {
                return Err(bad(k, "is 0".into()));
            }
        }
        if !self.n_head.is_multiple_of(self.n_head_kv) {
            return Err(bad(
                "attention.head_count_kv",
                format!(
                    "{} key/value heads do not divide {} query heads",
                    self.n_head_kv, self.n_head
                ),
            ));
        }
        for (k, heads, dim) in [
            ("attention.key_length", self.n_head, self.head_dim),
            ("attention.value_length", self.n_head_kv, self.head_dim_v),
        ] {
            if heads.checked_mul(dim).is_none_or(|n| n > u32::MAX as usize) {
                return Err(bad(k, format!("{heads} heads of {dim} values is out of range")));
            }
        }
        for (k, v) in [
            ("attention.layer_norm_rms_epsilon", self.rms_eps),
            ("rope.freq_base", self.rope_freq_base),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(bad(k, format!("{v} is not a positive number")));
            }
        }
        if !matches!(self.rope_scaling.as_str(), "none" | "linear") {
            // YaRN, LongRoPE and the like change the rope in ways this runtime does not
            // compute: refused rather than run as plain rope.
            return Err(bad(
                "rope.scaling.type",
                format!("`{}` is not supported (none or linear)", self.rope_scaling),
            ));
        }
        if let Some((k, f)) = &self.rope_scaling_factor
            && !(f.is_finite() && *f > 0.0)
        {
            return Err(bad(k, format!("{f} is not a positive number (0: no scaling)")));
        }
        if !self.n_rot.is_multiple_of(2) || self.n_rot > self.head_dim {
            return Err(bad(
                "rope.dimension_count",
                format!(
                    "{} is not an even number at most the head size {}",
                    self.n_rot, self.head_dim
                ),
            ));
        }
        Ok(())
    }

    /// Whether layer `il` uses sliding-window attention: gemma3 makes every sixth layer
    /// global and the rest local (llama.cpp `set_swa_pattern(6)`).
    pub fn is_swa_layer(&self, il: usize) -> bool {
        self.arch == Arch::Gemma3 && self.sliding_window.is_some() && il % 6 < 5
    }
}
