//! Qwen3 (llama.cpp `llm_build_qwen3`).
//!
//! embed → per layer: RMS norm → attention (per-head Q/K RMS norms before NeoX rope,
//! 1/√head_dim, no biases) → residual → RMS norm → SwiGLU FFN → residual; final norm; head.
//! The Q/K norms are loaded into the layer, so the block is the llama one.

use super::{KvCache, LoraPlan, Model, ModelError};

/// Hidden states `[n_tok, n_embd]` after the last block.
pub(super) fn forward(
    m: &Model,
    kv: &mut KvCache,
    tokens: &[u32],
    plan: &LoraPlan,
    acts: quant::Activations,
) -> Result<Vec<f32>, ModelError> {
    super::llama::pre_norm_forward(m, kv, tokens, plan, acts)
}
