"""Bad inputs: one-line error naming the input, exit status ≠ 0, and no artifact (not even a partial one)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import mwc
from helpers import SMALL, random_weights, write_hf_folder


def assert_clean_failure(r, out: Path, *needles: str) -> None:
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in r.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name]


@pytest.fixture
def hf_small(tmp_path) -> Path:
    return write_hf_folder(tmp_path / "ck", SMALL, random_weights(SMALL))


@pytest.mark.parametrize("impl", ["flash", "blas"])
def test_gpu_attention_needs_a_gpu(hf_small, tmp_path, impl):
    out = tmp_path / "out"
    r = mwc("compile", str(hf_small), "--attention", impl, "-o", str(out))
    assert_clean_failure(r, out, f"--attention {impl}", "--device gpu")


def test_bf16_on_the_gpu_is_refused_before_compiling(hf_small, tmp_path):
    """MAX 26.7's GPU bf16 kernels miscompute few-row matmuls (measured on the H200): refused up front, not after a
    compile that the parity gate then rejects."""
    out = tmp_path / "out"
    r = mwc("compile", str(hf_small), "--bf16", "--device", "gpu", "-o", str(out))
    assert_clean_failure(r, out, "--bf16", "--fp16")


def test_missing_path(tmp_path):
    out = tmp_path / "out"
    r = mwc("compile", str(tmp_path / "nope"), "-o", str(out))
    assert_clean_failure(r, out, "nope")


def test_not_whisper_config(hf_small, tmp_path):
    cfg = json.loads((hf_small / "config.json").read_text())
    (hf_small / "config.json").write_text(json.dumps({**cfg, "model_type": "bert"}))
    out = tmp_path / "out"
    assert_clean_failure(mwc("compile", str(hf_small), "-o", str(out)), out, "config.json", "whisper")


def test_truncated_safetensors(hf_small, tmp_path):
    p = hf_small / "model.safetensors"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    out = tmp_path / "out"
    assert_clean_failure(mwc("compile", str(hf_small), "-o", str(out)), out, "model.safetensors", "re-download")


def test_truncated_model_bin(tiny_en_dir, tmp_path):
    folder = tmp_path / "ct2"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(tiny_en_dir / name, folder / name)
    (folder / "model.bin").write_bytes((tiny_en_dir / "model.bin").read_bytes()[:5_000_000])
    out = tmp_path / "out"
    assert_clean_failure(mwc("compile", str(folder), "-o", str(out)), out, "model.bin", "truncated")


def test_wrong_tensor_shape(tmp_path):
    w = random_weights(SMALL)
    w["decoder.blocks.0.mlp.0.weight"] = np.zeros((10, 64), np.float32)
    folder = write_hf_folder(tmp_path / "ck", SMALL, w)
    out = tmp_path / "out"
    assert_clean_failure(mwc("compile", str(folder), "-o", str(out)), out, "decoder.blocks.0.mlp.0.weight", "(10, 64)")


def test_unknown_hub_id_offline(tmp_path):
    out = tmp_path / "out"
    r = mwc("compile", "someone/whisper-does-not-exist", "-o", str(out),
            env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert_clean_failure(r, out, "someone/whisper-does-not-exist", "offline")


def test_existing_output_without_force(hf_small, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = mwc("compile", str(hf_small), "-o", str(out))
    assert r.returncode != 0 and "--force" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (out / "keep.txt").read_text() == "mine"


def test_failure_mid_compile_leaves_nothing(hf_small, tmp_path, monkeypatch):
    """A failure after files were written (here: in the graph compiler) removes the temp folder."""
    import compiler.graph
    from compiler.artifact import write_artifact
    from compiler.errors import MwcError
    from compiler.precision import plan_for
    from compiler.readers import load_checkpoint

    def boom(*a, **k):
        raise MwcError("simulated compiler failure")

    monkeypatch.setattr(compiler.graph, "build_graphs", boom)
    out = tmp_path / "art"
    with pytest.raises(MwcError, match="simulated"):
        write_artifact(load_checkpoint(str(hf_small)), plan_for("fp32", "cpu"), out, device="cpu",
                       attention="max", force=False, log=lambda s: None)
    assert not out.exists() and not list(tmp_path.glob(".art.partial-*"))
