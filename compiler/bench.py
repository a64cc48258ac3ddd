"""``mwc bench``: time a compiled artifact on the workloads of the peer benchmark (tests/bench_peers.py).

Workloads (the same definitions the peer script uses for faster-whisper, openai-whisper and transformers):
  MEL   log-mel of one 30 s window: the compiled mel graph, input and output on the artifact's device
  LF    long-form transcription of one file (openai's sequential 30 s windows), greedy, batch 1
  LFC   batched long-form of one file (``transcribe_chunked``: <= 30 s chunks cut at quiet points, ``batch`` of
        them decoded together, without timestamps), greedy
  TP    many short files, ``batch`` files in flight at once (``transcribe_many``: their windows share decoder
        batches)
  COLD  load the artifact and transcribe the first file (``mwc bench`` runs it in this process; the peer script
        starts a new process for it)
  W30   one 30 s window: mel + encoder + exactly ``n_tokens`` greedy tokens with end-of-text suppressed, at
        ``batch`` copies of the window
Each timed workload runs once to warm up, then ``repeat`` times; the best time counts. Audio is decoded to 16 kHz
float32 before timing (peers get the same arrays).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np

WORKLOADS = ("MEL", "LF", "LFC", "TP", "COLD", "W30")


def _sync(model) -> None:
    if model.device is not None:
        model.device.synchronize()


def _best(fn, repeat: int) -> tuple[float, object]:
    fn()  # warm-up: first executions allocate and load kernels
    best, out = float("inf"), None
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def window_30s(audio: np.ndarray) -> np.ndarray:
    from .runtime.audio import N_SAMPLES

    a = np.asarray(audio, dtype=np.float32)[:N_SAMPLES]
    return np.pad(a, (0, N_SAMPLES - len(a)))


def mel_ms(model, audio: np.ndarray, calls: int = 50) -> dict:
    """Median ms of the mel graph on one 30 s window: device-resident input and output (the kernel's cost plus
    one execute), and host to host (upload, mel, copy back)."""
    from .runtime.model import to_numpy

    x = window_30s(audio)
    dev = model._in(x)
    mel_graph = model.models["mel"]

    def on_device():
        out = mel_graph.execute(dev)[0]
        _sync(model)
        return out

    def host():
        return to_numpy(mel_graph.execute(model._in(x))[0])

    res = {}
    for name, fn in (("device", on_device), ("host", host)):
        for _ in range(3):
            fn()
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        res[name] = statistics.median(times) * 1e3
    return res


def w30(model, audio: np.ndarray, batch: int = 1, n_tokens: int = 100) -> dict:
    """mel + encoder + ``n_tokens`` greedy steps (end-of-text suppressed) on ``batch`` copies of one window."""
    from .runtime.decoding import graph_picks, sot_sequence

    tk = model.tokenizer
    x = window_30s(audio)
    prompt = sot_sequence(tk, "en" if tk.languages else None, "transcribe", without_timestamps=True)
    suppress = tuple(sorted(set(model.suppress) | {tk.eot, tk.no_timestamps}))
    t0 = time.perf_counter()
    mel = model.log_mel(x, padding=0)
    t_mel = time.perf_counter()
    audio_features = model.encode(np.repeat(mel[None], batch, axis=0))
    _sync(model)
    t_enc = time.perf_counter()
    tokens = np.array([prompt] * batch, dtype=np.int64)
    picks = graph_picks(model, tk, [], tokens, audio_features, 0, suppress, n_tokens)  # as the runtime decodes
    out = [next(picks)[0]]
    t_first = time.perf_counter()
    out += [ids for ids, _, _ in picks]
    t_end = time.perf_counter()
    return {"seconds": t_end - t0, "mel_ms": (t_mel - t0) * 1e3, "encoder_ms": (t_enc - t_mel) * 1e3,
            "prefill_ms": (t_first - t_enc) * 1e3, "step_ms": (t_end - t_first) / max(1, n_tokens - 1) * 1e3,
            "tokens": int(np.stack(out, axis=1).size)}


def run_mwc(artifact_dir: str | Path, workload: str, files: list, *, batch: int | None = 1, n_tokens: int = 100,
            repeat: int = 3) -> dict:
    """One workload on one artifact → {"seconds", "texts", "detail"} (the peer script's worker contract).

    ``files`` are paths or 16 kHz float32 arrays; they are decoded before any timing. ``batch`` None: the model's
    default (LFC: ``Whisper.chunked_batch_size``)."""
    from .runtime.audio import SAMPLE_RATE, load_audio
    from .runtime.model import Whisper

    workload = workload.upper()
    if workload not in WORKLOADS:
        raise ValueError(f"workload must be one of {', '.join(WORKLOADS)}")
    audios = [f if isinstance(f, np.ndarray) else load_audio(f) for f in files]
    if not audios:
        raise ValueError(f"{workload}: give at least one audio file")
    t0 = time.perf_counter()
    model = Whisper(artifact_dir)
    load_s = time.perf_counter() - t0
    detail: dict = {"load_s": load_s, "device": model.manifest["device"],
                    "precision": model.manifest["precision"]["name"],
                    "compile_s": model.manifest.get("timings", {}).get("compile_s"),
                    "audio_seconds": sum(len(a) for a in audios) / SAMPLE_RATE}
    texts: list[str] = []
    language = "en" if model.tokenizer.languages else None  # the peers are told English too (LF/TP are English)
    if workload == "COLD":
        t1 = time.perf_counter()
        texts = [model.transcribe(audios[0], language=language, temperature=0.0)["text"]]
        seconds = load_s + time.perf_counter() - t1
        detail["audio_seconds"] = len(audios[0]) / SAMPLE_RATE
    elif workload == "MEL":
        ms = mel_ms(model, audios[0])
        seconds = ms["device"] / 1e3
        detail.update({"mel_ms_device": ms["device"], "mel_ms_host": ms["host"]})
    elif workload == "W30":
        seconds, res = _best(lambda: w30(model, audios[0], batch, n_tokens), repeat)
        detail.update(res)
        detail["batch"], detail["n_tokens"] = batch, n_tokens
    elif workload == "TP":  # greedy without temperature fallback, as the peers are run; files batched
        def run():
            return [r["text"] for r in model.transcribe_many(audios, batch_size=batch, language=language,
                                                              temperature=0.0)]

        seconds, texts = _best(run, repeat)
        detail["rtf"] = seconds / detail["audio_seconds"]
        detail["batch"] = batch
    elif workload == "LFC":  # the same chunks are given to faster-whisper's batched pipeline (bench_peers.py)
        from .runtime.audio import chunk_bounds

        def run():
            return [model.transcribe_chunked(a, batch_size=batch, language=language, temperature=0.0,
                                             without_timestamps=True)["text"] for a in audios]

        seconds, texts = _best(run, max(1, repeat - 1))
        detail["rtf"] = seconds / detail["audio_seconds"]
        detail["batch"] = batch or model.chunked_batch_size
        detail["chunks"] = sum(len(chunk_bounds(a)) for a in audios)
    else:  # LF: greedy without temperature fallback, as the peers are run
        def run():
            return [model.transcribe(a, language=language, temperature=0.0)["text"] for a in audios]

        seconds, texts = _best(run, max(1, repeat - 1))
        detail["rtf"] = seconds / detail["audio_seconds"]
    if model.device is not None:
        try:
            detail["device_memory"] = model.device.stats
        except Exception:  # noqa: BLE001 - stats are informational
            pass
    return {"system": "mwc", "workload": workload, "seconds": seconds, "texts": texts, "detail": detail}


def profile(model, audio: np.ndarray, n_tokens: int = 100) -> dict:
    """Where a window's time goes: mel, encoder, prefill, one greedy step (batch 1)."""
    w30(model, audio, 1, 8)  # warm-up
    return w30(model, audio, 1, n_tokens)
