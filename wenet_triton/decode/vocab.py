"""The token table (units.txt / words.txt: `<token> <id>` per line) and ids -> text."""
from __future__ import annotations

import os
from typing import Dict, List, Sequence


class VocabError(ValueError):
    """A vocabulary file that cannot be read."""


def read_vocab(path: str) -> List[str]:
    table: Dict[int, str] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.rstrip("\n").split()
            if not parts:
                continue
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise VocabError(f"{path}:{n}: expected '<token> <id>', got {line!r}")
            table[int(parts[1])] = parts[0]
    if not table:
        raise VocabError(f"{path}: empty vocabulary")
    size = max(table) + 1
    missing = [i for i in range(size) if i not in table]
    if missing:
        raise VocabError(f"{path}: ids {missing[:5]} missing (ids must be 0..{size - 1})")
    return [table[i] for i in range(size)]


class Vocab:
    """Tokens by id; `text` drops blank (0), <sos/eos> and out-of-range ids and turns BPE's
    U+2581 word boundary into a space."""

    def __init__(self, tokens: List[str], eos: int):
        self.tokens, self.eos = tokens, eos

    @classmethod
    def from_engine_dir(cls, engine_dir: str, settings) -> "Vocab":
        return cls(read_vocab(os.path.join(engine_dir, settings.vocab_file)), settings.eos)

    def text(self, ids: Sequence[int]) -> str:
        toks = [self.tokens[int(i)] for i in ids if 0 < int(i) < len(self.tokens) and int(i) != self.eos]
        return "".join(toks).replace("\u2581", " ").strip()
