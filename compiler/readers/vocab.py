"""The tokenizer's id → token-string table, from tokenizer.json, vocab.json (+ added_tokens.json) or vocabulary.txt.

Only the table is kept: the runtime decodes ids to text with it (byte-level BPE), so a generated loader needs no
tokenizer library. Timestamp ids need no strings; they follow <|notimestamps|> by id.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import MwcError


def _fill(table: dict[int, str], source: Path) -> list[str]:
    if not table:
        raise MwcError(f"{source}: the tokenizer holds no tokens")
    out = [""] * (max(table) + 1)
    for i, s in table.items():
        out[i] = s
    return out


def read_vocab(folder: Path) -> list[str]:
    tj = folder / "tokenizer.json"
    try:
        if tj.is_file():
            data = json.loads(tj.read_text(encoding="utf-8"))
            table = {int(i): t for t, i in data["model"]["vocab"].items()}
            table.update({int(a["id"]): a["content"] for a in data.get("added_tokens", [])})
            return _fill(table, tj)
        vj = folder / "vocab.json"
        if vj.is_file():
            table = {int(i): t for t, i in json.loads(vj.read_text(encoding="utf-8")).items()}
            at = folder / "added_tokens.json"
            if at.is_file():
                table.update({int(i): t for t, i in json.loads(at.read_text(encoding="utf-8")).items()})
            return _fill(table, vj)
        vt = folder / "vocabulary.txt"
        if vt.is_file():  # CTranslate2: one token per line, the line number is the id
            return vt.read_text(encoding="utf-8").split("\n")[:-1] or _fill({}, vt)
    except (ValueError, KeyError, TypeError) as e:
        raise MwcError(f"{folder}: the tokenizer files cannot be read ({type(e).__name__}: {e}); "
                       "re-download tokenizer.json") from e
    raise MwcError(f"{folder}: no tokenizer (tokenizer.json, vocab.json or vocabulary.txt); copy it next to the model")
