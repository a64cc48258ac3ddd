"""Calibration (compiler/calibrate.py): the precision emulation rounds like the stored dtypes, and the plan search
keeps the default plan when it is within budget and returns sensitive op classes to float32 when it is not."""

from __future__ import annotations

import numpy as np

from compiler.calibrate import TUNABLE, calibrate
from compiler.parity import test_signal as chirps
from compiler.precision import plan_for
from compiler.reference import NumpyWhisper, round_to
from compiler.weights import to_bfloat16_bits


def test_round_to_matches_the_stored_dtypes():
    x = np.random.default_rng(0).standard_normal(1000) * 100
    np.testing.assert_array_equal(round_to(x, "float16"), x.astype(np.float16).astype(np.float64))
    np.testing.assert_array_equal(round_to(x, "float32"), x.astype(np.float32).astype(np.float64))
    bits = (to_bfloat16_bits(x.astype(np.float32)).astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(round_to(x, "bfloat16"), bits.astype(np.float64))
    assert round_to(x, None) is x


def test_emulation_without_reduced_dtypes_is_the_reference(tiny_en_checkpoint):
    ck = tiny_en_checkpoint
    mel = np.random.default_rng(1).standard_normal((1, 80, 200)).astype(np.float32) * 0.3
    tokens = np.array([[ck.tokens.sot, 440, 1029]], dtype=np.int64)
    ref, emu = NumpyWhisper(ck), NumpyWhisper(ck, plan=plan_for("fp32", "cpu"))
    a, b = ref.encode(mel), emu.encode(mel)
    la, lb = ref.decode(tokens, a, None)[0], emu.decode(tokens, b, None)[0]
    assert np.abs(la - lb).max() / np.abs(la).max() < 1e-5  # fp32 rounding only


def test_plan_search(tiny_en_checkpoint):
    audio = [chirps(1.0)]
    default = plan_for("fp16", "gpu")  # the full fp16 plan (on the CPU fp16 computes in fp32: see below)
    kept, report = calibrate(tiny_en_checkpoint, default, 2e-2, audio, log=lambda _: None, frames=200, n_tokens=4)
    assert kept == default and report["met_budget"] and len(report["candidates"]) == 1
    err = report["candidates"][0]["logits_max_rel"]
    assert 1e-5 < err < 5e-3  # fp16 rounding, far from the budget
    raised, report = calibrate(tiny_en_checkpoint, default, 1e-9, audio, log=lambda _: None, frames=200, n_tokens=4)
    assert all(getattr(raised, c) == "float32" for c in TUNABLE) and not report["met_budget"]
    assert raised.matmul == raised.weights == "float16"  # the precision itself is never given up


def test_cpu_fp16_is_a_storage_precision():
    """MAX 26.7's CPU fp16 kernels accumulate in fp16, so on the CPU the fp16 plan stores fp16 (weights, KV cache) and
    computes in fp32; the GPU plan computes in fp16 with fp32 statistics."""
    cpu, gpu = plan_for("fp16", "cpu"), plan_for("fp16", "gpu")
    assert cpu.weights == cpu.kv_cache == gpu.weights == gpu.matmul == gpu.conv == gpu.logits == "float16"
    assert cpu.matmul == cpu.conv == cpu.logits == gpu.residual == gpu.softmax == "float32"
    assert plan_for("bf16", "cpu").matmul == "bfloat16" and plan_for("bf16", "cpu").conv == "float32"


def test_encoder_bound_scales_with_the_emulated_error():
    from compiler.parity import TOLERANCES, tolerances

    m = {"precision": {"name": "fp16"}, "device": "gpu"}
    assert tolerances(m) == TOLERANCES["fp16"]
    m["calibration"] = {"expected": {"encoder_max_rel": 1.5e-2, "cross_kv_max_rel": 1.9e-2, "logits_max_rel": 1e-3}}
    tol = tolerances(m)
    assert abs(tol["encoder_rel"] - 5.7e-2) < 1e-9 and tol["logits_rel"] == TOLERANCES["fp16"]["logits_rel"]
    m["calibration"]["expected"].update(encoder_max_rel=1e-4, cross_kv_max_rel=1e-4)
    assert tolerances(m)["encoder_rel"] == TOLERANCES["fp16"]["encoder_rel"]  # never tighter than the table


def test_eight_bit_precisions_gate_the_encoder_on_cosine():
    """bf16 and int8 encoder stages pass on direction (cosine ≥ 0.998), not on the worst element: the bf16 plan's own
    numpy emulation is 0.11 off at one element of a dev clip whose transcript is unchanged."""
    from compiler.parity import encoder_passes, tolerances

    for precision in ("bf16", "int8"):
        tol = tolerances({"precision": {"name": precision}, "device": "cpu",
                          "calibration": {"expected": {"encoder_max_rel": 0.5, "cross_kv_max_rel": 0.5}}})
        assert "encoder_rel" not in tol
        assert encoder_passes({"max_rel": 1.17, "cosine": 0.99956}, tol)  # tiny.en bf16, LJ001-0015
        assert not encoder_passes({"max_rel": 0.05, "cosine": 0.99}, tol)
    fp16 = tolerances({"precision": {"name": "fp16"}, "device": "gpu"})
    assert encoder_passes({"max_rel": 1e-2, "cosine": 0.5}, fp16)
    assert not encoder_passes({"max_rel": 3e-2, "cosine": 1.0}, fp16)
