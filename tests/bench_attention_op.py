"""Standalone check + micro-benchmark for the mwc_attention Mojo custom op.

Usage: python tests/bench_attention_op.py [--no-bench] [--runs N]

1. Correctness on CPU vs a float64 numpy reference (max abs err < 1e-4):
   encoder (1,6,1500,64) non-causal, cross-attn (2,6,3,64) vs Tk 1500,
   causal decode step with cache (2,6,1,64) vs Tk 37, causal prefill (1,6,4,64).
2. Micro-benchmark: same attention written with MAX built-in ops
   (softmax(q @ k^T * scale) @ v, plus mask via range/where when causal),
   median of N runs after warm-up.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from max.driver import CPU, Buffer
from max.dtype import DType
from max.engine import InferenceSession
from max.graph import DeviceRef, Graph, TensorType, ops

OPS_DIR = Path(__file__).resolve().parent.parent / "ops"
DEV = DeviceRef.CPU()
D = 64


def _types(H: int):
    q_t = TensorType(DType.float32, ["batch", H, "tq", D], DEV)
    k_t = TensorType(DType.float32, ["batch", H, "tk", D], DEV)
    return [q_t, k_t, k_t]


def build_mojo_graph(name: str, H: int, causal: bool) -> Graph:
    with Graph(name, input_types=_types(H), custom_extensions=[OPS_DIR]) as g:
        q, k, v = (x.tensor for x in g.inputs)
        out = ops.custom(
            "mwc_attention",
            DEV,
            [q, k, v],
            [TensorType(DType.float32, q.shape, DEV)],
            parameters={"causal": causal},
        )[0].tensor
        g.output(out)
    return g


def build_builtin_graph(name: str, H: int, causal: bool) -> Graph:
    with Graph(name, input_types=_types(H)) as g:
        q, k, v = (x.tensor for x in g.inputs)
        s = (q @ ops.permute(k, [0, 1, 3, 2])) * (1.0 / np.sqrt(D))
        if causal:
            tq, tk = q.shape[2], k.shape[2]
            tq_s = ops.shape_to_tensor([tq]).reshape([])
            tk_s = ops.shape_to_tensor([tk]).reshape([])
            qi = ops.range(0, tq_s, 1, out_dim=tq, dtype=DType.int64, device=DEV)
            kj = ops.range(0, tk_s, 1, out_dim=tk, dtype=DType.int64, device=DEV)
            # visible iff j <= i + (Tk - Tq)
            lim = ops.reshape(qi + (tk_s - tq_s), [tq, 1])
            vis = ops.reshape(kj, [1, tk]) <= lim
            # KNOWN ISSUE (MAX 26.7, CPU): when only `out` is a graph output,
            # this mask is lost (result == unmasked attention), although the
            # masked scores are right when they are graph outputs themselves.
            # Same with an explicit exp/max/sum softmax. So the causal
            # built-in graph is timed only, not trusted; see sanity print.
            neg = ops.constant(-1e30, DType.float32, DEV)
            s = ops.where(vis, s, neg)
        out = ops.softmax(s) @ v
        g.output(out)
    return g


def ref_attention(q, k, v, causal):
    q64, k64, v64 = (x.astype(np.float64) for x in (q, k, v))
    s = q64 @ np.swapaxes(k64, -1, -2) / np.sqrt(q.shape[-1])
    if causal:
        tq, tk = q.shape[2], k.shape[2]
        vis = np.arange(tk)[None, :] <= np.arange(tq)[:, None] + (tk - tq)
        s = np.where(vis, s, -np.inf)
    s = s - s.max(-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(-1, keepdims=True)
    return p @ v64


def rand_qkv(rng, B, H, Tq, Tk):
    q = rng.standard_normal((B, H, Tq, D), dtype=np.float32)
    k = rng.standard_normal((B, H, Tk, D), dtype=np.float32)
    v = rng.standard_normal((B, H, Tk, D), dtype=np.float32)
    return q, k, v


def run_model(model, q, k, v):
    return model.execute(Buffer.from_numpy(q), Buffer.from_numpy(k), Buffer.from_numpy(v))[0]


def time_model(model, q, k, v, runs: int, warmup: int = 3) -> float:
    bq, bk, bv = Buffer.from_numpy(q), Buffer.from_numpy(k), Buffer.from_numpy(v)
    for _ in range(warmup):
        model.execute(bq, bk, bv)
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model.execute(bq, bk, bv)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1e3


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-bench", action="store_true")
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()

    sess = InferenceSession(devices=[CPU()])
    rng = np.random.default_rng(0)
    models: dict = {}

    def get(kind: str, H: int, causal: bool):
        key = (kind, H, causal)
        if key not in models:
            name = f"{kind}_h{H}_{'causal' if causal else 'full'}"
            build = build_mojo_graph if kind == "mojo" else build_builtin_graph
            t0 = time.perf_counter()
            models[key] = sess.load(build(name, H, causal))
            print(f"  compiled {name} in {time.perf_counter() - t0:.1f} s", flush=True)
        return models[key]

    # ---- correctness ------------------------------------------------------ #
    cases = [
        ("encoder self", 1, 6, 1500, 1500, False),
        ("cross-attn", 2, 6, 3, 1500, False),
        ("causal step+cache", 2, 6, 1, 37, True),
        ("causal prefill", 1, 6, 4, 4, True),
        # extra edge cases for the tile path (Tq > 4, tails, masks)
        ("causal tile+cache", 2, 6, 37, 70, True),
        ("causal square", 1, 6, 448, 448, True),
        ("full odd", 1, 6, 5, 33, False),
    ]
    ok = True
    print("correctness (max abs err vs float64 numpy):")
    for label, B, H, Tq, Tk, causal in cases:
        q, k, v = rand_qkv(rng, B, H, Tq, Tk)
        out = run_model(get("mojo", H, causal), q, k, v).to_numpy()
        err = float(np.abs(out - ref_attention(q, k, v, causal)).max())
        good = err < 1e-4 and out.shape == q.shape
        ok &= good
        print(f"  {label:20s} q{(B, H, Tq, D)} Tk={Tk:5d} causal={causal!s:5s} "
              f"err={err:.2e} {'OK' if good else 'FAIL'}", flush=True)
    # builtin graph sanity (causal mask construction)
    q, k, v = rand_qkv(rng, 2, 6, 3, 9)
    err_b = float(np.abs(run_model(get("builtin", 6, True), q, k, v).to_numpy()
                         - ref_attention(q, k, v, True)).max())
    print(f"  builtin causal graph sanity err={err_b:.2e} (MAX issue: mask dropped; "
          f"causal built-in row below is a timing reference only)")
    if not ok:
        print("CORRECTNESS FAILED")
        return 1

    if args.no_bench:
        return 0

    # ---- benchmark ------------------------------------------------------- #
    bench = [
        ("encoder", 1, 6, 1500, 1500, False),
        ("encoder", 1, 12, 1500, 1500, False),
        ("cross step", 1, 6, 1, 1500, False),
        ("cross step", 8, 6, 1, 1500, False),
        ("self step", 8, 6, 1, 224, True),
    ]
    rows = []
    for label, B, H, Tq, Tk, causal in bench:
        q, k, v = rand_qkv(rng, B, H, Tq, Tk)
        tm = time_model(get("mojo", H, causal), q, k, v, args.runs)
        tb = time_model(get("builtin", H, causal), q, k, v, args.runs)
        rows.append((label, (B, H, Tq, D), Tk, causal, tm, tb))
    print(f"\nbenchmark: median of {args.runs} runs (ms), CPU, fp32")
    print("| case | q shape | Tk | causal | mojo ms | MAX built-ins ms | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for label, shp, Tk, causal, tm, tb in rows:
        print(f"| {label} | {shp} | {Tk} | {causal} | {tm:.3f} | {tb:.3f} | {tb / tm:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
