"""Calibration: choose a reduced-precision plan by measuring parity, before anything is compiled.

``--fp16``/``--bf16`` start from the precision's default plan (weights, matmuls, KV cache and logits' inputs reduced;
residual stream, layer-norm statistics, softmax and mel in float32) and measure it on calibration audio with the
numpy reference emulating the plan (``reference.NumpyWhisper(plan=...)``: tensors rounded where the graphs store or
compute them in that dtype) against the float64 reference: decoder logits under teacher forcing on the reference's
own greedy tokens, and whether the greedy choice changes. While the error is over budget (a quarter of the
precision's logits tolerance, leaving room for the kernels' own rounding), the op class whose return to float32
lowers the error most goes back to float32 (the logits' inputs, the KV cache; weights and matmuls stay reduced, that
is the point of the precision). The search only ever raises precision, so a calibrated plan is never riskier than
the default. The chosen plan and every measured candidate go into the manifest; the compiled artifact then passes
its own parity gate as always.

The encoder's rounding error grows with depth and width (base fp16, emulated: encoder 1.5e-2, cross K 1.9e-2 relative
to the largest value, all of it from fp16 weights and matmuls), so the compile-time parity bound of the encoder
stages scales with the emulated error of the plan (parity.tolerances).

Measured on tiny.en (test signal + JFK): the default fp16 plan 1.5e-3 relative logits error, the most aggressive
one (residual and layer norm in fp16 too) also 1.5e-3; bf16 7.3e-3 — all within budget, so tiny.en keeps the default.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from .checkpoint import Checkpoint
from .precision import PrecisionPlan
from .reference import NumpyWhisper, log_mel_spectrogram
from .runtime.audio import N_SAMPLES

TUNABLE = ("logits", "kv_cache")  # reduced by default; the search may return them to float32
BUDGET = 0.25  # of the logits tolerance


class Calibration:
    """The float64 reference's logits on each calibration window, computed once; ``error(plan)`` emulates a plan."""

    def __init__(self, ck: Checkpoint, audios: list[np.ndarray], n_tokens: int = 16, frames: int | None = None):
        d = ck.dims
        self.ck = ck
        # deep models make the float64 reference slow: a shorter window (as the compile-time parity does)
        self.frames = frames or (3000 if d.n_audio_layer * d.n_audio_state <= 6 * 512 else 400)
        ref = NumpyWhisper(ck)
        tk = ck.tokens
        prompt = [tk.sot] + ([tk.languages["en"], tk.transcribe] if tk.languages else []) + [tk.no_timestamps]
        self.cases = []
        for audio in audios:
            window = log_mel_spectrogram(audio, d.n_mels, N_SAMPLES)[:, :self.frames][None].astype(np.float32)
            audio_f = ref.encode(window)
            tokens = list(prompt)
            cache, feed = None, np.array([prompt], dtype=np.int64)
            for _ in range(n_tokens):  # the reference's greedy tokens (no rules: only a teacher-forcing path)
                logits, cache = ref.decode(feed, audio_f, cache)
                nxt = int(np.argmax(logits[0, -1]))
                tokens.append(nxt)
                if nxt == tk.eot:
                    break
                feed = np.array([[nxt]], dtype=np.int64)
            toks = np.array([tokens[:-1]], dtype=np.int64)
            self.cases.append((window, toks, ref.decode(toks, audio_f, None)[0], audio_f))

    def error(self, plan: PrecisionPlan) -> dict:
        model = NumpyWhisper(self.ck, plan=plan)
        rel, enc, kv, agree, n = 0.0, 0.0, 0.0, 0, 0
        for window, toks, want, want_audio in self.cases:
            audio_f = model.encode(window)
            got = model.decode(toks, audio_f, None)[0]
            rel = max(rel, _rel(got, want))
            enc = max(enc, _rel(audio_f["xa"], want_audio["xa"]))
            kv = max(kv, max(_rel(a, b) for (a, _), (b, _) in zip(audio_f["cross"], want_audio["cross"])))
            agree += int((got.argmax(-1) == want.argmax(-1)).sum())
            n += want.shape[1]
        return {"logits_max_rel": rel, "encoder_max_rel": enc, "cross_kv_max_rel": kv,
                "argmax_agreement": agree / max(n, 1)}


def _rel(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want|, the parity metric."""
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def calibrate(ck: Checkpoint, plan: PrecisionPlan, tolerance: float, audios: list[np.ndarray],
              log=print, frames: int | None = None, n_tokens: int = 16) -> tuple[PrecisionPlan, dict]:
    """The plan to compile for ``plan``'s precision, and the report of how it was chosen."""
    t0 = time.perf_counter()
    cal = Calibration(ck, audios, n_tokens=n_tokens, frames=frames)
    budget = BUDGET * tolerance
    current = plan
    tried = []

    def measure(p: PrecisionPlan) -> dict:
        e = cal.error(p)
        tried.append({"float32": [c for c in TUNABLE if getattr(p, c) == "float32"], **e})
        log(f"      calibrate: float32 for {', '.join(tried[-1]['float32']) or 'nothing'} → logits "
            f"{e['logits_max_rel']:.2e} rel, argmax agreement {e['argmax_agreement']:.1%}")
        return e

    err = measure(current)
    while err["logits_max_rel"] > budget:
        options = [c for c in TUNABLE if getattr(current, c) != "float32"]
        if not options:
            break
        results = [(measure(replace(current, **{c: "float32"})), c) for c in options]
        best, c = min(results, key=lambda r: r[0]["logits_max_rel"])
        current, err = replace(current, **{c: "float32"}), best
    report = {"method": "numpy emulation of the plan vs the float64 reference, teacher-forced decoder logits",
              "clips": len(audios), "frames": cal.frames, "budget_logits_max_rel": budget, "candidates": tried,
              "chosen": {c: getattr(current, c) for c in TUNABLE}, "met_budget": err["logits_max_rel"] <= budget,
              "expected": err,  # the chosen plan's own rounding error per stage (parity.tolerances scales with it)
              "seconds": round(time.perf_counter() - t0, 1)}
    return current, report
