"""Word timestamps (runtime.timing, openai's timing.py): the DTW and median filter against plain loops, word splits on
the real tiny.en vocabulary, and on JFK: the compiled artifact's alignment graph against the numpy reference, and
its word times against openai-whisper's (tests/data/openai_tiny.en_jfk_words.json; how it was made is in that file).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from compiler.runtime import timing

HERE = Path(__file__).resolve().parent


def dtw_loops(x: np.ndarray):
    """openai's dtw_cpu, literally (the reference for the vectorized one)."""
    n, m = x.shape
    cost = np.ones((n + 1, m + 1), dtype=np.float32) * np.inf
    trace = -np.ones((n + 1, m + 1), dtype=np.float32)
    cost[0, 0] = 0
    for j in range(1, m + 1):
        for i in range(1, n + 1):
            c0, c1, c2 = cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]
            if c0 < c1 and c0 < c2:
                c, t = c0, 0
            elif c1 < c0 and c1 < c2:
                c, t = c1, 1
            else:
                c, t = c2, 2
            cost[i, j] = x[i - 1, j - 1] + c
            trace[i, j] = t
    return timing._backtrace(trace)


@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (12, 40), (40, 12)])
def test_dtw_matches_openai_loops(shape):
    rng = np.random.default_rng(sum(shape))
    x = rng.normal(size=shape)
    np.testing.assert_array_equal(timing.dtw(x), dtw_loops(x))
    # ties (a constant matrix) take the same branches
    np.testing.assert_array_equal(timing.dtw(np.zeros(shape)), dtw_loops(np.zeros(shape)))


def test_median_filter():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 20))
    y = timing.median_filter(x, 7)
    xp = np.pad(x, ((0, 0), (0, 0), (3, 3)), mode="reflect")
    want = np.stack([np.median(xp[..., k:k + 7], axis=-1) for k in range(20)], axis=-1)
    np.testing.assert_allclose(y, want)
    assert timing.median_filter(x[..., :3], 7) is not None  # shorter than the padding: returned as is


def test_words_split_and_punctuation(tiny_en_checkpoint):
    from compiler.runtime.tokenizer import Tokenizer

    ck = tiny_en_checkpoint
    tk = Tokenizer(ck.vocab, ck.tokens.to_dict())
    ids = {tok: i for i, tok in enumerate(ck.vocab)}
    text = ["ĠAnd", "Ġso", ",", "Ġmy", "Ġfellow", "ĠAmericans", "."]
    words, word_tokens = timing.split_to_word_tokens(tk, [ids[t] for t in text] + [tk.eot], "en")
    assert words[:-1] == [" And", " so", ",", " my", " fellow", " Americans", "."]
    assert word_tokens[-1] == [tk.eot]
    alignment = [timing.WordTiming(w, t) for w, t in zip(words[:-1], word_tokens[:-1])]
    timing.merge_punctuations(alignment, timing.PREPEND_PUNCTUATIONS, timing.APPEND_PUNCTUATIONS)
    assert [a.word for a in alignment if a.word] == [" And", " so,", " my", " fellow", " Americans."]


@pytest.fixture(scope="module")
def jfk_words(tiny_en_model, data):
    r = tiny_en_model.transcribe(str(data / "short" / "jfk.flac"), word_timestamps=True, temperature=0.0)
    return r


def test_jfk_words_agree_with_openai_whisper(jfk_words):
    golden = json.loads((HERE / "data" / "openai_tiny.en_jfk_words.json").read_text())
    ours = [w for s in jfk_words["segments"] for w in s.words]
    theirs = golden["words"]
    assert [w["word"] for w in ours] == [w["word"] for w in theirs]
    for a, b in zip(ours, theirs):
        assert abs(a["start"] - b["start"]) <= 0.1 and abs(a["end"] - b["end"]) <= 0.1, (a, b)
        assert abs(a["probability"] - b["probability"]) < 0.02, (a, b)
    for s in jfk_words["segments"]:  # openai moves segment bounds to the words'
        assert s.start <= s.words[0]["start"] + 1e-9 and s.end >= s.words[-1]["end"] - 1e-9


def test_alignment_graph_matches_reference(tiny_en_model, tiny_en_checkpoint, data):
    """The compiled alignment graph's scores and logits against the numpy reference on JFK's greedy tokens."""
    from compiler.reference import NumpyWhisper
    from compiler.runtime.audio import N_FRAMES, load_audio

    m = tiny_en_model
    assert m.alignment_heads == [tuple(h) for h in tiny_en_checkpoint.generation.alignment_heads]
    mel = m.log_mel(load_audio(str(data / "short" / "jfk.flac")))[:, :N_FRAMES]
    r = m.transcribe(str(data / "short" / "jfk.flac"), temperature=0.0)
    tokens = [m.tokenizer.sot, m.tokenizer.no_timestamps,
              *[t for s in r["segments"] for t in s.tokens if t < m.tokenizer.eot], m.tokenizer.eot]
    logits, scores = m.align(np.array(tokens), m.encode(mel[None]))
    ref = NumpyWhisper(tiny_en_checkpoint)
    ref_logits, ref_scores = ref.align(np.array(tokens), ref.encode(mel[None].astype(np.float64)))
    assert scores.shape == ref_scores.shape == (len(m.alignment_heads), len(tokens), 1500)
    assert np.abs(scores - ref_scores).max() < 1e-2 * np.abs(ref_scores).max()
    assert np.abs(logits - ref_logits).max() < 1e-2 * np.abs(ref_logits).max()
    # and the words that follow from them
    words = timing.find_alignment(m, m.tokenizer, tokens[2:-1], m.encode(mel[None]), 1100, [m.tokenizer.sot], "en")
    ref_words = timing.find_alignment(ref, m.tokenizer, tokens[2:-1], ref.encode(mel[None].astype(np.float64)),
                                      1100, [m.tokenizer.sot], "en")
    assert [w.word for w in words] == [w.word for w in ref_words]
    for a, b in zip(words, ref_words):
        assert abs(a.start - b.start) <= 0.02 and abs(a.end - b.end) <= 0.02


def test_cli_and_loader_write_words(tiny_en_artifact, tmp_path):
    """`mwc transcribe --word-timestamps --beam-size 5 -f json` and the generated loader with the same options write
    the same words (one implementation: the loader runs the artifact's mwc_runtime)."""
    import subprocess
    import sys

    from conftest import ROOT, mwc

    jfk = ROOT / "examples" / "jfk.flac"
    r = mwc("transcribe", str(tiny_en_artifact), str(jfk), "--word-timestamps", "--beam-size", "5", "-f", "json",
            "-o", str(tmp_path / "cli"))
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, str(tiny_en_artifact / "loader.py"), str(jfk), "--word-timestamps",
                        "--beam-size", "5", "-f", "json", "-o", str(tmp_path / "loader")], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    cli = json.loads((tmp_path / "cli" / "jfk.json").read_text())
    loader = json.loads((tmp_path / "loader" / "jfk.json").read_text())
    assert cli == loader
    words = [w for s in cli["segments"] for w in s["words"]]
    assert cli["text"].startswith("And so, my fellow Americans")  # beam 5 (greedy has no comma)
    assert [w["word"].strip() for w in words][:3] == ["And", "so,", "my"]
    assert all(w["start"] <= w["end"] for w in words)
    r = mwc("transcribe", str(tiny_en_artifact), str(jfk), "--patience", "2")
    assert r.returncode == 2 and "--patience needs --beam-size" in r.stderr
