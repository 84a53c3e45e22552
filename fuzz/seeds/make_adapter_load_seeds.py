#!/usr/bin/env python3
"""Writes the seeds of the `adapter_load` fuzz target into seeds/adapter_load/ (needs numpy
and the `gguf` package from PyPI). Each seed is the mode byte (0: PEFT safetensors, 1: PEFT
adapter_config.json, 2: GGUF LoRA) and a small valid file for the fixtures' tiny llama
(n_embd 256, 64-wide K/V)."""
import json
import os
import struct

import numpy as np
from gguf import GGUFWriter

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "adapter_load")
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(1)


def safetensors(tensors):
    header, data = {}, b""
    for name, dtype, arr in tensors:
        b = arr.tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [len(data), len(data) + len(b)]}
        data += b
    h = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(h)) + h + data


def bf16(a):
    return (a.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


p = "base_model.model.model.layers.0.self_attn."
tensors = safetensors([
    (p + "q_proj.lora_A.weight", "BF16", bf16(rng.normal(size=(1, 256)) * 0.05)),
    (p + "q_proj.lora_B.weight", "BF16", bf16(rng.normal(size=(256, 1)) * 0.05)),
    (p + "v_proj.lora_A.weight", "F16", (rng.normal(size=(1, 256)) * 0.05).astype(np.float16)),
    (p + "v_proj.lora_B.weight", "F16", (rng.normal(size=(64, 1)) * 0.05).astype(np.float16)),
])
open(os.path.join(out, "peft_tensors"), "wb").write(b"\x00" + tensors)

cfg = {"peft_type": "LORA", "r": 1, "lora_alpha": 2, "target_modules": ["q_proj"], "bias": "none",
       "use_rslora": False, "use_dora": False, "fan_in_fan_out": False, "rank_pattern": {},
       "alpha_pattern": {}, "layers_to_transform": None, "modules_to_save": None}
open(os.path.join(out, "peft_config"), "wb").write(b"\x01" + json.dumps(cfg).encode())
patterns = dict(cfg, target_modules="model\\.layers\\.0\\.self_attn\\.q_proj", use_rslora=True,
                rank_pattern={"q_proj": 1}, alpha_pattern={"q_proj": 4}, layers_to_transform=[0])
open(os.path.join(out, "peft_config_patterns"), "wb").write(b"\x01" + json.dumps(patterns).encode())

tmp = os.path.join(out, "gguf_lora.tmp")
w = GGUFWriter(tmp, "llama")
w.add_string("general.type", "adapter")
w.add_string("adapter.type", "lora")
w.add_float32("adapter.lora.alpha", 2.0)
w.add_tensor("blk.0.attn_q.weight.lora_a", (rng.normal(size=(1, 256)) * 0.05).astype(np.float32))
w.add_tensor("blk.0.attn_q.weight.lora_b", (rng.normal(size=(256, 1)) * 0.05).astype(np.float16))
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
open(os.path.join(out, "gguf_lora"), "wb").write(b"\x02" + open(tmp, "rb").read())
os.remove(tmp)
