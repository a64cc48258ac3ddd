"""The precision plan: which dtype each class of op runs in — data that the graph builders obey.

Keeping it data makes it printable, storable in the manifest and testable. The reduced plans keep the numerically
sensitive parts in float32: the residual stream, layer-norm statistics, the softmax (the Mojo attention op
accumulates in fp32 whatever its inputs), the mel spectrogram and its log; weights, matmul inputs and the KV cache
take the reduced dtype. The final vocabulary projection reads the tied embedding in the weights' dtype (an fp32 copy
would double its memory) and returns fp32 logits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import MwcError

PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class PrecisionPlan:
    name: str
    weights: str  # dtype of the stored weights
    matmul: str  # projections, attention inputs, convolutions, GELU
    residual: str  # the residual stream between blocks
    layer_norm: str  # normalization statistics
    softmax: str  # attention softmax accumulation
    kv_cache: str  # self-attention cache and cross-attention K/V
    logits: str  # the vocabulary projection's inputs (its output is always float32)
    mel: str

    def to_dict(self) -> dict:
        return asdict(self)


def plan_for(precision: str, device: str) -> PrecisionPlan:
    if precision not in PRECISIONS:
        raise MwcError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    low = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[precision]
    return PrecisionPlan(name=precision, weights=low, matmul=low, residual="float32", layer_norm="float32",
                         softmax="float32", kv_cache=low, logits=low, mel="float32")
