//! Hugging Face (PEFT) module names → llama.cpp GGUF tensor names, per architecture, and the
//! row permutation llama.cpp's converter applies to llama's q/k weights.
//!
//! The names are those of transformers' `LlamaForCausalLM`, `Qwen2ForCausalLM`,
//! `Qwen3ForCausalLM` and `Gemma3ForCausalLM` (which all share them) and the tensor names of
//! llama.cpp's `convert_hf_to_gguf.py` (`gguf-py/gguf/tensor_mapping.py`):
//!
//! | PEFT module                               | GGUF tensor                          |
//! |-------------------------------------------|--------------------------------------|
//! | `model.layers.{i}.self_attn.q_proj`       | `blk.{i}.attn_q.weight`              |
//! | `model.layers.{i}.self_attn.k_proj`       | `blk.{i}.attn_k.weight`              |
//! | `model.layers.{i}.self_attn.v_proj`       | `blk.{i}.attn_v.weight`              |
//! | `model.layers.{i}.self_attn.o_proj`       | `blk.{i}.attn_output.weight`         |
//! | `model.layers.{i}.mlp.gate_proj`          | `blk.{i}.ffn_gate.weight`            |
//! | `model.layers.{i}.mlp.up_proj`            | `blk.{i}.ffn_up.weight`              |
//! | `model.layers.{i}.mlp.down_proj`          | `blk.{i}.ffn_down.weight`            |
//! | `lm_head`                                 | `output.weight` (also when tied)     |
//! | `model.embed_tokens`                      | the input embedding (embedding LoRA) |
//!
//! Gemma 3's multimodal checkpoints nest the language model (`model.language_model.` in
//! transformers ≥ 4.52, `language_model.model.` before); those prefixes are accepted for
//! gemma3 and read as `model.`.

use crate::model::{Arch, ModelConfig};

/// Where a PEFT module's LoRA goes in the GGUF model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModuleTarget {
    /// A linear weight, by its GGUF name. `permute_heads` is `Some(n)` for llama's q (n =
    /// n_head) and k (n = n_head_kv), whose rows llama.cpp's converter permuted: `lora_B` (and
    /// a DoRA magnitude) must get the same row permutation ([`permute_rows`]).
    Linear {
        tensor: String,
        layer: Option<usize>,
        permute_heads: Option<usize>,
    },
    /// The input embedding (`token_embd`).
    Embedding,
}

/// The seven projections of a block: submodule path under `model.layers.{i}.`, GGUF name.
pub const BLOCK_PROJECTIONS: [(&str, &str); 7] = [
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

/// The short names PEFT's `target_modules="all-linear"` expands to for these architectures:
/// every `nn.Linear` except the output layer (`_maybe_include_all_linear_layers`).
pub const ALL_LINEAR: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// The name transformers gives a module of `arch`, with gemma3's multimodal nesting removed.
fn canonical(arch: Arch, module: &str) -> std::borrow::Cow<'_, str> {
    if arch == Arch::Gemma3 {
        for (prefix, to) in [
            ("model.language_model.", "model."),
            ("language_model.model.", "model."),
            ("language_model.", ""),
        ] {
            if let Some(rest) = module.strip_prefix(prefix) {
                return format!("{to}{rest}").into();
            }
        }
    }
    module.into()
}

/// Map a PEFT module name (without PEFT's `base_model.model.` prefix, e.g.
/// `model.layers.3.mlp.down_proj`) of a model of `config.arch` to its GGUF target; `None`
/// when the name is no LoRA-capable module of that architecture. Layer indices are not
/// checked against `n_layer` here.
pub fn map_module(config: &ModelConfig, module: &str) -> Option<ModuleTarget> {
    map_module_of(config.arch, config.n_head, config.n_head_kv, module)
}

fn map_module_of(arch: Arch, n_head: usize, n_head_kv: usize, module: &str) -> Option<ModuleTarget> {
    let module = canonical(arch, module);
    let module = module.as_ref();
    match module {
        "lm_head" => {
            return Some(ModuleTarget::Linear {
                tensor: "output.weight".into(),
                layer: None,
                permute_heads: None,
            });
        }
        "model.embed_tokens" => return Some(ModuleTarget::Embedding),
        _ => {}
    }
    let rest = module.strip_prefix("model.layers.")?;
    let (index, sub) = rest.split_once('.')?;
    // A module index as PyTorch prints it: decimal, no sign, no leading zero.
    let layer: usize = index.parse().ok().filter(|i: &usize| i.to_string() == index)?;
    let &(_, gguf) = BLOCK_PROJECTIONS.iter().find(|(hf, _)| *hf == sub)?;
    // llama.cpp's LlamaModel.modify_tensors permutes q with n_head and k with n_head_kv.
    let permute_heads = match (arch, gguf) {
        (Arch::Llama, "attn_q") => Some(n_head),
        (Arch::Llama, "attn_k") => Some(n_head_kv),
        _ => None,
    };
    Some(ModuleTarget::Linear {
        tensor: format!("blk.{layer}.{gguf}.weight"),
        layer: Some(layer),
        permute_heads,
    })
}

/// Every LoRA-capable module of a model with `n_layer` blocks, by its PEFT name, in forward order
/// (embedding, the blocks' projections, the head).
pub fn peft_modules(n_layer: usize) -> Vec<String> {
    let mut out = vec!["model.embed_tokens".to_string()];
    for i in 0..n_layer {
        out.extend(BLOCK_PROJECTIONS.iter().map(|(hf, _)| format!("model.layers.{i}.{hf}")));
    }
    out.push("lm_head".to_string());
    out
}

/// llama.cpp's `LlamaModel.permute` (convert_hf_to_gguf.py) on the rows of a row-major
/// `[n_rows, n_cols]` matrix: `w.reshape(n_head, 2, n_rows / n_head / 2, n_cols)
/// .swapaxes(1, 2).reshape(n_rows, n_cols)`, which turns HF's rotate-half rope layout into
/// ggml's interleaved one. Row `h·2·half + j·2 + s` of the result is row `h·2·half + s·half + j`
/// of the input (`half = n_rows / n_head / 2`).
///
/// `None` when `n_rows` is not a multiple of `2·n_head` or the sizes do not match `data`.
pub fn permute_rows(data: &[f32], n_rows: usize, n_cols: usize, n_head: usize) -> Option<Vec<f32>> {
    let group = n_head.checked_mul(2)?;
    if group == 0 || !n_rows.is_multiple_of(group) || n_rows.checked_mul(n_cols)? != data.len() {
        return None;
    }
    let half = n_rows / group;
    let mut out = Vec::with_capacity(data.len());
    for h in 0..n_head {
        for j in 0..half {
            for s in 0..2 {
                let src = h * 2 * half + s * half + j;
                out.extend_from_slice(&data[src * n_cols..(src + 1) * n_cols]);
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(arch: Arch, module: &str) -> Option<ModuleTarget> {
        map_module_of(arch, 4, 2, module)
    }

    #[test]
    fn names() {
        let lin = |t: &str| {
            Some(ModuleTarget::Linear {
                tensor: t.into(),
                layer: Some(1),
                permute_heads: None,
            })
        };
        assert_eq!(
            map(Arch::Qwen2, "model.layers.1.self_attn.o_proj"),
            lin("blk.1.attn_output.weight")
        );
        assert_eq!(
            map(Arch::Qwen2, "model.layers.1.mlp.gate_proj"),
            lin("blk.1.ffn_gate.weight")
        );
        assert_eq!(map(Arch::Qwen2, "model.embed_tokens"), Some(ModuleTarget::Embedding));
        assert_eq!(
            map(Arch::Qwen2, "lm_head"),
            Some(ModuleTarget::Linear {
                tensor: "output.weight".into(),
                layer: None,
                permute_heads: None
            })
        );
        for bad in [
            "model.layers.01.mlp.up_proj",
            "model.layers.x.mlp.up_proj",
            "model.norm",
            "model.layers.1.mlp",
            "layers.1.mlp.up_proj",
        ] {
            assert_eq!(map(Arch::Qwen2, bad), None, "{bad}");
        }
        // gemma3's multimodal nesting, only for gemma3.
        assert_eq!(
            map(Arch::Gemma3, "model.language_model.layers.1.mlp.up_proj"),
            lin("blk.1.ffn_up.weight")
        );
        assert_eq!(map(Arch::Qwen2, "model.language_model.layers.1.mlp.up_proj"), None);
        assert_eq!(
            map(Arch::Llama, "model.layers.0.self_attn.k_proj"),
            Some(ModuleTarget::Linear {
                tensor: "blk.0.attn_k.weight".into(),
                layer: Some(0),
                permute_heads: Some(2)
            })
        );
        assert_eq!(peft_modules(2).len(), 2 + 2 * 7);
    }

    #[test]
    fn permutation_matches_numpy() {
        // numpy: np.arange(8).reshape(2, 2, 2, 1).swapaxes(1, 2).reshape(8) = [0 2 1 3 4 6 5 7]
        let rows: Vec<f32> = (0..8).map(|i| i as f32).collect();
        assert_eq!(
            permute_rows(&rows, 8, 1, 2).unwrap(),
            vec![0., 2., 1., 3., 4., 6., 5., 7.]
        );
        // n_head = 1, two columns: rows [0 1 2 3] → [0 2 1 3]
        let m: Vec<f32> = (0..8).map(|i| i as f32).collect();
        assert_eq!(permute_rows(&m, 4, 2, 1).unwrap(), vec![0., 1., 4., 5., 2., 3., 6., 7.]);
        assert!(permute_rows(&m, 4, 2, 3).is_none());
        assert!(permute_rows(&m, 4, 3, 1).is_none());
    }
}
