"""Prepared corpora: a text file encoded once into a directory of token ids, read back through
np.memmap, so that training never holds the corpus in memory.

A directory holds ``tokens.bin`` (the ids, little-endian, in the smallest unsigned dtype that
holds the vocabulary) and ``corpus.json`` (the vocabulary, the dtype and the count), written
last, so a directory without it was never finished. The ids are those CharTokenizer gives the
same text: one per character, in sorted character order.
"""
import io
import json
import os
from pathlib import Path

import numpy as np

from .files import atomic_write_text
from .tokenizer import CharTokenizer

FORMAT = "tinygpt-tokens"
TOKENS, META = "tokens.bin", "corpus.json"
CHUNK_CHARS = 1 << 22  # characters encoded at a time: about 16 MB of UTF-32 and 4-16 MB of ids


class CorpusError(ValueError):
    """A directory that is not a complete prepared corpus."""


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype whose range holds ids 0 .. vocab_size - 1."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"a vocabulary of {vocab_size} characters is too large")


def _chunks(path, on_bytes=None):
    """The text of a UTF-8 file, CHUNK_CHARS characters at a time, with newlines read as
    Path.read_text reads them; on_bytes(n) is told how far into the file the reading is."""
    with open(path, "rb") as raw, io.TextIOWrapper(raw, encoding="utf-8") as text:
        while chunk := text.read(CHUNK_CHARS):
            if on_bytes is not None:
                on_bytes(raw.tell())
            yield chunk


def prepare(text_path, out_dir, progress=False) -> tuple[CharTokenizer, int]:
    """Encode a UTF-8 text file into ``out_dir``, in constant memory (two passes: the
    vocabulary, then the ids). Returns (tokenizer, number of tokens)."""
    from tqdm.auto import tqdm

    text_path, out_dir = Path(text_path), Path(out_dir)
    if not text_path.is_file():
        raise FileNotFoundError(f"data file {text_path} does not exist")
    size = text_path.stat().st_size
    chars = set()
    with tqdm(total=2 * size, unit="B", unit_scale=True, disable=not progress) as bar:
        def advance(offset, start=0):
            bar.update(start + offset - bar.n)

        try:
            for chunk in _chunks(text_path, advance):
                chars.update(chunk)
            if not chars:
                raise ValueError(f"data file {text_path} is empty")
            tokenizer = CharTokenizer.from_vocabulary(sorted(chars))
            codes = np.array([ord(c) for c in tokenizer.chars], dtype=np.uint32)
            dtype = token_dtype(tokenizer.vocab_size)
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / META).unlink(missing_ok=True)  # the directory is unfinished until the end
            count = 0
            tmp = out_dir / f".{TOKENS}.tmp"
            try:
                with open(tmp, "wb") as f:
                    for chunk in _chunks(text_path, lambda offset: advance(offset, size)):
                        points = np.frombuffer(chunk.encode("utf-32-le"), dtype=np.uint32)
                        ids = np.searchsorted(codes, points).clip(max=len(codes) - 1)
                        if not np.array_equal(codes[ids], points):
                            raise ValueError(f"data file {text_path} changed while being read")
                        ids.astype(dtype.newbyteorder("<")).tofile(f)
                        count += len(points)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, out_dir / TOKENS)
            finally:
                tmp.unlink(missing_ok=True)
        except UnicodeDecodeError as err:
            raise ValueError(f"data file {text_path} is not UTF-8 text: {err}") from None
    meta = {"format": FORMAT, "version": 1, "vocab": "".join(tokenizer.chars),
            "dtype": dtype.name, "count": count, "source": str(text_path)}
    atomic_write_text(out_dir / META, json.dumps(meta, indent=1))
    return tokenizer, count


def load(directory) -> tuple[CharTokenizer, np.memmap]:
    """A prepared corpus -> (tokenizer, read-only memmap of its ids)."""
    directory = Path(directory)
    meta_path = directory / META
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise ValueError(f"format is {meta.get('format')!r}, not {FORMAT!r}")
        tokenizer = CharTokenizer.from_vocabulary(meta["vocab"])
        dtype, count = np.dtype(meta["dtype"]).newbyteorder("<"), int(meta["count"])
        if dtype != token_dtype(tokenizer.vocab_size).newbyteorder("<"):
            raise ValueError(f"dtype {dtype.name} does not fit a vocabulary of "
                             f"{tokenizer.vocab_size}")
    except FileNotFoundError:
        raise CorpusError(f"{directory} is a folder but not a prepared corpus (it has no {META}; "
                          f"make one with tinygpt prepare --data TEXT --out DIR)") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CorpusError(f"{meta_path} is not a valid prepared corpus: {err}") from None
    tokens = directory / TOKENS
    expected = count * dtype.itemsize
    actual = tokens.stat().st_size if tokens.is_file() else None
    if actual != expected or count < 1:
        raise CorpusError(f"{tokens} should hold {count:,} ids ({expected:,} bytes), found "
                          f"{'no file' if actual is None else f'{actual:,} bytes'}")
    return tokenizer, np.memmap(tokens, dtype=dtype, mode="r", shape=(count,))
