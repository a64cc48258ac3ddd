"""int8 weight-only quantization: per-output-channel symmetric quantization is exact to half a step, the tiny.en
--int8 artifact stores int8 projections with fp32 scales, passes its parity bounds and transcribes JFK like fp32."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import compiled
from test_artifact import assert_transcribes_jfk

from compiler.weights import safetensors_header


def test_quantize_int8_per_output_channel():
    from compiler.precision import quant_axis, quantized_weight
    from compiler.weights import quantize_int8

    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 5)).astype(np.float32) * np.arange(1, 7, dtype=np.float32)[:, None]
    w[2] = 0.0
    q, s = quantize_int8(w, 0)
    assert q.dtype == np.int8 and s.shape == (6,) and s.dtype == np.float32
    assert np.abs(q).max() == 127 and s[2] == 1.0 and not q[2].any()
    assert np.all(np.abs(q * s[:, None] - w) <= s[:, None] / 2 + 1e-7)
    conv = rng.standard_normal((1, 3, 4, 7)).astype(np.float32)
    assert quant_axis("encoder.conv1.weight", 4) == 3 and quant_axis("decoder.token_embedding.weight", 2) == 0
    q, s = quantize_int8(conv, 3)
    assert s.shape == (7,) and np.all(np.abs(q * s - conv) <= s / 2 + 1e-7)
    assert quantized_weight("encoder.blocks.0.attn.qkv.weight", (1152, 384))
    assert not quantized_weight("encoder.blocks.0.attn.qkv.bias", (1152,))
    assert not quantized_weight("encoder.positional_embedding", (1500, 384))
    assert not quantized_weight("mel_filters", (80, 201))


@pytest.mark.slow
def test_int8_artifact(tiny_en_dir, tmp_path_factory):
    out = compiled("tiny-int8", tiny_en_dir, tmp_path_factory.mktemp("int8") / "tiny.en-int8", "--int8")
    plan = json.loads((out / "manifest.json").read_text())["precision"]
    assert plan["name"] == "int8" and plan["quantized"] == "int8" and plan["matmul"] == "float32"
    header = safetensors_header(out / "weights.safetensors")[0]
    for name in ("encoder.blocks.0.attn.qkv.weight", "encoder.conv1.weight", "decoder.token_embedding.weight",
                 "decoder.blocks.0.cross_attn.kv.weight", "decoder.blocks.3.mlp.2.weight"):
        assert header[name]["dtype"] == "I8", name
        assert header[name + ".scale"]["dtype"] == "F32", name
    assert header["encoder.blocks.0.attn.qkv.bias"]["dtype"] == "F32"
    assert header["mel_filters"]["dtype"] == "F32"
    n_params = sum(int(np.prod(v["shape"])) for k, v in header.items()
                   if k != "__metadata__" and not k.endswith(".scale"))
    assert (out / "weights.safetensors").stat().st_size < 0.35 * 4 * n_params
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"], parity
    assert parity["stages"]["mel"]["max_abs"] < 1e-4
    assert parity["stages"]["decoder_logits"]["max_rel"] > 1e-6  # the weights really are quantized
    assert_transcribes_jfk(out)
