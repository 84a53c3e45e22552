//! Qwen2 / Qwen2.5 (llama.cpp `llm_build_qwen2`).
//!
//! embed → per layer: RMS norm → attention (Q/K/V with biases, NeoX rope, 1/√head_dim) →
//! residual → RMS norm → SwiGLU FFN → residual; final norm; `output` head.

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
