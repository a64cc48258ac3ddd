"""The precision plan: which dtype each class of op runs in — data that the graph builders obey.

Keeping it data makes it printable, storable in the manifest and testable. The reduced plans keep the numerically
sensitive parts in float32: the residual stream, layer-norm statistics, the softmax (the Mojo attention op
accumulates in fp32 whatever its inputs), the mel spectrogram and its log; weights, matmul inputs and the KV cache
take the reduced dtype. The final vocabulary projection reads the tied embedding in the weights' dtype (an fp32 copy
would double its memory) and returns fp32 logits. That is the GPU's plan; on the CPU, where MAX 26.7's fp16 kernels
accumulate in fp16, ``--fp16`` stores fp16 and computes in fp32, and bf16 runs its convolutions in fp32
(``plan_for``).

The int8 plan is weight-only quantization: every projection weight (the fused attention projections, the MLPs,
the two convolutions and the tied token embedding, which is also the logits projection) is stored as int8 with one
float32 scale per output channel (symmetric, scale = max|w| / 127); the graph dequantizes each one to the matmul
dtype right before its matmul (or gather). Everything else (biases, norms, positions, activations) runs as fp32.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from .errors import MwcError

PRECISIONS = ("fp32", "fp16", "bf16", "int8")


@dataclass(frozen=True)
class PrecisionPlan:
    name: str
    weights: str  # dtype of the stored weights
    matmul: str  # projections, attention inputs, GELU
    conv: str  # the two input convolutions (and their GELU)
    residual: str  # the residual stream between blocks
    layer_norm: str  # normalization statistics
    softmax: str  # attention softmax accumulation
    kv_cache: str  # self-attention cache and cross-attention K/V
    logits: str  # the vocabulary projection's inputs (its output is always float32)
    mel: str
    quantized: str = "none"  # "int8": projection weights stored int8 + per-output-channel fp32 scales

    def to_dict(self) -> dict:
        return asdict(self)


def plan_for(precision: str, device: str) -> PrecisionPlan:
    if precision not in PRECISIONS:
        raise MwcError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "int8":
        f = "float32"
        return PrecisionPlan(name="int8", weights=f, matmul=f, conv=f, residual=f, layer_norm=f, softmax=f, kv_cache=f,
                             logits=f, mel=f, quantized="int8")
    if precision == "bf16" and device == "gpu" and os.environ.get("MWC_GPU_BF16", "") in ("", "0"):
        # On the H200, MAX 26.7's bf16 kernels return zeros or garbage for few-row operands (tests/gpu_probe.py
        # bf16, taps): a (1, 6, 512) cast, a 6-row projection and the KV-cache concat read all zeros, a 6-row
        # vocabulary matmul is 0.64 off (1 row: 3e-3), so base's decoder logits came out 0.92 off and the parity
        # gate refused the artifact after a full compile. Refuse before compiling; MWC_GPU_BF16=1 tries anyway.
        raise MwcError("--bf16 on the GPU: MAX 26.7's bf16 GPU kernels miscompute the decoder's few-row matmuls "
                       "(measured on the H200; the parity check refuses the artifact); use --fp16 on the GPU, or "
                       "--bf16 on the CPU (set MWC_GPU_BF16=1 to try it with another MAX)")
    low = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[precision]
    if precision == "fp16" and device == "cpu":
        # MAX 26.7's CPU fp16 matmul and conv2d accumulate in fp16 (tests/probe_bf16_conv.py fp16: conv2d and
        # im2col + matmul 2.5e-2 relative, fp32 on the same fp16 weights 2.4e-6); compiled that way tiny.en's encoder
        # came out 8.2e-2 off the reference on JFK and base's 6.8e-2. So on the CPU, fp16 is a storage precision:
        # fp16 weights (half the artifact) and fp16 KV cache, every matmul, convolution and the logits in fp32 on
        # them. The GPU runs the full fp16 plan (tensor cores accumulate in fp32).
        f = "float32"
        return PrecisionPlan(name=precision, weights=low, matmul=f, conv=f, residual=f, layer_norm=f, softmax=f,
                             kv_cache=low, logits=f, mel=f)
    # MAX 26.7's CPU conv2d accumulates bf16 in bf16: tiny.en's encoder came out 1.2 relative off the reference.
    # Measured on tiny.en's two convolutions (tests/probe_bf16_conv.py): bf16 conv2d 2.5e-1 relative, bf16 im2col +
    # matmul 2.5e-1 too, fp32 conv2d on the bf16 weights 2.8e-6. So on the CPU the bf16 plan runs the two
    # convolutions in fp32 on its bf16 weights; everything else stays bf16 (tests/probe_bf16_cpu.py: MAX's CPU bf16
    # projections, GELU, layer norm and the Mojo attention op are within bf16 rounding).
    conv = "float32" if precision == "bf16" and device == "cpu" else low
    return PrecisionPlan(name=precision, weights=low, matmul=low, conv=conv, residual="float32", layer_norm="float32",
                         softmax="float32", kv_cache=low, logits=low, mel="float32")


def quantized_weight(name: str, shape: tuple[int, ...]) -> bool:
    """Whether the int8 plan stores this graph weight as int8: every matrix (projections, convolutions, the token
    embedding) — not biases, norms, positional embeddings or the mel filterbank."""
    return name.endswith(".weight") and len(shape) >= 2


def quant_axis(name: str, ndim: int) -> int:
    """The output-channel axis of a graph weight: (out, in) projections and the (vocab, d) embedding → 0; conv
    filters in MAX's RSCF layout (1, 3, Cin, Cout) → the last."""
    return ndim - 1 if ".conv" in name else 0
