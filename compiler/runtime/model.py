"""Load a compiled artifact (model.mef + weights.safetensors + manifest.json) and transcribe with it.

Needs only ``max`` and ``numpy`` (plus PyAV or soundfile for audio other than 16 kHz 16-bit wav).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .audio import N_SAMPLES, load_audio
from .decoding import DecodingOptions, suppress_ids, transcribe
from .tokenizer import Tokenizer

SCHEMA_VERSION = 1


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
            self.device = Accelerator()
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
        try:
            compiled = engine.read(self.folder / "model.mef")
            self.models = self.session.init_all(compiled, weights_registry=registry)
        except Exception as e:  # MAX raises ValueError/RuntimeError for foreign or corrupt MEFs
            raise ArtifactError(f"{self.folder / 'model.mef'}: cannot be loaded here ({e}); the .mef is tied to "
                                f"max=={want} and the compiling CPU ({m['target']['arch']}) — recompile") from e
        self.tokenizer = Tokenizer.from_file(self.folder / "vocab.json", m["tokens"])
        self.suppress = suppress_ids(self.tokenizer, m["generation"]["suppress_tokens"])
        self.load_seconds = time.perf_counter() - t0
        d = self.dims
        shape = (d["n_text_layer"], 1, d["n_text_head"], 0, d["n_text_state"] // d["n_text_head"])
        self._empty_cache = _empty(shape, m["precision"]["kv_cache"], self.device)

    def _in(self, x: np.ndarray):
        """An input for the graphs: numpy on the CPU, a device buffer on an accelerator."""
        if self.device is None:
            return x
        from max.driver import Buffer

        return Buffer.from_numpy(x).to(self.device)

    # --- the stages, each one compiled graph ---
    def log_mel(self, audio: np.ndarray, padding: int = N_SAMPLES) -> np.ndarray:
        """Whole-file log-mel (n_mels, (len + padding) // 160), like openai's log_mel_spectrogram(padding=...)."""
        x = np.concatenate([np.asarray(audio, dtype=np.float32), np.zeros(padding, dtype=np.float32)])
        return to_numpy(self.models["mel"].execute(self._in(x))[0])

    def encode(self, mel_window: np.ndarray) -> dict:
        xa, k, v = self.models["encoder"].execute(self._in(np.ascontiguousarray(mel_window, dtype=np.float32)))
        return {"xa": xa, "cross_k": k, "cross_v": v}

    def decode(self, tokens: np.ndarray, audio: dict, cache):
        k, v = cache if cache is not None else (self._empty_cache, self._empty_cache)
        logits, k, v = self.models["decoder"].execute(self._in(np.ascontiguousarray(tokens, dtype=np.int64)), k, v,
                                                      audio["cross_k"], audio["cross_v"])
        return to_numpy(logits), (k, v)

    # --- the whole job ---
    def transcribe(self, audio, language: str | None = None, task: str = "transcribe",
                   without_timestamps: bool = False, **kwargs) -> dict:
        """Transcribe a path or a 16 kHz mono float32 array; returns text, segments and per-window tokens.

        ``kwargs`` go to ``decoding.transcribe`` as in openai's transcribe(): temperature (a number or a tuple for
        fallback), compression_ratio_threshold, logprob_threshold, no_speech_threshold,
        condition_on_previous_text, seed."""
        if not isinstance(audio, np.ndarray):
            audio = load_audio(audio)
        options = DecodingOptions(language=language, task=task, without_timestamps=without_timestamps)
        return transcribe(self, self.tokenizer, self.log_mel(audio), options, self.suppress,
                          n_text_ctx=self.dims["n_text_ctx"], n_audio_ctx=self.dims["n_audio_ctx"], **kwargs)


def load(folder: str | Path) -> Whisper:
    return Whisper(folder)
