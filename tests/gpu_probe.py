#!/usr/bin/env python3
"""GPU probes used on the H200 visits (not tests: they need an NVIDIA GPU and print numbers).

    python tests/gpu_probe.py mel [OPS_DIR ...]      mwc_log_mel per ops folder: max abs error vs float64, ms per 30 s
    python tests/gpu_probe.py ops [bf16|fp16 ...]    mwc_attention (decode / causal / cross shapes) and the tied vocab
                                                     matmul in a dtype vs float64 on the same rounded inputs
    python tests/gpu_probe.py mem ARTIFACT [BATCH ...]
                                                     nvidia-smi memory after load, the first transcription and W30 at
                                                     each batch (MWC_NO_CAPTURE=1: without device-graph capture)

Measured 2026-11-30 (H200, MAX 26.7): mel new kernel 0.095 ms vs 0.099 (80 mels); bf16 attention ≤ 7.7e-3 abs, vocab
matmul 2.8e-3 rel; memory tiny.en 782 → 2194 MiB (capture) / 917 (no capture); small 1553 → 2197 → 2383 (W30 b1).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
JFK = ROOT / "examples" / "jfk.flac"


def _session():
    from max.driver import Accelerator
    from max.engine import InferenceSession
    from max.graph import DeviceRef

    gpu = Accelerator()
    return gpu, DeviceRef.GPU(), InferenceSession(devices=[gpu])


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
    from compiler.runtime.model import Whisper

    t0 = time.perf_counter()
    m = Whisper(artifact)
    rows["load_s"] = round(time.perf_counter() - t0, 3)
    mark("load")
    a = load_audio(JFK)
    text = m.transcribe(a, temperature=0.0)["text"]
    mark("transcribe jfk")
    for b in batches:
        bench.w30(m, a, batch=int(b), n_tokens=100)
        mark(f"w30 b{b}")
    stop.set()
    print(json.dumps({"artifact": artifact, "text": text[:60], **rows}))


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("mel", "ops", "mem"):
        raise SystemExit(__doc__)
    cmd, rest = sys.argv[1], sys.argv[2:]
    if cmd == "mel":
        mel(rest)
    elif cmd == "ops":
        op_checks(rest)
    else:
        if not rest:
            raise SystemExit("usage: gpu_probe.py mem ARTIFACT [BATCH ...]")
        memory(rest[0], rest[1:])


if __name__ == "__main__":
    main()
