"""The numpy reference: Whisper's log-mel and whole model in float64, small and slow on purpose.

It reads block by block like openai/whisper's model.py and implements the same ``encode``/``decode`` interface as
the compiled artifact, so ``runtime.decoding`` drives both and the tests compare them stage by stage.
"""

from __future__ import annotations

import math

import numpy as np

from .checkpoint import Checkpoint
from .runtime.audio import HOP_LENGTH, N_FFT
from .runtime.mel import mel_filters

_erf = np.frompyfunc(math.erf, 1, 1)


def log_mel_spectrogram(audio: np.ndarray, n_mels: int, padding: int = 0) -> np.ndarray:
    """openai/whisper's audio.log_mel_spectrogram in float64: (n_mels, (len(audio) + padding) // 160)."""
    x = np.pad(np.asarray(audio, dtype=np.float64), (0, padding))
    x = np.pad(x, (N_FFT // 2, N_FFT // 2), mode="reflect")  # torch.stft(center=True)
    n_frames = 1 + (len(x) - N_FFT) // HOP_LENGTH
    frames = np.lib.stride_tricks.as_strided(x, (n_frames, N_FFT), (x.strides[0] * HOP_LENGTH, x.strides[0]))
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic Hann
    power = np.abs(np.fft.rfft(frames * window, axis=-1)[:-1]) ** 2  # the last frame is dropped
    mel = mel_filters(n_mels).astype(np.float64) @ power.T
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


def gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)).astype(np.float64))


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def conv1d(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int) -> np.ndarray:
    """x (B, Cin, T), w (Cout, Cin, 3), padding 1."""
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1)))
    t_out = (x.shape[-1] + 2 - 3) // stride + 1
    cols = np.stack([xp[:, :, k:k + stride * (t_out - 1) + 1:stride] for k in range(3)], axis=-1)  # B,Cin,T,3
    return np.einsum("bctk,ock->bot", cols, w) + b[None, :, None]


class NumpyWhisper:
    def __init__(self, ck: Checkpoint, dtype=np.float64):
        self.dims = ck.dims
        self.w = {k: v.astype(dtype) for k, v in ck.weights.items()}

    # --- openai/whisper model.py, block by block ---
    def _linear(self, x, name, bias=True):
        y = x @ self.w[name + ".weight"].T
        return y + self.w[name + ".bias"] if bias else y

    def _heads(self, x, n_head):
        b, t, d = x.shape
        return x.reshape(b, t, n_head, d // n_head).transpose(0, 2, 1, 3)

    def _qkv_attention(self, q, k, v, n_head, causal_offset=None):
        dh = q.shape[-1] // n_head
        q, k, v = self._heads(q, n_head), self._heads(k, n_head), self._heads(v, n_head)
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(dh)
        if causal_offset is not None:
            tq, tk = s.shape[-2:]
            s = np.where(np.arange(tk)[None, :] <= np.arange(tq)[:, None] + causal_offset, s, -np.inf)
        s = s - s.max(-1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(-1, keepdims=True)
        o = p @ v
        return o.transpose(0, 2, 1, 3).reshape(o.shape[0], o.shape[2], -1)

    def _mlp(self, x, p):
        return self._linear(gelu(self._linear(x, p + ".mlp.0")), p + ".mlp.2")

    def encode(self, mel: np.ndarray) -> dict:
        """mel (B, n_mels, 3000) → audio features (B, 1500, d) plus each decoder layer's cross-attention K/V."""
        w, d = self.w, self.dims
        x = gelu(conv1d(mel.astype(np.float64), w["encoder.conv1.weight"], w["encoder.conv1.bias"], 1))
        x = gelu(conv1d(x, w["encoder.conv2.weight"], w["encoder.conv2.bias"], 2)).transpose(0, 2, 1)
        x = x + w["encoder.positional_embedding"][: x.shape[1]]
        for i in range(d.n_audio_layer):
            p = f"encoder.blocks.{i}"
            h = layer_norm(x, w[p + ".attn_ln.weight"], w[p + ".attn_ln.bias"])
            x = x + self._linear(self._qkv_attention(self._linear(h, p + ".attn.query"),
                                                     self._linear(h, p + ".attn.key", bias=False),
                                                     self._linear(h, p + ".attn.value"), d.n_audio_head),
                                 p + ".attn.out")
            x = x + self._mlp(layer_norm(x, w[p + ".mlp_ln.weight"], w[p + ".mlp_ln.bias"]), p)
        xa = layer_norm(x, w["encoder.ln_post.weight"], w["encoder.ln_post.bias"])
        cross = [(self._linear(xa, f"decoder.blocks.{i}.cross_attn.key", bias=False),
                  self._linear(xa, f"decoder.blocks.{i}.cross_attn.value")) for i in range(d.n_text_layer)]
        return {"xa": xa, "cross": cross}

    def decode(self, tokens: np.ndarray, audio: dict, cache: list | None):
        """tokens (B, T) new tokens; cache: per layer (K, V) of the earlier tokens. Returns logits (B, T, V)."""
        w, d = self.w, self.dims
        past = 0 if cache is None else cache[0][0].shape[1]
        x = w["decoder.token_embedding.weight"][tokens] + w["decoder.positional_embedding"][past:past + tokens.shape[1]]
        new_cache = []
        for i in range(d.n_text_layer):
            p = f"decoder.blocks.{i}"
            h = layer_norm(x, w[p + ".attn_ln.weight"], w[p + ".attn_ln.bias"])
            k, v = self._linear(h, p + ".attn.key", bias=False), self._linear(h, p + ".attn.value")
            if cache is not None:
                k, v = np.concatenate([cache[i][0], k], 1), np.concatenate([cache[i][1], v], 1)
            new_cache.append((k, v))
            x = x + self._linear(self._qkv_attention(self._linear(h, p + ".attn.query"), k, v, d.n_text_head,
                                                     causal_offset=past), p + ".attn.out")
            h = layer_norm(x, w[p + ".cross_attn_ln.weight"], w[p + ".cross_attn_ln.bias"])
            ck, cv = audio["cross"][i]
            x = x + self._linear(self._qkv_attention(self._linear(h, p + ".cross_attn.query"), ck, cv,
                                                     d.n_text_head), p + ".cross_attn.out")
            x = x + self._mlp(layer_norm(x, w[p + ".mlp_ln.weight"], w[p + ".mlp_ln.bias"]), p)
        x = layer_norm(x, w["decoder.ln.weight"], w["decoder.ln.bias"])
        return x @ w["decoder.token_embedding.weight"].T, new_cache
