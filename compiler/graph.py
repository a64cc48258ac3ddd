"""MAX graphs for Whisper, block by block against openai/whisper's model.py.

The graphs (two Modules, one .mef each: ``MEF_FILES``):
  ``mel``      audio (samples,) → log-mel (n_mels, samples // 160)             [Mojo op ``mwc_log_mel``]
  ``encoder``  mel (batch, n_mels, frames) → audio features (batch, frames/2, d), and every decoder layer's
               cross-attention K and V (layers, batch, heads, frames/2, 64), computed once per window
  ``decoder``  tokens (batch, t) + self-attention cache (layers, batch, heads, past, 64) + cross K/V + pick rules
               → logits (batch, t, vocab), the cache grown to past + t, and the greedy pick (see ``pick``)
One decoder graph serves the prompt (t tokens, past 0) and each step (t = 1): the cache is a graph input and
output whose ``past`` dim is symbolic (design A of the KV-cache notes: verified exact on CPU).
The decoder also picks the greedy token itself (``pick``): the logit rules arrive as a static suppress bias (V,)
and a few integers per row (see ``PICK_RULES``), so a greedy step returns the next token ids (fed straight back
as the next ``tokens``), their log-probs and the no-speech log-prob; the (batch, t, vocab) logits stay an output
for sampling, beam search and parity, but a greedy loop never copies them to the host.
  ``step``     the greedy decoder with a fixed-size KV cache and token history it updates in place (``build_step``)
  ``kv_gather``, ``alignment``  beam search's row gather, word timestamps' cross-attention scores (``AuxGraphs``)
Attention runs as the Mojo op ``mwc_attention`` (``attention``). The encoder's self-attention (1500 × 1500, not
causal) can run instead as MAX's matmul + softmax ("max": two batched matmuls, tensor cores on a GPU) or, GPU only,
MAX's flash attention kernel ("flash", ``mo.mha.no_cache``); the decoder's attention (over the cache, and
cross-attention) is always the Mojo op.
"""

from __future__ import annotations

from pathlib import Path

from max.dtype import DType
from max.graph import BufferType, DeviceRef, Graph, Module, StaticDim, TensorType, TensorValue, Weight, ops

from .checkpoint import ModelDimensions, default_alignment_heads
from .precision import PrecisionPlan, quant_axis, quantized_weight
from .runtime.decoding import OPEN_END, PICK_RULES  # the rules' columns, as the runtime fills them

ATTENTION_IMPLS = ("mojo", "max", "flash", "blas")
NEG = -1e30  # "-inf" for masked logits: finite, so a fully masked range still has a defined log-sum-exp
CROSS_SPLIT_KEYS = 128  # ops/attention.mojo SPLIT_KEYS: keys per block of the split cross-attention step
CROSS_PART = 66  # ops/attention.mojo PART: floats per block's partial state (64 columns, max, sum)
PICK_BLOCKS = 32  # blocks per row of mwc_pick's pass over the vocabulary (ops/pick.mojo)


def _dtype(name: str) -> DType:
    return {"float32": DType.float32, "float16": DType.float16, "bfloat16": DType.bfloat16}[name]


class WhisperGraphs:
    def __init__(self, dims: ModelDimensions, plan: PrecisionPlan, device: DeviceRef, attention: str):
        if attention not in ATTENTION_IMPLS:
            raise ValueError(f"attention must be one of {ATTENTION_IMPLS}")
        self.dims, self.plan, self.device, self.attention_impl = dims, plan, device, attention
        self.taps: list[TensorValue] | None = None  # a probe's list: the decoder's residual stream as extra outputs
        self.wdtype = _dtype(plan.weights)
        self.act = _dtype(plan.matmul)  # matmul inputs and outputs
        self.res = _dtype(plan.residual)  # the residual stream
        # MAX 26.7's GPU conv2d is a naive kernel (27 ms for conv1 of one tiny.en window on an H200): on the GPU the
        # k=3 convolutions run as im2col + matmul instead
        self.conv_impl = "conv2d" if device == DeviceRef.CPU() else "matmul"
        self.conv_dtype = _dtype(plan.conv)  # fp32 for bf16 on the CPU: see precision.plan_for
        self.fused_pick = device != DeviceRef.CPU()  # the greedy pick as one Mojo kernel (ops/pick.mojo), GPU only
        self.graph: Graph | None = None

    def extensions(self, ops_dir: Path, decoder: bool = False) -> list[Path]:
        return [ops_dir] if decoder or self.attention_impl in ("mojo", "blas") else []

    # --- helpers -------------------------------------------------------------------------------------------------
    def w(self, name: str, shape: tuple[int, ...], dtype: DType | None = None) -> TensorValue:
        assert self.graph is not None
        if self.plan.quantized == "int8" and quantized_weight(name, shape):
            return self.dequantized(name, shape)
        return self.graph.add_weight(Weight(name, dtype or self.wdtype, shape, self.device))

    def dequantized(self, name: str, shape: tuple[int, ...]) -> TensorValue:
        """int8 weight × its per-output-channel fp32 scale, in the plan's weight dtype (int8 plan: weight-only)."""
        assert self.graph is not None
        q = self.graph.add_weight(Weight(name, DType.int8, shape, self.device))
        axis = quant_axis(name, len(shape))
        scale = self.graph.add_weight(Weight(name + ".scale", DType.float32, (shape[axis],), self.device))
        if axis != len(shape) - 1:
            scale = ops.reshape(scale, [shape[axis]] + [1] * (len(shape) - 1 - axis))
        return self.cast(ops.cast(q, DType.float32) * scale, self.wdtype)

    def cast(self, x: TensorValue, dtype: DType) -> TensorValue:
        return x if x.dtype == dtype else ops.cast(x, dtype)

    def wt(self, name: str, shape: tuple[int, ...], dtype: DType) -> TensorValue:
        """A weight in the dtype an op wants (a cast in the graph when the plan stores it otherwise)."""
        return self.cast(self.w(name, shape), dtype)

    def linear(self, x: TensorValue, name: str, n_out: int, n_in: int, bias: bool = True) -> TensorValue:
        """x @ W^T + b in the plan's matmul dtype."""
        y = self.cast(x, self.act) @ self.wt(name + ".weight", (n_out, n_in), self.act).T
        return y + self.wt(name + ".bias", (n_out,), self.act) if bias else y

    def layer_norm(self, x: TensorValue, name: str, n: int) -> TensorValue:
        """Statistics in the plan's layer-norm dtype; the result feeds matmuls, so it leaves in their dtype."""
        dt = _dtype(self.plan.layer_norm)
        y = ops.layer_norm(self.cast(x, dt), self.wt(name + ".weight", (n,), dt), self.wt(name + ".bias", (n,), dt),
                           1e-5)
        return self.cast(y, self.act)

    def heads(self, x: TensorValue, n_head: int) -> TensorValue:
        """(B, T, H*64) → (B, H, T, 64)."""
        b, t, d = x.shape
        return ops.permute(ops.reshape(x, [b, t, n_head, int(d) // n_head]), [0, 2, 1, 3])

    def merge(self, x: TensorValue) -> TensorValue:
        """(B, H, T, 64) → (B, T, H*64)."""
        b, h, t, dh = x.shape
        return ops.reshape(ops.permute(x, [0, 2, 1, 3]), [b, t, int(h) * int(dh)])

    def attention(self, q: TensorValue, k: TensorValue, v: TensorValue, causal: bool = False,
                  impl: str = "mojo") -> TensorValue:
        """softmax(q k^T / sqrt(64) [+ causal mask]) v on (B, H, T, 64) tensors: the Mojo op, or (not causal) with
        ``impl`` "max" MAX's matmul + softmax, with "blas" (GPU) two cuBLAS GEMMs around a Mojo row softmax
        (``mwc_attention_blas``).

        Causal (decoder self-attention over the cache): key j is visible to query i iff j <= i + (Tk - Tq).
        MAX 26.7 miscompiles softmax over a where()-masked score tensor (NaNs or the mask dropped; seen with -inf,
        finite and additive masks), so causal attention is always the Mojo op.
        """
        out_t = [TensorType(q.dtype, q.shape, self.device)]
        if causal or impl not in ("max", "blas"):
            return ops.custom("mwc_attention", self.device, [q, k, v], out_t, parameters={"causal": causal})[0].tensor
        if impl == "blas":
            return ops.custom("mwc_attention_blas", self.device, [q, k, v], out_t)[0].tensor
        scale = 1.0 / float(int(q.shape[-1])) ** 0.5
        s = self.cast((q @ ops.permute(k, [0, 1, 3, 2])) * scale, _dtype(self.plan.softmax))
        return self.cast(ops.softmax(s), v.dtype) @ v

    def cross_attention(self, x: TensorValue, cross_k: TensorValue, cross_v: TensorValue, i: int) -> TensorValue:
        """The projected queries x (B, T, H*64) against layer ``i`` of the stacked cross K/V (layers, B, H, n_audio,
        64) → (B, T, H*64). The Mojo op reads the layer where it lies (sliced in the graph, ``cross_k[i]``, MAX copied
        every layer's K and V on every decoder step) and takes q and writes its output as (B, T, H, 64), so the
        heads need no transposes around it. A plan whose KV cache is wider than the matmuls casts the slice.

        The op's second output is the GPU's flash-decoding scratch: a step's query (T = 1) splits the n_audio keys
        over S blocks of CROSS_SPLIT_KEYS, each leaving (64 unnormalized columns, max, sum) for a combine kernel —
        B·H·S blocks instead of B·H (tiny.en at batch 1: 72 instead of 6 on a 132-SM H200). The CPU takes S = 1
        (unused)."""
        h = self.dims.n_text_head
        if cross_k.dtype != x.dtype:
            q = self.heads(x, h)
            return self.merge(self.attention(q, self.cast(cross_k[i], q.dtype), self.cast(cross_v[i], q.dtype)))
        b, t, n = x.shape
        q = ops.reshape(x, [b, t, h, int(n) // h])
        splits = 1 if self.device == DeviceRef.CPU() else -(-self.dims.n_audio_ctx // CROSS_SPLIT_KEYS)
        out_t = [TensorType(q.dtype, q.shape, self.device),
                 TensorType(DType.float32, [b, h, splits, CROSS_PART], self.device)]
        o = ops.custom("mwc_layer_attention", self.device, [q, cross_k, cross_v], out_t,
                       parameters={"layer": i, "bthd": True})[0].tensor
        return ops.reshape(o, [b, t, n])

    def conv3(self, x: TensorValue, name: str, n_in: int, n_out: int, stride: int) -> TensorValue:
        """openai's Conv1d(k=3, padding=1, stride) + GELU on time-major (B, T, n_in) → (B, T', n_out)."""
        w = self.wt(name + ".weight", (1, 3, n_in, n_out), self.conv_dtype)
        b = self.wt(name + ".bias", (n_out,), self.conv_dtype)
        x = self.cast(x, self.conv_dtype)
        if self.conv_impl == "conv2d":  # (B, 1, T, C) NHWC with RSCF filters
            y = ops.conv2d(ops.unsqueeze(x, 1), w, stride=(1, stride), padding=(0, 0, 1, 1), bias=b)
            return ops.gelu(ops.squeeze(y, 1))
        t = x.shape[1]
        t_end = ops.shape_to_tensor([t]).reshape([])
        xp = ops.pad(x, [0, 0, 1, 1, 0, 0])  # (B, T + 2, n_in)
        cols = ops.concat([ops.slice_tensor(xp, [slice(None), (slice(k, t_end + k), t), slice(None)])
                           for k in range(3)], axis=-1)  # (B, T, 3 * n_in): taps t-1, t, t+1
        y = cols @ ops.reshape(w, [3 * n_in, n_out]) + b
        if stride == 2:  # the stride-1 result at even t
            y = ops.slice_tensor(y, [slice(None), (slice(0, t_end, 2), (t + 1) // 2), slice(None)])
        return ops.gelu(y)

    def mlp(self, x: TensorValue, p: str, n: int) -> TensorValue:
        h = ops.gelu(self.linear(x, p + ".mlp.0", 4 * n, n))
        return self.linear(h, p + ".mlp.2", n, 4 * n)

    def self_attention(self, x: TensorValue, p: str, n: int, n_head: int, cache: tuple | None = None):
        """openai's MultiHeadAttention with fused QKV; with a cache, K/V are appended to the past ones."""
        q, k, v = ops.split(self.linear(x, p + ".attn.qkv", 3 * n, n), [n, n, n], axis=-1)
        if cache is None and self.attention_impl == "flash":  # the encoder: (B, T, H, 64) in and out, no permutes
            from max.nn.attention import MHAMaskVariant
            from max.nn.kernels import flash_attention_gpu

            b, t, _ = q.shape
            bthd = [b, t, n_head, n // n_head]
            o = flash_attention_gpu(ops.reshape(q, bthd), ops.reshape(k, bthd), ops.reshape(v, bthd),
                                    mask_variant=MHAMaskVariant.NULL_MASK, scale=(n // n_head) ** -0.5)
            return self.linear(ops.reshape(o, [b, t, n]), p + ".attn.out", n, n), (None, None)
        q, k, v = self.heads(q, n_head), self.heads(k, n_head), self.heads(v, n_head)
        if cache is not None:  # attention in the cache's dtype, as the step graph does (CPU fp16: fp32 compute)
            q, k, v = (self.cast(z, cache[0].dtype) for z in (q, k, v))
            k = ops.concat([cache[0], k], axis=2)
            v = ops.concat([cache[1], v], axis=2)
        encoder = cache is None
        a = self.attention(q, k, v, causal=not encoder, impl=self.attention_impl if encoder else "mojo")
        out = self.linear(self.merge(a), p + ".attn.out", n, n)
        return out, (k, v)

    @staticmethod
    def rule_columns(rules: TensorValue) -> list[TensorValue]:
        """The ``rules`` input (batch, PICK_RULES) as its columns, (batch, 1) each."""
        return [ops.slice_tensor(rules, [slice(None), slice(k, k + 1)]) for k in range(PICK_RULES)]

    def step_rules(self, hist: TensorValue, pos: TensorValue, last: TensorValue, rules: TensorValue) -> TensorValue:
        """A step's pick rules made in the graph from the rows' token history, so that steps can follow each other on
        the device with no host in between: openai's ApplyTimestampRules (decoding.ApplyTimestampRules.intervals)
        as intervals 0 and 1, from ``hist`` (batch, n) int64, which holds each row's tokens up to the one at
        ``last`` (1,), the last fed. Intervals 2 and 3 and the other columns are the host's; on the prompt's call
        (``pos`` 0) the host's rules stand as given (suppress-blank and the initial timestamp rules apply only there).
        """
        i64 = DType.int64
        n = hist.shape[1]
        col = self.rule_columns(rules)
        on, tb, sb, eot = col[8] > 0, col[11], col[12], col[13]
        iota = ops.unsqueeze(ops.range(0, n, 1, out_dim=n, dtype=i64, device=self.device), 0)  # (1, n)
        last = ops.unsqueeze(last, 0)  # (1, 1)

        def at(j):  # (B, 1): each row's token at position j (B, 1) or (1, 1); -1 where there is none
            return ops.max(ops.where(iota == j, hist, ops.constant(-1, i64, self.device)), axis=-1)

        zero = ops.constant(0, i64, self.device)
        last_ts = (last >= sb) & (at(last) >= tb)  # the sample's last token is a timestamp
        pen_ts = (last - 1 < sb) | (at(last - 1) >= tb)  # fewer than two sampled tokens, or the one before is one
        a_on = on & last_ts  # two timestamps in a row: text must follow; one: no normal text token
        a_lo = ops.where(a_on & pen_ts, tb, zero)
        a_hi = ops.where(a_on, ops.where(pen_ts, ops.constant(OPEN_END, i64, self.device), eot), zero)
        ts_at = ops.where((iota >= sb) & (iota <= last) & (hist >= tb), iota, ops.constant(-1, i64, self.device))
        last_ts_pos = ops.max(ts_at, axis=-1)  # the sample's last timestamp, -1 if none
        b_on = on & (last_ts_pos >= 0)  # timestamps never decrease, and a segment is never empty
        b_hi = at(last_ts_pos) + ops.where(last_ts & ~pen_ts, zero, ops.constant(1, i64, self.device))
        made = ops.concat([a_lo, a_hi, ops.where(b_on, tb, zero), ops.where(b_on, b_hi, zero), *col[4:]], axis=1)
        return ops.where(ops.unsqueeze(pos, 0) == 0, rules, made)

    def pick(self, logits: TensorValue, bias: TensorValue, rules: TensorValue):
        """The greedy choice on the last position: openai's logit filters (decoding.py) as masks, then argmax.

        Returns the next ids (B, 1) int64, their log-probs (B, 1) and log p(<|nospeech|>) at the SOT row (B, 1).
        On a GPU the same arithmetic is two Mojo kernels (ops/pick.mojo ``mwc_pick``: one pass over the vocabulary,
        PICK_BLOCKS blocks per row, then one warp per row merges their states) instead of about eight reductions,
        each a kernel launch of a few µs in every decoder step.
        """
        if self.fused_pick:
            b = logits.shape[0]
            out_t = [TensorType(DType.int64, [b, 1], self.device), TensorType(DType.float32, [b, 1], self.device),
                     TensorType(DType.float32, [b, 1], self.device),
                     TensorType(DType.float32, [b, PICK_BLOCKS, 8], self.device)]  # the first kernel's states
            return tuple(x.tensor for x in ops.custom("mwc_pick", self.device, [logits, bias, rules], out_t)[:3])
        v = self.dims.n_vocab
        i64, f32 = DType.int64, DType.float32
        t_end = ops.shape_to_tensor([logits.shape[1]]).reshape([])
        last = ops.squeeze(ops.slice_tensor(logits, [slice(None), (slice(t_end - 1, t_end), 1), slice(None)]), 1)
        col = self.rule_columns(rules)
        iota = ops.unsqueeze(ops.range(0, v, 1, out_dim=v, dtype=i64, device=self.device), 0)  # (1, V)
        neg = ops.constant(NEG, f32, self.device)
        mask = None
        for k in range(4):
            m = (iota >= col[2 * k]) & (iota < col[2 * k + 1])
            mask = m if mask is None else mask | m
        z = ops.where(mask, neg, last + ops.unsqueeze(bias, 0))

        def lse(x, mx):
            return mx + ops.log(ops.sum(ops.exp(x - mx), axis=-1))

        is_ts = iota >= col[11]
        ts_z = ops.where(is_ts, z, neg)
        ts_lse = lse(ts_z, ops.max(ts_z, axis=-1))
        text_max = ops.max(ops.where(is_ts, neg, z), axis=-1)
        take_ts = (col[8] > 0) & (ts_lse > text_max)  # the timestamps together beat every text token
        z = ops.where(take_ts & ~is_ts, neg, z)
        top = ops.max(z, axis=-1)
        token = ops.argmax(z, axis=-1)  # (B, 1)
        logprob = top - lse(z, top)
        sot = ops.reshape(ops.slice_tensor(rules, [slice(0, 1), slice(9, 10)]), [1])  # must be < t (0 in steps)
        row = ops.squeeze(ops.gather(logits, sot, axis=1), 1)  # (B, V) at the SOT position
        nid = ops.reshape(ops.slice_tensor(rules, [slice(0, 1), slice(10, 11)]), [1])
        nospeech = ops.gather(row, nid, axis=1) - lse(row, ops.max(row, axis=-1))
        return token, logprob, nospeech

    # --- the three graphs ----------------------------------------------------------------------------------------
    def build_mel(self, module: Module, ops_dir: Path) -> Graph:
        d = self.dims
        audio_t = TensorType(DType.float32, ["samples"], self.device)
        with Graph("mel", input_types=[audio_t], module=module, custom_extensions=[ops_dir]) as g:
            self.graph = g
            audio = g.inputs[0].tensor
            filters = self.w("mel_filters", (d.n_mels, 201), _dtype(self.plan.mel))  # stored in the mel's dtype
            out_t = TensorType(DType.float32, [d.n_mels, audio.shape[0] // 160], self.device)
            g.output(ops.custom("mwc_log_mel", self.device, [audio, filters], [out_t])[0].tensor)
        return g

    def build_encoder(self, module: Module, ops_dir: Path) -> Graph:
        d, n = self.dims, self.dims.n_audio_state
        mel_t = TensorType(DType.float32, ["batch", d.n_mels, "frames"], self.device)
        with Graph("encoder", input_types=[mel_t], module=module, custom_extensions=self.extensions(ops_dir)) as g:
            self.graph = g
            x = self.cast(g.inputs[0].tensor, self.act)
            x = ops.permute(x, [0, 2, 1])  # (B, frames, n_mels)
            x = self.conv3(x, "encoder.conv1", d.n_mels, n, 1)
            x = self.cast(self.conv3(x, "encoder.conv2", n, n, 2), self.res)  # (B, T, n)
            t = x.shape[1]
            pos = self.wt("encoder.positional_embedding", (d.n_audio_ctx, n), self.res)
            x = x + ops.slice_tensor(pos, [(slice(0, ops.shape_to_tensor([t]).reshape([])), t)])
            for i in range(d.n_audio_layer):  # ResidualAttentionBlock
                p = f"encoder.blocks.{i}"
                x = x + self.cast(self.self_attention(self.layer_norm(x, p + ".attn_ln", n), p, n,
                                                      d.n_audio_head)[0], self.res)
                x = x + self.cast(self.mlp(self.layer_norm(x, p + ".mlp_ln", n), p, n), self.res)
            xa = self.layer_norm(x, "encoder.ln_post", n)
            ks, vs = [], []
            m = d.n_text_state
            for i in range(d.n_text_layer):  # each decoder layer's cross-attention K/V, once per window
                k, v = ops.split(self.linear(xa, f"decoder.blocks.{i}.cross_attn.kv", 2 * m, n), [m, m], axis=-1)
                ks.append(self.heads(k, d.n_text_head))
                vs.append(self.heads(v, d.n_text_head))
            kv = _dtype(self.plan.kv_cache)
            g.output(self.cast(xa, DType.float32), self.cast(ops.stack(ks), kv), self.cast(ops.stack(vs), kv))
        return g

    def decoder_body(self, tokens: TensorValue, positions: TensorValue, cross_k: TensorValue, cross_v: TensorValue,
                     self_attn) -> TensorValue:
        """openai's TextDecoder up to the logits: token + positional embedding, the blocks (self-attention through
        ``self_attn(layer, h)``, cross-attention, MLP), ln, tied vocabulary projection → fp32 logits."""
        d, n = self.dims, self.dims.n_text_state
        emb = self.w("decoder.token_embedding.weight", (d.n_vocab, n))
        pos = self.w("decoder.positional_embedding", (d.n_text_ctx, n))
        x = self.cast(ops.gather(emb, tokens, axis=0), self.res)
        x = x + self.cast(ops.gather(pos, positions, axis=0), self.res)
        tap = (lambda v: self.taps.append(self.cast(v, DType.float32))) if self.taps is not None else (lambda v: v)
        tap(x)
        for i in range(d.n_text_layer):  # ResidualAttentionBlock with cross-attention
            p = f"decoder.blocks.{i}"
            x = x + self.cast(self_attn(i, self.layer_norm(x, p + ".attn_ln", n)), self.res)
            tap(x)
            h = self.layer_norm(x, p + ".cross_attn_ln", n)
            q = self.linear(h, p + ".cross_attn.query", n, n)
            x = x + self.cast(self.linear(self.cross_attention(q, cross_k, cross_v, i), p + ".cross_attn.out", n, n),
                              self.res)
            tap(x)
            x = x + self.cast(self.mlp(self.layer_norm(x, p + ".mlp_ln", n), p, n), self.res)
            tap(x)
        x = self.layer_norm(x, "decoder.ln", n)
        lg = _dtype(self.plan.logits)
        return self.cast(self.cast(x, lg) @ self.cast(emb, lg).T, DType.float32)  # tied to the embedding

    def build_decoder(self, module: Module, ops_dir: Path) -> Graph:
        d, n = self.dims, self.dims.n_text_state
        dh = n // d.n_text_head
        kv = _dtype(self.plan.kv_cache)
        cache_t = TensorType(kv, [d.n_text_layer, "batch", d.n_text_head, "past", dh], self.device)
        cross_t = TensorType(kv, [d.n_text_layer, "batch", d.n_text_head, "n_audio", dh], self.device)
        types = [TensorType(DType.int64, ["batch", "t"], self.device), cache_t, cache_t, cross_t, cross_t,
                 TensorType(DType.float32, [d.n_vocab], self.device),
                 TensorType(DType.int64, ["batch", PICK_RULES], self.device)]
        with Graph("decoder", input_types=types, module=module, custom_extensions=self.extensions(ops_dir, decoder=True)) as g:
            self.graph = g
            tokens, k_cache, v_cache, cross_k, cross_v, bias, rules = (v.tensor for v in g.inputs)
            t, past = tokens.shape[1], k_cache.shape[3]
            p0 = ops.shape_to_tensor([past]).reshape([])
            positions = ops.range(p0, p0 + ops.shape_to_tensor([t]).reshape([]), 1, out_dim=t, dtype=DType.int64,
                                  device=self.device)
            new_k, new_v = [], []

            def self_attn(i, h):
                a, (k, v) = self.self_attention(h, f"decoder.blocks.{i}", n, d.n_text_head,
                                                cache=(k_cache[i], v_cache[i]))
                new_k.append(self.cast(k, kv))
                new_v.append(self.cast(v, kv))
                return a

            logits = self.decoder_body(tokens, positions, cross_k, cross_v, self_attn)
            g.output(logits, ops.stack(new_k), ops.stack(new_v), *self.pick(logits, bias, rules), *(self.taps or []))
        return g

    def build_step(self, module: Module, ops_dir: Path) -> Graph:
        """``step``: the greedy decoder over a fixed-size KV cache updated in place (design B of the KV-cache notes,
        with the Mojo op ``mwc_cached_attention_qkv`` instead of MAX's masked softmax, which miscompiles).

        Inputs tokens (batch, t), pos (1,) (tokens already cached), cross K/V, bias, rules, then four buffers it
        writes in place: the K and V caches (layers, batch, heads, n_text_ctx, 64) and each row's history, tokens
        (batch, n_text_ctx + 1) int64 and their log-probs (same shape, float32): the fed tokens go to positions
        pos … pos + t - 1, the pick and its log-prob to pos + t. Outputs the pick (batch, 1), its log-prob, the
        no-speech log-prob and pos + t (1,). Every shape is fixed at t = 1, the position lives on the device and
        the timestamp rules come from the history (``step_rules``), so a GPU runtime captures one step as a device
        graph and replays it several times in a row, feeding each pick and position to the next on the device, and
        reads the history once.
        """
        d, n = self.dims, self.dims.n_text_state
        dh = n // d.n_text_head
        kv = _dtype(self.plan.kv_cache)
        cache_t = BufferType(kv, [d.n_text_layer, "batch", d.n_text_head, d.n_text_ctx, dh], self.device)
        cross_t = TensorType(kv, [d.n_text_layer, "batch", d.n_text_head, "n_audio", dh], self.device)
        types = [TensorType(DType.int64, ["batch", "t"], self.device), TensorType(DType.int64, [1], self.device),
                 cross_t, cross_t, TensorType(DType.float32, [d.n_vocab], self.device),
                 TensorType(DType.int64, ["batch", PICK_RULES], self.device), cache_t, cache_t,
                 BufferType(DType.int64, ["batch", d.n_text_ctx + 1], self.device),
                 BufferType(DType.float32, ["batch", d.n_text_ctx + 1], self.device)]
        with Graph("step", input_types=types, module=module, custom_extensions=[ops_dir]) as g:
            self.graph = g
            tokens, pos, cross_k, cross_v, bias, rules = (v.tensor for v in g.inputs[:6])
            k_buf, v_buf, hist, lps = (v.buffer for v in g.inputs[6:])
            t = tokens.shape[1]
            positions = pos + ops.range(0, ops.shape_to_tensor([t]).reshape([]), 1, out_dim=t, dtype=DType.int64,
                                        device=self.device)
            last = ops.max(positions, axis=-1)  # (1,): the last fed token's position; the pick goes one past it

            def self_attn(i, h):  # the fused QKV read in place as (B, T, 3, H, 64), the output (B, T, H, 64)
                p = f"decoder.blocks.{i}"
                b, t = h.shape[0], h.shape[1]
                qkv = ops.reshape(self.linear(h, p + ".attn.qkv", 3 * n, n), [b, t, 3, d.n_text_head, dh])
                qkv = self.cast(qkv, kv)
                a = ops.inplace_custom("mwc_cached_attention_qkv", self.device, [k_buf, v_buf, qkv, pos],
                                       out_types=[TensorType(kv, [b, t, d.n_text_head, dh], self.device)],
                                       parameters={"layer": i})[0].tensor
                return self.linear(ops.reshape(self.cast(a, self.act), [b, t, n]), p + ".attn.out", n, n)

            # the history is written whole, position by position (a slice store at a device-resident position
            # would need the position on the host: one sync per step, which capture cannot hold)
            n_hist = d.n_text_ctx + 1
            iota = ops.unsqueeze(ops.range(0, n_hist, 1, out_dim=n_hist, dtype=DType.int64, device=self.device), 0)
            fed = (iota >= pos) & (iota <= last)  # (1, n_hist)
            at_fed = ops.reshape(ops.where(fed, iota - pos, ops.constant(0, DType.int64, self.device)), [n_hist])
            seen = ops.where(fed, ops.gather(tokens, at_fed, axis=1), ops.buffer_load(hist))
            rules = self.step_rules(seen, pos, last, rules)
            logits = self.decoder_body(tokens, positions, cross_k, cross_v, self_attn)
            token, logprob, nospeech = self.pick(logits, bias, rules)
            picked = iota == last + 1
            ops.buffer_store(hist, ops.where(picked, token, seen))
            ops.buffer_store(lps, ops.where(picked, logprob, ops.buffer_load(lps)))
            g.output(token, logprob, nospeech, last + 1)
        return g


class AuxGraphs(WhisperGraphs):
    """The graphs beyond mel/encoder/decoder: ``kv_gather`` (beam search) and ``alignment`` (word timestamps)."""

    def build_kv_gather(self, module: Module) -> Graph:
        """``kv_gather``: K and V (layers, batch, heads, len, 64) + row ids (n,) → both with rows ``ids`` (layers, n,
        heads, len, 64). Beam search repeats the cross K/V and the prompt's cache to the beams with it and reorders
        the self-attention cache by the beams kept each step, on the graphs' device (no host copies on a GPU)."""
        d = self.dims
        kv = _dtype(self.plan.kv_cache)
        t = TensorType(kv, [d.n_text_layer, "batch", d.n_text_head, "len", d.n_text_state // d.n_text_head],
                       self.device)
        with Graph("kv_gather", input_types=[t, t, TensorType(DType.int64, ["n"], self.device)], module=module) as g:
            self.graph = g
            k, v, ids = (x.tensor for x in g.inputs)
            g.output(ops.gather(k, ids, axis=1), ops.gather(v, ids, axis=1))
        return g

    def build_alignment(self, module: Module, ops_dir: Path, heads: list[tuple[int, int]]) -> Graph:
        """``alignment``: tokens (1, t) + cross K/V → logits (1, t, vocab) and the alignment heads' cross-attention
        scores q·k/sqrt(64) before the softmax (len(heads), t, n_audio), as openai's timing.find_alignment reads them
        from its hooks (it truncates to the audio's frames, then takes the softmax itself).

        The decoder's forward pass with no cache (the whole sequence at once, causal self-attention), block by block
        as ``build_decoder``; only the heads named at compile time are returned."""
        d, n = self.dims, self.dims.n_text_state
        dh = n // d.n_text_head
        kv = _dtype(self.plan.kv_cache)
        cross_t = TensorType(kv, [d.n_text_layer, 1, d.n_text_head, "n_audio", dh], self.device)
        types = [TensorType(DType.int64, [1, "t"], self.device), cross_t, cross_t]
        with Graph("alignment", input_types=types, module=module,
                   custom_extensions=self.extensions(ops_dir, decoder=True)) as g:
            self.graph = g
            tokens, cross_k, cross_v = (v.tensor for v in g.inputs)
            t = tokens.shape[1]
            emb = self.w("decoder.token_embedding.weight", (d.n_vocab, n))
            pos = self.w("decoder.positional_embedding", (d.n_text_ctx, n))
            x = self.cast(ops.gather(emb, tokens, axis=0), self.res)
            x = x + self.cast(ops.slice_tensor(pos, [(slice(0, ops.shape_to_tensor([t]).reshape([])), t)]), self.res)
            scores: dict[tuple[int, int], TensorValue] = {}
            for i in range(d.n_text_layer):
                p = f"decoder.blocks.{i}"
                h = self.layer_norm(x, p + ".attn_ln", n)
                q, k, v = ops.split(self.linear(h, p + ".attn.qkv", 3 * n, n), [n, n, n], axis=-1)
                a = self.attention(self.heads(q, d.n_text_head), self.heads(k, d.n_text_head),
                                   self.heads(v, d.n_text_head), causal=True)
                x = x + self.cast(self.linear(self.merge(a), p + ".attn.out", n, n), self.res)
                h = self.layer_norm(x, p + ".cross_attn_ln", n)
                xq = self.linear(h, p + ".cross_attn.query", n, n)
                wanted = [hd for (layer, hd) in heads if layer == i]
                if wanted:
                    q = self.heads(xq, d.n_text_head)
                    ck = self.cast(self.cast(cross_k[i], self.act), DType.float32)
                    qk = (self.cast(q, DType.float32) @ ops.permute(ck, [0, 1, 3, 2])) * (
                        1.0 / float(dh) ** 0.5)  # (1, H, t, n_audio)
                    for hd in wanted:
                        scores[(i, hd)] = qk[0, hd]
                x = x + self.cast(self.linear(self.cross_attention(xq, cross_k, cross_v, i), p + ".cross_attn.out",
                                              n, n), self.res)
                x = x + self.cast(self.mlp(self.layer_norm(x, p + ".mlp_ln", n), p, n), self.res)
            x = self.layer_norm(x, "decoder.ln", n)
            lg = _dtype(self.plan.logits)
            logits = self.cast(self.cast(x, lg) @ self.cast(emb, lg).T, DType.float32)
            g.output(logits, ops.stack([scores[(layer, hd)] for layer, hd in heads]))
        return g


# the artifact's .mef files and the graphs each holds. A GPU gets a copy of a graph's weights for every graph that
# reads them (MAX 26.7 binds the registry per graph), so greedy decoding — mel, encoder, step — loads one file and
# one copy of the decoder's weights; the graphs that return whole logits (sampling, beam search, language
# probabilities, parity), kv_gather and alignment (word timestamps) sit in a second file loaded on first use
MEF_FILES = {"model.mef": ("mel", "encoder", "step"), "extras.mef": ("decoder", "kv_gather", "alignment")}


def build_graphs(dims: ModelDimensions, plan: PrecisionPlan, device: DeviceRef, ops_dir: Path,
                 attention: str = "mojo", alignment_heads: list[tuple[int, int]] | None = None
                 ) -> tuple[dict[str, Module], dict[str, Graph]]:
    """The artifact's graphs: one Module per .mef file (``MEF_FILES``), and each Graph by name (their signatures go
    into the manifest). ``alignment_heads`` (layer, head) pairs: the checkpoint's, else openai's default."""
    modules = {name: Module() for name in MEF_FILES}
    home = {g: modules[f] for f, names in MEF_FILES.items() for g in names}
    b = WhisperGraphs(dims, plan, device, attention)
    aux = AuxGraphs(dims, plan, device, attention)
    heads = [tuple(h) for h in alignment_heads] if alignment_heads else default_alignment_heads(dims)
    graphs = {"mel": b.build_mel(home["mel"], ops_dir), "encoder": b.build_encoder(home["encoder"], ops_dir),
              "decoder": b.build_decoder(home["decoder"], ops_dir), "step": b.build_step(home["step"], ops_dir),
              "kv_gather": aux.build_kv_gather(home["kv_gather"]),
              "alignment": aux.build_alignment(home["alignment"], ops_dir, heads)}
    return modules, graphs


def build_module(dims: ModelDimensions, plan: PrecisionPlan, device: DeviceRef, ops_dir: Path,
                 attention: str = "mojo", alignment_heads: list[tuple[int, int]] | None = None) -> dict[str, Module]:
    """The artifact's Modules by .mef file (``build_graphs`` without the Graph objects)."""
    return build_graphs(dims, plan, device, ops_dir, attention, alignment_heads)[0]


def signature(g: Graph) -> dict:
    """A graph's inputs and outputs as the manifest records them (the names the compiled model gives them, a
    symbolic dimension as None)."""
    def io(types, prefix):
        return [{"name": f"{prefix}{i}", "shape": [int(d) if isinstance(d, StaticDim) else None for d in t.shape],
                 "dtype": str(t.dtype)} for i, t in enumerate(types)]

    return {"inputs": io([v.type for v in g.inputs], "input"), "outputs": io(g.output_types, "output")}
