#!/usr/bin/env python3
"""Standalone check of the `mwc_log_mel` Mojo custom op (ops/mel.mojo).

Builds a CPU MAX graph  audio[samples], filters[n_mels, 201] -> [n_mels, samples // 160]
(both `samples` and `n_mels` symbolic, so one compile serves 80 and 128 mels),
runs it on several signals and compares with a float64 numpy reimplementation of
openai-whisper's `log_mel_spectrogram` (with a numpy slaney mel filterbank
equivalent to librosa.filters.mel(sr=16000, n_fft=400, htk=False, norm='slaney')).

Usage: python tests/bench_mel_op.py [--ops DIR] [--runs N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

SR = 16000
N_FFT = 400
HOP = 160
TOL = 1e-4
JFK = Path("/work/shared/data/short/jfk.flac")


# ----------------------------------------------------------------------------
# numpy reference
# ----------------------------------------------------------------------------
def _hz_to_mel(f):
    f = np.asarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = f / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(
        f >= min_log_hz,
        min_log_mel + np.log(np.maximum(f, 1e-300) / min_log_hz) / logstep,
        mels,
    )


def _mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    f_sp = 200.0 / 3
    freqs = f_sp * m
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), freqs)


def slaney_mel_filters(n_mels: int, sr: int = SR, n_fft: int = N_FFT) -> np.ndarray:
    """librosa.filters.mel(sr, n_fft, n_mels, fmin=0, fmax=sr/2, htk=False, norm='slaney')."""
    fftfreqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = mel_f[:, None] - fftfreqs[None, :]
    weights = np.zeros((n_mels, n_fft // 2 + 1), dtype=np.float64)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels])
    weights *= enorm[:, None]
    return weights.astype(np.float32)  # librosa default dtype (= whisper's mel_filters.npz)


def ref_log_mel(audio: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """float64 version of whisper.audio.log_mel_spectrogram on already padded audio."""
    x = audio.astype(np.float64)
    n = np.arange(N_FFT)
    win = 0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT)  # torch.hann_window(400) (periodic)
    xp = np.pad(x, N_FFT // 2, mode="reflect")  # torch.stft(center=True, pad_mode="reflect")
    n_frames = 1 + len(x) // HOP
    idx = np.arange(n_frames)[:, None] * HOP + n[None, :]
    spec = np.fft.rfft(xp[idx] * win, axis=1)  # (frames, 201)
    power = np.abs(spec[:-1]) ** 2  # drop last frame
    mel = filters.astype(np.float64) @ power.T  # (n_mels, frames)
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


# ----------------------------------------------------------------------------
# MAX graph
# ----------------------------------------------------------------------------
def build_model(ops_dir: Path):
    from max.driver import CPU
    from max.dtype import DType
    from max.engine import InferenceSession
    from max.graph import DeviceRef, Graph, TensorType, ops

    cpu = DeviceRef.CPU()
    audio_t = TensorType(DType.float32, ["samples"], cpu)
    filt_t = TensorType(DType.float32, ["n_mels", N_FFT // 2 + 1], cpu)
    t0 = time.perf_counter()
    with Graph("mwc_log_mel_check", input_types=[audio_t, filt_t], custom_extensions=[ops_dir]) as g:
        audio, filt = g.inputs[0].tensor, g.inputs[1].tensor
        out_t = TensorType(DType.float32, [filt.shape[0], audio.shape[0] // HOP], cpu)
        y = ops.custom("mwc_log_mel", cpu, [audio, filt], [out_t])[0].tensor
        g.output(y)
    t1 = time.perf_counter()
    sess = InferenceSession(devices=[CPU()])
    model = sess.load(g)
    t2 = time.perf_counter()
    print(f"graph build {t1 - t0:.2f} s, compile+load {t2 - t1:.2f} s")
    return model


def run_op(model, audio: np.ndarray, filters: np.ndarray) -> np.ndarray:
    from max.driver import Buffer

    out = model.execute(
        Buffer.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)),
        Buffer.from_numpy(np.ascontiguousarray(filters, dtype=np.float32)),
    )[0]
    return out.to_numpy()


def time_op(model, audio: np.ndarray, filters: np.ndarray, runs: int) -> tuple[float, float]:
    from max.driver import Buffer

    a = Buffer.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    f = Buffer.from_numpy(np.ascontiguousarray(filters, dtype=np.float32))
    model.execute(a, f)  # warm-up
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model.execute(a, f)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)), float(np.min(ts))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ops", type=Path, default=Path(__file__).resolve().parent.parent / "ops")
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()

    import soundfile as sf

    jfk, sr = sf.read(str(JFK), dtype="float32")
    assert sr == SR and jfk.ndim == 1, (sr, jfk.shape)
    rng = np.random.default_rng(0)
    pad30 = np.zeros(30 * SR, dtype=np.float32)
    noise30 = (rng.standard_normal(30 * SR) * 0.1).astype(np.float32)
    cases = {
        "jfk 11s + 30s pad": np.concatenate([jfk, pad30]),
        "noise 30s + 30s pad (N=960000)": np.concatenate([noise30, pad30]),
        "jfk 0.2s + 30s pad": np.concatenate([jfk[: SR // 5], pad30]),
        "silence N=960000": np.zeros(60 * SR, dtype=np.float32),
        "noise N=1000 (no pad, reflect both ends)": (rng.standard_normal(1000) * 0.3).astype(np.float32),
        "jfk 11s unpadded (N=176000)": jfk.copy(),
    }

    model = build_model(args.ops)
    ok = True
    for n_mels in (80, 128):
        filters = slaney_mel_filters(n_mels)
        print(f"--- n_mels={n_mels}")
        for name, audio in cases.items():
            got = run_op(model, audio, filters)
            want = ref_log_mel(audio, filters)
            assert got.shape == want.shape == (n_mels, len(audio) // HOP), (got.shape, want.shape)
            err = float(np.max(np.abs(got.astype(np.float64) - want)))
            flag = "OK" if err < TOL else "FAIL"
            ok &= err < TOL
            print(f"  {name:42s} shape={got.shape}  max|err|={err:.2e}  {flag}")
        med, best = time_op(model, cases["noise 30s + 30s pad (N=960000)"], filters, args.runs)
        print(f"  timing N=960000 (6000 frames): median {med * 1e3:.2f} ms, min {best * 1e3:.2f} ms over {args.runs} runs")
    print("ALL OK" if ok else "SOME FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
