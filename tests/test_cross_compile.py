"""Cross-compiling a GPU artifact where there is no GPU (``mwc compile --device gpu --target cuda:sm_90a``, MAX's
compile-only mode): the GPU graphs and mwc's Mojo GPU kernels compile here, in CI, for an H100/H200, and the
artifact is whole (manifest, checksums, graph signatures) with its parity check left to ``mwc verify`` on the GPU."""

from __future__ import annotations

import json

import pytest
from conftest import mwc
from helpers import SMALL, accelerators, random_weights, write_hf_folder
from test_errors import assert_clean_failure


def test_cross_compile_for_an_h100(tmp_path):
    ck = write_hf_folder(tmp_path / "ck", SMALL, random_weights(SMALL))
    out = tmp_path / "art"
    r = mwc("compile", str(ck), "--fp16", "--device", "gpu", "--target", "cuda:sm_90a", "--no-calibrate",
            "-o", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "deferred" in r.stdout and "mwc verify" in r.stdout
    m = json.loads((out / "manifest.json").read_text())
    assert m["device"] == "gpu" and m["precision"]["name"] == "fp16"
    assert m["attention"] == "blas"  # the GPU default: the encoder's attention through cuBLAS (ops/attention.mojo)
    assert m["target"]["accelerator"] == "sm_90a" and m["target"]["cross_compiled"] is True
    assert m["target"]["cpu"] in ("x86-64-v3", "generic")
    assert set(m["graphs"]) == {"mel", "encoder", "decoder", "step", "kv_gather", "alignment"}
    step = m["graphs"]["step"]["inputs"]
    assert [i["dtype"] for i in step[6:8]] == ["DType.float16"] * 2  # the KV cache buffers, fp16 on the GPU
    assert step[7]["shape"] == [SMALL.n_text_layer, None, SMALL.n_text_head, SMALL.n_text_ctx,
                                SMALL.n_text_state // SMALL.n_text_head]
    assert [(i["dtype"], i["shape"]) for i in step[8:]] == [  # each row's token and log-prob history
        ("DType.int64", [None, SMALL.n_text_ctx + 1]), ("DType.float32", [None, SMALL.n_text_ctx + 1])]
    assert not (out / "parity.json").exists()  # nothing ran here: `mwc verify` on the GPU writes it
    assert m["serialization"]["files"] == {"model.mef": ["mel", "encoder", "step"],
                                           "extras.mef": ["decoder", "kv_gather", "alignment"]}
    assert all((out / f).stat().st_size > 1_000_000 for f in m["serialization"]["files"])
    r = mwc("inspect", str(out), "--check")
    assert r.returncode == 0 and "gpu (sm_90a)" in r.stdout, r.stdout
    assert f"{m['target']['cpu']}, cross-compiled" in r.stdout, r.stdout
    assert "not checked yet" in r.stdout and "all" in r.stdout.splitlines()[-1]
    if accelerators() == 0:
        r = mwc("transcribe", str(out), str(tmp_path / "none.wav"))
        assert r.returncode != 0 and "no accelerator" in r.stderr


def test_target_needs_the_gpu_device(tmp_path):
    ck = write_hf_folder(tmp_path / "ck", SMALL, random_weights(SMALL))
    out = tmp_path / "out"
    r = mwc("compile", str(ck), "--target", "cuda:sm_90a", "-o", str(out))
    assert_clean_failure(r, out, "--target cuda:sm_90a", "--device gpu")


@pytest.mark.parametrize("spec", ["sm_90a", "cuda", "cuda:90", "hip:gfx942"])
def test_malformed_target(tmp_path, spec):
    out = tmp_path / "out"
    r = mwc("compile", str(tmp_path / "anything"), "--device", "gpu", "--target", spec, "-o", str(out))
    assert_clean_failure(r, out, f"--target {spec}", "cuda:sm_90a")


@pytest.mark.skipif(accelerators() > 0, reason="an accelerator is visible: --device gpu compiles for it")
def test_gpu_without_a_gpu_points_to_target(tmp_path):
    ck = write_hf_folder(tmp_path / "ck", SMALL, random_weights(SMALL))
    out = tmp_path / "out"
    r = mwc("compile", str(ck), "--fp16", "--device", "gpu", "-o", str(out))
    assert_clean_failure(r, out, "no accelerator", "--target cuda:")
