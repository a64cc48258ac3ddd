"""Reduced precision on CPU: tiny.en --fp16 compiles to fp16 storage with fp32 compute (MAX 26.7's CPU fp16 kernels
accumulate in fp16), passes its compile-time parity on speech and transcribes JFK exactly like fp32; --bf16 likewise
with its CPU plan."""

from __future__ import annotations

import json

from conftest import compiled
from test_artifact import assert_transcribes_jfk

from compiler.weights import safetensors_header


def test_fp16_artifact(tiny_en_dir, tmp_path_factory):
    out = compiled("tiny-fp16", tiny_en_dir, tmp_path_factory.mktemp("fp16") / "tiny.en-fp16", "--fp16")
    m = json.loads((out / "manifest.json").read_text())
    plan = m["precision"]
    assert plan["name"] == "fp16" and plan["weights"] == "float16" and plan["kv_cache"] == "float16"
    assert plan["residual"] == plan["layer_norm"] == plan["softmax"] == plan["mel"] == "float32"
    assert plan["matmul"] == plan["conv"] == plan["logits"] == "float32"  # on the CPU fp16 is a storage precision
    header = safetensors_header(out / "weights.safetensors")[0]
    assert header["encoder.blocks.0.attn.qkv.weight"]["dtype"] == "F16"
    assert header["mel_filters"]["dtype"] == "F32"  # the mel spectrogram stays fp32, filters included
    fp32_size = 4 * sum(int(__import__("math").prod(v["shape"])) for k, v in header.items() if k != "__metadata__")
    assert (out / "weights.safetensors").stat().st_size < 0.55 * fp32_size
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] and parity["signal"].startswith("jfk")  # compile-time parity runs on real speech
    # tiny.en's weights are fp16 already (a CTranslate2 fp16 folder): storing them in fp16 loses nothing, only the
    # fp16 KV cache rounds (measured: encoder 2.7e-6, logits 3.9e-4; the fp16-accumulating plan gave 1.1e-2 on JFK)
    assert parity["stages"]["encoder"]["max_rel"] < 1e-4 and parity["stages"]["decoder_logits"]["max_rel"] < 2e-3
    assert parity["stages"]["mel"]["max_abs"] < 1e-4
    assert_transcribes_jfk(out)


def test_bf16_weights_file_reads_back_in_max(tmp_path):
    """numpy has no bfloat16: the writer stores bit patterns under BF16 tags; MAX's reader must accept the file."""
    import numpy as np
    from max.dtype import DType
    from max.graph.weights import SafetensorWeights

    from compiler.precision import plan_for
    from compiler.weights import save_weights, to_bfloat16_bits

    rng = np.random.default_rng(0)
    w = {f"t{i}": rng.standard_normal((i + 1, 7)).astype(np.float32) for i in range(40)}  # long header
    path = tmp_path / "w.safetensors"
    save_weights(w, path, plan_for("bf16", "cpu"))
    got = {k: v.data().data for k, v in SafetensorWeights([path]).items()}
    assert set(got) == set(w)
    for k, a in w.items():
        assert got[k].dtype == DType.bfloat16
        np.testing.assert_array_equal(got[k].view(DType.uint16).to_numpy(), to_bfloat16_bits(a))


def test_bf16_artifact(tiny_en_dir, tmp_path_factory):
    """bf16 on the CPU passes its own parity gate. MAX 26.7's CPU conv2d accumulates bf16 in bf16 (1.2 relative
    error on tiny.en's encoder; tests/probe_bf16_conv.py isolates it), so the CPU bf16 plan runs the two
    convolutions in fp32 on the bf16 weights."""
    out = compiled("tiny-bf16", tiny_en_dir, tmp_path_factory.mktemp("bf16") / "tiny.en-bf16", "--bf16")
    plan = json.loads((out / "manifest.json").read_text())["precision"]
    assert plan["name"] == "bf16" and plan["weights"] == plan["matmul"] == "bfloat16"  # calibration may raise others
    assert plan["conv"] == "float32"
    header = safetensors_header(out / "weights.safetensors")[0]
    assert header["encoder.conv1.weight"]["dtype"] == "BF16" and header["mel_filters"]["dtype"] == "F32"
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"]
    assert parity["stages"]["encoder"]["max_rel"] < 5e-2 and parity["stages"]["decoder_logits"]["max_rel"] < 5e-2
    assert parity["stages"]["encoder"]["cosine"] > 0.999  # bf16's gate is the cosine (measured on JFK: 0.9999)
    assert_transcribes_jfk(out)
