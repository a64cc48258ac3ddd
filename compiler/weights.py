"""Canonical weights → the names, layouts and dtypes the graphs bind (what the artifact stores).

Layout choices: attention projections fused (self-attention Q|K|V, cross-attention K|V; Whisper's key projection
has no bias, so its slice of the fused bias is zero), convolution filters in MAX's RSCF layout (1, 3, Cin, Cout),
the mel filterbank as one more weight. Linear weights stay (out, in) like PyTorch; the graph multiplies by their
transpose, which MAX folds into the matmul.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from .checkpoint import Checkpoint
from .precision import PrecisionPlan, quant_axis, quantized_weight
from .runtime.mel import mel_filters


def _fuse(w: dict, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    weight = np.concatenate([w[n + ".weight"] for n in names], axis=0)
    bias = np.concatenate([w.get(n + ".bias", np.zeros(w[n + ".weight"].shape[0], np.float32)) for n in names])
    return weight, bias


def graph_weights(ck: Checkpoint, plan: PrecisionPlan) -> dict[str, np.ndarray]:
    w, d = ck.weights, ck.dims
    out: dict[str, np.ndarray] = {"mel_filters": mel_filters(d.n_mels)}
    for k in ("conv1", "conv2"):
        out[f"encoder.{k}.weight"] = w[f"encoder.{k}.weight"].transpose(2, 1, 0)[None]  # (1, 3, Cin, Cout)
        out[f"encoder.{k}.bias"] = w[f"encoder.{k}.bias"]
    out["encoder.positional_embedding"] = w["encoder.positional_embedding"]
    for side, n in (("encoder", d.n_audio_layer), ("decoder", d.n_text_layer)):
        for i in range(n):
            p = f"{side}.blocks.{i}"
            out[f"{p}.attn.qkv.weight"], out[f"{p}.attn.qkv.bias"] = _fuse(
                w, [f"{p}.attn.query", f"{p}.attn.key", f"{p}.attn.value"])
            if side == "decoder":
                for q in ("query.weight", "query.bias"):
                    out[f"{p}.cross_attn.{q}"] = w[f"{p}.cross_attn.{q}"]
                out[f"{p}.cross_attn.kv.weight"], out[f"{p}.cross_attn.kv.bias"] = _fuse(
                    w, [f"{p}.cross_attn.key", f"{p}.cross_attn.value"])
            for name, a in w.items():
                if name.startswith(p + ".") and ".query." not in name and ".key." not in name \
                        and ".value." not in name:
                    out[name] = a
    for name in ("encoder.ln_post.weight", "encoder.ln_post.bias", "decoder.token_embedding.weight",
                 "decoder.positional_embedding", "decoder.ln.weight", "decoder.ln.bias"):
        out[name] = w[name]
    dtype = np.float32 if plan.weights == "bfloat16" else np.dtype(plan.weights)  # bf16: converted when saved
    out = {k: np.ascontiguousarray(v, dtype=np.dtype(plan.mel) if k == "mel_filters" else dtype)
           for k, v in out.items()}
    if plan.quantized == "int8":
        for k in [k for k, v in out.items() if quantized_weight(k, v.shape)]:
            out[k], out[k + ".scale"] = quantize_int8(out[k], quant_axis(k, out[k].ndim))
    return out


def quantize_int8(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8: scale = max|w| / 127 over every axis but ``axis``; q = round(w / scale).
    An all-zero channel gets scale 1 (its q is 0 anyway)."""
    w = np.asarray(w, np.float32)
    other = tuple(i for i in range(w.ndim) if i != axis)
    scale = np.abs(w).max(axis=other) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return np.ascontiguousarray(q), scale


def to_bfloat16_bits(a: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 bit patterns (uint16), rounding to nearest even like every bf16 conversion does."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def save_weights(weights: dict[str, np.ndarray], path: Path, plan: PrecisionPlan) -> None:
    """safetensors in the plan's dtype, the same bytes for the same checkpoint and plan (the manifest's sha256 is
    reproducible: safetensors writes its metadata map in a per-process random order, so the header is rewritten in
    a fixed one). numpy has no bfloat16: those tensors are saved as their uint16 bit patterns and the header says
    BF16 (data offsets are relative to the data block, so they hold)."""
    from safetensors.numpy import save_file

    bf16 = plan.weights == "bfloat16"
    save_file({k: to_bfloat16_bits(v) if bf16 and k != "mel_filters" else v for k, v in weights.items()}, str(path),
              metadata={"format": "mwc", "precision": plan.name})
    header, start = safetensors_header(path)
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    for k, info in header.items():
        if bf16 and k not in ("__metadata__", "mel_filters"):
            info["dtype"] = "BF16"
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes with spaces
    if len(raw) == start - 8:  # same length: rewrite the header in place
        with open(path, "r+b") as f:
            f.seek(8)
            f.write(raw)
        return
    data = Path(path).read_bytes()[start:]
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.write(data)


def safetensors_header(path) -> tuple[dict, int]:
    """A safetensors file's JSON header and the byte offset where its data starts (8-byte length + header)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n)), 8 + n
