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
