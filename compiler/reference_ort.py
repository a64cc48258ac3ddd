"""A reference for ONNX inputs: the export's own graphs run by onnxruntime (CPU, the export's float32).

``mwc verify --reference onnxruntime`` compares an artifact compiled from an optimum export with that export as
onnxruntime runs it, so what is checked is the whole path: the ONNX reader's renaming and transposing of the
initializers, and the compiled graphs, against the graphs the export itself holds. It implements the numpy
reference's ``encode``/``decode`` interface:

* ``encode``: encoder_model.onnx → last_hidden_state. The cross-attention K/V come from the decoder graph's
  ``present.N.encoder.key/value`` outputs when the export has them (optimum's with-cache exports); an export whose
  decoder returns logits only gets them from the encoder output and the checkpoint's cross-attention projections,
  in float64 (then the cross K/V stage checks the encoder output once more, not an independent computation);
* ``decode``: decoder_model.onnx (or decoder_model_merged.onnx with its cache branch off) over every token so far —
  no KV cache, the "cache" is the token prefix — returning the new positions' logits.

onnxruntime is needed for this reference alone and imported lazily.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .checkpoint import Checkpoint
from .errors import MwcError


class OnnxRuntimeWhisper:
    def __init__(self, ck: Checkpoint):
        if ck.source_format != "onnx":
            raise MwcError(f"{ck.source}: --reference onnxruntime runs an ONNX export's own graphs; this checkpoint "
                           f"is {ck.source_format} — use --reference numpy or transformers")
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise MwcError(f"--reference onnxruntime needs onnxruntime ({e}); pip install onnxruntime, or use "
                           "--reference numpy") from e
        files = {Path(p).name: Path(p) for p in ck.source_files}
        decoder = files.get("decoder_model.onnx") or files.get("decoder_model_merged.onnx")
        if "encoder_model.onnx" not in files or decoder is None:
            raise MwcError(f"{ck.source}: --reference onnxruntime needs encoder_model.onnx and decoder_model.onnx "
                           "(or decoder_model_merged.onnx); a with-past decoder alone cannot start a sequence")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        try:
            self.encoder = ort.InferenceSession(str(files["encoder_model.onnx"]), opts,
                                                providers=["CPUExecutionProvider"])
            self.decoder = ort.InferenceSession(str(decoder), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's own exception types
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
            raise MwcError(f"{ck.source}: onnxruntime cannot load the export ({type(e).__name__}: {first})") from e
        self.dims = ck.dims
        self.alignment_heads = ck.alignment_heads()[0]
        self._w = ck.weights
        self._outputs = [o.name for o in self.decoder.get_outputs()]
        self._inputs = {i.name: i for i in self.decoder.get_inputs()}

    def _decoder_feed(self, tokens: np.ndarray, xa: np.ndarray) -> dict:
        d = self.dims
        b, dh = tokens.shape[0], d.n_text_state // d.n_text_head
        feed = {"input_ids": tokens.astype(np.int64), "encoder_hidden_states": xa.astype(np.float32)}
        for name in self._inputs:
            if name == "attention_mask":
                feed[name] = np.ones_like(tokens, dtype=np.int64)
            elif name == "use_cache_branch":
                feed[name] = np.array([False])
            elif name.startswith("past_key_values"):
                feed[name] = np.zeros((b, d.n_text_head, 0, dh), dtype=np.float32)
            elif name not in feed:
                raise MwcError(f"the ONNX decoder takes an input mwc does not know ({name!r}); export it with "
                               "optimum (input_ids, encoder_hidden_states)")
        return feed

    def encode(self, mel: np.ndarray) -> dict:
        """mel (B, n_mels, 3000) → {"xa": (B, 1500, d), "cross": [(K, V) (B, 1500, d) per decoder layer]}."""
        d = self.dims
        xa = self.encoder.run(None, {self.encoder.get_inputs()[0].name: np.asarray(mel, np.float32)})[0]
        keys = [f"present.{i}.encoder.key" for i in range(d.n_text_layer)]
        if all(k in self._outputs for k in keys):
            sot = np.zeros((xa.shape[0], 1), dtype=np.int64)
            out = dict(zip(self._outputs, self.decoder.run(None, self._decoder_feed(sot, xa))))
            merge = lambda t: t.transpose(0, 2, 1, 3).reshape(t.shape[0], t.shape[2], -1).astype(np.float64)  # noqa: E731
            cross = [(merge(out[f"present.{i}.encoder.key"]), merge(out[f"present.{i}.encoder.value"]))
                     for i in range(d.n_text_layer)]
        else:
            x, w = xa.astype(np.float64), self._w
            cross = [(x @ w[f"decoder.blocks.{i}.cross_attn.key.weight"].T.astype(np.float64),
                      x @ w[f"decoder.blocks.{i}.cross_attn.value.weight"].T.astype(np.float64)
                      + w[f"decoder.blocks.{i}.cross_attn.value.bias"])
                     for i in range(d.n_text_layer)]
        return {"xa": xa.astype(np.float64), "cross": cross, "_xa": xa}

    def decode(self, tokens: np.ndarray, audio: dict, cache):
        """tokens (B, T) new tokens; cache: the tokens before them (the decoder reruns the whole prefix)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        seq = tokens if cache is None else np.concatenate([cache, tokens], axis=1)
        logits = self.decoder.run(["logits"], self._decoder_feed(seq, audio["_xa"]))[0]
        return logits[:, -tokens.shape[1]:].astype(np.float64), seq

    # beam search (not used by verify, which decodes greedily) needs these two
    def repeat_audio(self, audio: dict, n: int) -> dict:
        return {"xa": np.repeat(audio["xa"], n, 0), "_xa": np.repeat(audio["_xa"], n, 0),
                "cross": [(np.repeat(k, n, 0), np.repeat(v, n, 0)) for k, v in audio["cross"]]}

    def reorder_cache(self, cache, ids):
        return cache[np.asarray(ids, dtype=np.int64)]
