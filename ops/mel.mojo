# ===----------------------------------------------------------------------=== #
# mwc_log_mel: Whisper log-mel spectrogram as a MAX custom op (Mojo 1.2).
#
# Reproduces openai-whisper `log_mel_spectrogram` (whisper/audio.py):
#   n_fft 400, hop 160, periodic Hann window, torch.stft(center=True,
#   pad_mode="reflect"), power = |X|^2 for bins 0..200, mel = filters @ power,
#   log10(max(mel, 1e-10)), floor at (global max - 8), then (x + 4) / 4.
#   The last STFT frame is dropped, so n_frames = n_samples // 160.
#
# Inputs  (in this order):
#   audio   : float32 [n_samples]        (already zero-padded by the caller)
#   filters : float32 [n_mels, 201]      (slaney mel filterbank, n_mels 80/128)
# Output:
#   out     : float32 [n_mels, n_samples // 160]
#
# CPU algorithm: frames are processed W at a time (W = SIMD width, one frame per
# SIMD lane). The 400-point real DFT is done as a 20 x 20 Cooley-Tukey split
# (two small direct DFTs + twiddles, using the real-input symmetry in stage 1).
# The mel projection skips the zero part of each filter row. Frame groups are
# spread over the CPU worker threads with `sync_parallelize`.
#
# GPU algorithm (`_log_mel_gpu`): kernel 1 runs one thread block per GFB = 8
# frames: the reflect-padded windowed frames go to shared memory, thread k
# computes bin k of all 8 frames by a direct 400-point DFT with a shared
# twiddle table (index k*n % 400; each twiddle read serves 8 frames), then
# (mel row, frame) pairs project and write log10; thread 0 stores the block's
# max into a scratch buffer. Kernel 2 (grid-stride) reduces those
# per-frame maxima in every block, then clamps to (max - 8) and rescales.
# ===----------------------------------------------------------------------=== #

import extensibility
from extensibility import InputTensor, OutputTensor
from max.gpu.host import DeviceContext
from max.gpu.host.info import is_cpu
from max.algorithm import sync_parallelize
from max.runtime.asyncrt import parallelism_level
from std.memory.alloc import unsafe_alloc
from std.memory import stack_allocation
from std.math import cos, sin, log10, pi
from std.sys import simd_width_of
from max.gpu import thread_idx, block_idx, block_dim, grid_dim, barrier

comptime N_FFT = 400
comptime HOP = 160
comptime N_BINS = N_FFT // 2 + 1  # 201
comptime R = 20  # 400 = R * R
comptime HALF_R = R // 2 + 1  # 11: stage-1 bins computed directly
comptime W = simd_width_of[DType.float32]()  # frames per SIMD group
comptime V = SIMD[DType.float32, W]
comptime F32Ptr = Pointer[Float32, MutUntrackedOrigin]


def _log_mel_cpu(
    audio: F32Ptr,
    audio_stride: Int,
    n_samples: Int,
    filt: F32Ptr,  # contiguous copy, [n_mels, 201]
    n_mels: Int,
    dst: F32Ptr,  # row-major, unit stride along frames
    out_row_stride: Int,
    n_frames: Int,
    ctx: DeviceContext,  # unused for now (see note at sync_parallelize below)
) raises:
    if n_frames <= 0 or n_mels <= 0:
        return
    if n_samples <= N_FFT // 2:
        raise Error(
            "mwc_log_mel: need more than 200 samples for reflect padding"
        )

    # ---- constant tables (computed in float64, stored as float32) ----------
    var win = unsafe_alloc[Float32](N_FFT, alignment=64)
    for n in range(N_FFT):
        win[unsafe_offset=n] = Float32(
            0.5 - 0.5 * cos(2.0 * pi * Float64(n) / Float64(N_FFT))
        )
    # cs[a*R + b] = cos(2 pi ((a*b) % R) / R), a in 0..HALF_R-1, b in 0..R-1
    var cs = unsafe_alloc[Float32](HALF_R * R, alignment=64)
    var sn = unsafe_alloc[Float32](HALF_R * R, alignment=64)
    for a in range(HALF_R):
        for b in range(R):
            var ang = 2.0 * pi * Float64((a * b) % R) / Float64(R)
            cs[unsafe_offset=a * R + b] = Float32(cos(ang))
            sn[unsafe_offset=a * R + b] = Float32(sin(ang))
    # twiddles tw[n2*R + k1] = exp(-2 pi i n2 k1 / 400)  (stored as cos, sin)
    var twc = unsafe_alloc[Float32](R * R, alignment=64)
    var tws = unsafe_alloc[Float32](R * R, alignment=64)
    for n2 in range(R):
        for k1 in range(R):
            var ang = 2.0 * pi * Float64((n2 * k1) % N_FFT) / Float64(N_FFT)
            twc[unsafe_offset=n2 * R + k1] = Float32(cos(ang))
            tws[unsafe_offset=n2 * R + k1] = Float32(sin(ang))
    # non-zero support [lo, hi) of every filter row
    var lo = unsafe_alloc[Int](n_mels)
    var hi = unsafe_alloc[Int](n_mels)
    for m in range(n_mels):
        var first = -1
        var last = -1
        for f in range(N_BINS):
            if filt[unsafe_offset=m * N_BINS + f] != 0:
                if first < 0:
                    first = f
                last = f
        lo[unsafe_offset=m] = first if first >= 0 else 0
        hi[unsafe_offset=m] = last + 1 if first >= 0 else 0

    var n_groups = (n_frames + W - 1) // W
    var n_tasks = min(n_groups, max(1, parallelism_level(None)))
    var per_task = n_groups // n_tasks
    var extra = n_groups % n_tasks
    var tmax = unsafe_alloc[Float32](n_tasks)

    # ---- pass 1: log10 mel per frame, per-task max -------------------------
    def frames_task(
        tid: Int,
    ) {
        var audio,
        var audio_stride,
        var n_samples,
        var filt,
        var n_mels,
        var dst,
        var out_row_stride,
        var n_frames,
        var win,
        var cs,
        var sn,
        var twc,
        var tws,
        var lo,
        var hi,
        var tmax,
        var per_task,
        var extra,
    }:
        var g0 = tid * per_task + min(tid, extra)
        var g1 = g0 + per_task + (1 if tid < extra else 0)
        var xs = unsafe_alloc[Float32](N_FFT * W, alignment=64)
        var bre = unsafe_alloc[Float32](R * R * W, alignment=64)
        var bim = unsafe_alloc[Float32](R * R * W, alignment=64)
        var pw = unsafe_alloc[Float32](N_BINS * W, alignment=64)
        var vmax = V(-1.0e30)

        for g in range(g0, g1):
            var t0 = g * W
            # -- windowed frames, transposed: xs[n*W + lane] -------------------
            for lane in range(W):
                var t = min(t0 + lane, n_frames - 1)  # pad lanes repeat last
                var start = t * HOP - N_FFT // 2
                if start >= 0 and start + N_FFT <= n_samples:
                    for n in range(N_FFT):
                        xs[unsafe_offset=n * W + lane] = (
                            win[unsafe_offset=n]
                            * audio[unsafe_offset=(start + n) * audio_stride]
                        )
                else:
                    for n in range(N_FFT):
                        var j = start + n
                        if j < 0:
                            j = -j  # torch reflect: no edge repeat
                        if j >= n_samples:
                            j = 2 * (n_samples - 1) - j
                        xs[unsafe_offset=n * W + lane] = (
                            win[unsafe_offset=n]
                            * audio[unsafe_offset=j * audio_stride]
                        )

            # -- stage 1: 20-point DFTs over n1 (x[20*n1 + n2]), + twiddle ---
            # B[k1][n2] = A[n2][k1] * exp(-2 pi i n2 k1 / 400)
            for n2 in range(R):
                for k1 in range(HALF_R):
                    var re = V(0)
                    var im = V(0)
                    comptime for n1 in range(R):
                        var x = xs.unsafe_load[width=W, alignment=4](
                            (R * n1 + n2) * W
                        )
                        re += x * cs[unsafe_offset=k1 * R + n1]
                        im -= x * sn[unsafe_offset=k1 * R + n1]
                    var tc = twc[unsafe_offset=n2 * R + k1]
                    var ts = tws[unsafe_offset=n2 * R + k1]
                    bre.unsafe_store[alignment=4](
                        (k1 * R + n2) * W, re * tc + im * ts
                    )
                    bim.unsafe_store[alignment=4](
                        (k1 * R + n2) * W, im * tc - re * ts
                    )
                    if k1 > 0 and k1 < R // 2:
                        # real input: A[n2][20 - k1] = conj(A[n2][k1])
                        var km = R - k1
                        var tc2 = twc[unsafe_offset=n2 * R + km]
                        var ts2 = tws[unsafe_offset=n2 * R + km]
                        bre.unsafe_store[alignment=4](
                            (km * R + n2) * W, re * tc2 - im * ts2
                        )
                        bim.unsafe_store[alignment=4](
                            (km * R + n2) * W, -(im * tc2) - re * ts2
                        )

            # -- stage 2: X[k1 + 20*k2] = sum_n2 B[k1][n2] e^{-2pi i n2 k2/20}
            for k1 in range(R):
                for k2 in range(HALF_R):
                    var k = k1 + R * k2
                    if k >= N_BINS:
                        break
                    var re = V(0)
                    var im = V(0)
                    comptime for n2 in range(R):
                        var br = bre.unsafe_load[width=W, alignment=4](
                            (k1 * R + n2) * W
                        )
                        var bi = bim.unsafe_load[width=W, alignment=4](
                            (k1 * R + n2) * W
                        )
                        var c = cs[unsafe_offset=k2 * R + n2]
                        var s = sn[unsafe_offset=k2 * R + n2]
                        re += br * c + bi * s
                        im += bi * c - br * s
                    pw.unsafe_store[alignment=4](k * W, re * re + im * im)

            # -- mel projection + log10 ----------------------------------------
            var full = t0 + W <= n_frames
            for m in range(n_mels):
                var acc = V(0)
                for f in range(lo[unsafe_offset=m], hi[unsafe_offset=m]):
                    acc += filt[unsafe_offset=m * N_BINS + f] * (
                        pw.unsafe_load[width=W, alignment=4](f * W)
                    )
                var lg = log10(max(acc, V(1.0e-10)))
                vmax = max(vmax, lg)
                var o = m * out_row_stride + t0
                if full:
                    dst.unsafe_store[alignment=4](o, lg)
                else:
                    for lane in range(n_frames - t0):
                        dst[unsafe_offset=o + lane] = lg[lane]

        tmax[unsafe_offset=tid] = vmax.reduce_max()
        xs.unsafe_free()
        bre.unsafe_free()
        bim.unsafe_free()
        pw.unsafe_free()

    # Note: sync_parallelize(func, n, ctx) does not type-check in Mojo 1.2:
    # the op's `ctx` (DeviceContextBase) does not convert to
    # Optional[DeviceContextBase[CompilationTarget()]]. Without ctx it runs on
    # the default CPU runtime pool, which is what we want here.
    sync_parallelize(frames_task, n_tasks)

    var gmax = tmax[unsafe_offset=0]
    for i in range(1, n_tasks):
        gmax = max(gmax, tmax[unsafe_offset=i])
    var floor_v = gmax - 8.0

    # ---- pass 2: clamp to (max - 8) and rescale ----------------------------
    var m_tasks = min(n_mels, max(1, parallelism_level(None)))
    var m_per = n_mels // m_tasks
    var m_extra = n_mels % m_tasks

    def finish_task(
        tid: Int,
    ) {var dst, var out_row_stride, var n_frames, var floor_v, var m_per, var m_extra}:
        var m0 = tid * m_per + min(tid, m_extra)
        var m1 = m0 + m_per + (1 if tid < m_extra else 0)
        var fv = V(floor_v)
        for m in range(m0, m1):
            var row = m * out_row_stride
            var t = 0
            while t + W <= n_frames:
                var v = dst.unsafe_load[width=W, alignment=4](row + t)
                dst.unsafe_store[alignment=4](
                    row + t, (max(v, fv) + 4.0) * 0.25
                )
                t += W
            while t < n_frames:
                var v = dst[unsafe_offset=row + t]
                dst[unsafe_offset=row + t] = (max(v, floor_v) + 4.0) * 0.25
                t += 1

    sync_parallelize(finish_task, m_tasks)

    win.unsafe_free()
    cs.unsafe_free()
    sn.unsafe_free()
    twc.unsafe_free()
    tws.unsafe_free()
    lo.unsafe_free()
    hi.unsafe_free()
    tmax.unsafe_free()


# ---------------------------------------------------------------------------- #
# GPU path
# ---------------------------------------------------------------------------- #

comptime GPU_THREADS = 256
comptime F32Any = Pointer[Float32, MutAnyOrigin]


comptime GFB = 16  # frames per thread block: each twiddle read from shared memory serves GFB frames
comptime GV = 4  # frames per shared-memory vector load
comptime MAX_ROWS = 256  # mel rows whose nonzero filter range is found once per block (more: every bin is read)


def _mel_frames_kernel(
    audio: F32Any,
    audio_stride: Int64,
    n_samples: Int64,
    filt: F32Any,  # [n_mels, filt_row_stride]
    filt_row_stride: Int64,
    filt_col_stride: Int64,
    n_mels: Int64,
    dst: F32Any,
    out_row_stride: Int64,
    out_col_stride: Int64,
    n_frames: Int64,
    block_max: F32Any,  # [n_blocks] scratch
):
    # xs[m * GFB + f]: sample m of the block's frame f, so one sample of GFB frames is GFB / GV vector loads
    var xs = stack_allocation[GFB * N_FFT, Float32, alignment=16, address_space=AddressSpace.SHARED]()
    var twc = stack_allocation[N_FFT, Float32, address_space=AddressSpace.SHARED]()
    var tws = stack_allocation[N_FFT, Float32, address_space=AddressSpace.SHARED]()
    var pw = stack_allocation[GFB * N_BINS, Float32, address_space=AddressSpace.SHARED]()
    var red = stack_allocation[GPU_THREADS, Float32, address_space=AddressSpace.SHARED]()
    var lo_s = stack_allocation[MAX_ROWS, Int32, address_space=AddressSpace.SHARED]()
    var hi_s = stack_allocation[MAX_ROWS, Int32, address_space=AddressSpace.SHARED]()
    var t0 = Int(block_idx.x) * GFB
    var tid = Int(thread_idx.x)
    var ns = Int(n_samples)
    var nf = Int(n_frames)
    var nm = Int(n_mels)
    var n = tid
    while n < N_FFT:
        # fp32: NVIDIA GPUs have no float64 cos/sin in Mojo's math
        var ang = Float32(2.0 * pi) * Float32(n) / Float32(N_FFT)
        var c = cos(ang)
        twc[unsafe_offset=n] = c
        tws[unsafe_offset=n] = sin(ang)
        var w = Float32(0.5) - Float32(0.5) * c
        comptime for f in range(GFB):
            var x: Float32 = 0
            if t0 + f < nf:
                var j = (t0 + f) * HOP - N_FFT // 2 + n
                if j < 0:
                    j = -j
                if j >= ns:
                    j = 2 * (ns - 1) - j
                x = w * audio[unsafe_offset=j * Int(audio_stride)]
            xs[unsafe_offset=n * GFB + f] = x
        n += GPU_THREADS
    var r = tid
    while r < min(nm, MAX_ROWS):  # each mel filter is a triangle over a few bins: find its nonzero range once
        var lo = N_BINS
        var hi = -1
        var row = r * Int(filt_row_stride)
        for b in range(N_BINS):
            if filt[unsafe_offset=row + b * Int(filt_col_stride)] != 0:
                lo = min(lo, b)
                hi = b
        lo_s[unsafe_offset=r] = Int32(lo)
        hi_s[unsafe_offset=r] = Int32(hi)
        r += GPU_THREADS
    barrier()
    var k = tid
    while k < N_BINS:  # thread k: bin k of the block's GFB frames, by a direct DFT
        var re = Array[SIMD[DType.float32, GV], GFB // GV](fill=0)
        var im = Array[SIMD[DType.float32, GV], GFB // GV](fill=0)
        var idx = 0
        for m in range(N_FFT):
            var c = SIMD[DType.float32, GV](twc[unsafe_offset=idx])
            var s = SIMD[DType.float32, GV](-tws[unsafe_offset=idx])
            comptime for q in range(GFB // GV):
                var x = xs.unsafe_load[width=GV, alignment=16](m * GFB + q * GV)  # the same address in every lane: a broadcast
                re[q] = x.fma(c, re[q])
                im[q] = x.fma(s, im[q])
            idx += k
            if idx >= N_FFT:
                idx -= N_FFT
        comptime for q in range(GFB // GV):
            var p = re[q] * re[q] + im[q] * im[q]
            comptime for i in range(GV):
                pw[unsafe_offset=(q * GV + i) * N_BINS + k] = p[i]
        k += GPU_THREADS
    barrier()
    var vmax = Float32(-1.0e30)
    var e = tid
    while e < nm * GFB:  # (mel row, frame) pairs
        var m = e // GFB
        var f = e - m * GFB
        if t0 + f < nf:
            var lo = 0
            var hi = N_BINS - 1
            if m < MAX_ROWS:
                lo = Int(lo_s[unsafe_offset=m])
                hi = Int(hi_s[unsafe_offset=m])
            var acc: Float32 = 0
            var row = m * Int(filt_row_stride)
            for b in range(lo, hi + 1):  # zero filter weights add exactly nothing: skipped
                acc += filt[unsafe_offset=row + b * Int(filt_col_stride)] * pw[unsafe_offset=f * N_BINS + b]
            var lg = log10(max(acc, Float32(1.0e-10)))
            vmax = max(vmax, lg)
            dst[unsafe_offset=m * Int(out_row_stride) + (t0 + f) * Int(out_col_stride)] = lg
        e += GPU_THREADS
    red[unsafe_offset=tid] = vmax
    barrier()
    var s = GPU_THREADS // 2
    while s > 0:
        if tid < s:
            red[unsafe_offset=tid] = max(red[unsafe_offset=tid], red[unsafe_offset=tid + s])
        barrier()
        s //= 2
    if tid == 0:
        block_max[unsafe_offset=Int(block_idx.x)] = red[unsafe_offset=0]


def _mel_finish_kernel(
    dst: F32Any,
    out_row_stride: Int64,
    out_col_stride: Int64,
    n_mels: Int64,
    n_frames: Int64,
    block_max: F32Any,
    n_blocks: Int64,
):
    var red = stack_allocation[GPU_THREADS, Float32, address_space=AddressSpace.SHARED]()
    var tid = Int(thread_idx.x)
    var nf = Int(n_frames)
    var vmax = Float32(-1.0e30)
    var i = tid
    while i < Int(n_blocks):
        vmax = max(vmax, block_max[unsafe_offset=i])
        i += GPU_THREADS
    red[unsafe_offset=tid] = vmax
    barrier()
    var s = GPU_THREADS // 2
    while s > 0:
        if tid < s:
            red[unsafe_offset=tid] = max(red[unsafe_offset=tid], red[unsafe_offset=tid + s])
        barrier()
        s //= 2
    var floor_v = red[unsafe_offset=0] - 8.0
    var total = Int(n_mels) * nf
    var e = Int(block_idx.x) * GPU_THREADS + tid
    var step = Int(grid_dim.x) * GPU_THREADS
    while e < total:
        var m = e // nf
        var t = e - m * nf
        var o = m * Int(out_row_stride) + t * Int(out_col_stride)
        dst[unsafe_offset=o] = (max(dst[unsafe_offset=o], floor_v) + 4.0) * 0.25
        e += step


def _log_mel_gpu(
    audio: F32Any,
    audio_stride: Int,
    n_samples: Int,
    filt: F32Any,
    filt_row_stride: Int,
    filt_col_stride: Int,
    n_mels: Int,
    dst: F32Any,
    out_row_stride: Int,
    out_col_stride: Int,
    n_frames: Int,
    ctx: DeviceContext,
) raises:
    if n_frames <= 0 or n_mels <= 0:
        return
    var n_blocks = (n_frames + GFB - 1) // GFB
    var scratch = ctx.enqueue_create_buffer[DType.float32](n_blocks)
    var fm = scratch.unsafe_ptr().unsafe_origin_cast[MutAnyOrigin]()
    ctx.enqueue_function[_mel_frames_kernel](
        audio, Int64(audio_stride), Int64(n_samples), filt,
        Int64(filt_row_stride), Int64(filt_col_stride), Int64(n_mels), dst,
        Int64(out_row_stride), Int64(out_col_stride), Int64(n_frames), fm,
        grid_dim=n_blocks, block_dim=GPU_THREADS,
    )
    var total = n_mels * n_frames
    var blocks = min((total + GPU_THREADS - 1) // GPU_THREADS, 1024)
    ctx.enqueue_function[_mel_finish_kernel](
        dst, Int64(out_row_stride), Int64(out_col_stride), Int64(n_mels),
        Int64(n_frames), fm, Int64(n_blocks),
        grid_dim=blocks, block_dim=GPU_THREADS,
    )
    _ = scratch^


@extensibility.register("mwc_log_mel")
struct MwcLogMel:
    @staticmethod
    def execute[
        target: StaticString
    ](
        out_t: OutputTensor[dtype=DType.float32, rank=2, ...],
        audio: InputTensor[dtype=DType.float32, rank=1, ...],
        filters: InputTensor[dtype=DType.float32, rank=2, ...],
        ctx: DeviceContext,
    ) raises:
        var n_samples = audio.dim_size(0)
        var n_mels = filters.dim_size(0)
        var n_frames = out_t.dim_size(1)
        if filters.dim_size(1) != N_BINS:
            raise Error("mwc_log_mel: filters must have 201 columns")
        if out_t.dim_size(0) != n_mels or n_frames != n_samples // HOP:
            raise Error("mwc_log_mel: output must be [n_mels, n_samples // 160]")
        if n_frames > 0 and n_samples <= N_FFT // 2:
            raise Error(
                "mwc_log_mel: need more than 200 samples for reflect padding"
            )

        comptime if is_cpu[target]():
            if out_t.strides()[1] != 1:
                raise Error("mwc_log_mel: output must be unit-stride on frames")
            # contiguous copy of the (small) filterbank
            var filt = unsafe_alloc[Float32](n_mels * N_BINS, alignment=64)
            for m in range(n_mels):
                for f in range(N_BINS):
                    filt[unsafe_offset=m * N_BINS + f] = filters[m, f]
            _log_mel_cpu(
                audio.unsafe_ptr().unsafe_origin_cast[MutUntrackedOrigin](),
                audio.strides()[0],
                n_samples,
                filt,
                n_mels,
                out_t.unsafe_ptr().unsafe_origin_cast[MutUntrackedOrigin](),
                out_t.strides()[0],
                n_frames,
                ctx,
            )
            filt.unsafe_free()
        else:
            _log_mel_gpu(
                rebind[F32Any](audio.unsafe_ptr()),
                audio.strides()[0],
                n_samples,
                rebind[F32Any](filters.unsafe_ptr()),
                filters.strides()[0],
                filters.strides()[1],
                n_mels,
                rebind[F32Any](out_t.unsafe_ptr()),
                out_t.strides()[0],
                out_t.strides()[1],
                n_frames,
                ctx,
            )
