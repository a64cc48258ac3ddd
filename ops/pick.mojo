# mwc_pick: a decoder step's greedy choice in one GPU kernel (MAX custom op), what WhisperGraphs.pick writes with
# MAX ops (about eight reductions over the vocabulary, each a kernel of a few µs at batch 1):
#
#   z        = logits[b, T-1, :] + bias, with every token in the row's four rule intervals [lo_k, hi_k) set to NEG
#   ts_lse   = logsumexp over the timestamps (token >= tb) of z (other tokens as NEG); text_max = max of the rest
#   take_ts  = rules on (col 8) and ts_lse > text_max: then every text token is NEG too (openai's
#              ApplyTimestampRules: the timestamps together beat every text token)
#   token    = argmax z (first index), logprob = max z - logsumexp z
#   nospeech = logits[b, sot, nid] - logsumexp logits[b, sot, :]   (sot = rules[0, 9], nid = rules[0, 10])
#
# Inputs logits (B, T, V) float32, bias (V,) float32, rules (B, 14) int64 (compiler/runtime/decoding.py PICK_RULES);
# outputs token (B, 1) int64, logprob (B, 1) float32, nospeech (B, 1) float32, and part (B, NB, 8) float32, the
# scratch of the first kernel (the graph makes it, so MAX allocates it with the step's other tensors).
# Two kernels: NB blocks per row each take a slice of the vocabulary, every thread keeps online (max, sum of exp,
# first argmax) states of its strided share for the timestamps, the text tokens and the raw SOT row in one pass, the
# block merges them in shared memory and writes them to part[b, j]; then one warp per row merges the NB states and
# makes the outputs. (One block per row over all 51864 tokens took 61 µs at batch 1 on the H200: one SM's worth.)
# Masked tokens count as NEG in every state, as in the graph, so all-masked corner cases give the graph's numbers.
# GPU only: on the CPU the graph keeps MAX's ops (WhisperGraphs.pick).

import extensibility
from extensibility import InputTensor, OutputTensor
from max.gpu.host import DeviceContext
from std.math import exp, log
from std.memory import Pointer, stack_allocation
from max.gpu import thread_idx, block_idx, barrier
from max.gpu.primitives import warp

comptime NEG: Float32 = -1.0e30  # compiler/graph.py NEG
comptime NT = 256  # threads per block of the first kernel
comptime NRULES = 14
comptime PSTATE = 8  # one block's states in part: m_ts, s_ts, a_ts, m_tx, s_tx, a_tx, m_row, s_row


@always_inline
def _push(x: Float32, i: Int32, mut m: Float32, mut s: Float32, mut a: Int32):
    """Adds value x at index i to an online (max m, sum of exp(. - m) s, first argmax a) state."""
    if x > m:
        s = s * exp(m - x) + 1
        m = x
        a = i
    else:
        s += exp(x - m)


@always_inline
def _merge(m2: Float32, s2: Float32, a2: Int32, mut m: Float32, mut s: Float32, mut a: Int32):
    """Merges state 2 into state 1; ties keep the lower index (argmax's first)."""
    var mm = max(m, m2)
    s = s * exp(m - mm) + s2 * exp(m2 - mm)
    if m2 > m or (m2 == m and a2 < a):
        a = a2
    m = mm


def _pick_part_gpu_kernel(
    lp: Pointer[Float32, MutAnyOrigin],
    bp: Pointer[Float32, MutAnyOrigin],
    rp: Pointer[Int64, MutAnyOrigin],
    pp: Pointer[Float32, MutAnyOrigin],
    T: Int32,
    V: Int32,
    NB: Int32,
    ls0: Int64, ls1: Int64,
    rs0: Int64,
):
    """Block (b, j): the states of row b over tokens [j * chunk, (j + 1) * chunk), written to part[b, j]."""
    var sm = stack_allocation[NT * 6, Float32, address_space=AddressSpace.SHARED]()
    var sa = stack_allocation[NT * 2, Int32, address_space=AddressSpace.SHARED]()
    var tid = Int(thread_idx.x)
    var b = Int(block_idx.x) // Int(NB)
    var j = Int(block_idx.x) - b * Int(NB)
    var v = Int(V)
    var chunk = (v + Int(NB) - 1) // Int(NB)
    var hi_i = min(v, (j + 1) * chunk)
    var rrow = b * Int(rs0)
    var lo = Array[Int64, 4](fill=0)
    var hi = Array[Int64, 4](fill=0)
    comptime for k in range(4):
        lo[k] = rp[unsafe_offset=rrow + 2 * k]
        hi[k] = rp[unsafe_offset=rrow + 2 * k + 1]
    var tb = rp[unsafe_offset=rrow + 11]
    var sot = Int(rp[unsafe_offset=9])  # row 0's, as the graph reads it
    var last = lp.unsafe_offset(b * Int(ls0) + (Int(T) - 1) * Int(ls1))
    var row = lp.unsafe_offset(b * Int(ls0) + sot * Int(ls1))
    # an empty state: (NEG, 0, past the end) merges as nothing
    var m_ts = NEG
    var s_ts: Float32 = 0
    var a_ts = Int32(v)
    var m_tx = NEG
    var s_tx: Float32 = 0
    var a_tx = Int32(v)
    var m_r = NEG
    var s_r: Float32 = 0
    var a_r = Int32(v)
    var i = j * chunk + tid  # a thread's first index is its lowest: its argmax ties keep the first
    var started = False
    while i < hi_i:
        var i64 = Int64(i)
        var masked = False
        comptime for k in range(4):
            masked = masked or (i64 >= lo[k] and i64 < hi[k])
        var z = NEG if masked else max(last[unsafe_offset=i] + bp[unsafe_offset=i], NEG)  # -inf counts as NEG
        var is_ts = i64 >= tb
        var zt = z if is_ts else NEG
        var zx = NEG if is_ts else z
        var r = row[unsafe_offset=i]
        if not started:  # the first element sets the states (m = x, s = 1, a = i)
            m_ts = zt
            s_ts = 1
            a_ts = Int32(i)
            m_tx = zx
            s_tx = 1
            a_tx = Int32(i)
            m_r = r
            s_r = 1
            started = True
        else:
            _push(zt, Int32(i), m_ts, s_ts, a_ts)
            _push(zx, Int32(i), m_tx, s_tx, a_tx)
            _push(r, Int32(i), m_r, s_r, a_r)
        i += NT
    sm[unsafe_offset=tid] = m_ts
    sm[unsafe_offset=NT + tid] = s_ts
    sm[unsafe_offset=2 * NT + tid] = m_tx
    sm[unsafe_offset=3 * NT + tid] = s_tx
    sm[unsafe_offset=4 * NT + tid] = m_r
    sm[unsafe_offset=5 * NT + tid] = s_r
    sa[unsafe_offset=tid] = a_ts
    sa[unsafe_offset=NT + tid] = a_tx
    barrier()
    def merge_in(mo: Int, so: Int, ao: Int, o: Int) {var sm, var sa, var tid}:
        """Merges thread o's state into thread tid's: max at sm[mo + .], sum at sm[so + .], argmax at sa[ao + .]
        (ao < 0: none, the raw row's)."""
        var m1 = sm[unsafe_offset=mo + tid]
        var s1 = sm[unsafe_offset=so + tid]
        var a1: Int32 = 0
        var a2: Int32 = 0
        if ao >= 0:
            a1 = sa[unsafe_offset=ao + tid]
            a2 = sa[unsafe_offset=ao + o]
        _merge(sm[unsafe_offset=mo + o], sm[unsafe_offset=so + o], a2, m1, s1, a1)
        sm[unsafe_offset=mo + tid] = m1
        sm[unsafe_offset=so + tid] = s1
        if ao >= 0:
            sa[unsafe_offset=ao + tid] = a1

    var stride = NT // 2
    while stride > 0:
        if tid < stride:
            merge_in(0, NT, 0, tid + stride)  # timestamps
            merge_in(2 * NT, 3 * NT, NT, tid + stride)  # text
            merge_in(4 * NT, 5 * NT, -1, tid + stride)  # the raw SOT row
        barrier()
        stride //= 2
    if tid == 0:
        var base = Int(block_idx.x) * PSTATE
        pp[unsafe_offset=base] = sm[unsafe_offset=0]
        pp[unsafe_offset=base + 1] = sm[unsafe_offset=NT]
        pp[unsafe_offset=base + 2] = Float32(sa[unsafe_offset=0])  # < 2^24: exact in float32
        pp[unsafe_offset=base + 3] = sm[unsafe_offset=2 * NT]
        pp[unsafe_offset=base + 4] = sm[unsafe_offset=3 * NT]
        pp[unsafe_offset=base + 5] = Float32(sa[unsafe_offset=NT])
        pp[unsafe_offset=base + 6] = sm[unsafe_offset=4 * NT]
        pp[unsafe_offset=base + 7] = sm[unsafe_offset=5 * NT]


@always_inline
def _merge_lanes(off: UInt32, mut m: Float32, mut s: Float32, mut a: Int32):
    """Merges the state of lane (lane xor off) into this lane's (a butterfly step: every lane ends with the total)."""
    _merge(warp.shuffle_xor(m, off), warp.shuffle_xor(s, off), warp.shuffle_xor(a, off), m, s, a)


comptime RW = NT // 32  # rows (warps) per block of the final kernel


def _pick_final_gpu_kernel(
    lp: Pointer[Float32, MutAnyOrigin],
    rp: Pointer[Int64, MutAnyOrigin],
    pp: Pointer[Float32, MutAnyOrigin],
    tokp: Pointer[Int64, MutAnyOrigin],
    lpp: Pointer[Float32, MutAnyOrigin],
    nsp: Pointer[Float32, MutAnyOrigin],
    B: Int32,
    NB: Int32,
    ls0: Int64, ls1: Int64,
    rs0: Int64,
    ts0: Int64, lps0: Int64, nss0: Int64,
):
    """Warp b: merges row b's NB states into the outputs — lane j takes states j, j + 32, ..., then a butterfly
    over the lanes (the merge keeps the lower index on ties, so argmax stays the first index in any order). One
    thread merging the 32 states in turn took 7.9 µs (H200)."""
    var lane = Int(thread_idx.x) % 32
    var b = Int(block_idx.x) * RW + Int(thread_idx.x) // 32
    if b >= Int(B):
        return
    var base = b * Int(NB) * PSTATE
    var m_ts = NEG  # empty states (NEG, 0, past every index) merge as nothing
    var s_ts: Float32 = 0
    var a_ts = Int32.MAX
    var m_tx = NEG
    var s_tx: Float32 = 0
    var a_tx = Int32.MAX
    var m_r = NEG
    var s_r: Float32 = 0
    var a_r: Int32 = 0
    var j = lane
    while j < Int(NB):
        var q = base + j * PSTATE
        _merge(pp[unsafe_offset=q], pp[unsafe_offset=q + 1], Int32(pp[unsafe_offset=q + 2]), m_ts, s_ts, a_ts)
        _merge(pp[unsafe_offset=q + 3], pp[unsafe_offset=q + 4], Int32(pp[unsafe_offset=q + 5]), m_tx, s_tx, a_tx)
        _merge(pp[unsafe_offset=q + 6], pp[unsafe_offset=q + 7], Int32(0), m_r, s_r, a_r)
        j += 32
    comptime for k in range(5):
        comptime off = UInt32(16 >> k)
        _merge_lanes(off, m_ts, s_ts, a_ts)
        _merge_lanes(off, m_tx, s_tx, a_tx)
        _merge_lanes(off, m_r, s_r, a_r)
    if lane != 0:
        return
    var rrow = b * Int(rs0)
    var ts_lse = m_ts + log(s_ts)
    var take_ts = rp[unsafe_offset=rrow + 8] > 0 and ts_lse > m_tx
    var top: Float32
    var tok: Int32
    var total: Float32  # sum of exp(z - top) over the row
    if take_ts:
        top = m_ts
        tok = a_ts
        total = s_ts
    else:
        top = max(m_ts, m_tx)
        tok = a_tx if m_tx > m_ts else (a_ts if m_ts > m_tx else min(a_ts, a_tx))
        total = s_ts * exp(m_ts - top) + s_tx * exp(m_tx - top)
    var sot = Int(rp[unsafe_offset=9])
    var nid = Int(rp[unsafe_offset=10])
    tokp[unsafe_offset=b * Int(ts0)] = Int64(tok)
    lpp[unsafe_offset=b * Int(lps0)] = -log(total)
    nsp[unsafe_offset=b * Int(nss0)] = lp[unsafe_offset=b * Int(ls0) + sot * Int(ls1) + nid] - (m_r + log(s_r))


@extensibility.register("mwc_pick")
struct MwcPick:
    @staticmethod
    def execute[
        target: StaticString,
    ](
        token: OutputTensor[dtype=DType.int64, rank=2, ...],
        logprob: OutputTensor[dtype=DType.float32, rank=2, ...],
        nospeech: OutputTensor[dtype=DType.float32, rank=2, ...],
        part: OutputTensor[dtype=DType.float32, rank=3, ...],
        logits: InputTensor[dtype=DType.float32, rank=3, ...],
        bias: InputTensor[dtype=DType.float32, rank=1, ...],
        rules: InputTensor[dtype=DType.int64, rank=2, ...],
        ctx: DeviceContext,
    ) raises:
        var B = logits.dim_size(0)
        var T = logits.dim_size(1)
        var V = logits.dim_size(2)
        var NB = part.dim_size(1)
        if (
            bias.dim_size(0) != V
            or rules.dim_size(0) != B
            or rules.dim_size(1) != NRULES
            or token.dim_size(0) != B
            or logprob.dim_size(0) != B
            or nospeech.dim_size(0) != B
            or part.dim_size(0) != B
            or part.dim_size(2) != PSTATE
            or NB < 1
        ):
            raise Error("mwc_pick: shape mismatch between logits, bias, rules and the outputs")
        if logits.stride_length(2) != 1 or bias.stride_length(0) != 1 or rules.stride_length(1) != 1 or (
            part.stride_length(2) != 1 or part.stride_length(1) != PSTATE or part.stride_length(0) != NB * PSTATE
        ):
            raise Error("mwc_pick: innermost dims must be contiguous, part dense")
        comptime if target == "cpu":
            raise Error("mwc_pick: GPU only (the CPU graph picks with MAX's ops)")
        else:
            if B * T == 0:
                return
            var lp = rebind[Pointer[Float32, MutAnyOrigin]](logits.unsafe_ptr())
            var rp = rebind[Pointer[Int64, MutAnyOrigin]](rules.unsafe_ptr())
            var pp = rebind[Pointer[Float32, MutAnyOrigin]](part.unsafe_ptr())
            ctx.enqueue_function[_pick_part_gpu_kernel](
                lp, rebind[Pointer[Float32, MutAnyOrigin]](bias.unsafe_ptr()), rp, pp,
                Int32(T), Int32(V), Int32(NB),
                Int64(logits.stride_length(0)), Int64(logits.stride_length(1)), Int64(rules.stride_length(0)),
                grid_dim=B * NB, block_dim=NT,
            )
            ctx.enqueue_function[_pick_final_gpu_kernel](
                lp, rp, pp,
                rebind[Pointer[Int64, MutAnyOrigin]](token.unsafe_ptr()),
                rebind[Pointer[Float32, MutAnyOrigin]](logprob.unsafe_ptr()),
                rebind[Pointer[Float32, MutAnyOrigin]](nospeech.unsafe_ptr()),
                Int32(B), Int32(NB),
                Int64(logits.stride_length(0)), Int64(logits.stride_length(1)), Int64(rules.stride_length(0)),
                Int64(token.stride_length(0)), Int64(logprob.stride_length(0)), Int64(nospeech.stride_length(0)),
                grid_dim=(B + RW - 1) // RW, block_dim=NT,
            )
