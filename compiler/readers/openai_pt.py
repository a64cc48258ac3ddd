"""openai-whisper's own checkpoints (tiny.en.pt, large-v3.pt, ...): ``torch.save({"dims": {...}, "model_state_dict": {...}})``.

The state dict already uses the canonical names. Loading goes through ``torch.load(weights_only=True)`` only: torch's
restricted unpickler, which rebuilds tensors and plain containers and refuses any other object — a .pt is never
unpickled freely. torch is needed for this format alone, so it is imported lazily.

A .pt carries no tokenizer and no suppress list: the tokenizer (tokenizer.json, vocab.json (+ added_tokens.json) or
vocabulary.txt) must sit next to the .pt, and a generation_config.json there, if any, gives the generation settings.
Without one naming suppress_tokens, the suppress list is what openai-whisper computes for its default
suppress_tokens="-1": ``Tokenizer.non_speech_tokens`` from this vocabulary (runtime.tokenizer.non_speech_tokens).

``encoder.positional_embedding`` is a buffer openai computes with ``sinusoids(n_audio_ctx, n_audio_state)``; the
published files hold it, but if a state dict lacks it, it is recomputed exactly as model.py does. ``alignment_heads``
(a non-persistent, usually sparse boolean (n_text_layer, n_text_head) buffer) is not a weight: when present it
becomes ``GenerationSettings.alignment_heads``.
"""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np

from ..checkpoint import Checkpoint, GenerationSettings, ModelDimensions, special_tokens
from ..errors import MwcError
from ..runtime.tokenizer import non_speech_tokens
from . import read_json
from .vocab import read_vocab

TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocabulary.txt")


def _torch(path: Path):
    try:
        import torch
    except ImportError as e:
        raise MwcError(f"{path}: reading openai-whisper .pt checkpoints needs PyTorch; pip install torch "
                       "(or convert the model to a Hugging Face folder)") from e
    return torch


def sinusoids(torch, length: int, channels: int, max_timescale: int = 10000):
    """openai/whisper model.py's ``sinusoids``, op for op (float32 as torch computes it)."""
    if channels % 2:
        raise MwcError(f"sinusoidal positional embedding needs an even width, got {channels}")
    log_timescale_increment = np.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_timescale_increment * torch.arange(channels // 2))
    scaled_time = torch.arange(length)[:, np.newaxis] * inv_timescales[np.newaxis, :]
    return torch.cat([torch.sin(scaled_time), torch.cos(scaled_time)], dim=1)


def _load(torch, path: Path) -> dict:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # the restricted unpickler refused an object, or the bytes are no pickle
        raise MwcError(f"{path}: not a loadable PyTorch checkpoint, or one holding objects other than tensors "
                       "(mwc loads .pt files with weights_only=True and unpickles nothing else); re-download it, or "
                       "pass the .pt that openai-whisper downloads") from e
    except Exception as e:  # RuntimeError for a truncated zip, EOFError, ...
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise MwcError(f"{path}: not a loadable PyTorch checkpoint ({type(e).__name__}: {first}); the file is "
                       "truncated or corrupt — re-download it") from e
    if not (isinstance(obj, dict) and isinstance(obj.get("dims"), dict)
            and isinstance(obj.get("model_state_dict"), dict)):
        what = f"a dict with keys {sorted(map(str, obj))[:5]}" if isinstance(obj, dict) else type(obj).__name__
        raise MwcError(f"{path}: not an openai-whisper checkpoint (expected a dict with 'dims' and "
                       f"'model_state_dict', got {what}); pass the .pt that openai-whisper downloads")
    return obj


def _dims(raw: dict, path: Path) -> ModelDimensions:
    try:
        return ModelDimensions(**{f.name: int(raw[f.name]) for f in dataclasses.fields(ModelDimensions)})
    except (KeyError, TypeError, ValueError) as e:
        raise MwcError(f"{path}: 'dims' lacks or mangles {e.args[0]!r}; the checkpoint is incomplete") from e


def _alignment_heads(torch, t, path: Path) -> list[tuple[int, int]]:
    if not isinstance(t, torch.Tensor) or t.dim() != 2:
        raise MwcError(f"{path}: 'alignment_heads' is not an (n_text_layer, n_text_head) mask; the checkpoint is "
                       "corrupt")
    dense = t.to_dense() if t.is_sparse else t
    return [(int(a), int(b)) for a, b in torch.nonzero(dense).tolist()]


def read_openai_pt(path: Path, label: str) -> Checkpoint:
    torch = _torch(path)
    folder = path.parent
    if not any((folder / n).is_file() for n in TOKENIZER_FILES):
        raise MwcError(f"{path}: a .pt holds no tokenizer; put the matching tokenizer.json (e.g. from the "
                       f"openai/whisper-* repo of the same size) next to it in {folder}")
    obj = _load(torch, path)
    dims = _dims(obj["dims"], path)
    weights: dict[str, np.ndarray] = {}
    heads: list[tuple[int, int]] = []
    for name, t in obj["model_state_dict"].items():
        if name == "alignment_heads":
            heads = _alignment_heads(torch, t, path)
            continue
        if not isinstance(t, torch.Tensor):
            raise MwcError(f"{path}: state dict entry {name!r} is a {type(t).__name__}, not a tensor; "
                           "the checkpoint is corrupt")
        if t.is_sparse:
            t = t.to_dense()
        weights[str(name)] = np.ascontiguousarray(t.detach().to(torch.float32).numpy())
    if "encoder.positional_embedding" not in weights:
        weights["encoder.positional_embedding"] = sinusoids(torch, dims.n_audio_ctx, dims.n_audio_state).numpy()
    gen_path = folder / "generation_config.json"
    gen_cfg = read_json(gen_path)
    vocab = read_vocab(folder)
    if "suppress_tokens" in gen_cfg:
        suppress = [int(t) for t in gen_cfg["suppress_tokens"] or []]
    else:  # openai's suppress_tokens="-1" (the special tokens are added at run time, runtime.decoding.suppress_ids)
        suppress = non_speech_tokens(vocab, special_tokens(dims.n_vocab).eot)
    gen = GenerationSettings(
        suppress_tokens=suppress,
        begin_suppress_tokens=[int(t) for t in gen_cfg.get("begin_suppress_tokens") or []],
        alignment_heads=heads or [(int(a), int(b)) for a, b in gen_cfg.get("alignment_heads") or []])
    extra = [folder / n for n in (*TOKENIZER_FILES, "added_tokens.json", "merges.txt", "generation_config.json")]
    return Checkpoint(dims=dims, weights=weights, vocab=vocab, generation=gen, source=label,
                      source_format="openai-pt", source_files=[path, *[p for p in extra if p.is_file()]])
