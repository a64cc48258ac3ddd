"""Load a compiled artifact (model.mef, extras.mef, weights.safetensors, manifest.json) and transcribe with it.

Needs only ``max`` and ``numpy`` (plus PyAV or soundfile for audio other than 16 kHz 16-bit wav).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import numpy as np

from .audio import N_FRAMES, N_SAMPLES, SAMPLE_RATE, AudioError, chunk_bounds, load_audio
from .decoding import (PICK_RULES, DecodingOptions, Progress, detect_language, merge_chunks, suppress_ids,
                       transcribe_many)
from .tokenizer import Tokenizer

# MAX's device memory manager reserves about 90 % of the GPU by default (an H200: 126 GiB for tiny.en). The first
# captured step maps the rest of the pool's budget at once, so a process ends near device context (527 MiB on an
# H200) + budget + ~140 MiB: the runtime gives a GPU artifact a budget of 1 GiB, or 10 % of the GPU where the decoder's
# cross K/V of 16 windows pass 1 GiB (``pool_setting``). Set either variable yourself to override it (a batched
# workload may want more: tiny.en's 64-clip TP took 0.385 s at 1 GiB and 0.326 s at 1 % of an H200, in two calls).
POOL_PERCENT = "MODULAR_DEVICE_CONTEXT_MEMORY_MANAGER_SIZE_PERCENT"
POOL_SIZE = "MODULAR_DEVICE_CONTEXT_MEMORY_MANAGER_SIZE"  # bytes
_POOL_FROM_USER = POOL_PERCENT in os.environ or POOL_SIZE in os.environ
os.environ.setdefault(POOL_PERCENT, "1")
# It maps that memory in 256 MB pages by default; 32 MB pages keep the process closer still (H200, tiny.en fp16: 721
# instead of 785 MiB after load, 2101 instead of 2197 after the first transcription; decoder step unchanged).
os.environ.setdefault("MODULAR_DEVICE_CONTEXT_MEMORY_MANAGER_VMM_PAGE_MB", "32")
NEG = -1e30  # a masked logit (graph.NEG)
# a long file's chunks decoded together by default (transcribe_chunked, --chunked): on an H200 tiny.en's 600 s file
# (22 chunks) took 0.273 s at 16 and 0.171 s at 32, base 0.330 / 0.238 s; a CPU step's time grows with the rows
CHUNKED_BATCH_SIZE = {"gpu": 32, "cpu": 16}
SCHEMA_VERSION = 4  # 2: the decoder graph takes pick rules and returns the greedy pick; 3: the step graph keeps each
# row's token history on the device and makes the timestamp rules itself (several steps per host round trip);
# 4: two .mef files — greedy decoding loads only the first (serialization.files)
# greedy steps run back to back on a GPU before the host reads their picks (MWC_STEPS_PER_SYNC overrides); a row that
# ends inside a run costs the rest of the run. On the CPU a step's execute returns only when it is done: one at a time
STEPS_PER_SYNC = {"gpu": 8, "cpu": 1}


class ArtifactError(Exception):
    """The artifact folder cannot be loaded; the message names the file and what to do."""


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise ArtifactError(f"{path}: missing; {folder} is not an mwc artifact (run mwc compile)")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as e:
        raise ArtifactError(f"{path}: not valid JSON ({e}); recompile the artifact") from e
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ArtifactError(f"{path}: schema version {manifest.get('schema_version')} is not {SCHEMA_VERSION}; "
                            "recompile the artifact with this mwc")
    return manifest


def _empty(shape: tuple, dtype: str, device=None):
    """An empty KV cache in the graph's dtype, on the graphs' device (numpy has no bfloat16: a MAX buffer then)."""
    if dtype == "bfloat16" or device is not None:
        from max.driver import Buffer
        from max.dtype import DType

        return Buffer(getattr(DType, dtype), shape, device=device)
    return np.zeros(shape, dtype=dtype)


def to_numpy(x) -> np.ndarray:
    """A graph output as numpy, copied to the host first when it lives on an accelerator (bfloat16, which numpy
    lacks, widened to float32)."""
    if isinstance(x, np.ndarray):
        return x
    if not x.is_host:
        from max.driver import CPU

        x = x.to(CPU())
    from max.dtype import DType

    if x.dtype == DType.bfloat16:
        return (x.view(DType.uint16).to_numpy().astype(np.uint32) << 16).view(np.float32)
    return x.to_numpy()


def pool_setting(dims: dict, kv_dtype: str) -> dict[str, str]:
    """MAX's device memory pool for a GPU artifact, as the environment variable to set: 1 GiB, or 10 % of the GPU when
    the decoder's cross-attention K and V of 16 windows pass 1 GiB (medium and large: large-v3's are 3.9 GB).
    H200, small fp16, greedy: 1687 MiB in all at 1 GiB against 2103 MiB at 1 % (1438 MiB), encoder and steps at
    the same speed (W30 batch 1 and 16); 896 MiB also held batch 1, but tiny.en at 704 MiB could not capture its
    batch-16 step (2.09 instead of 0.62 ms). At 1 % large-v3's batch-16 step could not be captured (the pool was
    used up) and ran eagerly, 32 ms per step instead of 7.7 ms at 10 %."""
    size = 4 if kv_dtype == "float32" else 2
    cross = dims["n_text_layer"] * 2 * 16 * dims["n_audio_ctx"] * dims["n_text_state"] * size
    return {POOL_PERCENT: "10"} if cross > 1 << 30 else {POOL_SIZE: str(1 << 30)}


class _Graphs(dict):
    """The artifact's graphs by name. The first .mef's load with the artifact; a graph of a later one loads its
    whole file on first use (``load(file)`` → {name: Model}), so a greedy run never holds their weights."""

    def __init__(self, files: dict[str, list[str]], load):
        super().__init__()
        self._file = {g: f for f, names in files.items() for g in names}
        self._load = load
        self.update(load(next(iter(files))))

    def __missing__(self, name: str):
        if name not in self._file:
            raise KeyError(name)
        self.update(self._load(self._file[name]))
        return dict.__getitem__(self, name)

    def __contains__(self, name) -> bool:
        return name in self._file


class _StepState:
    """A greedy sequence in the step graph's buffers (K and V caches, token and log-prob history), how many tokens
    the cache holds and the last pick and position (the next step's inputs, where the graph left them)."""

    def __init__(self, buffers):
        self.buffers, self.pos, self.token, self.pos_out = buffers, 0, None, None


class Whisper:
    """A compiled Whisper: ``Whisper(folder).transcribe("audio.wav")["text"]``."""

    def __init__(self, folder: str | Path):
        from max import engine
        from max.driver import CPU, Accelerator, accelerator_count
        from max.engine import InferenceSession
        from max.graph.weights import SafetensorWeights

        self.folder = Path(folder)
        t0 = time.perf_counter()
        self.manifest = m = read_manifest(self.folder)
        self.dims = m["dims"]
        want = m["versions"]["max"]
        try:
            from importlib.metadata import version

            have = version("max")
        except Exception:  # noqa: BLE001 - metadata may be absent in odd installs; the load below still decides
            have = want
        if have != want and "unknown" not in (have, want):
            raise ArtifactError(f"{self.folder}: compiled with max=={want} but max=={have} is installed; "
                                f"pip install max=={want} or recompile the artifact")
        if m["device"] == "gpu":
            if accelerator_count() == 0:
                raise ArtifactError(f"{self.folder}: compiled for gpu, but MAX sees no accelerator here")
            if not _POOL_FROM_USER:  # read when the process's first device is made (no effect after that)
                os.environ.update(pool_setting(self.dims, m["precision"]["kv_cache"]))
            self.device = Accelerator()
            built, here = m["target"].get("accelerator"), self.device.architecture_name
            if built and built != here:  # may still load (MAX decides); said up front, and again if it fails
                warnings.warn(f"{self.folder}: compiled for a {built} GPU, this one is {here}")
        elif m["device"] == "cpu":
            self.device = None
        else:
            raise ArtifactError(f"{self.folder}: compiled for {m['device']}; this runtime runs cpu and gpu artifacts")
        self.session = InferenceSession(devices=[self.device or CPU()])
        try:
            self._weights = SafetensorWeights([self.folder / "weights.safetensors"])
            registry = {name: w.data().data for name, w in self._weights.items()}
        except (OSError, ValueError) as e:
            raise ArtifactError(f"{self.folder / 'weights.safetensors'}: cannot be read ({e}); the artifact is "
                                "damaged — recompile it") from e

        def load(file: str) -> dict:
            try:
                return self.session.init_all(engine.read(self.folder / file), weights_registry=registry)
            except Exception as e:  # MAX raises ValueError/RuntimeError for foreign or corrupt MEFs
                cpu, gpu = m["target"]["arch"], m["target"].get("accelerator")
                tied = (f"max=={want}, a {gpu} GPU and the compiling CPU ({cpu}) — recompile here or with --target "
                        f"cuda:{self.device.architecture_name}") if gpu else (
                    f"max=={want} and the compiling CPU ({cpu}) — recompile")
                raise ArtifactError(f"{self.folder / file}: cannot be loaded here ({e}); the .mef is tied to "
                                    f"{tied}") from e

        files = m["serialization"]["files"]
        for file in files:  # the later files load on first use: a missing one is said now, not mid-transcription
            if not (self.folder / file).is_file():
                raise ArtifactError(f"{self.folder / file}: missing; the artifact is incomplete — recompile it")
        self.models = _Graphs(files, load)
        self.tokenizer = Tokenizer.from_file(self.folder / "vocab.json", m["tokens"])
        self.suppress = suppress_ids(self.tokenizer, m["generation"]["suppress_tokens"])
        self.load_seconds = time.perf_counter() - t0
        self._empty_caches: dict = {}  # batch → an empty KV cache (decode's first call)
        self._biases: dict = {}
        self._step_bufs: dict = {}  # batch → the step graph's buffers (K and V caches, token and log-prob history)
        self._captured: dict = {}  # batch → the captured step graph's inputs and outputs
        self._capture = os.environ.get("MWC_NO_CAPTURE", "") in ("", "0")
        self.steps_per_sync = int(os.environ.get("MWC_STEPS_PER_SYNC") or STEPS_PER_SYNC[m["device"]])
        # on a GPU the next run of greedy steps is queued before the host reads the last one's picks
        # (graph_picks), so the device is not idle while the host reads them; MWC_LOOKAHEAD=0 turns it off
        self.lookahead = self.device is not None and os.environ.get("MWC_LOOKAHEAD", "") in ("", "1")
        self._staging: dict = {}  # batch → two pairs of pinned host buffers the picks are copied into

    def _empty_cache(self, batch: int):
        """A KV cache holding no tokens, for ``batch`` rows (made once per batch size)."""
        if batch not in self._empty_caches:
            d = self.dims
            shape = (d["n_text_layer"], batch, d["n_text_head"], 0, d["n_text_state"] // d["n_text_head"])
            self._empty_caches[batch] = _empty(shape, self.manifest["precision"]["kv_cache"], self.device)
        return self._empty_caches[batch]

    def _in(self, x):
        """An input for the graphs: numpy on the CPU, a device buffer on an accelerator (graph outputs pass as is)."""
        if self.device is None or not isinstance(x, np.ndarray):
            return x
        from max.driver import Buffer

        return Buffer.from_numpy(x).to(self.device)

    def _bias(self, suppress: tuple[int, ...]):
        """The decoder's (vocab,) suppress bias for these ids, made once per id set and kept on the device."""
        key = tuple(suppress)
        if key not in self._biases:
            b = np.zeros(self.dims["n_vocab"], dtype=np.float32)
            b[list(key)] = NEG
            self._biases[key] = self._in(b)
        return self._biases[key]

    # --- the stages, each one compiled graph ---
    def log_mel(self, audio: np.ndarray, padding: int = N_SAMPLES) -> np.ndarray:
        """Whole-file log-mel (n_mels, (len + padding) // 160), like openai's log_mel_spectrogram(padding=...)."""
        x = np.concatenate([np.asarray(audio, dtype=np.float32), np.zeros(padding, dtype=np.float32)])
        return to_numpy(self.models["mel"].execute(self._in(x))[0])

    def encode(self, mel_window: np.ndarray) -> dict:
        xa, k, v = self.models["encoder"].execute(self._in(np.ascontiguousarray(mel_window, dtype=np.float32)))
        return {"xa": xa, "cross_k": k, "cross_v": v}

    def _decoder(self, tokens, audio: dict, cache, bias, rules):
        k, v = cache if cache is not None else (self._empty_cache(tokens.shape[0]),) * 2
        if isinstance(tokens, np.ndarray):
            tokens = np.ascontiguousarray(tokens, dtype=np.int64)
        return self.models["decoder"].execute(self._in(tokens), k, v, audio["cross_k"], audio["cross_v"], bias,
                                              self._in(rules))

    def decode(self, tokens: np.ndarray, audio: dict, cache):
        """Logits (batch, t, vocab) for ``tokens`` after ``cache`` (None: empty), and the grown cache."""
        rules = np.zeros((tokens.shape[0], PICK_RULES), dtype=np.int64)  # no intervals, no timestamp rule
        logits, k, v, *_ = self._decoder(tokens, audio, cache, self._bias(()), rules)
        return to_numpy(logits), (k, v)

    def greedy_step(self, tokens, audio: dict, cache, rules: np.ndarray, suppress: tuple[int, ...]):
        """One greedy call of the ``step`` graph: the pick happens inside it (decoding.pick_rules gives ``rules``)
        and the KV cache is a fixed-size device buffer it fills in place. ``cache`` is None to start a sequence
        (then ``tokens`` is the whole prompt), else what the previous call returned. Returns the next ids (batch,),
        their log-probs, log p(nospeech) at the SOT row (on the prompt's call; None after), the cache state and the
        ids as the next ``tokens``. ``greedy_steps`` runs the steps after the prompt several at a time."""
        batch, t = tokens.shape[0], tokens.shape[1]
        state = cache if isinstance(cache, _StepState) else _StepState(self._step_buffers(batch))
        if state.pos + t > self.dims["n_text_ctx"]:
            raise ValueError(f"{state.pos + t} tokens exceed the decoder's context of {self.dims['n_text_ctx']}")
        if isinstance(tokens, np.ndarray):
            tokens = np.ascontiguousarray(tokens, dtype=np.int64)
        args = self._step_args(tokens, state, audio, rules, suppress)
        out = None
        if t == 1 and self.device is not None and self._capture:
            out = self._replay(batch, args)
        if out is None:
            out = self.models["step"].execute(*(self._in(a) for a in args))
        token, logprob, nospeech, state.pos_out = out
        first = state.pos == 0
        state.pos += t
        state.token = token
        # each copy to the host waits for the device: the no-speech log-prob only matters on the prompt's call
        nospeech = to_numpy(nospeech)[:, 0] if first else None
        return to_numpy(token)[:, 0], to_numpy(logprob)[:, 0], nospeech, state, token

    def greedy_steps(self, state: _StepState, audio: dict, rules: np.ndarray, suppress: tuple[int, ...], n: int):
        """``n`` greedy t = 1 steps after ``state``'s last call (``greedy_step``'s), with no host round trip between
        them: each step's pick and position feed the next where they lie, the graph makes the timestamp rules
        from the token history it keeps (``rules`` gives the rest: decoding.pick_rules for a step), and the picks
        and log-probs come to the host once, at the end. Returns ids (batch, n) and their log-probs (batch, n).

        On a GPU the step is captured once per batch size as a device graph and replayed: one launch per token
        instead of one per kernel (MWC_NO_CAPTURE=1 runs every step eagerly)."""
        return self.read_steps(self.launch_steps(state, audio, rules, suppress, n))

    def launch_steps(self, state: _StepState, audio: dict, rules: np.ndarray, suppress: tuple[int, ...], n: int):
        """``greedy_steps`` without waiting: queues the ``n`` steps and, on a GPU, an asynchronous copy of the
        picks into pinned host memory (two copies in flight at most: ``read_steps`` each run before launching the
        one after the next). Returns what ``read_steps`` turns into the picks."""
        if state.pos + n > self.dims["n_text_ctx"]:
            raise ValueError(f"{state.pos + n} tokens exceed the decoder's context of {self.dims['n_text_ctx']}")
        batch = rules.shape[0]
        args = self._step_args(state.token, state, audio, rules, suppress)
        outs = self._replay(batch, args, n) if self.device is not None and self._capture else None
        if outs is None:
            args = [self._in(a) for a in args]
            for _ in range(n):
                outs = self.models["step"].execute(*args)
                args[0], args[1] = outs[0], outs[3]  # the pick and pos + 1, as they came out
        state.pos += n
        state.token, state.pos_out = outs[0], outs[3]
        span = slice(state.pos - n + 1, state.pos + 1)  # the picks sit one past the token each step was fed
        if self.device is None:
            return span, state.buffers[2:], None
        slots = self._staging.get(batch)
        if slots is None:
            from max.driver import Buffer, Usage

            pinned = Usage.STAGING | Usage.UNTRACKED
            slots = self._staging[batch] = [[Buffer(b.dtype, b.shape, device=self.device, usage=pinned)
                                             for b in state.buffers[2:]] for _ in range(2)]
        host = slots[0]
        slots.reverse()  # the next run copies into the other pair
        for h, b in zip(host, state.buffers[2:]):
            h.inplace_copy_from(b)
        return span, host, self.device.default_queue.record_event()

    @staticmethod
    def read_steps(launched) -> tuple[np.ndarray, np.ndarray]:
        """The picks and log-probs (batch, n) of a ``launch_steps`` run, once its copy has arrived."""
        span, bufs, event = launched
        if event is None:
            return tuple(np.array(to_numpy(b)[:, span]) for b in bufs)
        event.synchronize()
        return tuple(np.array(b.to_numpy()[:, span]) for b in bufs)

    def _step_args(self, tokens, state: _StepState, audio: dict, rules: np.ndarray, suppress: tuple[int, ...]):
        # the position as the last step left it on the device (no host copy), or from the host for a prompt
        pos = state.pos_out if state.pos_out is not None and tokens is state.token else np.array([state.pos],
                                                                                                  dtype=np.int64)
        return [tokens, pos, audio["cross_k"], audio["cross_v"],
                self._bias(suppress), rules, *state.buffers]

    def _step_buffers(self, batch: int):
        """The step graph's buffers for this batch size, allocated once and reused by every sequence: the K and V
        caches and the token and log-prob history (one more position than the context: the last pick)."""
        if batch not in self._step_bufs:
            from max.driver import CPU, Buffer
            from max.dtype import DType

            d = self.dims
            shape = (d["n_text_layer"], batch, d["n_text_head"], d["n_text_ctx"], d["n_text_state"] // d["n_text_head"])
            dt = getattr(DType, self.manifest["precision"]["kv_cache"])
            dev = self.device or CPU()
            hist = (batch, d["n_text_ctx"] + 1)
            self._step_bufs[batch] = (Buffer(dt, shape, device=dev), Buffer(dt, shape, device=dev),
                                      Buffer(DType.int64, hist, device=dev), Buffer(DType.float32, hist, device=dev))
        return self._step_bufs[batch]

    def _replay(self, batch: int, args: list, n: int = 1):
        """Run ``n`` t = 1 steps as a captured device graph replayed ``n`` times, each replay's pick and position
        copied on the device into the next one's inputs; returns the outputs (the last step's), or None when
        capture is not possible (then run eagerly)."""
        from max.driver import Buffer

        model = self.models["step"]
        ent = self._captured.get(batch)
        if ent is None:
            # one captured graph at a time: each holds scratch in MAX's graph memory pool, and a second batch size
            # captured beside the first ran every one of its steps 4x slower (H200, small: batch 16 after batch 1,
            # 10.6 instead of 2.4 ms per step; releasing batch 1's graph first: 2.8 ms)
            for other in [b for b in self._captured if b != batch]:
                del self._captured[other]
                model.release_captured_graph(other)
            try:
                # capture's inputs stay bound to the graph: fresh device copies of everything but the buffers it
                # writes (the replays below write the same cache and history positions again)
                inputs = [self._in(a) if isinstance(a, np.ndarray) else a.copy() for a in args[:6]] + list(args[6:])
                outs = model.capture(batch, *inputs)
            except Exception as e:  # noqa: BLE001 - capture is an optimization; eager execution stays correct
                warnings.warn(f"device-graph capture failed, decoding eagerly: {e}")
                self._capture = False
                return None
            ent = self._captured[batch] = (inputs, outs, {"audio": None, "bias": None, "rules": None})
        inputs, outs, bound = ent
        for i, a in enumerate(args[:6]):
            if i in (2, 3) and bound["audio"] is args[2]:
                continue  # this window's cross K/V are in place already
            if i == 4 and bound["bias"] is a:
                continue
            if i == 5 and bound["rules"] is not None and np.array_equal(bound["rules"], a):
                continue  # the same pick rules as the last step (most steps)
            src = a if not isinstance(a, np.ndarray) else Buffer.from_numpy(a)
            if src is not inputs[i]:
                inputs[i].inplace_copy_from(src)
        bound["audio"], bound["bias"], bound["rules"] = args[2], args[4], np.array(args[5])
        for j in range(n):
            if j:
                inputs[0].inplace_copy_from(outs[0])
                inputs[1].inplace_copy_from(outs[3])
            model.replay(batch, *inputs)
        return outs

    # --- beam search (kv_gather graph) and word timestamps (alignment graph) ---
    def _gather(self, k, v, ids):
        """Rows ``ids`` of a (layers, batch, heads, len, 64) K/V pair, on the graphs' device."""
        ids = np.asarray(ids, dtype=np.int64)
        k, v = self.models["kv_gather"].execute(k, v, self._in(ids))
        return k, v

    def repeat_audio(self, audio: dict, n: int) -> dict:
        """A window's cross-attention K/V repeated to batch ``n`` (the beams or best_of samples)."""
        k, v = self._gather(audio["cross_k"], audio["cross_v"], [0] * n)
        return {"cross_k": k, "cross_v": v}

    def select_audio(self, audio: dict, rows) -> dict:
        """Rows ``rows`` of a batch's encoder output (cross K/V only: what the decoder and alignment graphs read)."""
        k, v = self._gather(audio["cross_k"], audio["cross_v"], rows)
        return {"cross_k": k, "cross_v": v}

    def reorder_cache(self, cache, ids):
        """The self-attention cache with its rows taken from ``ids`` (the source beam of each kept beam)."""
        return self._gather(cache[0], cache[1], ids)

    @property
    def alignment_heads(self) -> list[tuple[int, int]]:
        return [tuple(h) for h in self.manifest.get("alignment", {}).get("heads", [])]

    def align(self, tokens, audio: dict):
        """Logits (t, vocab) and the alignment heads' cross-attention scores (heads, t, n_audio) for one token
        sequence decoded whole (timing.find_alignment)."""
        tokens = np.ascontiguousarray(np.asarray(tokens, dtype=np.int64).reshape(1, -1))
        logits, qk = self.models["alignment"].execute(self._in(tokens), audio["cross_k"], audio["cross_v"])
        return to_numpy(logits)[0], to_numpy(qk)

    # --- the whole job ---
    def transcribe(self, audio, language: str | None = None, task: str = "transcribe",
                   without_timestamps: bool = False, beam_size: int | None = None, best_of: int | None = None,
                   patience: float | None = None, length_penalty: float | None = None, **kwargs) -> dict:
        """Transcribe a path or a 16 kHz mono float32 array; returns text, segments and per-window tokens.

        ``beam_size`` (temperature 0) and ``best_of`` (temperatures above 0), ``patience`` and ``length_penalty``
        are openai's decoding options. ``kwargs`` go to ``decoding.transcribe`` as in openai's transcribe():
        temperature (a number or a tuple for fallback), compression_ratio_threshold, logprob_threshold,
        no_speech_threshold, condition_on_previous_text, seed, word_timestamps, prepend_punctuations,
        append_punctuations."""
        if not isinstance(audio, np.ndarray):
            audio = load_audio(audio)
        return next(self.transcribe_many([audio], batch_size=1, language=language, task=task,
                                         without_timestamps=without_timestamps, beam_size=beam_size,
                                         best_of=best_of, patience=patience, length_penalty=length_penalty,
                                         **kwargs))

    def transcribe_many(self, audios, batch_size: int | None = None, progress=None, language: str | None = None,
                        task: str = "transcribe", without_timestamps: bool = False, beam_size: int | None = None,
                        best_of: int | None = None, patience: float | None = None,
                        length_penalty: float | None = None, chunked: bool = False, **kwargs):
        """Transcribe many paths or arrays with their 30 s windows sharing decoder batches; yields, in input
        order, each file's result (the dict ``transcribe`` returns, the same tokens) or the ``AudioError`` that
        file raised (the others go on). Files are read when their turn comes. ``batch_size``: files in flight at
        once (default ``default_batch_size``: 8); ``progress``: called with a
        ``decoding.Progress`` (files done of the total, seconds of audio done) as the work advances; the other
        options as ``transcribe``. ``chunked``: one file after another, each through ``transcribe_chunked`` with
        ``batch_size`` (default ``chunked_batch_size``) of its chunks decoded together."""
        if chunked:
            return self._chunked_many(audios, batch_size, progress, language=language, task=task,
                                      without_timestamps=without_timestamps, beam_size=beam_size, best_of=best_of,
                                      patience=patience, length_penalty=length_penalty, **kwargs)
        language = self.check_language_task(language, task)
        options = DecodingOptions(language=language, task=task, without_timestamps=without_timestamps,
                                  beam_size=beam_size, best_of=best_of, patience=patience,
                                  length_penalty=length_penalty)

        def loader(a):
            return lambda: self.log_mel(a if isinstance(a, np.ndarray) else load_audio(a))

        items = [loader(a) for a in audios]
        return transcribe_many(self, self.tokenizer, items, options, self.suppress,
                               batch_size=batch_size or self.default_batch_size, progress=progress,
                               n_text_ctx=self.dims["n_text_ctx"], n_audio_ctx=self.dims["n_audio_ctx"], **kwargs)

    def transcribe_chunked(self, audio, batch_size: int | None = None, language: str | None = None,
                           task: str = "transcribe", **kwargs) -> dict:
        """Batched long-form: ``audio`` (a path or a 16 kHz array) cut at quiet points into chunks of at most 30 s
        (``audio.chunk_bounds``), the chunks decoded together, ``batch_size`` at a time (``chunked_batch_size``), as
        independent files, and their results joined with times shifted to the file's (``decoding.merge_chunks``).

        On a GPU this is many times faster than ``transcribe`` on long audio (one decoder batch instead of one
        window after another). Unlike openai's loop, no text is carried from one chunk into the next, so the text
        can differ a little (the benchmark prints WER beside each time). A multilingual model told no language
        detects it once, on the first chunk, and decodes every chunk in it. Options as ``transcribe``."""
        if not isinstance(audio, np.ndarray):
            audio = load_audio(audio)
        bounds = chunk_bounds(audio)
        if len(bounds) <= 1:
            return self.transcribe(audio, language=language, task=task, **kwargs)
        language = self.check_language_task(language, task)
        if language is None and self.tokenizer.languages:
            first = self.log_mel(audio[bounds[0][0]:bounds[0][1]])[:, :N_FRAMES]
            language = detect_language(self, self.tokenizer, self.encode(first[None].astype(np.float32)))
        results = list(self.transcribe_many([audio[a:b] for a, b in bounds],
                                            batch_size=batch_size or self.chunked_batch_size, language=language, task=task,
                                            **kwargs))
        return merge_chunks(results, [a / SAMPLE_RATE for a, _ in bounds], language)

    def _chunked_many(self, audios, batch_size, progress, language=None, task="transcribe", **options):
        self.check_language_task(language, task)  # raises now, as transcribe_many does, not at the first file

        def results():
            seconds = 0.0
            for done, a in enumerate(audios):
                try:
                    audio = a if isinstance(a, np.ndarray) else load_audio(a)
                except AudioError as e:
                    yield e
                    continue
                result = self.transcribe_chunked(audio, batch_size=batch_size, language=language, task=task,
                                                 **options)
                seconds += len(audio) / SAMPLE_RATE
                if progress is not None:
                    progress(Progress(done + 1, len(audios) if hasattr(audios, "__len__") else None, seconds))
                yield result

        return results()

    def check_language_task(self, language: str | None, task: str) -> str | None:
        """The language code to decode with (lower-cased), or ValueError naming what to pass instead."""
        if task not in ("transcribe", "translate"):
            raise ValueError(f"task {task!r}: use transcribe or translate")
        codes = self.tokenizer.languages
        if not codes:  # an English-only (.en) model
            if task == "translate":
                raise ValueError(f"{self.manifest['name']} is English-only: it cannot translate; compile a "
                                 "multilingual model for --task translate")
            if language is not None and language.lower() != "en":
                raise ValueError(f"{self.manifest['name']} is English-only: --language {language} is not "
                                 "possible; leave it out or compile a multilingual model")
            return None
        if language is None:
            return None
        if language.lower() not in codes:
            raise ValueError(f"unknown language {language!r}; use a code this model knows: "
                             f"{', '.join(sorted(codes))}")
        return language.lower()

    @property
    def chunked_batch_size(self) -> int:
        """A long file's chunks decoded together by default: 32 on a GPU, 16 on the CPU (``CHUNKED_BATCH_SIZE``)."""
        return CHUNKED_BATCH_SIZE[self.manifest["device"]]

    @property
    def default_batch_size(self) -> int:
        """Files decoded together by default: 8 on either device (on a 2-core CPU, tiny.en on 49 short clips took
        144 s at batch 8 vs 241 s one by one: a decoder step of 8 rows costs little more than one of 1)."""
        return 8


def load(folder: str | Path) -> Whisper:
    return Whisper(folder)
