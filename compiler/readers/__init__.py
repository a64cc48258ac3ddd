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


def detect_format(folder: Path) -> str:
    if (folder / "model.bin").is_file():
        return "ct2"
    if (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file():
        return "hf"
    if (folder / "config.json").is_file():
        raise MwcError(f"{folder}: config.json but no model.safetensors, model.safetensors.index.json or model.bin; "
                       "point mwc at a Hugging Face safetensors or faster-whisper/CTranslate2 folder")
    raise MwcError(f"{folder}: not a Whisper checkpoint folder (no config.json with model.safetensors or model.bin)")


def load_checkpoint(source: str) -> Checkpoint:
    """Read a local folder (HF safetensors or CTranslate2) or a hub id into a validated Checkpoint."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise MwcError(f"{source}: expected a checkpoint folder, got a file; pass the folder that holds it")
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
    else:
        from .hf import read_hf

        ck = read_hf(folder, label)
    validate(ck)
    return ck
