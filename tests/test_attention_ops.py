"""The decoder's attention ops against float64 numpy: ``mwc_cached_attention_qkv`` (a prompt of 3 tokens then two
steps into the in-place KV cache, q, k and v read from the fused projection) and ``mwc_layer_attention`` (one layer of
the stacked cross K/V), with q and the output as (B, H, T, D) and as (B, T, H, D) (``bthd``: the step graph's
layout, no transposes around the ops). On a GPU the same graphs also take the step-only kernels: the KV write folded
into the decode kernel and the cross-attention's keys split over blocks (a partial last block: 300 keys over blocks
of 96)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from bench_attention_op import ref_attention  # tests/: the float64 attention the CPU op check uses

OPS = Path(__file__).resolve().parent.parent / "ops"
L, B, H, CTX, D, TK = 2, 2, 3, 16, 64, 300


def _swap(x):  # (B, T, H, D) <-> (B, H, T, D)
    return np.ascontiguousarray(x.transpose(0, 2, 1, 3))


@pytest.fixture(scope="module")
def device():
    from max.driver import CPU, Accelerator, Buffer, accelerator_count
    from max.engine import InferenceSession
    from max.graph import DeviceRef

    gpu = accelerator_count() > 0
    hw = Accelerator() if gpu else CPU()
    return (hw, DeviceRef.GPU() if gpu else DeviceRef.CPU(), InferenceSession(devices=[hw]),
            lambda a: Buffer.from_numpy(np.ascontiguousarray(a)).to(hw), gpu)


def test_cached_attention(device):
    """``mwc_cached_attention_qkv``, the step graph's self-attention: q, k and v read in place from the fused
    projection viewed as (B, T, 3, H, D), the new keys and values written into layer 1 of the cache."""
    from max.dtype import DType
    from max.graph import BufferType, Graph, TensorType, ops

    hw, dev, sess, put, _ = device
    cb = BufferType(DType.float32, [L, B, H, CTX, D], dev)
    with Graph("cached", input_types=[TensorType(DType.float32, [B, "t", 3, H, D], dev),
                                      TensorType(DType.int64, [1], dev), cb, cb], custom_extensions=[OPS]) as g:
        qkv, pos = (x.tensor for x in g.inputs[:2])
        kc, vc = (x.buffer for x in g.inputs[2:])
        g.output(ops.inplace_custom("mwc_cached_attention_qkv", dev, [kc, vc, qkv, pos],
                                    out_types=[TensorType(DType.float32, [B, qkv.shape[1], H, D], dev)],
                                    parameters={"layer": 1})[0].tensor)
    m = sess.load(g)
    rng = np.random.default_rng(1)
    kc, vc = (put(np.zeros((L, B, H, CTX, D), np.float32)) for _ in range(2))
    ks, vs, p0 = [], [], 0
    for t in (3, 1, 1):  # the prompt, then two steps
        q, k, v = (rng.standard_normal((B, H, t, D)).astype(np.float32) for _ in range(3))
        ks.append(k), vs.append(v)
        qkv = np.stack([_swap(x) for x in (q, k, v)], axis=2)  # (B, t, 3, H, D): the (B, t, 3 * H * D) projection
        out = _swap(m.execute(put(qkv), put(np.array([p0], np.int64)), kc, vc)[0].to_numpy())
        want = ref_attention(q, np.concatenate(ks, 2), np.concatenate(vs, 2), causal=True)
        assert np.abs(out - want).max() < 1e-4, (t, p0)
        p0 += t
    cache = kc.to_numpy()[1, :, :, :p0]  # the op wrote every token's key at its position, in layer 1 only
    assert np.allclose(cache, np.concatenate(ks, 2)) and not kc.to_numpy()[0].any()


@pytest.mark.parametrize("bthd", [False, True])
def test_layer_attention_layouts(device, bthd):
    from max.dtype import DType
    from max.graph import Graph, TensorType, ops

    from compiler.graph import CROSS_PART

    hw, dev, sess, put, gpu = device
    t4 = TensorType(DType.float32, [B, "t", H, D] if bthd else [B, H, "t", D], dev)
    c5 = TensorType(DType.float32, [L, B, H, TK, D], dev)
    with Graph(f"layer_{bthd}", input_types=[t4, c5, c5], custom_extensions=[OPS]) as g:
        q, k, v = (x.tensor for x in g.inputs)
        g.output(ops.custom("mwc_layer_attention", dev, [q, k, v], [
            TensorType(DType.float32, q.shape, dev),
            TensorType(DType.float32, [B, H, 4 if gpu else 1, CROSS_PART], dev)],
            parameters={"layer": 1, "bthd": bthd})[0].tensor)
    m = sess.load(g)
    rng = np.random.default_rng(2)
    k, v = (rng.standard_normal((L, B, H, TK, D)).astype(np.float32) for _ in range(2))
    for t in (1, 4):
        q = rng.standard_normal((B, H, t, D)).astype(np.float32)
        out = m.execute(put(_swap(q) if bthd else q), put(k), put(v))[0].to_numpy()
        out = _swap(out) if bthd else out
        assert np.abs(out - ref_attention(q, k[1], v[1], False)).max() < 1e-4, t
