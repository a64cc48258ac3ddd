# mwc_ln_linear — AN EXPERIMENT THE GRAPHS DO NOT USE (it lost to MAX's kernels; numbers below). Probe it alone with
# `python tests/gpu_probe.py linear` on a GPU; wiring it back is WhisperGraphs.linear(layer_norm(x)) -> this op for
# the decoder's norm + QKV / cross query / MLP-in (GELU) / vocabulary projection (see git history, eighth visit).
#
# A pre-norm block's layer norm and the projection after it in one GPU kernel (MAX custom op), for the decoder's
# few-row calls (a step has one row per sequence):
#
#   out[m, :] = act(LN(x[m, :]) @ W^T + bias)      LN(x) = (x - mean) / sqrt(var + eps) * gamma + beta
#
# Inputs x (M, K) (the residual stream, any float dtype), gamma, beta (K,), W (N, K), bias (N,) (all in W's
# dtype); output (M, N) (the matmul dtype, or float32 for the logits). Parameter `gelu`: act = exact GELU (openai's
# nn.GELU), else identity.
# In MAX ops the same is a layer-norm kernel and a GEMV (the decoder step's 13 layer norms were 43 µs of tiny.en's
# 352 on the H200, the vocabulary GEMV 34 µs at ~1.2 TB/s). Here each of a block's LW warps owns CU adjacent columns
# at a time (at most LBLOCKS blocks; wider outputs, the vocabulary, loop): the warp first issues the loads of its W
# rows into registers (independent of the norm, so they are in flight while it runs), then for each chunk of RC
# rows the block's warps normalize the rows into shared memory — a lane loads its share of a row in one round of
# vector loads and keeps it in registers for the mean, the centred variance and the result (statistics in fp32, the
# result rounded to W's dtype as the unfused graph casts it for its matmul) — and each warp dots its W rows with the
# chunk's rows (fp32 accumulation, one warp reduction per row and column), writes act(dot + bias) and loads its next
# columns. The width K is a compile-time parameter (`width`), so the per-lane arrays are sized exactly.
# Measured on the H200 (tiny.en fp16, eighth visit), replayed step at batch 1: MAX's layer norm + GEMV 0.246 ms; a
# first cut of this op (one column per warp, the row read with one dependent load per iteration) 0.308 ms; this
# version, wired with the fused-QKV attention op, 0.367 ms against 0.236 without it. Nsight Compute, one eager step:
# this op 12.1 µs per call for QKV and the cross query (MAX: layer norm 3.6 + GEMV ~3.5), 23 µs with the GELU for
# MLP-in (48 blocks for 1536 columns), 79 µs for the vocabulary (MAX's GEMV 34). Few blocks (CU columns per warp)
# and RC-row unrolled dots look like the cost; one column per warp and a one-row specialization are the next cut.
# GPU only; K a multiple of 8 up to LK_MAX (every Whisper width), 16-byte aligned rows.

import extensibility
from extensibility import InputTensor, OutputTensor
from max.gpu.host import DeviceContext
from std.math import erf, sqrt
from std.memory import Pointer, stack_allocation
from std.sys import size_of
from max.gpu import thread_idx, block_idx, grid_dim, barrier
from max.gpu.primitives import warp
from _cublas.cublas import (
    Algorithm,
    ComputeType,
    _convert_to_cublas_datatype,
    _convert_to_cublas_transpose,
    check_cublas_error,
    cublasGemmStridedBatchedEx,
)
from linalg.matmul.vendor.blas import _get_global_handle

comptime F32 = DType.float32
comptime LW = 8  # warps per block
comptime LVW = 8  # W elements per vector load (16 bytes in fp16)
comptime XV = 4  # x elements per vector load (16 bytes in fp32)
comptime LK_MAX = 1280  # the widest Whisper (large-v3, turbo)
comptime LSMEM = 40 * 1024  # shared memory for a chunk's normalized rows (16 rows of 1280 in fp16)
comptime LBLOCKS = 1024  # at most this many blocks (an H200: 132 SMs x 8 blocks of 256 threads); more columns loop
comptime INV_SQRT2: Float32 = 0.7071067811865476
comptime GEMV_ROWS = 32  # more rows than this (a prompt's call): layer norm, a cuBLAS GEMM, bias + activation
comptime VoidIn = Pointer[NoneType, ImmutAnyOrigin]
comptime VoidOut = Pointer[NoneType, MutAnyOrigin]


@always_inline
def _norm_row[
    xdtype: DType, wdtype: DType, K: Int
](
    xp: Pointer[Scalar[xdtype], MutAnyOrigin],
    gp: Pointer[Scalar[wdtype], MutAnyOrigin],
    bp: Pointer[Scalar[wdtype], MutAnyOrigin],
    row: Int,
    lane: Int,
    eps: Float32,
) -> Array[SIMD[F32, XV], (K // XV + 31) // 32]:
    """The layer norm of the K-wide row at ``row``, one warp: lane l holds vectors l, l + 32, ... (XV wide) — loaded
    in one round of vector loads and kept in registers for the mean, the centred variance and the result."""
    comptime NXV = (K // XV + 31) // 32
    comptime XA = XV * size_of[xdtype]()
    var xr = Array[SIMD[F32, XV], NXV](fill=0)
    comptime for c in range(NXV):
        var vi = lane + c * 32
        if vi < K // XV:
            xr[c] = xp.unsafe_load[width=XV, alignment=XA](row + vi * XV).cast[F32]()
    var s: Float32 = 0
    comptime for c in range(NXV):
        s += xr[c].reduce_add()  # vectors past the row are 0
    var mean = warp.sum(s) / Float32(K)
    var v: Float32 = 0
    comptime for c in range(NXV):
        if lane + c * 32 < K // XV:
            var d = xr[c] - mean
            v += (d * d).reduce_add()
    var rstd = Float32(1) / sqrt(warp.sum(v) / Float32(K) + eps)
    comptime for c in range(NXV):
        var vi = lane + c * 32
        if vi < K // XV:
            xr[c] = (xr[c] - mean) * rstd * gp.unsafe_load[width=XV](vi * XV).cast[F32]() + bp.unsafe_load[
                width=XV
            ](vi * XV).cast[F32]()
    return xr^


def _ln_rows_gpu_kernel[
    xdtype: DType, wdtype: DType, K: Int
](
    xp: Pointer[Scalar[xdtype], MutAnyOrigin],
    gp: Pointer[Scalar[wdtype], MutAnyOrigin],
    bp: Pointer[Scalar[wdtype], MutAnyOrigin],
    hp: Pointer[Scalar[wdtype], MutAnyOrigin],
    M: Int32,
    xs0: Int64,
    eps: Float32,
):
    """Many rows' path, first kernel: warp w of block k normalizes row k * LW + w into h (M, K) in W's dtype."""
    comptime NXV = (K // XV + 31) // 32
    var tid = Int(thread_idx.x)
    var w = tid // 32
    var lane = tid - w * 32
    var r = Int(block_idx.x) * LW + w
    if r >= Int(M):
        return
    var y = _norm_row[xdtype, wdtype, K](xp, gp, bp, r * Int(xs0), lane, eps)
    comptime for c in range(NXV):
        var vi = lane + c * 32
        if vi < K // XV:
            hp.unsafe_store(r * K + vi * XV, y[c].cast[wdtype]())


def _bias_act_gpu_kernel[
    wdtype: DType, odtype: DType, gelu: Bool
](
    cp: Pointer[Float32, MutAnyOrigin],
    biasp: Pointer[Scalar[wdtype], MutAnyOrigin],
    op: Pointer[Scalar[odtype], MutAnyOrigin],
    M: Int32,
    N: Int32,
    os0: Int64,
):
    """Many rows' path, last kernel: out[r, c] = act(C[r, c] + bias[c]) for the (M, N) fp32 product C."""
    var e = Int(block_idx.x) * 256 + Int(thread_idx.x)
    if e >= Int(M) * Int(N):
        return
    var r = e // Int(N)
    var c = e - r * Int(N)
    var y = cp[unsafe_offset=e] + biasp[unsafe_offset=c].cast[F32]()
    comptime if gelu:
        y = Float32(0.5) * y * (Float32(1) + erf(y * INV_SQRT2))
    op[unsafe_offset=r * Int(os0) + c] = y.cast[odtype]()


@always_inline
def _w_rows[
    wdtype: DType, K: Int, CU: Int
](wp: Pointer[Scalar[wdtype], MutAnyOrigin], c0: Int, n: Int, lane: Int) -> Array[
    SIMD[wdtype, LVW], CU * ((K // LVW + 31) // 32)
]:
    """The lane's share of W rows c0 .. c0 + CU - 1 (those < n): vectors lane, lane + 32, ... of each, every load
    issued before any is used. (Returned by value: a closure writing the caller's array kept it in local memory.)"""
    comptime NWV = (K // LVW + 31) // 32
    var wv = Array[SIMD[wdtype, LVW], CU * NWV](fill=0)
    comptime for u in range(CU):
        if c0 + u < n:
            comptime for c in range(NWV):
                var vi = lane + c * 32
                if vi < K // LVW:
                    wv[u * NWV + c] = wp.unsafe_load[width=LVW, alignment=LVW * size_of[wdtype]()](
                        (c0 + u) * K + vi * LVW
                    )
    return wv^


def _ln_linear_gpu_kernel[
    xdtype: DType, wdtype: DType, odtype: DType, gelu: Bool, K: Int
](
    xp: Pointer[Scalar[xdtype], MutAnyOrigin],
    gp: Pointer[Scalar[wdtype], MutAnyOrigin],
    bp: Pointer[Scalar[wdtype], MutAnyOrigin],
    wp: Pointer[Scalar[wdtype], MutAnyOrigin],
    biasp: Pointer[Scalar[wdtype], MutAnyOrigin],
    op: Pointer[Scalar[odtype], MutAnyOrigin],
    M: Int32,
    N: Int32,
    xs0: Int64,
    os0: Int64,
    eps: Float32,
):
    """Block k, warp w: columns (k * LW + w) * CU + u (u < CU), then the same a grid's width further, of every row,
    RC rows at a time."""
    comptime NWV = (K // LVW + 31) // 32  # W vectors per lane and column
    comptime NXV = (K // XV + 31) // 32  # x vectors per lane and row
    comptime CU = max(1, 8 // NWV)  # columns a warp loads at once (tiny 4, small 2, large 1: ~3 KB in flight)
    comptime RC = min(16, LSMEM // (K * size_of[wdtype]()))  # rows per chunk
    comptime WA = LVW * size_of[wdtype]()
    var xn = stack_allocation[RC * K, Scalar[wdtype], alignment=WA, address_space=AddressSpace.SHARED]()
    var tid = Int(thread_idx.x)
    var w = tid // 32
    var lane = tid - w * 32
    var n = Int(N)
    var col0 = (Int(block_idx.x) * LW + w) * CU
    var step = Int(grid_dim.x) * LW * CU
    var wv = Array[SIMD[wdtype, LVW], CU * NWV](fill=0)

    if col0 < n:
        wv = _w_rows[wdtype, K, CU](wp, col0, n, lane)  # in flight while the rows are normalized
    var r0 = 0
    while r0 < Int(M):
        var mr = min(RC, Int(M) - r0)
        var r = w
        while r < mr:  # warp w normalizes rows w, w + LW, ... of the chunk
            var y = _norm_row[xdtype, wdtype, K](xp, gp, bp, (r0 + r) * Int(xs0), lane, eps)
            comptime for c in range(NXV):
                var vi = lane + c * 32
                if vi < K // XV:
                    xn.unsafe_store(r * K + vi * XV, y[c].cast[wdtype]())
            r += LW
        barrier()
        var c0 = col0
        while c0 < n:
            comptime for u in range(CU):
                var col = c0 + u
                if col < n:
                    var acc = SIMD[F32, RC](0)  # the lane's partial dot with each row of the chunk
                    comptime for c in range(NWV):
                        var vi = lane + c * 32
                        if vi < K // LVW:
                            var wf = wv[u * NWV + c].cast[F32]()
                            comptime for rr in range(RC):
                                if rr < mr:
                                    var xv = xn.unsafe_load[width=LVW, alignment=WA](rr * K + vi * LVW).cast[F32]()
                                    acc[rr] += (wf * xv).reduce_add()
                    var bias = biasp[unsafe_offset=col].cast[F32]()
                    comptime for rr in range(RC):
                        if rr < mr:
                            var y = warp.sum(acc[rr]) + bias
                            comptime if gelu:
                                y = Float32(0.5) * y * (Float32(1) + erf(y * INV_SQRT2))
                            if lane == 0:
                                op[unsafe_offset=(r0 + rr) * Int(os0) + col] = y.cast[odtype]()
            c0 += step
            if c0 < n:
                wv = _w_rows[wdtype, K, CU](wp, c0, n, lane)
        barrier()  # the chunk's rows stay until every warp has read them
        r0 += RC
        if r0 < Int(M) and col0 < n:
            wv = _w_rows[wdtype, K, CU](wp, col0, n, lane)


@extensibility.register("mwc_ln_linear")
struct MwcLnLinear:
    @staticmethod
    def execute[
        xdtype: DType,
        wdtype: DType,
        odtype: DType,
        //,
        gelu: Bool,
        width: Int,
        target: StaticString,
    ](
        out_t: OutputTensor[dtype=odtype, rank=2, ...],
        x: InputTensor[dtype=xdtype, rank=2, ...],
        gamma: InputTensor[dtype=wdtype, rank=1, ...],
        beta: InputTensor[dtype=wdtype, rank=1, ...],
        w: InputTensor[dtype=wdtype, rank=2, ...],
        bias: InputTensor[dtype=wdtype, rank=1, ...],
        ctx: DeviceContext,
    ) raises:
        var M = x.dim_size(0)
        var K = x.dim_size(1)
        var N = w.dim_size(0)
        if (
            w.dim_size(1) != K
            or gamma.dim_size(0) != K
            or beta.dim_size(0) != K
            or bias.dim_size(0) != N
            or out_t.dim_size(0) != M
            or out_t.dim_size(1) != N
        ):
            raise Error("mwc_ln_linear: shape mismatch between x, gamma, beta, W, bias and the output")
        if K != width or K % LVW != 0 or K > LK_MAX:
            raise Error("mwc_ln_linear: the width must be the op's `width`, a multiple of 8 and at most 1280")
        if (
            x.stride_length(1) != 1
            or out_t.stride_length(1) != 1
            or w.stride_length(1) != 1
            or w.stride_length(0) != K
            or gamma.stride_length(0) != 1
            or beta.stride_length(0) != 1
            or bias.stride_length(0) != 1
        ):
            raise Error("mwc_ln_linear: x's and the output's rows, W, gamma, beta and bias must be contiguous")
        comptime if target == "cpu":
            raise Error("mwc_ln_linear: GPU only (the CPU graph keeps MAX's layer norm and matmul)")
        else:
            if (
                Int(w.unsafe_ptr()) % (LVW * size_of[wdtype]()) != 0
                or Int(x.unsafe_ptr()) % (XV * size_of[xdtype]()) != 0
                or x.stride_length(0) % XV != 0
                or Int(gamma.unsafe_ptr()) % (XV * size_of[wdtype]()) != 0
                or Int(beta.unsafe_ptr()) % (XV * size_of[wdtype]()) != 0
            ):
                raise Error("mwc_ln_linear: x, gamma, beta and W must be aligned for vector loads")
            if M * N == 0:
                return
            var xq = rebind[Pointer[Scalar[xdtype], MutAnyOrigin]](x.unsafe_ptr())
            var gq = rebind[Pointer[Scalar[wdtype], MutAnyOrigin]](gamma.unsafe_ptr())
            var bq = rebind[Pointer[Scalar[wdtype], MutAnyOrigin]](beta.unsafe_ptr())
            var wq = rebind[Pointer[Scalar[wdtype], MutAnyOrigin]](w.unsafe_ptr())
            var biq = rebind[Pointer[Scalar[wdtype], MutAnyOrigin]](bias.unsafe_ptr())
            var oq = rebind[Pointer[Scalar[odtype], MutAnyOrigin]](out_t.unsafe_ptr())
            if M > GEMV_ROWS:  # a prompt's call: the tensor cores (cuBLAS) for the product
                var h = ctx.enqueue_create_buffer[wdtype](M * K)
                var c = ctx.enqueue_create_buffer[DType.float32](M * N)
                var hq = rebind[Pointer[Scalar[wdtype], MutAnyOrigin]](h.unsafe_ptr())
                var cq = rebind[Pointer[Float32, MutAnyOrigin]](c.unsafe_ptr())
                ctx.enqueue_function[_ln_rows_gpu_kernel[xdtype, wdtype, width]](
                    xq, gq, bq, hq, Int32(M), Int64(x.stride_length(0)), Float32(1e-5),
                    grid_dim=(M + LW - 1) // LW, block_dim=LW * 32,
                )
                # row-major C (M x N) = H W^T is column-major C^T (N x M) = op(W) H^T, W's (N, K) rows read as the
                # transpose of a K x N column-major matrix
                var one = Float32(1)
                var zero = Float32(0)
                var t_w = _convert_to_cublas_datatype[wdtype]()
                check_cublas_error(cublasGemmStridedBatchedEx(
                    _get_global_handle[wdtype](ctx)._get_cublas(), _convert_to_cublas_transpose(True),
                    _convert_to_cublas_transpose(False), Int64(N), Int64(M), Int64(K),
                    rebind[VoidIn](Pointer(to=one).unsafe_bitcast[NoneType]()),
                    rebind[VoidIn](wq.unsafe_bitcast[NoneType]()), t_w, Int64(K), Int64(0),
                    rebind[VoidIn](hq.unsafe_bitcast[NoneType]()), t_w, Int64(K), Int64(0),
                    rebind[VoidIn](Pointer(to=zero).unsafe_bitcast[NoneType]()),
                    rebind[VoidOut](cq.unsafe_bitcast[NoneType]()), _convert_to_cublas_datatype[DType.float32](),
                    Int64(N), Int64(0), Int64(1), ComputeType.COMPUTE_32F, Algorithm.DEFAULT,
                ))
                ctx.enqueue_function[_bias_act_gpu_kernel[wdtype, odtype, gelu]](
                    cq, biq, oq, Int32(M), Int32(N), Int64(out_t.stride_length(0)),
                    grid_dim=(M * N + 255) // 256, block_dim=256,
                )
                _ = h^
                _ = c^
                return
            comptime CU = max(1, 8 // ((width // LVW + 31) // 32))
            ctx.enqueue_function[_ln_linear_gpu_kernel[xdtype, wdtype, odtype, gelu, width]](
                xq, gq, bq, wq, biq, oq,
                Int32(M), Int32(N),
                Int64(x.stride_length(0)), Int64(out_t.stride_length(0)),
                Float32(1e-5),
                grid_dim=min((N + LW * CU - 1) // (LW * CU), LBLOCKS), block_dim=LW * 32,
            )
