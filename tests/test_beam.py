"""Beam search and best_of (openai's BeamSearchDecoder, GreedyDecoder with a group, MaximumLikelihoodRanker).

The first tests run on a second-order Markov "model" whose next-token distribution depends on the last two tokens,
which it reads from its own KV cache: a cache not reordered by the kept beams gives a different transcript. The last
tests run the compiled tiny.en artifact against the numpy reference running the same beam code.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from compiler.runtime.audio import N_FRAMES
from compiler.runtime.decoding import (BeamSearchDecoder, DecodingOptions, decode_window, rank_candidates,
                                       transcribe)
from compiler.runtime.tokenizer import Tokenizer

WORDS = ["Ġ", "Ġa", "Ġb", "Ġc", "Ġd", "Ġe", "Ġf", "Ġg"]
A, B, C, D, E, F, G = range(1, 8)
EOT = len(WORDS)
SPECIALS = {"eot": EOT, "sot": EOT + 1, "translate": EOT + 2, "transcribe": EOT + 3, "sot_lm": EOT + 4,
            "sot_prev": EOT + 5, "no_speech": EOT + 6, "no_timestamps": EOT + 7, "timestamp_begin": EOT + 8}
N_VOCAB = EOT + 8 + 1501
SOT, NOTS = SPECIALS["sot"], SPECIALS["no_timestamps"]

# P(next | previous two tokens); anything else ends the text
TABLE = {
    (SOT, NOTS): {A: 0.55, B: 0.45},
    (NOTS, A): {C: 0.25, D: 0.25, E: 0.25, F: 0.25},
    (NOTS, B): {C: 0.95, D: 0.05},
    (B, C): {EOT: 0.99, G: 0.01},
    (A, C): {G: 0.9, EOT: 0.1},
}


def tokenizer() -> Tokenizer:
    return Tokenizer(WORDS + ["<|special|>"] * (N_VOCAB - len(WORDS)), SPECIALS)


class MarkovModel:
    """The cache is each row's token history; logits come from the last two tokens of that history."""

    def __init__(self):
        self.max_batch = 0

    def encode(self, mel):
        return {}

    def _logits(self, history):
        row = np.full(N_VOCAB, -30.0, dtype=np.float32)
        for tok, p in TABLE.get(tuple(history[-2:]), {EOT: 1.0}).items():
            row[tok] = math.log(p)
        return row

    def decode(self, tokens, audio, cache):
        cache = cache or [[] for _ in range(tokens.shape[0])]
        assert len(cache) == tokens.shape[0]
        self.max_batch = max(self.max_batch, tokens.shape[0])
        out, new = np.zeros((tokens.shape[0], tokens.shape[1], N_VOCAB), np.float32), []
        for b in range(tokens.shape[0]):
            hist = list(cache[b])
            for t, tok in enumerate(tokens[b].tolist()):
                hist.append(tok)
                out[b, t] = self._logits(hist)
            new.append(hist)
        return out, new

    def repeat_audio(self, audio, n):
        return audio

    def reorder_cache(self, cache, ids):
        return [list(cache[i]) for i in ids]


def decode(model, **options):
    mel = np.zeros((80, N_FRAMES), np.float32)
    suppress = list(range(EOT + 1, N_VOCAB))
    return decode_window(model, tokenizer(), mel, DecodingOptions(without_timestamps=True, **options), suppress)


def test_beam_finds_the_likelier_sequence_greedy_misses():
    greedy = decode(MarkovModel())
    assert greedy.tokens == [A, C, G]  # a (0.55), then c (first of four at 0.25), then g
    model = MarkovModel()
    beam = decode(model, beam_size=5)
    assert model.max_batch == 5
    assert beam.tokens == [B, C]  # 0.45 * 0.95 * 0.99
    assert beam.text == "b c"
    assert beam.sum_logprob == pytest.approx(math.log(0.45) + math.log(0.95) + math.log(0.99), abs=1e-4)
    assert beam.avg_logprob == pytest.approx(beam.sum_logprob / 3)


def test_beam_needs_the_cache_reordered():
    class NoReorder(MarkovModel):
        def reorder_cache(self, cache, ids):  # the bug the test guards against: rows keep their old history
            return cache if len(cache) == len(ids) else [list(cache[0]) for _ in ids]

    assert decode(NoReorder(), beam_size=5).tokens != [B, C]


def test_beam_options_as_openai():
    with pytest.raises(ValueError, match="best_of"):
        decode(MarkovModel(), best_of=3)  # best_of at temperature 0
    with pytest.raises(ValueError, match="together"):
        decode(MarkovModel(), beam_size=2, best_of=2, temperature=0.5)
    with pytest.raises(ValueError, match="patience"):
        decode(MarkovModel(), patience=2.0)


def test_beam_decoder_patience_and_finalize():
    bs = BeamSearchDecoder(2, eot=9, patience=2.0)
    assert bs.max_candidates == 4
    # nothing finished: finalize tops up with the live beams, best first, each closed by <|endoftext|>
    tokens = np.array([[1, 2], [1, 3]])
    seqs, scores = bs.finalize(tokens, np.array([-2.0, -1.0]))
    assert seqs == [[1, 3, 9], [1, 2, 9]] and scores == [-1.0, -2.0]


def test_best_of_keeps_the_likeliest_sample():
    model = MarkovModel()
    r = decode(model, best_of=20, temperature=1.0)
    assert model.max_batch == 20
    assert r.tokens == [B, C] and r.temperature == 1.0  # the best average log-prob of every path


def test_length_penalty_ranking():
    tokens = [[1] * 2, [1] * 10]
    assert rank_candidates(tokens, [-2.0, -3.0], None) == 1  # -1.0 vs -0.3 per token
    assert rank_candidates(tokens, [-2.0, -3.0], 0.0) == 0  # no length normalization
    assert rank_candidates(tokens, [-2.0, -3.0], 1.0) == 1  # -2 / (7 / 6) vs -3 / (15 / 6)


def test_fallback_gives_beams_to_t0_and_best_of_to_t_above():
    seen = []

    class Recording(MarkovModel):
        def decode(self, tokens, audio, cache):
            seen.append(tokens.shape[0])
            return super().decode(tokens, audio, cache)

    mel = np.zeros((80, N_FRAMES + 500), np.float32)
    mel[:, :500] = np.random.default_rng(0).normal(0, 0.5, (80, 500))
    transcribe(Recording(), tokenizer(), mel, DecodingOptions(without_timestamps=True, beam_size=3, best_of=4),
               list(range(EOT + 1, N_VOCAB)), temperature=(0.0, 0.5), logprob_threshold=0.0)  # every window fails
    assert 3 in seen and 4 in seen  # beam 3 at t=0, then 4 samples at t=0.5


# --- the compiled tiny.en artifact -------------------------------------------------------------------------------

def test_beam_on_tiny_en_matches_reference_and_openai(tiny_en_model, tiny_en_checkpoint, data):
    """Beam 5 on JFK: the compiled artifact's tokens equal the numpy float64 reference running the same beam code
    (the KV cache reordered by the kv_gather graph vs numpy indexing), and the text equals openai-whisper's beam 5
    (tests/data/openai_tiny.en_jfk_words.json), which differs from greedy (it adds the punctuation)."""
    import json
    from pathlib import Path

    from compiler.reference import NumpyWhisper
    from compiler.runtime.audio import load_audio

    golden = json.loads((Path(__file__).parent / "data" / "openai_tiny.en_jfk_words.json").read_text())
    m = tiny_en_model
    mel = m.log_mel(load_audio(str(data / "short" / "jfk.flac")))
    options = DecodingOptions(beam_size=5)
    ours = transcribe(m, m.tokenizer, mel, options, m.suppress, temperature=0.0)
    assert ours["text"] == golden["beam5_text"].strip() != golden["text"].strip()
    ref = transcribe(NumpyWhisper(tiny_en_checkpoint), m.tokenizer, mel, options, m.suppress, temperature=0.0)
    assert [w.tokens for w in ours["windows"]] == [w.tokens for w in ref["windows"]]
    assert abs(ours["windows"][0].avg_logprob - ref["windows"][0].avg_logprob) < 1e-3
    via_api = m.transcribe(str(data / "short" / "jfk.flac"), beam_size=5, temperature=0.0)
    assert via_api["text"] == ours["text"]
