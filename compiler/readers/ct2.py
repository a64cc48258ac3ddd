"""faster-whisper / CTranslate2 folders: model.bin + config.json + tokenizer.json (or vocabulary.txt).

model.bin's layout, as CTranslate2's ``ModelSpec._serialize`` writes it (binary version 6, little-endian):
  u32 version; str spec_name; u32 revision; u32 n_variables;
  n_variables × { str name; u8 rank; u32 dims[rank]; u8 dtype; u32 n_bytes; bytes data };
  u32 n_aliases; n_aliases × { str alias; str target }
where str = u16 length (including a trailing NUL) + bytes. dtype ids follow CTranslate2's DataType enum.
No ctranslate2 dependency: this module reads the file with numpy alone.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np

from ..checkpoint import Checkpoint, GenerationSettings, ModelDimensions
from ..errors import MwcError
from . import read_json
from .vocab import read_vocab

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}


class _Reader:
    def __init__(self, path: Path):
        self.path = path
        self.buf = memoryview(np.memmap(path, dtype=np.uint8, mode="r")) if path.stat().st_size else memoryview(b"")
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.buf):
            raise MwcError(f"{self.path}: file is truncated (needs {self.pos + n} bytes, has {len(self.buf)}); "
                           "re-download or re-convert the model")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def u(self, fmt: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.u("H")
        return bytes(self.take(n)).rstrip(b"\0").decode("utf-8")


def read_model_bin(path: Path) -> tuple[str, dict[str, np.ndarray]]:
    """All variables of a CTranslate2 model.bin as numpy arrays (aliases resolved)."""
    r = _Reader(path)
    version = r.u("I")
    if version < 5 or version > 6:
        raise MwcError(f"{path}: CTranslate2 binary version {version} is not supported (5 or 6 expected)")
    spec = r.string()
    r.u("I")  # spec revision
    out: dict[str, np.ndarray] = {}
    for _ in range(r.u("I")):
        name = r.string()
        shape = tuple(r.u("I") for _ in range(r.u("B")))
        dt = r.u("B")
        nbytes = r.u("I")
        raw = r.take(nbytes)
        if dt not in _DTYPES:
            raise MwcError(f"{path}: variable {name!r} has unknown dtype id {dt}")
        if _DTYPES[dt] == "bfloat16":
            a = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            a = np.frombuffer(raw, _DTYPES[dt])
        if a.size != int(np.prod(shape, dtype=np.int64)):
            raise MwcError(f"{path}: variable {name!r} holds {a.size} values for shape {shape}; the file is corrupt")
        out[name] = a.reshape(shape)
    for _ in range(r.u("I")):
        alias, target = r.string(), r.string()
        out[alias] = out[target]
    return spec, out


def _dequantize(v: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """int8/int16 weights come with a per-row '<name>_scale': value = q / scale."""
    out = {}
    for k, a in v.items():
        if k.endswith("weight_scale"):
            continue
        if k.endswith("/weight") and a.dtype in (np.int8, np.int16) and k + "_scale" in v:
            scale = v[k + "_scale"].astype(np.float32)
            a = a.astype(np.float32) / scale.reshape(-1, *([1] * (a.ndim - 1)))
        out[k] = a
    return out


def _f32(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def to_openai_names(v: dict[str, np.ndarray], n_enc: int, n_dec: int) -> dict[str, np.ndarray]:
    """CTranslate2's WhisperSpec names → openai/whisper's, splitting CT2's fused projections."""
    w: dict[str, np.ndarray] = {}

    def ln(dst: str, src: str) -> None:
        w[dst + ".weight"], w[dst + ".bias"] = _f32(v[src + "/gamma"]), _f32(v[src + "/beta"])

    def lin(dst: str, src: str, bias: bool = True) -> None:
        w[dst + ".weight"] = _f32(v[src + "/weight"])
        if bias:
            w[dst + ".bias"] = _f32(v[src + "/bias"])

    def split(dst_names: list[str], src: str) -> None:
        ws = np.split(v[src + "/weight"], len(dst_names))
        bs = np.split(v[src + "/bias"], len(dst_names))
        for name, wi, bi in zip(dst_names, ws, bs):
            w[name + ".weight"] = _f32(wi)
            if not name.endswith(".key"):  # Whisper's key projection has no bias (CT2 stores zeros)
                w[name + ".bias"] = _f32(bi)

    for side, n in (("encoder", n_enc), ("decoder", n_dec)):
        for i in range(n):
            s, d = f"{side}/layer_{i}", f"{side}.blocks.{i}"
            ln(f"{d}.attn_ln", f"{s}/self_attention/layer_norm")
            split([f"{d}.attn.query", f"{d}.attn.key", f"{d}.attn.value"], f"{s}/self_attention/linear_0")
            lin(f"{d}.attn.out", f"{s}/self_attention/linear_1")
            if side == "decoder":
                ln(f"{d}.cross_attn_ln", f"{s}/attention/layer_norm")
                lin(f"{d}.cross_attn.query", f"{s}/attention/linear_0")
                split([f"{d}.cross_attn.key", f"{d}.cross_attn.value"], f"{s}/attention/linear_1")
                lin(f"{d}.cross_attn.out", f"{s}/attention/linear_2")
            ln(f"{d}.mlp_ln", f"{s}/ffn/layer_norm")
            lin(f"{d}.mlp.0", f"{s}/ffn/linear_0")
            lin(f"{d}.mlp.2", f"{s}/ffn/linear_1")
    for k in ("conv1", "conv2"):
        lin(f"encoder.{k}", f"encoder/{k}")
    w["encoder.positional_embedding"] = _f32(v["encoder/position_encodings/encodings"])
    ln("encoder.ln_post", "encoder/layer_norm")
    w["decoder.token_embedding.weight"] = _f32(v["decoder/embeddings/weight"])
    w["decoder.positional_embedding"] = _f32(v["decoder/position_encodings/encodings"])
    ln("decoder.ln", "decoder/layer_norm")
    return w


def read_ct2(folder: Path, label: str) -> Checkpoint:
    path = folder / "model.bin"
    spec, raw = read_model_bin(path)
    if spec != "WhisperSpec":
        raise MwcError(f"{path}: a CTranslate2 {spec} model, not Whisper; pass a Whisper checkpoint")
    v = _dequantize(raw)

    def count(side: str) -> int:
        return len({k.split("/")[1] for k in v if re.match(rf"{side}/layer_\d+/", k)})

    try:
        n_enc, n_dec = count("encoder"), count("decoder")
        conv1 = v["encoder/conv1/weight"]
        dims = ModelDimensions(
            n_mels=int(conv1.shape[1]), n_audio_ctx=int(v["encoder/position_encodings/encodings"].shape[0]),
            n_audio_state=int(conv1.shape[0]), n_audio_head=int(v["encoder/num_heads"]), n_audio_layer=n_enc,
            n_vocab=int(v["decoder/embeddings/weight"].shape[0]),
            n_text_ctx=int(v["decoder/position_encodings/encodings"].shape[0]),
            n_text_state=int(v["decoder/embeddings/weight"].shape[1]), n_text_head=int(v["decoder/num_heads"]),
            n_text_layer=n_dec)
        weights = to_openai_names(v, n_enc, n_dec)
    except KeyError as e:
        raise MwcError(f"{path}: variable {e.args[0]!r} is missing; this is not a complete Whisper model") from e
    cfg_path = folder / "config.json"
    cfg = read_json(cfg_path)
    gen = GenerationSettings(
        suppress_tokens=[int(t) for t in cfg.get("suppress_ids", [])],
        begin_suppress_tokens=[int(t) for t in cfg.get("suppress_ids_begin", [])],
        alignment_heads=[(int(a), int(b)) for a, b in cfg.get("alignment_heads", [])])
    files = [p for p in (path, cfg_path, folder / "tokenizer.json", folder / "vocabulary.txt") if p.is_file()]
    return Checkpoint(dims=dims, weights=weights, vocab=read_vocab(folder), generation=gen, source=label,
                      source_format="ct2", source_files=files)
