"""More readers: openai-whisper .pt checkpoints and optimum-layout ONNX exports, back to the canonical checkpoint.

The .pt tests need torch; the ONNX ones torch, transformers and onnx. Each fixture is made here, in a temp folder,
from a tiny random model of true Whisper names (nothing binary is committed).
"""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import SMALL, random_weights, synthetic_vocab

from compiler.checkpoint import ModelDimensions
from compiler.errors import MwcError
from compiler.readers import load_checkpoint



def one_line(e: pytest.ExceptionInfo, *needles: str) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, msg
    return msg


# ---------------------------------------------------------------------------------------------------- openai .pt

def write_pt(folder: Path, d: ModelDimensions, weights: dict, vocab: bool = True, **state_extra) -> Path:
    torch = pytest.importorskip("torch")
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: torch.from_numpy(v).to(torch.float16) for k, v in weights.items()}  # openai publishes fp16
    sd.update(state_extra)
    path = folder / "model.pt"
    torch.save({"dims": d.to_dict(), "model_state_dict": sd}, path)
    if vocab:
        (folder / "vocab.json").write_text(json.dumps(synthetic_vocab(d.n_vocab)))
    return path


def test_pt_round_trip(tmp_path):
    w = random_weights(SMALL, seed=3)
    path = write_pt(tmp_path / "pt", SMALL, w)
    ck = load_checkpoint(str(path))
    assert ck.source_format == "openai-pt" and ck.dims == SMALL
    assert set(ck.weights) == set(w)
    for name, a in w.items():
        np.testing.assert_array_equal(ck.weights[name], a.astype(np.float16).astype(np.float32), err_msg=name)
        assert ck.weights[name].dtype == np.float32
    assert ck.generation.suppress_tokens == [] and ck.generation.alignment_heads == []
    assert ck.vocab[ck.tokens.sot] == "<|startoftranscript|>"
    assert path in ck.source_files and tmp_path / "pt" / "vocab.json" in ck.source_files
    # a folder holding exactly one .pt (and no other weights) routes to the same reader
    assert load_checkpoint(str(tmp_path / "pt")).source_format == "openai-pt"


def test_pt_sinusoids_alignment_heads_and_generation_config(tmp_path):
    torch = pytest.importorskip("torch")
    w = random_weights(SMALL, seed=4)
    del w["encoder.positional_embedding"]
    mask = torch.zeros(SMALL.n_text_layer, SMALL.n_text_head, dtype=torch.bool)
    mask[0, 1] = True
    path = write_pt(tmp_path / "pt", SMALL, w, alignment_heads=mask.to_sparse())
    (tmp_path / "pt" / "generation_config.json").write_text(json.dumps({"suppress_tokens": [1, 2],
                                                                       "begin_suppress_tokens": [220, 50256]}))
    ck = load_checkpoint(str(path))
    assert "alignment_heads" not in ck.weights
    assert ck.generation.alignment_heads == [(0, 1)]
    assert ck.generation.suppress_tokens == [1, 2] and ck.generation.begin_suppress_tokens == [220, 50256]
    # openai/whisper model.py: sinusoids(n_ctx, n_state) — sin of the first half of the channels, cos of the rest
    pe = ck.weights["encoder.positional_embedding"]
    inv = np.exp(-np.log(10000) / (SMALL.n_audio_state // 2 - 1) * np.arange(SMALL.n_audio_state // 2))
    t = np.arange(SMALL.n_audio_ctx)[:, None] * inv[None, :]
    np.testing.assert_allclose(pe, np.concatenate([np.sin(t), np.cos(t)], axis=1), atol=2e-4)
    assert pe.shape == (SMALL.n_audio_ctx, SMALL.n_audio_state) and pe.dtype == np.float32


def test_pt_without_tokenizer(tmp_path):
    path = write_pt(tmp_path / "pt", SMALL, random_weights(SMALL), vocab=False)
    with pytest.raises(MwcError) as e:
        load_checkpoint(str(path))
    one_line(e, "model.pt", "tokenizer.json", "next to it")


def test_pt_not_whisper(tmp_path):
    torch = pytest.importorskip("torch")
    (tmp_path / "vocab.json").write_text(json.dumps(synthetic_vocab(SMALL.n_vocab)))
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, path)
    with pytest.raises(MwcError) as e:
        load_checkpoint(str(path))
    one_line(e, "other.pt", "not an openai-whisper checkpoint")
    torch.save(torch.zeros(3), path)
    with pytest.raises(MwcError) as e:
        load_checkpoint(str(path))
    one_line(e, "other.pt", "not an openai-whisper checkpoint")


def test_pt_arbitrary_objects_are_not_unpickled(tmp_path):
    torch = pytest.importorskip("torch")
    (tmp_path / "vocab.json").write_text(json.dumps(synthetic_vocab(SMALL.n_vocab)))
    path = tmp_path / "evil.pt"
    torch.save({"dims": SMALL.to_dict(), "model_state_dict": {}, "obj": Path("/x")}, path)  # a foreign class
    with pytest.raises(MwcError) as e:
        load_checkpoint(str(path))
    one_line(e, "evil.pt", "not a loadable PyTorch checkpoint")
    good = write_pt(tmp_path / "t", SMALL, random_weights(SMALL))
    good.write_bytes(good.read_bytes()[:4000])  # truncated
    with pytest.raises(MwcError) as e:
        load_checkpoint(str(good))
    one_line(e, "model.pt", "re-download")


def test_pt_needs_torch(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    path.write_bytes(b"not read")
    (tmp_path / "vocab.json").write_text("{}")
    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        level = args[3] if len(args) > 3 else kwargs.get("level", 0)
        if level == 0 and (name == "torch" or name.startswith("torch.")):
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    with pytest.raises(MwcError) as e:
        load_checkpoint(str(path))
    one_line(e, "model.pt", "pip install torch")


def test_other_file_is_rejected(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"x")
    with pytest.raises(MwcError) as e:
        load_checkpoint(str(path))
    one_line(e, "model.ckpt", "folder")


# ---------------------------------------------------------------------------------------------------------- ONNX

def export_onnx(folder: Path, randomize: bool) -> dict[str, np.ndarray]:
    """A tiny random WhisperForConditionalGeneration exported as optimum does (TorchScript exporter, constant
    folding; the encoder as a bare submodule, the decoder under model.decoder.* with proj_out): encoder_model.onnx
    (input_features → last_hidden_state) and decoder_model.onnx (input_ids, encoder_hidden_states → logits).
    Returns the model's state dict under openai/whisper's names."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    transformers = pytest.importorskip("transformers")
    from compiler.readers.hf import openai_name

    torch.manual_seed(0)
    cfg = transformers.WhisperConfig(d_model=64, encoder_attention_heads=2, decoder_attention_heads=2,
                                     encoder_layers=1, decoder_layers=1, encoder_ffn_dim=256, decoder_ffn_dim=256,
                                     vocab_size=51865, num_mel_bins=80)
    model = transformers.WhisperForConditionalGeneration(cfg).eval()
    if randomize:  # every tensor distinct (a fresh model's zero biases and unit norms would be deduplicated)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0.0, 0.05)
            model.proj_out.weight = model.model.decoder.embed_tokens.weight
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    (folder / "vocab.json").write_text(json.dumps(synthetic_vocab(cfg.vocab_size)))
    (folder / "generation_config.json").write_text(json.dumps({"suppress_tokens": [1, 2],
                                                               "begin_suppress_tokens": [220, 50257],
                                                               "alignment_heads": [[0, 1]]}))

    class Decoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model, self.proj_out = model.model, model.proj_out

        def forward(self, input_ids, encoder_hidden_states):
            # an explicit mask keeps transformers' packed-sequence check (aten::diff, not exportable) out of the trace
            h = self.model.decoder(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                   encoder_hidden_states=encoder_hidden_states, use_cache=False, return_dict=False)[0]
            return self.proj_out(h)

    feats = torch.randn(1, 80, 3000)
    kw = dict(opset_version=17, do_constant_folding=True, dynamo=False)
    with torch.no_grad():
        torch.onnx.export(model.get_encoder(), (feats,), str(folder / "encoder_model.onnx"),
                          input_names=["input_features"], output_names=["last_hidden_state"],
                          dynamic_axes={"input_features": {0: "batch"}}, **kw)
        torch.onnx.export(Decoder(), (torch.tensor([[50258, 50259]]), torch.randn(1, 1500, 64)),
                          str(folder / "decoder_model.onnx"), input_names=["input_ids", "encoder_hidden_states"],
                          output_names=["logits"], dynamic_axes={"input_ids": {0: "batch", 1: "seq"}}, **kw)
    out = {}
    for k, v in model.state_dict().items():
        name = openai_name(k)
        if name is not None:
            out[name] = v.detach().numpy().astype(np.float32)
    return out


@pytest.mark.parametrize("randomize", [True, False], ids=["random", "hf-init"])
def test_onnx_round_trip(tmp_path, randomize):
    want = export_onnx(tmp_path / "onnx", randomize)
    ck = load_checkpoint(str(tmp_path / "onnx"))
    assert ck.source_format == "onnx"
    assert ck.dims == ModelDimensions(80, 1500, 64, 2, 1, 51865, 448, 64, 2, 1)
    assert set(ck.weights) == set(want)
    for name, a in want.items():
        np.testing.assert_array_equal(ck.weights[name], a, err_msg=name)
    assert ck.generation.suppress_tokens == [1, 2] and ck.generation.alignment_heads == [(0, 1)]
    assert {p.name for p in ck.source_files} >= {"encoder_model.onnx", "decoder_model.onnx", "config.json"}


def test_onnx_external_data_and_subfolder(tmp_path):
    """Weights in *.onnx_data companions, graphs in onnx/ with config and tokenizer one level up (the hub's layout)."""
    onnx = pytest.importorskip("onnx")
    want = export_onnx(tmp_path / "x", randomize=True)
    (tmp_path / "x" / "onnx").mkdir()
    for name in ("encoder_model.onnx", "decoder_model.onnx"):
        m = onnx.load(str(tmp_path / "x" / name))
        onnx.save(m, str(tmp_path / "x" / "onnx" / name), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=name + "_data", size_threshold=0)
        (tmp_path / "x" / name).unlink()
    ck = load_checkpoint(str(tmp_path / "x"))
    for name, a in want.items():
        np.testing.assert_array_equal(ck.weights[name], a, err_msg=name)
    assert "decoder_model.onnx_data" in {p.name for p in ck.source_files}
    (tmp_path / "x" / "onnx" / "decoder_model.onnx_data").unlink()
    with pytest.raises(MwcError) as e:
        load_checkpoint(str(tmp_path / "x"))
    one_line(e, "decoder_model.onnx_data", "is missing")


def test_truncated_onnx(tmp_path):
    export_onnx(tmp_path / "onnx", randomize=True)
    p = tmp_path / "onnx" / "decoder_model.onnx"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(MwcError) as e:
        load_checkpoint(str(tmp_path / "onnx"))
    one_line(e, "decoder_model.onnx", "re-export")


def test_onnx_needs_onnx_package(tmp_path, monkeypatch):
    folder = tmp_path / "onnx"
    folder.mkdir()
    for n in ("encoder_model.onnx", "decoder_model.onnx"):
        (folder / n).write_bytes(b"x")
    (folder / "config.json").write_text(json.dumps({"model_type": "whisper", "num_mel_bins": 80,
                                                    "max_source_positions": 1500, "d_model": 64,
                                                    "encoder_attention_heads": 2, "encoder_layers": 1,
                                                    "vocab_size": 51865, "max_target_positions": 448,
                                                    "decoder_attention_heads": 2, "decoder_layers": 1}))
    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        level = args[3] if len(args) > 3 else kwargs.get("level", 0)
        if level == 0 and (name == "onnx" or name.startswith("onnx.")):
            raise ImportError("No module named 'onnx'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    with pytest.raises(MwcError) as e:
        load_checkpoint(str(folder))
    one_line(e, "encoder_model.onnx", "pip install onnx")
