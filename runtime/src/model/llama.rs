//! Llama 2/3, Mistral, TinyLlama, SmolLM (llama.cpp `llm_build_llama`), and the
//! architectures that share its block:
//! - Qwen2 / Qwen2.5 (`llm_build_qwen2`): Q/K/V with biases, NeoX rope;
//! - Qwen3 (`llm_build_qwen3`): per-head Q/K RMS norms before NeoX rope, no biases.
//!
//! embed → per layer: RMS norm → attention (normal rope, divided by `rope_freqs` for llama3,
//! scores · 1/√head_dim) → residual → RMS norm → SwiGLU FFN (`down(silu(gate·x) ⊙ up·x)`) →
//! residual; final norm; `output` head (or `token_embd` when tied).

use super::{AttnParams, KvCache, LoraPlan, Model, ModelError, ops};

/// Hidden states `[n_tok, n_embd]` after the last block of the pre-norm SwiGLU decoder shared
/// by llama, qwen2 and qwen3; what differs between them (rope layout, Q/K/V biases, Q/K norms)
/// is in the loaded weights and the config.
pub(super) fn forward(
    m: &Model,
    kv: &mut KvCache,
    tokens: &[u32],
    plan: &LoraPlan,
    acts: quant::Activations,
) -> Result<Vec<f32>, ModelError> {
    let c = &m.config;
    let n = tokens.len();
    let mut x = m.embed_with(tokens, plan)?; // [n_tok, n_embd]
    plan.add_embedding(&mut x, tokens, 1.0);
    let params = AttnParams {
        rope_base: c.rope_freq_base,
        rope_scale: c.rope_freq_scale,
        q_scale: 1.0,
        kq_scale: 1.0 / (c.head_dim as f32).sqrt(),
        window: None,
    };
    for (il, layer) in m.layers.iter().enumerate() {
        let xn = ops::rms_norm_to(&x, &layer.attn_norm, c.rms_eps);
        let attn = m.self_attention(kv, il, &xn, n, &params, plan, acts)?;
        ops::add_assign(&mut x, &attn);

        let xn = ops::rms_norm_to(&x, &layer.ffn_norm, c.rms_eps);
        let ffn = m.gated_ffn(il, &xn, n, ops::swiglu, plan, acts)?;
        ops::add_assign(&mut x, &ffn);
    }
    Ok(x)
}
