"""Languages: per-window language detection (``language_per_window``), the task token, and the options a model
cannot do. A scripted two-language model (no compile) for the window loop; the CLI checks use the tiny.en artifact."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import mwc

from compiler.runtime.audio import N_FRAMES
from compiler.runtime.decoding import DecodingOptions, transcribe
from compiler.runtime.tokenizer import Tokenizer

WORDS = ["Ġ", "Ġhello", "Ġworld", "."]
EOT = len(WORDS)
LANGS = {"en": EOT + 9, "de": EOT + 10}
SPECIALS = {"eot": EOT, "sot": EOT + 1, "translate": EOT + 2, "transcribe": EOT + 3, "sot_lm": EOT + 4,
            "sot_prev": EOT + 5, "no_speech": EOT + 6, "no_timestamps": EOT + 7, "timestamp_begin": EOT + 11,
            "languages": LANGS}
N_VOCAB = EOT + 11 + 1501
SPOKEN = ["en", "de", "en"]  # the language of windows 0, 1, 2


def tokenizer() -> Tokenizer:
    return Tokenizer(WORDS + ["<|special|>"] * (N_VOCAB - len(WORDS)), SPECIALS)


class TwoLanguages:
    """Window w (row 1 of its mel) sounds like SPOKEN[w]; every decode says " hello world." and records the
    language and task tokens of the prompt it was given."""

    def __init__(self):
        self.prompts: list[tuple[int, int, int]] = []  # (window, language token, task token)

    def encode(self, mel):
        return {"windows": [int(m[1, 0]) for m in mel]}

    def decode(self, tokens, audio, cache):
        rows = audio["windows"]
        logits = np.zeros((len(rows), tokens.shape[1], N_VOCAB), dtype=np.float32)
        if cache is None and tokens.shape[1] == 1:  # language detection after <|startoftranscript|>
            for k, w in enumerate(rows):
                logits[k, -1, LANGS[SPOKEN[w]]] = 5.0
            return logits, None
        if cache is None:
            cache = [(0, tokens.shape[1])] * len(rows)
            for k, w in enumerate(rows):
                seq = list(tokens[k])
                i = seq.index(SPECIALS["sot"])
                self.prompts.append((w, seq[i + 1], seq[i + 2]))
        new = []
        for k in range(len(rows)):
            n_past, start = cache[k]
            step = n_past + tokens.shape[1] - start
            logits[k, -1, [1, 2, 3][step] if step < 3 else EOT] = 12.0
            new.append((n_past + tokens.shape[1], start))
        return logits, new


def three_windows() -> np.ndarray:
    frames = 3 * N_FRAMES
    mel = np.random.default_rng(0).normal(0.0, 0.5, (80, frames))
    mel[1] = np.arange(frames) // N_FRAMES
    return np.concatenate([mel, np.full((80, N_FRAMES), -1.5)], axis=1).astype(np.float32)


def _run(model, **kw):
    options = DecodingOptions(without_timestamps=True, task=kw.pop("task", "transcribe"))
    return transcribe(model, tokenizer(), three_windows(), options, list(range(EOT + 1, N_VOCAB)), **kw)


def test_language_is_detected_once_by_default():
    model = TwoLanguages()
    r = _run(model)
    assert r["language"] == "en"
    assert [lang for _, lang, _ in model.prompts] == [LANGS["en"]] * 3  # openai: the first window's language
    assert all("language" not in s.to_dict() for s in r["segments"])


def test_language_per_window():
    model = TwoLanguages()
    r = _run(model, language_per_window=True)
    assert [(w, lang) for w, lang, _ in model.prompts] == [(w, LANGS[code]) for w, code in enumerate(SPOKEN)]
    assert [s.language for s in r["segments"]] == SPOKEN
    assert [s.to_dict()["language"] for s in r["segments"]] == SPOKEN
    assert r["language"] == "en"  # the first window's, as openai reports it


def test_translate_task_token():
    model = TwoLanguages()
    _run(model, task="translate")
    assert {task for _, _, task in model.prompts} == {SPECIALS["translate"]}


@pytest.mark.parametrize("args, needle", [
    (["--task", "translate"], "English-only"),
    (["--language", "de"], "English-only"),
])
def test_english_only_model_refuses_other_languages(tiny_en_artifact, args, needle):
    r = mwc("transcribe", str(tiny_en_artifact), "examples/jfk.flac", *args)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr
