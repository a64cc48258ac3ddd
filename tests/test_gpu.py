"""The GPU path (skipped where MAX sees no accelerator, e.g. in CI): tiny.en --fp16 --device gpu compiles and
passes its parity gate, transcribes like the CPU fp32 artifact, and the captured decoder step (device graph replay)
gives the same windows as eager execution."""

from __future__ import annotations

import json

import pytest

from conftest import ROOT, mwc
from helpers import accelerators
from test_artifact import JFK, normalize


pytestmark = pytest.mark.skipif(accelerators() == 0, reason="no accelerator visible to MAX")


@pytest.fixture(scope="module")
def gpu_artifact(tiny_en_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "tiny.en-fp16-gpu"
    r = mwc("compile", str(tiny_en_dir), "--fp16", "--device", "gpu", "-o", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    return out


def test_gpu_parity_and_jfk(gpu_artifact):
    parity = json.loads((gpu_artifact / "parity.json").read_text())
    assert parity["passed"], parity
    r = mwc("transcribe", str(gpu_artifact), str(ROOT / "examples" / "jfk.flac"))
    assert r.returncode == 0, r.stderr
    assert normalize(r.stdout) == normalize(JFK)


def test_captured_step_equals_eager(gpu_artifact, data, monkeypatch):
    from compiler.runtime.audio import load_audio
    from compiler.runtime.model import Whisper

    audio = load_audio(data / "short/ljspeech_LJ001-0003.flac")
    captured = Whisper(gpu_artifact)
    monkeypatch.setenv("MWC_NO_CAPTURE", "1")
    eager = Whisper(gpu_artifact)
    assert captured._capture and not eager._capture
    a, b = captured.transcribe(audio), eager.transcribe(audio)
    assert captured._captured, "the step was not captured"
    assert [w.tokens for w in a["windows"]] == [w.tokens for w in b["windows"]]
    assert a["text"] == b["text"]
