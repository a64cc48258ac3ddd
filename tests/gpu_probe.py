#!/usr/bin/env python3
"""GPU probes used on the H200 visits (not tests: they need an NVIDIA GPU and print numbers).

    python tests/gpu_probe.py mel [OPS_DIR ...]      mwc_log_mel per ops folder: max abs error vs float64, ms per 30 s
    python tests/gpu_probe.py ops [bf16|fp16 ...]    mwc_attention (decode / causal / cross shapes) and the tied vocab
                                                     matmul in a dtype vs float64 on the same rounded inputs
    python tests/gpu_probe.py cross [H:B ...] [S=..]  a decoder step's cross-attention (mwc_layer_attention, 1500 keys, fp16)
                                                     with the keys split over S blocks vs one block per row: error vs
                                                     float64, µs per call (a chain of calls in one graph)
    python tests/gpu_probe.py linear [M ...]          mwc_ln_linear (layer norm + projection; tests/linear_op/, an
                                                     experiment the graphs do not use) vs MAX's layer norm + matmul:
                                                     error vs float64, µs per call, for the decoder's projections
                                                     of tiny and small, M rows (default 1 16 227)
    python tests/gpu_probe.py pick                    the GPU's fused greedy pick (ops/pick.mojo) vs WhisperGraphs.pick in MAX
                                                     ops, on random logits and rules: tokens, log-probs, no-speech
    python tests/gpu_probe.py mem ARTIFACT [BATCH ...]
                                                     nvidia-smi memory: the device context, after load, after each
                                                     stage of a first window (mel, encoder, prompt step, captured
                                                     steps), a transcription and W30 at each batch
                                                     (MWC_NO_CAPTURE=1: without device-graph capture)
    python tests/gpu_probe.py taps MODEL PRECISION   the decoder's residual stream after every sub-block vs float64
                                                     (bisects a precision plan; bf16 on the GPU needs MWC_GPU_BF16=1)
    python tests/gpu_probe.py bf16                   the bf16 decoder's suspects in one graph vs numpy
    python tests/gpu_probe.py steps ARTIFACT [BATCH ...]
                                                     ms per decoder step: captured replay, eager on device inputs,
                                                     greedy_step as the runtime runs it
    python tests/gpu_probe.py kernels ARTIFACT       one decoder step's kernels under Nsight Compute (eager: the
                                                     run of 5 steps minus the run of 1, over 4), by time
    python tests/gpu_probe.py enc PIECE BATCH [SIZE]  one encoder piece alone (stem, attn-mojo, attn-max, attn-blas, mlp, mm3d,
                                                     mm2d, core-4d, core-3d-f32, core-3d-f16), ms per call
taps and enc also run on the CPU (with the CPU plan), to check the probe itself.

Measured 2026-11-30 (H200, MAX 26.7): mel new kernel 0.095 ms vs 0.099 (80 mels); bf16 attention ≤ 7.7e-3 abs, vocab
matmul 2.8e-3 rel; memory tiny.en 782 → 2194 MiB (capture) / 917 (no capture); small 1553 → 2197 → 2383 (W30 b1).
Fourth visit: small b16 attention block 29.7 ms (Mojo) / 28.9 (max), MLP block 0.53, stem 4.96; step replay small
0.94 ms, tiny.en 0.33; bf16 few-row casts / projections / KV concat read zeros (taps, bf16) — README Benchmarks.
Sixth visit (kernels, tiny.en fp16): 102 kernels, 501 µs per step, cross-attention 4 × 27 µs.
Seventh visit: 73 kernels, 352 µs per step (cross-attention split 4 × 14.9 + 4 × 4.7 µs, pick 10.8 + 7.9 µs); cross
6:1 19.1 → 12.1 µs (S = 1 → 12), 20:16 84.6 → 60.7 µs (S = 3); pick vs MAX ops 64/64 tokens equal, log-probs 7.2e-7.
Eighth visit: mwc_ln_linear (tests/linear_op) lost to MAX's layer norm + GEMV — tiny.en step replay 0.367 vs 0.236 ms,
its kernels (ncu) 12.1 (QKV) / 23 (MLP-in, GELU) / 79 µs (vocabulary); `linear` (eager, launches included), tiny's
QKV op vs MAX: 1 row 14.7 vs 19.2 µs, 16 rows 21.2 vs 58.6, 227 rows 225 vs 65 (hence its cuBLAS path past 32
rows; that path was built after the probe); pick (warp-per-row merge) 64/64 tokens equal.
Ninth/tenth visits (mem with stages, small fp16): context 527 MiB, load 1553 (decoder weights copied per graph, 3x),
encoder +326, prompt +62, the first capture maps the rest of the pool budget (128 GB when the pool is unset).
Eleventh visit (model.mef alone for greedy, extras.mef on first use): small load 1009 MiB; the capture ends at 1687
under the 1 GiB pool (2103 at 1 %); loading extras.mef adds 382–464 MiB.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# the probes' speech; MWC_PROBE_AUDIO: a wav of it where neither PyAV nor soundfile is installed (the GPU machine)
JFK = Path(os.environ.get("MWC_PROBE_AUDIO", ROOT / "examples" / "jfk.flac"))


def _session(allow_cpu: bool = False):
    """(device, DeviceRef, InferenceSession) on the GPU; with ``allow_cpu`` the CPU's when MAX sees no accelerator
    (a CPU run checks a probe itself)."""
    from max.driver import CPU, Accelerator, accelerator_count
    from max.engine import InferenceSession
    from max.graph import DeviceRef

    if allow_cpu and accelerator_count() == 0:
        return CPU(), DeviceRef.CPU(), InferenceSession(devices=[CPU()])
    gpu = Accelerator()
    return gpu, DeviceRef.GPU(), InferenceSession(devices=[gpu])


def _median_s(gpu, model, args: list, runs: int = 12) -> float:
    """Median seconds of ``model.execute(*args)`` to the device's sync, over ``runs`` calls less the first two."""
    t = []
    for _ in range(runs):
        s0 = time.perf_counter()
        model.execute(*args)
        gpu.synchronize()
        t.append(time.perf_counter() - s0)
    return statistics.median(t[2:])


def _greedy_prompt(m, batch: int = 1):
    """``batch`` rows of the English no-timestamps prompt, its pick rules and the suppressed ids (end-of-text and
    no-timestamps too, as W30 decodes): what the probes feed ``greedy_step``."""
    from compiler.runtime.decoding import pick_rules, sot_sequence

    tk = m.tokenizer
    tokens = np.array([sot_sequence(tk, "en" if tk.languages else None, "transcribe", True)] * batch, dtype=np.int64)
    return tokens, pick_rules([], tokens, 0, tk), tuple(sorted(set(m.suppress) | {tk.eot, tk.no_timestamps}))


def _load(artifact: str):
    from compiler.runtime.model import Whisper

    return Whisper(artifact)


def mel(dirs: list[str]) -> None:
    from max.driver import Buffer
    from max.dtype import DType
    from max.graph import Graph, TensorType, ops

    from compiler.reference import log_mel_spectrogram
    from compiler.runtime.audio import load_audio
    from compiler.runtime.mel import mel_filters

    gpu, dev, sess = _session()
    jfk = load_audio(JFK)
    signals = {"jfk": np.pad(jfk, (0, 480000 - len(jfk))).astype(np.float32),
               "noise": (0.1 * np.random.default_rng(0).standard_normal(480000)).astype(np.float32)}
    for d in dirs or [str(ROOT / "ops")]:
        t0 = time.perf_counter()
        a_t, f_t = TensorType(DType.float32, ["samples"], dev), TensorType(DType.float32, ["mels", 201], dev)
        with Graph("mel_probe", input_types=[a_t, f_t], custom_extensions=[Path(d).resolve()]) as g:
            a, f = (x.tensor for x in g.inputs)
            out_t = TensorType(DType.float32, [f.shape[0], a.shape[0] // 160], dev)
            g.output(ops.custom("mwc_log_mel", dev, [a, f], [out_t])[0].tensor)
        m = sess.load(g)
        print(f"{d}: compiled in {time.perf_counter() - t0:.1f} s", flush=True)
        for n_mels in (80, 128):
            fb = Buffer.from_numpy(mel_filters(n_mels).astype(np.float32)).to(gpu)
            for name, x in signals.items():
                xb = Buffer.from_numpy(x).to(gpu)
                err = np.abs(m.execute(xb, fb)[0].to_numpy()[:, :3000] - log_mel_spectrogram(x, n_mels)[:, :3000]).max()
                lat = []
                for _ in range(203):
                    s = time.perf_counter()
                    m.execute(xb, fb)
                    gpu.synchronize()
                    lat.append(time.perf_counter() - s)
                print(f"  n_mels={n_mels} {name}: max abs err {err:.2e} | execute+sync median "
                      f"{statistics.median(lat[3:]) * 1e3:.4f} ms, min {min(lat[3:]) * 1e3:.4f} ms", flush=True)


def _round(x: np.ndarray, dt) -> np.ndarray:
    from max.dtype import DType

    from compiler.reference import round_to

    return round_to(x, "float16" if dt == DType.float16 else "bfloat16")


def op_checks(dtypes: list[str]) -> None:
    from max.driver import Buffer
    from max.dtype import DType
    from max.graph import Graph, TensorType, ops

    from bench_attention_op import ref_attention  # tests/: the float64 attention the CPU op check uses

    gpu, dev, sess = _session()
    rng = np.random.default_rng(0)
    put = lambda x: Buffer.from_numpy(x.astype(np.float32)).to(gpu)  # noqa: E731
    for name in dtypes or ["bf16", "fp16"]:
        dt = {"bf16": DType.bfloat16, "fp16": DType.float16}[name]
        for causal, tq, tk in ((True, 1, 7), (False, 1, 1500), (True, 6, 6), (False, 6, 1500), (True, 1, 40)):
            f32 = lambda n: TensorType(DType.float32, ["b", 8, n, 64], dev)  # noqa: E731
            with Graph("att_probe", input_types=[f32("tq"), f32("tk"), f32("tk")],
                       custom_extensions=[ROOT / "ops"]) as g:
                q, k, v = (ops.cast(x.tensor, dt) for x in g.inputs)
                o = ops.custom("mwc_attention", dev, [q, k, v], [TensorType(dt, q.shape, dev)],
                               parameters={"causal": causal})[0].tensor
                g.output(ops.cast(o, DType.float32))
            q, k, v = (_round(rng.standard_normal((1, 8, t, 64)), dt) for t in (tq, tk, tk))
            got = sess.load(g).execute(put(q), put(k), put(v))[0].to_numpy()
            print(f"{name} mwc_attention causal={causal} tq={tq} tk={tk}: max abs err "
                  f"{np.abs(got - ref_attention(q, k, v, causal)).max():.2e}", flush=True)
        with Graph("vocab_probe", input_types=[TensorType(DType.float32, [1, 6, 512], dev),
                                               TensorType(DType.float32, [51865, 512], dev)]) as g:
            x, e = (ops.cast(t.tensor, dt) for t in g.inputs)
            g.output(ops.cast(x @ e.T, DType.float32))
        x, e = _round(rng.standard_normal((1, 6, 512)), dt), _round(rng.standard_normal((51865, 512)) * 0.05, dt)
        got, want = sess.load(g).execute(put(x), put(e))[0].to_numpy(), x @ e.T
        print(f"{name} vocab matmul (1,6,512)@(512,51865): max rel err "
              f"{np.abs(got - want).max() / np.abs(want).max():.2e}", flush=True)


def cross(args: list[str], chain: int = 64) -> None:
    """mwc_layer_attention at T = 1 against 1500 keys (fp16) for heads:batch pairs (default tiny 6:1, 6:16, small
    12:1, 12:16, large 20:1, 20:16) and the scratch sizes S=... (default 12 — ceil(1500 / CROSS_SPLIT_KEYS), what
    the step graph gives the op — and 1, one block per row: the kernel before the split): error vs float64 and µs
    per call, timed as a chain of ``chain`` calls in one graph (each call's output the next one's query) minus one
    call, so a call's time is its kernels', not the host's. ``cross 6:1 6:16 S=1,2,4,12``."""
    from max.driver import Buffer
    from max.dtype import DType
    from max.graph import Graph, TensorType, ops

    from bench_attention_op import ref_attention
    from compiler.graph import CROSS_PART, CROSS_SPLIT_KEYS

    gpu, dev, sess = _session(allow_cpu=True)
    rng = np.random.default_rng(0)
    tk, layers = 1500, 2
    shapes = [a for a in args if not a.startswith("S=")] or ["6:1", "6:16", "12:1", "12:16", "20:1", "20:16"]
    splits = [int(x) for a in args if a.startswith("S=") for x in a[2:].split(",")] or [-(-tk // CROSS_SPLIT_KEYS), 1]
    put = lambda x: Buffer.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(gpu)  # noqa: E731
    graphs: dict = {}

    def graph(s: int, n: int):  # batch and heads symbolic: one graph per (S, chain length)
        if (s, n) not in graphs:
            with Graph(f"cross_{s}_{n}", input_types=[
                    TensorType(DType.float32, ["b", "h", 1, 64], dev),
                    TensorType(DType.float32, [layers, "b", "h", tk, 64], dev),
                    TensorType(DType.float32, [layers, "b", "h", tk, 64], dev)],
                    custom_extensions=[ROOT / "ops"]) as g:
                x, k, v = (ops.cast(t.tensor, DType.float16) for t in g.inputs)
                for _ in range(n):
                    x = ops.custom("mwc_layer_attention", dev, [x, k, v], [
                        TensorType(DType.float16, x.shape, dev),
                        TensorType(DType.float32, [x.shape[0], x.shape[1], s, CROSS_PART], dev)],
                        parameters={"layer": 1, "bthd": False})[0].tensor
                g.output(ops.cast(x, DType.float32))
            graphs[s, n] = sess.load(g)
        return graphs[s, n]

    print("| heads | batch | S | max abs err | µs per call |")
    print("|---|---|---|---|---|")
    for hb in shapes:
        h, b = map(int, hb.split(":"))
        q = _round(rng.standard_normal((b, h, 1, 64)), DType.float16)
        kv = [_round(rng.standard_normal((layers, b, h, tk, 64)), DType.float16) for _ in range(2)]
        want = ref_attention(q, kv[0][1], kv[1][1], False)
        args = [put(q), put(kv[0]), put(kv[1])]
        for s in splits:
            err = np.abs(graph(s, 1).execute(*args)[0].to_numpy() - want).max()
            per = (_median_s(gpu, graph(s, chain), args) - _median_s(gpu, graph(s, 1), args)) / (chain - 1)
            print(f"| {h} | {b} | {s} | {err:.2e} | {per * 1e6:.1f} |", flush=True)


def linear_check(args: list[str], chain: int = 8) -> None:
    """mwc_ln_linear against MAX's layer norm + matmul (+ bias, GELU; the unfused graph's ops, fp16), both against
    float64 numpy on the same fp16 weights, and µs per call: ``chain`` calls (each on its own copy of the input) in
    one graph minus one call, over chain - 1. Shapes: tiny's QKV and MLP (GELU), the vocabulary projection of tiny
    and small (fp32 logits, no bias); M rows each (a step's batch; 227: a prompt's call)."""
    from math import erf

    from max.driver import Buffer
    from max.dtype import DType
    from max.graph import Graph, TensorType, ops

    gpu, dev, sess = _session()
    rows = [int(a) for a in args] or [1, 16, 227]
    cases = [("tiny qkv", 384, 1152, False, DType.float16), ("tiny mlp.0 gelu", 384, 1536, True, DType.float16),
             ("tiny vocab", 384, 51864, False, DType.float32), ("small vocab", 768, 51865, False, DType.float32)]
    rng = np.random.default_rng(0)
    put = lambda x: Buffer.from_numpy(np.ascontiguousarray(x)).to(gpu)  # noqa: E731

    def build(fused: bool, c: int, k: int, n: int, gelu: bool, odt):  # c calls, each on its own copy of x
        types = [TensorType(DType.float16, [k], dev), TensorType(DType.float16, [k], dev),
                 TensorType(DType.float16, [n, k], dev), TensorType(DType.float16, [n], dev),
                 *[TensorType(DType.float32, ["m", k], dev)] * c]
        with Graph(f"lin_{fused}_{c}_{k}_{n}", input_types=types,
                   custom_extensions=[ROOT / "tests" / "linear_op"]) as g:
            gv, bv, wv, biv, *xs = (t.tensor for t in g.inputs)
            outs = []
            for xv in xs:
                if fused:
                    out_t = [TensorType(odt, [xv.shape[0], n], dev)]
                    y = ops.custom("mwc_ln_linear", dev, [xv, gv, bv, wv, biv], out_t,
                                   parameters={"gelu": gelu, "width": k})[0].tensor
                else:
                    hv = ops.cast(ops.layer_norm(xv, ops.cast(gv, DType.float32), ops.cast(bv, DType.float32), 1e-5),
                                  DType.float16)
                    y = hv @ wv.T
                    y = ops.gelu(y + biv) if gelu else (y + biv if odt == DType.float16 else y)
                    y = ops.cast(y, odt)
                outs.append(y)
            g.output(*outs)
        return sess.load(g)

    print("| projection | M | fused err | MAX err | fused µs | MAX µs |")
    print("|---|---|---|---|---|---|")
    for name, k, n, gelu, odt in cases:
        g16 = (1 + 0.1 * rng.standard_normal(k)).astype(np.float16)
        b16 = (0.1 * rng.standard_normal(k)).astype(np.float16)
        w16 = (rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float16)
        bias16 = (0.1 * rng.standard_normal(n) if odt == DType.float16 else np.zeros(n)).astype(np.float16)
        models = {f: (build(f, 1, k, n, gelu, odt), build(f, chain, k, n, gelu, odt)) for f in (True, False)}
        for m in rows:
            x = (rng.standard_normal((m, k)) * 2 + 0.5).astype(np.float32)
            mu, var = x.mean(1, keepdims=True), x.var(1, keepdims=True)
            h = ((x - mu) / np.sqrt(var + 1e-5) * g16 + b16).astype(np.float16).astype(np.float64)
            want = h @ w16.astype(np.float64).T + bias16
            if gelu:
                want = 0.5 * want * (1 + np.vectorize(erf)(want / np.sqrt(2)))
            inputs = [put(g16), put(b16), put(w16), put(bias16)] + [put(x) for _ in range(chain)]

            res = {}
            for f, (one, many) in models.items():
                out = one.execute(*inputs[:5])[0].to_numpy().astype(np.float64)
                res[f] = (float(np.abs(out - want).max()),
                          (_median_s(gpu, many, inputs[:4 + chain], 10) - _median_s(gpu, one, inputs[:5], 10))
                          / (chain - 1) * 1e6)
            print(f"| {name} | {m} | {res[True][0]:.2e} | {res[False][0]:.2e} | {res[True][1]:.1f} | "
                  f"{res[False][1]:.1f} |", flush=True)


def pick_check(rows: int = 64) -> None:
    """mwc_pick (two kernels: PICK_BLOCKS blocks per row, then one warp per row) against WhisperGraphs.pick written
    with MAX ops (the CPU's graph), both on this device, on random logits (rows, 3, 51864) and random rules: every interval shape the runtime makes
    (suppressed tokens, the timestamp rules' ranges, none), timestamps on and off, ties in the logits."""
    from max.driver import Buffer
    from max.dtype import DType
    from max.graph import Graph, TensorType

    from compiler.graph import WhisperGraphs
    from compiler.precision import plan_for
    from compiler.runtime.decoding import OPEN_END, PICK_RULES
    from helpers import SIZES

    gpu, dev, sess = _session(allow_cpu=True)
    dims = SIZES["tiny.en"]
    v, tb, eot = dims.n_vocab, 50364, 50256
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((rows, 3, v)).astype(np.float32) * 3
    logits[::7, 2, 100:110] = 9.0  # ties: the first index wins
    bias = np.where(rng.random(v) < 0.01, -np.inf, 0).astype(np.float32)
    bias[bias == -np.inf] = -1e30
    rules = np.zeros((rows, PICK_RULES), np.int64)
    for r in range(rows):
        lo = rng.integers(0, v, 4)
        kinds = rng.integers(0, 4, 4)
        for k in range(4):
            a, b = [(0, 0), (tb, OPEN_END), (0, eot), (int(lo[k]), int(lo[k]) + int(rng.integers(1, 2000)))][kinds[k]]
            rules[r, 2 * k], rules[r, 2 * k + 1] = a, b
        rules[r, 8] = r % 2
        if r % 5 == 0:  # boost the timestamps so that their sum beats the text now and then
            logits[r, 2, tb:] += 2.5
    rules[:, 9], rules[:, 10], rules[:, 11], rules[:, 12], rules[:, 13] = 0, 50361, tb, 1, eot
    outs = []
    for fused in (True, False):
        wg = WhisperGraphs(dims, plan_for("fp16", "gpu"), dev, "mojo")
        with Graph(f"pick_{fused}", input_types=[TensorType(DType.float32, ["b", 3, v], dev),
                                                  TensorType(DType.float32, [v], dev),
                                                  TensorType(DType.int64, ["b", PICK_RULES], dev)],
                   custom_extensions=[ROOT / "ops"]) as g:
            wg.graph, wg.fused_pick = g, fused
            g.output(*wg.pick(*(x.tensor for x in g.inputs)))
        m = sess.load(g)
        outs.append([o.to_numpy() for o in m.execute(*(Buffer.from_numpy(x).to(gpu) for x in (logits, bias, rules)))])
    (tf, lf, nf), (tm, lm, nm) = outs
    print(f"pick: {rows} rows; tokens equal {int((tf == tm).sum())}/{rows}; log-prob max abs diff "
          f"{np.abs(lf - lm).max():.2e}; no-speech max abs diff {np.abs(nf - nm).max():.2e}; "
          f"timestamps picked {int((tm >= tb).sum())}", flush=True)


def memory(artifact: str, batches: list[str]) -> None:
    def used() -> int:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True).stdout
        return int(out.split()[0])

    base = used()
    peak, stop = [base], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], used())
            time.sleep(0.02)

    threading.Thread(target=sample, daemon=True).start()
    rows: dict = {}

    def mark(k: str) -> None:
        time.sleep(0.1)
        rows[k] = {"now_mib": used() - base, "peak_mib": peak[0] - base}

    from compiler import bench
    from compiler.runtime.audio import load_audio
    from compiler.runtime import model as runtime
    from compiler.runtime.decoding import step_rules
    from max.driver import Accelerator

    # the device context alone, made under the pool the runtime would choose (read when the first device is made)
    man = runtime.read_manifest(Path(artifact))
    if not runtime._POOL_FROM_USER:
        os.environ.update(runtime.pool_setting(man["dims"], man["precision"]["kv_cache"]))
    Accelerator()
    mark("context")
    t0 = time.perf_counter()
    m = _load(artifact)
    rows["load_s"] = round(time.perf_counter() - t0, 3)
    mark("load")
    a = load_audio(JFK)
    # the first transcription's stages one at a time: which one grows the process
    mel = m.log_mel(bench.window_30s(a), padding=0)
    mark("mel")
    audio = m.encode(mel[None])
    mark("encoder")
    tokens, rules, suppress = _greedy_prompt(m)
    state = m.greedy_step(tokens, audio, None, rules, suppress)[3]
    mark("prompt step")
    m.greedy_steps(state, audio, step_rules(rules), suppress, 2)
    mark("steps (capture)")
    del audio, state
    text = m.transcribe(a, temperature=0.0)["text"]
    mark("transcribe jfk")
    for b in batches:
        bench.w30(m, a, batch=int(b), n_tokens=100)
        r = bench.w30(m, a, batch=int(b), n_tokens=100)
        mark(f"w30 b{b}")
        rows[f"w30 b{b}"].update({k: round(r[k], 3) for k in ("encoder_ms", "prefill_ms", "step_ms")})
    rows["graphs loaded"] = sorted(m.models.keys())  # a greedy run: model.mef's alone
    m.decode(tokens, m.encode(mel[None]), None)  # the whole-logits decoder graph: extras.mef loads
    mark("extras.mef (decoder)")
    stop.set()
    env = {k: v for k, v in os.environ.items() if k.startswith(("MODULAR_DEVICE", "MWC_"))}
    print(json.dumps({"artifact": artifact, "env": env, "text": text[:60], **rows}))


def steps(artifact: str, batches: list[str]) -> None:
    """Where a decoder step's time goes: ``n`` steps back to back with one sync at the end — the captured graph
    replayed (device time), the step graph executed eagerly on device-resident inputs, and ``greedy_step`` as the
    runtime calls it (host copies of the inputs and of the picked ids included)."""
    from compiler import bench
    from compiler.runtime.audio import load_audio
    from compiler.runtime.decoding import step_rules

    m = _load(artifact)
    a = load_audio(JFK)
    n = 100
    for b in map(int, batches or ["1"]):
        bench.w30(m, a, batch=b, n_tokens=8)  # captures the step graph for this batch
        mel = m.log_mel(bench.window_30s(a), padding=0)
        audio = m.encode(np.repeat(mel[None], b, axis=0))
        tokens, rules, suppress = _greedy_prompt(m, b)
        _, _, _, state, feed = m.greedy_step(tokens, audio, None, rules, suppress)
        row = {"batch": b}
        t0 = time.perf_counter()
        for _ in range(n):
            _, _, _, state, feed = m.greedy_step(feed, audio, state, rules, suppress)
        row["greedy_step_ms"] = (time.perf_counter() - t0) / n * 1e3
        state = m.greedy_step(tokens, audio, None, rules, suppress)[3]
        t0 = time.perf_counter()
        for _ in range(n // m.steps_per_sync):
            m.greedy_steps(state, audio, step_rules(rules), suppress, m.steps_per_sync)
        row[f"greedy_steps_{m.steps_per_sync}_ms"] = (time.perf_counter() - t0) / (n - n % m.steps_per_sync) * 1e3
        ent = m._captured.get(b)
        if ent is not None:
            inputs = ent[0]
            m.device.synchronize()
            t0 = time.perf_counter()
            for _ in range(n):
                m.models["step"].replay(b, *inputs)
            m.device.synchronize()
            row["replay_ms"] = (time.perf_counter() - t0) / n * 1e3
            args = list(inputs)
            m.device.synchronize()
            t0 = time.perf_counter()
            for _ in range(n):
                m.models["step"].execute(*args)
            m.device.synchronize()
            row["eager_device_inputs_ms"] = (time.perf_counter() - t0) / n * 1e3
        print(json.dumps({"artifact": artifact, **{k: round(v, 4) if isinstance(v, float) else v
                                                    for k, v in row.items()}}))


def decoder_taps(model: str, precision: str) -> None:
    """Bisect a precision plan on the GPU: the encoder and decoder graphs built with the residual stream after every
    decoder sub-block as extra outputs (``WhisperGraphs.taps``), run on JFK (prompt + 2 tokens, then one cached
    step) and compared tap by tap with the float64 reference (``NumpyWhisper.decode(taps=...)``)."""
    import tempfile

    from max.driver import Buffer
    from max.graph import Module
    from max.graph.weights import SafetensorWeights

    from compiler.artifact import resource_dir
    from compiler.graph import PICK_RULES, WhisperGraphs
    from compiler.parity import reference_cross_k, speech_clip
    from compiler.precision import plan_for
    from compiler.readers import load_checkpoint
    from compiler.reference import NumpyWhisper, log_mel_spectrogram
    from compiler.runtime.audio import N_FRAMES, N_SAMPLES
    from compiler.runtime.model import _empty, to_numpy
    from compiler.weights import graph_weights, save_weights

    gpu, dev, session = _session(allow_cpu=True)  # on the CPU with the CPU plan
    ck = load_checkpoint(model)
    d, plan, ops_dir = ck.dims, plan_for(precision, "cpu" if gpu.is_host else "gpu"), resource_dir("ops")
    b = WhisperGraphs(d, plan, dev, "mojo")
    module = Module()
    b.build_encoder(module, ops_dir)
    b.taps = []
    b.build_decoder(module, ops_dir)
    n_taps = len(b.taps)
    t0 = time.perf_counter()
    compiled = session.compile(module, custom_extensions=[ops_dir])
    print(f"{model} {precision}: compiled in {time.perf_counter() - t0:.0f} s; plan {plan.to_dict()}", flush=True)
    put = lambda x: Buffer.from_numpy(np.ascontiguousarray(x)).to(gpu)  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "w.safetensors"
        save_weights(graph_weights(ck, plan), path, plan)
        registry = {name: w.data().data for name, w in SafetensorWeights([path]).items()}
        models = session.init_all(compiled, weights_registry=registry)
        mel = log_mel_spectrogram(speech_clip(), d.n_mels, N_SAMPLES)[:, :N_FRAMES][None].astype(np.float32)
        xa, cross_k, cross_v = models["encoder"].execute(put(mel))
        ref = NumpyWhisper(ck)
        want = ref.encode(mel)
        rows = [("encoder", to_numpy(xa), want["xa"]),
                ("cross_k", to_numpy(cross_k), reference_cross_k(want, d.n_text_head))]
        tk = ck.tokens
        prompt = [tk.sot] + ([tk.languages["en"], tk.transcribe] if tk.languages else []) + [tk.timestamp_begin]
        empty = _empty((d.n_text_layer, 1, d.n_text_head, 0, d.n_text_state // d.n_text_head), plan.kv_cache, gpu)
        bias, rules = put(np.zeros(d.n_vocab, np.float32)), put(np.zeros((1, PICK_RULES), np.int64))
        names = ["embed"] + [f"{i}.{part}" for i in range(d.n_text_layer) for part in ("self", "cross", "mlp")]
        cache, cache_ref = (empty, empty), None
        for call, tokens in (("prompt", prompt + [440, 1029]), ("step", [13])):
            tok = np.array([tokens], dtype=np.int64)
            out = models["decoder"].execute(put(tok), *cache, cross_k, cross_v, bias, rules)
            ref_taps: list = []
            logits_ref, cache_ref = ref.decode(tok, want, cache_ref, taps=ref_taps)
            cache = (out[1], out[2])
            rows += [(f"{call} {n}", to_numpy(g), w) for n, g, w in zip(names, out[-n_taps:], ref_taps)]
            rows.append((f"{call} logits", to_numpy(out[0]), logits_ref))
    for name, got, want in rows:
        got, want = got.astype(np.float64).ravel(), want.astype(np.float64).ravel()
        cos = float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want) + 1e-30))
        rel = float(np.abs(got - want).max() / (np.abs(want).max() + 1e-30))
        flag = "  <-- " if cos < 0.999 else ""
        print(f"  {precision} {name:14s} cos {cos:.6f}  max_rel {rel:.2e}  |ref| {np.abs(want).max():.3g}{flag}",
              flush=True)


def bf16_pieces() -> None:
    """The decoder's suspects in bf16 on one graph: the tied vocabulary matmul against a bf16 *weight* (M = 6 and
    M = 1, as the prompt and a step), a projection with bias against a bf16 weight, and the KV cache's concat onto
    an empty bf16 cache + stack — each vs numpy on the same bf16-rounded values."""
    import tempfile

    from max.driver import Buffer
    from max.dtype import DType
    from max.graph import Graph, TensorType, Weight, ops
    from max.graph.weights import SafetensorWeights

    from compiler.precision import plan_for
    from compiler.reference import round_to
    from compiler.runtime.model import _empty, to_numpy
    from compiler.weights import save_weights

    gpu, dev, sess = _session()
    rng = np.random.default_rng(0)
    bf = lambda x: round_to(x, "bfloat16")  # noqa: E731
    emb, w, bias = bf(rng.standard_normal((51865, 512)) * 0.05), bf(rng.standard_normal((1536, 512)) * 0.05), \
        bf(rng.standard_normal(1536) * 0.1)
    x, kin = bf(rng.standard_normal((1, 6, 512))), bf(rng.standard_normal((1, 8, 6, 64)))
    f32 = DType.float32
    types = [TensorType(f32, [1, 6, 512], dev), TensorType(f32, [1, 8, 6, 64], dev),
             TensorType(DType.bfloat16, [1, 8, "past", 64], dev)]
    with Graph("bf16_pieces", input_types=types) as g:
        xv, kv, empty = (v.tensor for v in g.inputs)
        e = g.add_weight(Weight("emb", DType.bfloat16, (51865, 512), dev))
        wt = g.add_weight(Weight("w", DType.bfloat16, (1536, 512), dev))
        bt = g.add_weight(Weight("b", DType.bfloat16, (1536,), dev))
        xb = ops.cast(xv, DType.bfloat16)
        last = ops.slice_tensor(xb, [slice(None), slice(5, 6), slice(None)])
        cache = ops.stack([ops.concat([empty, ops.cast(kv, DType.bfloat16)], axis=2)])
        g.output(ops.cast(xb @ e.T, f32), ops.cast(last @ e.T, f32), ops.cast(xb @ wt.T + bt, f32),
                 ops.cast(cache, f32), ops.cast(xb, f32))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "w.safetensors"
        save_weights({"emb": emb.astype(np.float32), "w": w.astype(np.float32), "b": bias.astype(np.float32)},
                     path, plan_for("bf16", "cpu"))
        registry = {n: v.data().data for n, v in SafetensorWeights([path]).items()}
        t0 = time.perf_counter()
        m = sess.load(g, weights_registry=registry)
        print(f"bf16 pieces: compiled in {time.perf_counter() - t0:.0f} s", flush=True)
        put = lambda a: Buffer.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(gpu)  # noqa: E731
        outs = m.execute(put(x), put(kin), _empty((1, 8, 0, 64), "bfloat16", gpu))
        want = [x @ emb.T, x[:, 5:6] @ emb.T, x @ w.T + bias, kin[None], x]
        for name, got, ref in zip(["vocab M=6 (weight.T)", "vocab M=1 (weight.T)", "qkv linear + bias",
                                   "concat(empty) + stack", "cast round trip"], outs, want):
            got = to_numpy(got).astype(np.float64)
            rel = np.abs(got - ref).max() / np.abs(ref).max()
            print(f"  bf16 {name:24s} max_rel {rel:.2e}  zeros {np.mean(got == 0):.3f}", flush=True)


def encoder_parts(piece: str, batch: int, size: str = "small") -> None:
    """One piece of the encoder alone at ``batch`` windows (random fp16 weights, the GPU plan): ms per call.
    stem = both convolutions + GELU; attn-mojo / attn-max = ln + QKV + attention + out (Mojo op / matmul+softmax);
    mlp = ln + MLP; mm3d / mm2d = the QKV matmul as (B, 1500, d) or (B * 1500, d) @ (d, 3d)."""
    from max.driver import Buffer
    from max.dtype import DType
    from max.graph import Graph, TensorType, ops

    from compiler.artifact import resource_dir
    from compiler.checkpoint import ModelDimensions
    from compiler.graph import WhisperGraphs
    from compiler.precision import plan_for

    gpu, dev, sess = _session(allow_cpu=True)
    n, heads = {"small": (768, 12), "large-v3": (1280, 20)}[size]
    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=n, n_audio_head=heads, n_audio_layer=1,
                           n_vocab=51865, n_text_ctx=448, n_text_state=n, n_text_head=heads, n_text_layer=1)
    impl = {"attn-max": "max", "attn-blas": "blas"}.get(piece, "mojo")
    b = WhisperGraphs(dims, plan_for("fp16", "gpu"), dev, impl)
    shapes: dict = {}
    add = b.w

    def w(name, shape, dtype=None):
        shapes[name] = shape
        return add(name, shape, dtype)

    b.w = w
    frames = 3000 if piece == "stem" else 1500
    width = 80 if piece == "stem" else n
    with Graph(f"enc_{piece}", input_types=[TensorType(DType.float16, [batch, frames, width], dev)],
               custom_extensions=[resource_dir("ops")]) as g:
        b.graph = g
        x = g.inputs[0].tensor
        if piece == "stem":
            y = b.conv3(b.conv3(x, "encoder.conv1", 80, n, 1), "encoder.conv2", n, n, 2)
        elif piece.startswith("attn"):
            y = b.self_attention(b.layer_norm(x, "b.attn_ln", n), "b", n, heads)[0]
        elif piece.startswith("core"):  # attention alone on q = k = v = heads(x)
            q = b.heads(x, heads)
            if piece == "core-4d":  # the graph's "max" formulation
                y = b.attention(q, q, q, impl="max")
            else:  # (B*H, T, 64) batched matmuls, K transposed once
                bh = batch * heads
                q3 = ops.reshape(q, [bh, frames, n // heads])
                kt = ops.permute(q3, [0, 2, 1])
                sdt = DType.float32 if piece == "core-3d-f32" else DType.float16
                sc = ops.cast((q3 @ kt) * (1.0 / 8.0), sdt)
                y = ops.cast(ops.softmax(sc), DType.float16) @ q3
            y = ops.reshape(y, [batch, -1, n]) if piece != "core-4d" else b.merge(y)
        elif piece == "mlp":
            y = b.mlp(b.layer_norm(x, "b.mlp_ln", n), "b", n)
        elif piece == "mm3d":
            y = x @ ops.cast(b.w("m", (n, 3 * n)), DType.float16)
        else:
            y = ops.reshape(x, [batch * frames, n]) @ ops.cast(b.w("m", (n, 3 * n)), DType.float16)
        g.output(ops.cast(y, DType.float16))
    rng = np.random.default_rng(0)
    registry = {k: (rng.standard_normal(v) * 0.02).astype(np.float16) for k, v in shapes.items()}
    t0 = time.perf_counter()
    m = sess.load(g, weights_registry=registry)
    compile_s = time.perf_counter() - t0
    xb = Buffer.from_numpy((rng.standard_normal((batch, frames, width)) * 0.5).astype(np.float16)).to(gpu)
    for _ in range(3):
        m.execute(xb)
    gpu.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        m.execute(xb)
    gpu.synchronize()
    ms = (time.perf_counter() - t0) / 10 * 1e3
    print(json.dumps({"piece": piece, "size": size, "batch": batch, "ms": round(ms, 3),
                      "compile_s": round(compile_s, 1)}), flush=True)



def kernels(artifact: str, n_steps: int | None = None) -> None:
    """Per-step kernel times: without ``n_steps``, runs itself twice under ncu (1 and 5 eager steps after the prompt)
    and prints the difference over 4 by kernel; with it, decodes JFK's window for that many steps (the run ncu
    profiles)."""
    if n_steps is not None:
        from compiler.bench import window_30s
        from compiler.runtime.audio import load_audio
        from compiler.runtime.decoding import graph_picks, sot_sequence

        m = _load(artifact)
        tk = m.tokenizer
        audio = m.encode(m.log_mel(window_30s(load_audio(JFK)), padding=0)[None])
        prompt = np.array([sot_sequence(tk, "en" if tk.languages else None, "transcribe", False)], dtype=np.int64)
        list(graph_picks(m, tk, [], prompt, audio, 0, tuple(m.suppress), n_steps + 1))  # the prompt, then n steps
        return
    import collections
    import csv
    import glob
    import io

    ncu = (glob.glob("/opt/nvidia/nsight-compute/*/ncu") + ["ncu"])[0]
    per_name = []
    for n in (1, 5):
        r = subprocess.run([ncu, "--clock-control", "none", "--metrics", "gpu__time_duration.sum", "--csv",
                            sys.executable, __file__, "kernels", artifact, str(n)], capture_output=True, text=True,
                           env={**os.environ, "MWC_NO_CAPTURE": "1"}, check=True)
        rows = [row for row in csv.reader(io.StringIO(r.stdout)) if len(row) > 10]
        ki, vi = rows[0].index("Kernel Name"), rows[0].index("Metric Value")
        agg = collections.defaultdict(lambda: [0, 0.0])
        for row in rows[1:]:
            agg[row[ki][:90]][0] += 1
            agg[row[ki][:90]][1] += float(row[vi].replace(",", "")) / 1e3
        per_name.append(agg)
    one, five = per_name
    step = {k: ((v[0] - one[k][0]) / 4, (v[1] - one[k][1]) / 4) for k, v in five.items() if v[0] > one[k][0]}
    print(f"per step: {sum(c for c, _ in step.values()):.0f} kernels, {sum(t for _, t in step.values()):.1f} us")
    for k, (c, t) in sorted(step.items(), key=lambda x: -x[1][1])[:30]:
        print(f"{t:8.1f} us {c:5.1f}x  {k}")


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("mel", "ops", "cross", "linear", "pick", "mem", "steps", "taps", "bf16",
                                                "enc", "kernels"):
        raise SystemExit(__doc__)
    cmd, rest = sys.argv[1], sys.argv[2:]
    if cmd == "mel":
        mel(rest)
    elif cmd == "ops":
        op_checks(rest)
    elif cmd == "cross":
        cross(rest)
    elif cmd == "linear":
        linear_check(rest)
    elif cmd == "pick":
        pick_check()
    elif cmd == "enc":
        encoder_parts(rest[0], int(rest[1]), *rest[2:])
    elif cmd == "bf16":
        bf16_pieces()
    elif cmd == "kernels":
        kernels(rest[0], int(rest[1]) if len(rest) > 1 else None)
    elif cmd == "taps":
        if len(rest) != 2:
            raise SystemExit("usage: gpu_probe.py taps MODEL fp16|bf16|fp32")
        decoder_taps(*rest)
    else:
        if not rest:
            raise SystemExit(f"usage: gpu_probe.py {cmd} ARTIFACT [BATCH ...]")
        (memory if cmd == "mem" else steps)(rest[0], rest[1:])


if __name__ == "__main__":
    main()
