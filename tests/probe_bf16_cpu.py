"""Isolated bf16 probes on the CPU: each MAX op the Whisper graphs use (and the Mojo attention op), run with bf16
inputs and compared against numpy float64 on the same bf16-rounded inputs.

Usage: python tests/probe_bf16_cpu.py [--device cpu|gpu]
Prints one line per op: max relative error (max |got - want| / max |want|). bf16 rounding of the output alone is
~4e-3; an op far above ~1e-2 computes something else.

Measured (MAX 26.7.0, 2-core x86 CPU): cast 0, matmul x@W^T 3.1e-3, bias add 2.6e-3, gelu 2.0e-3, layer_norm
2.6e-3, mwc_attention 2.3e-3 (causal 2.5e-3), softmax 3.5e-3, batched (B,H,T,64)@(B,H,64,T) 1.9e-2, conv2d k3
5.9e-2 (stride 2: 5.1e-2): the convolution (and, less so, the batched matmul) accumulates in bf16.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from max.driver import CPU, Accelerator, Buffer
from max.dtype import DType
from max.engine import InferenceSession
from max.graph import DeviceRef, Graph, TensorType, ops

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from compiler.weights import to_bfloat16_bits  # noqa: E402

BF = DType.bfloat16
F32 = DType.float32


def bf16_round(a: np.ndarray) -> np.ndarray:
    return (to_bfloat16_bits(a).astype(np.uint32) << 16).view(np.float32)


def gelu(x):
    from math import erf
    return 0.5 * x * (1 + np.vectorize(erf)(x / np.sqrt(2)))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    args = ap.parse_args()
    dev = DeviceRef.CPU() if args.device == "cpu" else DeviceRef.GPU()
    rng = np.random.default_rng(0)
    T, C, N, H = 50, 384, 1152, 6
    x = bf16_round(rng.standard_normal((1, T, C)).astype(np.float32))
    w = bf16_round((rng.standard_normal((N, C)) / np.sqrt(C)).astype(np.float32))
    b = bf16_round(rng.standard_normal(N).astype(np.float32))
    cw = bf16_round((rng.standard_normal((1, 3, C, C)) / np.sqrt(3 * C)).astype(np.float32))
    cb = bf16_round(rng.standard_normal(C).astype(np.float32))
    g_ = bf16_round(rng.standard_normal(C).astype(np.float32))
    be = bf16_round(rng.standard_normal(C).astype(np.float32))
    q = bf16_round(rng.standard_normal((1, H, T, 64)).astype(np.float32))
    k = bf16_round(rng.standard_normal((1, H, 3 * T, 64)).astype(np.float32))
    v = bf16_round(rng.standard_normal((1, H, 3 * T, 64)).astype(np.float32))
    inputs = [x, w, b, cw, cb, g_, be, q, k, v]
    types = [TensorType(F32, a.shape, dev) for a in inputs]

    names = ["cast_roundtrip", "matmul x@W^T", "matmul x@W^T (f32 out cast)", "bias add", "gelu", "conv2d k3+bias",
             "conv2d k3 stride2", "layer_norm bf16", "mwc_attention", "mwc_attention causal", "softmax bf16",
             "permute+reshape", "matmul (B,H,T,64)@(B,H,64,T)"]
    with Graph("probe", input_types=types, custom_extensions=[ROOT / "ops"]) as g:
        xf, wf, bf, cwf, cbf, gf, bef, qf, kf, vf = (t.tensor for t in g.inputs)
        xb, wb, bb, cwb, cbb, gb, beb, qb, kb, vb = (ops.cast(t, BF) for t in (xf, wf, bf, cwf, cbf, gf, bef, qf, kf, vf))
        outs = [
            xb,
            xb @ wb.T,
            xb @ wb.T,
            ops.cast(xb @ wb.T, BF) + bb,
            ops.gelu(xb),
            ops.squeeze(ops.conv2d(ops.unsqueeze(xb, 1), cwb, stride=(1, 1), padding=(0, 0, 1, 1), bias=cbb), 1),
            ops.squeeze(ops.conv2d(ops.unsqueeze(xb, 1), cwb, stride=(1, 2), padding=(0, 0, 1, 1), bias=cbb), 1),
            ops.layer_norm(xb, gb, beb, 1e-5),
            ops.custom("mwc_attention", dev, [qb, kb, vb], [TensorType(BF, qb.shape, dev)],
                       parameters={"causal": False})[0].tensor,
            ops.custom("mwc_attention", dev, [qb, kb, vb], [TensorType(BF, qb.shape, dev)],
                       parameters={"causal": True})[0].tensor,
            ops.softmax(qb),
            ops.reshape(ops.permute(qb, [0, 2, 1, 3]), [1, T, H * 64]),
            qb @ ops.permute(kb, [0, 1, 3, 2]),
        ]
        g.output(*[ops.cast(o, F32) for o in outs])

    def attn(causal):
        s = q.astype(np.float64) @ np.swapaxes(k, -1, -2) / 8.0
        if causal:
            tq, tk = s.shape[-2:]
            s = np.where(np.arange(tk)[None] <= np.arange(tq)[:, None] + (tk - tq), s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        return (p / p.sum(-1, keepdims=True)) @ v

    x64 = x.astype(np.float64)
    lin = x64 @ w.T.astype(np.float64)

    def conv(stride):
        xp = np.pad(x64[0], ((1, 1), (0, 0)))
        y = sum(xp[t:t + T] @ cw[0, t].astype(np.float64) for t in range(3)) + cb
        return y[None, ::stride]

    mu = x64.mean(-1, keepdims=True)
    ln = (x64 - mu) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5) * g_ + be
    sm = np.exp(q - q.max(-1, keepdims=True))
    want = [x64, lin, lin, bf16_round(lin.astype(np.float32)) + b, gelu(x64), conv(1), conv(2), ln, attn(False),
            attn(True), sm / sm.sum(-1, keepdims=True), q.transpose(0, 2, 1, 3).reshape(1, T, H * 64),
            q.astype(np.float64) @ np.swapaxes(k, -1, -2)]

    session = InferenceSession(devices=[CPU() if args.device == "cpu" else Accelerator()])
    t0 = time.perf_counter()
    model = session.load(g)
    print(f"compiled in {time.perf_counter() - t0:.0f} s")
    feed = inputs if args.device == "cpu" else [Buffer.from_numpy(a).to(session.devices[0]) for a in inputs]
    got = [o.to(CPU()).to_numpy() if hasattr(o, "to") else o for o in model.execute(*feed)]
    worst = 0.0
    for name, gv, wv in zip(names, got, want):
        rel = float(np.abs(gv - wv).max() / (np.abs(wv).max() or 1))
        worst = max(worst, rel)
        print(f"{name:32s} max_rel {rel:.2e}  {'OK' if rel < 2e-2 else 'WRONG'}")
    return 0 if worst < 2e-2 else 1


if __name__ == "__main__":
    sys.exit(main())
