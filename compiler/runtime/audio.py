"""Audio in: any file → 16 kHz mono float32, the way openai-whisper's ffmpeg call does it.

PyAV (ffmpeg's libraries) decodes and resamples everything when installed; soundfile reads wav/flac/ogg; the
standard library reads 16-bit PCM wav with no extra package at all.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_LENGTH = 30
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples in a 30 s window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames in a window


class AudioError(Exception):
    """The file cannot be read as audio; the message names it and says what to do."""


def _with_pyav(path: Path) -> np.ndarray:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioError(f"{path}: no audio stream in this file")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            chunks = []
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except AudioError:
        raise
    except Exception as e:  # PyAV raises many types (InvalidDataError, ...); all mean "not decodable"
        raise AudioError(f"{path}: cannot be decoded as audio ({type(e).__name__}); is it an audio file?") from e
    if not chunks:
        raise AudioError(f"{path}: holds no audio samples")
    return np.concatenate(chunks).astype(np.float32) / 32768.0


def _resample(x: np.ndarray, sr: int) -> np.ndarray:
    """Band-limited resampling by FFT (used only without PyAV)."""
    n = int(round(len(x) * SAMPLE_RATE / sr))
    spec = np.fft.rfft(x)
    keep = n // 2 + 1
    out = np.zeros(keep, dtype=np.complex128)
    m = min(keep, len(spec))
    out[:m] = spec[:m]
    return (np.fft.irfft(out, n) * (n / len(x))).astype(np.float32)


def _with_soundfile(path: Path) -> np.ndarray:
    import soundfile as sf

    try:
        data, sr = sf.read(str(path), dtype="int16", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError for unreadable input
        raise AudioError(f"{path}: cannot be decoded as audio ({e}); is it an audio file?") from e
    if data.size == 0:
        raise AudioError(f"{path}: holds no audio samples")
    x = data.astype(np.float32).mean(axis=1) / 32768.0
    return x if sr == SAMPLE_RATE else _resample(x, sr)


def _with_wave(path: Path) -> np.ndarray:
    try:
        with wave.open(str(path), "rb") as w:
            if w.getsampwidth() != 2 or w.getframerate() != SAMPLE_RATE:
                raise AudioError(f"{path}: only 16 kHz 16-bit wav can be read without an audio library; "
                                 "pip install av (or soundfile)")
            frames = w.readframes(w.getnframes())
            channels = w.getnchannels()
    except (wave.Error, EOFError) as e:
        raise AudioError(f"{path}: not a readable wav file ({e}); pip install av to read other formats") from e
    x = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    if x.size == 0:
        raise AudioError(f"{path}: holds no audio samples")
    return x.reshape(-1, channels).mean(axis=1)


def _check_wav_complete(path: Path) -> None:
    """A RIFF/WAVE file whose data chunk claims more bytes than the file holds was cut short (an interrupted copy
    or download): the decoders would silently return the part that is there, so it is refused instead."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk = f.read(8)
            cid, n = chunk[:4], int.from_bytes(chunk[4:8], "little")
            if cid == b"data":
                if n in (0, 0xFFFFFFFF):  # streamed wav: length not known when the header was written
                    return
                have = size - pos - 8
                if have < n:
                    raise AudioError(f"{path}: truncated wav: its header promises {n} bytes of audio but the file "
                                     f"holds {have} ({100 * have // n} %); copy or export the file again")
                return
            pos += 8 + n + (n & 1)


def load_audio(path: str | Path) -> np.ndarray:
    """Decode, downmix and resample to 16 kHz mono float32 in [-1, 1)."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: the file is empty")
    _check_wav_complete(path)
    try:
        import av  # noqa: F401
    except ImportError:
        pass
    else:
        return _with_pyav(path)
    try:
        import soundfile  # noqa: F401
    except ImportError:
        pass
    else:
        return _with_soundfile(path)
    if path.suffix.lower() == ".wav":
        return _with_wave(path)
    raise AudioError(f"{path}: reading {path.suffix or 'this'} audio needs PyAV or soundfile; pip install av")


def chunk_bounds(audio: np.ndarray, max_seconds: float = CHUNK_LENGTH, search_seconds: float = 5.0,
                 quiet_seconds: float = 0.2) -> list[tuple[int, int]]:
    """Sample ranges (start, end) that cover ``audio`` in chunks of at most ``max_seconds``, for batched long-form
    decoding. Each cut lies at the middle of the quietest ``quiet_seconds`` (mean square over 10 ms frames) among
    the last ``search_seconds`` before a chunk would exceed ``max_seconds``, so a cut rarely splits a word."""
    n = len(audio)
    limit, search = int(max_seconds * SAMPLE_RATE), int(search_seconds * SAMPLE_RATE)
    if n <= limit:
        return [(0, n)] if n else []
    width = max(1, int(quiet_seconds * SAMPLE_RATE) // HOP_LENGTH)
    bounds, start = [], 0
    while n - start > limit:
        end = start + limit
        lo = max(start + HOP_LENGTH, end - search)  # only the search span is read: a long file costs little
        frames = (end - lo) // HOP_LENGTH
        cut = end
        if frames > width:
            seg = np.asarray(audio[lo:lo + frames * HOP_LENGTH], dtype=np.float32)
            power = np.square(seg).reshape(frames, HOP_LENGTH).mean(axis=1, dtype=np.float64)
            csum = np.concatenate([[0.0], np.cumsum(power)])
            quiet = csum[width:] - csum[:-width]  # quiet[i]: energy of frames i .. i + width - 1, inside the chunk
            cut = lo + (int(np.argmin(quiet)) + width // 2) * HOP_LENGTH
        bounds.append((start, cut))
        start = cut
    bounds.append((start, n))
    return bounds
