"""``mwc verify``: an artifact against a reference, stage by stage, on real speech.

Per clip: mel, encoder output, cross-attention K/V, decoder logits under teacher forcing on the reference's own
greedy tokens, and the greedy tokens themselves (first diverging position). Over the clips: WER of both against the
human transcripts (Whisper's English normalizer for English, its basic normalizer otherwise). The report goes to
the artifact's parity.json (its manifest checksum updated), and the exit status says whether the tolerances of the
artifact's precision held.

The float64 reference's side of a clip (its encoder output and cross K, its transcript, its logits under teacher
forcing) is the slow part and the same for every artifact of one checkpoint: with a cache folder it is stored once
per checkpoint × reference × clip × language × suppress list × the reference's code (``reference_key``) and read
back by every later run (``mwc verify --cache DIR``; tests/precision_table.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .artifact import sha256
from .checkpoint import Checkpoint
from .errors import MwcError
from .parity import _stats, encoder_passes, reference_cross_k, tolerances
from .runtime.model import to_numpy
from .reference import NumpyWhisper, log_mel_spectrogram
from .runtime import decoding
from .runtime.audio import N_FRAMES, N_SAMPLES, AudioError, load_audio


@dataclass
class Clip:
    path: Path
    text: str | None = None
    language: str | None = None


def clips_from_manifest(path: Path, english_only: bool, limit: int | None = None, every: bool = False) -> list[Clip]:
    """Clips of a manifest.jsonl (shared/data format) that have a reference text. ``every``: also the edge clips and
    the clips without a text (tokens are still compared; WER counts only clips with a text; unreadable files are
    reported). ``english_only`` drops clips in another language (a clip with no language, such as silence, stays)."""
    if not path.is_file():
        raise MwcError(f"{path}: no such manifest; pass a manifest.jsonl or --audio files")
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if not every and (row.get("text") is None or row.get("kind") == "edge"):
            continue
        if english_only and row.get("language") not in ("en", None if every else "en"):
            continue
        out.append(Clip(path.parent / row["file"], row.get("text"), row.get("language")))
    return out[:limit] if limit else out


def normalize(text: str, language: str | None) -> str:
    if language in (None, "en"):
        from whisper_normalizer.english import EnglishTextNormalizer

        return EnglishTextNormalizer()(text)
    from whisper_normalizer.basic import BasicTextNormalizer

    return BasicTextNormalizer()(text)


def wer(refs: list[str], hyps: list[str]) -> float:
    import jiwer

    pairs = [(r, h) for r, h in zip(refs, hyps) if r.strip()]
    if not pairs:
        return float("nan")
    return float(jiwer.wer([r for r, _ in pairs], [h for _, h in pairs]))


class _FirstWindow:
    """The reference, remembering the first window the transcript encodes (its mel and encoder output): the stages
    are compared on exactly that window (openai's transcribe pads a short clip's frames with zeros, not with the
    log-mel of padded audio), and it is encoded once."""

    def __init__(self, ref):
        self._ref, self.window, self.features = ref, None, None

    def encode(self, mel):
        out = self._ref.encode(mel)
        if self.window is None and np.shape(mel)[0] == 1:
            self.window, self.features = np.array(mel, dtype=np.float32), out
        return out

    def __getattr__(self, name):
        return getattr(self._ref, name)


def reference_clip(ref, tk, suppress: list[int], audio: np.ndarray, language: str | None) -> dict:
    """The reference's side of a clip: the whole clip's greedy transcript, and on the first window it encoded
    (the 30 s of log-mel from the start if none was: a silent clip) its encoder output and cross K and the logits
    under teacher forcing on its own first-window tokens."""
    d = ref.dims
    mel_ref = log_mel_spectrogram(audio, d.n_mels, N_SAMPLES)
    first_window = _FirstWindow(ref)
    result = decoding.transcribe(first_window, tk, mel_ref, decoding.DecodingOptions(language=language), suppress,
                                 n_text_ctx=d.n_text_ctx, n_audio_ctx=d.n_audio_ctx)
    window, want = first_window.window, first_window.features
    if window is None:
        window = mel_ref[:, :N_FRAMES][None].astype(np.float32)
        want = ref.encode(window)
    first = result["windows"][0]
    seq = decoding.sot_sequence(tk, first.language, "transcribe", False) + first.tokens
    logits = ref.decode(np.array([seq], dtype=np.int64), want, None)[0]
    return {"window": window, "xa": np.asarray(want["xa"]), "cross_k": reference_cross_k(want, d.n_text_head),
            "logits": logits, "seq": seq, "tokens": [t for w in result["windows"] for t in w.tokens],
            "text": result["text"]}


REFERENCE_CODE = ("reference.py", "reference_hf.py", "reference_ort.py", "verify.py", "parity.py", "runtime/decoding.py",
                  "runtime/tokenizer.py", "runtime/mel.py", "runtime/audio.py")
CACHE_VERSION = 2


def reference_key(checkpoint_sha256: str, reference: str, clip: Path, language: str | None, suppress: list[int],
                  tokens: dict) -> str:
    """What a cached reference clip depends on: the checkpoint, the reference, the clip's bytes, the language it
    is decoded in, the suppress list and special tokens, and the source of the code that computes it."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for rel in REFERENCE_CODE:
        h.update(rel.encode())
        h.update((root / rel).read_bytes())
    h.update(Path(clip).read_bytes())
    h.update(json.dumps([CACHE_VERSION, checkpoint_sha256, reference, language, sorted(suppress), tokens],
                        sort_keys=True).encode())
    return h.hexdigest()[:32]


def _cache_load(path: Path) -> dict | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return {k: z[k] for k in ("window", "xa", "cross_k", "logits")} | meta
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # missing or damaged: recompute
        return None


def _cache_store(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    meta = json.dumps({k: data[k] for k in ("seq", "tokens", "text")})
    with open(tmp, "wb") as f:
        np.savez(f, window=data["window"], xa=data["xa"], cross_k=data["cross_k"], logits=data["logits"],
                 meta=np.array(meta))
    tmp.replace(path)


def verify_clip(runtime, want: dict, audio: np.ndarray, clip: Clip, language: str | None) -> dict:
    """All stages on the reference's first window of one clip (``reference_clip``), then the whole clip transcribed
    by the artifact."""
    d = runtime.dims
    mel_ref = log_mel_spectrogram(audio, d["n_mels"], N_SAMPLES)
    stages = {"mel": _stats(runtime.log_mel(audio), mel_ref)}
    got = runtime.encode(want["window"])
    stages["encoder"] = _stats(to_numpy(got["xa"]), want["xa"])
    stages["cross_kv"] = _stats(to_numpy(got["cross_k"]), want["cross_k"])
    # teacher forcing: the artifact's decoder reads the reference's own tokens for the first window in one pass
    stages["decoder_logits"] = _stats(runtime.decode(np.array([want["seq"]], dtype=np.int64), got, None)[0],
                                      want["logits"])

    got_result = runtime.transcribe(audio, language=language)
    got_tokens = [t for w in got_result["windows"] for t in w.tokens]
    want_tokens = list(want["tokens"])
    diverge = next((i for i, (a, b) in enumerate(zip(got_tokens, want_tokens)) if a != b),
                   None if len(got_tokens) == len(want_tokens) else min(len(got_tokens), len(want_tokens)))
    return {"file": str(clip.path), "stages": stages, "tokens_equal": diverge is None, "first_diverging_token": diverge,
            "n_tokens": len(want_tokens), "hyp": got_result["text"], "ref_hyp": want["text"],
            "text": clip.text, "language": clip.language, "tokens": got_tokens, "ref_tokens": want_tokens}


def make_reference(name: str, ck: Checkpoint):
    """numpy (float64, always there), transformers (float64 WhisperForConditionalGeneration, when installed) or
    onnxruntime (an ONNX export's own graphs, for ONNX inputs)."""
    if name == "numpy":
        return NumpyWhisper(ck)
    if name == "transformers":
        from .reference_hf import TransformersWhisper

        return TransformersWhisper(ck)
    if name == "onnxruntime":
        from .reference_ort import OnnxRuntimeWhisper

        return OnnxRuntimeWhisper(ck)
    raise MwcError(f"unknown reference {name!r}; choose numpy, transformers or onnxruntime")


REFERENCE_NAMES = {"numpy": "numpy float64", "transformers": "transformers WhisperForConditionalGeneration float64",
                   "onnxruntime": "onnxruntime, the ONNX export's own graphs (float32)"}


def run_verify(artifact: Path, ck: Checkpoint, clips: list[Clip], log=print, reference: str = "numpy",
               cache: Path | None = None) -> dict:
    """Verify ``artifact`` on ``clips``. ``cache``: a folder where the reference's side of each clip is kept
    (``reference_key``), so later runs for other artifacts of the same checkpoint skip the float64 model."""
    from .runtime.model import Whisper

    runtime = Whisper(artifact)
    precision = runtime.manifest["precision"]["name"]
    tol = tolerances(runtime.manifest)
    ref = None
    ck_sha = ck.source_sha256() if cache is not None else None
    rows, failed_files, hits = [], [], 0
    for clip in clips:
        language = None if not ck.multilingual else clip.language
        try:
            audio = load_audio(clip.path)
        except AudioError as e:
            failed_files.append(str(e))
            log(f"error: {e}")
            continue
        want, path = None, None
        if cache is not None:
            key = reference_key(ck_sha, reference, clip.path, language, runtime.suppress, runtime.manifest["tokens"])
            path = Path(cache) / f"{key}.npz"
            want = _cache_load(path)
            hits += want is not None
        if want is None:
            ref = ref or make_reference(reference, ck)
            want = reference_clip(ref, runtime.tokenizer, runtime.suppress, audio, language)
            if path is not None:
                _cache_store(path, want)
        row = verify_clip(runtime, want, audio, clip, language)
        rows.append(row)
        s = row["stages"]
        log(f"{clip.path.name[:34]:34s} mel {s['mel']['max_abs']:8.1e}  enc {s['encoder']['max_rel']:8.1e}  "
            f"kv {s['cross_kv']['max_rel']:8.1e}  logits {s['decoder_logits']['max_rel']:8.1e}  tokens "
            f"{'equal' if row['tokens_equal'] else 'differ at ' + str(row['first_diverging_token'])}")
    if not rows:
        raise MwcError(f"{artifact}: no clip could be verified")
    worst = {k: max(r["stages"][k]["max_abs" if k == "mel" else "max_rel"] for r in rows)
             for k in ("mel", "encoder", "cross_kv", "decoder_logits")}
    refs = [normalize(r["text"], r["language"]) for r in rows if r["text"]]
    hyps = [normalize(r["hyp"], r["language"]) for r in rows if r["text"]]
    ref_hyps = [normalize(r["ref_hyp"], r["language"]) for r in rows if r["text"]]
    agree = sum(r["tokens_equal"] for r in rows)
    cosine = {k: min(r["stages"][k]["cosine"] for r in rows) for k in ("encoder", "cross_kv")}
    checks = {"mel": worst["mel"] <= tol["mel_abs"],
              **{k: encoder_passes({"max_rel": worst[k], "cosine": cosine[k]}, tol) for k in ("encoder", "cross_kv")},
              "decoder_logits": worst["decoder_logits"] <= tol["logits_rel"]}
    if precision == "fp32":
        checks["greedy_tokens"] = agree == len(rows)
    report = {"reference": REFERENCE_NAMES[reference], "precision": precision, "tolerances": tol, "clips": rows,
              "worst": worst, "worst_cosine": cosine, "token_agreement": agree / len(rows), "wer": wer(refs, hyps),
              "reference_wer": wer(refs, ref_hyps), "unreadable": failed_files, "checks": checks,
              "passed": all(checks.values())}
    if cache is not None:
        report["reference_cache"] = {"folder": str(cache), "hits": hits, "computed": len(rows) - hits}
    return report


def write_report(artifact: Path, report: dict) -> None:
    """parity.json in the artifact, and its checksum in the manifest."""
    path = artifact / "parity.json"
    path.write_text(json.dumps(report, indent=2))
    mpath = artifact / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["files"]["parity.json"] = {"sha256": sha256(path), "bytes": path.stat().st_size}
    mpath.write_text(json.dumps(manifest, indent=2))
