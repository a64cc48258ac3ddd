"""A second, independent reference: transformers' WhisperForConditionalGeneration built from the checkpoint's own
weights (the same canonical tensors the compiler reads), run on the CPU in float64 (torch's double kernels).

It implements the numpy reference's ``encode``/``decode`` interface, so ``mwc verify --reference transformers`` and
the decoding loop drive it unchanged. Used only where transformers and torch are installed.
"""

from __future__ import annotations

import numpy as np

from .checkpoint import Checkpoint
from .errors import MwcError
from .readers.hf import _LAYER, _TOP


def hf_name(name: str) -> str:
    """openai/whisper name → transformers name (the inverse of readers.hf.openai_name)."""
    parts = name.split(".")
    if parts[1] == "blocks":
        inv = {v: k for k, v in _LAYER.items()}
        base, kind = ".".join(parts[3:]).rsplit(".", 1)
        return f"model.{parts[0]}.layers.{parts[2]}.{inv[base]}.{kind}"
    for src, dst in _TOP.items():
        if name == dst or name.startswith(dst + "."):
            return "model." + src + name[len(dst):]
    raise KeyError(name)


class TransformersWhisper:
    def __init__(self, ck: Checkpoint):
        try:
            import torch
            from transformers import WhisperConfig, WhisperForConditionalGeneration
        except ImportError as e:
            raise MwcError(f"--reference transformers needs transformers and torch ({e}); pip install transformers "
                           "torch, or use --reference numpy") from e
        self.torch = torch
        self.dims = d = ck.dims
        config = WhisperConfig(vocab_size=d.n_vocab, num_mel_bins=d.n_mels, encoder_layers=d.n_audio_layer,
                               encoder_attention_heads=d.n_audio_head, decoder_layers=d.n_text_layer,
                               decoder_attention_heads=d.n_text_head, d_model=d.n_audio_state,
                               encoder_ffn_dim=4 * d.n_audio_state, decoder_ffn_dim=4 * d.n_text_state,
                               max_source_positions=d.n_audio_ctx, max_target_positions=d.n_text_ctx,
                               attn_implementation="eager", tie_word_embeddings=True)
        model = WhisperForConditionalGeneration(config).to(torch.float64).eval()
        state = {hf_name(k): torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in ck.weights.items()}
        state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]
        missing, unexpected = model.load_state_dict(state, strict=False)
        # key projections have no bias in Whisper; transformers builds them without one too
        if [m for m in missing if "k_proj.bias" not in m] or unexpected:
            raise MwcError(f"{ck.source}: transformers' Whisper does not take these weights "
                           f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        self.model = model

    def encode(self, mel: np.ndarray) -> dict:
        """mel (B, n_mels, 3000) → {"xa": (B, 1500, d), "cross": [(K, V) (B, 1500, d) per decoder layer]}."""
        torch = self.torch
        with torch.no_grad():
            x = torch.from_numpy(np.asarray(mel, dtype=np.float64))
            xa = self.model.model.encoder(input_features=x).last_hidden_state
            cross = [(layer.encoder_attn.k_proj(xa).numpy(), layer.encoder_attn.v_proj(xa).numpy())
                     for layer in self.model.model.decoder.layers]
        return {"xa": xa.numpy(), "cross": cross, "_xa": xa}

    def decode(self, tokens: np.ndarray, audio: dict, cache):
        """tokens (B, T) new tokens; cache: transformers' own cache object (opaque to the caller)."""
        torch = self.torch
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        if cache is None:
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
        past = cache.get_seq_length()
        ids = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
        with torch.no_grad():
            out = self.model.model.decoder(input_ids=ids, encoder_hidden_states=audio["_xa"], cache=cache,
                                           use_cache=True,
                                           position_ids=torch.arange(past, past + ids.shape[1])[None])
            logits = self.model.proj_out(out.last_hidden_state)
        return logits.numpy(), cache  # updated in place
