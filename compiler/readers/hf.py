"""Hugging Face Whisper folders: config.json, model.safetensors (or a sharded index), tokenizer, generation config."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..checkpoint import Checkpoint, GenerationSettings, ModelDimensions
from ..errors import MwcError
from . import read_json
from .vocab import read_vocab

# transformers' WhisperForConditionalGeneration names → openai/whisper's model.py names
_LAYER = {"self_attn.q_proj": "attn.query", "self_attn.k_proj": "attn.key", "self_attn.v_proj": "attn.value",
          "self_attn.out_proj": "attn.out", "self_attn_layer_norm": "attn_ln",
          "encoder_attn.q_proj": "cross_attn.query", "encoder_attn.k_proj": "cross_attn.key",
          "encoder_attn.v_proj": "cross_attn.value", "encoder_attn.out_proj": "cross_attn.out",
          "encoder_attn_layer_norm": "cross_attn_ln", "fc1": "mlp.0", "fc2": "mlp.2", "final_layer_norm": "mlp_ln"}
_TOP = {"encoder.conv1": "encoder.conv1", "encoder.conv2": "encoder.conv2",
        "encoder.embed_positions.weight": "encoder.positional_embedding", "encoder.layer_norm": "encoder.ln_post",
        "decoder.embed_tokens": "decoder.token_embedding",
        "decoder.embed_positions.weight": "decoder.positional_embedding", "decoder.layer_norm": "decoder.ln"}


def openai_name(hf: str) -> str | None:
    """Map one transformers tensor name; None for tensors Whisper derives (the tied proj_out)."""
    name = hf.removeprefix("model.")
    if name == "proj_out.weight":
        return None
    m = re.fullmatch(r"(encoder|decoder)\.layers\.(\d+)\.(.+)\.(weight|bias)", name)
    if m:
        side, i, part, kind = m.groups()
        if part not in _LAYER:
            return f"?{hf}"
        return f"{side}.blocks.{i}.{_LAYER[part]}.{kind}"
    for src, dst in _TOP.items():
        if name == src or name.startswith(src + "."):
            return dst + name[len(src):]
    return f"?{hf}"  # unknown: validation reports it


def _bf16_tensor(path: Path, name: str) -> np.ndarray:
    """numpy has no bfloat16: read the raw bits through the (documented) safetensors header and widen."""
    from ..weights import safetensors_header

    header, data_start = safetensors_header(path)
    info = header[name]
    start, end = info["data_offsets"]
    raw = np.memmap(path, dtype=np.uint16, mode="r", offset=data_start + start, shape=((end - start) // 2,))
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(info["shape"])


def _read_safetensors(files: list[Path]) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError, safe_open

    out: dict[str, np.ndarray] = {}
    for path in files:
        if not path.is_file():
            raise MwcError(f"{path}: shard listed in the index is missing; re-download the checkpoint")
        try:
            with safe_open(str(path), framework="numpy") as f:
                for key in f.keys():
                    if f.get_slice(key).get_dtype() == "BF16":
                        out[key] = _bf16_tensor(path, key)
                    else:
                        out[key] = f.get_tensor(key)
        except SafetensorError as e:
            raise MwcError(f"{path}: not a readable safetensors file ({e}); the download is truncated or "
                           "corrupt — re-download it") from e
    return out


def dims_from_config(cfg: dict, path: Path) -> ModelDimensions:
    if cfg.get("model_type") != "whisper":
        raise MwcError(f"{path}: model_type is {cfg.get('model_type')!r}, not 'whisper'; "
                       "mwc compiles Whisper checkpoints only")
    try:
        return ModelDimensions(
            n_mels=int(cfg["num_mel_bins"]), n_audio_ctx=int(cfg["max_source_positions"]),
            n_audio_state=int(cfg["d_model"]), n_audio_head=int(cfg["encoder_attention_heads"]),
            n_audio_layer=int(cfg["encoder_layers"]), n_vocab=int(cfg["vocab_size"]),
            n_text_ctx=int(cfg["max_target_positions"]), n_text_state=int(cfg["d_model"]),
            n_text_head=int(cfg["decoder_attention_heads"]), n_text_layer=int(cfg["decoder_layers"]))
    except KeyError as e:
        raise MwcError(f"{path}: Whisper config lacks {e.args[0]!r}; the config is incomplete") from e


def read_hf(folder: Path, label: str) -> Checkpoint:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise MwcError(f"{folder}: config.json is missing; a Hugging Face Whisper folder needs it")
    cfg = read_json(cfg_path)
    dims = dims_from_config(cfg, cfg_path)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shard_names = sorted(set(read_json(index)["weight_map"].values()))
        except (KeyError, AttributeError) as e:
            raise MwcError(f"{index}: not a safetensors index ({e}); re-download the checkpoint") from e
        files = [folder / s for s in shard_names]
    else:
        files = [folder / "model.safetensors"]
    weights: dict[str, np.ndarray] = {}
    for hf_name, a in _read_safetensors(files).items():
        name = openai_name(hf_name)
        if name is not None:
            weights[name] = np.ascontiguousarray(a, dtype=np.float32)
    gen_cfg = read_json(folder / "generation_config.json")
    gen = GenerationSettings(
        suppress_tokens=[int(t) for t in gen_cfg.get("suppress_tokens", cfg.get("suppress_tokens") or [])],
        begin_suppress_tokens=[int(t) for t in gen_cfg.get("begin_suppress_tokens",
                                                           cfg.get("begin_suppress_tokens") or [])],
        alignment_heads=[(int(a), int(b)) for a, b in gen_cfg.get("alignment_heads", [])])
    extra = [folder / n for n in ("tokenizer.json", "vocab.json", "merges.txt", "generation_config.json")]
    return Checkpoint(dims=dims, weights=weights, vocab=read_vocab(folder), generation=gen, source=label,
                      source_format="hf", source_files=[cfg_path, *files, *[p for p in extra if p.is_file()]])
