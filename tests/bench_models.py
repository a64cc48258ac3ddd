"""Model folders for tests/bench_peers.py: the same Whisper weights in every benchmarked system's format.

- ``openai_pt(ck, path)``: an openai-whisper checkpoint file ({"dims", "model_state_dict"}) for whisper.load_model.
- ``hf_folder(ck, folder, tokenizer_json)``: a transformers folder (config, generation_config, model.safetensors,
  tokenizer.json, preprocessor_config) for WhisperForConditionalGeneration / WhisperProcessor.
- ``random_hf_folder(size, folder, seed)``: transformers builds WhisperForConditionalGeneration from a WhisperConfig
  of a real size's shapes with a fixed seed (W30: random weights that every system loads).
- ``ct2_folder(hf, folder)``: ctranslate2's own TransformersConverter (faster-whisper's format).

The canonical checkpoint (openai names, float32) comes from the project's readers, so one source feeds all.
Runs wherever the benchmark runs (CPU box or the GPU machine, no network): nothing is downloaded.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from compiler.checkpoint import Checkpoint, SpecialTokens, languages_for_vocab  # noqa: E402
from helpers import hf_name  # noqa: E402  (tests/helpers.py: openai → transformers names)

# true shapes of the official checkpoints (openai/whisper's ModelDimensions field order)
SIZES = {
    "tiny": (80, 1500, 384, 6, 4, 51865, 448, 384, 6, 4),
    "tiny.en": (80, 1500, 384, 6, 4, 51864, 448, 384, 6, 4),
    "base": (80, 1500, 512, 8, 6, 51865, 448, 512, 8, 6),
    "small": (80, 1500, 768, 12, 12, 51865, 448, 768, 12, 12),
    "medium": (80, 1500, 1024, 16, 24, 51865, 448, 1024, 16, 24),
    "large-v3": (128, 1500, 1280, 20, 32, 51866, 448, 1280, 20, 32),
    "large-v3-turbo": (128, 1500, 1280, 20, 32, 51866, 448, 1280, 20, 4),
}
DIM_FIELDS = ("n_mels", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer", "n_vocab", "n_text_ctx",
              "n_text_state", "n_text_head", "n_text_layer")


def canonical(source: str | Path) -> Checkpoint:
    """Any checkpoint folder the project reads (CT2, HF, openai .pt) → openai-named float32 weights."""
    from compiler.readers import load_checkpoint

    return load_checkpoint(str(source))


# --- openai-whisper ---------------------------------------------------------------------------------------------
def openai_pt(ck: Checkpoint, path: Path, dtype: str = "float32") -> Path:
    """openai-whisper's checkpoint format (official ones store float16; whisper.load_model builds float32 params)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)).to(getattr(torch, dtype))
             for k, v in ck.weights.items()}
    torch.save({"dims": ck.dims.to_dict(), "model_state_dict": state}, path)
    return path


# --- transformers -------------------------------------------------------------------------------------------------
def _specials(n_vocab: int) -> tuple[SpecialTokens, list[str]]:
    tok = SpecialTokens.for_vocab(n_vocab)
    langs = languages_for_vocab(n_vocab)
    names = ["<|endoftext|>", "<|startoftranscript|>"] + [f"<|{c}|>" for c in (langs or _en_slots())]
    names += ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>",
              "<|nospeech|>" if langs else "<|nocaptions|>", "<|notimestamps|>"]
    return tok, names


def _en_slots() -> list[str]:
    from compiler.checkpoint import LANGUAGES

    return list(LANGUAGES[:99])


def hf_config(dims: dict, n_vocab: int) -> dict:
    tok, _ = _specials(n_vocab)
    d = dims
    return {"model_type": "whisper", "architectures": ["WhisperForConditionalGeneration"],
            "num_mel_bins": d["n_mels"], "max_source_positions": d["n_audio_ctx"], "d_model": d["n_audio_state"],
            "encoder_attention_heads": d["n_audio_head"], "encoder_layers": d["n_audio_layer"],
            "encoder_ffn_dim": 4 * d["n_audio_state"], "decoder_ffn_dim": 4 * d["n_text_state"],
            "vocab_size": n_vocab, "max_target_positions": d["n_text_ctx"],
            "decoder_attention_heads": d["n_text_head"], "decoder_layers": d["n_text_layer"],
            "activation_function": "gelu", "scale_embedding": False, "tie_word_embeddings": True,
            "bos_token_id": tok.eot, "eos_token_id": tok.eot, "pad_token_id": tok.eot,
            "decoder_start_token_id": tok.sot, "begin_suppress_tokens": [220, tok.eot], "suppress_tokens": [],
            "use_cache": True}


def hf_generation_config(n_vocab: int, suppress: list[int], begin_suppress: list[int],
                         alignment_heads: list) -> dict:
    tok, _ = _specials(n_vocab)
    multilingual = bool(tok.languages)
    out = {"decoder_start_token_id": tok.sot, "bos_token_id": tok.eot, "eos_token_id": tok.eot,
           "pad_token_id": tok.eot, "max_length": 448, "no_timestamps_token_id": tok.no_timestamps,
           "prev_sot_token_id": tok.sot_prev, "max_initial_timestamp_index": 50,
           "suppress_tokens": [int(t) for t in suppress], "begin_suppress_tokens": [int(t) for t in begin_suppress],
           "alignment_heads": [list(map(int, h)) for h in alignment_heads], "is_multilingual": multilingual,
           "return_timestamps": False}
    if multilingual:
        out["lang_to_id"] = {f"<|{c}|>": i for c, i in tok.languages.items()}
        out["task_to_id"] = {"translate": tok.translate, "transcribe": tok.transcribe}
    return out


def write_tokenizer(folder: Path, n_vocab: int, tokenizer_json: Path | None) -> None:
    """tokenizer.json (+ tokenizer_config.json) for a vocabulary size: text tokens 0..50255 from a real Whisper
    tokenizer.json when given (else placeholders), then Whisper's special tokens for that size. For random-weight
    models only the ids matter (W30 decodes no text)."""
    tok, names = _specials(n_vocab)
    if tokenizer_json is not None and Path(tokenizer_json).is_file():
        data = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))
        vocab = {t: i for t, i in data["model"]["vocab"].items() if i < 50256}
        template = data["added_tokens"][0] if data.get("added_tokens") else {}
    else:  # a minimal byte-level BPE: placeholder text tokens
        data = {"version": "1.0", "truncation": None, "padding": None, "normalizer": None,
                "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                                  "use_regex": True},
                "post_processor": None,
                "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
                "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                          "end_of_word_suffix": "", "fuse_unk": False, "vocab": {}, "merges": []}}
        vocab = {f"t{i}": i for i in range(50256)}
        vocab["Ġ"] = 220
        vocab.pop("t220")
        template = {}
    if tok.eot == 50257:  # multilingual: one text token more before <|endoftext|>
        vocab["<|filler50256|>"] = 50256
    added = []
    for j, name in enumerate(names):
        a = {"single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
        a.update({k: v for k, v in template.items() if k not in ("id", "content")})
        a.update({"id": tok.eot + j, "content": name})
        added.append(a)
    vocab["<|endoftext|>"] = tok.eot
    data["model"]["vocab"] = vocab
    data["added_tokens"] = added
    (folder / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "WhisperTokenizer", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "model_max_length": 1024,
        "additional_special_tokens": names[1:], "errors": "replace"}))
    (folder / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "additional_special_tokens": names[1:]}))


def write_preprocessor(folder: Path, n_mels: int) -> None:
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "feature_extractor_type": "WhisperFeatureExtractor", "processor_class": "WhisperProcessor",
        "feature_size": n_mels, "sampling_rate": 16000, "hop_length": 160, "chunk_length": 30, "n_fft": 400,
        "n_samples": 480000, "nb_max_frames": 3000, "padding_side": "right", "padding_value": 0.0,
        "return_attention_mask": False}))


def hf_folder(ck: Checkpoint, folder: Path, tokenizer_json: Path | None) -> Path:
    """The canonical weights as a transformers folder (float32 safetensors, proj_out tied to the embedding)."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dims = ck.dims.to_dict()
    (folder / "config.json").write_text(json.dumps(hf_config(dims, ck.dims.n_vocab), indent=1))
    g = ck.generation
    (folder / "generation_config.json").write_text(json.dumps(hf_generation_config(
        ck.dims.n_vocab, g.suppress_tokens, g.begin_suppress_tokens, g.alignment_heads), indent=1))
    tensors = {hf_name(k): np.ascontiguousarray(v, dtype=np.float32) for k, v in ck.weights.items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    write_tokenizer(folder, ck.dims.n_vocab, tokenizer_json)
    write_preprocessor(folder, ck.dims.n_mels)
    return folder


def random_hf_folder(size: str, folder: Path, seed: int = 0, tokenizer_json: Path | None = None,
                     dtype: str = "float32") -> Path:
    """transformers' WhisperForConditionalGeneration of a real size's shapes, initialised from a fixed seed (in
    float32), stored in ``dtype`` (float16 halves large-v3's 6 GB; every system then loads the same fp16 values)."""
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dims = dict(zip(DIM_FIELDS, SIZES[size]))
    cfg = hf_config(dims, dims["n_vocab"])
    cfg.pop("model_type"), cfg.pop("architectures")
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(WhisperConfig(**cfg)).eval()
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(folder, safe_serialization=True)
    n = dims["n_text_layer"]
    heads = [[layer, h] for layer in range(n // 2, n) for h in range(dims["n_text_head"])]
    (folder / "generation_config.json").write_text(json.dumps(hf_generation_config(
        dims["n_vocab"], [], [220, SpecialTokens.for_vocab(dims["n_vocab"]).eot], heads), indent=1))
    write_tokenizer(folder, dims["n_vocab"], tokenizer_json)
    write_preprocessor(folder, dims["n_mels"])
    (folder / "bench_size.json").write_text(json.dumps({"size": size, "seed": seed, "dtype": dtype, "dims": dims}))
    return folder


# --- faster-whisper (CTranslate2) ---------------------------------------------------------------------------------
def ct2_folder(hf: Path, folder: Path, quantization: str | None = None) -> Path:
    import ctranslate2

    conv = ctranslate2.converters.TransformersConverter(str(hf), copy_files=["tokenizer.json",
                                                                           "preprocessor_config.json"])
    conv.convert(str(folder), quantization=quantization, force=True)
    return Path(folder)


def copy_tree(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
