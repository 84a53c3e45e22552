//! Gemma 3 (llama.cpp `llm_build_gemma3_iswa`).
//!
//! embed · √n_embd → per layer: RMS norm → attention (Q/K RMS norms, NeoX rope with base
//! 10000 on the sliding-window layers and `rope.freq_base` on every sixth, global, layer;
//! q scaled by 1/√head_dim) → post-attention norm → residual → RMS norm → GELU-tanh gated FFN
//! → post-FFN norm → residual; final norm; head tied to `token_embd`.

use super::{AttnParams, KvCache, LoraPlan, Model, ModelError, ops};

/// Hidden states `[n_tok, n_embd]` after the last block.
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
    let emb_scale = (c.n_embd as f32).sqrt();
    x.iter_mut().for_each(|v| *v *= emb_scale);
    // PEFT scales the embedding LoRA's output by Gemma's embed_scale too.
    plan.add_embedding(&mut x, tokens, emb_scale);
    // llama.cpp's GELU goes through an f16 table; the float reference computes it in f32.
    let geglu = if m.float_reference { ops::geglu_f32 } else { ops::geglu };
    for (il, layer) in m.layers.iter().enumerate() {
        let swa = c.is_swa_layer(il);
        let params = AttnParams {
            rope_base: if swa { c.rope_freq_base_swa } else { c.rope_freq_base },
            rope_scale: if swa { 1.0 } else { c.rope_freq_scale },
            q_scale: 1.0 / (c.head_dim as f32).sqrt(),
            kq_scale: 1.0,
            window: if swa { c.sliding_window } else { None },
        };
        let xn = ops::rms_norm_to(&x, &layer.attn_norm, c.rms_eps);
        let mut attn = m.self_attention(kv, il, &xn, n, &params, plan, acts)?;
        if let Some(w) = &layer.attn_post_norm {
            ops::rms_norm(&mut attn, w, c.rms_eps);
        }
        ops::add_assign(&mut x, &attn);

        let xn = ops::rms_norm_to(&x, &layer.ffn_norm, c.rms_eps);
        let mut ffn = m.gated_ffn(il, &xn, n, geglu, plan, acts)?;
        if let Some(w) = &layer.ffn_post_norm {
            ops::rms_norm(&mut ffn, w, c.rms_eps);
        }
        ops::add_assign(&mut x, &ffn);
    }
    Ok(x)
}
