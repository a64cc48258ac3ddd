"""The canonical checkpoint: the one contract between readers and the compiler.

Every reader (Hugging Face folder or hub id, CTranslate2 folder, ...) translates its source into a
:class:`Checkpoint`: Whisper's dims, a dict of float32 numpy arrays named exactly as in openai/whisper's
``model.py`` state dict, the tokenizer's vocabulary and the generation settings. Validation (shapes against the
dims) happens once, here; nothing downstream knows which format a checkpoint came from.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import MwcError


@dataclass(frozen=True)
class ModelDimensions:
    """openai/whisper's ``ModelDimensions``."""

    n_mels: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int
    n_text_ctx: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class SpecialTokens:
    """Ids of Whisper's special tokens (they depend on the vocabulary: .en vs multilingual)."""

    eot: int
    sot: int
    translate: int
    transcribe: int
    sot_lm: int
    sot_prev: int
    no_speech: int
    no_timestamps: int
    languages: dict[str, int] = field(default_factory=dict)

    @property
    def timestamp_begin(self) -> int:
        return self.no_timestamps + 1

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "timestamp_begin": self.timestamp_begin}

    @classmethod
    def for_vocab(cls, n_vocab: int) -> "SpecialTokens":
        """Whisper's fixed layout after the byte-level BPE tokens.

        English-only (51864 ids): 50256 text tokens, <|endoftext|> 50256, <|startoftranscript|> 50257, 99 language
        slots, 6 task tokens, 1501 timestamps. Multilingual: one text token more (eot 50257), 99 languages (51865)
        or 100 for large-v3 (51866).
        """
        langs = languages_for_vocab(n_vocab)
        eot = 50256 if not langs else 50257
        sot = eot + 1
        n_lang = len(langs) if langs else 99
        first = sot + 1 + n_lang
        return cls(eot=eot, sot=sot, translate=first, transcribe=first + 1, sot_lm=first + 2, sot_prev=first + 3,
                   no_speech=first + 4, no_timestamps=first + 5,
                   languages={code: sot + 1 + i for i, code in enumerate(langs)})


# openai/whisper's tokenizer.LANGUAGES order (the language tokens follow <|startoftranscript|> in this order)
LANGUAGES = (
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no th ur hr bg lt la "
    "mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw gl mr pa si km sn yo so af oc ka be "
    "tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl mg as tt haw ln ha ba jw su yue"
).split()


def languages_for_vocab(n_vocab: int) -> list[str]:
    """English-only models have 51864 tokens; multilingual 51865 (99 languages) or 51866 (large-v3: +yue)."""
    if n_vocab == 51864:
        return []
    n_lang = n_vocab - 51766  # 50257 text + eot + sot + languages + 6 task tokens + 1501 timestamps
    if not 99 <= n_lang <= len(LANGUAGES):
        raise MwcError(f"vocabulary size {n_vocab} is not a Whisper vocabulary (expected 51864, 51865 or 51866)")
    return list(LANGUAGES[:n_lang])


def special_tokens(n_vocab: int) -> SpecialTokens:
    return SpecialTokens.for_vocab(n_vocab)


@dataclass
class GenerationSettings:
    suppress_tokens: list[int]
    begin_suppress_tokens: list[int]
    alignment_heads: list[tuple[int, int]]

    def to_dict(self) -> dict:
        return {"suppress_tokens": list(self.suppress_tokens),
                "begin_suppress_tokens": list(self.begin_suppress_tokens),
                "alignment_heads": [list(h) for h in self.alignment_heads]}


@dataclass
class Checkpoint:
    dims: ModelDimensions
    weights: dict[str, np.ndarray]  # openai/whisper state-dict names, float32
    vocab: list[str]  # id -> byte-level BPE token string, for every id below the timestamps
    generation: GenerationSettings
    source: str  # what the user named (path or hub id)
    source_format: str  # "hf" | "ct2" | "openai-pt" | "onnx"
    source_files: list[Path] = field(default_factory=list)  # files hashed into the manifest

    @property
    def multilingual(self) -> bool:
        return self.dims.n_vocab >= 51865

    @property
    def tokens(self) -> SpecialTokens:
        return special_tokens(self.dims.n_vocab)

    def alignment_heads(self) -> tuple[list[tuple[int, int]], str]:
        """The (layer, head) pairs word timestamps read, and where they come from: the checkpoint's, minus any
        outside this model's decoder (a config copied from another size), else openai's default — every head of
        the last half of the decoder layers."""
        d = self.dims
        named = [(int(a), int(b)) for a, b in self.generation.alignment_heads]
        heads = [(a, b) for a, b in named if 0 <= a < d.n_text_layer and 0 <= b < d.n_text_head]
        if heads:
            return heads, "checkpoint" + (f" ({len(named) - len(heads)} out-of-range pairs dropped)"
                                          if len(heads) < len(named) else "")
        return default_alignment_heads(d), ("default: every head of the last half of the decoder layers"
                         + (" (the checkpoint's pairs are outside this model)" if named else ""))

    def source_sha256(self) -> str:
        """One hash over the checkpoint's files (name + content), streamed."""
        h = hashlib.sha256()
        for p in sorted(self.source_files):
            h.update(p.name.encode())
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    h.update(chunk)
        return h.hexdigest()


def default_alignment_heads(d: ModelDimensions) -> list[tuple[int, int]]:
    """openai's default when a checkpoint names none: every head of the last half of the decoder layers."""
    return [(a, b) for a in range(d.n_text_layer // 2, d.n_text_layer) for b in range(d.n_text_head)]


def expected_shapes(d: ModelDimensions) -> dict[str, tuple[int, ...]]:
    """Every tensor of openai/whisper's model.py state dict, with its shape."""
    shapes: dict[str, tuple[int, ...]] = {
        "encoder.conv1.weight": (d.n_audio_state, d.n_mels, 3),
        "encoder.conv1.bias": (d.n_audio_state,),
        "encoder.conv2.weight": (d.n_audio_state, d.n_audio_state, 3),
        "encoder.conv2.bias": (d.n_audio_state,),
        "encoder.positional_embedding": (d.n_audio_ctx, d.n_audio_state),
        "encoder.ln_post.weight": (d.n_audio_state,),
        "encoder.ln_post.bias": (d.n_audio_state,),
        "decoder.token_embedding.weight": (d.n_vocab, d.n_text_state),
        "decoder.positional_embedding": (d.n_text_ctx, d.n_text_state),
        "decoder.ln.weight": (d.n_text_state,),
        "decoder.ln.bias": (d.n_text_state,),
    }

    def block(prefix: str, n: int, cross: bool) -> None:
        attns = ["attn", "cross_attn"] if cross else ["attn"]
        for a in attns:
            for p in ("query", "value", "out"):
                shapes[f"{prefix}.{a}.{p}.weight"] = (n, n)
                shapes[f"{prefix}.{a}.{p}.bias"] = (n,)
            shapes[f"{prefix}.{a}.key.weight"] = (n, n)  # key has no bias in Whisper
            shapes[f"{prefix}.{a}_ln.weight"] = (n,)
            shapes[f"{prefix}.{a}_ln.bias"] = (n,)
        shapes[f"{prefix}.mlp.0.weight"] = (4 * n, n)
        shapes[f"{prefix}.mlp.0.bias"] = (4 * n,)
        shapes[f"{prefix}.mlp.2.weight"] = (n, 4 * n)
        shapes[f"{prefix}.mlp.2.bias"] = (n,)
        shapes[f"{prefix}.mlp_ln.weight"] = (n,)
        shapes[f"{prefix}.mlp_ln.bias"] = (n,)

    for i in range(d.n_audio_layer):
        block(f"encoder.blocks.{i}", d.n_audio_state, cross=False)
    for i in range(d.n_text_layer):
        block(f"decoder.blocks.{i}", d.n_text_state, cross=True)
    return shapes


def validate(ck: Checkpoint) -> None:
    """Check every tensor's presence and shape against the dims; raise one line naming the tensor."""
    d = ck.dims
    if d.n_audio_state % d.n_audio_head or d.n_text_state % d.n_text_head:
        raise MwcError(f"{ck.source}: state size is not divisible by the number of heads ({d})")
    if d.n_mels not in (80, 128):
        raise MwcError(f"{ck.source}: n_mels={d.n_mels}; Whisper uses 80 or 128 mel bins")
    languages_for_vocab(d.n_vocab)  # raises on a non-Whisper vocabulary
    want = expected_shapes(d)
    for name, shape in want.items():
        if name not in ck.weights:
            raise MwcError(f"{ck.source}: tensor {name!r} is missing; the checkpoint is incomplete or not Whisper")
        got = tuple(ck.weights[name].shape)
        if got != shape:
            raise MwcError(f"{ck.source}: tensor {name!r} has shape {got}, expected {shape} for these dims")
    extra = sorted(set(ck.weights) - set(want))
    if extra:
        raise MwcError(f"{ck.source}: unexpected tensor {extra[0]!r} ({len(extra)} unexpected in all)")
    for name, a in ck.weights.items():
        if not np.all(np.isfinite(a)):
            raise MwcError(f"{ck.source}: tensor {name!r} holds NaN or Inf values; the checkpoint is corrupt")
    if len(ck.vocab) < ck.tokens.timestamp_begin:
        raise MwcError(f"{ck.source}: the tokenizer has {len(ck.vocab)} tokens, "
                       f"expected {ck.tokens.timestamp_begin} before the timestamps")
