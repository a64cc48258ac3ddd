"""The compiled tiny.en artifact: manifest, stage parity on real speech, exact transcripts, the loader alone."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, mwc

from compiler.reference import NumpyWhisper, log_mel_spectrogram
from compiler.runtime import decoding
from compiler.runtime.audio import N_FRAMES, N_SAMPLES, load_audio

JFK = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."


def normalize(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


def test_manifest_and_checksums(tiny_en_artifact):
    m = json.loads((tiny_en_artifact / "manifest.json").read_text())
    assert m["schema_version"] == 4 and m["name"] == "whisper-tiny.en"
    assert m["versions"]["max"] == "26.7.0" and m["versions"]["mojo"] == "1.2.0"
    assert m["precision"]["name"] == "fp32" and m["dims"]["n_mels"] == 80
    assert m["attention"] == "mojo"  # --attention auto on the CPU
    assert {"mel", "encoder", "decoder", "step", "kv_gather", "alignment"} <= set(m["graphs"])
    for f in ("model.mef", "extras.mef", "weights.safetensors", "vocab.json", "ops.mojoc", "parity.json", "loader.py",
              "mwc_runtime/model.py"):
        assert f in m["files"], f
    assert json.loads((tiny_en_artifact / "parity.json").read_text())["passed"]
    r = mwc("inspect", str(tiny_en_artifact), "--check")
    assert r.returncode == 0 and "whisper-tiny.en" in r.stdout and "match" in r.stdout, r.stderr


def test_tampered_artifact_fails_check(tiny_en_artifact, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_en_artifact, copy)
    with open(copy / "vocab.json", "a") as f:
        f.write(" ")
    r = mwc("inspect", str(copy), "--check")
    assert r.returncode == 1 and "vocab.json" in r.stderr


def test_damaged_mef_is_one_line_naming_it(tiny_en_artifact, tmp_path):
    """A .mef MAX cannot read (here: truncated) → one error line naming model.mef and what it is tied to."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_en_artifact, copy)
    mef = copy / "model.mef"
    mef.write_bytes(mef.read_bytes()[: mef.stat().st_size // 2])
    r = mwc("transcribe", str(copy), str(ROOT / "examples" / "jfk.flac"))
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "model.mef" in lines[0] and "max==" in lines[0] and "recompile" in lines[0]


def test_greedy_decoding_loads_only_the_first_mef(tiny_en_artifact, data):
    """Greedy decoding runs on model.mef's graphs (mel, encoder, step) alone; the whole-logits decoder, kv_gather and
    alignment graphs (extras.mef) load on their first use: on a GPU each graph holds its own copy of the weights."""
    from compiler.runtime.model import Whisper

    m = Whisper(tiny_en_artifact)
    assert set(m.models.keys()) == {"mel", "encoder", "step"} and "alignment" in m.models
    assert normalize(m.transcribe(data / "short" / "jfk.flac")["text"]) == normalize(JFK)
    assert set(m.models.keys()) == {"mel", "encoder", "step"}
    r = m.transcribe(data / "short" / "jfk.flac", beam_size=2)  # beam search: the decoder and kv_gather graphs
    assert normalize(r["text"]) == normalize(JFK)
    assert set(m.models.keys()) == {"mel", "encoder", "step", "decoder", "kv_gather", "alignment"}


@pytest.mark.parametrize("flags", [[], ["--beam-size", "2"]])
def test_damaged_or_missing_extras_mef_is_one_line(tiny_en_artifact, tmp_path, flags):
    """extras.mef loads on first use: missing, the artifact refuses to load; truncated, greedy decoding still runs
    and beam search stops with one line naming the file."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_en_artifact, copy)
    mef = copy / "extras.mef"
    mef.write_bytes(mef.read_bytes()[: mef.stat().st_size // 2])
    r = mwc("transcribe", str(copy), str(ROOT / "examples" / "jfk.flac"), *flags)
    if not flags:
        assert r.returncode == 0 and normalize(r.stdout) == normalize(JFK), r.stderr
        mef.unlink()
        r = mwc("transcribe", str(copy), str(ROOT / "examples" / "jfk.flac"))
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "extras.mef" in lines[0] and ("recompile" in lines[0]), lines[0]


@pytest.mark.parametrize("clip", ["short/jfk.flac", "edge/short_0.2s_16k.wav", "edge/silence_30s_16k.wav",
                                  "long/ljspeech_LJ001-0001_to_0016.flac"])
def test_mel_op_matches_reference(tiny_en_model, data, clip):
    audio = load_audio(data / clip)
    got = tiny_en_model.log_mel(audio)
    want = log_mel_spectrogram(audio, 80, N_SAMPLES)
    assert got.shape == want.shape
    assert np.abs(got - want).max() < 1e-4


def test_encoder_matches_reference(tiny_en_model, tiny_en_checkpoint, data):
    audio = load_audio(data / "short/jfk.flac")
    mel = log_mel_spectrogram(audio, 80, N_SAMPLES)[:, :N_FRAMES][None].astype(np.float32)
    got = tiny_en_model.encode(mel)["xa"].to_numpy()
    want = NumpyWhisper(tiny_en_checkpoint).encode(mel)["xa"]
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-3


def assert_transcribes_jfk(artifact):
    """`mwc transcribe ARTIFACT examples/jfk.flac` prints JFK's words (normalized)."""
    r = mwc("transcribe", str(artifact), str(ROOT / "examples" / "jfk.flac"))
    assert r.returncode == 0, r.stderr
    assert normalize(r.stdout) == normalize(JFK)


def test_jfk_transcript_cli(tiny_en_artifact):
    assert_transcribes_jfk(tiny_en_artifact)


def test_greedy_tokens_equal_reference(tiny_en_model, tiny_en_checkpoint, manifest, data):
    """Every window's greedy ids equal those of the numpy float64 reference driven by the same decoding code."""
    clips = [e["file"] for e in manifest if e["kind"] == "short" and e["language"] == "en"]
    clips = ["short/jfk.flac"] + [c for c in clips if "LJ001-0003" in c or "cards_002" in c
                                  or "librivox_sense_and_sensibility_01_0880" in c or "fleurs-en-001" in c]
    assert len(clips) >= 5
    ref = NumpyWhisper(tiny_en_checkpoint)
    model = tiny_en_model
    for clip in clips:
        audio = load_audio(data / clip)
        options = decoding.DecodingOptions()
        got = model.transcribe(audio)
        want = decoding.transcribe(ref, model.tokenizer, log_mel_spectrogram(audio, 80, N_SAMPLES), options,
                                   model.suppress)
        assert [w.tokens for w in got["windows"]] == [w.tokens for w in want["windows"]], clip
        assert got["text"] == want["text"]


def test_transcripts_match_openai_whisper(tiny_en_model, data):
    """openai-whisper's own tiny.en output on the same clips (shared/data/reference), word for word."""
    ref = {}
    for line in (data / "reference" / "openai-tiny.en-greedy.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "file" in row:
            ref[row["file"]] = row["hyp"]
    for clip in ["short/jfk.flac", "short/ljspeech_LJ001-0001.flac", "short/cmu_cards_001.flac",
                 "short/librispeech_1272-128104-0000.flac", "short/fleurs-en-000.ogg"]:
        assert normalize(tiny_en_model.transcribe(data / clip)["text"]) == normalize(ref[clip]), clip


def test_bad_audio_in_a_batch(tiny_en_artifact, data):
    """Each bad file gets one error line; the good file of the same batch is still transcribed; exit ≠ 0."""
    bad = [data / "edge" / n for n in ("empty.wav", "notaudio.wav", "truncated.wav")]
    r = mwc("transcribe", str(tiny_en_artifact), *map(str, bad), str(ROOT / "examples" / "jfk.flac"))
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3 and "empty.wav" in errors[0] and "notaudio.wav" in errors[1]
    assert "truncated.wav" in errors[2] and "truncated" in errors[2].split(":", 2)[2]
    assert "Traceback" not in r.stderr
    assert normalize(JFK) in normalize(r.stdout)


def test_loader_in_fresh_venv(tiny_en_artifact, tmp_path):
    """The generated loader runs where only max, numpy and an audio reader are installed (no mwc)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "max==26.7.0", "numpy", "soundfile"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([str(py), "-c", "import compiler"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode != 0  # mwc itself is not there
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["MODULAR_CACHE_DIR"] = str(tmp_path / "empty-cache")  # nothing may compile at load time
    t = time.perf_counter()
    r = subprocess.run([str(py), str(tiny_en_artifact / "loader.py"), str(ROOT / "examples" / "jfk.flac")],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    elapsed = time.perf_counter() - t
    assert r.returncode == 0, r.stderr[-2000:]
    assert normalize(r.stdout) == normalize(JFK)
    code = (f"import sys; sys.path.insert(0, {str(tiny_en_artifact)!r}); from loader import load; "
            f"m = load(); print(round(m.load_seconds, 3)); print(m.transcribe({str(ROOT / 'examples/jfk.flac')!r})['text'])")
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    load_s, text = r.stdout.splitlines()[:2]
    assert normalize(text) == normalize(JFK)
    print(f"\nloader: whole process {elapsed:.2f} s, artifact load {load_s} s")


def test_verify_cli(tiny_en_artifact, data, tmp_path):
    """mwc verify: stage table, greedy tokens and WER on real clips; parity.json rewritten with its checksum."""
    import shutil

    art = tmp_path / "art"
    shutil.copytree(tiny_en_artifact, art)
    r = mwc("verify", str(art), "--manifest", str(data / "manifest.jsonl"), "--limit", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "tokens equal" in r.stdout and "WER" in r.stdout
    report = json.loads((art / "parity.json").read_text())
    assert report["passed"] and report["token_agreement"] == 1.0 and len(report["clips"]) == 2
    assert report["wer"] == report["reference_wer"]
    assert mwc("inspect", str(art), "--check").returncode == 0
    r = mwc("verify", str(art))
    assert r.returncode == 1 and "--manifest" in r.stderr


class _HostRules:
    """The compiled model seen without ``greedy_step``: logits come to the host and numpy applies the filters."""

    def __init__(self, model):
        self.encode, self.decode = model.encode, model.decode


@pytest.mark.parametrize("steps_per_sync,lookahead", [(1, False), (5, False), (3, True)])
def test_in_graph_pick_matches_host_rules(tiny_en_model, data, monkeypatch, steps_per_sync, lookahead):
    """The step graph's greedy pick (filters as masks, KV cache filled in place, the timestamp rules made in the
    graph from its token history, ``steps_per_sync`` steps between host reads; with ``lookahead``, as on a GPU,
    the next run queued before the last one is read) against the same model's logits filtered by numpy: same
    tokens, log-probs and no-speech probabilities, window by window."""
    model = tiny_en_model
    monkeypatch.setattr(model, "steps_per_sync", steps_per_sync)
    monkeypatch.setattr(model, "lookahead", lookahead)
    for clip in ["short/jfk.flac", "short/ljspeech_LJ001-0003.flac"]:
        mel = model.log_mel(load_audio(data / clip))
        got = decoding.transcribe(model, model.tokenizer, mel, decoding.DecodingOptions(), model.suppress)
        want = decoding.transcribe(_HostRules(model), model.tokenizer, mel, decoding.DecodingOptions(),
                                   model.suppress)
        assert len(got["windows"]) == len(want["windows"])
        for g, w in zip(got["windows"], want["windows"]):
            assert g.tokens == w.tokens, clip
            assert abs(g.avg_logprob - w.avg_logprob) < 1e-3, clip
            assert abs(g.no_speech_prob - w.no_speech_prob) < 1e-4, clip
