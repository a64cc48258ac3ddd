"""The step graph's timestamp rules (graph.WhisperGraphs.step_rules, made on the device from each row's token history)
against openai's rules as the host applies them (decoding.ApplyTimestampRules): the same masked token ids for many
random histories, rows of different lengths in one batch, and the prompt's call, where the host's rules stand."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.runtime import decoding

TB, EOT, N_CTX = 50363, 50256, 40  # tiny.en's first timestamp and <|endoftext|>; a short history
VOCAB = TB + 1501


@pytest.fixture(scope="module")
def rules_graph():
    from max.driver import CPU
    from max.dtype import DType
    from max.engine import InferenceSession
    from max.graph import DeviceRef, Graph, TensorType

    from compiler.graph import PICK_RULES, WhisperGraphs
    from compiler.precision import plan_for
    from tests.helpers import SMALL

    b = WhisperGraphs(SMALL, plan_for("fp32", "cpu"), DeviceRef.CPU(), "mojo")
    i64 = DType.int64
    types = [TensorType(i64, ["batch", N_CTX + 1], b.device), TensorType(i64, [1], b.device),
             TensorType(i64, [1], b.device), TensorType(i64, ["batch", PICK_RULES], b.device)]
    with Graph("rules", input_types=types) as g:
        b.graph = g
        g.output(b.step_rules(*(v.tensor for v in g.inputs)))
    return InferenceSession(devices=[CPU()]).load(g)


class _Tk:
    timestamp_begin, eot, no_speech, no_timestamps = TB, EOT, 50361, 50362


def _mask(intervals) -> np.ndarray:
    m = np.zeros(VOCAB, dtype=bool)
    for lo, hi in intervals:
        m[lo:min(hi, VOCAB)] = True
    return m


def _graph_masks(model, hist: np.ndarray, pos: int, last: int, rules: np.ndarray) -> list[np.ndarray]:
    out = model.execute(hist, np.array([pos]), np.array([last]), rules)[0].to_numpy()
    return [_mask([(out[k, 2 * j], out[k, 2 * j + 1]) for j in range(4)]) for k in range(out.shape[0])]


def test_step_rules_match_openai_timestamp_rules(rules_graph):
    rng = np.random.default_rng(0)
    for trial in range(60):
        batch, sample_begin = 4, int(rng.integers(1, 4))
        last = int(rng.integers(sample_begin, N_CTX))  # the last fed token (a step: at least one sampled)
        hist = np.zeros((batch, N_CTX + 1), dtype=np.int64)
        for k in range(batch):  # text, timestamps, runs of timestamps, in random proportions per row
            p_ts = rng.uniform(0, 1)
            is_ts = rng.uniform(size=N_CTX + 1) < p_ts
            hist[k] = np.where(is_ts, TB + rng.integers(0, 1501, N_CTX + 1), rng.integers(0, EOT, N_CTX + 1))
        ts = decoding.ApplyTimestampRules(_Tk(), sample_begin, None)
        prompt_rules = decoding.pick_rules([ts], hist[:, :sample_begin], 0, _Tk())
        rules = decoding.step_rules(prompt_rules)
        rules[:, 4:6] = [7, 9]  # a host interval beyond the timestamp rules is kept
        got = _graph_masks(rules_graph, hist, last, last, rules)
        for k in range(batch):
            want = _mask(ts.intervals(hist[k, :last + 1]) + [(7, 9)])
            assert (got[k] == want).all(), (trial, k, sample_begin, last, hist[k, sample_begin:last + 1])


def test_step_rules_off_and_on_the_prompt_call(rules_graph):
    """Without timestamp rules a step masks nothing from the history; on the prompt's call (pos 0) the host's
    rules pass unchanged, whatever the history holds."""
    hist = np.full((2, N_CTX + 1), TB + 5, dtype=np.int64)
    plain = decoding.step_rules(decoding.pick_rules([], hist[:, :3], 0, _Tk()))
    assert not any(m.any() for m in _graph_masks(rules_graph, hist, 10, 10, plain))
    first = decoding.pick_rules([decoding.ApplyTimestampRules(_Tk(), 3, 50)], hist[:, :3], 0, _Tk())
    got = _graph_masks(rules_graph, hist, 0, 2, first)
    want = _mask(decoding.ApplyTimestampRules(_Tk(), 3, 50).intervals(hist[0, :3]))
    assert all((m == want).all() for m in got) and want[:TB].all() and want[TB + 51:].all()
