"""The precision plan: which dtype each class of op runs in — data that the graph builders obey.

Keeping it data makes it printable, storable in the manifest and testable. Today every op runs in float32; the
reduced precisions (fp16/bf16, with layer-norm statistics, softmax, logits and the mel log kept in fp32) and the
calibration pass that picks per-op dtypes by measuring parity are tracked separately and refused clearly here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .errors import MwcError

PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class PrecisionPlan:
    name: str
    weights: str  # dtype of the stored weights
    matmul: str  # projections, attention products, convolutions
    layer_norm: str  # normalization statistics
    softmax: str
    logits: str
    mel: str

    def to_dict(self) -> dict:
        return asdict(self)


def plan_for(precision: str, device: str) -> PrecisionPlan:
    if precision not in PRECISIONS:
        raise MwcError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision != "fp32":
        raise MwcError(f"--{precision} is not available yet: this version compiles fp32 only; use --fp32")
    return PrecisionPlan(name="fp32", weights="float32", matmul="float32", layer_norm="float32",
                         softmax="float32", logits="float32", mel="float32")
