"""Readers: one per source format, each translating names and layouts into the canonical checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

from ..checkpoint import Checkpoint, validate
from ..errors import MwcError

# short names a user may type for the official checkpoints
HUB_ALIASES = {
    f"whisper-{n}": f"openai/whisper-{n}"
    for n in ("tiny", "tiny.en", "base", "base.en", "small", "small.en", "medium", "medium.en",
              "large", "large-v1", "large-v2", "large-v3", "large-v3-turbo")
}
HUB_ALIASES["whisper-turbo"] = "openai/whisper-large-v3-turbo"


def read_json(path: Path) -> dict:
    """A JSON file of a checkpoint folder; {} when absent, one-line error when unreadable."""
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise MwcError(f"{path}: not valid JSON ({e}); re-download the checkpoint") from e


ONNX_DECODERS = ("decoder_model.onnx", "decoder_model_merged.onnx", "decoder_with_past_model.onnx")


def onnx_folder(folder: Path) -> Path | None:
    """Where an optimum export's graphs lie: the folder itself, or its onnx/ subfolder (the hub's ONNX layout)."""
    for d in (folder, folder / "onnx"):
        if (d / "encoder_model.onnx").is_file() and any((d / n).is_file() for n in ONNX_DECODERS):
            return d
    return None


def detect_format(folder: Path) -> str:
    """ct2 (model.bin), hf (safetensors), onnx (optimum's encoder_model.onnx + decoder_*.onnx) or openai-pt (a
    folder holding exactly one *.pt and none of the others' weight files)."""
    if (folder / "model.bin").is_file():
        return "ct2"
    if (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file():
        return "hf"
    if onnx_folder(folder) is not None:
        return "onnx"
    pts = sorted(folder.glob("*.pt"))
    if len(pts) == 1:
        return "openai-pt"
    if len(pts) > 1:
        raise MwcError(f"{folder}: holds {len(pts)} .pt files ({', '.join(p.name for p in pts[:3])}); "
                       "pass the .pt file itself")
    if (folder / "config.json").is_file():
        raise MwcError(f"{folder}: config.json but no model.safetensors, model.safetensors.index.json, model.bin or "
                       "encoder_model.onnx; point mwc at a Hugging Face safetensors, faster-whisper/CTranslate2 or "
                       "optimum ONNX folder")
    raise MwcError(f"{folder}: not a Whisper checkpoint folder (no config.json with model.safetensors, model.bin or "
                   "ONNX graphs, and no openai-whisper .pt)")


def load_checkpoint(source: str) -> Checkpoint:
    """Read a local folder (HF safetensors, CTranslate2, optimum ONNX, or one openai-whisper .pt), a .pt file or a
    hub id into a validated Checkpoint."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            if path.suffix.lower() not in (".pt", ".pth"):
                raise MwcError(f"{source}: expected a checkpoint folder or an openai-whisper .pt file, got another "
                               "file; pass the folder that holds it")
            from .openai_pt import read_openai_pt

            ck = read_openai_pt(path, source)
            validate(ck)
            return ck
        folder, label = path, source
    elif "/" in source and not source.startswith((".", "/", "~")) or source in HUB_ALIASES:
        from .hub import download

        folder, label = download(HUB_ALIASES.get(source, source)), source
    else:
        raise MwcError(f"{source}: no such folder, and not a hub id (use e.g. whisper-small or openai/whisper-small)")
    fmt = detect_format(folder)
    if fmt == "ct2":
        from .ct2 import read_ct2

        ck = read_ct2(folder, label)
    elif fmt == "onnx":
        from .onnx import read_onnx

        ck = read_onnx(folder, label)
    elif fmt == "openai-pt":
        from .openai_pt import read_openai_pt

        ck = read_openai_pt(next(folder.glob("*.pt")), label)
    else:
        from .hf import read_hf

        ck = read_hf(folder, label)
    validate(ck)
    return ck
