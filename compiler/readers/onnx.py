"""ONNX exports in optimum's layout: encoder_model.onnx + decoder_model.onnx (or decoder_model_merged.onnx, or
decoder_with_past_model.onnx), with config.json, the tokenizer and generation_config.json beside them (or the graphs
in an onnx/ subfolder, as the hub's ONNX repos keep them).

Weights are the graphs' initializers, named back to transformers' names and then to openai/whisper's. torch's
TorchScript exporter (what optimum uses) hides names in three ways, each undone by following the graph:

* a Linear's weight is stored transposed for ``MatMul`` under an anonymous name (``onnx::MatMul_139``): its name
  comes from the consuming node's scope (``/model/decoder/layers.0/self_attn/q_proj/MatMul`` →
  ``model.decoder.layers.0.self_attn.q_proj.weight``) and it is transposed back (``Gemm`` honours ``transB``);
* identical tensors (a fresh model's zero biases, unit norms) are stored once and fanned out through ``Identity``
  nodes whose outputs carry the parameters' names;
* constant folding renames what it folds (the encoder's positional table, sliced in forward, becomes
  ``onnx::Add_138``): an anonymous input of ``Conv``/``LayerNormalization``/``Gather``/``Add`` is named from its
  node's scope, and the encoder's unscoped (n_audio_ctx, d_model) addend is its positional embedding.

optimum exports the encoder as a bare submodule (``conv1.weight``, ``/layers.0/...``), the decoder with the
``model.decoder.`` prefix, and suffixes the merged decoder's initializers with ``_merged_N``; all are normalised. The
``onnx`` package is needed for this format only and is imported lazily.
"""

from __future__ import annotations

import glob
import re
from pathlib import Path

import numpy as np

from ..checkpoint import Checkpoint, GenerationSettings
from ..errors import MwcError
from . import ONNX_DECODERS, onnx_folder, read_json
from .hf import dims_from_config, openai_name
from .vocab import read_vocab

_QUANTIZED_OPS = {"DequantizeLinear", "QLinearMatMul", "MatMulInteger", "MatMulNBits", "DynamicQuantizeLinear",
                  "QuantizeLinear", "DynamicQuantizeMatMul", "QGemm"}


def _onnx(path: Path):
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as e:
        raise MwcError(f"{path}: reading ONNX exports needs the onnx package; pip install onnx") from e
    return onnx, numpy_helper


def _load_model(path: Path):
    onnx, _ = _onnx(path)
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError for a truncated or foreign file, ...
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise MwcError(f"{path}: not a readable ONNX model ({type(e).__name__}: {msg}); the file is truncated or "
                       "corrupt — re-export or re-download it") from e
    for g in _walk(model.graph):
        for t in g.initializer:
            if uses_external_data(t):
                loc = next((x.value for x in t.external_data if x.key == "location"), "")
                if not (path.parent / loc).is_file():
                    raise MwcError(f"{path}: its weights file {loc!r} is missing; copy the {loc} that came with the "
                                   f"export next to {path.name}")
    try:
        load_external_data_for_model(model, str(path.parent))
    except Exception as e:
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise MwcError(f"{path}: its external weights cannot be read ({type(e).__name__}: {msg}); the files are "
                       "truncated or corrupt — re-export or re-download them") from e
    return model


def _walk(graph):
    """The graph and every subgraph (If/Loop branches: optimum's merged decoder keeps its nodes there)."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _walk(attr.g)
            for g in attr.graphs:
                yield from _walk(g)


def _scope(node_name: str) -> str:
    """'/model/decoder/layers.0/self_attn/q_proj/MatMul' → 'model.decoder.layers.0.self_attn.q_proj'."""
    parts = [p for p in node_name.split("/") if p]
    return ".".join(parts[:-1])


def _hf_name(name: str, side: str) -> str | None:
    """A parameter name as found in one side's graph → transformers' full name; None for what is not a weight of this
    side (proj_out, the other side's tensors)."""
    name = re.sub(r"_merged_\d+$", "", name)
    name = name.removeprefix("model.")
    if name.startswith("proj_out") or name.startswith("encoder." if side == "decoder" else "decoder."):
        return None
    name = name.removeprefix(side + ".")
    return f"model.{side}.{name}"


def _graph_weights(path: Path, side: str, n_ctx: int, n_state: int) -> dict[str, np.ndarray]:
    """Every weight of one graph, under openai/whisper's names."""
    _, numpy_helper = _onnx(path)
    model = _load_model(path)
    graphs = list(_walk(model.graph))
    arrays: dict[str, np.ndarray] = {}
    for g in graphs:
        for t in g.initializer:
            arrays[t.name] = numpy_helper.to_array(t)
        for node in g.node:
            if node.op_type == "Constant" and node.output and node.attribute and node.attribute[0].name == "value":
                arrays.setdefault(node.output[0], numpy_helper.to_array(node.attribute[0].t))
    quantized = sorted({n.op_type for g in graphs for n in g.node} & _QUANTIZED_OPS)
    if quantized:
        raise MwcError(f"{path}: a quantized ONNX export ({quantized[0]} nodes); mwc reads float32/float16 exports "
                       "only — export without quantization (optimum-cli export onnx) or use the safetensors model")
    found: dict[str, np.ndarray] = {}  # transformers name → array, in the layout transformers stores it

    def put(name: str, a: np.ndarray, named: bool) -> None:
        hf = _hf_name(name, side)
        if hf is None:
            return
        if named or hf not in found:
            found[hf] = a

    # 1. tensors that kept their parameter name (initializers, and Identity fan-outs of deduplicated ones)
    for name, a in arrays.items():
        if not name.startswith("onnx::") and not name.startswith("/") and re.search(r"\.(weight|bias)(_merged_\d+)?$",
                                                                                    name):
            put(name, a, named=True)
    for g in graphs:
        for node in g.node:
            if node.op_type == "Identity" and node.input[0] in arrays and node.output[0] not in arrays:
                out = node.output[0]
                if re.search(r"\.(weight|bias)$", out):
                    put(out, arrays[node.input[0]], named=True)
    # 2. anonymous tensors (onnx::MatMul_139, constant-folded ones): named by the node that consumes them
    for g in graphs:
        for node in g.node:
            scope = _scope(node.name)
            for idx, inp in enumerate(node.input):
                if inp not in arrays or not inp.startswith("onnx::") and not inp.startswith("/"):
                    continue
                a = arrays[inp]
                if node.op_type == "MatMul" and idx == 1 and a.ndim == 2 and scope:
                    put(scope + ".weight", a.T, named=False)
                elif node.op_type == "Gemm" and idx in (1, 2) and scope:
                    trans_b = next((at.i for at in node.attribute if at.name == "transB"), 0)
                    put(scope + (".bias" if idx == 2 else ".weight"), a if idx == 2 or trans_b else a.T, named=False)
                elif node.op_type in ("Conv", "LayerNormalization") and idx in (1, 2) and scope:
                    put(scope + (".weight" if idx == 1 else ".bias"), a, named=False)
                elif node.op_type == "Gather" and idx == 0 and a.ndim == 2 and scope:
                    put(scope + ".weight", a, named=False)
                elif node.op_type == "Add" and a.ndim == 1 and scope and re.search(r"(proj|fc\d)$", scope):
                    put(scope + ".bias", a, named=False)
                elif (node.op_type == "Add" and side == "encoder" and a.ndim in (2, 3) and a.shape[-2:] == (n_ctx, n_state)
                      and np.prod(a.shape[:-2], dtype=np.int64) == 1):
                    put("embed_positions.weight", a.reshape(a.shape[-2:]), named=False)
    weights: dict[str, np.ndarray] = {}
    for hf, a in found.items():
        name = openai_name(hf)
        if name is None or name.startswith("?"):
            continue  # not a Whisper weight (e.g. a stray constant named like one); validation lists what is missing
        weights[name] = np.ascontiguousarray(a, dtype=np.float32)
    return weights


def read_onnx(folder: Path, label: str) -> Checkpoint:
    graphs = onnx_folder(folder)
    if graphs is None:
        raise MwcError(f"{folder}: no encoder_model.onnx with a decoder_model*.onnx; pass an optimum ONNX export")
    cfg_path = folder / "config.json" if (folder / "config.json").is_file() else graphs / "config.json"
    if not cfg_path.is_file():
        raise MwcError(f"{folder}: config.json is missing; an ONNX export needs the config.json that optimum writes "
                       "beside it")
    cfg = read_json(cfg_path)
    dims = dims_from_config(cfg, cfg_path)
    decoder = next(graphs / n for n in ONNX_DECODERS if (graphs / n).is_file())
    enc_path = graphs / "encoder_model.onnx"
    weights = _graph_weights(enc_path, "encoder", dims.n_audio_ctx, dims.n_audio_state)
    weights.update(_graph_weights(decoder, "decoder", dims.n_text_ctx, dims.n_text_state))
    if decoder.name == "decoder_with_past_model.onnx" and "decoder.blocks.0.cross_attn.key.weight" not in weights:
        raise MwcError(f"{decoder}: a with-past decoder lacks the cross-attention key/value projections; add "
                       "decoder_model.onnx or decoder_model_merged.onnx from the same export")
    meta = folder if (folder / "config.json").is_file() else graphs
    gen_cfg = read_json(meta / "generation_config.json")
    gen = GenerationSettings(
        suppress_tokens=[int(t) for t in gen_cfg.get("suppress_tokens", cfg.get("suppress_tokens") or []) or []],
        begin_suppress_tokens=[int(t) for t in gen_cfg.get("begin_suppress_tokens",
                                                           cfg.get("begin_suppress_tokens") or []) or []],
        alignment_heads=[(int(a), int(b)) for a, b in gen_cfg.get("alignment_heads") or []])
    onnx_files = [enc_path, decoder]
    for p in list(onnx_files):  # external weights: encoder_model.onnx_data, decoder_model.onnx.data, ...
        onnx_files += sorted(x for x in graphs.glob(glob.escape(p.name) + "?*") if x.is_file())
    extra = [meta / n for n in ("tokenizer.json", "vocab.json", "merges.txt", "added_tokens.json",
                                "generation_config.json")]
    return Checkpoint(dims=dims, weights=weights, vocab=read_vocab(meta), generation=gen, source=label,
                      source_format="onnx", source_files=[cfg_path, *onnx_files, *[p for p in extra if p.is_file()]])
