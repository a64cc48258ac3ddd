#!/usr/bin/env python3
"""Peer benchmark: mwc vs faster-whisper (CTranslate2), openai-whisper and transformers on one device, in one run.

Every system runs each workload in its own subprocess (``--worker SYSTEM --workload W``, one JSON line back), on the
same audio (16 kHz mono float32 handed to every peer as numpy; mwc reads the same wav files), the same weights and
the same decoding settings: greedy, temperature 0 without fallback, English, previous-text conditioning on, no VAD,
timestamps on (each system's own long-form loop for LF; one window per short clip for TP).

Workloads:
  LF    one long English file (clips of the dev set joined), long-form, batch 1: seconds, RTF, WER
  LFC   the LF file as batched long-form: cut into <= 30 s chunks at quiet points (mwc's chunk_bounds), the same
        chunks decoded by each system with its TP batching, without timestamps: seconds, RTF, WER
  TP    N short clips (the dev clips, repeated to N): each system's best batching (faster-whisper
        BatchedInferencePipeline, transformers generate in batches, mwc transcribe_many, openai-whisper
        sequential): seconds, WER
  MEL   log-mel of one 30 s window with each system's own feature extractor: ms per call (median)
  COLD  a new process: import + load + transcribe examples/jfk → seconds to the first result (mwc: + compile time)
  MEM   peak device memory of each (system, workload) subprocess, sampled with nvidia-smi (n/a on CPU)
  W30   random weights of real sizes: one 30 s window, encoder + exactly 100 tokens (end-of-text suppressed),
        batch 1 and 16 (--w30-only / --prepare-w30)

Timings are the best of --repeat runs after one warmup; ratios are peer time / mwc time (> 1: mwc faster), only
between systems measured in this run. The table prints last; raw results go to --out as JSON.

  # once, on a machine with the dev set (writes lf.wav, tp/*.wav, jfk.wav and reference texts):
  python tests/bench_peers.py --prepare-data /tmp/mwc-bench/data --clips ../shared/data --lf-minutes 10
  # the run (models for openai-whisper / transformers are converted from the CT2 folder into --work):
  python tests/bench_peers.py --device cuda --data /tmp/mwc-bench/data --ct2 CT2_DIR --mwc ARTIFACT --out OUT
  # W30: build the random-weight folders (transformers → HF, ctranslate2 converter, openai .pt, mwc compile)
  python tests/bench_peers.py --prepare-w30 /tmp/w30 --w30-sizes small,large-v3 --mwc-compile-args="--fp16 --device gpu"
  python tests/bench_peers.py --w30-only --w30-dir /tmp/w30 --device cuda --out OUT
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time
import types
import wave
from pathlib import Path

T_START = time.perf_counter()  # COLD: the worker's own clock starts at interpreter start (close enough: imports)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SYSTEMS = ("mwc", "faster", "openai", "hf")
LABELS = {"mwc": "mwc", "faster": "faster-whisper", "openai": "openai-whisper", "hf": "transformers"}
WORKLOADS = ("LF", "LFC", "TP", "MEL", "COLD")
SR = 16000
N_SAMPLES = 30 * SR
RESULT_TAG = "BENCH_RESULT "

# The mwc side: compiler.bench.run_mwc once it exists (another engineer's module), else the local adapter below.
# To force one: --mwc-runner bench|local.
MWC_RUNNER_DEFAULT = "auto"


# ======================================================================================================== audio / io
def read_wav(path: str | Path):
    """16-bit PCM mono wav → float32 numpy (standard library only; the data files are written that way)."""
    import numpy as np

    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1 or w.getframerate() != SR:
            raise SystemExit(f"{path}: expected 16 kHz mono 16-bit wav (run --prepare-data)")
        raw = w.readframes(w.getnframes())
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0


def write_wav(path: Path, audio) -> None:
    import numpy as np

    pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).round().astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(pcm.tobytes())


def prepare_data(out: Path, clips_dir: Path, lf_minutes: float, tp_clips: int) -> None:
    """LF (English short clips of the dev set joined in manifest order, cycled until lf_minutes), TP (the clips,
    repeated to tp_clips), a 30 s window and JFK, each as 16 kHz mono 16-bit wav, with reference texts."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from compiler.runtime.audio import load_audio

    out.mkdir(parents=True, exist_ok=True)
    (out / "tp").mkdir(exist_ok=True)
    rows = [json.loads(line) for line in (clips_dir / "manifest.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("language") == "en" and r.get("text") and r.get("kind") == "short"]
    if not rows:
        raise SystemExit(f"{clips_dir}/manifest.jsonl: no short English clips with reference texts")
    audios = [load_audio(clips_dir / r["file"]) for r in rows]
    pieces, texts, names, total, i = [], [], [], 0, 0
    while total < lf_minutes * 60 * SR:
        a = audios[i % len(rows)]
        pieces.append(a)
        texts.append(rows[i % len(rows)]["text"])
        names.append(rows[i % len(rows)]["file"])
        total += len(a)
        i += 1
    lf = np.concatenate(pieces)
    write_wav(out / "lf.wav", lf)
    tp = []
    for j, (r, a) in enumerate(zip(rows, audios)):
        name = f"tp/{j:02d}_{Path(r['file']).stem}.wav"
        write_wav(out / name, a[:N_SAMPLES])
        tp.append({"file": name, "ref": r["text"], "seconds": len(a) / SR})
    tp = [tp[k % len(tp)] for k in range(tp_clips)]
    write_wav(out / "w30.wav", lf[:N_SAMPLES])
    jfk = ROOT / "examples" / "jfk.flac"
    write_wav(out / "jfk.wav", load_audio(jfk))
    meta = {"lf": {"file": "lf.wav", "ref": " ".join(texts), "seconds": len(lf) / SR, "clips": names},
            "tp": tp, "w30": {"file": "w30.wav"}, "jfk": {"file": "jfk.wav"},
            "source": str(clips_dir)}
    (out / "data.json").write_text(json.dumps(meta, indent=1))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"data: {out} (LF {len(lf) / SR:.0f} s from {len(names)} clips, TP {len(tp)} clips of {len(rows)} unique, "
          f"{size / 1e6:.1f} MB)")


# ================================================================================================== WER (parent only)
def wer(refs: list[str], hyps: list[str]) -> float | None:
    try:
        import jiwer
        from whisper_normalizer.english import EnglishTextNormalizer
    except ImportError as e:
        print(f"warning: no WER ({e}); carry jiwer + whisper-normalizer", file=sys.stderr)
        return None
    norm = EnglishTextNormalizer()
    pairs = [(norm(r), norm(h)) for r, h in zip(refs, hyps)]
    pairs = [(r, h) for r, h in pairs if r.strip()]
    if not pairs:
        return None
    return float(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs]))


# ============================================================================================================ workers
def timed(fn, repeat: int, warmup: int = 1, sync=None):
    """(best seconds, all seconds, last result) of fn() after warmup calls."""
    out = None
    for _ in range(warmup):
        out = fn()
    if sync:
        sync()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t)
    return min(times), times, out


def stub_missing(*names: str) -> list[str]:
    """Stand-ins for modules a peer imports at module level but that this benchmark never calls: PyAV (audio is
    passed as numpy) and numba (openai-whisper's word timestamps). Only when the real one is absent."""
    import importlib.util

    stubbed = []
    for name in names:
        if importlib.util.find_spec(name) is not None:
            continue
        mod = types.ModuleType(name)
        if name == "numba":
            mod.jit = lambda *a, **k: (lambda f: f)
        sys.modules[name] = mod
        stubbed.append(name)
    return stubbed


def torch_sync(device: str):
    if device != "cuda":
        return None
    import torch

    return torch.cuda.synchronize


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Peer:
    """One system's model and workloads. Subclasses set up the model and implement lf/tp/mel/w30."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.device = spec["device"]
        self.fp16 = spec["precision"] == "fp16"
        self.sync = None

    def run(self, workload: str) -> dict:
        s = self.spec
        data = Path(s["data"]) if s.get("data") else None
        repeat = s["repeat"]
        if workload == "LF":
            audio = read_wav(data / s["meta"]["lf"]["file"])
            best, times, text = timed(lambda: self.lf(audio), repeat, sync=self.sync)
            return {"seconds": best, "times": times, "texts": [text]}
        if workload == "LFC":  # the same chunks for every system (mwc's chunk_bounds), without timestamps
            audio = read_wav(data / s["meta"]["lf"]["file"])
            sys.path.insert(0, str(ROOT))
            from compiler.runtime.audio import chunk_bounds

            chunks = [audio[a:b] for a, b in chunk_bounds(audio)]
            best, times, texts = timed(lambda: self.tp(chunks, timestamps=False), repeat, sync=self.sync)
            return {"seconds": best, "times": times, "texts": [" ".join(texts)], "chunks": len(chunks),
                    "batch": s["tp_batch"]}
        if workload == "TP":
            files = [data / t["file"] for t in s["meta"]["tp"]]
            audios = [read_wav(f) for f in files]
            best, times, texts = timed(lambda: self.tp(audios), repeat, sync=self.sync)
            return {"seconds": best, "times": times, "texts": texts, "batch": s["tp_batch"]}
        if workload == "MEL":
            audio = read_wav(data / s["meta"]["w30"]["file"])[:N_SAMPLES]
            for _ in range(3):
                self.mel(audio)
            times = []
            for _ in range(s["mel_calls"]):
                t = time.perf_counter()
                self.mel(audio)
                if self.sync:
                    self.sync()
                times.append(time.perf_counter() - t)
            return {"seconds": statistics.median(times), "times_ms_min": min(times) * 1e3, "calls": len(times),
                    "texts": []}
        if workload == "W30":
            audio = read_wav(s["w30_audio"])[:N_SAMPLES]
            out = {}
            for b in s["w30_batches"]:
                state = self.w30_setup(audio, b)
                best, times, res = timed(lambda: self.w30(state), repeat, sync=self.sync)
                out[str(b)] = {"seconds": best, "times": times, **res}  # new_tokens, first_tokens (same weights?)
            return {"seconds": out[str(s["w30_batches"][0])]["seconds"], "batches": out, "texts": []}
        raise SystemExit(f"unknown workload {workload}")


class Faster(Peer):
    def __init__(self, spec):
        super().__init__(spec)
        self.stubbed = stub_missing("av")
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        ct = "float16" if self.fp16 else "float32"
        self.model = WhisperModel(spec["models"]["faster"], device=self.device, compute_type=ct,
                                  cpu_threads=spec.get("cpu_threads", 0))
        self.batched = BatchedInferencePipeline(self.model)

    def lf(self, audio):
        segs, _ = self.model.transcribe(audio, language="en", beam_size=1, best_of=1, temperature=0.0,
                                        condition_on_previous_text=True, vad_filter=False, without_timestamps=False)
        return "".join(s.text for s in segs)

    def tp(self, audios, timestamps=True):
        import numpy as np

        starts, t = [], 0
        for a in audios:
            starts.append(t)
            t += len(a)
        joined = np.concatenate(audios)
        clips = [{"start": s / SR, "end": (s + len(a)) / SR} for s, a in zip(starts, audios)]
        segs, _ = self.batched.transcribe(joined, language="en", beam_size=1, best_of=1, temperature=0.0,
                                          batch_size=self.spec["tp_batch"], without_timestamps=not timestamps,
                                          vad_filter=False, clip_timestamps=clips)
        texts = [""] * len(audios)
        bounds = [c["start"] for c in clips]
        import bisect

        for seg in segs:
            k = max(0, bisect.bisect_right(bounds, seg.start + 1e-3) - 1)
            texts[k] += seg.text
        return [x.strip() for x in texts]

    def mel(self, audio):
        return self.model.feature_extractor(audio)

    def w30_setup(self, audio, batch):
        import ctranslate2
        import numpy as np
        from faster_whisper.feature_extractor import FeatureExtractor

        m = self.model.model
        fe = FeatureExtractor(feature_size=m.n_mels) if hasattr(m, "n_mels") else self.model.feature_extractor
        feat = fe(audio)[:, :3000].astype(np.float32)
        feats = ctranslate2.StorageView.from_array(np.ascontiguousarray(np.repeat(feat[None], batch, 0)))
        tok = self.spec["w30_tokens"]
        return {"features": feats, "prompts": [tok["prompt"]] * batch, "eot": tok["eot"]}

    def w30(self, st):
        n = self.spec["n_tokens"]
        # CTranslate2's Whisper generates at most max_length // 2 tokens (openai's sample_len = n_text_ctx // 2)
        res = self.model.model.generate(st["features"], st["prompts"], beam_size=1, suppress_blank=False,
                                        suppress_tokens=[st["eot"]], max_length=2 * n, return_scores=False)
        return {"new_tokens": min(len(r.sequences_ids[0]) for r in res), "first_tokens": res[0].sequences_ids[0][:8]}


class OpenAI(Peer):
    def __init__(self, spec):
        super().__init__(spec)
        self.stubbed = stub_missing("numba")
        import torch
        import whisper

        self.torch, self.whisper = torch, whisper
        self.model = whisper.load_model(spec["models"]["openai"], device=self.device)
        self.sync = torch_sync(self.device)
        self.multilingual = self.model.is_multilingual

    def _opts(self, **kw):
        return dict(language="en", temperature=0.0, fp16=self.fp16, condition_on_previous_text=True, verbose=None,
                    **kw)

    def lf(self, audio):
        return self.model.transcribe(audio, **self._opts())["text"]

    def tp(self, audios, timestamps=True):
        return [self.model.transcribe(a, **self._opts(without_timestamps=not timestamps))["text"] for a in audios]

    def mel(self, audio):
        if getattr(self, "_mel_in", (None,))[0] is not audio:  # the window uploaded once, as mwc's input is
            self._mel_in = (audio, self.torch.from_numpy(audio).to(self.device))
        return self.whisper.log_mel_spectrogram(self._mel_in[1], self.model.dims.n_mels)

    def w30_setup(self, audio, batch):
        from whisper.decoding import DecodingOptions, DecodingTask

        mel = self.whisper.log_mel_spectrogram(audio, self.model.dims.n_mels)[:, :3000].to(self.device)
        mel = mel[None].repeat(batch, 1, 1)
        eot = self.spec["w30_tokens"]["eot"]
        opts = DecodingOptions(language="en" if self.multilingual else None, without_timestamps=True,
                               sample_len=self.spec["n_tokens"], suppress_tokens=[eot], suppress_blank=False,
                               fp16=self.fp16)
        return {"mel": mel, "opts": opts, "task": DecodingTask}

    def w30(self, st):
        torch = self.torch
        task = st["task"](self.model, st["opts"])  # openai's own loop: encoder, KV-cache hooks, logit filters
        with torch.no_grad():
            mel = st["mel"].half() if self.fp16 else st["mel"]
            feats = task._get_audio_features(mel)
            tokens = torch.tensor([task.initial_tokens]).repeat(mel.shape[0], 1).to(self.device)
            try:
                tokens, _, _ = task._main_loop(feats, tokens)
            finally:
                task.inference.cleanup_caching()
        new = tokens[0, task.sample_begin:].tolist()
        return {"new_tokens": int(tokens.shape[1] - task.sample_begin), "first_tokens": new[:8]}


class HF(Peer):
    def __init__(self, spec):
        super().__init__(spec)
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        self.torch = torch
        self.dtype = torch.float16 if self.fp16 else torch.float32
        folder = spec["models"]["hf"]
        self.proc = WhisperProcessor.from_pretrained(folder)
        self.model = WhisperForConditionalGeneration.from_pretrained(folder, dtype=self.dtype)
        self.model = self.model.to(self.device, self.dtype).eval()  # older transformers name it torch_dtype
        self.sync = torch_sync(self.device)
        self.multilingual = bool(getattr(self.model.generation_config, "is_multilingual", False))

    def _lang(self):
        return {"language": "en", "task": "transcribe"} if self.multilingual else {}

    def _features(self, audios, long_form: bool):
        fe = self.proc.feature_extractor
        kw = {"truncation": False, "padding": "longest", "return_attention_mask": True} if long_form else {}
        f = fe(audios, sampling_rate=SR, return_tensors="pt", device=self.device, **kw)
        feats = f.input_features
        mask = f.get("attention_mask") if long_form else None
        if feats.shape[-1] < 3000:  # shorter than one window: pad like the short-form path
            feats = self.torch.nn.functional.pad(feats, (0, 3000 - feats.shape[-1]))
            mask = None
        feats = feats.to(self.device, self.dtype)
        return feats, (mask.to(self.device) if mask is not None else None)

    def lf(self, audio):
        feats, mask = self._features([audio], long_form=True)
        with self.torch.no_grad():
            out = self.model.generate(feats, attention_mask=mask, return_timestamps=True, do_sample=False,
                                      num_beams=1, temperature=0.0, condition_on_prev_tokens=True,
                                      logprob_threshold=-1.0, no_speech_threshold=0.6, **self._lang())
        seqs = out["sequences"] if isinstance(out, dict) else out
        return self.proc.batch_decode(seqs, skip_special_tokens=True)[0]

    def tp(self, audios, timestamps=True):
        texts, b = [], self.spec["tp_batch"]
        for i in range(0, len(audios), b):
            feats, _ = self._features(audios[i:i + b], long_form=False)
            with self.torch.no_grad():
                out = self.model.generate(feats, return_timestamps=timestamps, do_sample=False, num_beams=1,
                                          **self._lang())
            texts += self.proc.batch_decode(out, skip_special_tokens=True)
        return [t.strip() for t in texts]

    def mel(self, audio):
        return self.proc.feature_extractor(audio, sampling_rate=SR, return_tensors="np", device=self.device)

    def w30_setup(self, audio, batch):
        feats, _ = self._features([audio] * batch, long_form=False)
        return {"features": feats}

    def w30(self, st):
        n = self.spec["n_tokens"]
        with self.torch.no_grad():
            out = self.model.generate(st["features"], max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                      num_beams=1, return_timestamps=False, **self._lang())
        prompt = self.spec["w30_tokens"]["prompt"]  # transformers 4.x returns it in front, 5.x does not
        skip = len(prompt) if out[0, :len(prompt)].tolist() == prompt else 0
        return {"new_tokens": int(out.shape[1] - skip), "first_tokens": out[0, skip:skip + 8].tolist()}


class Mwc(Peer):
    """mwc through compiler.bench.run_mwc (when present) or the local adapter, which runs the runtime's public
    Whisper(artifact).transcribe as a user would (sequential, one file at a time)."""

    def __init__(self, spec):
        super().__init__(spec)
        sys.path.insert(0, str(ROOT))
        self.runner, self.run_mwc = mwc_runner(spec.get("mwc_runner", MWC_RUNNER_DEFAULT))

    def run(self, workload: str) -> dict:
        s = self.spec
        data = Path(s["data"]) if s.get("data") else None
        if workload in ("LF", "LFC"):
            files = [str(data / s["meta"]["lf"]["file"])]
        elif workload == "TP":
            files = [str(data / t["file"]) for t in s["meta"]["tp"]]
        elif workload == "MEL":
            files = [str(data / s["meta"]["w30"]["file"])]
        elif workload == "W30":
            out = {}
            for b in s["w30_batches"]:
                r = self.run_mwc(s["models"]["mwc"], "W30", [s["w30_audio"]], batch=b, n_tokens=s["n_tokens"],
                                 repeat=s["repeat"])
                d = r.get("detail", {})
                sec = r["seconds"]
                if d.get("mel_ms") is not None:  # compiler.bench times mel + encoder + tokens; peers: no mel
                    sec = max(0.0, sec - d["mel_ms"] / 1e3)
                out[str(b)] = {"seconds": sec, "seconds_with_mel": r["seconds"], "detail": d,
                               "new_tokens": d.get("new_tokens", d.get("tokens", 0) // max(1, b))}
            return {"seconds": out[str(s["w30_batches"][0])]["seconds"], "batches": out, "texts": [],
                    "runner": self.runner}
        else:
            raise SystemExit(f"unknown workload {workload}")
        kw = {"repeat": s["mel_calls"] if workload == "MEL" else s["repeat"]}
        batch = s["tp_batch"] if workload in ("TP", "LFC") else 1  # as the batched peers
        r = self.run_mwc(s["models"]["mwc"], workload, files, batch=batch, n_tokens=s["n_tokens"], **kw)
        return {"seconds": r["seconds"], "texts": r.get("texts", []), "detail": r.get("detail", {}),
                "runner": self.runner}


def mwc_runner(choice: str):
    """("bench", compiler.bench.run_mwc) or ("local", local_run_mwc). The one line to switch: MWC_RUNNER_DEFAULT."""
    if choice in ("auto", "bench"):
        try:
            from compiler.bench import run_mwc

            return "bench", run_mwc
        except ImportError:
            if choice == "bench":
                raise
    return "local", local_run_mwc


_MWC_MODELS: dict = {}


def local_run_mwc(artifact_dir, workload, files, batch=1, n_tokens=100, repeat=3) -> dict:
    """Stand-in for compiler.bench.run_mwc with its contract: {"seconds": best of repeat after one warmup (MEL:
    median), "texts": one per file (empty for MEL/W30), "detail": {...}}. Uses the public runtime only."""
    import numpy as np

    from compiler.runtime.audio import load_audio
    from compiler.runtime.model import Whisper

    if artifact_dir not in _MWC_MODELS:
        _MWC_MODELS[artifact_dir] = Whisper(artifact_dir)
    w = _MWC_MODELS[artifact_dir]
    detail = {"precision": w.manifest["precision"]["name"], "device": w.manifest["device"],
              "load_seconds": w.load_seconds, "batch": batch}
    lang = "en" if w.tokenizer.languages else None  # the peers are told English too
    if workload == "LF":
        best, times, out = timed(lambda: w.transcribe(files[0], language=lang, temperature=0.0)["text"], repeat)
        return {"seconds": best, "texts": [out], "detail": {**detail, "times": times}}
    if workload == "TP":  # sequential for now
        def tp():
            return [w.transcribe(f, language=lang, temperature=0.0)["text"] for f in files]

        best, times, out = timed(tp, repeat)
        return {"seconds": best, "texts": out, "detail": {**detail, "times": times}}
    if workload == "MEL":
        audio = load_audio(files[0])[:N_SAMPLES]
        for _ in range(3):
            w.log_mel(audio, padding=0)
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            w.log_mel(audio, padding=0)  # includes the copy back to the host, as the runtime does
            times.append(time.perf_counter() - t)
        return {"seconds": statistics.median(times), "texts": [], "detail": {**detail, "calls": repeat,
                                                                            "min_ms": min(times) * 1e3}}
    if workload == "W30":  # encoder + n_tokens greedy steps with <|endoftext|> suppressed; batch runs sequentially
        from compiler.runtime.decoding import sot_sequence

        audio = load_audio(files[0])[:N_SAMPLES]
        mel = w.log_mel(audio, padding=0)[:, :3000]
        tk = w.tokenizer
        prompt = sot_sequence(tk, "en" if tk.languages else None, "transcribe", True)

        def one():
            feats = w.encode(mel[None].astype(np.float32))
            tokens = np.array([prompt], dtype=np.int64)
            logits, cache = w.decode(tokens, feats, None)
            n = 0
            for _ in range(n_tokens):
                last = np.array(logits[0, -1], dtype=np.float32)
                last[tk.eot] = -np.inf
                nxt = int(np.argmax(last))
                n += 1
                if n == n_tokens:
                    break
                logits, cache = w.decode(np.array([[nxt]], dtype=np.int64), feats, cache)
            return n

        best, times, n = timed(lambda: [one() for _ in range(batch)][0], repeat)
        return {"seconds": best, "texts": [], "detail": {**detail, "times": times, "new_tokens": n,
                                                         "batched": False}}
    raise ValueError(f"workload {workload}")


def cold_worker(system: str, spec: dict) -> dict:
    """Import + load + transcribe jfk in this fresh process; times from interpreter start."""
    audio_path = Path(spec["data"]) / spec["meta"]["jfk"]["file"]
    t0 = time.perf_counter()
    fp16 = spec["precision"] == "fp16"
    dev = spec["device"]
    if system == "mwc":
        sys.path.insert(0, str(ROOT))
        from compiler.runtime.model import Whisper

        t_imp = time.perf_counter()
        w = Whisper(spec["models"]["mwc"])
        t_load = time.perf_counter()
        text = w.transcribe(str(audio_path), language="en" if w.tokenizer.languages else None,
                            temperature=0.0)["text"]
        detail = {"compile_timings": w.manifest.get("timings", {})}
    elif system == "faster":
        stub_missing("av")
        from faster_whisper import WhisperModel

        t_imp = time.perf_counter()
        m = WhisperModel(spec["models"]["faster"], device=dev, compute_type="float16" if fp16 else "float32")
        t_load = time.perf_counter()
        segs, _ = m.transcribe(read_wav(audio_path), language="en", beam_size=1, temperature=0.0, vad_filter=False,
                               without_timestamps=False)
        text = "".join(s.text for s in segs)
        detail = {}
    elif system == "openai":
        stub_missing("numba")
        import whisper

        t_imp = time.perf_counter()
        m = whisper.load_model(spec["models"]["openai"], device=dev)
        t_load = time.perf_counter()
        text = m.transcribe(read_wav(audio_path), language="en", temperature=0.0, fp16=fp16)["text"]
        detail = {}
    elif system == "hf":
        spec = {**spec, "repeat": 1}
        t_imp = time.perf_counter()
        h = HF(spec)  # imports torch + transformers inside
        t_load = time.perf_counter()
        text = h.lf(read_wav(audio_path))
        detail = {}
    else:
        raise SystemExit(system)
    t_end = time.perf_counter()
    return {"seconds": t_end - T_START, "import_s": t_imp - T_START, "load_s": t_load - t_imp,
            "first_result_s": t_end - t_load, "setup_s": t0 - T_START, "texts": [text], "detail": detail}


def worker_main(system: str, workloads: list[str], spec: dict) -> None:
    # torch and CTranslate2 take --cpu-threads; MAX's CPU device is created by the runtime with its defaults (all
    # cores), and a session cannot change it afterwards, so on a CPU mwc is not thread-limited
    if spec["device"] == "cpu" and spec.get("cpu_threads"):
        if system in ("openai", "hf"):
            import torch

            torch.set_num_threads(spec["cpu_threads"])
    for workload in workloads:
        t = time.perf_counter()
        try:
            if workload == "COLD":
                r = cold_worker(system, spec)
            else:
                if "_peer" not in spec:
                    cls = {"mwc": Mwc, "faster": Faster, "openai": OpenAI, "hf": HF}[system]
                    spec["_peer"] = cls(spec)
                r = spec["_peer"].run(workload)
            r["ok"] = True
        except Exception as e:  # noqa: BLE001 - one system failing must not stop the table
            import traceback

            traceback.print_exc()
            r = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        r.update({"system": system, "workload": workload, "wall_s": time.perf_counter() - t,
                  "peak_rss_mb": peak_rss_mb()})
        try:
            import torch

            if spec["device"] == "cuda" and torch.cuda.is_initialized():
                r["torch_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        except Exception:  # noqa: BLE001
            pass
        if "_peer" in spec and getattr(spec["_peer"], "stubbed", None):
            r["stubbed_modules"] = spec["_peer"].stubbed
        print(RESULT_TAG + json.dumps(r), flush=True)


# ============================================================================================================ parent
class GpuMemSampler:
    """Peak of nvidia-smi memory.used (MiB) on one GPU while a subprocess runs, minus the level before it."""

    def __init__(self, gpu: str, period: float = 0.05):
        self.gpu, self.period = gpu, period
        self.peak = None
        self.baseline = self.read()
        self._stop = threading.Event()

    def read(self) -> float | None:
        try:
            out = subprocess.run(["nvidia-smi", f"--id={self.gpu}", "--query-gpu=memory.used",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10)
            return float(out.stdout.strip().splitlines()[0])
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            return None

    def _loop(self):
        while not self._stop.is_set():
            v = self.read()
            if v is not None:
                self.peak = v if self.peak is None else max(self.peak, v)
            self._stop.wait(self.period)

    def __enter__(self):
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()

    def result_mb(self) -> float | None:
        if self.peak is None or self.baseline is None:
            return None
        return self.peak - self.baseline


def cuda_compat_env(work: Path) -> dict:
    """Environment for CTranslate2 on a CUDA 13 machine: its wheel dlopens libcublas.so.12 (+ libcublasLt.so.12).
    Where those names are missing, link the newest libcublas*.so.N found (pip nvidia packages, the CUDA toolkit)
    under the .12 names in WORK/cuda-compat and put that folder and the found one on LD_LIBRARY_PATH."""
    import ctypes
    import importlib.util

    env = dict(os.environ)
    dirs: list[Path] = []
    spec = importlib.util.find_spec("nvidia")
    roots = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    roots += [Path("/usr/local/cuda/lib64"), Path("/usr/lib/x86_64-linux-gnu")]
    compat = work / "cuda-compat"
    for want in ("libcublas.so.12", "libcublasLt.so.12"):  # what libctranslate2 4.8.5 dlopens (CUDA runtime static)
        try:
            ctypes.CDLL(want)
            continue
        except OSError:
            pass
        stem = want.rsplit(".so.", 1)[0]
        found = sorted((p for r in roots if r.is_dir() for p in r.rglob(f"{stem}.so.*")
                        if p.name.split(".so.")[1].split(".")[0].isdigit()),
                       key=lambda p: (int(p.name.split(".so.")[1].split(".")[0]), -len(p.name)))
        if not found:
            print(f"warning: {want} not found; faster-whisper on cuda may fail", file=sys.stderr)
            continue
        exact = [p for p in found if p.name == want]
        if exact:
            dirs.append(exact[0].parent)
            continue
        compat.mkdir(parents=True, exist_ok=True)
        link = compat / want
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(found[-1])
        dirs.append(compat)
        dirs.append(found[-1].parent)
    if dirs:
        old = env.get("LD_LIBRARY_PATH", "")
        env["LD_LIBRARY_PATH"] = ":".join(dict.fromkeys(str(d) for d in dirs)) + (":" + old if old else "")
    return env


def run_worker(system: str, workload: str, spec_path: Path, device: str, log_dir: Path, timeout: float,
               env: dict | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", system, "--workload", workload,
           "--spec", str(spec_path)]
    gpu = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0] if device == "cuda" else None
    sampler = GpuMemSampler(gpu) if gpu is not None else None
    log = log_dir / f"{system}-{workload}.log"
    t = time.perf_counter()
    with open(log, "w") as lf:
        try:
            if sampler:
                with sampler:
                    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=lf, text=True, timeout=timeout, env=env)
            else:
                p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=lf, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired as e:  # the child is killed; the table shows the row as failed
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            p = subprocess.CompletedProcess(cmd, -9, out + f"\n(timed out after {timeout:.0f} s)", "")
        lf.write("\n--- stdout ---\n" + p.stdout)
    wall = time.perf_counter() - t
    rows = [json.loads(line[len(RESULT_TAG):]) for line in p.stdout.splitlines() if line.startswith(RESULT_TAG)]
    r = rows[-1] if rows else {"ok": False, "error": f"worker exited {p.returncode} without a result; see {log}"}
    r["process_wall_s"] = wall
    r["peak_device_mb"] = sampler.result_mb() if sampler else None
    if workload == "COLD" and r.get("ok"):
        r["seconds"] = wall  # spawn → result line: includes interpreter start, imports, load, transcribe
    return r


def fmt_time(s: float | None, workload: str) -> str:
    if s is None:
        return "—"
    if s < 1 and (workload.startswith("MEL") or workload.startswith("W30")):
        return f"{s * 1e3:.3g} ms"
    return f"{s:.3g} s"


def table(rows: dict, systems: list[str], lf_seconds: float | None) -> str:
    """rows: workload label → system → result dict (seconds, wer, peak_device_mb, ok)."""
    head = ["workload"]
    for s in systems:
        head += [f"{LABELS[s]} time"] + ([] if s == "mwc" else [f"{LABELS[s]} ×"]) + ["WER", "mem"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, per in rows.items():
        base = per.get("mwc", {})
        base_t = base.get("seconds") if base.get("ok") else None
        cells = [label]
        for s in systems:
            r = per.get(s)
            if not r:
                cells += ["—"] * (3 if s == "mwc" else 4)
                continue
            t = r.get("seconds") if r.get("ok") else None
            cell = fmt_time(t, label) if r.get("ok") else "failed"
            if label in ("LF", "LFC") and t is not None and lf_seconds:
                cell += f" (RTF {t / lf_seconds:.2g})"
            cells.append(cell)
            if s != "mwc":
                cells.append(f"{t / base_t:.2f}" if t is not None and base_t else "—")
            w = r.get("wer")
            cells.append(f"{100 * w:.1f} %" if w is not None else "—")
            m = r.get("peak_device_mb")
            cells.append(f"{m / 1024:.2f} GiB" if m is not None else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ensure_models(args, work: Path, systems: list[str]) -> dict:
    """Paths for each system's model, converting the CT2 folder's weights where a format is missing."""
    import bench_models as bm

    models = {"faster": str(args.ct2), "mwc": str(args.mwc) if args.mwc else None}
    name = Path(args.ct2).name if args.ct2 else "model"
    mdir = work / "models"
    pt, hf = mdir / f"openai-{name}.pt", mdir / f"hf-{name}"
    need_pt = "openai" in systems and not pt.is_file()
    need_hf = "hf" in systems and not (hf / "model.safetensors").is_file()
    if need_pt or need_hf:
        t = time.perf_counter()
        ck = bm.canonical(args.ct2)
        if need_pt:
            bm.openai_pt(ck, pt)
        if need_hf:
            tj = Path(args.ct2) / "tokenizer.json"
            bm.hf_folder(ck, hf, tj if tj.is_file() else None)
        print(f"models: converted {args.ct2} for openai-whisper / transformers in {time.perf_counter() - t:.1f} s",
              file=sys.stderr)
    models["openai"], models["hf"] = str(pt), str(hf)
    if "mwc" in systems:
        art = Path(args.mwc)
        if not (art / "manifest.json").is_file():
            if args.mwc_compile_args is None:
                raise SystemExit(f"{art}: no mwc artifact; compile one or pass --mwc-compile-args")
            compile_mwc(args.ct2, art, args.mwc_compile_args)
    return models


def compile_mwc(src, out: Path, extra: str) -> None:
    cmd = [sys.executable, "-m", "compiler.cli", "compile", str(src), "-o", str(out), *shlex.split(extra)]
    print("+", " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, cwd=ROOT)


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for p in ("max", "faster-whisper", "ctranslate2", "openai-whisper", "transformers", "torch", "numpy"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


def device_name(device: str) -> str:
    if device != "cuda":
        import platform

        return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=10).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "cuda"


def w30_tokens(n_vocab: int) -> dict:
    sys.path.insert(0, str(ROOT))
    from compiler.checkpoint import SpecialTokens

    tok = SpecialTokens.for_vocab(n_vocab)
    prompt = [tok.sot] + ([tok.languages["en"], tok.transcribe] if tok.languages else []) + [tok.no_timestamps]
    return {"eot": tok.eot, "prompt": prompt}


def main_run(args) -> None:
    systems = [s for s in args.systems.split(",") if s]
    work = Path(args.work)
    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    base = {"device": args.device, "precision": args.precision, "repeat": args.repeat, "tp_batch": args.tp_batch,
            "mel_calls": args.mel_calls, "n_tokens": 100, "cpu_threads": args.cpu_threads,
            "mwc_runner": args.mwc_runner}
    results: dict = {"device": device_name(args.device), "versions": versions(), "settings": dict(base),
                     "runs": []}
    rows: dict = {}
    lf_seconds = None
    envs = {"faster": cuda_compat_env(Path(args.work))} if args.device == "cuda" and "faster" in systems else {}
    if args.device == "cpu" and args.cpu_threads:  # a shared CPU: every system gets the same thread count
        n = str(args.cpu_threads)
        envs = {s: {**os.environ, "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n} for s in systems}
    if "faster" in envs and args.device == "cuda":
        results["faster_ld_library_path"] = envs["faster"].get("LD_LIBRARY_PATH")

    if not args.w30_only:
        data = Path(args.data)
        meta = json.loads((data / "data.json").read_text())
        lf_seconds = meta["lf"]["seconds"]
        models = ensure_models(args, work, systems)
        spec = {**base, "data": str(data), "meta": meta, "models": models}
        spec_path = out / "spec.json"
        spec_path.write_text(json.dumps(spec, indent=1))
        results["models"] = models
        workloads = [w for w in args.workloads.split(",") if w]
        for w in workloads:
            for s in systems:
                print(f"[{time.strftime('%H:%M:%S')}] {LABELS[s]} {w} ...", file=sys.stderr, flush=True)
                r = run_worker(s, w, spec_path, args.device, out / "logs", args.timeout, envs.get(s))
                if r.get("ok") and w in ("LF", "LFC"):
                    r["wer"] = wer([meta["lf"]["ref"]], r["texts"])
                    r["rtf"] = r["seconds"] / lf_seconds
                elif r.get("ok") and w == "TP" and len(r.get("texts", [])) == len(meta["tp"]):
                    r["wer"] = wer([t["ref"] for t in meta["tp"]], r["texts"])
                elif r.get("ok") and w == "COLD":
                    r["wer"] = None
                msg = fmt_time(r.get("seconds"), w) if r.get("ok") else r.get("error")
                print(f"    {msg}" + (f"  WER {100 * r['wer']:.1f} %" if r.get("wer") is not None else ""),
                      file=sys.stderr, flush=True)
                rows.setdefault(w, {})[s] = r
                results["runs"].append(r)
                (out / "results.json").write_text(json.dumps(results, indent=1))

    if args.w30_only or args.w30_dir:
        wdir = Path(args.w30_dir)
        sizes = [s for s in args.w30_sizes.split(",") if s] if args.w30_sizes else sorted(
            p.name for p in wdir.iterdir() if (p / "hf" / "bench_size.json").is_file())
        batches = [int(b) for b in args.w30_batches.split(",")]
        for size in sizes:
            sd = wdir / size
            info = json.loads((sd / "hf" / "bench_size.json").read_text())
            models = {"mwc": str(sd / "mwc"), "faster": str(sd / "ct2"), "openai": str(sd / "openai.pt"),
                      "hf": str(sd / "hf")}
            audio = Path(args.data) / "w30.wav" if args.data and (Path(args.data) / "w30.wav").is_file() else None
            if audio is None:
                audio = sd / "w30.wav"
                if not audio.is_file():
                    import numpy as np

                    rng = np.random.default_rng(0)  # no dev audio here: a fixed noise window (random weights anyway)
                    write_wav(audio, 0.1 * rng.standard_normal(N_SAMPLES).astype("float32"))
            spec = {**base, "models": models, "w30_audio": str(audio), "w30_batches": batches,
                    "w30_tokens": w30_tokens(info["dims"]["n_vocab"]), "data": None}
            spec_path = out / f"spec-w30-{size}.json"
            spec_path.write_text(json.dumps(spec, indent=1))
            for s in systems:
                if not Path(models[s]).exists():
                    print(f"    {LABELS[s]}: {models[s]} missing (run --prepare-w30)", file=sys.stderr)
                    continue
                print(f"[{time.strftime('%H:%M:%S')}] {LABELS[s]} W30 {size} ...", file=sys.stderr, flush=True)
                r = run_worker(s, "W30", spec_path, args.device, out / "logs", args.timeout, envs.get(s))
                r["size"] = size
                results["runs"].append(r)
                for b in batches:
                    br = (r.get("batches") or {}).get(str(b), {})
                    rows.setdefault(f"W30 {size} b{b}", {})[s] = {
                        "ok": r.get("ok") and "seconds" in br, "seconds": br.get("seconds"),
                        "peak_device_mb": r.get("peak_device_mb")}
                msg = (", ".join(f"b{b} {fmt_time(r['batches'][str(b)]['seconds'], 'W30')} "
                                 f"({r['batches'][str(b)].get('new_tokens')} tokens)" for b in batches)
                       if r.get("ok") else r.get("error"))
                print(f"    {msg}", file=sys.stderr, flush=True)
                (out / "results.json").write_text(json.dumps(results, indent=1))

    md = table(rows, systems, lf_seconds)
    results["table"] = md
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "table.md").write_text(md + "\n")
    v = results["versions"]
    print(f"\n## mwc vs peers on {results['device']}, peers {args.precision} — "
          + ", ".join(f"{k} {v[k]}" for k in ("max", "faster-whisper", "ctranslate2", "openai-whisper",
                                              "transformers", "torch") if v.get(k)))
    for line in notes(results, lf_seconds, args):
        print(line)
    print(md)


def notes(results: dict, lf_seconds: float | None, args) -> list[str]:
    out = ["× = peer time / mwc time (> 1: mwc faster); best of %d after 1 warmup (MEL: median of %d calls); WER "
           "Whisper-normalized (jiwer); mem = peak nvidia-smi memory.used of the process minus the level before it"
           % (args.repeat, args.mel_calls)]
    if lf_seconds:
        out.append(f"LF = {lf_seconds:.0f} s of English audio, long-form, batch 1; TP batch {args.tp_batch} for "
                   "faster-whisper (BatchedInferencePipeline), transformers (generate) and mwc (transcribe_many), "
                   "sequential for openai-whisper; LFC = the LF file cut into <= 30 s chunks at quiet points "
                   "(mwc's chunk_bounds), the same chunks decoded by each system as in TP, without timestamps")
    for r in results["runs"]:
        if r.get("system") != "mwc" or not r.get("ok"):
            continue
        d = r.get("detail") or {}
        if r["workload"] == "COLD":
            t = d.get("compile_timings") or {}
            out.append(f"mwc COLD: import {r.get('import_s', 0):.2f} s + load {r.get('load_s', 0):.2f} s + first "
                       f"result {r.get('first_result_s', 0):.2f} s; compile (manifest timings): "
                       + ", ".join(f"{k} {val:.1f} s" for k, val in t.items()))
        elif r["workload"] in ("LF", "LFC", "MEL") and d:
            out.append(f"mwc {r['workload']}: runner {r.get('runner')}, {d.get('precision')} on {d.get('device')}"
                       + (f", mel device {d['mel_ms_device']:.3g} ms / host {d['mel_ms_host']:.3g} ms"
                          if "mel_ms_device" in d else ""))
    if args.device == "cpu" and args.cpu_threads:
        out.append(f"CPU: peers limited to {args.cpu_threads} thread(s) (torch, CTranslate2); mwc's MAX CPU device "
                   "uses its default (all cores) — CPU ratios are a dry run, not a fair comparison")
    stubs = sorted({m for r in results["runs"] for m in r.get("stubbed_modules", [])})
    if stubs:
        out.append("stubbed (absent, never called): " + ", ".join(stubs))
    return out


def prepare_w30(args) -> None:
    import bench_models as bm

    sys.path.insert(0, str(ROOT))
    out = Path(args.prepare_w30)
    tj = Path(args.ct2) / "tokenizer.json" if args.ct2 else None
    dtype = "float16" if args.precision == "fp16" else "float32"  # stored weights; all systems load these values
    for size in [s for s in (args.w30_sizes or "small,large-v3").split(",") if s]:
        sd = out / size
        t = time.perf_counter()
        if not (sd / "hf" / "bench_size.json").is_file():
            bm.random_hf_folder(size, sd / "hf", seed=args.seed, tokenizer_json=tj, dtype=dtype)
            print(f"{size}: transformers random weights (seed {args.seed}) → {sd / 'hf'}", file=sys.stderr)
        if "openai" in args.systems and not (sd / "openai.pt").is_file():
            bm.openai_pt(bm.canonical(sd / "hf"), sd / "openai.pt", dtype=dtype)
            print(f"{size}: openai-whisper checkpoint → {sd / 'openai.pt'}", file=sys.stderr)
        if "faster" in args.systems and not (sd / "ct2" / "model.bin").is_file():
            try:
                bm.ct2_folder(sd / "hf", sd / "ct2", quantization=dtype)
                print(f"{size}: ctranslate2 TransformersConverter → {sd / 'ct2'}", file=sys.stderr)
            except Exception as e:  # noqa: BLE001 - e.g. no ctranslate2 here: convert on the GPU machine
                print(f"{size}: ctranslate2 conversion failed ({type(e).__name__}: {e})", file=sys.stderr)
        if "mwc" in args.systems and not (sd / "mwc" / "manifest.json").is_file():
            if args.mwc_compile_args is None:
                print(f"{size}: no mwc artifact (pass --mwc-compile-args, e.g. '--fp16 --device gpu')",
                      file=sys.stderr)
            else:
                compile_mwc(sd / "hf", sd / "mwc", args.mwc_compile_args)
        print(f"{size}: ready in {time.perf_counter() - t:.0f} s", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    ap.add_argument("--precision", choices=["fp16", "fp32"], help="peers' compute type (default fp16 on cuda, "
                    "fp32 on cpu); mwc's comes from its artifact")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="comma list of mwc,faster,openai,hf")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="comma list of LF,LFC,TP,MEL,COLD")
    ap.add_argument("--data", help="folder written by --prepare-data")
    ap.add_argument("--ct2", help="the CTranslate2 (faster-whisper) model folder; the other formats come from it")
    ap.add_argument("--mwc", help="mwc artifact folder")
    ap.add_argument("--mwc-compile-args", help="compile --mwc from --ct2 with these mwc compile flags when missing")
    ap.add_argument("--mwc-runner", default=MWC_RUNNER_DEFAULT, choices=["auto", "bench", "local"])
    ap.add_argument("--work", default="/tmp/mwc-bench", help="converted models go to WORK/models")
    ap.add_argument("--out", default="bench-out")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tp-batch", type=int, default=16)
    ap.add_argument("--mel-calls", type=int, default=50)
    ap.add_argument("--cpu-threads", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--prepare-data", metavar="OUTDIR")
    ap.add_argument("--clips", default=str(ROOT.parent / "shared" / "data"), help="the dev set (manifest.jsonl)")
    ap.add_argument("--lf-minutes", type=float, default=10.0)
    ap.add_argument("--tp-clips", type=int, default=64)
    ap.add_argument("--prepare-w30", metavar="OUTDIR")
    ap.add_argument("--w30-only", action="store_true")
    ap.add_argument("--w30-dir", help="folder written by --prepare-w30 (also runs W30 after the other workloads)")
    ap.add_argument("--w30-sizes", help="comma list (default: small,large-v3 for --prepare-w30; all in --w30-dir)")
    ap.add_argument("--w30-batches", default="1,16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pack-cmd", action="store_true", help="print the ../shared/device/pack.py command that "
                    "carries MAX, --ct2 (as tiny.en), every wheel in .whl/ and --data to the GPU machine")
    ap.add_argument("--worker", choices=SYSTEMS, help=argparse.SUPPRESS)
    ap.add_argument("--workload", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.precision is None:
        args.precision = "fp16" if args.device == "cuda" else "fp32"
    if args.worker:
        worker_main(args.worker, args.workload.split(","), json.loads(Path(args.spec).read_text()))
        return
    if args.pack_cmd:
        wheels = sorted((ROOT / ".whl").glob("*.whl"))
        parts = ["python3", "../shared/device/pack.py", "--with-compiler"]
        if args.ct2:
            parts += ["--model", f"tiny.en={args.ct2}"]
        for w in wheels:
            parts += ["--wheel", str(w.relative_to(ROOT))]
        if args.data:
            parts += ["--file", f"{args.data}=bench-data"]
        print(" ".join(shlex.quote(p) for p in parts))
        print(f"# wheels: {len(wheels)}, {sum(w.stat().st_size for w in wheels) / 1e6:.1f} MB", file=sys.stderr)
        return
    if args.prepare_data:
        prepare_data(Path(args.prepare_data), Path(args.clips), args.lf_minutes, args.tp_clips)
        return
    if args.prepare_w30:
        prepare_w30(args)
        return
    if args.w30_only and not args.w30_dir:
        ap.error("--w30-only needs --w30-dir")
    if not args.w30_only and not (args.data and args.ct2):
        ap.error("--data and --ct2 are needed (or --w30-only)")
    main_run(args)


if __name__ == "__main__":
    main()
