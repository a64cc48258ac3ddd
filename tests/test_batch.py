"""Cross-file batching (decoding.transcribe_many): many files' windows share encoder and decoder batches, and every
file's result equals the one it gets alone — token for token — through the same window loop.

The first tests use a scripted batch-capable fake model (no compile); the rest the compiled tiny.en artifact."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, mwc
from test_runtime import EOT, GOOD, N_VOCAB, SENTENCE, SPECIALS, tokenizer  # the scripted vocabulary

from compiler.runtime.audio import N_FRAMES, AudioError
from compiler.runtime.decoding import DecodingOptions, transcribe, transcribe_many

REPEAT = [1] * 40  # " hello" × 40: compression ratio > 2.4, so every temperature is tried

# (file, window) → (tokens, peak logit, no-speech logit at <|startoftranscript|>)
SCRIPTS = {
    (0, 0): (GOOD, 12.0, 0.0),
    (1, 0): (SENTENCE, 12.0, 0.0),  # two windows: the second is decoded with the first one's text as prompt
    (1, 1): (GOOD, 12.0, 0.0),
    (2, 0): (REPEAT, 4.0, 0.0),  # falls back through every temperature, sampled rows in a batch
    (3, 0): (GOOD, 1.0, 10.0),  # improbable and no-speech: the window is skipped
    (4, 0): (SENTENCE, 12.0, 0.0),
    (5, 0): (GOOD, 3.0, 0.0),
    (6, 0): ([2] * 30, 4.0, 0.0),  # falls back too, in the same batches as file 2, and finishes earlier
}
N_WINDOWS = {1: 2}


def file_mel(f: int) -> np.ndarray:
    """Noise (not silent) whose row 0 names the file and row 1 the 30 s window, plus openai's 30 s of padding."""
    frames = N_FRAMES * N_WINDOWS.get(f, 1) - 700
    mel = np.random.default_rng(f).normal(0.0, 0.5, (80, frames))
    mel[0], mel[1] = f, np.arange(frames) // N_FRAMES
    return np.concatenate([mel, np.full((80, N_FRAMES), -1.5)], axis=1).astype(np.float32)


class BatchScripted:
    """Plays each row's script (chosen by the window's mel) at any batch size; the cache is per row."""

    def __init__(self):
        self.batches: list[int] = []

    def encode(self, mel):
        assert mel.ndim == 3 and mel.shape[1:] == (80, N_FRAMES)
        return {"rows": [(int(m[0, 0]), int(m[1, 0])) for m in mel]}

    def decode(self, tokens, audio, cache):
        rows = audio["rows"]
        assert len(rows) == tokens.shape[0]
        self.batches.append(len(rows))
        if cache is None:  # per row: (tokens seen, initial length)
            cache = [(0, tokens.shape[1])] * len(rows)
        logits = np.zeros((len(rows), tokens.shape[1], N_VOCAB), dtype=np.float32)
        new = []
        for k, key in enumerate(rows):
            script, peak, no_speech = SCRIPTS[key]
            n_past, start = cache[k]
            if n_past == 0:
                logits[k, list(tokens[k]).index(SPECIALS["sot"]), SPECIALS["no_speech"]] = no_speech
            step = n_past + tokens.shape[1] - start
            logits[k, -1, script[step] if step < len(script) else EOT] = peak
            new.append((n_past + tokens.shape[1], start))
        return logits, new


def _many(model, items, **kw):
    options = DecodingOptions(without_timestamps=True)
    suppress = list(range(EOT + 1, N_VOCAB))  # words or <|endoftext|>
    return list(transcribe_many(model, tokenizer(), items, options, suppress, **kw))


def _same(a: dict, b: dict) -> None:
    assert a["text"] == b["text"]
    assert [s.to_dict() for s in a["segments"]] == [s.to_dict() for s in b["segments"]]
    assert [(w.tokens, w.temperature, w.avg_logprob, w.no_speech_prob) for w in a["windows"]] == \
           [(w.tokens, w.temperature, w.avg_logprob, w.no_speech_prob) for w in b["windows"]]


def test_batched_equals_one_by_one_on_a_scripted_model():
    files = sorted({f for f, _ in SCRIPTS})
    options = DecodingOptions(without_timestamps=True)
    alone = [transcribe(BatchScripted(), tokenizer(), file_mel(f), options, list(range(EOT + 1, N_VOCAB)))
             for f in files]
    assert [r["text"] for r in alone][:2] == ["hello world.", "the cat sat on a mat. hello world."]
    assert alone[2]["windows"][0].temperature == 1.0 and alone[3]["text"] == ""  # fallback, no-speech skip
    for batch_size in (1, 3, 16):
        model = BatchScripted()
        seen = []
        got = _many(model, [file_mel(f) for f in files], batch_size=batch_size, progress=seen.append)
        for a, b in zip(alone, got):
            _same(a, b)
        assert max(model.batches) == min(batch_size, len(files))  # every file's first window in one batch
        assert seen[-1].files_done == seen[-1].files_total == len(files)
        assert seen[-1].audio_seconds == pytest.approx(sum(file_mel(f).shape[1] - N_FRAMES for f in files) / 100)


def test_a_file_that_cannot_be_loaded_is_its_own_result():
    def broken():
        raise AudioError("broken.wav: cannot be decoded as audio")

    def fails_hard():
        raise RuntimeError("not an audio problem")

    got = _many(BatchScripted(), [lambda: file_mel(0), broken, lambda: file_mel(4)], batch_size=2)
    assert got[0]["text"] == "hello world." and got[2]["text"] == "the cat sat on a mat."
    assert isinstance(got[1], AudioError) and "broken.wav" in str(got[1])
    with pytest.raises(RuntimeError, match="not an audio problem"):
        _many(BatchScripted(), [lambda: file_mel(0), fails_hard], batch_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        _many(BatchScripted(), [file_mel(0)], batch_size=0)


# --- the compiled tiny.en artifact -------------------------------------------------------------------------------

SHORT = ["ljspeech_LJ001-0001.flac", "cmu_cards_001.flac"]
LONG = "ljspeech_LJ001-0001_to_0016.flac"


def _record_batches(model, monkeypatch) -> list[int]:
    batches: list[int] = []
    encode = model.encode

    def recording(mel):
        batches.append(mel.shape[0])
        return encode(mel)

    monkeypatch.setattr(model, "encode", recording)
    return batches


def test_batched_equals_sequential_on_real_clips(tiny_en_model, data, monkeypatch):
    """Short clips, JFK and a 4-window long clip (prompts of different lengths) with a bad file among them: batch 4
    gives every good file the same text, segments and window tokens as batch 1; the bad file is its AudioError.
    Batch 4 runs 3 decoder steps per host round trip (rows end inside a run and its later picks are dropped), batch 1
    one."""
    paths = [ROOT / "examples" / "jfk.flac", *[data / "short" / n for n in SHORT], data / "edge" / "notaudio.wav",
             data / "long" / LONG]
    batches = _record_batches(tiny_en_model, monkeypatch)
    sequential = list(tiny_en_model.transcribe_many(paths, batch_size=1))
    assert set(batches) == {1}
    batches.clear()
    monkeypatch.setattr(tiny_en_model, "steps_per_sync", 3)
    batched = list(tiny_en_model.transcribe_many(paths, batch_size=4))
    assert max(batches) == 4 and len(batches) < len(paths) + 3  # four clips' first windows were encoded at once
    assert isinstance(sequential[3], AudioError) and isinstance(batched[3], AudioError)
    assert "notaudio.wav" in str(batched[3])
    for path, a, b in zip(paths, sequential, batched):
        if not isinstance(a, AudioError):
            _same(a, b)
    assert len(batched[4]["windows"]) >= 3 and "ask not what your country" in batched[0]["text"]


def test_batched_fallback_and_word_timestamps_on_real_clips(tiny_en_model, data):
    """Every window forced through the temperature fallback (sampled rows share a batch, each with its file's
    Generator), and word timestamps (each row's cross K/V taken out of the batch for the alignment graph): both
    equal to batch 1."""
    paths = [data / "short" / n for n in ("cmu_cards_001.flac", "cmu_cards_002.flac", "jfk.flac")]
    kw = dict(temperature=(0.0, 0.4, 0.8), logprob_threshold=0.0)
    sequential = list(tiny_en_model.transcribe_many(paths, batch_size=1, **kw))
    batched = list(tiny_en_model.transcribe_many(paths, batch_size=3, **kw))
    assert all(len(r["windows"]) == 1 and r["windows"][0].temperature == 0.8 for r in batched)
    for a, b in zip(sequential, batched):
        _same(a, b)
    sequential = list(tiny_en_model.transcribe_many(paths[:2], batch_size=1, word_timestamps=True))
    batched = list(tiny_en_model.transcribe_many(paths[:2], batch_size=2, word_timestamps=True))
    for a, b in zip(sequential, batched):
        _same(a, b)
        assert [s.words for s in a["segments"]] == [s.words for s in b["segments"]]
        assert any(s.words for s in b["segments"])


def test_cli_and_loader_batch_size(tiny_en_model, tiny_en_artifact, data, tmp_path):
    """`mwc transcribe --batch-size 3` and the loader's --batch-size: each bad file one error line (in input order),
    the good ones printed in order with the text they get alone and written; exit status 1."""
    good = [ROOT / "examples" / "jfk.flac", data / "short" / "cmu_cards_001.flac"]
    bad = [data / "edge" / "empty.wav", data / "edge" / "notaudio.wav"]
    paths = [bad[0], good[0], bad[1], good[1]]
    want = [tiny_en_model.transcribe(p)["text"] for p in good]
    runs = {"cli": mwc("transcribe", str(tiny_en_artifact), *map(str, paths), "--batch-size", "3", "-o",
                       str(tmp_path / "cli"), "-f", "json"),
            "loader": subprocess.run([sys.executable, str(tiny_en_artifact / "loader.py"), *map(str, paths),
                                      "--batch-size", "3", "-o", str(tmp_path / "loader"), "-f", "json"],
                                     capture_output=True, text=True)}
    for name, r in runs.items():
        assert r.returncode == 1, (name, r.stderr)
        errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 2 and "empty.wav" in errors[0] and "notaudio.wav" in errors[1], (name, r.stderr)
        assert "Traceback" not in r.stderr
        assert r.stdout.splitlines() == [f"{p}\t{t}" for p, t in zip(good, want)], name
        written = json.loads((tmp_path / name / "cmu_cards_001.json").read_text())
        assert written["text"] == want[1] and (tmp_path / name / "jfk.json").is_file()
    r = mwc("transcribe", str(tiny_en_artifact), str(good[1]), "--batch-size", "0")
    assert r.returncode == 2 and "--batch-size" in r.stderr


def test_chunk_bounds_cut_in_the_quiet():
    """chunk_bounds covers the audio with contiguous chunks of at most 30 s, cut inside the quiet stretches."""
    from compiler.runtime.audio import SAMPLE_RATE, chunk_bounds

    audio = np.random.default_rng(0).normal(0, 0.3, 95 * SAMPLE_RATE).astype(np.float32)
    quiet = [(27.0, 27.3), (55.0, 55.3), (80.0, 80.3)]
    for a, b in quiet:
        audio[int(a * SAMPLE_RATE):int(b * SAMPLE_RATE)] *= 1e-3
    bounds = chunk_bounds(audio)
    assert bounds[0][0] == 0 and bounds[-1][1] == len(audio)
    assert all(e == s for (_, e), (s, _) in zip(bounds, bounds[1:]))
    assert all(0 < e - s <= 30 * SAMPLE_RATE for s, e in bounds)
    cuts = [e / SAMPLE_RATE for _, e in bounds[:-1]]
    assert len(cuts) == 3 and all(a <= c <= b for c, (a, b) in zip(cuts, quiet)), cuts
    assert chunk_bounds(audio[:30 * SAMPLE_RATE]) == [(0, 30 * SAMPLE_RATE)] and chunk_bounds(audio[:0]) == []


def test_chunked_long_form_on_a_real_file(tiny_en_model, tiny_en_artifact, data, monkeypatch):
    """Batched long-form (--chunked): a ~100 s file's chunks decoded as one batch, segments on the file's clock,
    the text within a few words of openai's sequential loop; the CLI and the loader give the API's text."""
    import difflib

    from compiler.runtime.audio import load_audio

    path = data / "long" / LONG
    audio = load_audio(path)
    sequential = tiny_en_model.transcribe(audio)
    batches = _record_batches(tiny_en_model, monkeypatch)
    chunked = tiny_en_model.transcribe_chunked(audio, without_timestamps=True)
    n_chunks = len(chunked["windows"])
    assert n_chunks >= 3 and max(batches) == n_chunks  # one window per chunk, all in one batch
    starts = [s.start for s in chunked["segments"]]
    assert starts == sorted(starts) and chunked["segments"][-1].end <= len(audio) / 16000 + 0.01
    assert chunked["segments"][-1].start > 60
    a, b = sequential["text"].lower().split(), chunked["text"].lower().split()
    assert difflib.SequenceMatcher(None, a, b).ratio() > 0.9
    monkeypatch.undo()
    with_ts = tiny_en_model.transcribe_chunked(audio)
    assert with_ts["segments"][-1].end > 60
    assert difflib.SequenceMatcher(None, a, with_ts["text"].lower().split()).ratio() > 0.9
    r = mwc("transcribe", str(tiny_en_artifact), str(path), "--chunked")
    assert r.returncode == 0 and r.stdout.strip() == with_ts["text"], r.stderr
    r = subprocess.run([sys.executable, str(tiny_en_artifact / "loader.py"), str(path), "--chunked"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == with_ts["text"], r.stderr
