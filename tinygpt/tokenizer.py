"""CharTokenizer: one id per distinct character, ids in sorted character order."""
from typing import Iterable

import numpy as np


class CharTokenizer:
    """Character-level tokenizer built from a text's set of characters.

    >>> tok = CharTokenizer("hello")
    >>> tok.decode(tok.encode("hole"))
    'hole'
    """

    def __init__(self, text: str):
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if not text:
            raise ValueError("cannot build a vocabulary from empty text")
        self.chars = sorted(set(text))
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}

    @classmethod
    def from_vocabulary(cls, chars: Iterable[str]) -> "CharTokenizer":
        """Rebuild a tokenizer from its saved character list (in id order)."""
        chars = list(chars)
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ValueError("a vocabulary must be distinct single characters")
        tok = cls.__new__(cls)
        tok.chars = chars
        tok.stoi = {ch: i for i, ch in enumerate(chars)}
        return tok

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        """str -> list of ids. A character outside the vocabulary raises ValueError."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        try:
            return [self.stoi[ch] for ch in text]
        except KeyError as err:
            ch = err.args[0]
            raise ValueError(
                f"character {ch!r} at position {text.index(ch)} is not in the vocabulary"
            ) from None

    def check_covers(self, text: str, source: str) -> None:
        """Raise ValueError naming the characters of ``text`` (read from ``source``) that are
        not in the vocabulary."""
        missing = sorted(set(text) - set(self.stoi))
        if missing:
            raise ValueError(f"{source} has {len(missing)} characters the model does not know: "
                             f"{''.join(missing)!r}; its vocabulary has {self.vocab_size}")

    def decode(self, ids) -> str:
        """list or 1-D array of ids -> str. An id outside [0, vocab_size) raises ValueError."""
        ids = np.asarray(ids)
        if ids.size and not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"ids must be integers, got dtype {ids.dtype}")
        if ids.ndim > 1:
            raise ValueError(f"ids must be 1-D, got shape {ids.shape}")
        chars = self.chars
        out = []
        for pos, i in enumerate(ids.tolist()):
            if not 0 <= i < len(chars):
                raise ValueError(f"id {i} at position {pos} is outside [0, {len(chars)})")
            out.append(chars[i])
        return "".join(out)

    def __repr__(self):
        return f"CharTokenizer(vocab_size={self.vocab_size})"
