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


def round_to(x: np.ndarray, dtype: str | None) -> np.ndarray:
    """x rounded to ``dtype`` ("float32", "float16", "bfloat16"; None/"float64": unchanged) and back to float64:
    how the precision emulation (compiler.calibrate) models a tensor stored or computed in that dtype."""
    if dtype in (None, "float64"):
        return x
    if dtype == "float32":
        return np.asarray(x, dtype=np.float32).astype(np.float64)
    if dtype == "float16":
        with np.errstate(over="ignore"):
            return np.asarray(x, dtype=np.float16).astype(np.float64)
    if dtype == "bfloat16":  # round to nearest even on the top 16 bits of the float32 pattern
        bits = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
        bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
        return bits.view(np.float32).astype(np.float64)
    raise ValueError(f"round_to: unknown dtype {dtype!r}")


def _erf(x: np.ndarray) -> np.ndarray:
    """math.erf elementwise (numpy has no erf): map over a list, ~1.8x faster than np.frompyfunc's object array."""
    return np.fromiter(map(math.erf, x.ravel().tolist()), np.float64, x.size).reshape(x.shape)


def gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def conv1d(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int) -> np.ndarray:
    """x (B, Cin, T), w (Cout, Cin, 3), padding 1."""
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1)))
    t_out = (x.shape[-1] + 2 - 3) // stride + 1
    cols = np.stack([xp[:, :, k:k + stride * (t_out - 1) + 1:stride] for k in range(3)], axis=-1)  # B,Cin,T,3
    # a matmul over (Cin, k), not einsum's unoptimized loop: ~20x faster on tiny's convs, same sums to 2e-15 relative
    return np.tensordot(cols, w, axes=([1, 3], [1, 2])).transpose(0, 2, 1) + b[None, :, None]


class NumpyWhisper:
    """openai/whisper's model in float64. With ``plan`` (a precision.PrecisionPlan) it also emulates that plan:
    weights, matmul inputs/outputs, the residual stream, layer-norm inputs, the KV cache and the logits' inputs are
    rounded to the plan's dtypes where the compiled graphs store or compute them (accumulation stays float64, like the
    fp32 accumulators of the kernels; softmax stays exact, as in the Mojo attention op)."""

    def __init__(self, ck: Checkpoint, dtype=np.float64, plan=None):
        self.dims = ck.dims
        self.plan = plan
        self.w = {k: v.astype(dtype) for k, v in ck.weights.items()}
        if plan is not None:
            self.w = {k: round_to(v, plan.weights) for k, v in self.w.items()}
        self.alignment_heads = ck.alignment_heads()[0]

    def _r(self, x, cls: str):
        """x as the plan stores op class ``cls`` (identity without a plan)."""
        return x if self.plan is None else round_to(x, getattr(self.plan, cls))

    # --- openai/whisper model.py, block by block ---
    def _linear(self, x, name, bias=True):
        y = self._r(x, "matmul") @ self._r(self.w[name + ".weight"], "matmul").T
        return self._r(y + self.w[name + ".bias"] if bias else y, "matmul")

    def _ln(self, x, name):
        return self._r(layer_norm(self._r(x, "layer_norm"), self.w[name + ".weight"], self.w[name + ".bias"]), "matmul")

    def _heads(self, x, n_head):
        b, t, d = x.shape
        return x.reshape(b, t, n_head, d // n_head).transpose(0, 2, 1, 3)

    def _qkv_attention(self, q, k, v, n_head, causal_offset=None, scores=None):
        dh = q.shape[-1] // n_head
        q, k, v = self._heads(q, n_head), self._heads(k, n_head), self._heads(v, n_head)
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(dh)
        if scores is not None:  # openai's qk, before the softmax (timing.find_alignment's hooks)
            scores.append(s)
        if causal_offset is not None:
            tq, tk = s.shape[-2:]
            s = np.where(np.arange(tk)[None, :] <= np.arange(tq)[:, None] + causal_offset, s, -np.inf)
        s = s - s.max(-1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(-1, keepdims=True)
        o = self._r(p @ v, "matmul")
        return o.transpose(0, 2, 1, 3).reshape(o.shape[0], o.shape[2], -1)

    def _mlp(self, x, p):
        return self._linear(self._r(gelu(self._linear(x, p + ".mlp.0")), "matmul"), p + ".mlp.2")

    def encode(self, mel: np.ndarray) -> dict:
        """mel (B, n_mels, 3000) → audio features (B, 1500, d) plus each decoder layer's cross-attention K/V."""
        w, d, r = self.w, self.dims, self._r
        cv = "conv" if self.plan is not None and hasattr(self.plan, "conv") else "matmul"
        x = r(gelu(conv1d(r(mel.astype(np.float64), cv), r(w["encoder.conv1.weight"], cv), w["encoder.conv1.bias"],
                          1)), cv)
        x = r(gelu(conv1d(x, r(w["encoder.conv2.weight"], cv), w["encoder.conv2.bias"], 2)), cv).transpose(0, 2, 1)
        x = r(r(x, "residual") + w["encoder.positional_embedding"][: x.shape[1]], "residual")
        for i in range(d.n_audio_layer):
            p = f"encoder.blocks.{i}"
            h = self._ln(x, p + ".attn_ln")
            x = r(x + self._linear(self._qkv_attention(self._linear(h, p + ".attn.query"),
                                                       self._linear(h, p + ".attn.key", bias=False),
                                                       self._linear(h, p + ".attn.value"), d.n_audio_head),
                                   p + ".attn.out"), "residual")
            x = r(x + self._mlp(self._ln(x, p + ".mlp_ln"), p), "residual")
        xa = self._ln(x, "encoder.ln_post")
        cross = [(r(self._linear(xa, f"decoder.blocks.{i}.cross_attn.key", bias=False), "kv_cache"),
                  r(self._linear(xa, f"decoder.blocks.{i}.cross_attn.value"), "kv_cache"))
                 for i in range(d.n_text_layer)]
        return {"xa": xa, "cross": cross}

    def decode(self, tokens: np.ndarray, audio: dict, cache: list | None, scores: list | None = None,
               taps: list | None = None):
        """tokens (B, T) new tokens; cache: per layer (K, V) of the earlier tokens. Returns logits (B, T, V).
        ``scores``: a list that gets each layer's cross-attention scores (B, H, T, n_audio) before the softmax;
        ``taps``: one that gets the residual stream after the embeddings and after each sub-block (as the graph's
        ``taps``)."""
        tap = taps.append if taps is not None else (lambda v: v)
        w, d, r = self.w, self.dims, self._r
        past = 0 if cache is None else cache[0][0].shape[1]
        x = r(w["decoder.token_embedding.weight"][tokens] + w["decoder.positional_embedding"][past:past + tokens.shape[1]],
              "residual")
        tap(x)
        new_cache = []
        for i in range(d.n_text_layer):
            p = f"decoder.blocks.{i}"
            h = self._ln(x, p + ".attn_ln")
            k = r(self._linear(h, p + ".attn.key", bias=False), "kv_cache")
            v = r(self._linear(h, p + ".attn.value"), "kv_cache")
            if cache is not None:
                k, v = np.concatenate([cache[i][0], k], 1), np.concatenate([cache[i][1], v], 1)
            new_cache.append((k, v))
            q = r(self._linear(h, p + ".attn.query"), "kv_cache")  # the graphs attend in the cache's dtype
            x = r(x + self._linear(self._qkv_attention(q, k, v, d.n_text_head, causal_offset=past), p + ".attn.out"),
                  "residual")
            tap(x)
            h = self._ln(x, p + ".cross_attn_ln")
            ck, cv = audio["cross"][i]
            x = r(x + self._linear(self._qkv_attention(self._linear(h, p + ".cross_attn.query"), ck, cv,
                                                       d.n_text_head, scores=scores), p + ".cross_attn.out"),
                  "residual")
            tap(x)
            x = r(x + self._mlp(self._ln(x, p + ".mlp_ln"), p), "residual")
            tap(x)
        x = self._ln(x, "decoder.ln")
        return r(x, "logits") @ r(w["decoder.token_embedding.weight"], "logits").T, new_cache

    # --- beam search and word timestamps: the compiled model's interface (runtime.model.Whisper) ---
    def repeat_audio(self, audio: dict, n: int) -> dict:
        return {"cross": [(np.repeat(k, n, axis=0), np.repeat(v, n, axis=0)) for k, v in audio["cross"]]}

    def reorder_cache(self, cache: list, ids) -> list:
        ids = np.asarray(ids, dtype=np.int64)
        return [(k[ids], v[ids]) for k, v in cache]

    def align(self, tokens, audio: dict):
        """Logits (T, V) and the alignment heads' cross-attention scores (heads, T, n_audio) for one sequence."""
        scores: list = []
        logits, _ = self.decode(np.asarray(tokens, dtype=np.int64).reshape(1, -1), audio, None, scores=scores)
        return logits[0], np.stack([scores[layer][0, head] for layer, head in self.alignment_heads])
