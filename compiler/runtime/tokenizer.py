"""Token ids → text, from the artifact's vocabulary table (byte-level BPE, as GPT-2 and Whisper use)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's reversible byte ↔ printable-unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class Tokenizer:
    def __init__(self, vocab: list[str], specials: dict):
        self.vocab = vocab
        self.eot = specials["eot"]
        self.sot = specials["sot"]
        self.translate = specials["translate"]
        self.transcribe = specials["transcribe"]
        self.sot_lm = specials["sot_lm"]
        self.sot_prev = specials["sot_prev"]
        self.no_speech = specials["no_speech"]
        self.no_timestamps = specials["no_timestamps"]
        self.timestamp_begin = specials["timestamp_begin"]
        self.languages: dict[str, int] = specials.get("languages", {})

    @classmethod
    def from_file(cls, path: Path, specials: dict) -> "Tokenizer":
        return cls(json.loads(Path(path).read_text(encoding="utf-8")), specials)

    def decode(self, ids) -> str:
        """Text of the ids below <|endoftext|> (special and timestamp tokens are dropped)."""
        table = _byte_decoder()
        data = bytearray()
        for i in ids:
            if int(i) < self.eot:
                data.extend(table[ch] for ch in self.vocab[int(i)])
        return data.decode("utf-8", errors="replace")

    def decode_with_timestamps(self, ids) -> str:
        out, text = [], []
        for i in ids:
            if int(i) >= self.timestamp_begin:
                out.append(self.decode(text))
                text = []
                out.append(f"<|{(int(i) - self.timestamp_begin) * 0.02:.2f}|>")
            else:
                text.append(i)
        out.append(self.decode(text))
        return "".join(out)

    @property
    def space(self) -> int:
        """The id of " " (suppressed at the start of a sample, like openai's SuppressBlank)."""
        return self.vocab.index("Ġ")

    def non_speech_tokens(self) -> list[int]:
        """openai's ``Tokenizer.non_speech_tokens`` (suppress_tokens="-1"), from this vocabulary."""
        return non_speech_tokens(self.vocab, self.eot)


def bpe_encode(text: str, ranks: dict[bytes, int]) -> list[int]:
    """tiktoken's byte-pair merge for one pre-token: start from the UTF-8 bytes and merge, again and again, the
    adjacent pair whose concatenation has the lowest rank. Whisper's ranks are the token ids (tiktoken's
    mergeable_ranks), so the id table alone encodes — no merges file needed."""
    parts = [bytes([b]) for b in text.encode("utf-8")]
    while len(parts) > 1:
        best = min(range(len(parts) - 1), key=lambda i: ranks.get(parts[i] + parts[i + 1], float("inf")))
        if parts[best] + parts[best + 1] not in ranks:
            break
        parts[best:best + 2] = [parts[best] + parts[best + 1]]
    return [ranks[p] for p in parts]


# openai/whisper tokenizer.py, Tokenizer.non_speech_tokens: speaker tags and non-speech annotations (♪♪♪,
# ( SPEAKING FOREIGN LANGUAGE ), [DAVID] ...), keeping basic punctuation
NON_SPEECH_SYMBOLS = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』') + \
    "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()
NON_SPEECH_MISC = "♩♪♫♬♭♮♯"  # U+2640..U+267F: one token or several sharing the first two UTF-8 bytes


def non_speech_tokens(vocab: list[str], eot: int) -> list[int]:
    """The ids openai-whisper suppresses for suppress_tokens="-1" (what a checkpoint without a suppress list, such
    as an openai .pt, gets): each symbol and " " + symbol that is a single token, the first token of the
    miscellaneous music symbols, and the first token of " -" and " '" (hyphens and apostrophes stay allowed inside
    words). Every string here is one pre-token of Whisper's split pattern (no letters, digits or inner spaces), so
    byte-pair merging alone encodes it as tiktoken does. A vocabulary that is not byte-level BPE (no token for
    every byte) gives an empty list."""
    table = _byte_decoder()
    try:
        ranks = {bytes(table[ch] for ch in tok): i for i, tok in enumerate(vocab[:eot]) if tok}
    except KeyError:  # a character outside the byte table: not a byte-level BPE vocabulary
        return []
    if not all(bytes([b]) in ranks for b in range(256)):  # byte-level BPE holds every byte as a token
        return []
    result = {bpe_encode(" -", ranks)[0], bpe_encode(" '", ranks)[0]}
    for symbol in NON_SPEECH_SYMBOLS + list(NON_SPEECH_MISC):
        for tokens in (bpe_encode(symbol, ranks), bpe_encode(" " + symbol, ranks)):
            if len(tokens) == 1 or symbol in NON_SPEECH_MISC:
                result.add(tokens[0])
    return sorted(result)
