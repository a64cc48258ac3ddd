"""The transformers reference (WhisperForConditionalGeneration in float64 from the checkpoint's weights) agrees
with the numpy reference, and ``mwc verify --reference transformers`` runs the artifact against it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import ROOT, mwc

pytest.importorskip("transformers")
pytest.importorskip("torch")


def test_transformers_reference_matches_numpy(tiny_en_checkpoint):
    from compiler.parity import _stats, test_signal
    from compiler.reference import NumpyWhisper, log_mel_spectrogram
    from compiler.reference_hf import TransformersWhisper

    hf, ref = TransformersWhisper(tiny_en_checkpoint), NumpyWhisper(tiny_en_checkpoint)
    mel = log_mel_spectrogram(test_signal(), 80, 480000)[:, :3000][None].astype(np.float32)
    a, b = hf.encode(mel), ref.encode(mel)
    assert _stats(a["xa"], b["xa"])["max_rel"] < 1e-9
    assert all(_stats(x[0], y[0])["max_rel"] < 1e-9 for x, y in zip(a["cross"], b["cross"]))
    tokens = np.array([[50257, 50363, 440, 1029]])
    la, ca = hf.decode(tokens, a, None)
    lb, cb = ref.decode(tokens, b, None)
    assert _stats(la, lb)["max_rel"] < 1e-9
    step = np.array([[13]])  # one cached step
    assert _stats(hf.decode(step, a, ca)[0], ref.decode(step, b, cb)[0])["max_rel"] < 1e-9


def test_verify_against_transformers(tiny_en_artifact, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(tiny_en_artifact, art)
    r = mwc("verify", str(art), "--reference", "transformers", "--audio", str(ROOT / "examples" / "jfk.flac"))
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((art / "parity.json").read_text())
    assert report["reference"].startswith("transformers") and report["passed"]
    assert report["token_agreement"] == 1.0 and report["worst"]["decoder_logits"] < 1e-3
