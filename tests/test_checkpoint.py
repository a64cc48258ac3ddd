"""Readers → canonical checkpoint: real tiny.en (CTranslate2), HF folders, every size's true shapes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers import SIZES, SMALL, random_weights, write_hf_folder

from compiler.checkpoint import ModelDimensions, expected_shapes, special_tokens
from compiler.readers import load_checkpoint


def test_ct2_tiny_en(tiny_en_checkpoint):
    ck = tiny_en_checkpoint
    assert ck.dims == SIZES["tiny.en"]
    assert ck.source_format == "ct2"
    assert set(ck.weights) == set(expected_shapes(ck.dims))
    assert all(a.dtype == np.float32 for a in ck.weights.values())
    tk = ck.tokens
    assert (tk.eot, tk.sot, tk.no_timestamps, tk.timestamp_begin) == (50256, 50257, 50362, 50363)
    assert ck.vocab[tk.sot] == "<|startoftranscript|>" and ck.vocab[tk.no_timestamps] == "<|notimestamps|>"
    assert 50257 in ck.generation.suppress_tokens and ck.generation.begin_suppress_tokens == [220, 50256]
    # Whisper's key projection has no bias; CT2 fuses Q|K|V and stores zeros for it
    assert "encoder.blocks.0.attn.key.bias" not in ck.weights


def test_hf_folder_round_trip(tiny_en_checkpoint, tiny_en_dir, tmp_path):
    """tiny.en written as a transformers folder (fp16, as published) reads back to the same weights."""
    ck = tiny_en_checkpoint
    folder = write_hf_folder(tmp_path / "hf", ck.dims, ck.weights, dtype=np.float16)
    (folder / "vocab.json").unlink()
    shutil.copy(tiny_en_dir / "tokenizer.json", folder / "tokenizer.json")
    back = load_checkpoint(str(folder))
    assert back.source_format == "hf" and back.dims == ck.dims
    for name, a in ck.weights.items():
        np.testing.assert_array_equal(back.weights[name], a, err_msg=name)  # fp16 source: exact
    assert back.vocab[:50363] == ck.vocab[:50363]


def test_sharded_index(tmp_path):
    d = SMALL
    w = random_weights(d)
    folder = write_hf_folder(tmp_path / "one", d, w)
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    names = sorted(tensors)
    half = len(names) // 2
    save_file({k: tensors[k] for k in names[:half]}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({k: tensors[k] for k in names[half:]}, str(folder / "model-00002-of-00002.safetensors"))
    (folder / "model.safetensors").unlink()
    index = {k: f"model-0000{1 if i < half else 2}-of-00002.safetensors" for i, k in enumerate(names)}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index}))
    back = load_checkpoint(str(folder))
    for name, a in w.items():
        np.testing.assert_array_equal(back.weights[name], a)


@pytest.mark.parametrize("size", sorted(SIZES))
def test_every_size_reads_with_true_shapes(size, tmp_path):
    """tiny … large-v3 and turbo: true widths, mel bins and vocabularies (depth cut to keep the test light;
    turbo keeps its 32:4 encoder:decoder ratio as 8:1)."""
    full = SIZES[size]
    n_enc, n_dec = (8, 1) if size == "large-v3-turbo" else (1, 1)
    d = ModelDimensions(**{**full.to_dict(), "n_audio_layer": n_enc, "n_text_layer": n_dec})
    w = random_weights(d, seed=1)
    folder = write_hf_folder(tmp_path / size, d, w, dtype=np.float16 if size != "large-v3" else np.float32)
    ck = load_checkpoint(str(folder))
    assert ck.dims == d
    assert ck.multilingual == (not size.endswith(".en"))
    assert {k: v.shape for k, v in ck.weights.items()} == expected_shapes(d)
    assert ck.tokens.timestamp_begin + 1501 == d.n_vocab


def test_bf16_safetensors(tmp_path):
    d = ModelDimensions(80, 1500, 64, 2, 1, 51865, 448, 64, 2, 1)
    w = random_weights(d, seed=2)
    folder = write_hf_folder(tmp_path / "bf16", d, w)
    # rewrite every tensor as bfloat16 (numpy has no bf16: write raw bits under a hand-made header)
    import struct

    from safetensors.numpy import load_file

    tensors = load_file(str(folder / "model.safetensors"))
    header, blobs, off = {}, [], 0
    for k, a in tensors.items():
        bits = (a.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes()
        header[k] = {"dtype": "BF16", "shape": list(a.shape), "data_offsets": [off, off + len(bits)]}
        blobs.append(bits)
        off += len(bits)
    h = json.dumps(header).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    ck = load_checkpoint(str(folder))
    for name, a in w.items():
        np.testing.assert_allclose(ck.weights[name], a, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("n_vocab,eot,sot,transcribe,ts_begin,n_lang",
                         [(51864, 50256, 50257, 50358, 50363, 0), (51865, 50257, 50258, 50359, 50364, 99),
                          (51866, 50257, 50258, 50360, 50365, 100)])
def test_special_tokens(n_vocab, eot, sot, transcribe, ts_begin, n_lang):
    t = special_tokens(n_vocab)
    assert (t.eot, t.sot, t.transcribe, t.timestamp_begin, len(t.languages)) == (eot, sot, transcribe, ts_begin,
                                                                                   n_lang)
    if n_lang:
        assert t.languages["en"] == sot + 1 and t.languages["de"] == sot + 3


def test_alignment_heads_outside_the_model_are_dropped(tmp_path):
    """A generation config copied from another size names heads this decoder lacks: they are dropped (openai's
    default when none is left), and the graphs build."""
    from pathlib import Path

    from max.graph import DeviceRef

    from compiler.graph import build_module
    from compiler.precision import plan_for
    from compiler.readers import load_checkpoint
    from helpers import random_weights, write_hf_folder

    d = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=1,
                        n_vocab=51865, n_text_ctx=448, n_text_state=64, n_text_head=2, n_text_layer=2)
    folder = write_hf_folder(tmp_path / "ck", d, random_weights(d, seed=0))
    gen = folder / "generation_config.json"
    cfg = json.loads(gen.read_text()) if gen.is_file() else {}
    for named, want, source in [([[1, 1], [7, 0]], [(1, 1)], "checkpoint (1 out-of-range pairs dropped)"),
                                ([[7, 0]], [(1, 0), (1, 1)], "default"), ([], [(1, 0), (1, 1)], "default")]:
        gen.write_text(json.dumps({**cfg, "alignment_heads": named}))
        heads, why = load_checkpoint(str(folder)).alignment_heads()
        assert heads == want and why.startswith(source)
    build_module(d, plan_for("fp32", "cpu"), DeviceRef.CPU(), Path(__file__).resolve().parents[1] / "ops",
                 alignment_heads=[(1, 1)])


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_weights_file_is_byte_reproducible(tmp_path, precision):
    """The same checkpoint and plan give the same weights.safetensors in every process (safetensors alone writes
    its metadata in a per-process random order), so an artifact's checksums are reproducible and a cross-compiled
    artifact's weights can be rebuilt on the GPU machine (tests/assemble_artifact.py)."""
    import hashlib
    import subprocess
    import sys

    ck = write_hf_folder(tmp_path / "ck", SMALL, random_weights(SMALL))
    code = ("import sys; from compiler.readers import load_checkpoint; from compiler.precision import plan_for; "
            "from compiler.weights import graph_weights, save_weights; p = plan_for(sys.argv[1], 'cpu'); "
            "save_weights(graph_weights(load_checkpoint(sys.argv[2]), p), sys.argv[3], p)")
    digests = set()
    for i in range(4):  # the metadata's order is random per process: 4 processes agree by chance 1 time in 8
        out = tmp_path / f"w{i}.safetensors"
        subprocess.run([sys.executable, "-c", code, precision, str(ck), str(out)], check=True)
        digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
    assert len(digests) == 1
