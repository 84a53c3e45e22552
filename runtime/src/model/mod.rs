//! Models: typed weights built from GGUF tensor names, and one readable forward pass per
//! block design (`llama.rs` for llama, qwen2 and qwen3; `gemma3.rs`).
//!
//! Loading is a total function from a [`GgufFile`] to a [`Model`] or a [`ModelError`] naming
//! the missing key or tensor; the forward pass never looks a name up. Weights stay in the
//! memory map: a [`WeightRef`] is a typed byte range of the file.

pub mod config;
mod flash_row;
mod flash_tiled;
mod gemma3;
pub mod kv_cache;
mod llama;
pub mod ops;

use std::path::Path;
use std::sync::Arc;

use quant::{GgmlType, QMatrix, QuantError};

use crate::gguf::{GgufError, GgufFile, TensorInfo};
pub use crate::lora::LoraPlan;
pub use config::{Arch, ModelConfig, RopeType, SUPPORTED_ARCHITECTURES};
pub use kv_cache::KvCache;
use kv_cache::KvLayer;
use std::collections::HashMap;

/// Errors loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("unsupported architecture `{arch}` (supported: {})", SUPPORTED_ARCHITECTURES.join(", "))]
    UnsupportedArchitecture { arch: String },
    #[error("model is missing tensor `{name}`")]
    MissingTensor { name: String },
    /// A hyperparameter the forward pass cannot work with; `key` is the GGUF key.
    #[error("model metadata `{key}`: {message}")]
    BadConfig { key: String, message: String },
    #[error("this GGUF is a LoRA adapter (general.type = adapter), not a model: pass it with --adapter")]
    IsAdapter,
    #[error("tensor `{name}` has shape {got:?}, expected {expected:?}")]
    TensorShape {
        name: String,
        expected: Vec<u64>,
        got: Vec<u64>,
    },
    #[error("tensor `{name}` has type {ty}, which cannot be multiplied here")]
    UnsupportedTensorType { name: String, ty: GgmlType },
    /// A norm weight or bias holding NaN or ±inf (`index` is the first such element).
    #[error("tensor `{name}` holds a value that is not finite ({value} at index {index})")]
    NonFiniteTensor { name: String, index: usize, value: f32 },
    #[error("token id {id} is outside the vocabulary (n_vocab {n_vocab})")]
    TokenOutOfRange { id: u32, n_vocab: usize },
    #[error(
        "context full: {needed} positions needed, the context holds {n_ctx} (raise --ctx, at most the model's {n_ctx_train})"
    )]
    ContextOverflow {
        needed: usize,
        n_ctx: usize,
        n_ctx_train: usize,
    },
    #[error("quantized kernel: {0}")]
    Quant(#[from] QuantError),
    /// The last hidden state holds NaN or ±inf (checked before the head); `what` names the
    /// value and the position.
    #[error(
        "the logits are not finite ({what}): an activation overflowed, or a weight is not finite{}",
        if *.with_adapters { "; is an adapter scale too large?" } else { "" }
    )]
    NonFiniteLogits { what: String, with_adapters: bool },
}

/// A weight matrix `[n_out, n_in]` (ggml shape `[n_in, n_out]`) living in the mapped file.
#[derive(Clone, Debug)]
pub struct WeightRef {
    /// llama.cpp tensor name.
    pub name: String,
    pub ty: GgmlType,
    pub n_out: usize,
    pub n_in: usize,
    pub data: WeightData,
}

/// Where a weight's bytes are.
#[derive(Clone, Debug)]
pub enum WeightData {
    /// A byte range of the memory-mapped file.
    Mapped { start: usize, len: usize },
    /// A copy in memory (a weight with adapters baked in).
    Owned(Arc<Vec<u8>>),
}

impl WeightRef {
    /// The same weight with new contents of type `ty` (same shape).
    pub fn with_data(&self, ty: GgmlType, bytes: Vec<u8>) -> WeightRef {
        WeightRef {
            name: self.name.clone(),
            ty,
            n_out: self.n_out,
            n_in: self.n_in,
            data: WeightData::Owned(Arc::new(bytes)),
        }
    }
}

/// A linear layer: weight and optional bias (`[n_out]`).
#[derive(Clone, Debug)]
pub struct Linear {
    pub w: WeightRef,
    pub bias: Option<Vec<f32>>,
    /// Index among the model's linear layers (what a [`LoraPlan`] is indexed by).
    pub id: usize,
}

/// One transformer block's weights. Optional fields exist only in some architectures.
#[derive(Clone, Debug)]
pub struct Layer {
    pub attn_norm: Vec<f32>,
    pub wq: Linear,
    pub wk: Linear,
    pub wv: Linear,
    pub wo: Linear,
    /// Per-head RMS norm of q and k (`[head_dim]`; qwen3, gemma3).
    pub attn_q_norm: Option<Vec<f32>>,
    pub attn_k_norm: Option<Vec<f32>>,
    /// RMS norm of the attention output before the residual (gemma3).
    pub attn_post_norm: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    pub ffn_gate: Linear,
    pub ffn_up: Linear,
    pub ffn_down: Linear,
    /// RMS norm of the FFN output before the residual (gemma3).
    pub ffn_post_norm: Option<Vec<f32>>,
}

impl Layer {
    /// The seven projections, in forward order.
    pub fn linears(&self) -> [&Linear; 7] {
        [
            &self.wq,
            &self.wk,
            &self.wv,
            &self.wo,
            &self.ffn_gate,
            &self.ffn_up,
            &self.ffn_down,
        ]
    }

    fn linears_mut(&mut self) -> [&mut Linear; 7] {
        [
            &mut self.wq,
            &mut self.wk,
            &mut self.wv,
            &mut self.wo,
            &mut self.ffn_gate,
            &mut self.ffn_up,
            &mut self.ffn_down,
        ]
    }
}

/// A loaded model: configuration plus typed weights over the memory-mapped GGUF file.
/// `Send + Sync`: share it through `Arc` and open any number of sessions. Cloning copies the
/// small tensors (norms, biases) and shares the weights.
#[derive(Clone)]
pub struct Model {
    file: Arc<GgufFile>,
    pub config: ModelConfig,
    /// `token_embd` `[n_vocab, n_embd]`.
    pub tok_embd: WeightRef,
    pub layers: Vec<Layer>,
    pub output_norm: Vec<f32>,
    /// The head `output.weight` (`[n_vocab, n_embd]`); when the file has no `output` tensor
    /// the head is tied and reads `token_embd`'s data, still under the name `output.weight`
    /// (so an `lm_head` LoRA changes the head only, as in PEFT).
    pub output: Linear,
    /// Linear layer id by GGUF weight name.
    linear_ids: HashMap<String, usize>,
    /// Multiply with dequantized f32 weights and unquantized f32 activations instead of
    /// ggml's quantized dot products, attend in f32 at every batch size (llama.cpp's tiled
    /// flash attention, without the one-row path's f16 rounding of q and of the weighted sum,
    /// over an f32 key/value cache from [`Model::new_kv_cache`]),
    /// and take GELU in f32 rather than through llama.cpp's f16 table: slow, for comparisons
    /// with float references (transformers on the dequantized weights) and `--exact`.
    /// Off by default.
    pub float_reference: bool,
    /// How generated tokens ([`Model::decode_with`]) quantize the activations of the layers'
    /// linear products: by default [`quant::Activations::decode_default`], which is
    /// [`quant::Activations::Residual`] on CPUs with AVX-512 VNNI, so that generation
    /// follows the float model closely (8-bit activations move gemma-3-270m's logits by up to
    /// about 0.75, enough to flip a greedy step whose top two are 0.4 apart; the remainder
    /// cuts the mean KL from the float model to 0.21× on gemma and 0.40× on qwen2.5-0.5B).
    /// [`quant::Activations::VecDotType`] is llama.cpp's numerics, faster. Prompt evaluation
    /// ([`Model::forward_with`], whatever its length) and the output head always quantize
    /// once: a batch's products are compute-bound (the remainder would double them), and the
    /// head's error does not compound through layers. A generated token's keys and values
    /// therefore differ slightly from those of the same token evaluated in a prompt.
    pub decode_activations: quant::Activations,
    /// llama3 `rope_freqs` (`[n_rot / 2]`), dividing the rope frequencies.
    pub rope_freqs: Option<Vec<f32>>,
    /// Which weights these are: new for each loaded file and whenever the linear weights may
    /// change ([`Model::linears_mut`], as a bake does); clones share it. What is computed from
    /// the weights and kept (DoRA row factors) is keyed by it.
    pub(crate) weights_id: u64,
    /// Collects the linear layers' inputs while set (a calibrated bake,
    /// [`crate::lora::calibrate::Calibration::collect`]).
    pub(crate) calibration: Option<Arc<crate::lora::calibrate::Calibration>>,
}

/// A fresh [`Model::weights_id`].
fn next_weights_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model").field("config", &self.config).finish()
    }
}

/// Which logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// None (prompt prefill whose logits nobody reads).
    None,
    /// The last position only: `[n_vocab]`.
    Last,
    /// Every position: `[n_tok, n_vocab]`.
    All,
}

impl Model {
    /// Memory-map and load the GGUF model at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Model, ModelError> {
        Self::from_file(Arc::new(GgufFile::open(path)?))
    }

    /// Build the model from an open file.
    ///
    /// Errors: [`ModelError::UnsupportedArchitecture`], a missing key
    /// ([`GgufError::MissingKey`]), [`ModelError::MissingTensor`], [`ModelError::TensorShape`],
    /// [`ModelError::UnsupportedTensorType`].
    pub fn from_file(file: Arc<GgufFile>) -> Result<Model, ModelError> {
        if file.metadata().get_str("general.type").is_ok_and(|t| t == "adapter") {
            return Err(ModelError::IsAdapter);
        }
        let arch_name = file.metadata().get_str("general.architecture")?.to_string();
        let arch = Arch::from_name(&arch_name).ok_or(ModelError::UnsupportedArchitecture { arch: arch_name })?;
        let l = Loader { file: &file };
        let emb = l.info("token_embd.weight")?;
        let n_vocab = *emb.shape.get(1).unwrap_or(&0) as usize;
        let config = ModelConfig::from_metadata(arch, file.metadata(), n_vocab)?;
        config.validate()?;
        let c = &config;
        let tok_embd = l.weight("token_embd.weight", c.n_embd, n_vocab)?;
        let q_out = c.n_head * c.head_dim;
        let k_out = c.n_head_kv * c.head_dim;
        let v_out = c.n_head_kv * c.head_dim_v;
        let with_bias = arch == Arch::Qwen2;
        let with_qk_norm = matches!(arch, Arch::Qwen3 | Arch::Gemma3);
        let with_post_norms = arch == Arch::Gemma3;
        let mut layers = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let n = |s: &str| format!("blk.{i}.{s}");
            let lin = |s: &str, n_in, n_out| -> Result<Linear, ModelError> {
                let w = l.weight(&n(&format!("{s}.weight")), n_in, n_out)?;
                let bias = if with_bias && matches!(s, "attn_q" | "attn_k" | "attn_v") {
                    Some(l.vector(&n(&format!("{s}.bias")), n_out)?)
                } else {
                    None
                };
                Ok(Linear { w, bias, id: 0 })
            };
            let opt = |s: &str, len, present| -> Result<Option<Vec<f32>>, ModelError> {
                if present {
                    l.vector(&n(s), len).map(Some)
                } else {
                    Ok(None)
                }
            };
            layers.push(Layer {
                attn_norm: l.vector(&n("attn_norm.weight"), c.n_embd)?,
                wq: lin("attn_q", c.n_embd, q_out)?,
                wk: lin("attn_k", c.n_embd, k_out)?,
                wv: lin("attn_v", c.n_embd, v_out)?,
                wo: lin("attn_output", c.n_head * c.head_dim_v, c.n_embd)?,
                attn_q_norm: opt("attn_q_norm.weight", c.head_dim, with_qk_norm)?,
                attn_k_norm: opt("attn_k_norm.weight", c.head_dim, with_qk_norm)?,
                attn_post_norm: opt("post_attention_norm.weight", c.n_embd, with_post_norms)?,
                ffn_norm: l.vector(&n("ffn_norm.weight"), c.n_embd)?,
                ffn_gate: lin("ffn_gate", c.n_embd, c.n_ff)?,
                ffn_up: lin("ffn_up", c.n_embd, c.n_ff)?,
                ffn_down: lin("ffn_down", c.n_ff, c.n_embd)?,
                ffn_post_norm: opt("post_ffw_norm.weight", c.n_embd, with_post_norms)?,
            });
        }
        let output_norm = l.vector("output_norm.weight", c.n_embd)?;
        let output_w = match file.header().tensor_info("output.weight") {
            Some(_) => l.weight("output.weight", c.n_embd, n_vocab)?,
            None => WeightRef {
                name: "output.weight".to_string(),
                ..tok_embd.clone()
            },
        };
        let mut output = Linear {
            w: output_w,
            bias: None,
            id: 0,
        };
        // Number the linear layers in forward order.
        let mut linear_ids = HashMap::new();
        for lin in layers
            .iter_mut()
            .flat_map(|l| l.linears_mut())
            .chain(std::iter::once(&mut output))
        {
            lin.id = linear_ids.len();
            linear_ids.insert(lin.w.name.clone(), lin.id);
        }
        let rope_freqs = match file.header().tensor_info("rope_freqs.weight") {
            Some(_) if arch == Arch::Llama => Some(l.vector("rope_freqs.weight", c.n_rot / 2)?),
            _ => None,
        };
        Ok(Model {
            file: file.clone(),
            config,
            tok_embd,
            layers,
            output_norm,
            output,
            linear_ids,
            float_reference: false,
            decode_activations: quant::Activations::decode_default(),
            rope_freqs,
            weights_id: next_weights_id(),
            calibration: None,
        })
    }

    /// The underlying file.
    pub fn file(&self) -> &Arc<GgufFile> {
        &self.file
    }

    /// The matrix view of a weight.
    pub fn matrix<'a>(&'a self, w: &'a WeightRef) -> QMatrix<'a> {
        let data: &[u8] = match &w.data {
            WeightData::Mapped { start, len } => &self.file.bytes()[*start..*start + *len],
            WeightData::Owned(v) => v,
        };
        QMatrix {
            ty: w.ty,
            data,
            n_out: w.n_out,
            n_in: w.n_in,
        }
    }

    /// Linear layer id by GGUF weight name (`blk.0.attn_q.weight`, …, `output.weight`).
    pub fn linear_ids(&self) -> &HashMap<String, usize> {
        &self.linear_ids
    }

    /// The whole weight `name` dequantized to f32 (`[n_out, n_in]`).
    ///
    /// Errors: [`ModelError::MissingTensor`] when no linear layer has that name.
    pub fn dequantize_weight(&self, name: &str) -> Result<Vec<f32>, ModelError> {
        let w = self
            .linears()
            .find(|l| l.w.name == name)
            .map(|l| &l.w)
            .ok_or_else(|| ModelError::MissingTensor { name: name.to_string() })?;
        let m = self.matrix(w);
        let mut out = vec![0f32; w.n_out * w.n_in];
        quant::dequantize_row(m.ty, m.data, &mut out)?;
        Ok(out)
    }

    /// Every linear layer, in forward order (the output head last).
    pub fn linears(&self) -> impl Iterator<Item = &Linear> {
        self.layers
            .iter()
            .flat_map(|l| l.linears())
            .chain(std::iter::once(&self.output))
    }

    /// Every linear layer, mutable (to replace weights when baking). The model counts as
    /// having new weights from then on (a new [`Model::weights_id`]).
    pub fn linears_mut(&mut self) -> impl Iterator<Item = &mut Linear> {
        self.weights_id = next_weights_id();
        self.layers
            .iter_mut()
            .flat_map(|l| l.linears_mut())
            .chain(std::iter::once(&mut self.output))
    }

    /// `y = W·x (+ LoRA deltas) (+ b)` for `n_tok` rows of `x` (`[n_tok, n_in]` →
    /// `[n_tok, n_out]`), with the plan's adapters on this layer fused into the product and
    /// the activations quantized as `acts` says (ignored on the float reference path).
    pub fn linear(
        &self,
        lin: &Linear,
        x: &[f32],
        n_tok: usize,
        plan: &LoraPlan,
        acts: quant::Activations,
    ) -> Result<Vec<f32>, ModelError> {
        self.linear_of(self.matrix(&lin.w), lin, x, n_tok, plan, acts)
    }

    /// [`Model::linear`] with the weight matrix `m` in place of `lin`'s own (a replacement
    /// head); `lin` gives the layer id and bias.
    fn linear_of(
        &self,
        m: QMatrix<'_>,
        lin: &Linear,
        x: &[f32],
        n_tok: usize,
        plan: &LoraPlan,
        acts: quant::Activations,
    ) -> Result<Vec<f32>, ModelError> {
        if let Some(c) = &self.calibration {
            c.observe(lin.id, x, n_tok);
        }
        let mut y = vec![0f32; n_tok * m.n_out];
        let entries = plan.entries(lin.id);
        let prepared = crate::lora::apply::prepare(entries, x, n_tok);
        let epi: Option<quant::Epilogue<'_>> = if entries.is_empty() { None } else { Some(&prepared) };
        if self.float_reference {
            quant::matmul_dequantized(&m, x, n_tok, &mut y, epi)?;
        } else {
            quant::matmul_epilogue(&m, x, n_tok, &mut y, epi, acts)?;
        }
        if let Some(b) = &lin.bias {
            ops::add_bias(&mut y, b);
        }
        Ok(y)
    }

    /// [`Model::embed`], from the plan's replacement embedding when an active adapter has one.
    pub fn embed_with(&self, tokens: &[u32], plan: &LoraPlan) -> Result<Vec<f32>, ModelError> {
        let n_embd = self.config.n_embd;
        match plan.embedding_replacement() {
            Some(rep) => self.rows_of(tokens, |t, row| {
                row.copy_from_slice(&rep[t * n_embd..][..n_embd]);
                Ok(())
            }),
            None => self.embed(tokens),
        }
    }

    /// Embedding rows of `tokens`: `[n_tok, n_embd]` (ggml `get_rows`: dequantized rows).
    pub fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>, ModelError> {
        let m = self.matrix(&self.tok_embd);
        let rb = m.row_bytes();
        self.rows_of(tokens, |t, row| {
            Ok(quant::dequantize_row(m.ty, &m.data[t * rb..][..rb], row)?)
        })
    }

    /// `[n_tok, n_embd]`, each row filled by `fill(token, row)` after the token's range check.
    fn rows_of(
        &self,
        tokens: &[u32],
        mut fill: impl FnMut(usize, &mut [f32]) -> Result<(), ModelError>,
    ) -> Result<Vec<f32>, ModelError> {
        let n_embd = self.config.n_embd;
        let mut x = vec![0f32; tokens.len() * n_embd];
        for (&t, row) in tokens.iter().zip(x.chunks_exact_mut(n_embd)) {
            if t as usize >= self.config.n_vocab {
                return Err(ModelError::TokenOutOfRange {
                    id: t,
                    n_vocab: self.config.n_vocab,
                });
            }
            fill(t as usize, row)?;
        }
        Ok(x)
    }

    /// Run `tokens` at positions `kv.len()..` through the model, appending their keys and
    /// values to `kv`; returns the requested logits.
    ///
    /// Errors: [`ModelError::ContextOverflow`] when the cache cannot hold the tokens,
    /// [`ModelError::TokenOutOfRange`] for an id past the vocabulary.
    pub fn forward(&self, kv: &mut KvCache, tokens: &[u32], logits: Logits) -> Result<Vec<f32>, ModelError> {
        self.forward_with(kv, tokens, logits, &LoraPlan::default())
    }

    /// [`Model::forward`] with the adapters of `plan` applied on the fly: prompt evaluation,
    /// each product's activations quantized once ([`quant::Activations::VecDotType`], as
    /// llama.cpp does).
    pub fn forward_with(
        &self,
        kv: &mut KvCache,
        tokens: &[u32],
        logits: Logits,
        plan: &LoraPlan,
    ) -> Result<Vec<f32>, ModelError> {
        self.forward_as(kv, tokens, logits, plan, quant::Activations::VecDotType)
    }

    /// One generated token after the cached ones: its logits (`[n_vocab]`), with the layers'
    /// products quantizing their activations as [`Model::decode_activations`] says (the
    /// remainder added, by default). Errors as [`Model::forward`].
    pub fn decode_with(&self, kv: &mut KvCache, token: u32, plan: &LoraPlan) -> Result<Vec<f32>, ModelError> {
        self.forward_as(kv, &[token], Logits::Last, plan, self.decode_activations)
    }

    /// [`Model::forward_with`] with the layers' products quantizing as `acts` says (the head's
    /// always once).
    fn forward_as(
        &self,
        kv: &mut KvCache,
        tokens: &[u32],
        logits: Logits,
        plan: &LoraPlan,
        acts: quant::Activations,
    ) -> Result<Vec<f32>, ModelError> {
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        on_pool(|| {
            let x = self.hidden_as(kv, tokens, plan, acts)?;
            self.head(x, tokens.len(), logits, plan)
        })
    }

    /// Like [`Model::forward_with`], but returns the hidden states after the last block
    /// (`[n_tok, n_embd]`, before the final norm); [`Model::logits_of`] turns rows of them into
    /// logits.
    pub fn forward_hidden(&self, kv: &mut KvCache, tokens: &[u32], plan: &LoraPlan) -> Result<Vec<f32>, ModelError> {
        self.hidden_as(kv, tokens, plan, quant::Activations::VecDotType)
    }

    /// [`Model::forward_hidden`] with the layers' products quantizing as `acts` says.
    fn hidden_as(
        &self,
        kv: &mut KvCache,
        tokens: &[u32],
        plan: &LoraPlan,
        acts: quant::Activations,
    ) -> Result<Vec<f32>, ModelError> {
        on_pool(|| {
            let needed = kv.len() + tokens.len();
            if needed > kv.n_ctx() {
                return Err(ModelError::ContextOverflow {
                    needed,
                    n_ctx: kv.n_ctx(),
                    n_ctx_train: self.config.n_ctx_train,
                });
            }
            let x = match self.config.arch {
                Arch::Llama | Arch::Qwen2 | Arch::Qwen3 => llama::forward(self, kv, tokens, plan, acts)?,
                Arch::Gemma3 => gemma3::forward(self, kv, tokens, plan, acts)?,
            };
            kv.advance(tokens.len());
            Ok(x)
        })
    }

    /// Logits (`[n, n_vocab]`) of `n` rows of hidden states from [`Model::forward_hidden`].
    pub fn logits_of(&self, hidden: &[f32], plan: &LoraPlan) -> Result<Vec<f32>, ModelError> {
        let n = hidden.len() / self.config.n_embd;
        on_pool(|| self.head(hidden.to_vec(), n, Logits::All, plan))
    }

    /// Final norm and output head over the hidden states `x` (`[n_tok, n_embd]`).
    fn head(&self, mut x: Vec<f32>, n_tok: usize, logits: Logits, plan: &LoraPlan) -> Result<Vec<f32>, ModelError> {
        let n_embd = self.config.n_embd;
        let (x, n) = match logits {
            Logits::None => return Ok(Vec::new()),
            Logits::Last => (x.split_off((n_tok - 1) * n_embd), 1),
            Logits::All => (x, n_tok),
        };
        // Non-finite hidden states are named here, with their position, rather than left to
        // come out of the head as NaN logits (the matmuls give a non-finite input NaN outputs).
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::NonFiniteLogits {
                what: format!("hidden state {} at position {}", x[i], i / n_embd),
                with_adapters: !plan.is_empty(),
            });
        }
        let xn = ops::rms_norm_to(&x, &self.output_norm, self.config.rms_eps);
        // The hidden state is finite and normalized here; a head whose weights are not finite
        // (a bad file) can still give non-finite logits. Those of a single position (what a
        // sampler takes) are checked; a batch's (perplexity) show as NaN where they are used.
        let out = match plan.head_replacement() {
            Some(w) => {
                let m = QMatrix {
                    ty: quant::GgmlType::F32,
                    data: bytemuck::cast_slice(w),
                    n_out: self.output.w.n_out,
                    n_in: self.output.w.n_in,
                };
                self.linear_of(m, &self.output, &xn, n, plan, quant::Activations::VecDotType)?
            }
            None => self.linear(&self.output, &xn, n, plan, quant::Activations::VecDotType)?,
        };
        if n == 1
            && let Some(i) = out.iter().position(|v| !v.is_finite())
        {
            return Err(ModelError::NonFiniteLogits {
                what: format!("logit {} of token id {i}", out[i]),
                with_adapters: !plan.is_empty(),
            });
        }
        Ok(out)
    }

    /// A new KV cache for `n_ctx` positions (at most the training context): f16 as llama.cpp's,
    /// f32 on the float reference path.
    pub fn new_kv_cache(&self, n_ctx: usize) -> KvCache {
        let c = &self.config;
        let new = if self.float_reference {
            KvCache::new_f32
        } else {
            KvCache::new
        };
        new(
            c.n_layer,
            n_ctx.min(c.n_ctx_train),
            c.n_head_kv * c.head_dim,
            c.n_head_kv * c.head_dim_v,
        )
    }
}

/// Run `f` on a rayon pool thread (directly when already on one). A forward pass makes many
/// parallel products; started from a worker, each one has that worker take part, instead of a
/// caller thread that sleeps and wakes for every product.
fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    let mut out = None;
    rayon::scope(|s| s.spawn(|_| out = Some(f())));
    out.expect("the scope ran the closure")
}

/// Looks tensors up by name and checks their shapes while loading.
struct Loader<'a> {
    file: &'a GgufFile,
}

impl Loader<'_> {
    fn info(&self, name: &str) -> Result<&TensorInfo, ModelError> {
        self.file
            .header()
            .tensor_info(name)
            .ok_or_else(|| ModelError::MissingTensor { name: name.to_string() })
    }

    /// A `[n_out, n_in]` weight (ggml shape `[n_in, n_out]`).
    fn weight(&self, name: &str, n_in: usize, n_out: usize) -> Result<WeightRef, ModelError> {
        let t = self.info(name)?;
        let expected = vec![n_in as u64, n_out as u64];
        if t.shape != expected {
            return Err(ModelError::TensorShape {
                name: name.to_string(),
                expected,
                got: t.shape.clone(),
            });
        }
        if t.ty.vec_dot_type().is_none() {
            return Err(ModelError::UnsupportedTensorType {
                name: name.to_string(),
                ty: t.ty,
            });
        }
        Ok(WeightRef {
            name: name.to_string(),
            ty: t.ty,
            n_out,
            n_in,
            data: WeightData::Mapped {
                start: (self.file.header().data_offset + t.offset) as usize,
                len: t.size as usize,
            },
        })
    }

    /// A 1-D tensor of `len` elements (a norm weight, a bias), dequantized to f32.
    ///
    /// Errors: [`ModelError::TensorShape`] for another shape, [`ModelError::NonFiniteTensor`] for
    /// a NaN or infinite element.
    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        let t = self.info(name)?;
        if t.shape != [len as u64] {
            return Err(ModelError::TensorShape {
                name: name.to_string(),
                expected: vec![len as u64],
                got: t.shape.clone(),
            });
        }
        let v = self.file.view(t).to_f32()?;
        if let Some((index, &value)) = v.iter().enumerate().find(|(_, x)| !x.is_finite()) {
            return Err(ModelError::NonFiniteTensor {
                name: name.to_string(),
                index,
                value,
            });
        }
        Ok(v)
    }
}

/// How one layer's attention is set up; the architecture files fill it in.
pub(crate) struct AttnParams {
    /// Rope base and linear frequency scale of this layer.
    pub rope_base: f32,
    pub rope_scale: f32,
    /// Factor applied to q before attention (gemma3 scales q), else 1.
    pub q_scale: f32,
    /// Factor applied to the scores (1/√head_dim for most models).
    pub kq_scale: f32,
    /// Sliding window, for local layers.
    pub window: Option<usize>,
}

impl Model {
    /// Self-attention of layer `il` on the normed input `xn` (`[n_tok, n_embd]`): Q/K/V
    /// projections (with biases where present), per-head Q/K norms where present, rope,
    /// append K/V to the cache, causal attention, output projection. Returns `[n_tok, n_embd]`.
    pub(crate) fn self_attention(
        &self,
        kv: &mut KvCache,
        il: usize,
        xn: &[f32],
        n_tok: usize,
        p: &AttnParams,
        plan: &LoraPlan,
        acts: quant::Activations,
    ) -> Result<Vec<f32>, ModelError> {
        let c = &self.config;
        let layer = &self.layers[il];
        let mut q = self.linear(&layer.wq, xn, n_tok, plan, acts)?; // [n_tok, n_head, head_dim]
        let mut k = self.linear(&layer.wk, xn, n_tok, plan, acts)?; // [n_tok, n_head_kv, head_dim]
        let v = self.linear(&layer.wv, xn, n_tok, plan, acts)?; // [n_tok, n_head_kv, head_dim_v]
        if let Some(w) = &layer.attn_q_norm {
            ops::rms_norm(&mut q, w, c.rms_eps);
        }
        if let Some(w) = &layer.attn_k_norm {
            ops::rms_norm(&mut k, w, c.rms_eps);
        }
        let pos0 = kv.len();
        let rope_type = c.arch.rope_type();
        let (q_row, k_row) = (c.n_head * c.head_dim, c.n_head_kv * c.head_dim);
        // One token's q and k rotated (and q scaled) at a time; tokens in parallel.
        let rotate = |t: usize, qt: &mut [f32], kt: &mut [f32]| {
            let cache = ops::rope_cache(pos0 + t, c.n_rot, p.rope_base, p.rope_scale, self.rope_freqs.as_deref());
            ops::rope(qt, c.head_dim, &cache, rope_type);
            ops::rope(kt, c.head_dim, &cache, rope_type);
            if p.q_scale != 1.0 {
                qt.iter_mut().for_each(|v| *v *= p.q_scale);
            }
        };
        if n_tok == 1 {
            rotate(0, &mut q, &mut k);
        } else {
            use rayon::prelude::*;
            q.par_chunks_mut(q_row)
                .zip(k.par_chunks_mut(k_row))
                .enumerate()
                .for_each(|(t, (qt, kt))| rotate(t, qt, kt));
        }
        let layer_cache = kv.append(il, &k, &v);
        let shape = ops::AttnShape {
            n_tok,
            pos0,
            n_head: c.n_head,
            n_head_kv: c.n_head_kv,
            head_dim: c.head_dim,
            head_dim_v: c.head_dim_v,
            scale: p.kq_scale,
            window: p.window,
        };
        let tiled = flash_tiled::Kernels::detect();
        let attn = match layer_cache {
            // The float reference path (f32 cache from new_kv_cache; an f16 one given by hand).
            KvLayer::F32(kc, vc) => flash_tiled::attention_tiled(tiled, &q, kc, vc, &shape),
            KvLayer::F16(kc, vc) if self.float_reference => flash_tiled::attention_tiled(tiled, &q, kc, vc, &shape),
            KvLayer::F16(kc, vc) => ops::attention(&q, kc, vc, &shape),
        }; // [n_tok, n_head, head_dim_v]
        self.linear(&layer.wo, &attn, n_tok, plan, acts)
    }

    /// The gated feed-forward block on the normed input `xn`: `down(act(gate·x) ⊙ up·x)`.
    pub(crate) fn gated_ffn(
        &self,
        il: usize,
        xn: &[f32],
        n_tok: usize,
        act: fn(&[f32], &[f32], &mut [f32], usize),
        plan: &LoraPlan,
        acts: quant::Activations,
    ) -> Result<Vec<f32>, ModelError> {
        let layer = &self.layers[il];
        let g = self.linear(&layer.ffn_gate, xn, n_tok, plan, acts)?; // [n_tok, n_ff]
        let u = self.linear(&layer.ffn_up, xn, n_tok, plan, acts)?; // [n_tok, n_ff]
        let mut h = vec![0f32; g.len()];
        act(&g, &u, &mut h, layer.ffn_up.w.n_out);
        self.linear(&layer.ffn_down, &h, n_tok, plan, acts) // [n_tok, n_embd]
    }
}
