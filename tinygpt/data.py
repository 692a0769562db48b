"""tiny_shakespeare: find, download and verify it; split it; cut it into training batches."""
import hashlib
import mmap
import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from .files import atomic_write_bytes
from .tokenizer import CharTokenizer

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
FILENAME = "tinyshakespeare.txt"
TRAIN_FRACTION = 0.9


def cache_dir() -> Path:
    """The user cache folder: $XDG_CACHE_HOME/tinygpt or ~/.cache/tinygpt."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tinygpt"


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def _read_verified(path):
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise type(err)(f"cannot read {path}: {err.strerror or err}") from None
    if _sha256(data) != SHA256:
        raise ValueError(
            f"{path} is not tiny_shakespeare (sha256 {_sha256(data)[:12]}..., expected {SHA256[:12]}...)"
        )
    return data.decode("utf-8")


def _download(destination, timeout=30):
    with urllib.request.urlopen(URL, timeout=timeout) as response:
        data = response.read()
    if _sha256(data) != SHA256:
        raise ValueError(f"downloaded file from {URL} failed its sha256 check")
    atomic_write_bytes(destination, data)


def dataset_path() -> Path:
    """Where tiny_shakespeare lies: $TINYGPT_DATA, else the user cache, downloading it there
    (sha256-checked, written atomically) when it is missing."""
    env = os.environ.get("TINYGPT_DATA")
    if env:
        if not Path(env).is_file():
            what = "is not a file" if Path(env).exists() else "does not exist"
            raise FileNotFoundError(f"TINYGPT_DATA points to {env}, which {what}")
        return Path(env)
    cached = cache_dir() / FILENAME
    if not cached.is_file():
        try:
            _download(cached)
        except (urllib.error.URLError, OSError) as err:
            raise FileNotFoundError(
                "tiny_shakespeare is not available and could not be downloaded "
                f"({err}). Provide it in one of three ways: pass its path (--data PATH), "
                f"set TINYGPT_DATA=PATH, or put it at {cached}."
            ) from None
    return cached


def load_text(path=None) -> str:
    """Return the text of tiny_shakespeare, or of any text file given as ``path``.

    Look-up order for tiny_shakespeare: ``path``, $TINYGPT_DATA, the user cache, then a download
    (sha256-checked, written atomically into the cache). A file given by path is used as it is
    (any UTF-8 text); $TINYGPT_DATA and the cache must hold the verified data set.
    """
    if path is None:
        return _read_verified(dataset_path())
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"data file {path} is a folder, not a text file")
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"data file {path} is not UTF-8 text: {err}") from None
    except OSError as err:
        raise type(err)(f"cannot read data file {path}: {err.strerror or err}") from None
    if not text:
        raise ValueError(f"data file {path} is empty")
    return text


def split(ids, train_fraction: float = TRAIN_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Split a 1-D token array into (train, val): the first 90% and the last 10%."""
    ids = np.asanyarray(ids)  # a memmap stays one
    n_train = int(len(ids) * train_fraction)
    return ids[:n_train], ids[n_train:]


def load_dataset(path=None) -> tuple[CharTokenizer, np.ndarray, np.ndarray]:
    """Load the text and tokenize it: returns (tokenizer, train_ids, val_ids) as int32 arrays."""
    text = load_text(path)
    tokenizer = CharTokenizer(text)
    ids = np.array(tokenizer.encode(text), dtype=np.int32)
    train, val = split(ids)
    return tokenizer, train, val


def check_tokens(data, name, seq_len):
    """Validate a 1-D integer token array long enough for one (seq_len + 1) window."""
    data = np.asanyarray(data)  # a memmap stays one
    if data.ndim != 1 or not np.issubdtype(data.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-D array of integer token ids, got {data.dtype} {data.shape}")
    if len(data) < seq_len + 1:
        raise ValueError(f"{name} has {len(data)} tokens; it needs at least seq_len + 1 = {seq_len + 1}")
    return data


def windows_per_epoch(n_tokens, seq_len):
    """Windows per epoch: as many as fit after any offset in [0, seq_len), and at least one."""
    return max(1, (n_tokens - seq_len) // seq_len)


def _gather(data, index):
    """data[index] as int64. From a memory-mapped corpus, the pages just read are handed back
    (the kernel maps in up to megabytes around each read, and the process would keep them), so
    resident memory does not grow with the corpus."""
    chunk = data[index].astype(np.int64)
    if isinstance(data, np.memmap) and hasattr(mmap, "MADV_DONTNEED"):
        data._mmap.madvise(mmap.MADV_DONTNEED)
    return chunk


def batches_per_epoch(n_tokens, batch_size, seq_len, drop_last=False):
    """Batches per epoch: enough for every window, or with ``drop_last`` only the full ones
    (a ValueError when there is none)."""
    n_windows = windows_per_epoch(n_tokens, seq_len)
    if not drop_last:
        return -(-n_windows // batch_size)
    if n_windows < batch_size:
        raise ValueError(f"dropping the last batch leaves none: {n_tokens} tokens give "
                         f"{n_windows} windows of {seq_len}, fewer than batch_size {batch_size}")
    return n_windows // batch_size


def epoch_batches(data, batch_size, seq_len, rng, drop_last=False):
    """One epoch: shuffled non-overlapping windows from a random offset, in batches.

    Yields (x, y) int64 pairs of shape (b, seq_len), y = x shifted by one; b = batch_size except
    maybe the last batch, which ``drop_last`` leaves out (its windows, a different few in each
    epoch, are not seen that epoch). The offset and the order come from ``rng``.
    """
    n_windows = windows_per_epoch(len(data), seq_len)
    n_batches = batches_per_epoch(len(data), batch_size, seq_len, drop_last)
    slack = len(data) - 1 - n_windows * seq_len  # room left for the offset, >= 0
    offset = int(rng.integers(0, slack + 1))
    starts = offset + seq_len * rng.permutation(n_windows)
    window = np.arange(seq_len + 1)
    for i in range(n_batches):  # a batch's windows at a time: data may be a memmap
        chunk = _gather(data, starts[i * batch_size:(i + 1) * batch_size, None] + window)
        yield chunk[:, :-1], chunk[:, 1:]


def sequential_batches(data, batch_size, seq_len):
    """Every non-overlapping window from the start, in order (for evaluation)."""
    n_windows = (len(data) - 1) // seq_len
    window = np.arange(seq_len + 1)
    for i in range(0, n_windows, batch_size):  # a batch's windows at a time: data may be a memmap
        starts = seq_len * np.arange(i, min(i + batch_size, n_windows))
        chunk = _gather(data, starts[:, None] + window)
        yield chunk[:, :-1], chunk[:, 1:]
