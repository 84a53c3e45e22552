#!/usr/bin/env python3
"""Make the PEFT references for LoRA on the embedding (`embed_tokens`) and the output head (`lm_head`).

Everything in this folder is written by this one script, deterministically (torch seed 1234, CPU, float32):

  tinyllama-embed-head/        PEFT adapter A for tinyllama-a (llama arch, UNTIED head):
                               r 4, lora_alpha 8, target embed_tokens, lm_head, q_proj, v_proj, with
                               rank_pattern {"embed_tokens": 1, "lm_head": 1} and
                               alpha_pattern {"embed_tokens": 2, "lm_head": 2}, init_lora_weights=False,
                               random factors rescaled to a moderate effect
                               (saved with save_embedding_layers=False: adapter tensors only, bfloat16;
                               PEFT's default "auto" would add the full embedding and head, ~300 MB).
  gemma-embed-head/            PEFT adapter B for gemma-3-270m (head TIED to token_embd):
                               r 4, lora_alpha 8, target embed_tokens, lm_head, same rank_pattern /
                               alpha_pattern (so both modules are r 1, alpha 2); same recipe.

Ranks and scalings (scaling = lora_alpha / r, times the run's scale s):
  embed_tokens  r 1, alpha 2 (alpha_pattern)  -> scaling 2.0
  lm_head       r 1, alpha 2 (alpha_pattern)  -> scaling 2.0
  q_proj/v_proj r 4, alpha 8 (global r/alpha) -> scaling 2.0   (tinyllama only)
So every module has scaling 2.0*s; `effective_lora_scaling` in the JSONs lists the distinct values.

bfloat16: every LoRA factor is rounded to bfloat16 (cast to bf16 and back to f32 inside the PeftModel)
BEFORE any reference is computed, and adapter_model.safetensors stores these tensors as BF16 (PEFT's key
names unchanged). The computation itself is float32; the references therefore describe exactly the stored
weights. After saving, the folder is reloaded with PeftModel.from_pretrained on a fresh base and its logits
are compared with the written references (checks.json: `reload_vs_reference_max_abs_diff`, must be < 1e-4).
  tinyllama-embed-replace.json the rule for the replaced embedding (PEFT save_embedding_layers=True):
                               new token_embd = HF (= dequantized GGUF) embedding with the rows of `ids`
                               multiplied by `factor`; the head stays the original one.
  <model>__<run>__<scale>.json references in the format of shared/fixtures/reference (top20 at the
                               last prompt position, greedy 8 tokens with per-step margins) plus the
                               base model's top20 (`base_top20`) and `max_abs_logit_diff_vs_base`.
  checks.json                  the checks this script made of PEFT's semantics (embed scale, tied head,
                               save_embedding_layers key names and loading, reload == in-memory).

Sizes: the vocab-sized factors dominate (lora_embedding_A [1, vocab] and lm_head lora_B [vocab, 1], bf16),
hence rank 1 and bf16 for them: tinyllama-embed-head ~0.6 MB (vocab 151936), gemma-embed-head ~1.0 MB
(vocab 262144); the whole folder stays under 2 MB.

How the models are read: exactly as in shared/fixtures/README.md, transformers'
`AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)` (gguf-py dequantizes every tensor), float32,
attn_implementation="eager", batch 1, no padding.

Run (CPU only, ~3 minutes, ~6 GB RAM), from anywhere:
    python3 -m venv /work/oracle-venv
    /work/oracle-venv/bin/pip install torch==2.15.0 transformers==5.24.0 peft==0.21.2 gguf==0.19.0 \
        safetensors==0.8.0 numpy sentencepiece protobuf   # PyPI torch pulls CUDA wheels; unused here
    /work/oracle-venv/bin/python tests/golden/peft_embedding/make_reference.py
Environment: TINYLLAMA_GGUF (default /work/shared/fixtures/tinyllama/tinyllama-a-q8_0.gguf, or
../shared/fixtures relative to the repo), GEMMA_GGUF (default ~/.cache/lora-run/models/gemma-3-270m-q4_k_m.gguf).

Versions used for the committed files: torch 2.15.0+cu132 (run on CPU), transformers 5.24.0, peft 0.21.2,
gguf 0.19.0, safetensors 0.8.0, numpy 2.4.6, Python 3.11.7 (also written into every JSON's `versions`).
"""

import copy
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

import gguf
import peft
import safetensors
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

SEED = 1234
RANK = 4
ALPHA = 8
# the vocab-sized modules get rank 1 (size) with alpha 2, i.e. the same scaling alpha/r = 2 as the others
RANK_PATTERN = {"embed_tokens": 1, "lm_head": 1}
ALPHA_PATTERN = {"embed_tokens": 2, "lm_head": 2}
STORE_DTYPE = torch.bfloat16
GREEDY_N = 8
TARGET_MAX_DIFF = 3.0  # wanted max |Δlogit| (last position, over the prompts) of an adapter at scale 1.0
REPLACE_FACTOR = 1.5

OUT = Path(__file__).resolve().parent
REPO = OUT.parents[2]
_tl_default = Path("/work/shared/fixtures/tinyllama/tinyllama-a-q8_0.gguf")
if not _tl_default.exists():
    _tl_default = REPO.parent / "shared/fixtures/tinyllama/tinyllama-a-q8_0.gguf"
TINYLLAMA = Path(os.environ.get("TINYLLAMA_GGUF", _tl_default))
GEMMA = Path(os.environ.get("GEMMA_GGUF", Path.home() / ".cache/lora-run/models/gemma-3-270m-q4_k_m.gguf"))

TL_PROMPTS = ["The quick brown fox", "In the beginning", "def main():"]
GEMMA_PROMPTS = ["The capital of France is", "The engine room reported"]

VERSIONS = {
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "peft": peft.__version__,
    "gguf": getattr(gguf, "__version__", "0.19.0"),
    "safetensors": safetensors.__version__,
    "numpy": np.__version__,
    "python": sys.version.split()[0],
}

torch.set_grad_enabled(False)


def load(path: Path):
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    return tok, model


def last_logits(model, ids):
    return model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].float()


def top20(logits):
    v, i = torch.topk(logits, 20)
    return [[int(a), float(b)] for a, b in zip(i.tolist(), v.tolist())]


def greedy(model, tok, ids, n=GREEDY_N):
    """Pure argmax with the KV cache; EOS is not a stop."""
    out = model(input_ids=torch.tensor([ids]), use_cache=True)
    past, logits = out.past_key_values, out.logits[0, -1]
    new, top1, margin = [], [], []
    for _ in range(n):
        v, i = torch.topk(logits, 2)
        nxt = int(i[0])
        new.append(nxt)
        top1.append(float(v[0]))
        margin.append(float(v[0] - v[1]))
        out = model(input_ids=torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
        past, logits = out.past_key_values, out.logits[0, -1]
    eos = tok.eos_token_id
    return {
        "new_ids": new,
        "text": tok.decode(new),
        "text_skip_special": tok.decode(new, skip_special_tokens=True),
        "first_eos_index": new.index(eos) if eos in new else None,
        "step_top1_logit": top1,
        "step_top1_top2_margin": margin,
        "min_margin": min(margin),
    }


def lora_layers(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def set_scale(model, s):
    for _, m in lora_layers(model):
        m.set_scale("default", s)


def round_to_store_dtype_(t):
    """In place: round an f32 tensor to the values it has once stored as bfloat16."""
    t.copy_(t.to(STORE_DTYPE).to(t.dtype))
    return t


def round_lora_params_(model):
    for n, p in model.named_parameters():
        if "lora_" in n:
            round_to_store_dtype_(p.data)


def scalings(model):
    """The distinct effective scalings (s*alpha/r) of the LoRA layers."""
    return sorted({float(m.scaling["default"]) for _, m in lora_layers(model)})


def scalings_by_module(model):
    return {n: [int(m.r["default"]), float(m.lora_alpha["default"]), float(m.scaling["default"])]
            for n, m in lora_layers(model)}


def delta_of(m):
    """ΔW of one LoRA layer in HF layout [out, in] (for an embedding: [vocab, dim]), scaling included."""
    return m.get_delta_weight("default")


def rescale_adapter(pm, prompts_ids, base_logits):
    """Make the random (init_lora_weights=False) factors moderate: first give every module the same
    relative size rms(ΔW)/rms(W) = rel by scaling its B factor, then tune rel (3 fixed-point steps) so
    that the largest |Δlogit| at the last position over the prompts is ~TARGET_MAX_DIFF. Every factor is
    kept rounded to bfloat16 (A once here, B at every rescale), so the final effect is that of the stored
    weights."""
    mods = lora_layers(pm)
    round_lora_params_(pm)

    def b_param(m):
        return m.lora_embedding_B["default"] if "default" in m.lora_embedding_B else m.lora_B["default"].weight

    orig_b = {n: b_param(m).data.clone() for n, m in mods}
    unit = {}
    for n, m in mods:
        w = m.get_base_layer().weight
        unit[n] = (w.pow(2).mean().sqrt() / delta_of(m).pow(2).mean().sqrt()).item()

    def apply(rel):
        for n, m in mods:
            b_param(m).data.copy_(orig_b[n] * (unit[n] * rel))
            round_to_store_dtype_(b_param(m).data)

    def effect():
        return max((last_logits(pm, ids) - b).abs().max().item() for ids, b in zip(prompts_ids, base_logits))

    rel = 0.05
    for _ in range(3):
        apply(rel)
        e = effect()
        rel = rel * TARGET_MAX_DIFF / e
    apply(rel)
    per_module = {}
    for n, m in mods:
        w = m.get_base_layer().weight
        per_module[n] = (delta_of(m).pow(2).mean().sqrt() / w.pow(2).mean().sqrt()).item()
    return {"rel_rms": rel, "max_abs_logit_diff_vs_base": effect(), "rms_delta_over_rms_base": per_module}


def group_effects(model, prompts_ids, base_logits, groups):
    """max |Δlogit| vs base (last position) with only the LoRA layers whose name contains one of the
    group's substrings active (the others' scaling set to 0); scale 1.0 restored afterwards."""
    out = {}
    for gname, subs in groups.items():
        for n, m in lora_layers(model):
            m.set_scale("default", 1.0 if any(x in n for x in subs) else 0.0)
        out[gname] = max((last_logits(model, i) - b).abs().max().item() for i, b in zip(prompts_ids, base_logits))
    set_scale(model, 1.0)
    return out


def st_keys(path):
    with safe_open(str(path), "pt") as f:
        return {k: [list(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()] for k in f.keys()}


def run_refs(model, tok, prompts, base, meta, fname, extra_per_prompt=None):
    res = dict(meta)
    res["versions"] = VERSIONS
    res["dtype"] = "float32"
    res["attn_implementation"] = "eager"
    res["greedy_new_tokens"] = GREEDY_N
    res["greedy_note"] = "pure argmax, KV cache, EOS not a stop condition"
    res["prompts"] = []
    worst = 0.0
    logits_out = []
    for k, p in enumerate(prompts):
        ids = tok(p).input_ids
        lg = last_logits(model, ids)
        logits_out.append(lg)
        d = (lg - base[k]["logits"]).abs().max().item()
        worst = max(worst, d)
        entry = {
            "prompt": p,
            "input_ids": ids,
            "input_tokens": tok.convert_ids_to_tokens(ids),
            "logits_shape": [int(lg.shape[0])],
            "top20": top20(lg),
            "base_top20": base[k]["top20"],
            "max_abs_logit_diff_vs_base": d,
            "greedy": greedy(model, tok, ids),
        }
        if extra_per_prompt:
            entry.update(extra_per_prompt(k, lg))
        res["prompts"].append(entry)
    res["max_abs_logit_diff_vs_base_all_prompts"] = worst
    (OUT / fname).write_text(json.dumps(res, indent=1) + "\n")
    return logits_out


def base_run(model, tok, prompts):
    out = []
    for p in prompts:
        ids = tok(p).input_ids
        lg = last_logits(model, ids)
        out.append({"ids": ids, "logits": lg, "top20": top20(lg)})
    return out


def save_adapter(pm, folder, base_name):
    pm.peft_config["default"].base_model_name_or_path = base_name
    pm.save_pretrained(str(folder), save_embedding_layers=False, safe_serialization=True)
    # PEFT keeps target_modules as a set: its saved order depends on the hash seed; sort it for a stable file
    cfg_path = folder / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["target_modules"] = sorted(cfg["target_modules"])
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    (folder / "README.md").unlink(missing_ok=True)  # PEFT's stock model card (holds local paths)
    # store the (already bf16-valued) tensors as BF16, keys and metadata unchanged: the cast is exact
    st = folder / "adapter_model.safetensors"
    with safe_open(str(st), "pt") as f:
        md = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    out = {}
    for k, t in tensors.items():
        c = t.to(STORE_DTYPE)
        assert torch.equal(c.to(t.dtype), t), f"{k} is not bf16-valued"
        out[k] = c.contiguous()
    save_file(out, str(st), metadata=md)


def reload_vs_reference(base, folder, tok, prompts, fname):
    """Reload the saved folder on a fresh base and compare its last-position logits with the top20 written
    to the reference file `fname` (scale 1.0); returns the max |diff| over prompts and top20 entries."""
    rp = PeftModel.from_pretrained(copy.deepcopy(base), str(folder))
    rp.eval()
    ref = json.loads((OUT / fname).read_text())
    worst = 0.0
    for p, e in zip(prompts, ref["prompts"]):
        lg = last_logits(rp, tok(p).input_ids)
        worst = max(worst, max(abs(lg[i].item() - v) for i, v in e["top20"]))
    dtypes = sorted({str(pp.dtype) for n, pp in rp.named_parameters() if "lora_" in n})
    print(f"reload {folder.name} vs {fname}: max |diff| = {worst:.3g} (lora param dtypes after load: {dtypes})")
    assert worst < 1e-4, worst
    del rp
    return worst


checks = {"versions": VERSIONS}


# ---------------------------------------------------------------- tinyllama (untied head)
def tinyllama():
    tok, base = load(TINYLLAMA)
    assert base.lm_head.weight.data_ptr() != base.model.embed_tokens.weight.data_ptr()
    b = base_run(base, tok, TL_PROMPTS)
    ids = [x["ids"] for x in b]

    torch.manual_seed(SEED)
    cfg = LoraConfig(
        r=RANK,
        lora_alpha=ALPHA,
        lora_dropout=0.0,
        target_modules=["embed_tokens", "lm_head", "q_proj", "v_proj"],
        rank_pattern=RANK_PATTERN,
        alpha_pattern=ALPHA_PATTERN,
        init_lora_weights=False,
        bias="none",
        task_type="CAUSAL_LM",
    )
    pm = get_peft_model(copy.deepcopy(base), cfg)
    pm.eval()
    tune = rescale_adapter(pm, ids, [x["logits"] for x in b])
    folder = OUT / "tinyllama-embed-head"
    save_adapter(pm, folder, "tinyllama-a (shared/fixtures/tinyllama/tinyllama-a-q8_0.gguf, dequantized by transformers)")
    in_mem = [last_logits(pm, i) for i in ids]

    # reload from disk on a fresh base: the references are made with what the files say
    re = PeftModel.from_pretrained(copy.deepcopy(base), str(folder))
    re.eval()
    reload_diff = max((last_logits(re, i) - l).abs().max().item() for i, l in zip(ids, in_mem))
    checks["tinyllama_adapter"] = {
        "keys": st_keys(folder / "adapter_model.safetensors"),
        "tuning": tune,
        "reload_vs_in_memory_max_abs_diff": reload_diff,
        "n_lora_layers": len(lora_layers(re)),
        "r_alpha_scaling_by_module": scalings_by_module(re),
        "max_abs_logit_diff_vs_base_by_group": group_effects(
            re, ids, [x["logits"] for x in b],
            {"embed_tokens_only": ["embed_tokens"], "lm_head_only": ["lm_head"], "q_v_only": ["q_proj", "v_proj"]}),
    }
    meta = {
        "model": "tinyllama-a",
        "gguf": "shared/fixtures/tinyllama/tinyllama-a-q8_0.gguf",
        "adapter_dir": "tinyllama-embed-head",
        "n_lora_layers": len(lora_layers(re)),
        "scale_method": "peft LoraLayer.set_scale('default', s) on every LoRA layer (Embedding included), "
        "i.e. scaling = s*alpha/r",
    }
    for s in (1.0, 0.5):
        set_scale(re, s)
        run_refs(re, tok, TL_PROMPTS, b, {**meta, "run": "embed-head", "scale": s,
                                           "effective_lora_scaling": scalings(re)},
                 f"tinyllama-a__embed-head__{s}.json")
    set_scale(re, 1.0)
    checks["tinyllama_adapter"]["reload_vs_reference_max_abs_diff"] = reload_vs_reference(
        base, folder, tok, TL_PROMPTS, "tinyllama-a__embed-head__1.0.json")
    adapter_only = {i: last_logits(re, x) for i, x in enumerate(ids)}

    # ---- embedding replacement (save_embedding_layers=True)
    rep_ids = sorted({t for x in ids for t in x})
    emb0 = base.model.embed_tokens.weight.detach().clone()
    head0 = base.lm_head.weight.detach().clone()
    new_emb = emb0.clone()
    new_emb[rep_ids] *= REPLACE_FACTOR
    rule = {
        "model": "tinyllama-a",
        "gguf": "shared/fixtures/tinyllama/tinyllama-a-q8_0.gguf",
        "adapter_dir": "tinyllama-embed-head",
        "rule": "new token_embd (HF embed_tokens.weight, [vocab, hidden]) = the dequantized GGUF token_embd "
        "(exactly transformers' weights) with every row whose token id is in `ids` multiplied by `factor` "
        "(in float32); every other row unchanged; the output head (`output`) unchanged",
        "ids": rep_ids,
        "ids_are": "the union of the token ids of the three tinyllama prompts (no special tokens)",
        "factor": REPLACE_FACTOR,
        "peft_keys_in_saved_file": None,
        "reference": "tinyllama-a__embed-head-replaced-embd__1.0.json",
    }
    with tempfile.TemporaryDirectory() as tmp:
        re.base_model.model.model.embed_tokens.base_layer.weight.data.copy_(new_emb)
        re.save_pretrained(tmp, save_embedding_layers=True, safe_serialization=True)
        re.base_model.model.model.embed_tokens.base_layer.weight.data.copy_(emb0)  # restore
        keys = st_keys(Path(tmp) / "adapter_model.safetensors")
        size = os.path.getsize(Path(tmp) / "adapter_model.safetensors")
        with safe_open(str(Path(tmp) / "adapter_model.safetensors"), "pt") as f:
            saved_emb = f.get_tensor("base_model.model.model.embed_tokens.base_layer.weight")
            saved_head = f.get_tensor("base_model.model.lm_head.base_layer.weight") if \
                "base_model.model.lm_head.base_layer.weight" in f.keys() else None
        fresh = copy.deepcopy(base)
        rp = PeftModel.from_pretrained(fresh, tmp)
        rp.eval()
    loaded_emb = rp.base_model.model.model.embed_tokens.base_layer.weight
    loaded_head = rp.base_model.model.lm_head.base_layer.weight
    rule["peft_keys_in_saved_file"] = {k: v for k, v in keys.items()}
    checks["tinyllama_save_embedding_layers"] = {
        "saved_file_keys": keys,
        "saved_file_bytes": size,
        "saved_embedding_equals_rule": bool(torch.equal(saved_emb, new_emb)),
        "saved_head_equals_original_head": None if saved_head is None else bool(torch.equal(saved_head, head0)),
        "loaded_embedding_equals_rule": bool(torch.equal(loaded_emb, new_emb)),
        "loaded_head_equals_original_head": bool(torch.equal(loaded_head, head0)),
        "loaded_lora_equals_adapter_files": bool(all(
            torch.equal(p, dict(re.named_parameters())[n]) for n, p in rp.named_parameters() if "lora_" in n)),
    }
    (OUT / "tinyllama-embed-replace.json").write_text(json.dumps(rule, indent=1) + "\n")
    run_refs(rp, tok, TL_PROMPTS, b,
             {**meta, "run": "embed-head-replaced-embd", "scale": 1.0, "effective_lora_scaling": scalings(rp),
              "embedding_replacement": "tinyllama-embed-replace.json",
              "how_made": "adapter A plus the replaced embedding saved with save_pretrained(save_embedding_layers="
              "True) into a temp dir, reloaded with PeftModel.from_pretrained on a fresh base"},
             "tinyllama-a__embed-head-replaced-embd__1.0.json",
             extra_per_prompt=lambda k, lg: {
                 "max_abs_logit_diff_vs_adapter_only": (lg - adapter_only[k]).abs().max().item()})
    del rp, re, pm, base


# ---------------------------------------------------------------- gemma (tied head, scaled embedding)
def gemma():
    tok, base = load(GEMMA)
    emb_mod = base.model.embed_tokens
    assert base.lm_head.weight.data_ptr() == emb_mod.weight.data_ptr(), "expected a tied head"
    b = base_run(base, tok, GEMMA_PROMPTS)
    ids = [x["ids"] for x in b]
    w0 = emb_mod.weight.detach().clone()

    torch.manual_seed(SEED + 1)
    cfg = LoraConfig(
        r=RANK,
        lora_alpha=ALPHA,
        lora_dropout=0.0,
        target_modules=["embed_tokens", "lm_head"],
        rank_pattern=RANK_PATTERN,
        alpha_pattern=ALPHA_PATTERN,
        init_lora_weights=False,
        bias="none",
        task_type="CAUSAL_LM",
    )
    pm = get_peft_model(copy.deepcopy(base), cfg)
    pm.eval()
    tune = rescale_adapter(pm, ids, [x["logits"] for x in b])
    folder = OUT / "gemma-embed-head"
    save_adapter(pm, folder, "gemma-3-270m (gemma-3-270m-q4_k_m.gguf, dequantized by transformers)")
    in_mem = [last_logits(pm, i) for i in ids]

    re = PeftModel.from_pretrained(copy.deepcopy(base), str(folder))
    re.eval()
    reload_diff = max((last_logits(re, i) - l).abs().max().item() for i, l in zip(ids, in_mem))

    # --- semantics checks on the reloaded model
    inner = re.base_model.model
    emb = inner.model.embed_tokens
    head = inner.lm_head
    sc_e, sc_h = emb.scaling["default"], head.scaling["default"]
    A_e, B_e = emb.lora_embedding_A["default"], emb.lora_embedding_B["default"]  # [r, vocab], [dim, r]
    A_h, B_h = head.lora_A["default"].weight, head.lora_B["default"].weight  # [r, dim], [vocab, r]
    x = torch.tensor([ids[0]])
    got = emb(x)[0]
    es = float(emb.get_base_layer().embed_scale)
    lora_rows = A_e.T[x[0]] @ B_e.T * sc_e  # [seq, dim]
    with_scale = (w0[x[0]] + lora_rows) * torch.tensor(es, dtype=torch.float32)
    without_scale = w0[x[0]] * torch.tensor(es, dtype=torch.float32) + lora_rows
    # head: capture the head input, compare to h W^T + s (h A^T) B^T with W the shared (unmodified) weight
    cap = {}
    hk = head.register_forward_hook(lambda m, i, o: cap.update(h=i[0][0, -1], o=o[0, -1]))
    re(input_ids=x, use_cache=False)
    hk.remove()
    h = cap["h"]
    manual_head = h @ w0.T + ((h @ A_h.T) @ B_h.T) * sc_h
    base_head_only = h @ w0.T
    checks["gemma_adapter"] = {
        "keys": st_keys(folder / "adapter_model.safetensors"),
        "tuning": tune,
        "reload_vs_in_memory_max_abs_diff": reload_diff,
        "r_alpha_scaling_by_module": scalings_by_module(re),
        "max_abs_logit_diff_vs_base_by_group": group_effects(
            re, ids, [x["logits"] for x in b], {"embed_tokens_only": ["embed_tokens"], "lm_head_only": ["lm_head"]}),
        "embed_scale": es,
        "embed_scale_is_sqrt_hidden": abs(es - float(np.sqrt(base.config.hidden_size))) < 1e-4,
        "embedding_output_vs_(W[x]+s*A^T[x]B^T)*embed_scale_max_abs_diff": (got - with_scale).abs().max().item(),
        "embedding_output_vs_W[x]*embed_scale+s*A^T[x]B^T_max_abs_diff": (got - without_scale).abs().max().item(),
        "head_base_weight_is_embedding_weight_same_storage":
            head.get_base_layer().weight.data_ptr() == emb.get_base_layer().weight.data_ptr(),
        "shared_weight_unchanged_by_peft": bool(torch.equal(emb.get_base_layer().weight, w0)),
        "logits_vs_hW^T+s*(hA^T)B^T_max_abs_diff": (cap["o"] - manual_head).abs().max().item(),
        "logits_vs_hW^T_(head_lora_ignored)_max_abs_diff": (cap["o"] - base_head_only).abs().max().item(),
    }
    # merge on a tied model: PEFT warns; merging writes both deltas into the ONE shared tensor
    mm = copy.deepcopy(re)
    with warnings.catch_warnings(record=True) as wlist:
        warnings.simplefilter("always")
        merged = mm.merge_and_unload()
    mdiff = max((last_logits(merged, i) - l).abs().max().item() for i, l in zip(ids, in_mem))
    checks["gemma_merge_and_unload_on_tied_head"] = {
        "max_abs_logit_diff_merged_vs_unmerged": mdiff,
        "still_tied_after_merge": merged.lm_head.weight.data_ptr() == merged.model.embed_tokens.weight.data_ptr(),
        "warnings": sorted({str(w.message)[:160] for w in wlist}),
    }
    del mm, merged

    meta = {
        "model": "gemma3-270m",
        "gguf_file": "gemma-3-270m-q4_k_m.gguf",
        "adapter_dir": "gemma-embed-head",
        "n_lora_layers": len(lora_layers(re)),
        "embed_scale": es,
        "peft_semantics": "embedding: out = (W_emb[x] + s*A_e^T[x] B_e^T) * embed_scale (PEFT multiplies the LoRA "
        "rows by the base layer's embed_scale too); head: logits = h W_emb^T + s*(h A_h^T) B_h^T with W_emb the "
        "shared, unmodified tied weight (the head LoRA touches only the head, the embedding LoRA only the "
        "embedding lookup)",
        "scale_method": "peft LoraLayer.set_scale('default', s) on every LoRA layer, i.e. scaling = s*alpha/r",
    }
    run_refs(re, tok, GEMMA_PROMPTS, b, {**meta, "run": "embed-head", "scale": 1.0,
                                          "effective_lora_scaling": scalings(re)},
             "gemma3-270m__embed-head__1.0.json")
    checks["gemma_adapter"]["reload_vs_reference_max_abs_diff"] = reload_vs_reference(
        base, folder, tok, GEMMA_PROMPTS, "gemma3-270m__embed-head__1.0.json")


if __name__ == "__main__":
    torch.manual_seed(SEED)
    tinyllama()
    gemma()
    (OUT / "checks.json").write_text(json.dumps(checks, indent=1) + "\n")
    print(json.dumps(checks, indent=1))
