# mwc_attention: fused scaled-dot-product attention for Whisper (MAX custom op).
#
#   out[b, h, i, :] = softmax_j(q[b, h, i, :] . k[b, h, j, :] / sqrt(D)) @ v[b, h, :, :]
#
# Inputs q (B, H, Tq, D), k (B, H, Tk, D), v (B, H, Tk, D); output (B, H, Tq, D).
# Any float dtype in, fp32 accumulation inside, output in the input dtype.
# Compile-time parameter `causal`: key j is visible to query i iff
# j <= i + (Tk - Tq) (decoder self-attention with a KV cache, Tk = past + Tq).
#
# CPU design (flash-attention style, one pass, online softmax):
#   * work item = (b, h, block of BQ = NQV * W queries); run on the op's CPU DeviceContext
#     (enqueue_cpu_range + synchronize, what sync_parallelize does).
#   * Q block is transposed + pre-scaled into QT[D][BQ] so that the score tile is
#     produced transposed, ST[key][query]: one broadcast of k[j, d] times QT[d, :]
#     vectors -> all softmax statistics are SIMD vectors over queries (no
#     horizontal reductions on the hot path).
#   * O[BQ][D] accumulates P^T V with broadcast(p) * v-row FMAs, 4 query rows
#     x D/W column vectors in registers.
#   * Blocks with few valid queries (decoder steps, cross-attention with tiny Tq)
#     use a row-wise path (dot products over D + online softmax per key chunk)
#     instead of padding a whole query tile.
# GPU design (`attention_gpu`, straightforward and correct, not tuned):
#   * one thread block of GQ warps per (b, h, tile of GQ query rows); one warp
#     per query row; K/V tiles of 32 keys staged in shared memory as fp32.
#   * lane j scores key j of the tile (dot over D from shared q row), warp
#     max/sum reductions for the online softmax, each lane owns D/32 output
#     columns and accumulates P V with the tile's probabilities broadcast by
#     warp shuffles. fp32 accumulation, any float dtype, D <= GPU_MAX_D.
#   * one query row (a decoder step, Tq = 1) with D = 64: `_attn_decode64_gpu_kernel`, the keys split over the
#     block's warps; given a scratch (mwc_layer_attention's second output), the decoder's cross-attention also
#     splits its 1500 keys over S blocks per (b, h) (flash-decoding) and `_attn_combine64_gpu_kernel` merges them.

import extensibility
from extensibility import InputTensor, OutputTensor
from extensibility.managed_tensor_slice import _MutableInputTensor as MutableInputTensor
from max.gpu.host import DeviceContext
from std.math import exp, sqrt
from std.memory import Pointer, stack_allocation
from std.sys import simd_width_of, size_of
from std.utils.index import IndexList
from std.utils.numerics import FlushDenormals
from max.gpu import thread_idx, block_idx, barrier, lane_id
from max.gpu.primitives import warp

comptime F32 = DType.float32
comptime W = simd_width_of[F32]()  # fp32 lanes per vector (16 on AVX-512)
comptime NQV = 2  # query vectors per tile -> BQ = NQV * W queries
comptime BQ = NQV * W
comptime KB = 128  # keys per score tile
comptime NEG_BIG: Float32 = -1.0e30  # finite "-inf" for running max init
comptime ROWWISE_MAX = 4  # tiles with <= this many valid queries go row-wise
comptime SERIAL_MAX_MACS = 1 << 21  # below this many q.k MACs run inline
comptime FBuf = Pointer[Float32, MutAnyOrigin]


@always_inline
def _ld[
    dtype: DType, w: Int
](p: Pointer[Scalar[dtype], MutAnyOrigin], off: Int) -> SIMD[F32, w]:
    return p.unsafe_load[width=w](off).cast[F32]()


@always_inline
def _ld1[
    dtype: DType
](p: Pointer[Scalar[dtype], MutAnyOrigin], off: Int) -> Float32:
    return p[unsafe_offset=off].cast[F32]()


# --------------------------------------------------------------------------- #
# Tile path: BQ queries x KB keys per step.
# --------------------------------------------------------------------------- #


@always_inline
def _qk_micro[
    dtype: DType, D: Int, NK: Int
](
    kp: Pointer[Scalar[dtype], MutAnyOrigin],
    sk: Int,
    j: Int,  # absolute key index of the first key of this group
    qt: FBuf,  # QT[D][BQ]
    st: FBuf,  # ST[KB][BQ], row jj = j - j0
    jj: Int,
):
    """ST[jj + n, :] = sum_d k[j + n, d] * QT[d, :] for n < NK."""
    var acc = Array[SIMD[F32, W], NK * NQV](fill=0)
    for d in range(D):
        var qv = Array[SIMD[F32, W], NQV](fill=0)
        comptime for v in range(NQV):
            qv[v] = qt.unsafe_load[width=W](d * BQ + v * W)
        comptime for n in range(NK):
            var kb = SIMD[F32, W](_ld1[dtype](kp, (j + n) * sk + d))
            comptime for v in range(NQV):
                acc[n * NQV + v] = kb.fma(qv[v], acc[n * NQV + v])
    comptime for n in range(NK):
        comptime for v in range(NQV):
            st.unsafe_store((jj + n) * BQ + v * W, acc[n * NQV + v])


@always_inline
def _pv_micro[
    dtype: DType, D: Int, NR: Int
](
    vp: Pointer[Scalar[dtype], MutAnyOrigin],
    sv: Int,
    j0: Int,
    kb: Int,
    st: FBuf,  # P^T tile [KB][BQ]
    ob: FBuf,  # O[BQ][D]
    alpha: FBuf,  # [BQ]
    i: Int,  # first local query row
):
    """O[i + r, :] = O[i + r, :] * alpha[i + r] + sum_jj P[jj, i + r] * V[j0 + jj, :].
    """
    comptime NC = D // W
    var acc = Array[SIMD[F32, W], NR * NC](fill=0)
    comptime for r in range(NR):
        var a = SIMD[F32, W](alpha[unsafe_offset=i + r])
        comptime for c in range(NC):
            acc[r * NC + c] = ob.unsafe_load[width=W]((i + r) * D + c * W) * a
    for jj in range(kb):
        var vrow = Array[SIMD[F32, W], NC](fill=0)
        comptime for c in range(NC):
            vrow[c] = _ld[dtype, W](vp, (j0 + jj) * sv + c * W)
        comptime for r in range(NR):
            var p = SIMD[F32, W](st[unsafe_offset=jj * BQ + i + r])
            comptime for c in range(NC):
                acc[r * NC + c] = p.fma(vrow[c], acc[r * NC + c])
    comptime for r in range(NR):
        comptime for c in range(NC):
            ob.unsafe_store((i + r) * D + c * W, acc[r * NC + c])


def _attn_tile[
    dtype: DType, D: Int, causal: Bool
](
    qp: Pointer[Scalar[dtype], MutAnyOrigin],
    kp: Pointer[Scalar[dtype], MutAnyOrigin],
    vp: Pointer[Scalar[dtype], MutAnyOrigin],
    op: Pointer[Scalar[dtype], MutAnyOrigin],
    sq: Int,
    sk: Int,
    sv: Int,
    so: Int,
    q0: Int,
    nq: Int,
    Tk: Int,
    off: Int,
    scale: Float32,
):
    """Queries q0 .. q0+nq-1 (nq <= BQ) of one (b, h); pointers at (b, h, 0, 0).
    """
    comptime assert D % W == 0, "tile path needs D to be a multiple of W"
    var qt = stack_allocation[D * BQ, Float32]().unsafe_origin_cast[
        MutAnyOrigin
    ]()
    var st = stack_allocation[KB * BQ, Float32]().unsafe_origin_cast[
        MutAnyOrigin
    ]()
    var ob = stack_allocation[BQ * D, Float32]().unsafe_origin_cast[
        MutAnyOrigin
    ]()
    var mv = stack_allocation[BQ, Float32]().unsafe_origin_cast[MutAnyOrigin]()
    var lv = stack_allocation[BQ, Float32]().unsafe_origin_cast[MutAnyOrigin]()
    var al = stack_allocation[BQ, Float32]().unsafe_origin_cast[MutAnyOrigin]()

    # QT[d][i] = q[q0 + i, d] * scale (zero padding for i >= nq).
    for i in range(BQ):
        if i < nq:
            for d in range(D):
                qt[unsafe_offset=d * BQ + i] = (
                    _ld1[dtype](qp, (q0 + i) * sq + d) * scale
                )
        else:
            for d in range(D):
                qt[unsafe_offset=d * BQ + i] = 0
    for x in range(BQ * D // W):
        ob.unsafe_store(x * W, SIMD[F32, W](0))
    comptime for v in range(NQV):
        mv.unsafe_store(v * W, SIMD[F32, W](NEG_BIG))
        lv.unsafe_store(v * W, SIMD[F32, W](0))

    var kend = Tk
    comptime if causal:
        kend = min(Tk, q0 + nq + off)  # last query's last visible key + 1
    var j0 = 0
    while j0 < kend:
        var kb = min(KB, kend - j0)
        # Scores, transposed.
        var jj = 0
        while jj + 8 <= kb:
            _qk_micro[dtype, D, 8](kp, sk, j0 + jj, qt, st, jj)
            jj += 8
        while jj < kb:
            _qk_micro[dtype, D, 1](kp, sk, j0 + jj, qt, st, jj)
            jj += 1
        comptime if causal:
            # Mask needed iff the last key exceeds the first query's limit.
            if j0 + kb - 1 > q0 + off:
                for r in range(kb):
                    for i in range(BQ):
                        if j0 + r > q0 + i + off:
                            st[unsafe_offset=r * BQ + i] = -Float32.MAX
        # Online softmax, vectorised over queries.
        comptime for v in range(NQV):
            var mx = SIMD[F32, W](NEG_BIG)
            for r in range(kb):
                mx = max(mx, st.unsafe_load[width=W](r * BQ + v * W))
            var m_old = mv.unsafe_load[width=W](v * W)
            var m_new = max(m_old, mx)
            var a = exp(m_old - m_new)
            var s = SIMD[F32, W](0)
            for r in range(kb):
                var p = exp(st.unsafe_load[width=W](r * BQ + v * W) - m_new)
                st.unsafe_store(r * BQ + v * W, p)
                s += p
            mv.unsafe_store(v * W, m_new)
            lv.unsafe_store(v * W, lv.unsafe_load[width=W](v * W) * a + s)
            al.unsafe_store(v * W, a)
        # O = O * alpha + P^T V (only valid rows).
        var i = 0
        while i + 4 <= nq:
            _pv_micro[dtype, D, 4](vp, sv, j0, kb, st, ob, al, i)
            i += 4
        while i < nq:
            _pv_micro[dtype, D, 1](vp, sv, j0, kb, st, ob, al, i)
            i += 1
        j0 += kb

    # Normalise and store.
    for i in range(nq):
        var l = lv[unsafe_offset=i]
        var inv = Float32(1) / l if l > 0 else Float32(0)
        comptime for c in range(D // W):
            var o = ob.unsafe_load[width=W](i * D + c * W) * inv
            op.unsafe_store((q0 + i) * so + c * W, o.cast[dtype]())


# --------------------------------------------------------------------------- #
# Row-wise path: one query at a time (decoder steps, tiny Tq).
# --------------------------------------------------------------------------- #


def _attn_row[
    dtype: DType, D: Int, causal: Bool
](
    qp: Pointer[Scalar[dtype], MutAnyOrigin],
    kp: Pointer[Scalar[dtype], MutAnyOrigin],
    vp: Pointer[Scalar[dtype], MutAnyOrigin],
    op: Pointer[Scalar[dtype], MutAnyOrigin],
    sq: Int,
    sk: Int,
    sv: Int,
    so: Int,
    qi: Int,
    Tk: Int,
    off: Int,
    scale: Float32,
):
    comptime assert D % W == 0, "row path needs D to be a multiple of W"
    comptime NC = D // W
    var sb = stack_allocation[KB, Float32]().unsafe_origin_cast[MutAnyOrigin]()
    var qv = Array[SIMD[F32, W], NC](fill=0)
    var acc = Array[SIMD[F32, W], NC](fill=0)
    comptime for c in range(NC):
        qv[c] = _ld[dtype, W](qp, qi * sq + c * W) * scale
    var m: Float32 = NEG_BIG
    var l: Float32 = 0
    var kend = Tk
    comptime if causal:
        kend = min(Tk, qi + off + 1)
    var j0 = 0
    while j0 < kend:
        var kb = min(KB, kend - j0)
        var mx: Float32 = NEG_BIG
        for r in range(kb):
            var t = SIMD[F32, W](0)
            comptime for c in range(NC):
                t = qv[c].fma(_ld[dtype, W](kp, (j0 + r) * sk + c * W), t)
            var s = t.reduce_add()
            sb[unsafe_offset=r] = s
            mx = max(mx, s)
        var m_new = max(m, mx)
        var a = exp(m - m_new)
        comptime for c in range(NC):
            acc[c] = acc[c] * a
        var lsum: Float32 = 0
        # exp over the chunk, W at a time, scalar tail.
        var r = 0
        while r + W <= kb:
            var p = exp(sb.unsafe_load[width=W](r) - m_new)
            sb.unsafe_store(r, p)
            lsum += p.reduce_add()
            r += W
        while r < kb:
            var p = exp(sb[unsafe_offset=r] - m_new)
            sb[unsafe_offset=r] = p
            lsum += p
            r += 1
        for r2 in range(kb):
            var p = SIMD[F32, W](sb[unsafe_offset=r2])
            comptime for c in range(NC):
                acc[c] = p.fma(_ld[dtype, W](vp, (j0 + r2) * sv + c * W), acc[c])
        l = l * a + lsum
        m = m_new
        j0 += kb
    var inv = Float32(1) / l if l > 0 else Float32(0)
    comptime for c in range(NC):
        op.unsafe_store(qi * so + c * W, (acc[c] * inv).cast[dtype]())


# --------------------------------------------------------------------------- #
# Generic fallback (any D): scalar two-pass per query. Slow; correctness only.
# --------------------------------------------------------------------------- #


def _attn_row_generic[
    dtype: DType, causal: Bool
](
    qp: Pointer[Scalar[dtype], MutAnyOrigin],
    kp: Pointer[Scalar[dtype], MutAnyOrigin],
    vp: Pointer[Scalar[dtype], MutAnyOrigin],
    op: Pointer[Scalar[dtype], MutAnyOrigin],
    sq: Int,
    sk: Int,
    sv: Int,
    so: Int,
    qi: Int,
    Tk: Int,
    D: Int,
    off: Int,
    scale: Float32,
):
    var kend = Tk
    comptime if causal:
        kend = min(Tk, qi + off + 1)
    var m: Float32 = NEG_BIG
    for j in range(kend):
        var s: Float32 = 0
        for d in range(D):
            s += _ld1[dtype](qp, qi * sq + d) * _ld1[dtype](kp, j * sk + d)
        m = max(m, s * scale)
    var l: Float32 = 0
    for d in range(D):
        op[unsafe_offset=qi * so + d] = 0
    for j in range(kend):
        var s: Float32 = 0
        for d in range(D):
            s += _ld1[dtype](qp, qi * sq + d) * _ld1[dtype](kp, j * sk + d)
        l += exp(s * scale - m)
    var inv = Float32(1) / l if l > 0 else Float32(0)
    for d in range(D):
        var o: Float32 = 0
        for j in range(kend):
            var s: Float32 = 0
            for e in range(D):
                s += _ld1[dtype](qp, qi * sq + e) * _ld1[dtype](kp, j * sk + e)
            o += exp(s * scale - m) * _ld1[dtype](vp, j * sv + d)
        op[unsafe_offset=qi * so + d] = (o * inv).cast[dtype]()


# --------------------------------------------------------------------------- #
# CPU driver.
# --------------------------------------------------------------------------- #


def attention_cpu[
    dtype: DType, causal: Bool
](
    qp: Pointer[Scalar[dtype], MutAnyOrigin],
    kp: Pointer[Scalar[dtype], MutAnyOrigin],
    vp: Pointer[Scalar[dtype], MutAnyOrigin],
    op: Pointer[Scalar[dtype], MutAnyOrigin],
    B: Int,
    H: Int,
    Tq: Int,
    Tk: Int,
    D: Int,
    qs: IndexList[3],  # strides (b, h, t) of q; innermost stride must be 1
    ks: IndexList[3],
    vs: IndexList[3],
    os: IndexList[3],
    ctx: DeviceContext,
) raises:
    if B * H * Tq == 0:
        return
    var scale = Float32(1) / sqrt(Float32(D))
    var off = Tk - Tq
    var nblk = (Tq + BQ - 1) // BQ
    var nitems = B * H * nblk

    def work(item: Int) {
        var qp, var kp, var vp, var op, var H, var Tq, var Tk, var D,
        var qs, var ks, var vs, var os, var nblk, var off, var scale
    }:
        # Like sync_parallelize: flush denormals (exp() of very negative
        # scores underflows into them).
        with FlushDenormals():
            _work_item[dtype, causal](
                qp, kp, vp, op, H, Tq, Tk, D, qs, ks, vs, os, nblk, off,
                scale, item,
            )

    # == sync_parallelize(work, nitems, ctx), but on the op's own CPU
    # context (passing `ctx` to sync_parallelize does not type-check here).
    # Small problems (decoder steps): thread wake-up costs more than the work.
    if nitems == 1 or B * H * Tq * Tk * D < SERIAL_MAX_MACS:
        for i in range(nitems):
            work(i)
    else:
        ctx.enqueue_cpu_range(work, count=nitems)
        ctx.synchronize()


@always_inline
def _work_item[
    dtype: DType, causal: Bool
](
    qp: Pointer[Scalar[dtype], MutAnyOrigin],
    kp: Pointer[Scalar[dtype], MutAnyOrigin],
    vp: Pointer[Scalar[dtype], MutAnyOrigin],
    op: Pointer[Scalar[dtype], MutAnyOrigin],
    H: Int,
    Tq: Int,
    Tk: Int,
    D: Int,
    qs: IndexList[3],
    ks: IndexList[3],
    vs: IndexList[3],
    os: IndexList[3],
    nblk: Int,
    off: Int,
    scale: Float32,
    item: Int,
):
    var bh = item // nblk
    var blk = item - bh * nblk
    var b = bh // H
    var h = bh - b * H
    var q = qp.unsafe_offset(b * qs[0] + h * qs[1])
    var k = kp.unsafe_offset(b * ks[0] + h * ks[1])
    var v = vp.unsafe_offset(b * vs[0] + h * vs[1])
    var o = op.unsafe_offset(b * os[0] + h * os[1])
    var q0 = blk * BQ
    var nq = min(BQ, Tq - q0)
    if D == 64:
        if nq > ROWWISE_MAX:
            _attn_tile[dtype, 64, causal](
                q, k, v, o, qs[2], ks[2], vs[2], os[2], q0, nq, Tk, off,
                scale,
            )
        else:
            for i in range(nq):
                _attn_row[dtype, 64, causal](
                    q, k, v, o, qs[2], ks[2], vs[2], os[2], q0 + i, Tk,
                    off, scale,
                )
    else:
        for i in range(nq):
            _attn_row_generic[dtype, causal](
                q, k, v, o, qs[2], ks[2], vs[2], os[2], q0 + i, Tk, D,
                off, scale,
            )


# --------------------------------------------------------------------------- #
# GPU path.
# --------------------------------------------------------------------------- #

comptime GQ = 8  # warps (= query rows) per block
comptime GKT = 32  # keys per shared tile (one per lane)
comptime GPU_MAX_D = 128
comptime GNC = GPU_MAX_D // 32  # output columns per lane


def _attn_gpu_kernel[
    dtype: DType, causal: Bool, dyn: Bool
](
    qp: Pointer[Scalar[dtype], MutAnyOrigin],
    kp: Pointer[Scalar[dtype], MutAnyOrigin],
    vp: Pointer[Scalar[dtype], MutAnyOrigin],
    op: Pointer[Scalar[dtype], MutAnyOrigin],
    posp: Pointer[Int64, MutAnyOrigin],  # dyn: Tk = posp[0] + Tq (a KV cache filled up to pos)
    H: Int32,
    Tq: Int32,
    Tk: Int32,
    D: Int32,
    nblk: Int32,
    qs0: Int64, qs1: Int64, qs2: Int64,
    ks0: Int64, ks1: Int64, ks2: Int64,
    vs0: Int64, vs1: Int64, vs2: Int64,
    os0: Int64, os1: Int64, os2: Int64,
    scale: Float32,
):
    comptime KS = GPU_MAX_D + 1  # padded K row: lanes read different banks
    var ksh = stack_allocation[GKT * KS, Float32, address_space=AddressSpace.SHARED]()
    var vsh = stack_allocation[GKT * GPU_MAX_D, Float32, address_space=AddressSpace.SHARED]()
    var qsh = stack_allocation[GQ * GPU_MAX_D, Float32, address_space=AddressSpace.SHARED]()
    var tid = Int(thread_idx.x)
    var w = tid // 32
    var lane = tid - w * 32
    var item = Int(block_idx.x)
    var nb = Int(nblk)
    var bh = item // nb
    var blk = item - bh * nb
    var b = bh // Int(H)
    var h = bh - b * Int(H)
    var d_ = Int(D)
    var tq = Int(Tq)
    var tk = Int(Tk)
    comptime if dyn:
        tk = Int(posp[unsafe_offset=0]) + tq
    var off = tk - tq
    var q0 = blk * GQ
    var qi = q0 + w  # this warp's query row
    var qbase = b * Int(qs0) + h * Int(qs1)
    var kbase = b * Int(ks0) + h * Int(ks1)
    var vbase = b * Int(vs0) + h * Int(vs1)
    var obase = b * Int(os0) + h * Int(os1)

    # this warp's query row, pre-scaled, in shared memory
    var d = lane
    while d < d_:
        var x: Float32 = 0
        if qi < tq:
            x = qp[unsafe_offset=qbase + qi * Int(qs2) + d].cast[F32]() * scale
        qsh[unsafe_offset=w * GPU_MAX_D + d] = x
        d += 32

    # keys visible to any row of this block
    var kend = tk
    comptime if causal:
        kend = min(tk, min(q0 + GQ, tq) + off)
    var my_end = tk
    comptime if causal:
        my_end = min(tk, qi + off + 1)

    var m_run = Float32(NEG_BIG)
    var l_run: Float32 = 0
    var acc = Array[Float32, GNC](fill=0)
    var j0 = 0
    while j0 < kend:
        barrier()  # previous tile fully consumed (and q rows written)
        var e = tid
        while e < GKT * d_:
            var r = e // d_
            var c = e - r * d_
            var j = j0 + r
            var kx: Float32 = 0
            var vx: Float32 = 0
            if j < tk:
                kx = kp[unsafe_offset=kbase + j * Int(ks2) + c].cast[F32]()
                vx = vp[unsafe_offset=vbase + j * Int(vs2) + c].cast[F32]()
            ksh[unsafe_offset=r * KS + c] = kx
            vsh[unsafe_offset=r * GPU_MAX_D + c] = vx
            e += GQ * 32
        barrier()
        if qi < tq and j0 < my_end:
            var j = j0 + lane
            var s = Float32(NEG_BIG)
            if j < my_end:
                var t: Float32 = 0
                for c in range(d_):
                    t += qsh[unsafe_offset=w * GPU_MAX_D + c] * ksh[unsafe_offset=lane * KS + c]
                s = t
            var tmax = warp.max(s)
            var m_new = max(m_run, tmax)
            var alpha = exp(m_run - m_new)
            var p: Float32 = 0
            if j < my_end:
                p = exp(s - m_new)
            l_run = l_run * alpha + warp.sum(p)
            m_run = m_new
            comptime for c in range(GNC):
                acc[c] = acc[c] * alpha
            var nk = min(GKT, my_end - j0)
            for r in range(nk):
                var pr = warp.shuffle_idx(p, UInt32(r))
                comptime for c in range(GNC):
                    var col = lane + 32 * c
                    if col < d_:
                        acc[c] += pr * vsh[unsafe_offset=r * GPU_MAX_D + col]
        j0 += GKT

    if qi < tq:
        var inv = Float32(1) / l_run if l_run > 0 else Float32(0)
        comptime for c in range(GNC):
            var col = lane + 32 * c
            if col < d_:
                op[unsafe_offset=obase + qi * Int(os2) + col] = (acc[c] * inv).cast[dtype]()


comptime DW = 16  # warps per block of the one-query (decode) kernel


def _attn_decode_gpu_kernel[
    dtype: DType, dyn: Bool
](
    qp: Pointer[Scalar[dtype], MutAnyOrigin],
    kp: Pointer[Scalar[dtype], MutAnyOrigin],
    vp: Pointer[Scalar[dtype], MutAnyOrigin],
    op: Pointer[Scalar[dtype], MutAnyOrigin],
    posp: Pointer[Int64, MutAnyOrigin],
    H: Int32,
    Tk: Int32,
    D: Int32,
    qs0: Int64, qs1: Int64,
    ks0: Int64, ks1: Int64, ks2: Int64,
    vs0: Int64, vs1: Int64, vs2: Int64,
    os0: Int64, os1: Int64,
    scale: Float32,
):
    """One query row (Tq = 1: a decoder step) against Tk keys, split over the block's DW warps (flash-decoding
    inside one block): warp w takes key tiles w, w + DW, ...; lanes own output columns; the warps' partial
    softmax states are merged through shared memory at the end."""
    var part = stack_allocation[DW * (GPU_MAX_D + 2), Float32, address_space=AddressSpace.SHARED]()
    var tid = Int(thread_idx.x)
    var w = tid // 32
    var lane = tid - w * 32
    var bh = Int(block_idx.x)
    var b = bh // Int(H)
    var h = bh - b * Int(H)
    var d_ = Int(D)
    var tk = Int(Tk)
    comptime if dyn:
        tk = Int(posp[unsafe_offset=0]) + 1
    var qbase = b * Int(qs0) + h * Int(qs1)
    var kbase = b * Int(ks0) + h * Int(ks1)
    var vbase = b * Int(vs0) + h * Int(vs1)
    var qv = Array[Float32, GNC](fill=0)
    comptime for c in range(GNC):
        var col = lane + 32 * c
        if col < d_:
            qv[c] = qp[unsafe_offset=qbase + col].cast[F32]() * scale
    var m_run = Float32(NEG_BIG)
    var l_run: Float32 = 0
    var acc = Array[Float32, GNC](fill=0)
    var j0 = w * GKT
    while j0 < tk:
        var nk = min(GKT, tk - j0)
        var s = Float32(NEG_BIG)  # lane r: the score of key j0 + r
        for r in range(nk):
            var krow = kbase + (j0 + r) * Int(ks2)
            var t: Float32 = 0
            comptime for c in range(GNC):
                var col = lane + 32 * c
                if col < d_:
                    t += qv[c] * kp[unsafe_offset=krow + col].cast[F32]()
            t = warp.sum(t)
            if lane == r:
                s = t
        var m_new = max(m_run, warp.max(s))
        var alpha = exp(m_run - m_new)
        var pj: Float32 = 0
        if lane < nk:
            pj = exp(s - m_new)
        l_run = l_run * alpha + warp.sum(pj)
        m_run = m_new
        comptime for c in range(GNC):
            acc[c] = acc[c] * alpha
        for r in range(nk):
            var pr = warp.shuffle_idx(pj, UInt32(r))
            var vrow = vbase + (j0 + r) * Int(vs2)
            comptime for c in range(GNC):
                var col = lane + 32 * c
                if col < d_:
                    acc[c] += pr * vp[unsafe_offset=vrow + col].cast[F32]()
        j0 += DW * GKT
    # merge the warps' (m, l, acc) states
    var rowp = w * (GPU_MAX_D + 2)
    comptime for c in range(GNC):
        var col = lane + 32 * c
        if col < d_:
            part[unsafe_offset=rowp + col] = acc[c]
    if lane == 0:
        part[unsafe_offset=rowp + GPU_MAX_D] = m_run
        part[unsafe_offset=rowp + GPU_MAX_D + 1] = l_run
    barrier()
    if w == 0:
        var mm = Float32(NEG_BIG)
        for i in range(DW):
            mm = max(mm, part[unsafe_offset=i * (GPU_MAX_D + 2) + GPU_MAX_D])
        var ll: Float32 = 0
        var o = Array[Float32, GNC](fill=0)
        for i in range(DW):
            var base = i * (GPU_MAX_D + 2)
            var f = exp(part[unsafe_offset=base + GPU_MAX_D] - mm)
            ll += part[unsafe_offset=base + GPU_MAX_D + 1] * f
            comptime for c in range(GNC):
                var col = lane + 32 * c
                if col < d_:
                    o[c] += part[unsafe_offset=base + col] * f
        var inv = Float32(1) / ll if ll > 0 else Float32(0)
        var obase = b * Int(os0) + h * Int(os1)
        comptime for c in range(GNC):
            var col = lane + 32 * c
            if col < d_:
                op[unsafe_offset=obase + col] = (o[c] * inv).cast[dtype]()


comptime D64_VW = 8  # elements per vector load of a 64-wide row (16 bytes in fp16/bf16)
comptime DW64 = 8  # warps per block of the head-dim-64 decode kernel (256 threads: room for its registers)
comptime SPLIT_W = 4  # warps per block of the split-key decode kernel
comptime SPLIT_KEYS = SPLIT_W * GKT  # keys per block of the split-key kernel: one 32-key tile per warp
comptime PART = 64 + 2  # one block's partial state in the split scratch: 64 unnormalized columns, max m, sum l
# How many blocks a one-query row's 1500 keys get (tests/gpu_probe.py cross, H200, µs per call; S = 1 is one 8-warp
# block per row): rows = B * H <= SPLIT_ROWS take the scratch's 12 (6, 12 or 20 rows: 19-22 -> 12-13 µs), more
# rows SPLIT_WIDE (96 rows: S=1 20.2, 3 21.9, 12 27.9; 192: 57.7, 45.1, 50.7; 320: 84.6, 60.7, 70.6).
comptime SPLIT_ROWS = 32
comptime SPLIT_WIDE = 3


def _attn_decode64_gpu_kernel[
    dtype: DType, dyn: Bool, NW: Int, split: Bool, kv_in: Bool = False
](
    qp: Pointer[Scalar[dtype], MutAnyOrigin],
    kp: Pointer[Scalar[dtype], MutAnyOrigin],
    vp: Pointer[Scalar[dtype], MutAnyOrigin],
    op: Pointer[Scalar[dtype], MutAnyOrigin],
    posp: Pointer[Int64, MutAnyOrigin],
    partp: Pointer[Float32, MutAnyOrigin],
    knp: Pointer[Scalar[dtype], MutAnyOrigin],
    vnp: Pointer[Scalar[dtype], MutAnyOrigin],
    kn0: Int64, kn1: Int64, vn0: Int64, vn1: Int64,
    H: Int32,
    Tk: Int32,
    S: Int32,
    kpb: Int32,
    qs0: Int64, qs1: Int64,
    ks0: Int64, ks1: Int64, ks2: Int64,
    vs0: Int64, vs1: Int64, vs2: Int64,
    os0: Int64, os1: Int64,
    scale: Float32,
):
    """One query row against Tk keys for head dim 64 (every Whisper size), latency-tuned. Block (b, h, s) takes
    keys [s * kpb, (s + 1) * kpb) (S = 1, kpb = Tk: all of them); its NW warps take 32-key tiles w, w + NW, ...;
    lane r scores key j0 + r on its own (the key row in 8 independent vector loads, q in registers) so a tile costs
    one round of loads instead of 32 dependent load+reduce steps; P V then broadcasts each probability and every
    lane accumulates two adjacent output columns from one coalesced 128-byte row read, unrolled over the tile's
    32 keys so the loads pipeline. Warps merge through shared memory. With `split` (flash-decoding: a decoder
    step's cross-attention has B * H blocks' worth of rows and 1500 keys) the block writes its unnormalized
    (acc[64], m, l) to partp[(b, h, s)] and `_attn_combine64_gpu_kernel` merges the S blocks; else it writes the
    output. With `kv_in` (a cached self-attention step, dyn) the block first writes its row's new key and value
    (knp, vnp at (b, h)) into the cache at slot pos — the KV write kernels folded in. The host only takes this path
    when every row start is 16-byte aligned (strides multiples of 8)."""
    comptime D = 64
    comptime NV = D // D64_VW
    comptime PS = D + 2  # one warp's partial state: 64 columns, m, l
    var part = stack_allocation[NW * PS, Float32, address_space=AddressSpace.SHARED]()
    var tid = Int(thread_idx.x)
    var w = tid // 32
    var lane = tid - w * 32
    var bhs = Int(block_idx.x)
    var bh = bhs // Int(S)
    var b = bh // Int(H)
    var h = bh - b * Int(H)
    var tk = Int(Tk)
    comptime if dyn:
        tk = Int(posp[unsafe_offset=0]) + 1
    var jlo = (bhs - bh * Int(S)) * Int(kpb)
    var jhi = min(jlo + Int(kpb), tk)
    var qbase = b * Int(qs0) + h * Int(qs1)
    var kbase = b * Int(ks0) + h * Int(ks1)
    var vbase = b * Int(vs0) + h * Int(vs1)
    comptime if kv_in:
        var slot = tk - 1
        if tid < D:
            kp[unsafe_offset=kbase + slot * Int(ks2) + tid] = knp[unsafe_offset=b * Int(kn0) + h * Int(kn1) + tid]
        elif tid < 2 * D:
            vp[unsafe_offset=vbase + slot * Int(vs2) + tid - D] = vnp[
                unsafe_offset=b * Int(vn0) + h * Int(vn1) + tid - D
            ]
        barrier()
    comptime VA = D64_VW * size_of[dtype]()  # alignment of a vector load
    var qv = Array[SIMD[F32, D64_VW], NV](fill=0)
    comptime for c in range(NV):
        qv[c] = qp.unsafe_load[width=D64_VW, alignment=VA](qbase + c * D64_VW).cast[F32]() * scale
    var m_run = Float32(NEG_BIG)
    var l_run: Float32 = 0
    var acc = SIMD[F32, 2](0)  # output columns 2 * lane, 2 * lane + 1
    var j0 = jlo + w * GKT
    while j0 < jhi:
        var j = j0 + lane
        var s = Float32(NEG_BIG)
        if j < jhi:
            var krow = kbase + j * Int(ks2)
            var t = SIMD[F32, D64_VW](0)
            comptime for c in range(NV):
                t = qv[c].fma(kp.unsafe_load[width=D64_VW, alignment=VA](krow + c * D64_VW).cast[F32](), t)
            s = t.reduce_add()
        var m_new = max(m_run, warp.max(s))
        var alpha = exp(m_run - m_new)
        var pj: Float32 = 0
        if j < jhi:
            pj = exp(s - m_new)
        l_run = l_run * alpha + warp.sum(pj)
        m_run = m_new
        acc = acc * alpha
        var vcol = vbase + 2 * lane
        if j0 + GKT <= jhi:
            comptime for r in range(GKT):
                var pr = warp.shuffle_idx(pj, UInt32(r))
                var vx = vp.unsafe_load[width=2, alignment=2 * size_of[dtype]()](vcol + (j0 + r) * Int(vs2))
                acc = SIMD[F32, 2](pr).fma(vx.cast[F32](), acc)
        else:
            for r in range(jhi - j0):
                var pr = warp.shuffle_idx(pj, UInt32(r))
                var vx = vp.unsafe_load[width=2, alignment=2 * size_of[dtype]()](vcol + (j0 + r) * Int(vs2))
                acc = SIMD[F32, 2](pr).fma(vx.cast[F32](), acc)
        j0 += NW * GKT
    var rowp = w * PS
    part[unsafe_offset=rowp + 2 * lane] = acc[0]
    part[unsafe_offset=rowp + 2 * lane + 1] = acc[1]
    if lane == 0:
        part[unsafe_offset=rowp + D] = m_run
        part[unsafe_offset=rowp + D + 1] = l_run
    barrier()
    if w == 0:
        var mm = Float32(NEG_BIG)
        for i in range(NW):
            mm = max(mm, part[unsafe_offset=i * PS + D])
        var ll: Float32 = 0
        var o = SIMD[F32, 2](0)
        for i in range(NW):
            var f = exp(part[unsafe_offset=i * PS + D] - mm)
            ll += part[unsafe_offset=i * PS + D + 1] * f
            o[0] += part[unsafe_offset=i * PS + 2 * lane] * f
            o[1] += part[unsafe_offset=i * PS + 2 * lane + 1] * f
        comptime if split:
            var pbase = bhs * PART
            partp.unsafe_store[alignment=8](pbase + 2 * lane, o)
            if lane == 0:
                partp[unsafe_offset=pbase + D] = mm
                partp[unsafe_offset=pbase + D + 1] = ll
        else:
            var inv = Float32(1) / ll if ll > 0 else Float32(0)
            var obase = b * Int(os0) + h * Int(os1)
            op.unsafe_store[alignment=2 * size_of[dtype]()](obase + 2 * lane, (o * inv).cast[dtype]())


def _attn_combine64_gpu_kernel[
    dtype: DType
](
    partp: Pointer[Float32, MutAnyOrigin],
    op: Pointer[Scalar[dtype], MutAnyOrigin],
    H: Int32,
    S: Int32,
    os0: Int64, os1: Int64,
):
    """Merges the S partial states of row (b, h) = block_idx.x written by the split decode kernel into the output;
    one warp, lane r owns columns 2r, 2r + 1."""
    comptime D = 64
    var lane = Int(thread_idx.x)
    var bh = Int(block_idx.x)
    var b = bh // Int(H)
    var h = bh - b * Int(H)
    var base = bh * Int(S) * PART
    var mm = Float32(NEG_BIG)
    for s in range(Int(S)):
        mm = max(mm, partp[unsafe_offset=base + s * PART + D])
    var ll: Float32 = 0
    var o = SIMD[F32, 2](0)
    for s in range(Int(S)):
        var f = exp(partp[unsafe_offset=base + s * PART + D] - mm)
        ll += partp[unsafe_offset=base + s * PART + D + 1] * f
        o = SIMD[F32, 2](f).fma(partp.unsafe_load[width=2, alignment=8](base + s * PART + 2 * lane), o)
    var inv = Float32(1) / ll if ll > 0 else Float32(0)
    var obase = b * Int(os0) + h * Int(os1)
    op.unsafe_store[alignment=2 * size_of[dtype]()](obase + 2 * lane, (o * inv).cast[dtype]())


def _aligned8(s: IndexList[3]) -> Bool:
    return s[0] % D64_VW == 0 and s[1] % D64_VW == 0 and s[2] % D64_VW == 0


def _decode64_ok[
    dtype: DType
](
    qp: Pointer[Scalar[dtype], MutAnyOrigin],
    kp: Pointer[Scalar[dtype], MutAnyOrigin],
    vp: Pointer[Scalar[dtype], MutAnyOrigin],
    op: Pointer[Scalar[dtype], MutAnyOrigin],
    qs: IndexList[3],
    ks: IndexList[3],
    vs: IndexList[3],
    os: IndexList[3],
) -> Bool:
    """Whether every row start is 16-byte aligned: `_attn_decode64_gpu_kernel`'s vector loads need it."""
    return _aligned8(qs) and _aligned8(ks) and _aligned8(vs) and _aligned8(os) and (
        Int(qp) | Int(kp) | Int(vp) | Int(op)
    ) % (D64_VW * size_of[dtype]()) == 0


def attention_gpu[
    dtype: DType, causal: Bool, dyn: Bool = False
](
    qp: Pointer[Scalar[dtype], MutAnyOrigin],
    kp: Pointer[Scalar[dtype], MutAnyOrigin],
    vp: Pointer[Scalar[dtype], MutAnyOrigin],
    op: Pointer[Scalar[dtype], MutAnyOrigin],
    posp: Pointer[Int64, MutAnyOrigin],
    B: Int,
    H: Int,
    Tq: Int,
    Tk: Int,
    D: Int,
    qs: IndexList[3],
    ks: IndexList[3],
    vs: IndexList[3],
    os: IndexList[3],
    ctx: DeviceContext,
    partp: Pointer[Float32, MutAnyOrigin],
    n_part: Int,
) raises:
    """`partp`: scratch for n_part partial softmax states (PART floats) per (b, h) row — lets a one-query call split
    its keys over n_part blocks (flash-decoding); n_part = 0: no split."""
    if B * H * Tq == 0:
        return
    if D > GPU_MAX_D:
        raise Error("mwc_attention: GPU path supports head dim <= 128")
    var scale = Float32(1) / sqrt(Float32(D))
    if Tq == 1 and D == 64 and _decode64_ok[dtype](qp, kp, vp, op, qs, ks, vs, os):
        # flash-decoding when the caller gave a scratch of n_part states per row and the keys fill > 1 block: all
        # n_part blocks for a few rows (one window's heads), SPLIT_WIDE when the rows alone fill the GPU
        var parts = n_part if B * H <= SPLIT_ROWS else min(n_part, SPLIT_WIDE)
        var kpb = ((Tk + parts - 1) // parts + GKT - 1) // GKT * GKT if parts > 1 else Tk
        if not dyn and parts > 1 and kpb < Tk:
            var S = (Tk + kpb - 1) // kpb
            ctx.enqueue_function[_attn_decode64_gpu_kernel[dtype, dyn, SPLIT_W, True]](
                qp, kp, vp, op, posp, partp, qp, qp, Int64(0), Int64(0), Int64(0), Int64(0), Int32(H), Int32(Tk), Int32(S), Int32(kpb),
                Int64(qs[0]), Int64(qs[1]),
                Int64(ks[0]), Int64(ks[1]), Int64(ks[2]),
                Int64(vs[0]), Int64(vs[1]), Int64(vs[2]),
                Int64(os[0]), Int64(os[1]),
                scale,
                grid_dim=B * H * S, block_dim=SPLIT_W * 32,
            )
            ctx.enqueue_function[_attn_combine64_gpu_kernel[dtype]](
                partp, op, Int32(H), Int32(S), Int64(os[0]), Int64(os[1]),
                grid_dim=B * H, block_dim=32,
            )
            return
        ctx.enqueue_function[_attn_decode64_gpu_kernel[dtype, dyn, DW64, False]](
            qp, kp, vp, op, posp, partp, qp, qp, Int64(0), Int64(0), Int64(0), Int64(0), Int32(H), Int32(Tk), Int32(1), Int32(Tk),
            Int64(qs[0]), Int64(qs[1]),
            Int64(ks[0]), Int64(ks[1]), Int64(ks[2]),
            Int64(vs[0]), Int64(vs[1]), Int64(vs[2]),
            Int64(os[0]), Int64(os[1]),
            scale,
            grid_dim=B * H, block_dim=DW64 * 32,
        )
        return
    if Tq == 1:  # a decoder step: every key is visible (causal or not); split the keys over warps
        ctx.enqueue_function[_attn_decode_gpu_kernel[dtype, dyn]](
            qp, kp, vp, op, posp, Int32(H), Int32(Tk), Int32(D),
            Int64(qs[0]), Int64(qs[1]),
            Int64(ks[0]), Int64(ks[1]), Int64(ks[2]),
            Int64(vs[0]), Int64(vs[1]), Int64(vs[2]),
            Int64(os[0]), Int64(os[1]),
            scale,
            grid_dim=B * H, block_dim=DW * 32,
        )
        return
    var nblk = (Tq + GQ - 1) // GQ
    ctx.enqueue_function[_attn_gpu_kernel[dtype, causal, dyn]](
        qp, kp, vp, op, posp, Int32(H), Int32(Tq), Int32(Tk), Int32(D), Int32(nblk),
        Int64(qs[0]), Int64(qs[1]), Int64(qs[2]),
        Int64(ks[0]), Int64(ks[1]), Int64(ks[2]),
        Int64(vs[0]), Int64(vs[1]), Int64(vs[2]),
        Int64(os[0]), Int64(os[1]), Int64(os[2]),
        scale,
        grid_dim=B * H * nblk, block_dim=GQ * 32,
    )


# --------------------------------------------------------------------------- #
# Registration.
# --------------------------------------------------------------------------- #


@extensibility.register("mwc_attention")
struct MwcAttention:
    @staticmethod
    def execute[
        dtype: DType,
        //,
        causal: Bool,
        target: StaticString,
    ](
        out_t: OutputTensor[dtype=dtype, rank=4, ...],
        q: InputTensor[dtype=dtype, rank=4, ...],
        k: InputTensor[dtype=dtype, rank=4, ...],
        v: InputTensor[dtype=dtype, rank=4, ...],
        ctx: DeviceContext,
    ) raises:
        var B = q.dim_size(0)
        var H = q.dim_size(1)
        var Tq = q.dim_size(2)
        var D = q.dim_size(3)
        var Tk = k.dim_size(2)
        if (
            k.dim_size(0) != B
            or v.dim_size(0) != B
            or k.dim_size(1) != H
            or v.dim_size(1) != H
            or v.dim_size(2) != Tk
            or k.dim_size(3) != D
            or v.dim_size(3) != D
            or out_t.dim_size(0) != B
            or out_t.dim_size(1) != H
            or out_t.dim_size(2) != Tq
            or out_t.dim_size(3) != D
        ):
            raise Error("mwc_attention: shape mismatch between q, k, v, out")
        if (
            q.stride_length(3) != 1
            or k.stride_length(3) != 1
            or v.stride_length(3) != 1
            or out_t.stride_length(3) != 1
        ):
            raise Error("mwc_attention: innermost dim must be contiguous")

        var qs = IndexList[3](
            q.stride_length(0), q.stride_length(1), q.stride_length(2)
        )
        var ks = IndexList[3](
            k.stride_length(0), k.stride_length(1), k.stride_length(2)
        )
        var vs = IndexList[3](
            v.stride_length(0), v.stride_length(1), v.stride_length(2)
        )
        var os = IndexList[3](
            out_t.stride_length(0),
            out_t.stride_length(1),
            out_t.stride_length(2),
        )
        var qp = rebind[Pointer[Scalar[dtype], MutAnyOrigin]](q.unsafe_ptr())
        var kp = rebind[Pointer[Scalar[dtype], MutAnyOrigin]](k.unsafe_ptr())
        var vp = rebind[Pointer[Scalar[dtype], MutAnyOrigin]](v.unsafe_ptr())
        var op = rebind[Pointer[Scalar[dtype], MutAnyOrigin]](
            out_t.unsafe_ptr()
        )
        comptime if target == "cpu":
            attention_cpu[dtype, causal](
                qp, kp, vp, op, B, H, Tq, Tk, D, qs, ks, vs, os, ctx,
            )
        else:
            attention_gpu[dtype, causal](
                qp, kp, vp, op, rebind[Pointer[Int64, MutAnyOrigin]](qp),
                B, H, Tq, Tk, D, qs, ks, vs, os, ctx, rebind[Pointer[Float32, MutAnyOrigin]](qp), 0,
            )


# mwc_layer_attention: cross-attention of layer `layer` straight from the encoder's stacked K/V (L, B, H, Tk, D),
# not causal. Slicing k[layer] in the graph instead made MAX copy every layer's K and V on every decoder step (the
# captured small step at batch 16 asked for an 844 MiB scratch block: all cross K/V).
@extensibility.register("mwc_layer_attention")
struct MwcLayerAttention:
    @staticmethod
    def execute[
        dtype: DType,
        //,
        layer: Int,
        bthd: Bool,
        target: StaticString,
    ](
        out_t: OutputTensor[dtype=dtype, rank=4, ...],
        part: OutputTensor[dtype=DType.float32, rank=4, ...],
        q: InputTensor[dtype=dtype, rank=4, ...],
        k: InputTensor[dtype=dtype, rank=5, ...],
        v: InputTensor[dtype=dtype, rank=5, ...],
        ctx: DeviceContext,
    ) raises:
        comptime hd = 2 if bthd else 1  # q, out: (B, T, H, D) with bthd, else (B, H, T, D)
        comptime td = 3 - hd
        var B = q.dim_size(0)
        var H = q.dim_size(hd)
        var Tq = q.dim_size(td)
        var D = q.dim_size(3)
        var Tk = k.dim_size(3)
        if (
            layer >= k.dim_size(0)
            or v.dim_size(0) != k.dim_size(0)
            or k.dim_size(1) != B
            or v.dim_size(1) != B
            or k.dim_size(2) != H
            or v.dim_size(2) != H
            or v.dim_size(3) != Tk
            or k.dim_size(4) != D
            or v.dim_size(4) != D
            or out_t.dim_size(0) != B
            or out_t.dim_size(hd) != H
            or out_t.dim_size(td) != Tq
            or out_t.dim_size(3) != D
            or part.dim_size(0) != B
            or part.dim_size(1) != H
            or part.dim_size(3) != PART
        ):
            raise Error("mwc_layer_attention: shape mismatch between q, k, v, out, part")
        if (
            q.stride_length(3) != 1
            or k.stride_length(4) != 1
            or v.stride_length(4) != 1
            or out_t.stride_length(3) != 1
        ):
            raise Error("mwc_layer_attention: innermost dim must be contiguous")
        var qs = IndexList[3](q.stride_length(0), q.stride_length(hd), q.stride_length(td))
        var ks = IndexList[3](k.stride_length(1), k.stride_length(2), k.stride_length(3))
        var vs = IndexList[3](v.stride_length(1), v.stride_length(2), v.stride_length(3))
        var os = IndexList[3](out_t.stride_length(0), out_t.stride_length(hd), out_t.stride_length(td))
        var qp = rebind[Pointer[Scalar[dtype], MutAnyOrigin]](q.unsafe_ptr())
        var kp = rebind[Pointer[Scalar[dtype], MutAnyOrigin]](k.unsafe_ptr()).unsafe_offset(layer * k.stride_length(0))
        var vp = rebind[Pointer[Scalar[dtype], MutAnyOrigin]](v.unsafe_ptr()).unsafe_offset(layer * v.stride_length(0))
        var op = rebind[Pointer[Scalar[dtype], MutAnyOrigin]](out_t.unsafe_ptr())
        comptime if target == "cpu":
            attention_cpu[dtype, False](qp, kp, vp, op, B, H, Tq, Tk, D, qs, ks, vs, os, ctx)
        else:
            var pp = rebind[Pointer[Float32, MutAnyOrigin]](part.unsafe_ptr())
            var S = part.dim_size(2)
            var dense = part.stride_length(3) == 1 and part.stride_length(2) == PART and (
                part.stride_length(1) == S * PART and part.stride_length(0) == H * S * PART
            )
            var n_part = S if dense else 0
            attention_gpu[dtype, False](
                qp, kp, vp, op, rebind[Pointer[Int64, MutAnyOrigin]](qp), B, H, Tq, Tk, D, qs, ks, vs, os, ctx,
                pp, n_part,
            )


# --------------------------------------------------------------------------- #
# mwc_cached_attention_qkv: decoder self-attention over a fixed-size KV cache that
# the op updates in place (for device-graph capture: shapes never change and
# the position lives on the device).
#
#   kc, vc (L, B, H, CTX, D) mutable; qkv (B, T, 3, H, D): the new tokens' fused
#   projection; pos (1,) int64: tokens already cached. Writes k, v into slots
#   pos..pos+T-1 of layer `layer`, then out (B, T, H, D) = causal attention of q
#   over slots 0..pos+T-1.
# --------------------------------------------------------------------------- #


def _kv_write_gpu_kernel[
    dtype: DType
](
    dst: Pointer[Scalar[dtype], MutAnyOrigin],
    src: Pointer[Scalar[dtype], MutAnyOrigin],
    posp: Pointer[Int64, MutAnyOrigin],
    H: Int32, T: Int32, D: Int32,
    ds0: Int64, ds1: Int64, ds2: Int64,
    ss0: Int64, ss1: Int64, ss2: Int64,
    n: Int32,
):
    var e = Int(block_idx.x) * 256 + Int(thread_idx.x)
    if e >= Int(n):
        return
    var d_ = Int(D)
    var t_ = Int(T)
    var h_ = Int(H)
    var c = e % d_
    var r = e // d_
    var t = r % t_
    var bh = r // t_
    var h = bh % h_
    var b = bh // h_
    var slot = Int(posp[unsafe_offset=0]) + t
    dst[unsafe_offset=b * Int(ds0) + h * Int(ds1) + slot * Int(ds2) + c] = src[
        unsafe_offset=b * Int(ss0) + h * Int(ss1) + t * Int(ss2) + c
    ]


def _kv_write_cpu[
    dtype: DType
](
    dst: Pointer[Scalar[dtype], MutAnyOrigin],
    src: Pointer[Scalar[dtype], MutAnyOrigin],
    pos: Int,
    B: Int, H: Int, T: Int, D: Int,
    ds: IndexList[3], ss: IndexList[3],
):
    for b in range(B):
        for h in range(H):
            for t in range(T):
                var o = b * ds[0] + h * ds[1] + (pos + t) * ds[2]
                var i = b * ss[0] + h * ss[1] + t * ss[2]
                for c in range(D):
                    dst[unsafe_offset=o + c] = src[unsafe_offset=i + c]


@extensibility.register("mwc_cached_attention_qkv")
struct MwcCachedAttentionQkv:
    """The step's self-attention on the fused QKV projection as it comes out, viewed as (B, T, 3, H, D): q, k and v
    are its three slices read in place (split in the graph, MAX copied them: one kernel per layer and step; the op
    took q, k and v as three inputs until then). Output (B, T, H, D)."""

    @staticmethod
    def execute[
        dtype: DType,
        //,
        layer: Int,
        target: StaticString,
    ](
        out_t: OutputTensor[dtype=dtype, rank=4, ...],
        kc: MutableInputTensor[dtype=dtype, rank=5, ...],
        vc: MutableInputTensor[dtype=dtype, rank=5, ...],
        qkv: InputTensor[dtype=dtype, rank=5, ...],
        pos: InputTensor[dtype=DType.int64, rank=1, ...],
        ctx: DeviceContext,
    ) raises:
        var B = qkv.dim_size(0)
        var T = qkv.dim_size(1)
        var H = qkv.dim_size(3)
        var D = qkv.dim_size(4)
        var CTX = kc.dim_size(3)
        if (
            qkv.dim_size(2) != 3
            or kc.dim_size(1) != B or kc.dim_size(2) != H or kc.dim_size(4) != D
            or vc.dim_size(1) != B or vc.dim_size(2) != H or vc.dim_size(3) != CTX
            or out_t.dim_size(0) != B or out_t.dim_size(1) != T or out_t.dim_size(2) != H
            or layer >= kc.dim_size(0)
        ):
            raise Error("mwc_cached_attention_qkv: shape mismatch between cache, qkv and the output")
        if (
            qkv.stride_length(4) != 1 or out_t.stride_length(3) != 1
            or kc.stride_length(4) != 1 or vc.stride_length(4) != 1
        ):
            raise Error("mwc_cached_attention_qkv: innermost dims must be contiguous")
        var kcp = rebind[Pointer[Scalar[dtype], MutAnyOrigin]](kc.unsafe_ptr()).unsafe_offset(
            layer * kc.stride_length(0)
        )
        var vcp = rebind[Pointer[Scalar[dtype], MutAnyOrigin]](vc.unsafe_ptr()).unsafe_offset(
            layer * vc.stride_length(0)
        )
        var qp = rebind[Pointer[Scalar[dtype], MutAnyOrigin]](qkv.unsafe_ptr())
        var kp = qp.unsafe_offset(qkv.stride_length(2))  # q, k and v: slices 0, 1 and 2 of the fused projection
        var vp = qp.unsafe_offset(2 * qkv.stride_length(2))
        var op = rebind[Pointer[Scalar[dtype], MutAnyOrigin]](out_t.unsafe_ptr())
        var posp = rebind[Pointer[Int64, MutAnyOrigin]](pos.unsafe_ptr())
        var cs = IndexList[3](kc.stride_length(1), kc.stride_length(2), kc.stride_length(3))
        var vcs = IndexList[3](vc.stride_length(1), vc.stride_length(2), vc.stride_length(3))
        var qs = IndexList[3](qkv.stride_length(0), qkv.stride_length(3), qkv.stride_length(1))  # b, h, t
        var ks = qs
        var vs = qs
        var os = IndexList[3](out_t.stride_length(0), out_t.stride_length(2), out_t.stride_length(1))
        # the new keys and values into the caches at pos .. pos + T - 1, then the queries against the cache's first
        # pos + T positions, causal
        comptime if target == "cpu":
            var p0 = Int(posp[unsafe_offset=0])
            if p0 < 0 or p0 + T > CTX:
                raise Error("mwc_cached_attention_qkv: position past the end of the KV cache")
            _kv_write_cpu[dtype](kcp, kp, p0, B, H, T, D, cs, ks)
            _kv_write_cpu[dtype](vcp, vp, p0, B, H, T, D, vcs, vs)
            attention_cpu[dtype, True](
                qp, kcp, vcp, op, B, H, T, p0 + T, D, qs, cs, vcs, os, ctx,
            )
        else:
            var n = B * H * T * D
            if n == 0:
                return
            if T == 1 and D == 64 and _decode64_ok[dtype](qp, kcp, vcp, op, qs, cs, vcs, os) and (
                _aligned8(ks) and _aligned8(vs) and (Int(kp) | Int(vp)) % (D64_VW * size_of[dtype]()) == 0
            ):  # a step: the new key and value go into the cache inside the attention kernel
                ctx.enqueue_function[_attn_decode64_gpu_kernel[dtype, True, DW64, False, True]](
                    qp, kcp, vcp, op, posp, rebind[Pointer[Float32, MutAnyOrigin]](qp), kp, vp,
                    Int64(ks[0]), Int64(ks[1]), Int64(vs[0]), Int64(vs[1]),
                    Int32(H), Int32(CTX), Int32(1), Int32(CTX),
                    Int64(qs[0]), Int64(qs[1]),
                    Int64(cs[0]), Int64(cs[1]), Int64(cs[2]),
                    Int64(vcs[0]), Int64(vcs[1]), Int64(vcs[2]),
                    Int64(os[0]), Int64(os[1]),
                    Float32(1) / sqrt(Float32(D)),
                    grid_dim=B * H, block_dim=DW64 * 32,
                )
                return
            ctx.enqueue_function[_kv_write_gpu_kernel[dtype]](
                kcp, kp, posp, Int32(H), Int32(T), Int32(D),
                Int64(cs[0]), Int64(cs[1]), Int64(cs[2]),
                Int64(ks[0]), Int64(ks[1]), Int64(ks[2]), Int32(n),
                grid_dim=(n + 255) // 256, block_dim=256,
            )
            ctx.enqueue_function[_kv_write_gpu_kernel[dtype]](
                vcp, vp, posp, Int32(H), Int32(T), Int32(D),
                Int64(vcs[0]), Int64(vcs[1]), Int64(vcs[2]),
                Int64(vs[0]), Int64(vs[1]), Int64(vs[2]), Int32(n),
                grid_dim=(n + 255) // 256, block_dim=256,
            )
            attention_gpu[dtype, True, True](
                qp, kcp, vcp, op, posp, B, H, T, CTX, D, qs, cs, vcs, os, ctx,
                rebind[Pointer[Float32, MutAnyOrigin]](qp), 0,
            )


# --------------------------------------------------------------------------- #
# mwc_attention_blas (GPU, not causal): the encoder's self-attention on the tensor cores through cuBLAS.
# Per batch row b: S[h] = scale * Q[b, h] K[b, h]^T (one strided-batched GEMM over the heads, fp32 scores),
# P = softmax(S) row by row (one warp per row, P in the input dtype), O[b, h] = P[h] V[b, h] (a second strided
# GEMM). Scratch S and P: H * Tq * Tk each, allocated per call (the encoder is not captured). On the CPU it is
# mwc_attention.
# --------------------------------------------------------------------------- #

from _cublas.cublas import (
    Algorithm,
    ComputeType,
    _convert_to_cublas_datatype,
    _convert_to_cublas_transpose,
    check_cublas_error,
    cublasGemmStridedBatchedEx,
)
from linalg.matmul.vendor.blas import _get_global_handle

comptime VoidIn = Pointer[NoneType, ImmutAnyOrigin]
comptime VoidOut = Pointer[NoneType, MutAnyOrigin]
comptime SMW = 8  # warps (rows) per softmax block
comptime BLAS_SCRATCH = 64 << 20  # bytes of scores + probabilities per call (whole heads; at least one)


def _softmax_rows_gpu_kernel[
    dtype: DType
](
    sp: Pointer[Float32, MutAnyOrigin],
    pp: Pointer[Scalar[dtype], MutAnyOrigin],
    rows: Int32,
    n: Int32,
):
    """Row r of the (rows, n) fp32 scores → its softmax in ``dtype``; warp w of block k takes row k * SMW + w."""
    var tid = Int(thread_idx.x)
    var w = tid // 32
    var lane = tid - w * 32
    var r = Int(block_idx.x) * SMW + w
    if r >= Int(rows):
        return
    var base = r * Int(n)
    var m = Float32(NEG_BIG)
    var j = lane
    while j < Int(n):
        m = max(m, sp[unsafe_offset=base + j])
        j += 32
    m = warp.max(m)
    var s: Float32 = 0
    j = lane
    while j < Int(n):
        s += exp(sp[unsafe_offset=base + j] - m)
        j += 32
    var inv = Float32(1) / warp.sum(s)
    j = lane
    while j < Int(n):
        pp[unsafe_offset=base + j] = (exp(sp[unsafe_offset=base + j] - m) * inv).cast[dtype]()
        j += 32


def attention_gpu_blas[
    dtype: DType
](
    qp: Pointer[Scalar[dtype], MutAnyOrigin],
    kp: Pointer[Scalar[dtype], MutAnyOrigin],
    vp: Pointer[Scalar[dtype], MutAnyOrigin],
    op: Pointer[Scalar[dtype], MutAnyOrigin],
    B: Int,
    H: Int,
    Tq: Int,
    Tk: Int,
    D: Int,
    qs: IndexList[3],
    ks: IndexList[3],
    vs: IndexList[3],
    os: IndexList[3],
    ctx: DeviceContext,
) raises:
    """Row-major S (Tq × Tk) = Q K^T is, for column-major cuBLAS, S^T (Tk × Tq) = op(K) Q^T with K's row-major
    storage read as its transpose; O (Tq × D) = P V likewise is O^T = V^T P^T. Heads are the GEMM batch
    (stride qs[1] etc.), batch rows a loop (their stride need not be H times the head stride). The fp32 scores and
    the probabilities of as many heads at a time as fit BLAS_SCRATCH bytes (a 1500 × 1500 head costs 13.5 MB: 4 at
    a time) — every head at once took 162 MB for small (12 heads), and MAX's memory pool keeps its peak."""
    if B * H * Tq == 0:
        return
    var per_head = Tq * Tk * (size_of[DType.float32]() + size_of[dtype]())
    var hg = max(1, min(H, BLAS_SCRATCH // per_head))
    var scores = ctx.enqueue_create_buffer[DType.float32](hg * Tq * Tk)
    var probs = ctx.enqueue_create_buffer[dtype](hg * Tq * Tk)
    var sp = rebind[Pointer[Float32, MutAnyOrigin]](scores.unsafe_ptr())
    var pp = rebind[Pointer[Scalar[dtype], MutAnyOrigin]](probs.unsafe_ptr())
    var handle = _get_global_handle[dtype](ctx)
    var alpha = Float32(1) / sqrt(Float32(D))
    var one = Float32(1)
    var zero = Float32(0)
    var t_in = _convert_to_cublas_datatype[dtype]()
    var t_f32 = _convert_to_cublas_datatype[DType.float32]()
    for b in range(B):
        for h0 in range(0, H, hg):
            var nh = min(hg, H - h0)
            var rows = nh * Tq
            var qb = qp.unsafe_offset(b * qs[0] + h0 * qs[1])
            var kb = kp.unsafe_offset(b * ks[0] + h0 * ks[1])
            var vb = vp.unsafe_offset(b * vs[0] + h0 * vs[1])
            var ob = op.unsafe_offset(b * os[0] + h0 * os[1])
            check_cublas_error(cublasGemmStridedBatchedEx(
                handle._get_cublas(), _convert_to_cublas_transpose(True), _convert_to_cublas_transpose(False),
                Int64(Tk), Int64(Tq), Int64(D),
                rebind[VoidIn](Pointer(to=alpha).unsafe_bitcast[NoneType]()),
                rebind[VoidIn](kb.unsafe_bitcast[NoneType]()), t_in, Int64(ks[2]), Int64(ks[1]),
                rebind[VoidIn](qb.unsafe_bitcast[NoneType]()), t_in, Int64(qs[2]), Int64(qs[1]),
                rebind[VoidIn](Pointer(to=zero).unsafe_bitcast[NoneType]()),
                rebind[VoidOut](sp.unsafe_bitcast[NoneType]()), t_f32, Int64(Tk), Int64(Tq * Tk),
                Int64(nh), ComputeType.COMPUTE_32F, Algorithm.DEFAULT,
            ))
            ctx.enqueue_function[_softmax_rows_gpu_kernel[dtype]](
                sp, pp, Int32(rows), Int32(Tk), grid_dim=(rows + SMW - 1) // SMW, block_dim=SMW * 32,
            )
            check_cublas_error(cublasGemmStridedBatchedEx(
                handle._get_cublas(), _convert_to_cublas_transpose(False), _convert_to_cublas_transpose(False),
                Int64(D), Int64(Tq), Int64(Tk),
                rebind[VoidIn](Pointer(to=one).unsafe_bitcast[NoneType]()),
                rebind[VoidIn](vb.unsafe_bitcast[NoneType]()), t_in, Int64(vs[2]), Int64(vs[1]),
                rebind[VoidIn](pp.unsafe_bitcast[NoneType]()), t_in, Int64(Tk), Int64(Tq * Tk),
                rebind[VoidIn](Pointer(to=zero).unsafe_bitcast[NoneType]()),
                rebind[VoidOut](ob.unsafe_bitcast[NoneType]()), t_in, Int64(os[2]), Int64(os[1]),
                Int64(nh), ComputeType.COMPUTE_32F, Algorithm.DEFAULT,
            ))
    _ = scores^
    _ = probs^


@extensibility.register("mwc_attention_blas")
struct MwcAttentionBlas:
    @staticmethod
    def execute[
        dtype: DType,
        //,
        target: StaticString,
    ](
        out_t: OutputTensor[dtype=dtype, rank=4, ...],
        q: InputTensor[dtype=dtype, rank=4, ...],
        k: InputTensor[dtype=dtype, rank=4, ...],
        v: InputTensor[dtype=dtype, rank=4, ...],
        ctx: DeviceContext,
    ) raises:
        var B = q.dim_size(0)
        var H = q.dim_size(1)
        var Tq = q.dim_size(2)
        var D = q.dim_size(3)
        var Tk = k.dim_size(2)
        if q.stride_length(3) != 1 or k.stride_length(3) != 1 or v.stride_length(3) != 1 or out_t.stride_length(3) != 1:
            raise Error("mwc_attention_blas: innermost dim must be contiguous")
        var qs = IndexList[3](q.stride_length(0), q.stride_length(1), q.stride_length(2))
        var ks = IndexList[3](k.stride_length(0), k.stride_length(1), k.stride_length(2))
        var vs = IndexList[3](v.stride_length(0), v.stride_length(1), v.stride_length(2))
        var os = IndexList[3](out_t.stride_length(0), out_t.stride_length(1), out_t.stride_length(2))
        var qp = rebind[Pointer[Scalar[dtype], MutAnyOrigin]](q.unsafe_ptr())
        var kp = rebind[Pointer[Scalar[dtype], MutAnyOrigin]](k.unsafe_ptr())
        var vp = rebind[Pointer[Scalar[dtype], MutAnyOrigin]](v.unsafe_ptr())
        var op = rebind[Pointer[Scalar[dtype], MutAnyOrigin]](out_t.unsafe_ptr())
        comptime if target == "cpu":
            attention_cpu[dtype, False](qp, kp, vp, op, B, H, Tq, Tk, D, qs, ks, vs, os, ctx)
        else:
            attention_gpu_blas[dtype](qp, kp, vp, op, B, H, Tq, Tk, D, qs, ks, vs, os, ctx)
