"""``mwc verify``: an artifact against a reference, stage by stage, on real speech.

Per clip: mel, encoder output, cross-attention K/V, decoder logits under teacher forcing on the reference's own
greedy tokens, and the greedy tokens themselves (first diverging position). Over the clips: WER of both against the
human transcripts (Whisper's English normalizer for English, its basic normalizer otherwise). The report goes to
the artifact's parity.json (its manifest checksum updated), and the exit status says whether the tolerances of the
artifact's precision held.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .artifact import sha256
from .checkpoint import Checkpoint
from .errors import MwcError
from .parity import _stats, reference_cross_k, tolerances
from .runtime.model import to_numpy
from .reference import NumpyWhisper, log_mel_spectrogram
from .runtime import decoding
from .runtime.audio import N_FRAMES, N_SAMPLES, AudioError, load_audio


@dataclass
class Clip:
    path: Path
    text: str | None = None
    language: str | None = None


def clips_from_manifest(path: Path, english_only: bool, limit: int | None = None) -> list[Clip]:
    """Clips of a manifest.jsonl (shared/data format) that have a reference text."""
    if not path.is_file():
        raise MwcError(f"{path}: no such manifest; pass a manifest.jsonl or --audio files")
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("text") is None or row.get("kind") == "edge":
            continue
        if english_only and row.get("language") != "en":
            continue
        out.append(Clip(path.parent / row["file"], row["text"], row.get("language")))
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


def verify_clip(runtime, ref, clip: Clip, language: str | None) -> dict:
    """All stages on the first 30 s window of one clip, then the whole clip transcribed by both."""
    d = ref.dims
    audio = load_audio(clip.path)
    mel_ref = log_mel_spectrogram(audio, d.n_mels, N_SAMPLES)
    stages = {"mel": _stats(runtime.log_mel(audio), mel_ref)}
    window = mel_ref[:, :N_FRAMES][None].astype(np.float32)
    got, want = runtime.encode(window), ref.encode(window)
    stages["encoder"] = _stats(to_numpy(got["xa"]), want["xa"])
    stages["cross_kv"] = _stats(to_numpy(got["cross_k"]), reference_cross_k(want, d.n_text_head))

    options = decoding.DecodingOptions(language=language)
    tk = runtime.tokenizer
    ref_result = decoding.transcribe(ref, tk, mel_ref, options, runtime.suppress,
                                     n_text_ctx=d.n_text_ctx, n_audio_ctx=d.n_audio_ctx)
    first = ref_result["windows"][0]
    # teacher forcing: both decoders read the reference's own tokens for the first window in one pass
    seq = decoding.sot_sequence(tk, first.language, "transcribe", False) + first.tokens
    tokens = np.array([seq], dtype=np.int64)
    stages["decoder_logits"] = _stats(runtime.decode(tokens, got, None)[0], ref.decode(tokens, want, None)[0])

    got_result = runtime.transcribe(audio, language=language)
    got_tokens = [t for w in got_result["windows"] for t in w.tokens]
    want_tokens = [t for w in ref_result["windows"] for t in w.tokens]
    diverge = next((i for i, (a, b) in enumerate(zip(got_tokens, want_tokens)) if a != b),
                   None if len(got_tokens) == len(want_tokens) else min(len(got_tokens), len(want_tokens)))
    return {"file": str(clip.path), "stages": stages, "tokens_equal": diverge is None, "first_diverging_token": diverge,
            "n_tokens": len(want_tokens), "hyp": got_result["text"], "ref_hyp": ref_result["text"],
            "text": clip.text, "language": clip.language}


def make_reference(name: str, ck: Checkpoint):
    """numpy (float64, always there) or transformers (float64 WhisperForConditionalGeneration, when installed)."""
    if name == "numpy":
        return NumpyWhisper(ck)
    if name == "transformers":
        from .reference_hf import TransformersWhisper

        return TransformersWhisper(ck)
    raise MwcError(f"unknown reference {name!r}; choose numpy or transformers")


REFERENCE_NAMES = {"numpy": "numpy float64", "transformers": "transformers WhisperForConditionalGeneration float64"}


def run_verify(artifact: Path, ck: Checkpoint, clips: list[Clip], log=print, reference: str = "numpy") -> dict:
    from .runtime.model import Whisper

    runtime = Whisper(artifact)
    precision = runtime.manifest["precision"]["name"]
    tol = tolerances(runtime.manifest)
    ref = make_reference(reference, ck)
    rows, failed_files = [], []
    for clip in clips:
        try:
            row = verify_clip(runtime, ref, clip, None if not ck.multilingual else clip.language)
        except AudioError as e:
            failed_files.append(str(e))
            log(f"error: {e}")
            continue
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
    checks = {"mel": worst["mel"] <= tol["mel_abs"], "encoder": worst["encoder"] <= tol["encoder_rel"],
              "cross_kv": worst["cross_kv"] <= tol["encoder_rel"],
              "decoder_logits": worst["decoder_logits"] <= tol["logits_rel"]}
    if precision == "fp32":
        checks["greedy_tokens"] = agree == len(rows)
    report = {"reference": REFERENCE_NAMES[reference], "precision": precision, "tolerances": tol, "clips": rows,
              "worst": worst, "token_agreement": agree / len(rows), "wer": wer(refs, hyps),
              "reference_wer": wer(refs, ref_hyps), "unreadable": failed_files, "checks": checks,
              "passed": all(checks.values())}
    return report


def write_report(artifact: Path, report: dict) -> None:
    """parity.json in the artifact, and its checksum in the manifest."""
    path = artifact / "parity.json"
    path.write_text(json.dumps(report, indent=2))
    mpath = artifact / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["files"]["parity.json"] = {"sha256": sha256(path), "bytes": path.stat().st_size}
    mpath.write_text(json.dumps(manifest, indent=2))
