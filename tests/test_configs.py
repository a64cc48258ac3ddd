"""Config-driven graphs: a random-weight model with large-v3's traits (128 mel bins, 51866-token multilingual
vocabulary, a deep encoder and a shallow decoder like turbo) compiles, passes stage parity, and transcribes.
Also: whatever a checkpoint puts in its names reaches the generated loader only as escaped literals."""

from __future__ import annotations

import ast
import json

import numpy as np
from conftest import mwc
from helpers import random_weights, write_hf_folder

from compiler.checkpoint import ModelDimensions
from compiler.loader import render_loader

LARGE_V3_TRAITS = ModelDimensions(n_mels=128, n_audio_ctx=1500, n_audio_state=128, n_audio_head=2, n_audio_layer=2,
                                  n_vocab=51866, n_text_ctx=448, n_text_state=128, n_text_head=2, n_text_layer=1)


def test_large_v3_traits_compile_and_run(tmp_path):
    folder = write_hf_folder(tmp_path / "ck", LARGE_V3_TRAITS, random_weights(LARGE_V3_TRAITS, seed=3))
    out = tmp_path / "art"
    r = mwc("compile", str(folder), "-o", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["dims"]["n_mels"] == 128 and m["tokens"]["timestamp_begin"] == 50365 and len(m["tokens"]["languages"]) == 100
    report = json.loads((out / "parity.json").read_text())
    assert report["passed"] and report["stages"]["mel"]["max_abs"] < 1e-4

    from compiler.runtime.model import Whisper

    model = Whisper(out)
    t = np.arange(16000 * 3) / 16000
    result = model.transcribe((0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32))
    assert result["language"] in model.tokenizer.languages  # detected through the language tokens
    assert isinstance(result["text"], str) and len(result["windows"]) == 1


def test_loader_escapes_checkpoint_strings():
    evil = 'x"""; import os; os.system("echo pwned") #\n\'\\'
    manifest = {"name": evil, "source": {"checkpoint": evil}, "precision": {"name": "fp32"}, "device": "cpu",
                "versions": {"max": "26.7.0"}}
    code = render_loader(manifest)
    tree = ast.parse(code)  # still valid Python
    consts = {n.targets[0].id: ast.literal_eval(n.value) for n in tree.body
              if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name) and n.targets[0].id == "MODEL_NAME"}
    assert consts["MODEL_NAME"] == evil
    assert not any(isinstance(n, ast.Attribute) and n.attr == "system" for n in ast.walk(tree))
