"""Reduced precision on CPU: tiny.en --fp16 compiles, its plan keeps the sensitive ops in fp32, it passes the
fp16 parity tolerances and transcribes JFK exactly like fp32."""

from __future__ import annotations

import json
import struct

from conftest import ROOT, mwc
from test_artifact import JFK, normalize


def test_fp16_artifact(tiny_en_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp16") / "tiny.en-fp16"
    r = mwc("compile", str(tiny_en_dir), "--fp16", "-o", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    m = json.loads((out / "manifest.json").read_text())
    plan = m["precision"]
    assert plan["name"] == "fp16" and plan["weights"] == "float16" and plan["kv_cache"] == "float16"
    assert plan["residual"] == plan["layer_norm"] == plan["softmax"] == plan["mel"] == "float32"
    with open(out / "weights.safetensors", "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    assert header["encoder.blocks.0.attn.qkv.weight"]["dtype"] == "F16"
    assert header["mel_filters"]["dtype"] == "F16"  # stored small, cast to fp32 in the graph
    fp32_size = 4 * sum(int(__import__("math").prod(v["shape"])) for k, v in header.items() if k != "__metadata__")
    assert (out / "weights.safetensors").stat().st_size < 0.55 * fp32_size
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"]
    assert parity["stages"]["decoder_logits"]["max_rel"] < 2e-2 and parity["stages"]["mel"]["max_abs"] < 1e-4
    r = mwc("transcribe", str(out), str(ROOT / "examples" / "jfk.flac"))
    assert r.returncode == 0, r.stderr
    assert normalize(r.stdout) == normalize(JFK)
